"""Deconvolve one file out of core: lazy input (TIFF or OME-Zarr) to an OME-Zarr (or TIFF) output."""

from __future__ import annotations

import functools
import math
import os
import shutil
from pathlib import Path

from deconv3d._paths import OUTPUT_SUFFIXES, check_output_path, path_text
from deconv3d.errors import NON_FINITE_FILE_FIX, BeyondFloat32, InputError, NonFiniteValues, naming_image, warn
from deconv3d.pipeline.axis_hints import relabel_note, warn_of_planes_that_may_be_z
from deconv3d.pipeline.file_blocks import _block_function
from deconv3d.pipeline.file_networks import intensity_statistics, train_on_image, warn_of_another_scale

# (the network's functions, in deconv3d.pipeline.file_networks now, are importable from here as before)
__all__ = ["deconvolve_file", "train_on_image", "intensity_statistics", "warn_of_another_scale"]


def _naming_the_input(run):
    """``run(input_path, ...)`` whose refusal of NaN or Inf values (:class:`~deconv3d.errors.NonFiniteValues`: met
    by a block, the measuring box, training or the choice of counts) names the input file as given, with a
    file's fix, as an in-memory run names it; for an OME-Zarr whose NaN fill_value stands in for chunks never
    stored, the fix says so (:func:`~deconv3d.omezarr.chunk_gaps.unstored_chunks_fix`). Its refusal of float64
    values past float32's range (:class:`~deconv3d.errors.BeyondFloat32`, which the block reader raised naming
    the file by its absolute path) names it as given too, as the route's other read errors do, with the line
    said of "the image" as its ``without_file``."""
    @functools.wraps(run)
    def named(input_path, *args, **kwargs):
        try:
            return run(input_path, *args, **kwargs)
        except BeyondFloat32 as exc:
            raise InputError(exc.said_of(f"{exc.what} {path_text(input_path)}"),
                             without_file=exc.said_of("the image")) from None
        except NonFiniteValues as exc:
            from deconv3d.omezarr.chunk_gaps import unstored_chunks_fix

            fix = unstored_chunks_fix(input_path, exc.position) if Path(input_path).is_dir() else None
            raise exc.with_details(file=path_text(input_path), fix=fix or NON_FINITE_FILE_FIX) from None

    return named


