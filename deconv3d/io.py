"""Read and write microscopy images with their voxel sizes (TIFF for now).

Voxel sizes are ``(z, y, x)`` in micrometres for 3D images and ``(y, x)`` for
2D ones.  This module is the edge between files and the numeric core: it turns
every problem with a user's file into an :class:`~deconv3d.errors.InputError`
with a one-line message, and it writes outputs atomically so that a failure
never leaves a partial file behind. Opening a TIFF and the checks of its
structure and pixel data are in :mod:`deconv3d._tiff_checks`; writing is in
:mod:`deconv3d._tiff_write`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from deconv3d._arrays import refuse_complex
from deconv3d._paths import (TIFF_SUFFIXES, _check_suffix, check_output_path, file_identity, path_text,
                            refuse_special_file, special_file_problem)
from deconv3d._psf_voxel import assume_psf_voxel
from deconv3d._tiff_checks import (_ONE_CHANNEL, _check_complete, _named, _refusal, _tifffile_log, _unreadable_tiff,
                                   open_tiff)
from deconv3d._tiff_metadata import calibrated, imagej_calibration, time_axis_of
from deconv3d._tiff_voxel_sizes import (_GENERIC_AXES, _checked_voxel, _kept_voxel, _partial_voxel, _voxel_size_um,
                                        spatial_letters, z_step_assumed)
from deconv3d._tiff_write import write_tiff
from deconv3d._voxel import format_sizes, refuse_nanometres
from deconv3d.errors import NON_FINITE_FILE_FIX, BeyondFloat32, InputError, NonFiniteValues, PSFLargerThanImage, warn

__all__ = ["Image", "read_image", "read_psf", "write_tiff", "check_output_path", "TIFF_SUFFIXES", "time_axis_of",
           "assume_psf_voxel"]


@dataclass(frozen=True)
class Image:
    """An image and its physical sampling.

    Attributes
    ----------
    data : numpy.ndarray
        float32 array, ``(z, y, x)`` or ``(y, x)``.
    voxel_size : tuple of float or None
        Voxel size in micrometres in the order of ``axes``; None when the file
        does not record a complete calibration.
    axes : str
        ``"ZYX"`` or ``"YX"``; ``"ZX"`` or ``"ZY"`` for a section through a stack (a stack of one
        row or one column), whose ``voxel_size`` is then (z step, pixel size).
    voxel_problem : str or None
        Set when the file records a voxel size that is zero, negative or not finite
        (``voxel_size`` is then None): callers that need one should say so.
    partial_voxel : tuple or None
        For a file that calibrates some axes but not all (pixel sizes but no z step): the
        recorded sizes, None for the others (``voxel_size`` is then None).
    z_step_assumed : bool
        The z step is ImageJ's default (1 in the file's unit), as the file records none
        (:class:`deconv3d._tiff_voxel_sizes.DefaultStep`): callers may say so.
    """

    data: np.ndarray
    voxel_size: tuple[float, ...] | None
    axes: str
    voxel_problem: str | None = None  # why a voxel size recorded in the file was not usable
    partial_voxel: tuple | None = None  # the sizes of a file that calibrates some axes only (None for the rest)
    z_step_assumed: bool = False  # the z step is ImageJ's default: the file records none


def read_image(path) -> Image:
    """Read a 2D or 3D TIFF (plain, ImageJ hyperstack or OME-TIFF).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.tif``/``.tiff`` file.

    Returns
    -------
    Image
        float32 data with singleton axes removed, the voxel size in micrometres
        (from OME ``PhysicalSize*`` or ImageJ ``spacing`` plus the resolution
        tags; None when missing) and the axes string.

    Raises
    ------
    InputError
        If the file is missing, not a regular file (a named pipe, a socket, a device), not a
        readable TIFF (truncated or corrupt included: a page whose pixel data lie at offset 0 or
        past the end of the file; an OME-TIFF whose OME-XML lists other planes than the file
        holds), not 2D/3D, multi-channel, time-lapse or RGB, empty, or contains NaN/Inf values.

    Notes
    -----
    An ImageJ file without a ``spacing`` entry has Fiji's default voxel depth of 1
    (in its unit): ImageJ does not write ``spacing`` when it is 1. An ImageJ intensity
    calibration that is a straight line is applied, as Fiji shows the values (Fiji stores signed
    16-bit data as unsigned with an offset of -32768); another function is refused.

    Examples
    --------
    >>> img = read_image("stack.tif")  # doctest: +SKIP
    >>> img.data.shape, img.voxel_size  # doctest: +SKIP
    ((64, 256, 256), (0.2, 0.065, 0.065))
    """
    return _read_tiff(path, "image")


def _read_tiff(path, what: str) -> Image:
    """:func:`read_image`, its errors naming the file as ``what`` is (``"image"``, ``"PSF"``) and
    giving the fix that fits one (a PSF with a channel axis is not fixed by picking a time point)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"read_image takes a file's path, got {type(path).__name__}: an array in memory needs no "
                         "reading")
    path = Path(path)
    if path.is_dir():
        kind = "an OME-Zarr folder" if path.suffix.lower() == ".zarr" else "a folder"
        raise InputError(f"{path} is {kind}, and this reads a TIFF file: give a .tif"
                         + (" (save the image as one)" if path.suffix.lower() == ".zarr" else ""))
    refuse_special_file(path, "input" if what == "image" else what)  # (a named pipe was "not found")
    if not path.is_file():
        raise InputError(f"input file not found: {path}: check the path")
    _check_suffix(path, "input" if what == "image" else what)
    try:
        with _tifffile_log() as log:
            with open_tiff(path, what) as (tif, series, _):
                calibration = imagej_calibration(tif, series.dtype, path, what)
                data = series.asarray()
                file_axes = series.axes
                voxel = _voxel_size_um(tif, series)
                _check_complete(tif, series, log, path, what)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise _unreadable_tiff(path, exc, what) from exc
    data, axes, kept = _squeeze(np.asarray(data), file_axes, path, what)
    sizes = _kept_voxel(voxel, kept, data.ndim)
    voxel, problem = _checked_voxel(sizes, path)
    return Image(data=calibrated(_as_float32(data, path, what), calibration), voxel_size=voxel, axes=axes,
                 voxel_problem=problem, partial_voxel=_partial_voxel(sizes), z_step_assumed=z_step_assumed(sizes))


