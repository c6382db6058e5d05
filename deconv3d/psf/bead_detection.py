"""Finding the beads of a bead image for :func:`deconv3d.psf.distill_psf`, and measuring its noise.

The image's background and noise (``_robust_background``, ``_white_noise``, ``_smoothed_noise``),
its hot voxels (``_despiked`` for detection, ``_without_hot_voxels`` for the boxes), the brightest
bead that the camera did not clip (``_brightest_unsaturated``) and its width (``_fwhm``), which set
the default box (``_box_half``); the isolated beads (``_isolated_beads``) less those with saturated
voxels (``_unsaturated``); and, when none is left, why (``_why_no_beads``).
"""

from __future__ import annotations

import warnings

import numpy as np

from deconv3d.errors import InputError
from deconv3d.psf.center_crop import SPIKE_RATIO
from deconv3d.psf.validate import _positive_ints


def _why_no_beads(smooth, peaks, half, background: float, noise: float, threshold: float, fwhm,
                  clipped=None) -> str:
    """Why no bead was found, and what to do, for the error :func:`distill_psf` raises.

    Not always "a lower threshold": with a threshold of 110 (or 0) over a background of 100, the
    noise peaks above its half-way level crowded every bead and a lower one crowded them more; in
    an image of noise alone no threshold finds a bead. Nor "a higher threshold" whenever it is below
    the noise floor: beads 12 voxels apart crowded each other's box of 17 voxels at any threshold
    (told to raise it above 127, then at 128 to lower it), and a smaller box is what finds them.
    Beads are the peaks above the noise floor (background plus 10 noise deviations, the default
    threshold's least value); of those that reach ``threshold`` and whose box fits in the image,
    the neighbours inside their boxes (:func:`_isolated_beads`) are noise when they are all below
    the floor and beads otherwise.

    ``noise`` is that of the smoothed image measured on what smoothing removes
    (:func:`_smoothed_noise`), which a smooth background hardly enters: beads of 3000 over a
    background rising by 600 across the image were told that no bead stands out where a lower
    threshold finds them. Light that stands out from it is no bead either when the brightest peak is
    too wide (``fwhm``) for its default box to fit the image along any axis: a smooth blob of +500
    over a background of 100 (no bead), told to give a smaller box, gave a PSF made of the blob's top.

    ``clipped`` marks the voxels near saturated ones: a peak there is left out (:func:`_unsaturated`),
    so it is no isolated bead that a sparser image would not help (beads crowded 12 voxels apart beside
    one clipped bead were told to use a sparser image, a smaller box or a lower threshold alike)."""
    floor = background + 10 * noise
    top = float(smooth.max())
    wide = (2 * np.maximum(1, np.ceil(1.5 * np.asarray(fwhm))) + 3 > np.asarray(smooth.shape)).all()
    if top < floor or wide:
        width = " x ".join(f"{w:.0f}" for w in fwhm)
        why = f", its peak {width} voxels wide at half height: wider than a bead in this image" if wide else ""
        return (f"no bead stands out from the noise (brightest smoothed value {top:.3g}, background "
                f"{background:.3g}, noise {noise:.2g}{why}): check that the image holds beads; a bead must reach 10 "
                f"noise deviations above the background once smoothed (here {floor:.3g}), so image dim beads "
                "brighter or sum several stacks of them")
    peaks = np.asarray(peaks).reshape(-1, smooth.ndim)
    height = np.array([float(smooth[tuple(p)]) for p in peaks])
    if not (height >= threshold).any():
        return f"no bead reaches the threshold (brightest smoothed value {top:.3g}): lower --threshold"
    unclipped = np.ones(len(peaks), bool) if clipped is None else ~np.array([clipped[tuple(p)] for p in peaks], bool)
    inside = peaks[(height >= max(threshold, floor)) & unclipped & (peaks - half - 1 >= 0).all(axis=1)
                   & (peaks + half + 1 < np.asarray(smooth.shape)).all(axis=1)]
    if not len(inside):
        return "every bead's box reaches past the image's border: give a smaller --size or image the beads further in"
    return _crowding(peaks, height, inside, half, background, noise, floor)