@_naming_the_input
def deconvolve_file(input_path, output_path, settings, *, client=None, workers: int = 1, progress=None,
                    checksum=True, warnings: list | None = None, trainer=None, sweep: bool = True,
                    cancel=None, iterations_chooser=None, writing=None):
    """Deconvolve ``input_path`` into ``output_path`` with :class:`~deconv3d.pipeline.batch.Settings`.

    The input is opened lazily and processed block by block (:func:`deconv3d.pipeline.run_chunked`).
    A ``.zarr`` output is an OME-Zarr v0.5 image with provenance; a ``.tif`` output is written
    into a temporary OME-Zarr first, then streamed into the TIFF in slabs of planes (for several
    channels or time points, an ImageJ hyperstack: :func:`~deconv3d._tiff_hyperstack.write_hyperstack`), and a clip
    found by the blocks is warned of once that TIFF is written (not where its copy fails). Returns the
    :class:`~deconv3d.pipeline.RunInfo`. ``checksum`` is passed to
    :func:`~deconv3d.pipeline.provenance` (True: hash the input; or its known SHA-256), or is a
    callable ``checksum(input_path)`` returning the SHA-256, called where True would hash: after the
    checks of the input and any training, so that an input refused is not hashed (the command line
    passes one that shows a bar while it hashes a large input).
    ``warnings``: a list that collects the warnings (an assumed voxel size) as ``deconv3d: warning:``
    lines; without it they are issued as Python ``RuntimeWarning``s. ``progress(done, total)`` is
    called per block (returning True cancels) and ``cancel``, a ``threading.Event``, cancels once set
    from another thread (:func:`~deconv3d.pipeline.run_chunked`): :class:`~deconv3d.Cancelled` is
    raised and nothing is written. ``writing(done, total)``, for a ``.tif`` output, is called as the
    result is copied into the TIFF after the last block, in voxels read (a copy of a GB took about 8 s
    here, after the blocks' bar had reached its end).

    ``ssl`` without a model (``settings.train_steps``) first trains a network on the image, read
    whole into memory (:func:`~deconv3d.pipeline.file_networks.train_on_image`), with
    ``trainer(image, psf, voxel)`` when given (it returns a ``TrainResult``), else with
    :class:`~deconv3d.selfsup.TrainConfig`'s defaults.
    ``sweep`` removes what killed runs left of the output first (a batch sweeps its folder once).
    Its errors and warnings name the input by ``input_path`` as given (``in/day2/a.tif``), as an in-memory
    run names it: a batch's lines name the file so.
    ``iterations_chooser`` (rl and rl-tv; others ignore it): each channel's count is chosen on a centred crop
    of its first time point and run without acceleration, in place of ``settings.iterations`` and
    ``settings.accelerate`` (:func:`~deconv3d.pipeline.auto_iterations.chosen_settings`, which calls it).
    Settings with ``iterations = "auto"`` (a batch's) need it for rl and rl-tv: without one they are refused.
    """
    from deconv3d.pipeline import run_chunked
    from deconv3d.pipeline.output import remove_stale_temporaries

    _refuse_auto_without_chooser(settings, iterations_chooser)
    input_path, output_path = Path(input_path), Path(output_path)
    lazy, spatial_shape, voxel, chunks = _opened_and_checked(input_path, output_path, settings, warnings)
    plan = dict(chunks=chunks, workers=workers, client=client)
    block, model, params, psf, voxel = _block_function(lazy, spatial_shape, voxel, settings, trainer, warnings, plan,
                                                       iterations_chooser)
    record = _run_provenance(settings, params, psf, input_path, checksum)
    _warn_of_axes(lazy, len(spatial_shape), warnings)
    kwargs = dict(axes=lazy.axes, chunks=chunks, memory_limit=settings.memory_limit, model=model,
                  voxel_size=voxel, provenance=record, client=client, workers=workers, progress=progress,
                  cancel=cancel, time_axis=lazy.time_axis)
    if sweep:
        remove_stale_temporaries(output_path)  # a killed run's hidden leftover, as large as the output
    if output_path.suffix.lower() == ".zarr":
        return run_chunked(lazy, block, output_path, pyramid_levels=settings.pyramid_levels, **kwargs)
    return _via_temporary_zarr(lazy, block, output_path, voxel, record, kwargs, writing)


def _refuse_auto_without_chooser(settings, iterations_chooser) -> None:
    """Refuse ``iterations = "auto"`` for rl and rl-tv without an ``iterations_chooser`` to choose the counts."""
    if settings.iterations == "auto" and settings.method in ("rl", "rl-tv") and iterations_chooser is None:
        raise InputError('iterations "auto" needs an iterations_chooser to choose the counts: pass one (see '
                         "deconv3d.pipeline.auto_iterations.chosen_settings for what it is called with and returns), "
                         "or give the count")


def _opened_and_checked(input_path: Path, output_path: Path, settings, warnings):
    """(lazy image, spatial shape, voxel size, spatial chunks) of a run, once the output path, the
    PSFs' dimensions, the voxel size, the channel counts, the chunks and the input's positive values
    are checked, in that order."""
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline.negatives import check_has_positive
    from deconv3d.pipeline.settings import channel_count
    from deconv3d.pipeline.settings_checks import _many

    # before any work, as the command line checks (a batch's outputs are checked only here: it
    # replaced a folder of the user's files named like an output, and deleted them)
    check_output_path(output_path, [input_path, *_many(settings.psf), *_many(settings.model)], suffixes=OUTPUT_SUFFIXES,
                      scratch=True)  # (a TIFF is built through a scratch OME-Zarr)
    lazy = open_lazy(input_path)
    spatial_axes = "".join(a for a in lazy.axes if a in "ZYX")
    spatial_shape = lazy.data.shape[len(lazy.axes) - len(spatial_axes):]
    _check_psf_dimensions(settings, lazy, len(spatial_shape))
    voxel = _checked_voxel(settings, lazy, len(spatial_shape), path_text(input_path), warnings)
    check_channel_count(lazy, channel_count(settings), "wavelength" if settings.psf_model is not None else "psf")
    check_channel_count(lazy, len(_many(settings.model)), "model")
    chunks = _spatial_chunks(settings, len(spatial_shape), path_text(input_path))
    # every method's output is non-negative (before any training)
    check_has_positive(lazy, path_text(input_path), settings.method, warnings, axes=lazy.axes,
                       channels=lazy.channels)
    return lazy, spatial_shape, voxel, chunks


