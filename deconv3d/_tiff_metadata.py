"""Time steps and intensity calibrations from TIFF metadata (OME-XML, ImageJ tags), and the OME-XML and
unit-name parsing that the voxel sizes (:mod:`deconv3d._tiff_voxel_sizes`) and channels
(:mod:`deconv3d._tiff_channels`) share; used by :mod:`deconv3d.io` and :mod:`deconv3d.omezarr`."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import tifffile


def _unit_key(unit) -> str:
    key = str(unit).strip().lower()
    for micro in ("\\u00b5", "\u00b5", "\u03bc"):
        key = key.replace(micro, "u")
    return key


def _ome_pixels(xml: str):
    """The first ``Pixels`` element of an OME-XML document (any namespace), or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def tiff_properties(tif: tifffile.TiffFile) -> dict:
    """The properties deconv3d writes into a TIFF with the image (its record, the time step without a unit,
    ``first_axis``...), as texts by key: an OME-TIFF's ``MapAnnotation`` entries, an ImageJ TIFF's
    ``Properties``; empty where there are none."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_map_annotation(tif.ome_metadata)
    properties = (tif.imagej_metadata or {}).get("Properties")
    return properties if isinstance(properties, dict) else {}


def _ome_map_annotation(xml: str) -> dict:
    """The keys and texts of an OME-XML document's ``MapAnnotation`` entries (``<M K="key">text</M>``, any
    namespace): the properties deconv3d writes into an OME-TIFF. Empty where there are none."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    return {el.get("K"): el.text for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "M" and el.get("K")}


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

        warn(f"deconv3d: warning: {problem(tif.filename)}")
    return None if axis is None else axis[:2]


def time_axis_and_problem(tif: tifffile.TiffFile) -> tuple:
    """(:func:`time_axis_of`, the warning about its unit or None), without warning: the warning as a
    function of the name to say the file by (:func:`named_time_unit`). An image's reader keeps it, said of
    the input as given and of "the image" (:attr:`~deconv3d.omezarr.LazyImage.time_problem`), for the run
    that writes that axis, which gives it once its checks pass (opened twice, a refused run warned twice
    first). The axis is ``(step, unit[, start])``: an ImageJ hyperstack's property ``time_origin``, which
    deconv3d writes where it is not 0 (ImageJ has no key for it), is its start; in an OME-TIFF, the
    ``MapAnnotation``'s ``time_origin``, and its ``time_step`` and ``time_unit`` where OME-XML's
    ``TimeIncrement`` is not written (a unit without an OME symbol, or none)."""
    step, unit, symbols, properties = None, None, {}, tiff_properties(tif)
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels(tif.ome_metadata)
        if pixels is not None and pixels.get("TimeIncrement") is not None:
            step, unit = pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s")
            symbols = _OME_TIME_UNITS
        else:  # a step whose unit has no OME symbol, or none, as deconv3d writes it (properties)
            step, unit = properties.get("time_step"), properties.get("time_unit", "")
            symbols = {name: name for name in _OME_TIME_UNITS.values()}
    elif tif.imagej_metadata:
        ij = tif.imagej_metadata
        if ij.get("finterval"):
            step, unit = ij["finterval"], ij.get("tunit", "sec")
        else:  # a step with no unit, as deconv3d writes it (a finterval would read as seconds)
            step, unit = properties.get("time_step"), ""
    start = _finite(properties.get("time_origin"))
    step = _finite(step)
    if step is None or not step > 0:
        return None, None
    name, problem = named_time_unit(unit, step, symbols, "sec, min, hr, day, ms, us or ns")
    return (step, name) + ((start,) if start else ()), problem


def named_time_unit(unit, step: float, names: dict, spellings: str) -> tuple:
    """``(name, problem)``: the OME-Zarr name of the time ``unit`` that a file records with the ``step``
    (looked up in ``names`` as written, then among the usual spellings), and None; else None, and the
    warning that says the file has none (the step is kept without it; ``spellings``: the units to use
    instead) as ``problem(where)``, said of the file named ``where`` (its path, or "the image")."""
    unit = str(unit).strip()
    name = names.get(unit) or _TIME_UNITS.get(_unit_key(unit))
    if name is not None or not unit:
        return name, None
    return None, lambda where: (f"{where} records its time step in {unit!r}, a unit deconv3d cannot name: the t "
                                f"axis keeps the step {step:g} without a unit (use {spellings})")


def _finite(value) -> float | None:
    """``value`` (a number, or its text) as a finite float, else None."""
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


#: ImageJ's calibration-function codes (``cf=`` in its header): the straight line and "none".
_IJ_STRAIGHT_LINE, _IJ_NONE = 0, 20


def imagej_calibration(tif: tifffile.TiffFile, dtype, path, what: str = "image") -> tuple[float, float] | None:
    """``(offset, scale)`` of an ImageJ file's linear intensity calibration: the values Fiji shows
    are ``offset + scale * stored``. Fiji keeps signed 16-bit data (a DeltaVision file opened with
    Bio-Formats) as unsigned with ``cf=0 c0=-32768 c1=1``: read raw, every value is 32768 too
    high. None for no calibration, for the identity and for float data (ImageJ calibrates only
    8- and 16-bit images; converting to 32-bit applies the calibration to the values). Another
    function (a polynomial, optical density) is refused: deconvolution needs linear values. The refusal is
    about the file ``path``, read as ``what`` (``"image"``, ``"PSF"``), as :func:`deconv3d._tiff_checks._refusal`
    words it: an image's is said of "the image" too (a batch's line names the file before the reason), a PSF's not.
    """
    from deconv3d._tiff_checks import _refusal as refusal

    ij = tif.imagej_metadata or {}
    function = ij.get("cf")
    if function is None or function == _IJ_NONE or not np.issubdtype(np.dtype(dtype), np.integer):
        return None
    if function != _IJ_STRAIGHT_LINE:
        raise refusal(lambda name: f"{name} has an ImageJ intensity calibration (function {function}) that is not a "
                      "straight line: deconvolution needs values linear in the light; remove it in Fiji (Analyze > "
                      "Calibrate..., Function: None) and save again", path, what)
    try:
        offset, scale = float(ij.get("c0", 0.0)), float(ij.get("c1", 1.0))
    except (TypeError, ValueError):
        offset = scale = float("nan")
    if not (math.isfinite(offset) and math.isfinite(scale) and scale != 0):
        raise refusal(lambda name: f"{name} has an ImageJ intensity calibration with coefficients c0={ij.get('c0')!r}, "
                      f"c1={ij.get('c1')!r}: fix or remove it in Fiji (Analyze > Calibrate...)", path, what)
    return None if (offset, scale) == (0.0, 1.0) else (offset, scale)


def calibrated(data: np.ndarray, calibration: tuple[float, float] | None) -> np.ndarray:
    """float32 ``data`` with :func:`imagej_calibration`'s ``(offset, scale)`` applied, in place."""
    if calibration is not None:
        offset, scale = calibration
        data *= np.float32(scale)
        data += np.float32(offset)
    return data
