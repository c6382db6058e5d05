"""Read and write microscopy images with their voxel sizes (TIFF for now).

Voxel sizes are ``(z, y, x)`` in micrometres for 3D images and ``(y, x)`` for
2D ones.  This module is the edge between files and the numeric core: it turns
every problem with a user's file into an :class:`~deconv3d.errors.InputError`
with a one-line message, and it writes outputs atomically so that a failure
never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tifffile

from deconv3d._arrays import refuse_complex
from deconv3d._paths import (TIFF_SUFFIXES, _check_suffix, _one_line, check_output_path, file_identity,
                             special_file_problem)
from deconv3d._tiff_metadata import (_GENERIC_AXES, _checked_voxel, _kept_voxel, _partial_voxel, _voxel_size_um,
                                     calibrated, imagej_calibration, spatial_letters, time_axis_of)
from deconv3d._tiff_write import write_tiff
from deconv3d._voxel import format_sizes, refuse_nanometres
from deconv3d.errors import InputError, warn

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
    """

    data: np.ndarray
    voxel_size: tuple[float, ...] | None
    axes: str
    voxel_problem: str | None = None  # why a voxel size recorded in the file was not usable
    partial_voxel: tuple | None = None  # the sizes of a file that calibrates some axes only (None for the rest)


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
    if (problem := special_file_problem(path)) is not None:  # (a named pipe was "not found")
        raise InputError(problem)
    if not path.is_file():
        raise InputError(f"input file not found: {path}: check the path")
    _check_suffix(path, "input" if what == "image" else what)
    try:
        with _tifffile_log() as log:
            with open_tiff(path, what) as (tif, series, _):
                calibration = imagej_calibration(tif, series.dtype, _named(path, what, bare=True))
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
                 voxel_problem=problem, partial_voxel=_partial_voxel(sizes))


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
        refuse_nanometres(cached.voxel_size, f"fix the unit of {path} (Fiji: Image > Properties)", "PSF voxel size")
        if key is not None:
            with _PSF_LOCK:
                _PSF_CACHE.clear()
                _PSF_CACHE[key] = cached
    return replace(cached, data=cached.data.copy())


_PSF_CACHE: dict = {}  # the last PSF file read_psf read: {file_identity(path): Image}
_PSF_LOCK = threading.Lock()


def assume_psf_voxel(voxel_size, psf_path, ndim: int, source, warnings: list | None = None, partial=None):
    """The image's voxel size, completed from a PSF file where the image does not say.

    ``voxel_size`` is returned as given when known; a PSF file (``psf_path``) that carries no voxel
    size is then taken to be sampled like the image, with a warning. For an image (``source``, for
    the messages) that carries none, the PSF file's own is taken, when it records one per axis of
    the ``ndim``-D image; for one that calibrates some axes only (``partial``, as
    :attr:`Image.partial_voxel`) the PSF's fills the missing axes and the recorded ones are kept.
    Warnings are appended to ``warnings`` (for the caller to print once the input is checked),
    else printed.

    Without this the PSF would be used at whatever sampling it has: a PSF sampled twice as finely
    as the image then deconvolves with the wrong width, silently.
    """
    if psf_path is None:
        return voxel_size
    psf = read_psf(psf_path)
    if psf.data.ndim != ndim:  # refused next, by the dimensionality check: nothing to say of voxel sizes
        return voxel_size
    own = tuple(psf.voxel_size) if psf.voxel_size is not None else None
    if voxel_size is not None:
        if own is None and psf.partial_voxel is not None:
            completed = psf_voxel_size(psf, voxel_size)
            missing = "/".join(a for a, v in zip("zyx"[-ndim:], psf.partial_voxel) if v is None)
            warn(f"deconv3d: warning: the PSF file {psf_path} records no {missing} voxel size; taking the image's "
                 f"for it ({_sizes(completed)} µm)", warnings)
        elif own is None:
            warn(f"deconv3d: warning: the PSF file {psf_path} carries no voxel size; taking it as sampled like "
                 f"the image ({_sizes(voxel_size)} µm)", warnings)
        return voxel_size
    if partial is not None and len(partial) == ndim:
        missing = "/".join(a for a, v in zip("zyx"[-ndim:], partial) if v is None)
        if own is None:
            warn(f"deconv3d: warning: {source} records no {missing} voxel size and the PSF file none: the PSF is "
                 f"taken as sampled like the image and the output carries no voxel size (pass --voxel-size "
                 f"{_sizes(partial)} with the missing values to set it)", warnings)
            return None
        filled = tuple(o if v is None else v for v, o in zip(partial, own))
        warn(f"deconv3d: warning: {source} records no {missing} voxel size; assuming the PSF's for it: "
             f"{_sizes(filled)} µm (pass --voxel-size to set it)", warnings)
        return filled
    if own is None:  # as the partly calibrated case above says: nothing to resample with, nothing to record
        warn(f"deconv3d: warning: neither {source} nor the PSF file {psf_path} records a voxel size: the PSF is "
             f"taken as sampled like the image and the output carries no voxel size (pass --voxel-size "
             f"{_sizes((None,) * ndim)} to set it)", warnings)
        return None
    warn(f"deconv3d: warning: {source} carries no voxel size; assuming the PSF's {own} µm "
         f"(pass --voxel-size to set it)", warnings)
    return own