def _warn_of_axes(lazy, ndim: int, warnings) -> None:
    """Warn of planes that may be z, and of a time axis's problem, once with the others."""
    warn_of_planes_that_may_be_z(lazy, ndim, warnings)
    if lazy.time_problem and "T" in lazy.axes:  # once, with the others (run_chunked, given the axis, is silent)
        warn(f"deconv3d: warning: {lazy.time_problem}", warnings, without_file=lazy.time_problem_without_file)


def _checked_voxel(settings, lazy, ndim: int, name: str, warnings):
    """The voxel size of the run (the configured one, the image's, else the PSFs'), checked as the
    PSF model and the RL-TV weight need it."""
    from deconv3d.pipeline.batch import spatial_voxel
    from deconv3d.pipeline.prepared_psfs import check_model_voxel
    from deconv3d.pipeline.settings import check_tv_weight
    from deconv3d.pipeline.settings_checks import _many

    if settings.voxel_size is None and lazy.voxel_size is not None and getattr(lazy, "z_step_assumed", False):
        from deconv3d._voxel import check_assumed_z_step

        check_assumed_z_step(name, tuple(lazy.voxel_size), warnings)  # (first: a missing z step, not a wrong unit)
    voxel = spatial_voxel(settings, lazy)
    if settings.psf and (settings.method != "ssl" or settings.model is None):  # (a model brings its own, below)
        voxel = _voxel_with_psfs(voxel, _many(settings.psf), ndim, name, lazy.partial_voxel, warnings)
    if settings.psf_model is not None and (settings.method != "ssl" or settings.model is None):
        check_model_voxel(voxel)  # before the RL-TV weight's limit, which took a missing size as isotropic
    if settings.method == "rl-tv":
        check_tv_weight(settings.tv_weight, ndim, voxel, name)
    return voxel


def _spatial_chunks(settings, ndim: int, name: str):
    """The configured chunks' spatial sides (None where none are), refused where they are too few."""
    if settings.chunks and len(settings.chunks) < ndim:
        raise naming_image(lambda image: f"chunks {tuple(settings.chunks)} give {len(settings.chunks)} sides but "
                           f"{image} is {ndim}D: give Z Y X", name)
    return tuple(settings.chunks)[-ndim:] if settings.chunks else None  # (z,) y, x


def _run_provenance(settings, params, psf, input_path, checksum) -> dict:
    """The output's provenance record, with the model files' hashes (one per channel); a callable
    ``checksum`` is called here for the input's SHA-256."""
    from deconv3d.pipeline import provenance, psf_source
    from deconv3d.pipeline.settings_checks import _many

    hashes = [_sha(m) for m in _many(settings.model)]  # (one per channel: as many in the record)
    model_hash = (hashes[0] if len(hashes) == 1 else hashes) if hashes else None
    if callable(checksum):
        checksum = checksum(input_path)
    return provenance(settings.method, params, psf=psf, input_path=input_path, checksum=checksum,
                      model_hash=model_hash, source=psf_source(settings), device=settings.run_device)