def _crowding(peaks, height, inside, half, background: float, noise: float, floor: float) -> str:
    """:func:`_why_no_beads` for beads whose boxes fit the image (``inside``): the neighbours in their
    boxes, beads or noise peaks (below ``floor``), and the smaller box that leaves some bead alone."""
    crowding = [(np.abs(peaks - p) <= 2 * half).all(axis=1) & (peaks != p).any(axis=1) for p in inside]
    if not all(near.any() for near in crowding):  # some bead is isolated but was left out later
        return "use a sparser bead image, a smaller --size or a lower --threshold"
    beads = peaks[height >= floor]
    crowded = [p for p, near in zip(inside, crowding) if (height[near] >= floor).any()]
    if not crowded:
        return (f"the threshold is less than 10 noise deviations above the background ({background:.3g}, noise "
                f"{noise:.2g}), so noise peaks crowd every bead: raise --threshold above {floor:.3g} or leave it out")
    # the largest box, in proportion to this one, that leaves some bead with no other bead in it
    scale = max(min((np.abs(o - p) / (2 * half)).max() for o in beads if (o != p).any()) for p in crowded)
    smaller = " ".join(str(int(2 * max(1, np.ceil(scale * h) - 1) + 1)) for h in half)
    advice = (f"every bead has a neighbour within one box width (--size), so their boxes overlap: give a smaller "
              f"--size, e.g. {smaller}, or use a sparser bead image")
    if any((height[near] < floor).any() for near in crowding):
        advice += f", and raise --threshold above {floor:.3g} (noise peaks crowd the beads too)"
    return advice


def _smoothed_noise(total: np.ndarray, sigma: float) -> float:
    """The standard deviation of white noise in ``total`` after a Gaussian filter of ``sigma``.

    Measured on what the filter removes (robustly: the MAD), which smooth light such as a
    defocus cone or a neighbour's halo hardly enters; at a box's faces that light read as noise
    and smoothed the tails of a noise-free PSF (L1 error 0.065).
    """
    return _white_noise(total, sigma) * float(np.sqrt((_kernel(sigma, total.ndim)[1] ** 2).sum()))


def _white_noise(image: np.ndarray, sigma: float = 1.0) -> float:
    """The standard deviation of white noise in ``image``, measured (robustly: the MAD) on what a
    Gaussian filter of ``sigma`` removes, which a smooth background such as a ramp hardly enters."""
    from scipy import ndimage

    delta, kernel = _kernel(sigma, image.ndim)
    removed = image - ndimage.gaussian_filter(image, sigma)
    return _robust_background(removed)[1] / float(np.sqrt(((delta - kernel) ** 2).sum()))


