"""Saturated voxels: the ``saturation`` setting of Richardson-Lucy runs (a level, ``auto`` or ``none``),
the plateau rule that tells a clipped image from an unclipped one, and the voxels it flags as clipped
(:func:`deconv3d.classical.richardson_lucy`'s ``clipped``).

A camera or detector clips every value above its largest one (4095 for 12 bits, 65535 for 16): the
brightest objects then hold a plateau of equal voxels whose true values are unknown, and RL fitted to
it as data rings around them and mis-scales them. Fitted as clipped, a voxel's value is a lower bound:
the estimate may predict more light there, not less (censored data).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from deconv3d.errors import InputError

#: How ``--saturation`` fits the voxels it flags: as clipped (lower bounds), which replaced leaving them out
#: of the fit ("left out"); a batch's settings hash holds it (:meth:`deconv3d.pipeline.Settings.fingerprint`).
SATURATION_FIT = "clipped"

#: The settings' default: every voxel is fitted (the output of the versions before the setting).
NONE = "none"
AUTO = "auto"
#: The fewest voxels at an image's maximum that :func:`plateau_level` takes for a clipped plateau.
PLATEAU_MIN_VOXELS = 10


#: The values the setting takes, for the messages that refuse another.
FORMS = ("a positive level (e.g. 4095 for a 12-bit camera), auto (the image's maximum where a plateau of voxels "
         "holds it) or none")


def parse_saturation(value, name: str = "--saturation"):
    """``value`` (a number, or the text of one, ``auto`` or ``none``) as the setting: a positive finite
    float, ``"auto"`` or ``"none"``; anything else is refused naming ``name`` and the forms it takes."""
    if isinstance(value, str) and value.strip().lower() in (NONE, AUTO):
        return value.strip().lower()
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number) and number > 0:
        return float(number)
    raise InputError(f"{name} must be {FORMS}, got {value!r}")


def method_problem(method: str, saturation, method_name: str = "--method", name: str = "--saturation") -> str | None:
    """Why ``saturation`` cannot go with ``method`` (None where it can): only Richardson-Lucy's fit can
    fit clipped voxels as lower bounds; Wiener's filter and the network read every voxel as it is."""
    if method in ("rl", "rl-tv") or saturation == NONE:
        return None
    return (f"{name} applies to {method_name} rl and rl-tv (their fit can take clipped voxels as lower bounds), "
            f"not {method}: remove it, or use {method_name} rl")


def top_two(values) -> tuple[float, int, float, int]:
    """``(largest, voxels at it, next largest, voxels at that)`` of the finite values of an array
    (``-inf`` and 0 for a value that is missing); :func:`merge_top_two` combines those of its parts."""
    values = np.asarray(values)
    values = values.view(np.uint8) if values.dtype == bool else values
    floating = values.dtype.kind in "fc"
    fitted = np.isfinite(values) if floating else np.ones(values.shape, bool)
    if not fitted.any():
        return -math.inf, 0, -math.inf, 0
    floor = -math.inf if floating else np.iinfo(values.dtype).min
    peak = np.max(values, initial=floor, where=fitted)
    at_peak = values == peak  # (no copy of the values: an in-memory image may fill most of the memory)
    rest = fitted & ~at_peak
    if not rest.any():
        return float(peak), int(np.count_nonzero(at_peak)), -math.inf, 0
    second = np.max(values, initial=floor, where=rest)
    return float(peak), int(np.count_nonzero(at_peak)), float(second), int(np.count_nonzero(values == second))


def merge_top_two(parts) -> tuple[float, int, float, int]:
    """:func:`top_two` of a whole from those of its parts (slabs of a volume). The whole's second value
    is, in every part that holds it, that part's largest or second largest (no value lies between it
    and the largest), so the parts' two suffice."""
    counts: dict[float, int] = {}
    for peak, n_peak, second, n_second in parts:
        for value, n in ((peak, n_peak), (second, n_second)):
            if n:
                counts[value] = counts.get(value, 0) + n
    ranked = sorted(counts.items(), reverse=True)[:2] + [(-math.inf, 0)] * 2
    return ranked[0][0], ranked[0][1], ranked[1][0], ranked[1][1]