def _voxel_with_psfs(voxel, psfs, ndim: int, name: str, partial, warnings):
    """The image's voxel size, completed from the PSF files (one per channel, or one) where it has
    none (:func:`~deconv3d.io.assume_psf_voxel`): the first that records one settles it, whatever
    its place, and the others are checked against it. Settled by the first in the list alone, an
    uncalibrated first PSF left the image without one and the others unchecked: ``--psf a b`` wrote
    scale 1 where ``--psf b a`` wrote b's voxel size."""
    from deconv3d.io import assume_psf_voxel, read_psf

    psfs = list(psfs)
    if voxel is None:
        first = next((p for p in psfs if read_psf(p).voxel_size is not None), psfs[0])
        voxel = assume_psf_voxel(voxel, first, ndim, name, warnings, partial=partial)
        psfs.remove(first)
    for psf in psfs if voxel is not None else ():  # (none records a voxel size: each is taken as the image's)
        assume_psf_voxel(voxel, psf, ndim, name, warnings)
    return voxel


def check_channel_count(lazy, wanted: int, what: str = "psf") -> None:
    """Refuse ``wanted`` PSFs (``what`` "wavelength": wavelengths of generated PSFs; "model": networks),
    one per channel, for an image ``lazy`` (a :class:`~deconv3d.omezarr.LazyImage`) with another number
    of channels; one is for all. The line names what was given: three wavelengths were "3 PSFs"."""
    channels = lazy.data.shape[lazy.axes.index("C")] if "C" in lazy.axes else 1
    given, each = {"model": ("models", "--model"), "wavelength": ("wavelengths", "--wavelength")}.get(
        what, ("PSFs", "PSF (or wavelength)"))
    if wanted > 1 and channels != wanted:
        raise naming_image(lambda image: f"{image} has {channels} channel(s) but {wanted} {given} were given: "
                           f"give one {each} per channel, or one for all", path_text(lazy.path))


def _check_psf_dimensions(settings, lazy, ndim: int) -> None:
    """Refuse a PSF of another dimensionality than the image before anything else (a 2D image and
    a 3D PSF file drew a warning that the PSF had no voxel size first), saying so where the image
    may be a z-stack whose slices Fiji labelled channels or frames."""
    from deconv3d.io import psf_dimension_problem, read_psf
    from deconv3d.pipeline.settings_checks import _many

    if settings.method == "ssl" and settings.model:  # the model's own check
        return
    name = path_text(lazy.path)
    if settings.psf_model is not None and ndim != 3:
        raise naming_image(lambda image: f"--psf-model generates 3D PSFs but {image} is {ndim}D: give a 2D --psf file, "
                           "e.g. the plane of best focus made by 'deconv3d psf --shape 63 63 --voxel-size DY DX ...'"
                           f"{relabel_note(image, lazy.axes)}", name)
    for psf in _many(settings.psf):
        psf_ndim = read_psf(psf).data.ndim
        if psf_dimension_problem(psf, psf_ndim, name, ndim):
            raise naming_image(lambda image: psf_dimension_problem(psf, psf_ndim, image, ndim)
                               + relabel_note(image, lazy.axes), name)


def _sha(path) -> str:
    from deconv3d.omezarr.writing import unchanged_file_sha256

    return unchanged_file_sha256(path)


