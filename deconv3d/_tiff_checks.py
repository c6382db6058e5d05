"""Opening a TIFF and refusing a damaged or odd one before its pixels are used.

:func:`open_tiff` opens a TIFF and picks the series that is its image (planes written one series
each read as one stack; several images, thumbnails and masks told apart). The checks here refuse,
with a one-line :class:`~deconv3d.errors.InputError`, pixels no installed codec decodes
(:func:`_check_decodable`), strip or tile offsets that point at no data (:func:`_check_data_offsets`),
a file tifffile could read only in part or an OME-TIFF whose OME-XML lists other planes than it
holds (:func:`_check_complete`, :func:`_check_ome_planes`); :func:`_tifffile_log` holds tifffile's
log messages back during a read, :func:`_unreadable_tiff` words the error for a file that could not
be read, and :func:`_named` how every error names the file (an image or a PSF). Used by
:mod:`deconv3d.io` and by the lazy TIFF reading of :mod:`deconv3d.omezarr.tiff_reading`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
import threading
from pathlib import Path

import numpy as np
import tifffile

from deconv3d._paths import _one_line
from deconv3d.errors import InputError, naming_file, naming_image


# What a file with a channel or time axis (or more than three) should become, by what it is
_ONE_CHANNEL = {
    "image": "only one 2D or 3D image is read here, not multi-channel/time data (deconvolve and batch take each "
             "channel and time point); pick one channel and time point first",
    "PSF": "a PSF must be one 2D or 3D stack (one channel, one time point): save each channel's PSF as its own "
           "file and give one file per channel",
}


def _named(path, what: str = "image", bare: bool = False) -> str:
    """How an error names the file it is about: ``"image X"``, ``"PSF X"``. With ``bare``, for a
    message whose wording shows that it is about the file being read, an image is named by its path
    alone; a PSF is still named as one (its errors read as if about the image otherwise)."""
    return str(path) if bare and what == "image" else f"{what} {path}"


def _refusal(say, path, what: str = "image", bare: bool = True) -> InputError:
    """The refusal ``say(name)``, ``say`` wording the line about the file it is given the name of, ``name``
    the file ``path`` as :func:`_named` says it; about an image (the input), with ``say("the image")`` as its
    ``without_file``: a batch's line names the input before the reason."""
    if what == "image":
        return naming_image(say, _named(path, what, bare))
    return InputError(say(_named(path, what, bare)))


def _unreadable_tiff(path, exc: Exception, what: str = "image") -> InputError:
    """The one-line error for a TIFF that could not be read: a permission problem says so (it was
    told to check that the file is a TIFF, or export it again)."""
    if isinstance(exc, PermissionError):
        def say(name):
            return (f"cannot read {name}: permission denied: ask for read access to it, or copy it somewhere you "
                    "can read")
    else:
        def say(name):
            return f"cannot read {name} as a TIFF image: {_one_line(exc)}: check that it is one, or export it again"
    if what != "image":
        return InputError(say(_named(path, what)))
    return naming_file(say, path)  # (said in a batch's line that names the file)


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
    reopen: dict = {}
    tif = tifffile.TiffFile(path)
    try:
        images = [s for s in tif.series if not (s.pages and (s.pages[0].is_reduced or s.pages[0].is_mask))]
        images = images or list(tif.series[:1])
        if not images:
            raise _refusal(lambda name: f"{name} holds no image, only a TIFF header (a save that was interrupted?): "
                           "export or copy it again", path, what)
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
                raise _refusal(lambda name: f"{name} holds {len(images)} separate images (shapes {listed}): save "
                               f"{keep} as its own file (Fiji: open it with Bio-Formats, then File > Save As)", path, what)
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
    page = series.pages[0] if series.pages else None
    compression = page.compression if page is not None else None
    if compression is not None and compression not in tifffile.TIFF.DECOMPRESSORS:
        codec = getattr(compression, "name", str(compression))
        if _imagecodecs_would_decode(compression, tifffile.COMPRESSION):
            raise _refusal(lambda name: f"{name} is {codec}-compressed, which needs the imagecodecs package: pip "
                           "install imagecodecs, or save the file uncompressed (Fiji: File > Save As > Tiff)", path, what)
        raise _refusal(lambda name: f"{name} uses compression {codec}, which deconv3d cannot decode: the file may be "
                       "damaged, or re-save it uncompressed (Fiji: File > Save As > Tiff)", path, what)
    predictor = getattr(page, "predictor", None)
    if predictor is not None and predictor not in tifffile.TIFF.UNPREDICTORS:  # GDAL's and tifffile's float one
        codec = getattr(predictor, "name", str(predictor)).lower().replace("_", " ")
        if _imagecodecs_would_decode(predictor, tifffile.PREDICTOR):
            raise _refusal(lambda name: f"{name} is compressed with a {codec} predictor, which needs the imagecodecs "
                           "package: pip install imagecodecs, or save the file uncompressed (Fiji: File > Save As > "
                           "Tiff)", path, what)
        raise _refusal(lambda name: f"{name} uses predictor {codec}, which deconv3d cannot decode: the file may be "
                       "damaged, or re-save it uncompressed (Fiji: File > Save As > Tiff)", path, what)
    samples = getattr(page, "samplesperpixel", 1)
    grey = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    if samples > 1 and getattr(page, "photometric", None) in grey:  # stored per pixel or as planes alike
        fix = "save one per file and pick it" if what == "image" else _ONE_CHANNEL[what]
        raise _refusal(lambda name: f"{name} has {samples} grey-level samples per pixel (axes {series.axes}): they "
                       f"are channels; {fix}", path, what, bare=False)
    _refuse_palette(page, path, what)