def psf_path_problem(path) -> str | None:
    """Why ``path`` cannot be a PSF file, as a one-line message, or None: PSFs are read from TIFF
    files only (:func:`read_psf`), so a folder (an OME-Zarr one: "PSF file not found", though it
    was there) or a missing file is named as such."""
    path = Path(path)
    if path.is_dir():
        zarr = path.suffix.lower() == ".zarr"
        return (f"PSF {path} is {'an OME-Zarr folder' if zarr else 'a folder'}, and PSFs are read from TIFF files "
                "only: give a .tif" + (" (write the PSF's array to one, e.g. with deconv3d.io.write_tiff)" if zarr
                                       else ""))
    if (problem := special_file_problem(path, "PSF")) is not None:
        return problem
    if not path.is_file():
        return f"PSF file not found: {path}: check the path"
    return None


def psf_dimension_problem(psf, psf_ndim: int, image, ndim: int) -> str | None:
    """Why the PSF file ``psf`` (``psf_ndim``-D) cannot deconvolve ``image`` (``ndim``-D), as a one-line
    message naming both files as given and how to make a PSF that fits, or None where the counts agree. A
    single plane (a 1 x Y x X stack too) is 2D: its PSF is a plane."""
    if psf_ndim == ndim:
        return None
    make = ("a 2D PSF: the in-focus plane of a 3D one, or a plane made by "
            "'deconv3d psf --shape 63 63 --voxel-size DY DX ...'" if ndim == 2
            else "a 3D PSF, e.g. made by 'deconv3d psf --shape 31 63 63 ...'")
    return f"PSF {path_text(psf)} is {psf_ndim}D but {path_text(image)} is {ndim}D: a {ndim}D image needs {make}"