def psf_voxel_size(psf: Image, image_voxel):
    """The voxel size of a PSF read by :func:`read_psf`: its own, or where it calibrates some axes
    only (a lateral pixel size without a z step) those completed from ``image_voxel``; where it
    calibrates none, ``image_voxel`` (the PSF taken as sampled like the image, which
    :func:`assume_psf_voxel` warns about), or None.

    Taking such a PSF as sampled like the image throughout dropped its known lateral size: a PSF
    at 0.05 µm pixels was used as is on 0.065 µm ones, 30% too wide.
    """
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


def _named(path, what: str = "image", bare: bool = False) -> str:
    """How an error names the file it is about: ``"image X"``, ``"PSF X"``. With ``bare``, for a
    message whose wording shows that it is about the file being read, an image is named by its path
    alone; a PSF is still named as one (its errors read as if about the image otherwise)."""
    return str(path) if bare and what == "image" else f"{what} {path}"


def _unreadable_tiff(path, exc: Exception, what: str = "image") -> InputError:
    """The one-line error for a TIFF that could not be read: a permission problem says so (it was
    told to check that the file is a TIFF, or export it again)."""
    name = _named(path, what, bare=True)
    if isinstance(exc, PermissionError):
        return InputError(f"cannot read {name}: permission denied: ask for read access to it, or copy it somewhere "
                          "you can read")
    return InputError(f"cannot read {name} as a TIFF image: {_one_line(exc)}: check that it is one, or export it again")


@contextlib.contextmanager
def _tifffile_log():
    """Collect what tifffile logs in this thread while reading: its warnings about a broken
    file would otherwise reach stderr ahead of the one-line error. They are passed on after
    a read that succeeds. A filter on the logger, not a change to its handlers or
    propagation, so that reads in other threads are not affected."""
    logger = logging.getLogger("tifffile")
    records: list[logging.LogRecord] = []
    thread = threading.get_ident()

    def keep(record: logging.LogRecord) -> bool:
        if record.thread != thread:
            return True
        records.append(record)
        return False

    logger.addFilter(keep)
    try:
        yield records
    except BaseException:
        records.clear()  # the error says what went wrong
        raise
    finally:
        logger.removeFilter(keep)
        for record in records:
            logger.handle(record)


@contextlib.contextmanager
def open_tiff(path: Path, what: str = "image"):
    """``(TiffFile, series, options)``: the open file, the series that is its image, and the
    ``tifffile`` keywords that read that series (``tifffile.imread(path, **options)``).

    Planes written one series each (``tifffile.imwrite(..., append=True)`` in a loop) are read
    as one stack, as Fiji opens them. Several images of other shapes, or an OME-TIFF holding
    several fields, are refused rather than cut down to the first; a reduced-resolution copy
    (a thumbnail, subfile type 1) or a transparency mask (type 4) is not another image,
    wherever it is stored. Errors name the file as ``what`` is (:func:`_named`).
    """
    name = _named(path, what, bare=True)
    reopen: dict = {}
    tif = tifffile.TiffFile(path)
    try:
        images = [s for s in tif.series if not (s.pages and (s.pages[0].is_reduced or s.pages[0].is_mask))]
        images = images or list(tif.series[:1])
        if not images:
            raise InputError(f"{name} holds no image, only a TIFF header (a save that was interrupted?): export or "
                             "copy it again")
        if len(images) > 1:
            shapes = {(tuple(n for n in s.shape if n != 1), np.dtype(s.dtype)) for s in images}
            planes = len(shapes) == 1 and len(next(iter(shapes))[0]) == 2 and not tif.is_ome
            if planes:
                tif.close()
                reopen = {"is_shaped": False}  # tifffile's generic reading: uniform pages are one stack
                tif = tifffile.TiffFile(path, **reopen)
            if not planes or len(tif.series[0].pages) != len(images):
                listed = ", ".join(f"{tuple(s.shape)} {np.dtype(s.dtype)}" for s in images[:3]) + (
                    ", ..." if len(images) > 3 else "")
                keep = "the PSF" if what == "PSF" else "the one to deconvolve"
                raise InputError(f"{name} holds {len(images)} separate images (shapes {listed}): save {keep} as its "
                                 "own file (Fiji: open it with Bio-Formats, then File > Save As)")
            images = [tif.series[0]]
        _check_decodable(images[0], path, what)
        _check_data_offsets(images[0], path, what)
        yield tif, images[0], {**reopen, "series": tif.series.index(images[0])}
    finally:
        tif.close()