def _refuse_palette(page, path: Path, what: str = "image") -> None:
    """Refuse an indexed-colour (palette) TIFF, whose pixel values tifffile reads as indices into its
    colour table, unless that table is a ramp: red, green and blue each non-decreasing with the index,
    or each non-increasing. ImageJ saves 8-bit data shown with a grey or single-colour lookup table
    (Green, Magenta) so, or with such a table inverted (Fiji's Image > Lookup Tables > Invert LUT: white
    down to black), and its values are the intensities; they are read as they are, not inverted (the
    table is for display; ImageJ measures the stored values). Another table (Fiji's 8-bit Color, a Fire
    lookup table, one colour rising while another falls) is refused."""
    if getattr(page, "photometric", None) != tifffile.PHOTOMETRIC.PALETTE:
        return
    colormap = getattr(page, "colormap", None)
    colormap = np.asarray(colormap, np.int64) if colormap is not None else None
    if colormap is not None and colormap.ndim == 2:
        steps = np.diff(colormap, axis=-1)
        if (steps >= 0).all() or (steps <= 0).all():
            return
    raise _refusal(lambda name: f"{name} is an indexed-colour (palette) TIFF: its pixel values are entries of a colour "
                   "table, not intensities; if it is 8-bit data shown with a colour lookup table, give it a grey one "
                   "and save it again (Fiji: Image > Lookup Tables > Grays, then File > Save As > Tiff); a colour "
                   "picture (Fiji's 8-bit Color) holds no intensities to deconvolve", path, what, bare=False)


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
        # (another file of a multi-file OME-TIFF: named by its own name, not said of "the image")
        refusal = _refusal if name == path.name else lambda say, *_: InputError(say(_named(name, what, bare=True)))
        kind = "tile" if page.keyframe.is_tiled else "strip"
        for offset, count in [block] if block else zip(page.dataoffsets, page.databytecounts):
            if offset == 0 and count > 0:
                raise refusal(lambda name: f"page {page.index} of {name} has no pixel data ({kind} offset 0): the "
                              "file is damaged; copy or export it again", path, what)
            if offset + count > size:
                raise refusal(lambda name: f"page {page.index} of {name} has pixel data past the end of the file (a "
                              f"{kind} of {count} bytes at byte {offset}, in a file of {size}): the file is truncated "
                              "or damaged; copy or export it again", path, what)


def _check_complete(tif: tifffile.TiffFile, series, log, path: Path, what: str = "image") -> None:
    """Refuse a file that tifffile could read only in part (truncated, bad page offsets)."""
    ij = tif.imagej_metadata or {}
    for record in log:  # a multi-file OME-TIFF whose partner file is missing: tifffile zeroes its planes
        missing = re.search(r"failed to read '([^']+)'", record.getMessage())
        if missing:
            raise _refusal(lambda name: f"{name} is one file of a multi-file OME-TIFF, and its part "
                           f"{missing.group(1)} is missing or unreadable (its planes would be zeros): keep all files "
                           "of the image together", path, what)
    _check_ome_planes(tif, series, path, what)
    planes = math.prod(n for n, a in zip(series.shape, series.axes) if a not in "YXS")
    expected = ij.get("images")
    broken = [r.getMessage() for r in log if any(w in r.getMessage().lower() for w in ("corrupt", "page offset"))]
    if (expected is not None and int(expected) != planes) or broken:
        found = f"its ImageJ header lists {int(expected)} planes but {planes} could be read" if expected else broken[0]
        raise _refusal(lambda name: f"{name} is truncated or corrupt ({_one_line(found)}): copy or export it again",
                       path, what)


def _check_ome_planes(tif: tifffile.TiffFile, series, path: Path, what: str = "image") -> None:
    """Refuse an OME-TIFF whose OME-XML (Size*, TiffData) lists other planes than the file holds:
    tifffile reads it anyway, zeroing the planes the file lacks (SizeZ="20" over 16 pages) or
    leaving out the pages beyond (SizeZ="8"), and only logs it. Reduced-resolution and mask pages
    are not planes. ``path``, ``what``: the file, and how errors name it (:func:`_named`)."""
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
    raise _refusal(lambda name: f"{name}: {problem}: export it again, or correct the SizeZ/SizeC/SizeT and TiffData "
                   "entries of its OME-XML", path, what)