def top_two_by_planes(values) -> tuple[float, int, float, int]:
    """:func:`top_two` of ``values`` (a block of a chunked run), merged from its planes along the first
    axis (:func:`merge_top_two`), so that its masks are of one plane at a time, not of the block. A 2D
    block is one plane: taken whole (row by row, a 4096 x 4096 block made 4096 calls)."""
    values = np.asarray(values)
    if values.ndim < 3:
        return top_two(values)
    return merge_top_two(top_two(plane) for plane in values)


def count_at_or_above(values, level: float) -> int:
    """How many voxels of ``values`` (a chunked run's block core, as read) are at or above ``level``: the
    voxels a run with that level fits as clipped, counted a plane at a time along the first axis
    (as :func:`top_two_by_planes`), so that the mask is of one plane, not of the block."""
    values = np.asarray(values)
    if values.ndim < 3:
        return int(np.count_nonzero(values >= level))
    return sum(int(np.count_nonzero(plane >= level)) for plane in values)


def plateau_level(top: tuple[float, int, float, int]) -> float | None:
    """The image's maximum where a clipped plateau holds it (:func:`top_two`'s figures), else None.

    The rule: at least :data:`PLATEAU_MIN_VOXELS` voxels at the maximum, and more of them than at the
    next value below it. Clipping piles every value above the level onto it, so the histogram ends
    in a spike; unclipped data end in a falling tail, whose last value holds fewer voxels than the
    one before, also where integers or rounding put several voxels on the maximum. On seeded
    synthetic 32 x 64 x 64 phantoms blurred by a Gaussian PSF (seeds 0-3), the maximum was held by
    1 voxel in float data with Poisson noise and in 12-bit Poisson counts (peak 3000), by 1-2 in
    Poisson counts of peak 20 over a background of 2, by 1-4 in data scaled to 8 bits and rounded,
    never by more voxels than the next value; each clipped at its 99.5th percentile held it in
    656-829 voxels, 3.6-656 times the next value (tests/test_saturation.py checks such data).
    """
    peak, n_peak, _, n_second = top
    if n_peak >= PLATEAU_MIN_VOXELS and n_peak > n_second and peak > 0:
        return peak
    return None


def saturation_level(image, saturation) -> float | None:
    """The level at and above which voxels of ``image`` are fitted as clipped for the setting ``saturation``
    (:func:`parse_saturation`'s forms): the number itself, the plateau's for ``auto``, None for
    ``none`` or an ``auto`` that finds no plateau."""
    if saturation == NONE:
        return None
    if saturation == AUTO:
        return plateau_level(top_two(image))
    return float(saturation)


def clipped_voxels(image, level: float | None):
    """The voxels ``--saturation`` fits as clipped, at or above ``level`` (a bool array), None for no level:
    RL's ``clipped`` (:func:`~deconv3d.classical.richardson_lucy`), a pointwise rule, so that a chunked
    run's blocks flag the voxels a whole-volume run flags."""
    if level is None:
        return None
    return np.asarray(image) >= level


def face_reach(psf_shape) -> tuple[tuple[int, int], ...]:
    """Per axis, how many rows past its first and its last face the light from outside the field reaches
    under a PSF of ``psf_shape``: ``(k - 1 - o, o)`` for a side ``k`` whose origin is ``o``
    (:func:`deconv3d.fft.kernel_origin`: ``(k - 1) // 2``), as ``y[i] = sum_j psf[j] x[i + o - j]``
    takes light from ``x[i + o - k + 1]`` to ``x[i + o]``; ``k // 2`` at both faces for an odd side, and
    one row fewer at the last face for an even one."""
    from deconv3d._fft_shapes import kernel_origin

    return tuple((int(k) - 1 - o, o) for k, o in zip(psf_shape, kernel_origin(tuple(int(k) for k in psf_shape))))