def _kernel(sigma: float, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """A unit impulse 9 voxels wide and the Gaussian filter of ``sigma`` applied to it (the filter as an array)."""
    from scipy import ndimage

    delta = np.zeros((9,) * ndim)
    delta[(4,) * ndim] = 1.0
    return delta, ndimage.gaussian_filter(delta, sigma)


def _despiked(beads: np.ndarray) -> np.ndarray:
    """``beads`` with every hot voxel lowered to its brightest neighbour's value, for detection (the
    boxes are cut from :func:`_without_hot_voxels`, which keeps the noise). A voxel is hot when its excess over the image's median
    is more than :data:`~deconv3d.psf.center_crop.SPIKE_RATIO` times its brightest neighbour's and its
    neighbours together hold no light beyond the noise: their summed excess is below
    :data:`HOT_NEIGHBOURS` standard deviations of a sum of as many background voxels.

    A hot voxel is no bead: one voxel at 30000 among nine beads of 3000 over a background of 100
    was taken for the brightest bead, set a box of 11 voxels instead of 17 x 13 x 13 and doubled the
    PSF's peak; in an image of noise alone it was distilled into a PSF with 88 % of its light in
    one voxel. The excess, not the value, so that a background does not hide spikes as
    :func:`~deconv3d.psf.center_crop._despiked` (made for PSFs) would. The ratio alone also lowered the
    peak of undersampled beads (sigma 0.35 voxel: 11 times their neighbours), centred on a voxel:
    of 25 beads of 600 photons over a background of 100, 12 were lost and the PSF's peak came out
    37 % low, and brighter ones set a box of 7 instead of 11 voxels; their neighbours' light stands
    out from the noise."""
    from scipy import ndimage

    ring = np.ones((3,) * beads.ndim, bool)
    ring[(1,) * beads.ndim] = False
    background, noise = _robust_background(beads)
    excess = beads - np.float32(background)
    neighbours = np.maximum(ndimage.maximum_filter(excess, footprint=ring, mode="constant", cval=-np.inf), 0)
    with np.errstate(over="ignore"):  # twice a neighbour past float32's range (beads near 3.4e38) is inf: no spike
        spikes = excess > SPIKE_RATIO * neighbours
    if spikes.any():
        faces = ndimage.generate_binary_structure(beads.ndim, 1)
        faces[(1,) * beads.ndim] = False
        light = ndimage.correlate(excess.astype(np.float64), faces.astype(np.float64), mode="constant")
        spikes &= light <= HOT_NEIGHBOURS * noise * np.sqrt(faces.sum())
    return np.where(spikes, np.float32(background) + neighbours, beads) if spikes.any() else beads


def _without_hot_voxels(beads: np.ndarray, despiked: np.ndarray) -> np.ndarray:
    """``beads`` with the spikes that :func:`_despiked` lowered by more than :data:`HOT_EXCESS` noise
    deviations of the image lowered too: the image the bead boxes are cut from.

    With 0.1 % hot voxels (200-5000 counts over a background of 100, beads of 3000) the boxes cut
    from the raw image averaged the hot voxels into the PSF (L1 error 0.144 against 0.032) and the
    wider boxes' faces made a box holding all of a bead's light look like 75 %. Only spikes beyond
    the noise: :func:`_despiked` also lowers noise voxels a little above their neighbours (0.2 % of
    a clean Poisson background), which belong in the boxes as they are. The noise is measured on what
    smoothing removes (:func:`_white_noise`): the image's spread took a background rising by 600
    across the image for noise of 220, and 76 % of such hot voxels stayed in the boxes."""
    lowered = beads - despiked
    return np.where(lowered > HOT_EXCESS * _white_noise(beads), despiked, beads)


#: :func:`_without_hot_voxels` takes from the bead boxes the spikes lowered by more than this many
#: standard deviations of the image's noise (5: a voxel of a Poisson background of 100 lies that far
#: above the background about twice in a million, and that far above all its neighbours rarer still).
HOT_EXCESS = 5.0


#: :func:`_despiked` takes a voxel for a hot one only when its neighbours' summed excess over the
#: background is below this many standard deviations of the noise in such a sum (3: an isolated
#: hot voxel's neighbours pass 99.9 % of the time; the 8 neighbours of a bead of sigma 0.35 voxel
#: and 600 photons over a background of 100 hold 6 of them).
HOT_NEIGHBOURS = 3.0


def _robust_background(arr: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation of an image."""
    median = float(np.median(arr))
    return median, 1.4826 * float(np.median(np.abs(arr - median)))


def _fwhm(arr: np.ndarray, peak) -> np.ndarray:
    """Full width at half maximum (voxels) along each axis through ``peak``."""
    widths = []
    for axis in range(arr.ndim):
        index = list(peak)
        index[axis] = slice(None)
        profile = arr[tuple(index)]
        above = profile >= profile[peak[axis]] / 2
        lo = hi = peak[axis]
        while lo > 0 and above[lo - 1]:
            lo -= 1
        while hi < len(profile) - 1 and above[hi + 1]:
            hi += 1
        widths.append(hi - lo + 1)
    return np.asarray(widths, dtype=float)


def _box_half(size, fwhm, ndim: int) -> np.ndarray:
    """Half-widths of the bead box: from ``size`` or 1.5 FWHM each side."""
    if size is None:
        return np.maximum(1, np.ceil(1.5 * fwhm)).astype(int)
    size = _positive_ints(size, "bead box size")
    if len(size) != ndim:
        raise InputError(f"bead box size {size} must have {ndim} values, one per image axis")
    return np.asarray(size) // 2


def _isolated_beads(smooth, half, min_distance, threshold, background) -> list:
    """Peaks above ``threshold`` with a full box inside the image and no neighbour in it; and all
    the peaks found (fainter neighbours included)."""
    from skimage.feature import peak_local_max

    neighbour_level = background + 0.5 * (threshold - background)
    peaks = peak_local_max(smooth, min_distance=min_distance, threshold_abs=neighbour_level, exclude_border=False)
    shape = np.asarray(smooth.shape)
    keep = []
    for p in peaks:
        if smooth[tuple(p)] < threshold or (p - half - 1 < 0).any() or (p + half + 1 >= shape).any():
            continue
        others = peaks[(peaks != p).any(axis=1)]
        if not (np.abs(others - p) <= 2 * half).all(axis=1).any():
            keep.append(p)
    return keep, peaks


#: Ceilings of the integer ranges cameras record in (8 to 16 bits): an image whose maximum is one of
#: them, reached by several voxels, was clipped there (:func:`_unsaturated`).
SENSOR_CEILINGS = tuple(2.0**bits - 1 for bits in (8, 10, 12, 14, 16))


def _ceiling(beads) -> float | None:
    """The camera's ceiling at which ``beads`` was clipped: its maximum when that is a full 8- to
    16-bit range's top reached by at least two voxels; else None."""
    top = float(beads.max())
    return top if top in SENSOR_CEILINGS and np.count_nonzero(beads == top) >= 2 else None


def _brightest_unsaturated(smooth, near) -> tuple:
    """The index of the brightest local maximum of ``smooth`` with no clipped voxel (:func:`_clipped`)
    within 2 voxels of it (``near`` marks the voxels that have one); of the brightest voxel when there is no
    such maximum.

    It sets the default box and threshold: one bead clipped at 65535 among eight of 3000 set them
    from its flat-topped core and halo (box 23 x 17 x 17, threshold 12400), so that the eight
    were crowded by its neighbours or fell below it and no bead was found, where the clipped one
    alone should have been left out (:func:`_unsaturated`)."""
    from scipy import ndimage

    if near.any():
        maxima = (smooth == ndimage.maximum_filter(smooth, size=3)) & ~near
        if maxima.any():
            return np.unravel_index(np.argmax(np.where(maxima, smooth, -np.inf)), smooth.shape)
    return np.unravel_index(np.argmax(smooth), smooth.shape)


def _clip_note(beads) -> str:
    """Where the beads of :func:`_unsaturated`'s warning and error were clipped."""
    top = _ceiling(beads)
    return (f"at {top:.0f}, the camera's ceiling" if top is not None else
            f"flat-topped at {float(beads.max()):.6g}, the image's maximum, which more voxels hold than any value "
            "below it, as a camera clips them")


def _unsaturated(beads, centres, half, clipped, clipped_only: bool = True) -> list:
    """``centres`` less the beads whose box holds a clipped voxel (``clipped``, :func:`_clipped`), with a warning;
    an error when every bead does and ``clipped_only`` (every peak that reaches the threshold is clipped):
    where unclipped beads were left out for crowding, the error :func:`distill_psf` raises names that.

    A clipped bead's core is flat-topped: five 2x-overexposed beads in a 16-bit image gave a PSF
    whose peak was 42 % low, without a word; clipped at no camera's range's top (a camera's full well,
    or 65535 less a subtracted background) they were averaged in all the same.
    """
    if not clipped.any():
        return centres
    kept = [c for c in centres if not clipped[tuple(slice(max(p - h - 1, 0), p + h + 2)
                                                   for p, h in zip(c, half))].any()]
    where = _clip_note(beads)
    if centres and not kept and clipped_only:
        raise InputError(f"every bead found has saturated voxels ({where}): image the beads with less exposure "
                         "or gain")
    if len(kept) < len(centres):
        warnings.warn(f"{len(centres) - len(kept)} of {len(centres)} beads have saturated voxels ({where}) and "
                      "were left out: image the beads with less exposure or gain", RuntimeWarning, stacklevel=3)
    return kept


def _clipped(beads) -> np.ndarray:
    """The voxels a camera clipped: those at its ceiling (:func:`_ceiling`) and those on a flat top
    (:func:`_flat_tops`)."""
    top = _ceiling(beads)
    flat = _flat_tops(beads)
    return flat | (beads == top) if top is not None else flat


def _flat_tops(beads) -> np.ndarray:
    """The voxels at the image's maximum when a clipped plateau holds it
    (:func:`deconv3d._saturation.plateau_level`, the rule of ``--saturation auto``: at least
    :data:`~deconv3d._saturation.PLATEAU_MIN_VOXELS` voxels, more than at the next value): beads clipped
    wherever the camera's range ends, each clipped bead's top at the clip level. Widefield beads
    (Gibson-Lanni, NA 1.4, voxels 0.2 x 0.1 x 0.1 µm, 1e6 photons, nine) clipped at 0.7, 0.5 or 0.3 of
    their peak held 16, 49 or 109 voxels at it; at 0.9, 3 (not flagged: the PSF's peak then came out
    within 2 % of the unclipped one's)."""
    from deconv3d._saturation import plateau_level, top_two

    level = plateau_level(top_two(beads))
    return beads == level if level is not None else np.zeros(beads.shape, bool)