def _check_decodable(series, path: Path, what: str = "image") -> None:
    """Refuse, before anything is read, pixels compressed with a codec or predictor tifffile has only
    through the optional ``imagecodecs`` package (LZW, JPEG, the floating-point predictor: common in
    exports; a lazy read found out only while computing, as an internal error; the advice to install
    it is given only where it would help), and grey-level samples per pixel, which ImageJ opens as
    channels (stored as planes they were read as z)."""
    name = _named(path, what, bare=True)
    page = series.pages[0] if series.pages else None
    compression = page.compression if page is not None else None
    if compression is not None and compression not in tifffile.TIFF.DECOMPRESSORS:
        codec = getattr(compression, "name", str(compression))
        if _imagecodecs_would_decode(compression, tifffile.COMPRESSION):
            raise InputError(f"{name} is {codec}-compressed, which needs the imagecodecs package: pip install "
                             "imagecodecs, or save the file uncompressed (Fiji: File > Save As > Tiff)")
        raise InputError(f"{name} uses compression {codec}, which deconv3d cannot decode: the file may be damaged, "
                         "or re-save it uncompressed (Fiji: File > Save As > Tiff)")
    predictor = getattr(page, "predictor", None)
    if predictor is not None and predictor not in tifffile.TIFF.UNPREDICTORS:  # GDAL's and tifffile's float one
        codec = getattr(predictor, "name", str(predictor)).lower().replace("_", " ")
        if _imagecodecs_would_decode(predictor, tifffile.PREDICTOR):
            raise InputError(f"{name} is compressed with a {codec} predictor, which needs the imagecodecs package: "
                             "pip install imagecodecs, or save the file uncompressed (Fiji: File > Save As > Tiff)")
        raise InputError(f"{name} uses predictor {codec}, which deconv3d cannot decode: the file may be damaged, or "
                         "re-save it uncompressed (Fiji: File > Save As > Tiff)")
    samples = getattr(page, "samplesperpixel", 1)
    grey = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    if samples > 1 and getattr(page, "photometric", None) in grey:  # stored per pixel or as planes alike
        fix = "save one per file and pick it" if what == "image" else _ONE_CHANNEL[what]
        raise InputError(f"{_named(path, what)} has {samples} grey-level samples per pixel (axes {series.axes}): they "
                         f"are channels; {fix}")


def _imagecodecs_would_decode(code, known) -> bool:
    """Whether installing imagecodecs is the fix for a compression or predictor ``code`` tifffile cannot
    decode: one it names (in the enum ``known``), with imagecodecs not installed. A number it does not
    know (a damaged tag: 60000) was sent to pip install imagecodecs, which was installed."""
    if not isinstance(code, known):
        return False
    try:
        importlib.import_module("imagecodecs")
    except ImportError:
        return True
    return False


def _check_data_offsets(series, path: Path, what: str = "image") -> None:
    """Refuse, from the page tags alone, pixel data that no file holds: a strip or tile offset of 0
    with bytes to read (read as pixels, the TIFF header came back; a lazy read gave zeros) or one past
    the end of its file. Offset 0 with byte count 0 is an empty tile or strip of a sparse file (tifffile
    writes them for tiles not given; GeoTIFF's sparse files), which TIFF readers fill with zeros: read
    so. A contiguous stack (ImageJ's, tifffile's shaped files) is read as one block from its first
    page: only that block counts."""
    if series.dataoffset is not None:
        pages, block = series.pages[:1], (series.dataoffset, series.nbytes)
    else:
        pages, block = series, None
    for page in pages:
        if page is None:  # a plane no page holds: _check_ome_planes says so
            continue
        size, name = page.parent.filehandle.size, page.parent.filename
        name = _named(path if name == path.name else name, what, bare=True)
        kind = "tile" if page.keyframe.is_tiled else "strip"
        for offset, count in [block] if block else zip(page.dataoffsets, page.databytecounts):
            if offset == 0 and count > 0:
                raise InputError(f"page {page.index} of {name} has no pixel data ({kind} offset 0): the file is "
                                 "damaged; copy or export it again")
            if offset + count > size:
                raise InputError(f"page {page.index} of {name} has pixel data past the end of the file (a {kind} of "
                                 f"{count} bytes at byte {offset}, in a file of {size}): the file is truncated or "
                                 "damaged; copy or export it again")