def near_faces(shape, reach, start=None, volume=None) -> np.ndarray:
    """A bool array of ``shape``, true within ``reach`` (:func:`face_reach`) of the faces of a volume of
    ``volume`` voxels of which the array is the part that begins at ``start`` (default: the volume itself)."""
    start = (0,) * len(shape) if start is None else start
    volume = tuple(shape) if volume is None else volume
    near = np.zeros(shape, bool)
    for axis, ((before, after), n, at, size) in enumerate(zip(reach, shape, start, volume)):
        rows = np.arange(at, at + n)
        index = [np.newaxis] * len(shape)
        index[axis] = slice(None)
        near |= ((rows < before) | (rows >= size - after))[tuple(index)]
    return near


def clipped_at_faces(clipped, psf_shape) -> int:
    """How many of the ``clipped`` voxels (a bool array) lie within the reach of a PSF of ``psf_shape``
    (:func:`face_reach`: per axis, half its side, a row fewer at the last face of an even side) of the
    image's faces: where, with the zero boundary, the light that enters the field from outside must come
    from voxels that clipped data do not hold down."""
    clipped = np.asarray(clipped)
    return int(np.count_nonzero(clipped & near_faces(clipped.shape, face_reach(psf_shape))))


def count_near_faces(values, level: float, reach, start, volume) -> tuple[int, int]:
    """``(at or above, near the faces)``: how many voxels of ``values`` (a chunked run's block core, as read,
    at ``start`` in a volume of ``volume`` voxels) are at or above ``level``, and how many of those lie
    within ``reach`` (:func:`face_reach`) of the VOLUME's faces (not the block's): the blocks' share of
    :func:`clipped_at_faces`. A plane at a time along the first axis, as :func:`count_at_or_above`."""
    values = np.asarray(values)
    if values.ndim < 3:
        flagged = values >= level
        near = near_faces(values.shape, reach, start, volume)
        return int(np.count_nonzero(flagged)), int(np.count_nonzero(flagged & near))
    band = near_faces(values.shape[1:], reach[1:], start[1:], volume[1:])  # (of one plane)
    (before, after), total, near = reach[0], 0, 0
    for i, plane in enumerate(values):
        flagged = plane >= level
        total += (count := int(np.count_nonzero(flagged)))
        row = start[0] + i
        near += count if row < before or row >= volume[0] - after else int(np.count_nonzero(flagged & band))
    return total, near


def zero_boundary_warning(count: int) -> str:
    """The ``deconv3d: warning:`` line for ``count`` clipped voxels near the faces of a run with the zero
    boundary (:func:`clipped_at_faces`)."""
    return (f"deconv3d: warning: {count} clipped voxel(s) lie within the PSF's reach of the image's faces, where "
            "with --boundary zero the light that enters the field from outside must come from voxels the clipped "
            "data do not hold down: they come out worse than fitting the clipped values as data; use --boundary "
            "bertero (the default)")


def saturated_warning(count: int, peak: float, method: str, where: str = "") -> str:
    """The ``deconv3d: warning:`` line for an image that looks clipped and runs with saturation ``none``.

    Method-neutral (Wiener and the network fit the plateau too), and it names what else makes such a
    plateau: noiseless synthetic objects of constant intensity (a blurred sphere of 1.0 held 1041
    voxels at 1.0 in float32, 2583 at 255 scaled to 8 bits), masks and label images, which the rule
    cannot tell from a clip. ``where`` names the channel or time point of a multi-channel or
    time-lapse image that the count is of (``"channel 1 (RFP) at time point 0"``)."""
    fix = ("add --saturation auto to fit them as clipped" if method in ("rl", "rl-tv") else
           "--method rl (or rl-tv) with --saturation auto fits them as clipped")
    of = f"the maximum {peak:g} of {where}" if where else f"the image's maximum {peak:g}"
    return (f"deconv3d: warning: {count} voxels sit at {of}, as a saturated (clipped) "
            f"detector leaves them: fitting them rings around them and dims the brightest objects; {fix} (ignore "
            f"this if the image is not clipped: noiseless synthetic objects of constant intensity, masks)")