def _slab_budget(kwargs) -> int | None:
    """Bytes of planes the TIFF writer may read at once under the run's memory limit: a quarter of
    what the process leaves of it (the slab, the chunk being decoded, the page being written),
    else None (the writer's default). Without it the writer read 256 MiB slabs whatever the
    limit: peaks of 1.5-1.75x a limit that the blocks had kept."""
    from deconv3d.pipeline.system_memory import current_rss, parse_memory

    limit = kwargs.get("memory_limit")
    if limit is None:
        return None
    limit = parse_memory(limit)
    return max(1, (limit - current_rss()) // 4)


def _via_temporary_zarr(lazy, block, output_path: Path, voxel, record, kwargs, writing=None):
    """Run the blocks into a hidden scratch OME-Zarr next to the TIFF ``output_path``, stream it into
    the TIFF (reporting to ``writing``, as :func:`deconvolve_file` says), remove the scratch whatever
    happens, and warn of clips once the TIFF is written."""
    from deconv3d.pipeline import run_chunked
    from deconv3d.pipeline.output import made_like, temporary_name
    from deconv3d.pipeline.run import warn_of_clips

    lead = [n for a, n in zip(lazy.axes, lazy.data.shape) if a in "TC"]
    hyperstack = any(n > 1 for n in lead)
    scratch = temporary_name(output_path)  # a hidden .NAME.tif.<id>.tmp zarr: swept like any leftover
    try:
        with made_like(scratch, output_path):  # (no wider than the TIFF it becomes: it holds the whole result)
            # a hyperstack's channel names and colours, with each channel's display window measured as the
            # .zarr output's are (one more pass over the result): a 3D TIFF keeps none, and skips the pass
            # its clip warnings once the TIFF is written: not for an output that a failed copy never published
            info = run_chunked(lazy, block, scratch, channels=(lazy.channels or ()) if hyperstack else (),
                               warn_clips=False, **kwargs)
        _copy_into_tiff(lazy, lead, scratch, output_path, voxel, record, info, kwargs, writing)
    except OSError as exc:  # a full disk met writing the scratch names the output, not its hidden name
        if isinstance(exc.filename, str) and os.path.abspath(exc.filename) == os.path.abspath(scratch):
            exc.filename = os.path.abspath(output_path)  # (as run_chunked names a zarr output)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    warn_of_clips(info)
    return info


def _tiff_metadata(record, info):
    """The TIFF's properties: the provenance ``record`` with what the run ``info`` decided (as the zarr's)."""
    from deconv3d.pipeline import tiff_properties

    record = {**record, "parameters": {**record.get("parameters", {}), **info.decided}}  # (as the zarr's)
    return tiff_properties({**record, "environment": info.environment or record.get("environment")}, info.execution)


def _copy_into_tiff(lazy, lead, scratch, output_path: Path, voxel, record, info, kwargs, writing=None) -> None:
    """Stream the scratch OME-Zarr's result into the TIFF ``output_path``: an ImageJ hyperstack where
    a time or channel axis (``lead``: their lengths) has several, else a plain TIFF; ``writing(done, total)``
    is told the voxels read so far."""
    import zarr

    from deconv3d._tiff_hyperstack import write_hyperstack
    from deconv3d._tiff_write import ZarrPlanes
    from deconv3d.io import write_tiff
    from deconv3d.pipeline.allocator import large_allocations_returned

    array = zarr.open_array(str(scratch / "0"), mode="r")
    array = array if writing is None else _ReportedReads(array, writing)
    meta = _tiff_metadata(record, info)
    # One chunk decoded at a time: zarr's default of 10 in flight took 1.2x the limit on its own
    # (a 2D result, read whole here, went 5-10 % over it while it was read outside this setting);
    # the copy is in the run's budget, so freed slabs are unmapped as the blocks' arrays were
    with zarr.config.set({"async.concurrency": 1}), \
            large_allocations_returned(info.execution.get("memory_limit") is not None):
        if any(n > 1 for n in lead):  # an ImageJ hyperstack, streamed (t, z-slab) by (t, z-slab)
            omero = zarr.open_group(str(scratch), mode="r").attrs["ome"].get("omero", {})
            write_hyperstack(output_path, array, lazy.axes, voxel_size=voxel, metadata=meta,
                             time_axis=lazy.time_axis, channels=omero.get("channels"),
                             slab_bytes=_slab_budget(kwargs))
        else:
            data = ZarrPlanes(array, (0,) * len(lead)) if len(array.shape) == 3 + len(lead) \
                else array[(0,) * len(lead)]
            write_tiff(output_path, data, voxel_size=voxel, metadata=meta, slab_bytes=_slab_budget(kwargs),
                       axes="".join(a for a in lazy.axes if a in "ZYX"))  # (a ZX section stays one)


class _ReportedReads:
    """A zarr array whose reads (``[key]``) tell ``report(done, total)`` the voxels read so far of its
    ``total``: the TIFF writers read the result this way only, slab by slab, each voxel once."""

    def __init__(self, array, report):
        self.array, self.report, self.done = array, report, 0
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        values = self.array[key]
        self.done += int(getattr(values, "size", 1))
        self.report(self.done, math.prod(self.shape))
        return values