def _check_complete(tif: tifffile.TiffFile, series, log, path: Path, what: str = "image") -> None:
    """Refuse a file that tifffile could read only in part (truncated, bad page offsets)."""
    name = _named(path, what, bare=True)
    ij = tif.imagej_metadata or {}
    for record in log:  # a multi-file OME-TIFF whose partner file is missing: tifffile zeroes its planes
        missing = re.search(r"failed to read '([^']+)'", record.getMessage())
        if missing:
            raise InputError(f"{name} is one file of a multi-file OME-TIFF, and its part {missing.group(1)} is "
                             "missing or unreadable (its planes would be zeros): keep all files of the image together")
    _check_ome_planes(tif, series, name)
    planes = math.prod(n for n, a in zip(series.shape, series.axes) if a not in "YXS")
    expected = ij.get("images")
    broken = [r.getMessage() for r in log if any(w in r.getMessage().lower() for w in ("corrupt", "page offset"))]
    if (expected is not None and int(expected) != planes) or broken:
        found = f"its ImageJ header lists {int(expected)} planes but {planes} could be read" if expected else broken[0]
        raise InputError(f"{name} is truncated or corrupt ({_one_line(found)}): copy or export it again")


def _check_ome_planes(tif: tifffile.TiffFile, series, name: str) -> None:
    """Refuse an OME-TIFF whose OME-XML (Size*, TiffData) lists other planes than the file holds:
    tifffile reads it anyway, zeroing the planes the file lacks (SizeZ="20" over 16 pages) or
    leaving out the pages beyond (SizeZ="8"), and only logs it. Reduced-resolution and mask pages
    are not planes. ``name``: the file as errors name it (:func:`_named`)."""
    if series.kind != "ome":
        return
    listed = len(series)
    mapped = {page.index for page in series if page is not None and page.parent is tif}
    found = sum(page is not None for page in series)
    unmapped = sum(1 for i in range(len(tif.pages)) if i not in mapped
                   and not ((page := tif.pages.get(i)) is not None and (page.is_reduced or page.is_mask)))
    if found == listed and not unmapped:
        return
    held = f"the file holds {len(mapped) + unmapped}" if not series.is_multifile else f"{found} are found in its files"
    if series.is_multifile or len(mapped) + unmapped != listed:
        problem = f"its OME-XML lists {listed} planes but {held}"
    else:
        problem = f"its OME-XML maps {listed - found} of its {listed} planes to no page of the file"
    raise InputError(f"{name}: {problem}: export it again, or correct the SizeZ/SizeC/SizeT and TiffData entries "
                     "of its OME-XML")


def _squeeze(data: np.ndarray, axes: str, path: Path, what: str = "image") -> tuple[np.ndarray, str, str]:
    """Drop singleton axes and check that what is left is a 2D or 3D image (or PSF: ``what``).

    Returns the data, its axes (``"ZYX"``, ``"YX"``, or ``"ZX"``/``"ZY"`` for a section through a
    stack: :func:`~deconv3d._tiff_metadata.spatial_letters`) and the file's letters of the axes
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


# What a file with a channel or time axis (or more than three) should become, by what it is
_ONE_CHANNEL = {
    "image": "multi-channel/time data are not supported yet; pick one channel and time point first",
    "PSF": "a PSF must be one 2D or 3D stack (one channel): save each channel's PSF as its own file and give one "
           "file per channel",
}


def _refuse_colour(kept_axes: str, path: Path, what: str = "image") -> None:
    """An RGB file keeps a sample axis ``S`` (grey-level samples are refused by _check_decodable)."""
    if "S" in kept_axes:
        raise InputError(f"{_named(path, what)} is an RGB/colour image (axes {kept_axes}): convert it to greyscale or "
                         "split the channels and keep one (Fiji: Image > Color > Split Channels)")


def _as_float32(data: np.ndarray, path: Path, what: str = "image") -> np.ndarray:
    name = _named(path, what)
    refuse_complex(data.dtype, name, "save the intensity (magnitude) instead")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(converted).all():
        if np.isfinite(data).all():  # finite in the file: float64 values beyond float32's range
            peak = float(np.abs(data).max())
            raise InputError(f"{name} has values up to {peak:.3g}, beyond the float32 range (3.4e38) "
                             f"deconv3d computes in: rescale the {what} and save it again")
        raise InputError(f"{name} contains NaN or Inf values: replace them (e.g. with 0) and save it again")
    return converted