def warn_if_clipped(top: tuple[float, int, float, int], method: str, warnings: list | None = None,
                    view=None) -> float | None:
    """Warn (:func:`saturated_warning`, into ``warnings`` where given) where an image whose
    :func:`top_two` is ``top`` looks clipped (:func:`plateau_level`) and runs with every voxel
    fitted as measured; returns that level, else None. The one place the command line decides it, for an image
    read whole and for a chunked run's pass over a volume alike.

    ``view`` (a chunked run's :class:`~deconv3d.pipeline.readers._View`) names the channel and
    time point: warned once per channel, at its first clipped time point (a line per time point,
    each alike and none naming which, had buried every other line of a long series)."""
    from deconv3d.errors import warn

    level = plateau_level(top)
    if level is None:
        return None
    said, where = getattr(view, "said", None), getattr(view, "where", "")
    if said is not None:
        key = ("saturated", getattr(view, "channel", None))
        if key in said:
            return level
        said.add(key)
    note = " (its later time points are not named)" if "time point" in where else ""
    warn(saturated_warning(top[1], top[0], method, where + note), warnings)
    return level


def refuse_all_flagged(count: int, size: int, level: float, where: str = "") -> None:
    """Refuse a volume of ``size`` voxels whose ``count`` voxels at or above ``level`` are all of them:
    nothing measured is left to fit (a level at or below the image's minimum). An in-memory run and a
    chunked one (:func:`deconv3d.pipeline.run_chunked`, before its output is published: its blocks,
    each saturated throughout, only copied their values) refuse it alike; ``where`` names the channel or
    time point of a multi-channel or time-lapse image (``"channel 1 (RFP) at time point 0"``)."""
    if count >= size:
        of = f" of {where}" if where else ""
        raise InputError(f"every voxel{of} is at or above --saturation {level:g}: give a higher level, or none")


def saturation_record(saturation, level: float | None = None, count: int | None = None) -> dict:
    """The run record's parameters of a saturation setting: none for ``none`` (the records of the runs
    before the setting, unchanged), else the setting, and the level and voxels at or above it where known."""
    if saturation == NONE:
        return {}
    known = {} if level is None else {"saturation_level": level, "saturated_voxels": count}
    return {"saturation": saturation, **known}


def clipped_fit_line(saturation, levels, counts, where: str = "") -> str | None:
    """The line a run prints of what ``saturation`` (a level or ``auto``) fitted as clipped, for one
    image or one channel of several: ``levels`` and ``counts`` hold, for each of its volumes (time
    points), the level used (None: ``auto`` found no plateau there) and the voxels at or above it.
    ``where`` names the channel (``channel 1 (RFP)``). None where a count is not known (a run in blocks
    whose block callables did not count them), or for ``none``."""
    points = len(levels)
    found = [(level, count) for level, count in zip(levels, counts) if level is not None]
    if saturation == NONE or not points or any(count is None for _, count in found):
        return None
    of = f" of {where}" if where else " of the image" if points > 1 else ""
    if not found:
        maximum = f"the maximum{of}" if of else "the image's maximum"
        every = f" at any of its {points} time points" if points > 1 else ""
        return f"--saturation auto: no plateau of voxels at {maximum}{every}, so every voxel is fitted"
    total = sum(count for _, count in found)
    if saturation != AUTO:
        over = f" over its {points} time points" if points > 1 else ""
        return (f"fitted {total} voxel(s){of}{over} at or above {saturation:g} as clipped: at least their value "
                f"(--saturation {saturation:g})")
    low, high = min(level for level, _ in found), max(level for level, _ in found)
    value = f"{low:g}" if low == high else f"{low:g} to {high:g}"
    at = f" at {len(found)} of its {points} time points" if points > 1 else ""
    maximum = f"the maximum {value}{of}{at}" if of else f"the image's maximum {value}"
    return f"fitted {total} voxel(s) at {maximum} as clipped: at least their value (--saturation auto)"