def psf_size_problem(psf, psf_shape, image, image_shape) -> str:
    """The one-line refusal of the PSF file ``psf``, of ``psf_shape`` voxels at the image's voxel size,
    larger than the image file ``image`` of ``image_shape`` along some axis, naming both files and
    shapes (``image`` None: "the image", without its name): a PSF shape that fits (each axis no longer
    than the image's largest odd length), or, for a stack of 2 planes (where a 1-plane PSF reads as 2D),
    a thicker stack or its planes deconvolved in 2D, or, for an image of 1 or 2 voxels along y or x
    (where that PSF would be 1 voxel wide, which ``deconv3d psf`` refuses), a larger field."""
    axes = "zyx"[3 - len(image_shape):] if len(image_shape) <= 3 else "?" * len(image_shape)
    larger = ", ".join(a for a, p, n in zip(axes, psf_shape, image_shape) if p > n)
    fits = [min(p, n - 1 + n % 2) for p, n in zip(psf_shape, image_shape)]
    image = "the image" if image is None else f"the image {image}"
    problem = (f"PSF {psf} {tuple(psf_shape)} is larger than {image} {tuple(image_shape)} along {larger} "
               "(in the image's voxels)")
    if len(image_shape) == 3 and image_shape[0] < 3:
        return (f"{problem}: {image_shape[0]} z-planes are too few for a 3D PSF: image a thicker stack, or "
                "deconvolve each plane as a 2D image with a 2D PSF")
    # (whether or not the PSF outgrows those axes: a PSF that fits would be 1 voxel wide there)
    narrow = [f"{n} along {a}" for a, n in zip(axes[-2:], image_shape[-2:]) if n < 3]
    if narrow:  # a PSF that fits would be 1 voxel wide, which 'deconv3d psf' refuses: no light spread to undo
        return f"{problem}: the image is too small to deconvolve ({', '.join(narrow)}): image a larger field"
    return (f"{problem}: use a PSF made for this image, e.g. 'deconv3d psf --shape {' '.join(map(str, fits))} "
            "--voxel-size ...' at its voxel size (or the PSF cropped to that), or image a larger volume")


@contextlib.contextmanager
def naming_psf_and_image(psf, image):
    """Turn :class:`~deconv3d.errors.PSFLargerThanImage` raised within into :func:`psf_size_problem`'s
    message about the PSF file ``psf`` and the image file ``image`` (its ``without_file`` without the image's name)."""
    try:
        yield
    except PSFLargerThanImage as error:
        raise InputError(psf_size_problem(psf, error.psf_shape, image, error.image_shape),
                         without_file=psf_size_problem(psf, error.psf_shape, None, error.image_shape)) from None


