"""Voxel sizes from TIFF metadata (OME-XML, ImageJ tags, resolution tags), in micrometres, and the
checks of the sizes a file records; shared by :mod:`deconv3d.io` and :mod:`deconv3d.omezarr`."""

from __future__ import annotations

import numpy as np
import tifffile

from deconv3d._tiff_metadata import _ome_pixels, _unit_key


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

