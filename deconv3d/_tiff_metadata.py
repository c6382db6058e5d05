"""Voxel sizes, time steps and channel names from TIFF metadata (OME-XML, ImageJ tags, resolution
tags), in micrometres and OME-Zarr unit names; shared by :mod:`deconv3d.io` and :mod:`deconv3d.omezarr`."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import tifffile


# Micrometres per unit; keys are lower-case with the micro sign normalised to "u". The names
# are those ImageJ/Fiji users type, OME-XML's symbols and OME-Zarr's (UDUNITS) names.
_UNIT_TO_UM = {
    "um": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "dm": 1e5, "decimeter": 1e5, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "\u00c5": 1e-4, "\u00e5": 1e-4, "a": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6,
    "in": 25400.0, "inch": 25400.0, "ft": 304800.0, "foot": 304800.0,
}
# Plural forms ("meters", "inches", ...) of the names above.
_UNIT_TO_UM.update({("inches" if k == "inch" else "feet" if k == "foot" else k + "s"): v
                    for k, v in list(_UNIT_TO_UM.items()) if len(k) > 2 and not k.endswith("s")})
# Units that say the image is not calibrated (ImageJ's default unit is "pixel").
_UNCALIBRATED = frozenset({"", "pixel", "pixels", "px", "pix", "reference frame"})


class UnknownUnit(str):
    """A recorded size whose unit deconv3d cannot convert: the unit's name, kept in place of the
    size so that the reader can name it (:func:`_checked_voxel`)."""


class DefaultStep(float):
    """An ImageJ file's z step where it records none: ImageJ's default of 1 in the file's unit (its
    writer leaves ``spacing`` out when it is 1, and Fiji shows 1), in micrometres. Taken, as Fiji
    takes it, and marked so that the reader can say it was assumed (:func:`z_step_assumed`): a
    stack written without its z step got a 1 µm one silently, and a PSF sampled at 0.3 µm was
    resampled to 1 µm planes for it."""


def z_step_assumed(sizes) -> bool:
    """Whether the recorded sizes of a file's kept axes hold ImageJ's default z step (:class:`DefaultStep`)."""
    return any(isinstance(s, DefaultStep) for s in sizes)


def _marked_default(z, ij: dict):
    """``z`` as a :class:`DefaultStep` where ImageJ's metadata ``ij`` record no ``spacing`` (a size
    in µm; None or an unknown unit pass as they are)."""
    return DefaultStep(z) if "spacing" not in ij and isinstance(z, float) else z


# Axes that tifffile reports for a stack of planes without further meaning.
_GENERIC_AXES = frozenset("ZIQ")


def _unit_factor(unit) -> float | None:
    """Micrometres per ``unit``; None for unknown units or uncalibrated pixels."""
    return _UNIT_TO_UM.get(_unit_key(unit))


def _unit_key(unit) -> str:
    key = str(unit).strip().lower()
    for micro in ("\\u00b5", "\u00b5", "\u03bc"):
        key = key.replace(micro, "u")
    return key


def _size_in_um(value, unit):
    """``value`` (in ``unit``) in micrometres; None for an uncalibrated unit, :class:`UnknownUnit`
    for a unit that cannot be converted."""
    factor = _unit_factor(unit)
    if factor is not None:
        return float(value) * factor
    return None if _unit_key(unit) in _UNCALIBRATED else UnknownUnit(str(unit).strip())


def _voxel_size_um(tif: tifffile.TiffFile, series) -> list:
    """[z, y, x] voxel size in micrometres of the image ``series`` from OME or ImageJ metadata; None
    where unknown. The resolution tags are the series' own first page's: a thumbnail or mask
    page before the image (subfile types 1 and 4) has its own, coarser ones."""
    if tif.is_ome and tif.ome_metadata:
        voxel = _ome_voxel_size(tif.ome_metadata)
        if any(v is not None for v in voxel[1:]):
            return voxel
    return _imagej_voxel_size(tif, series.keyframe if series.pages else tif.pages[0])


# OME-Zarr (UDUNITS) names of OME-XML's time units (UnitsTime), by symbol, case and all: "Ms" is a
# megasecond, "ms" a millisecond. OME-Zarr names no decasecond ("das"): it is left without a unit.
_OME_TIME_UNITS = {"Ys": "yottasecond", "Zs": "zettasecond", "Es": "exasecond", "Ps": "petasecond",
                   "Ts": "terasecond", "Gs": "gigasecond", "Ms": "megasecond", "ks": "kilosecond",
                   "hs": "hectosecond", "s": "second", "ds": "decisecond", "cs": "centisecond", "ms": "millisecond",
                   "\u00b5s": "microsecond", "ns": "nanosecond", "ps": "picosecond", "fs": "femtosecond",
                   "as": "attosecond", "zs": "zeptosecond", "ys": "yoctosecond", "min": "minute", "h": "hour",
                   "d": "day"}
# OME-Zarr (UDUNITS) names of the time units that ImageJ users type (Fiji takes any text: "secs", "hrs", "days",
# "msec" were dropped) and OME-XML writers that stray from it; keys as _unit_key makes them (lower case, µ as "u").
_TIME_UNITS = {spelling: name for name, spellings in {
    "second": ("s", "sec", "secs", "second", "seconds"), "minute": ("min", "mins", "minute", "minutes"),
    "hour": ("h", "hr", "hrs", "hour", "hours"), "day": ("d", "day", "days"),
    "millisecond": ("ms", "msec", "msecs", "millisecond", "milliseconds"),
    "microsecond": ("us", "usec", "usecs", "microsecond", "microseconds"),
    "nanosecond": ("ns", "nsec", "nsecs", "nanosecond", "nanoseconds")}.items() for spelling in spellings}


def time_axis_of(tif: tifffile.TiffFile) -> tuple | None:
    """``(step, unit)`` of the T axis an OME-TIFF (``TimeIncrement``) or an ImageJ hyperstack
    (``finterval``, unit ``tunit``, else seconds; else deconv3d's property ``time_step``, without a
    unit) records, the unit an OME-Zarr name or None; None when neither records one. A unit that
    has no OME-Zarr name here is warned about, by name (the step is kept without it). The start
    (:func:`time_axis_and_problem`) is left out."""
    axis, problem = time_axis_and_problem(tif)
    if problem:
        from deconv3d.errors import warn

        warn(f"deconv3d: warning: {problem}")
    return None if axis is None else axis[:2]


def time_axis_and_problem(tif: tifffile.TiffFile) -> tuple:
    """(:func:`time_axis_of`, the warning about its unit or None), without warning: an image's reader
    keeps the warning (:attr:`~deconv3d.omezarr.LazyImage.time_problem`) for the run that writes
    that axis, which gives it once its checks pass (opened twice, a refused run warned twice first).
    The axis is ``(step, unit[, start])``: an ImageJ hyperstack's property ``time_origin``, which
    deconv3d writes where it is not 0 (ImageJ has no key for it), is its start."""
    step, unit, symbols, start = None, None, {}, None
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels(tif.ome_metadata)
        if pixels is not None and pixels.get("TimeIncrement") is not None:
            step, unit = pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s")
            symbols = _OME_TIME_UNITS
    elif tif.imagej_metadata:
        ij = tif.imagej_metadata
        properties = ij.get("Properties") if isinstance(ij.get("Properties"), dict) else {}
        if ij.get("finterval"):
            step, unit = ij["finterval"], ij.get("tunit", "sec")
        else:  # a step with no unit, as deconv3d writes it (a finterval would read as seconds)
            step, unit = properties.get("time_step"), ""
        start = _finite(properties.get("time_origin"))
    step = _finite(step)
    if step is None or not step > 0:
        return None, None
    name = symbols.get(str(unit).strip()) or _TIME_UNITS.get(_unit_key(unit))
    problem = None
    if name is None and str(unit).strip():
        problem = (f"{tif.filename} records its time step in {str(unit).strip()!r}, a unit deconv3d cannot name: "
                   f"the t axis keeps the step {step:g} without a unit (use sec, min, hr, day, ms, us or ns)")
    return (step, name) + ((start,) if start else ()), problem


def _finite(value) -> float | None:
    """``value`` (a number, or its text) as a finite float, else None."""
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def ome_channels(tif: tifffile.TiffFile, count: int) -> tuple | None:
    """The name and colour of each of the ``count`` channels that an OME-TIFF's first image records
    (``Channel`` ``Name`` and ``Color``), as OME-Zarr's ``omero`` ``label`` and ``color`` (six hex
    digits, RGB of OME's signed RGBA integer), or None where it does not give one ``Channel`` per
    channel: without them an OME-Zarr output's channels were unnamed and grey in viewers."""
    pixels = _ome_pixels(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
    found = [el for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"] if pixels is not None else []
    if len(found) != count:
        return None
    channels = []
    for element in found:
        entry = {"label": element.get("Name")} if element.get("Name") else {}
        try:
            entry["color"] = f"{(int(element.get('Color')) & 0xFFFFFFFF) >> 8:06X}"
        except (TypeError, ValueError):  # none recorded, or not an integer
            pass
        channels.append(entry)
    return tuple(channels) if any(channels) else None


def omero_color(color) -> str:
    """A channel colour as OME-Zarr's ``omero`` metadata holds it: ``color`` where it is six hex digits
    (RRGGBB), as text, else white (``"FFFFFF"``). Used by the ``omero`` channels deconv3d writes and the
    ImageJ lookup tables of its TIFF hyperstacks, which agree on a colour so."""
    return str(color) if re.fullmatch(r"[0-9A-Fa-f]{6}", str(color)) else "FFFFFF"


#: More channels than this, with no names recorded, in a stack of planes draw the warning of
#: :func:`deconv3d.pipeline.axis_hints.warn_of_planes_that_may_be_z`: fluorescence images rarely have
#: more than a few. Such a stack's per-plane labels that number its planes are not channel names
#: (:func:`imagej_channels`).
MANY_CHANNELS = 8


def imagej_channels(tif: tifffile.TiffFile, count: int) -> tuple | None:
    """The name and colour of each of the ``count`` channels of an ImageJ hyperstack, as
    :func:`ome_channels` gives them, or None where it records neither: a channel's name is its
    planes' ``Labels`` entry where every plane of that channel has the same one (slice labels that
    vary along z or t name planes, not channels), its colour the end of its ``LUTs`` entry where
    that runs from black to one colour (as Fiji's channel colours do; not a LUT such as Fire).
    A composite saved from Fiji, or deconv3d's TIFF output, lost its names and colours on the way.

    Labels are not names either where they look like slice labels (:func:`_numbered_planes`): more
    than :data:`MANY_CHANNELS` channels of one plane each, labelled with one text whose number counts
    the planes (``z001``, ``z002``, ...; ``z010``, ``z009``, ...; an image sequence's file names).
    Taken as names, they silenced the hint that such a stack may be z-slices labelled as channels.
    Fewer channels, numbered channel names (``Ch1`` ... ``Ch12``), or labels that are not so
    numbered (``GFP``, ``RFP``; markers; wavelengths in steps of 10 nm), are kept as names."""
    ij = tif.imagej_metadata or {}
    labels, luts = ij.get("Labels"), ij.get("LUTs")
    labels = [labels] if isinstance(labels, str) else labels
    channels = [{} for _ in range(count)]
    if isinstance(labels, list) and len(labels) == count > MANY_CHANNELS and _numbered_planes(labels):
        labels = None
    if isinstance(labels, list) and labels and len(labels) % count == 0:
        for c, entry in enumerate(channels):
            names = set(labels[c::count])
            if len(names) == 1 and isinstance(labels[c], str) and labels[c]:
                entry["label"] = labels[c]
    luts = [luts] if isinstance(luts, np.ndarray) else luts
    if isinstance(luts, list) and len(luts) == count:
        for entry, lut in zip(channels, luts):
            if np.shape(lut) == (3, 256):
                end = lut[:, 255].astype(np.float64)
                if np.all(np.abs(lut - np.outer(end, np.arange(256)) / 255) <= 1):  # a ramp from black
                    entry["color"] = "".join(f"{int(v):02X}" for v in end)
    return tuple(channels) if any(channels) else None


#: Words that, right before a label's number, say what it counts. A channel's (Ch1, C01, Channel 3;
#: MetaMorph's wavelength numbers w1, w2, ...) keeps numbered labels as names; a slice's, frame's or plane's (z001, t12, slice 5) makes them slice
#: labels however they are numbered (z010, z009, ...; every other slice).
CHANNEL_WORDS = frozenset({"c", "ch", "chan", "channel", "w", "wavelength"})
SLICE_WORDS = frozenset({"z", "slice", "plane", "section", "t", "frame"})
#: A label that ends so is a file name (Fiji's File > Import > Image Sequence labels each slice with
#: its file's name; its "step" option skips files).
_FILE_NAME = re.compile(r"\.(tiff?|png|jpe?g|bmp|gif|dcm)$", re.IGNORECASE)


def _numbered_planes(labels: list) -> bool:
    """Whether ``labels`` are slice labels: one text with one number that changes from each label to
    the next, always up or always down (every other number the same in all), where

    - the number is a position out of a total (``z:3/12``, ``c:3/12 - name``: Bio-Formats' labels; not
      ``500/10 nm``, a band's centre and width, whose second number is smaller), or
    - a slice word stands right before it (:data:`SLICE_WORDS`: ``z010``, ``z009``; ``z001``, ``z003``)
      or the labels are file names (``img_0001.tif``, ``img_0003.tif``), however it steps, or
    - no channel word stands before it (:data:`CHANNEL_WORDS`: ``Ch1``, ``C01``) and it steps by one
      (``1``, ``2``; ``img_0009``, ``img_0010``).

    Numbers that step by more, or go up and down, and no slice word (``500nm``, ``510nm``: a spectral
    stack's wavelengths), are names."""
    if not all(isinstance(label, str) for label in labels):
        return False
    parts = [re.split(r"(\d+)", label) for label in labels]
    shape = [len(p) for p in parts]
    if len(set(shape)) != 1 or shape[0] < 2:
        return False
    texts = {tuple(p[0::2]) for p in parts}
    numbers = [[int(n) for n in p[1::2]] for p in parts]
    varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
    if len(texts) != 1 or len(varying) != 1:
        return False
    counted = [n[varying[0]] for n in numbers]
    steps = {b - a for a, b in zip(counted, counted[1:])}
    if not (all(step > 0 for step in steps) or all(step < 0 for step in steps)):
        return False
    text = parts[0][0::2]
    before, after = text[varying[0]], text[varying[0] + 1]
    word = (re.findall(r"[a-z]+", before.lower()) or [""])[-1]
    total = numbers[0][varying[0] + 1] if varying[0] + 1 < len(numbers[0]) else 0
    if after.strip() == "/" and total >= max(counted):  # z:3/12; not 500/10 nm, a band's centre and width
        return True
    if word in SLICE_WORDS or _FILE_NAME.search(labels[0]):
        return True
    return word not in CHANNEL_WORDS and steps in ({1}, {-1})


def _ome_pixels(xml: str):
    """The first ``Pixels`` element of an OME-XML document (any namespace), or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def _ome_voxel_size(xml: str) -> list:
    pixels = _ome_pixels(xml)
    if pixels is None:
        return [None, None, None]
    sizes = []
    for ax in "ZYX":
        value = pixels.get(f"PhysicalSize{ax}")
        sizes.append(None if value is None else _size_in_um(value, pixels.get(f"PhysicalSize{ax}Unit", "um")))
    return sizes


def _imagej_voxel_size(tif: tifffile.TiffFile, page) -> list:
    ij = tif.imagej_metadata or {}
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None:
        return [None, None, None]
    unit = ij.get("unit")
    if ij and unit is not None:
        # ImageJ writes yunit= and zunit= where an axis's unit differs from x's (a stack that
        # Bio-Formats calibrated in nm laterally and in microns along z), and reads them back.
        # It leaves spacing out when it is 1 (its default voxel depth), so a calibrated ImageJ
        # stack without it has a z step of 1 in its unit, as Fiji shows it.
        units = (ij.get("zunit", unit), ij.get("yunit", unit), unit)
        # Micro-Manager writes the resolution tags per centimetre under an ImageJ unit of "um";
        # ImageJ then reads them as centimetres (x 1e4 into µm, its FileOpener), as here: taken as
        # µm they were 1e4 times too small (0.1 µm pixels read as 1e-5 µm)
        resunit = page.tags.get("ResolutionUnit")
        per_cm = resunit is not None and resunit.value == tifffile.RESUNIT.CENTIMETER and unit == "um"
        lateral = 1e4 if per_cm else 1.0
        steps = (float(ij.get("spacing", 1.0)),) + tuple(lateral * r[1] / r[0] if r[0] else None
                                                          for r in (yres.value, xres.value))
        sizes = [None if step is None else _size_in_um(step, u) for step, u in zip(steps, units)]
        return [_marked_default(sizes[0], ij)] + sizes[1:]
    resunit = page.tags.get("ResolutionUnit")
    resunit = resunit.value if resunit is not None else tifffile.RESUNIT.NONE
    factor = _resolution_factor(resunit, bool(ij), (xres.value, yres.value))
    if factor is None:
        return [None, None, None]
    y, x = (factor * r[1] / r[0] if r[0] else None for r in (yres.value, xres.value))
    z = float(ij.get("spacing", 1.0)) * factor if ij else None  # an ImageJ file without a unit: µm
    return [_marked_default(z, ij) if ij else z, y, x]


def _resolution_factor(resunit, is_imagej: bool, res) -> float | None:
    """Micrometres per resolution unit, or None when the tags carry no calibration."""
    uncalibrated = all(tuple(r) == (1, 1) for r in res)
    if resunit == tifffile.RESUNIT.CENTIMETER:
        return 1e4
    if resunit == tifffile.RESUNIT.MILLIMETER:
        return 1e3
    if resunit == tifffile.RESUNIT.MICROMETER:
        return 1.0
    if is_imagej and resunit == tifffile.RESUNIT.NONE and not uncalibrated:
        return 1.0  # ImageJ file without a unit: assume micrometres
    return None


def spatial_letters(kept_axes: str, ndim: int) -> str:
    """The z, y, x letters of the ``ndim`` spatial axes a file keeps after squeezing, in their order.

    ``kept_axes`` are the file's letters of the non-singleton axes (generic plane axes count
    as z): ``"ZX"`` for an XZ section (a stack of one row), ``"ZY"`` for a YZ one. Without usable
    letters, ``"ZYX"`` or ``"YX"``.
    """
    letters = "".join("Z" if a in _GENERIC_AXES else a for a in kept_axes)
    if len(letters) == ndim and len(set(letters)) == ndim and all(a in "ZYX" for a in letters) \
            and list(letters) == sorted(letters, key="ZYX".index):
        return letters
    return "ZYX"[-ndim:]


def _kept_voxel(voxel, kept_axes: str, ndim: int) -> list:
    """The recorded [z, y, x] sizes of the axes a file keeps after squeezing, in their order
    (:func:`spatial_letters`): an XZ section gets the z and x sizes, not y and x. Without usable
    letters the last ``ndim`` sizes are taken.
    """
    return [voxel["ZYX".index(a)] for a in spatial_letters(kept_axes, ndim)]


def _checked_voxel(sizes, path) -> tuple[tuple[float, ...] | None, str | None]:
    """``(voxel size, problem)`` from recorded sizes (None where unknown).

    The voxel size is None unless every size is known; the problem is set when one is
    recorded but zero, negative or not finite, so that callers can refuse it instead of
    silently dropping the calibration.
    """
    unknown = [s for s in sizes if isinstance(s, UnknownUnit)]
    if unknown:
        return None, f"{path} records its voxel size in {str(unknown[0])!r}, a unit deconv3d cannot convert to µm"
    bad = [s for s in sizes if s is not None and not (np.isfinite(s) and s > 0)]
    if bad:
        return None, f"{path} records a voxel size of {bad[0]:g} µm, which is not a positive size"
    if any(s is None for s in sizes):
        return None, None
    return tuple(float(s) for s in sizes), None


def _partial_voxel(sizes) -> tuple | None:
    """The recorded sizes when the file calibrates some axes but not all (None for the others),
    else None: a stack with pixel sizes but no z step keeps its pixel sizes."""
    known = [v is not None for v in sizes]
    if not any(known) or all(known) or _checked_voxel(sizes, "")[1]:
        return None
    return tuple(None if v is None else float(v) for v in sizes)


#: ImageJ's calibration-function codes (``cf=`` in its header): the straight line and "none".
_IJ_STRAIGHT_LINE, _IJ_NONE = 0, 20


def imagej_calibration(tif: tifffile.TiffFile, dtype, path) -> tuple[float, float] | None:
    """``(offset, scale)`` of an ImageJ file's linear intensity calibration: the values Fiji shows
    are ``offset + scale * stored``. Fiji keeps signed 16-bit data (a DeltaVision file opened with
    Bio-Formats) as unsigned with ``cf=0 c0=-32768 c1=1``: read raw, every value is 32768 too
    high. None for no calibration, for the identity and for float data (ImageJ calibrates only
    8- and 16-bit images; converting to 32-bit applies the calibration to the values). Another
    function (a polynomial, optical density) is refused: deconvolution needs linear values.
    """
    from deconv3d.errors import InputError

    ij = tif.imagej_metadata or {}
    function = ij.get("cf")
    if function is None or function == _IJ_NONE or not np.issubdtype(np.dtype(dtype), np.integer):
        return None
    if function != _IJ_STRAIGHT_LINE:
        raise InputError(f"{path} has an ImageJ intensity calibration (function {function}) that is not a straight "
                         "line: deconvolution needs values linear in the light; remove it in Fiji (Analyze > "
                         "Calibrate..., Function: None) and save again")
    try:
        offset, scale = float(ij.get("c0", 0.0)), float(ij.get("c1", 1.0))
    except (TypeError, ValueError):
        offset = scale = float("nan")
    if not (math.isfinite(offset) and math.isfinite(scale) and scale != 0):
        raise InputError(f"{path} has an ImageJ intensity calibration with coefficients c0={ij.get('c0')!r}, "
                         f"c1={ij.get('c1')!r}: fix or remove it in Fiji (Analyze > Calibrate...)")
    return None if (offset, scale) == (0.0, 1.0) else (offset, scale)


def calibrated(data: np.ndarray, calibration: tuple[float, float] | None) -> np.ndarray:
    """float32 ``data`` with :func:`imagej_calibration`'s ``(offset, scale)`` applied, in place."""
    if calibration is not None:
        offset, scale = calibration
        data *= np.float32(scale)
        data += np.float32(offset)
    return data