def read_psf(path) -> Image:
    """:func:`read_image` for a PSF file: a voxel size that the file records but that is not
    positive is refused (ignoring it would skip the resampling to the image's voxel size), and so
    is one that looks like nanometres (:func:`deconv3d._voxel.refuse_nanometres`).

    The last file read is remembered (by path, inode, size and change times), so that a run that
    asks for the PSF's voxel size and then for the PSF reads a large measured PSF once; every
    call returns its own copy of the data. A folder or a missing file is refused by name
    (:func:`psf_path_problem`), and every other error names the file as the PSF ("PSF X has 4
    non-singleton dimensions"), with a PSF's fix: it was called an image, with the image's fix.
    """
    problem = psf_path_problem(path) if isinstance(path, (str, os.PathLike)) else None
    if problem:
        raise InputError(problem)
    key = file_identity(path) if Path(path).is_file() else None
    with _PSF_LOCK:
        cached = _PSF_CACHE.get(key) if key is not None else None
    if cached is None:
        cached = _read_tiff(path, "PSF")
        if cached.voxel_problem:
            raise InputError(f"PSF {cached.voxel_problem}: fix its calibration (Fiji: Image > Properties) or save "
                             "it without one")
        if cached.z_step_assumed and cached.voxel_size is not None:
            _refuse_implausible_psf_z_step(cached.voxel_size[0], path)
        refuse_nanometres(cached.voxel_size, f"fix the unit of {path} (Fiji: Image > Properties)", "PSF voxel size")
        if key is not None:
            with _PSF_LOCK:
                _PSF_CACHE.clear()
                _PSF_CACHE[key] = cached
    return replace(cached, data=cached.data.copy())


_PSF_CACHE: dict = {}  # the last PSF file read_psf read: {file_identity(path): Image}
_PSF_LOCK = threading.Lock()


def _refuse_implausible_psf_z_step(z: float, path) -> None:
    """Refuse a PSF file whose z step ``z`` is ImageJ's default (it records none) and lies below
    :data:`deconv3d._voxel.LEAST_ASSUMED_Z_STEP` (a file in nanometres: a 1 nm step) or above
    :data:`deconv3d._voxel.NANOMETRE_LIKE` (in millimetres or centimetres), as an image's is: a
    missing z step, not a wrong unit (:func:`read_psf` calls it before it refuses nanometres)."""
    from deconv3d._voxel import implausible_assumed_z_step

    if problem := implausible_assumed_z_step(f"the PSF file {path}", z):
        raise InputError(f"{problem}: record its z step in the file (Fiji: Image > Properties)")


def _check_assumed_psf_z_step(z: float, path, warnings: list | None) -> None:
    """Warn (into ``warnings``, else at once) that the PSF file ``path``'s z step ``z`` is ImageJ's default
    (:func:`_refuse_implausible_psf_z_step` first)."""
    _refuse_implausible_psf_z_step(z, path)
    fix = "record its z step in the file (Fiji: Image > Properties)"
    warn(f"deconv3d: warning: the PSF file {path} records no z step, so ImageJ's default is taken, as Fiji "
         f"takes it: {z:g} µm (the PSF is resampled from it to the image's planes); {fix} if its planes are not "
         f"{z:g} µm apart", warnings)


def psf_voxel_size(psf: Image, image_voxel, path=None, warnings: list | None = None):
    """The voxel size of a PSF read by :func:`read_psf`: its own, or where it calibrates some axes
    only (a lateral pixel size without a z step) those completed from ``image_voxel``; where it
    calibrates none, ``image_voxel`` (the PSF taken as sampled like the image, which
    :func:`assume_psf_voxel` warns about), or None.

    Taking such a PSF as sampled like the image throughout dropped its known lateral size: a PSF
    at 0.05 µm pixels was used as is on 0.065 µm ones, 30% too wide. A PSF file (``path``, for the
    message) whose z step is ImageJ's default, as it records none, is warned about (into ``warnings``, for a
    caller that prints them once the input is checked, else at once).
    """
    if path is not None and psf.z_step_assumed and psf.voxel_size is not None:
        _check_assumed_psf_z_step(psf.voxel_size[0], path, warnings)
    if psf.voxel_size is not None or image_voxel is None:
        return psf.voxel_size
    if psf.partial_voxel is None:
        return tuple(float(i) for i in image_voxel)
    if len(psf.partial_voxel) != len(image_voxel):
        return None
    return tuple(float(i) if p is None else p for p, i in zip(psf.partial_voxel, image_voxel))


def _sizes(values) -> str:
    """Voxel sizes as the command line takes them, ``D?`` where unknown: ``0.3 0.1 0.1``, ``DZ 0.1 0.1``."""
    return format_sizes(values, ("DZ", "DY", "DX")[-len(values):])


