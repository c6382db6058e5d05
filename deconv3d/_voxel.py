"""One check of a voxel size given to the Python API, shared by the numeric core, the writers and
the pipeline, so that each refuses a bad one with the same one-line :class:`InputError`."""

from __future__ import annotations

import math
import numbers

from deconv3d._paths.names import path_text
from deconv3d.errors import InputError, naming_image


def checked_voxel_size(voxel_size, ndim: int, what: str = "voxel size",
                       required: bool = False) -> tuple[float, ...] | None:
    """``voxel_size`` as ``ndim`` positive finite floats, ``(z, y, x)`` or ``(y, x)`` in µm;
    ``None`` stays ``None`` (refused, as given, where ``required``) and one number means isotropic
    voxels. ``what`` names it in the error.

    >>> checked_voxel_size(0.1, 2), checked_voxel_size([0.3, 0.1, 0.1], 3)
    ((0.1, 0.1), (0.3, 0.1, 0.1))
    """
    if voxel_size is None and not required:
        return None
    import numpy as np  # here: the command line's --help and --version do without numpy

    if isinstance(voxel_size, (numbers.Real, np.ndarray)) and np.ndim(voxel_size) == 0:
        values = (voxel_size,) * ndim
    else:
        try:
            values = tuple(voxel_size)
        except TypeError:
            values = ()
    try:  # (True is a number to Python, not a size: refused as counts refuse it)
        values = () if any(isinstance(v, (bool, np.bool_)) for v in values) else tuple(float(v) for v in values)
    except (TypeError, ValueError):
        values = ()
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{what} {voxel_size!r} must be {ndim} positive finite numbers (µm, "
                         f"{'z, y, x' if ndim == 3 else 'y, x' if ndim == 2 else 'one per axis'}) "
                         "or one number for isotropic voxels")
    return values


#: µm. A voxel side above this is taken for nanometres given as micrometres: deconvolution needs a
#: PSF several voxels wide, and no light microscope's PSF spans several 20 µm voxels.
NANOMETRE_LIKE = 20.0


def refuse_nanometres(voxel_size, fix, what: str = "voxel size", image=None) -> None:
    """Refuse a voxel size with a side above :data:`NANOMETRE_LIKE` µm, naming ``fix``; unknown
    sides (None, in a file that calibrates some axes only) are left out. With ``image`` (the input
    file's name), ``fix`` is a function of the image's name, and the refusal's ``without_file`` says
    "the image" (:func:`deconv3d.errors.naming_image`)."""
    known = [v for v in voxel_size or () if v is not None]
    if known and max(known) > NANOMETRE_LIKE:
        def say(name):
            return (f"{what} {format_sizes(voxel_size)} µm looks like nanometres (or a print resolution in "
                    f"dpi): {fix(name) if image is not None else fix}")
        raise naming_image(say, image) if image is not None else InputError(say(None))


def wrong_unit_fix(how: str) -> str:
    """What to do about a file whose voxel size looks like nanometres (:func:`refuse_nanometres`), ``how``
    (:func:`voxel_size_option`) naming the voxel size to pass instead: the same words wherever the check is made."""
    return f"fix it (Fiji: Image > Properties) or pass {how} in µm"


def voxel_size_option(ndim: int) -> str:
    """The option to pass for an image of ``ndim`` spatial axes: ``--voxel-size DZ DY DX``, or
    ``--voxel-size DY DX`` for a 2D image."""
    return " ".join(("--voxel-size", *("DZ", "DY", "DX")[-ndim:]))


def recorded_voxel(image, how: str | None = None) -> tuple[float, ...] | None:
    """The voxel size ``image`` (a :class:`~deconv3d.omezarr.LazyImage`) records, for a run given
    none: refused in one line where its unit cannot be read (``voxel_problem``) or where it, or the
    sizes of the axes it calibrates, look like nanometres (:func:`refuse_nanometres`); the message
    says to pass ``how`` instead (None: :func:`voxel_size_option` for the image's spatial axes)."""
    if how is None:
        how = voxel_size_option(sum(a in "ZYX" for a in image.axes))
    problem = getattr(image, "voxel_problem", None)
    if problem:
        raise InputError(f"{problem}: pass {how} (in µm)")
    for recorded in (image.voxel_size, getattr(image, "partial_voxel", None)):
        refuse_nanometres(recorded, lambda name: f"the unit of {name} is wrong: {wrong_unit_fix(how)}",
                          image=path_text(image.path))
    return image.voxel_size


#: µm. ImageJ's default z step in a file calibrated in nanometres (or a smaller unit) is 1 nm or less,
#: closer than any light microscope takes its planes: a measured PSF resampled to it was refused as
#: "not in micrometres", the warning that the step was assumed left out, and --psf-model ran on it.
LEAST_ASSUMED_Z_STEP = 0.01


def check_assumed_z_step(source, voxel, warnings: list | None = None) -> None:
    """For an image whose z step is ImageJ's default (``voxel`` its (z, y, x) size as taken): refuse one
    below :data:`LEAST_ASSUMED_Z_STEP`, a file in nanometres, or above :data:`NANOMETRE_LIKE`, a file
    in millimetres or centimetres (which was refused as "looks like nanometres: the file's unit is
    wrong", where its pixel sizes were right and the z step missing), and warn of any other
    (:func:`assumed_z_step_warning`, into ``warnings``; said of "the image" too, for a batch's row). Called
    before :func:`refuse_nanometres`."""
    from deconv3d.errors import warning_naming_image

    if implausible_assumed_z_step(source, voxel[0]):
        raise naming_image(lambda image: f"{implausible_assumed_z_step(image, voxel[0])}: pass --voxel-size DZ DY DX "
                           "(in µm), or record the z step in the file (Fiji: Image > Properties)", source)
    warning_naming_image(lambda image: assumed_z_step_warning(image, voxel), source, warnings)


def implausible_assumed_z_step(source, z: float) -> str | None:
    """Why ``source``'s z step ``z``, ImageJ's default as it records none, cannot be a light microscope's
    (below :data:`LEAST_ASSUMED_Z_STEP` or above :data:`NANOMETRE_LIKE`: a file in nanometres, or in
    millimetres or centimetres), without the fix; None where it can. For an image and a PSF file alike."""
    if LEAST_ASSUMED_Z_STEP <= z <= NANOMETRE_LIKE:
        return None
    how = "closer than" if z < LEAST_ASSUMED_Z_STEP else "farther apart than"
    return (f"{source} records no z step, and ImageJ's default, 1 in its unit, is {z:g} µm, {how} a light "
            "microscope takes its planes")


def assumed_z_step_warning(source, voxel) -> str:
    """The warning for an image whose z step is ImageJ's default (the file records none:
    :class:`deconv3d._tiff_voxel_sizes.DefaultStep`), ``voxel`` its (z, y, x) size as taken."""
    z = voxel[0]
    return (f"deconv3d: warning: {source} records no z step, so ImageJ's default is taken, as Fiji takes it: "
            f"{z:g} µm (the voxel size the run and its output take); pass --voxel-size DZ DY DX if its planes "
            f"are not {z:g} µm apart")


def format_sizes(values, unknown=None) -> str:
    """Voxel sizes as the command line takes them (``0.3 0.1 0.1``); an unknown one (None) shows as
    its entry in ``unknown`` (e.g. ``("DZ", "DY", "DX")``), else as ``?``."""
    unknown = unknown or ("?",) * len(values)
    return " ".join(u if v is None else f"{v:g}" for u, v in zip(unknown, values))
