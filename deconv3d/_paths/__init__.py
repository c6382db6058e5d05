"""Output paths checked before any heavy work starts, the temporary names outputs are written
under until they are complete (:mod:`deconv3d.io`, :mod:`deconv3d.pipeline.output`), the section
that keeps a termination signal from cutting their publishing in two (:func:`signals_deferred`,
:func:`publishing`), and
the sweep of what killed runs left under such names (kept here, free of heavy imports, so that every
command can sweep before it writes).

The names are re-exported here from the modules that hold them: :mod:`~deconv3d._paths.names` (file
names as text, image suffixes, file errors), :mod:`~deconv3d._paths.locations` (which file a path
names, where it lies), :mod:`~deconv3d._paths.output_checks` (refusing an output path, replaceable
folders), :mod:`~deconv3d._paths.name_length` (name and path length limits),
:mod:`~deconv3d._paths.temporaries` (temporary names and modes, the sweep of stale ones),
:mod:`~deconv3d._paths.globbing` (a batch's glob and hidden names), :mod:`~deconv3d._paths.signals`
(signals deferred while publishing) and :mod:`~deconv3d._paths.zarr_settle` (:func:`settle_zarr`).
A test that replaces one of them patches the module that holds it, where it is looked up."""

from deconv3d._paths.globbing import glob_hides, glob_shown
from deconv3d._paths.locations import (_same_file, existing_ancestor, file_identity, refuse_special_file,
                                       relative_to_folder, special_file_problem)
from deconv3d._paths.name_length import check_name_length
from deconv3d._paths.names import (IMAGE_SUFFIXES, OUTPUT_SUFFIXES, SPACE_ERRORS, TIFF_SUFFIXES, _check_suffix,
                                   _one_line, image_stem, line_text, out_of_space, path_text, recorded_path)
from deconv3d._paths.output_checks import (_check_writable_target, _refuse_folder, added_entries, check_output_path,
                                           refuse_input_overlap, refuse_output_link, refuse_unnamable,
                                           refuse_unreplaceable, refuse_write_protected, replaceable_folder)
from deconv3d._paths.signals import defer_signal, publishing, signals_deferred
from deconv3d._paths.temporaries import (OTHER_HOST_STALE_AGE, _remove, create_temporary, host_tag, keep_mode,
                                         remove_stale_temporaries, remove_stale_temporaries_in, temporary_name)
from deconv3d._paths.zarr_settle import _waiting_for_its_turn, settle_zarr

# (the private names are those other modules of deconv3d, or tests, import from here)
__all__ = ["IMAGE_SUFFIXES", "OTHER_HOST_STALE_AGE", "OUTPUT_SUFFIXES", "SPACE_ERRORS", "TIFF_SUFFIXES",
           "_check_suffix", "_check_writable_target", "_one_line", "_refuse_folder", "_remove", "_same_file",
           "_waiting_for_its_turn", "added_entries", "check_name_length", "check_output_path", "create_temporary",
           "defer_signal", "existing_ancestor", "file_identity", "glob_hides", "glob_shown", "host_tag", "image_stem",
           "keep_mode", "line_text", "out_of_space", "path_text", "publishing", "recorded_path",
           "refuse_input_overlap", "refuse_output_link", "refuse_special_file", "refuse_unnamable", "refuse_unreplaceable",
           "refuse_write_protected", "relative_to_folder", "remove_stale_temporaries",
           "remove_stale_temporaries_in", "replaceable_folder", "settle_zarr", "signals_deferred",
           "special_file_problem", "temporary_name"]