def _squeeze(data: np.ndarray, axes: str, path: Path, what: str = "image") -> tuple[np.ndarray, str, str]:
    """Drop singleton axes and check that what is left is a 2D or 3D image (or PSF: ``what``).

    Returns the data, its axes (``"ZYX"``, ``"YX"``, or ``"ZX"``/``"ZY"`` for a section through a
    stack: :func:`~deconv3d._tiff_voxel_sizes.spatial_letters`) and the file's letters of the axes
    kept (``""`` when the file's axes do not match the data).
    """
    keep = [i for i, n in enumerate(data.shape) if n != 1]
    kept_axes = "".join(axes[i] for i in keep) if len(axes) == data.ndim else ""
    data = data.reshape([data.shape[i] for i in keep])
    _refuse_colour(kept_axes, path, what)
    name = _named(path, what)
    if data.size == 0:
        raise InputError(f"{name} is empty (shape {data.shape}): check the file")
    one = _ONE_CHANNEL[what]
    if data.ndim > 3:
        raise InputError(f"{name} has {data.ndim} non-singleton dimensions (axes {kept_axes or '?'}, shape "
                         f"{data.shape}): {one}")
    if data.ndim < 2:
        needed = ("a PSF must be a 2D or 3D stack: give the PSF's whole array (deconv3d psf computes one)"
                  if what == "PSF" else f"a 2D or 3D {what} is needed")
        raise InputError(f"{name} is {data.ndim}D once its axes of length 1 are dropped (shape {data.shape}): "
                         + needed)
    # (a channel or time axis among the last two too: a ZCYX file of one row is not a z, y, x stack)
    extra = [a for i, a in enumerate(kept_axes) if a in "TC" or (i < len(kept_axes) - 2 and a not in _GENERIC_AXES)]
    if extra:
        kind = {"C": "channel", "T": "time", "S": "colour-sample"}.get(extra[0], extra[0])
        raise InputError(f"{name} has a {kind} axis (axes {kept_axes}): {one} (if the planes are z-slices, "
                         "relabel them as slices, e.g. in Fiji's Image > Properties)")
    return data, spatial_letters(kept_axes, data.ndim), kept_axes


def _refuse_colour(kept_axes: str, path: Path, what: str = "image") -> None:
    """An RGB file keeps a sample axis ``S`` (grey-level samples are refused by _check_decodable); the refusal of
    an image says it of "the image" too (its ``without_file``)."""
    if "S" in kept_axes:
        raise _refusal(lambda name: f"{name} is an RGB/colour image (axes {kept_axes}): convert it to greyscale or "
                       "split the channels and keep one (Fiji: Image > Color > Split Channels)", path, what, bare=False)


def _as_float32(data: np.ndarray, path: Path, what: str = "image") -> np.ndarray:
    name = _named(path, what)
    refuse_complex(data.dtype, name, "save the intensity (magnitude) instead")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(converted).all():
        refuse_beyond_float32(data, converted, name, what)
        if what == "image":  # (a chunked run's refusal, which can say where: the block or box it is met in)
            raise NonFiniteValues(what, NON_FINITE_FILE_FIX, file=str(path))
        raise InputError(f"{name} contains NaN or Inf values: {NON_FINITE_FILE_FIX}")
    return converted


def refuse_beyond_float32(data: np.ndarray, converted: np.ndarray, name: str, what: str = "image") -> None:
    """Refuse ``data`` (``name``: ``"image X"``) whose finite values ``converted`` to float32 made Inf: float64
    values past float32's range, which the file does not hold as NaN or Inf
    (:class:`~deconv3d.errors.BeyondFloat32`)."""
    beyond = np.isinf(converted) & np.isfinite(data)
    if beyond.any():
        raise BeyondFloat32(name, float(np.abs(data[beyond]).max()), what)
