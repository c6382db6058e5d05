"""A PSF distilled from an image of sub-resolution beads."""

from __future__ import annotations

import warnings

import numpy as np

from deconv3d._arrays import as_numpy
from deconv3d.errors import InputError
from deconv3d.psf.prepare import SPIKE_RATIO, _centroid, _positive_ints, normalize_psf


def distill_psf(beads, size=None, min_distance=None, threshold=None) -> np.ndarray:
    """Estimate a PSF from an image of sub-resolution beads ("PSF distillation").

    Bright, isolated beads are found on a Gaussian-smoothed copy, from which single hot voxels
    are first removed (:func:`skimage.feature.peak_local_max`); beads whose box would leave the
    image, or that have another bead inside it, are rejected, as are unresolved doublets and
    clusters (:func:`_reject_outliers`).  Each box loses its
    background (measured at the faces of a box twice as wide), is shifted with sub-voxel
    accuracy so that its centroid sits on the centre voxel, and the boxes are
    summed (a brightness-weighted average); the noise of the faint tails is averaged out
    (:func:`_quiet_tails`) before the sum is clamped at 0 and normalised.

    Parameters
    ----------
    beads : array_like
        2D or 3D bead image.
    size : tuple of int, optional
        Box size per axis (even sizes are increased by one).  Default: three
        times the FWHM of the brightest unsaturated bead per axis, rounded up to odd.
    min_distance : int, optional
        Minimum distance in voxels between detected peaks; default half the
        smallest FWHM.
    threshold : float, optional
        Minimum smoothed intensity of a bead.  Default: background plus the
        larger of 10 robust standard deviations and 20 % of the brightest unsaturated peak.

    Returns
    -------
    numpy.ndarray
        float32 PSF of shape ``size`` with unit sum.

    Raises
    ------
    InputError
        If the image is invalid or no usable bead is found (the message says why: nothing stands
        out from the noise, a threshold so low that noise peaks crowd every bead, one that no bead
        reaches, boxes that reach past the border, or a neighbour within one box width of every bead
        (their boxes overlap), with a smaller box that would leave some bead alone in it).

    Warns
    -----
    RuntimeWarning
        When the box holds less than :data:`MIN_BOX_SHARE` of the brightest bead's light,
        measured against a box twice as wide; when beads with saturated voxels were left out
        (:func:`_unsaturated`; all of them saturated is an error); when beads were left out for
        holding over twice the median bead's light, or as doublets or clusters
        (:func:`_reject_outliers`).

    Notes
    -----
    *Detection.* Single-voxel spikes whose neighbours hold no light beyond the noise (a camera's
    hot voxels, :func:`_despiked`) are lowered to their brightest neighbour and the image is smoothed by a Gaussian of sigma 1 voxel; the median of the
    smoothed image is the background and 1.4826 times its median absolute deviation its spread,
    which sets the default threshold (an uneven background enters it and raises the threshold: no
    bead may be found, and the error then says to lower it, :func:`_why_no_beads`). The FWHM
    along each axis through the brightest smoothed voxel that no saturated voxel lies near
    (:func:`_brightest_unsaturated`; contiguous voxels at or above half its height over the background) sets the default box, half-width
    ``ceil(1.5 FWHM)`` per axis, and ``min_distance``. Every local maximum
    (:func:`skimage.feature.peak_local_max`) above the level halfway between the background
    and ``threshold`` counts as a peak, so that fainter neighbours are seen too. A peak is
    used as a bead when its smoothed value reaches ``threshold``, its box with one voxel of
    margin lies inside the image, and no other peak lies within twice the box half-width
    along every axis (their boxes would overlap).

    *Alignment.* Around each bead the box with its one-voxel margin is cut from the raw
    (unsmoothed) image less its hot voxels (:func:`_without_hot_voxels`) and the bead's background
    subtracted: the level of the faces
    (:func:`_face_background`) of the wider box that the tail share below uses, or of the box
    with its margin where neighbours or the image border leave no room beyond it. The centroid of the
    box's excess over 10 % of its maximum is computed, and the box is shifted by cubic-spline
    interpolation (:func:`scipy.ndimage.shift`, ``order=3``) so that this centroid falls on
    the centre voxel; the margin is then cropped. A box with no voxel above its background
    is dropped.

    *Averaging.* With three boxes or more, those whose sum is not positive are rejected, and
    with a warning those whose sum exceeds twice the median sum (doublets, clusters or uneven
    background), or :data:`DOUBLET_LIGHT` times it with a core wider than :data:`DOUBLET_WIDTH`
    times the median box's (or than :data:`DOUBLET_CORE`, if that is wider) and than the median
    by :data:`DOUBLET_SPREAD` deviations of the cores' widths along some axis (unresolved doublets
    or clusters).
    The rest are summed, which weights each bead by its brightness. In the sum, the core, where a copy smoothed with sigma 1 exceeds
    8 times its noise level, is kept as is; outside it each voxel becomes a normalised
    Gaussian average (sigma 3 voxels) of the outside voxels alone, so that the zero-mean noise
    of the faint tails cancels instead of leaving its positive half after clamping. The
    result is clamped at 0 and scaled to unit sum. Finally the brightest bead's light inside
    the box is compared with that in a box twice as wide (limited by the image border and
    narrowed to stay on the bead's side of any neighbouring peak), which gives the warning above.

    Examples
    --------
    Four Gaussian beads (sigma 2 voxels along z, 1.4 along y and x) at sub-voxel positions,
    over a background of 10 with Poisson noise:

    >>> import numpy as np
    >>> from deconv3d.psf import distill_psf
    >>> z, y, x = np.mgrid[:16, :48, :48]
    >>> truth = np.zeros((16, 48, 48))
    >>> for cz, cy, cx in [(8, 12, 12), (7.6, 12.3, 35.5), (8.2, 35.7, 12.4), (8, 36, 36)]:
    ...     truth += 1000 * np.exp(-((z - cz) ** 2 / 4 + ((y - cy) ** 2 + (x - cx) ** 2) / 2) / 2)
    >>> beads = np.random.default_rng(0).poisson(truth + 10).astype(np.float32)
    >>> psf = distill_psf(beads, size=(9, 9, 9))
    >>> psf.shape, psf.dtype, round(float(psf.sum()), 4)
    ((9, 9, 9), dtype('float32'), 1.0)
    >>> tuple(int(i) for i in np.unravel_index(psf.argmax(), psf.shape))
    (4, 4, 4)
    >>> g = np.mgrid[:9, :9, :9] - 4  # the beads' Gaussian, centred in the box
    >>> true = np.exp(-(g[0] ** 2 / 4 + (g[1] ** 2 + g[2] ** 2) / 2) / 2)
    >>> bool(np.abs(psf - true / true.sum()).sum() < 0.1)  # L1 error
    True
    """
    from scipy import ndimage

    beads = _check_beads(beads)
    despiked = _despiked(beads)
    smooth = ndimage.gaussian_filter(despiked, 1.0)
    background, spread = _robust_background(smooth)  # the spread sets the default threshold
    brightest = _brightest_unsaturated(beads, smooth)
    fwhm = _fwhm(smooth - background, brightest)
    half = _box_half(size, fwhm, beads.ndim)
    if threshold is not None and not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite intensity, got {threshold}")
    if threshold is None:
        threshold = background + max(10 * spread, 0.2 * (float(smooth[brightest]) - background))
    if min_distance is None:
        min_distance = max(1, int(round(min(fwhm) / 2)))
    centres, peaks = _isolated_beads(smooth, half, int(min_distance), float(threshold), background)
    centres = _unsaturated(beads, centres, half)
    cut = _without_hot_voxels(beads, despiked)  # what the boxes are cut from
    found = [_surroundings(cut, c, peaks, half) for c in centres]  # (centre, wider box, background)
    boxes = [_aligned_box(cut, c, half, level) for c, _, level in found]
    boxes = _reject_outliers([b for b in boxes if b is not None])
    if not boxes:
        why = _why_no_beads(smooth, peaks, half, background, _smoothed_noise(despiked, 1.0), float(threshold), fwhm)
        raise InputError(f"no isolated beads found (box {tuple(int(v) for v in 2 * half + 1)}, threshold "
                         f"{float(threshold):.3g}): {why}")
    measured, wide = _tail_share(cut, smooth, found, half)
    share, margin = measured or (1.0, 0.0)
    if share + margin < MIN_BOX_SHARE:
        warnings.warn(f"the bead box {tuple(int(v) for v in 2 * half + 1)} holds about {share:.0%} of a bead's "
                      f"light (against a box twice as wide): the PSF's tails are cut, and deconvolution with it "
                      f"leaves haze; give a larger box, e.g. size {tuple(int(v) for v in 2 * wide + 1)}",
                      RuntimeWarning, stacklevel=2)
    return normalize_psf(_quiet_tails(np.sum(boxes, axis=0)))


def _why_no_beads(smooth, peaks, half, background: float, noise: float, threshold: float, fwhm) -> str:
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
    over a background of 100 (no bead), told to give a smaller box, gave a PSF made of the blob's top."""
    floor = background + 10 * noise
    top = float(smooth.max())
    wide = (2 * np.maximum(1, np.ceil(1.5 * np.asarray(fwhm))) + 3 > np.asarray(smooth.shape)).all()
    if top < floor or wide:
        width = " x ".join(f"{w:.0f}" for w in fwhm)
        why = f", its peak {width} voxels wide at half height: wider than a bead in this image" if wide else ""
        return (f"no bead stands out from the noise (brightest smoothed value {top:.3g}, background "
                f"{background:.3g}, noise {noise:.2g}{why}): check that the image holds beads")
    peaks = np.asarray(peaks).reshape(-1, smooth.ndim)
    height = np.array([float(smooth[tuple(p)]) for p in peaks])
    shape = np.asarray(smooth.shape)
    if not (height >= threshold).any():
        return f"no bead reaches the threshold (brightest smoothed value {top:.3g}): lower --threshold"
    inside = peaks[(height >= max(threshold, floor)) & (peaks - half - 1 >= 0).all(axis=1)
                   & (peaks + half + 1 < shape).all(axis=1)]
    if not len(inside):
        return "every bead's box reaches past the image's border: give a smaller --size or image the beads further in"
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


def _quiet_tails(total: np.ndarray, level: float = 8.0, width: float = 3.0) -> np.ndarray:
    """The summed bead boxes, non-negative, with the noise of the faint tails averaged out.

    Clamping each voxel of the noisy sum at 0 keeps the positive half of the tails' zero-mean
    noise: with two beads of 2e4 photons over a background of 100, that false light was most of
    the PSF and its peak came out at 0.13 of the true one (0.86 with nine beads of 2e5). The
    core (where the sum, lightly smoothed, stands above ``level`` deviations of its noise,
    :func:`_smoothed_noise`) is kept as summed; outside it the values are a Gaussian average
    (sigma ``width`` voxels) of the tails alone, so the core's light does not leak out, and only
    then clamped.
    Measured on a 48 x 200 x 200 image of nine NA 1.2 beads (two pass at 2e4 photons), box 31 x
    41 x 41, peak / L1 error against the true PSF at 2e4 / 2e5 / 2e6 photons over a background
    of 100: vectorial 0.88 / 1.00 / 1.00 and 0.60 / 0.26 / 0.067, against 0.13 / 0.86 / 1.00 and
    1.35 / 0.51 / 0.076 when clamped; Gaussian 0.91 / 0.99 / 1.00 and 0.22 / 0.028 / 0.004,
    against 0.23 / 0.75 / 0.97 and 1.54 / 0.51 / 0.066. Noise-free, L1 0.001 (vectorial). The
    level and width were chosen on these images (3 / 2 gave 0.42 at 2e5 on the vectorial beads).
    """
    from scipy import ndimage

    light = ndimage.gaussian_filter(total, 1.0)
    core = light > level * _smoothed_noise(total, 1.0)
    outside = (~core).astype(np.float64)
    spread = ndimage.gaussian_filter(total * outside, width)
    weight = ndimage.gaussian_filter(outside, width)
    tails = np.divide(spread, weight, out=np.zeros_like(spread), where=weight > 1e-6)
    return np.clip(np.where(core, total, tails), 0, None)


#: :func:`distill_psf` warns when its box holds less than this share of the brightest bead's light.
MIN_BOX_SHARE = 0.8


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


def _tail_share(beads, smooth, found, half) -> tuple[tuple[float, float] | None, np.ndarray]:
    """The share of the beads' light inside their boxes and twice its uncertainty from the noise,
    over the brightest isolated bead and those whose wider box is as large (:func:`_light_in_box`;
    the brightest bead's alone was so noisy that the margin hid boxes holding 20 % of 2e4-photon
    beads; a fainter bead at the border, whose wider box the image cuts, hid the 62 % its box
    holds), and that wider box.

    Each bead's wider box is kept on its side of the midline to every neighbouring peak (along the
    axis that separates them most): a neighbour's light in the wider box made a box that held all
    of a bead's light look like 64 %, and the larger box the warning advised then found no
    isolated bead. ``(None, half)`` when the neighbours leave no room beyond any box."""
    parts = []
    for centre, wide, background in sorted(found, key=lambda f: -float(smooth[tuple(f[0])])):
        part = None if wide is None else _light_in_box(beads, centre, half, wide, background)
        if part is not None:
            parts.append((part, wide))
    if not parts:
        return None, np.asarray(half)
    parts = [(p, w) for p, w in parts if np.array_equal(w, parts[0][1])]
    inner, total, variance = (sum(p[k] for p, _ in parts) for k in range(3))
    if total <= 0:
        return None, np.asarray(half)
    return (inner / total, 2 * np.sqrt(variance) / total), parts[0][1]


def _wider_box(shape, centre, peaks, half) -> np.ndarray | None:
    """Half-widths of the box around ``centre`` against which its light is measured (twice its box
    where the image and the neighbours leave room), or None when there is no room beyond the box."""
    room = np.minimum(centre, np.asarray(shape) - 1 - centre)
    wide = np.minimum(2 * np.asarray(half), room)
    for other in peaks:
        offset = np.abs(np.asarray(other) - centre)
        if not offset.any() or (offset > wide + half).any():  # the bead itself, or too far to reach the box
            continue
        axis = int(np.argmax(offset / np.maximum(wide, 1)))
        wide[axis] = min(wide[axis], offset[axis] // 2)
    return None if (wide <= half).all() else np.maximum(wide, half)


def _light_in_box(beads, centre, half, wide, background: float) -> tuple[float, float, float] | None:
    """A bead's light inside its box and inside the wider box of half-widths ``wide``, and the
    variance the noise gives the share of the two, scaled by the total squared (None without light).
    Both lose ``background``, the wide box's own (:func:`_surroundings`): against the image's
    median, an uneven background of +-10 % made a box that held all of a bead's light look like
    34 %. A widefield PSF's out-of-focus cone holds much of its light far from the peak: 3 FWHM
    kept 42 %."""
    big = beads[tuple(slice(c - r, c + r + 1) for c, r in zip(centre, wide))].astype(np.float64) - background
    inner = big[tuple(slice(w - h, w + h + 1) for w, h in zip(wide, half))]
    total = float(big.sum())
    if total <= 0:
        return None
    share = float(inner.sum()) / total
    # The background, from faces of n voxels, is uncertain by sigma/sqrt(n) under each of the wide
    # box's voxels, and the shell around the box adds its own noise. With 2e4-photon beads over a
    # background of 100 a box holding all of the light read as 73 % (0.85-1.08 at the true
    # background, by noise alone), and a warning needs the share below its limit beyond that.
    sigma = _robust_background(np.concatenate([np.moveaxis(big, a, 0)[i].ravel() for a in range(big.ndim)
                                               for i in (0, -1)]))[1]
    face = min(big.size // n for n in big.shape)  # the smallest face
    variance = sigma**2 * ((big.size * share - inner.size) ** 2 / (2 * face) + big.size - inner.size)
    return float(inner.sum()), total, variance


def _face_background(box: np.ndarray) -> float:
    """The background under a box: per axis the mean of its two faces' levels (what lies at the
    centre under a background that slopes along that axis), the smallest over the axes (faces
    that a widefield bead's defocus cone reaches read high: their border median was 101-104
    over a background of 100, which made a box holding 52 % of the light look like 77 %).

    A face's level is its mean within 3 robust standard deviations of its median, not the median:
    a Poisson background's median lies below its mean (98.98 against 100, taken as the background
    of a box of 14,297 voxels, that added 14,600 counts of light to a bead of 20,400 and made a box
    holding all of its light read as 65 %)."""
    def level(face):
        median, sigma = _robust_background(face)
        return float(face[np.abs(face - median) <= 3 * sigma].mean()) if sigma > 0 else median

    per_axis = [np.mean([level(np.moveaxis(box, a, 0)[i]) for i in (0, -1)]) for a in range(box.ndim)]
    return float(min(per_axis))


def _check_beads(beads) -> np.ndarray:
    beads = as_numpy(beads, dtype=np.float32)
    if beads.ndim not in (2, 3) or beads.size == 0:
        raise InputError(f"bead image must be 2D or 3D, got shape {beads.shape}: check the file")
    if not np.isfinite(beads).all():
        raise InputError("bead image contains NaN or Inf values: replace them and try again")
    if float(beads.max()) <= float(beads.min()):
        raise InputError("bead image is constant: no beads to distil; check the file")
    return beads


def _despiked(beads: np.ndarray) -> np.ndarray:
    """``beads`` with every hot voxel lowered to its brightest neighbour's value, for detection (the
    boxes are cut from :func:`_without_hot_voxels`, which keeps the noise). A voxel is hot when its excess over the image's median
    is more than :data:`~deconv3d.psf.prepare.SPIKE_RATIO` times its brightest neighbour's and its
    neighbours together hold no light beyond the noise: their summed excess is below
    :data:`HOT_NEIGHBOURS` standard deviations of a sum of as many background voxels.

    A hot voxel is no bead: one voxel at 30000 among nine beads of 3000 over a background of 100
    was taken for the brightest bead, set a box of 11 voxels instead of 17 x 13 x 13 and doubled the
    PSF's peak; in an image of noise alone it was distilled into a PSF with 88 % of its light in
    one voxel. The excess, not the value, so that a background does not hide spikes as
    :func:`~deconv3d.psf.prepare._despiked` (made for PSFs) would. The ratio alone also lowered the
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


def _brightest_unsaturated(beads, smooth) -> tuple:
    """The index of the brightest local maximum of ``smooth`` with no voxel at the camera's ceiling
    (:func:`_ceiling`) within 2 voxels of it; of the brightest voxel when there is no such maximum.

    It sets the default box and threshold: one bead clipped at 65535 among eight of 3000 set them
    from its flat-topped core and halo (box 23 x 17 x 17, threshold 12400), so that the eight
    were crowded by its neighbours or fell below it and no bead was found, where the clipped one
    alone should have been left out (:func:`_unsaturated`)."""
    from scipy import ndimage

    top = _ceiling(beads)
    if top is not None:
        near = ndimage.maximum_filter(beads == top, size=5)
        maxima = (smooth == ndimage.maximum_filter(smooth, size=3)) & ~near
        if maxima.any():
            return np.unravel_index(np.argmax(np.where(maxima, smooth, -np.inf)), smooth.shape)
    return np.unravel_index(np.argmax(smooth), smooth.shape)


def _unsaturated(beads, centres, half) -> list:
    """``centres`` less the beads whose box holds a voxel at the camera's ceiling, with a warning;
    an error when every bead does.

    The ceiling is the image's maximum when it is a full 8- to 16-bit range's top and at least two
    voxels reach it. A clipped bead's core is flat-topped: five 2x-overexposed beads in a 16-bit
    image gave a PSF whose peak was 42 % low, without a word.
    """
    top = _ceiling(beads)
    if top is None:
        return centres
    kept = [c for c in centres if not (beads[tuple(slice(max(p - h - 1, 0), p + h + 2)
                                                   for p, h in zip(c, half))] == top).any()]
    if centres and not kept:
        raise InputError(f"every bead found has saturated voxels (at {top:.0f}, the camera's ceiling): image the "
                         "beads with less exposure or gain")
    if len(kept) < len(centres):
        warnings.warn(f"{len(centres) - len(kept)} of {len(centres)} beads have saturated voxels (at {top:.0f}, the "
                      "camera's ceiling) and were left out: image the beads with less exposure or gain",
                      RuntimeWarning, stacklevel=3)
    return kept


def _surroundings(beads, centre, peaks, half) -> tuple[np.ndarray, np.ndarray | None, float]:
    """``(centre, wide, background)`` of a bead: the half-widths of its wider box (:func:`_wider_box`)
    and the background under it, the level of that box's faces (:func:`_face_background`), else,
    with no room beyond its box, of its box with the one-voxel margin.

    Not the median of the box's own border: a widefield bead's defocus light reaches it, and
    subtracting that light as background took 30-38 % of it from a noise-free NA 1.2 PSF (boxes
    17 x 25 x 25 and 25 x 33 x 33 of a 31 x 41 x 41 PSF, five beads; peak 1.31-1.38x too high). From
    the wider box's faces the relative L2 error was 0.9-1.7 % noise-free, also over a background
    sloping or rippling by +-10 %, 1.8-4.7 % at 2e6 photons (against 29-34 %) and 9-23 % at 2e5
    (against 30-46 %).
    """
    centre = np.asarray(centre)
    wide = _wider_box(beads.shape, centre, peaks, half)
    reach = np.asarray(half) + 1 if wide is None else wide
    box = beads[tuple(slice(c - r, c + r + 1) for c, r in zip(centre, reach))].astype(np.float64)
    return centre, wide, _face_background(box)


def _aligned_box(image, centre, half, background: float) -> np.ndarray | None:
    """The box around ``centre`` less ``background``, shifted so its centroid is central."""
    from scipy import ndimage

    box = image[tuple(slice(c - h - 1, c + h + 2) for c, h in zip(centre, half))].astype(np.float64)
    box -= background
    weights = np.clip(box - 0.1 * box.max(), 0, None)
    if weights.sum() <= 0:
        return None
    shift = (np.asarray(box.shape) - 1) / 2.0 - _centroid(weights)
    moved = ndimage.shift(box, shift, order=3, mode="nearest")
    return moved[(slice(1, -1),) * box.ndim]


#: :func:`distill_psf` leaves out, as an unresolved doublet, a box that holds more than this many
#: times the median box's light and whose core is wider along an axis than :data:`DOUBLET_WIDTH` times
#: the median core's, or than :data:`DOUBLET_CORE`, whichever is wider, and than the median core by
#: :data:`DOUBLET_SPREAD` deviations of the cores' widths.
DOUBLET_LIGHT = 1.5
DOUBLET_WIDTH = 1.15
#: The least core width (voxels, :func:`_core_widths`) that :data:`DOUBLET_WIDTH` multiplies: a core
#: narrower than this is one or two voxels, and which of them pass half the peak depends on the
#: bead's sub-voxel position and the noise, not on its shape (clean single beads of sigma 0.5-0.7
#: voxel measured 0 against 0.5, and were left out as doublets).
DOUBLET_CORE = 0.5
#: How many robust standard deviations of the cores' widths (over the boxes) a doublet's core must
#: also exceed the median core's width by: at low SNR the widths scatter (by about 0.5 voxel with
#: beads of 30-40 photons over a background of 100), and of 45-63 such beads 1-3 single ones 1.5-2
#: times the median's light, their cores up to 1.28 times its width, were left out as doublets.
DOUBLET_SPREAD = 3.0


def _reject_outliers(boxes: list) -> list:
    """Drop boxes with no light and, with a warning each, boxes more than twice as bright as the
    median (doublets, clusters, or a single bead over uneven background, whose faces miss some of the
    background under it) and unresolved doublets and clusters: those more than :data:`DOUBLET_LIGHT`
    times as bright whose core (:func:`_core_widths`) is clearly wider than the median box's along
    some axis, wider than a core of one or two voxels (:data:`DOUBLET_CORE`) and wider beyond the
    scatter of the cores' widths (:data:`DOUBLET_SPREAD`).

    Twice the median alone let two beads 2-4 voxels apart, found as one peak, in at 1.99 times the
    median (the PSF 18 % too wide along the pair's axis) and left them out at 2.01, as the noise fell;
    their core is 20 % wider or more. A single bead 1.5 to 2 times as bright as the median has the
    median's shape and is kept."""
    if len(boxes) < 3:
        return boxes
    sums = np.array([b.sum() for b in boxes])
    median = np.median(sums)
    widths = np.array([_core_widths(b) for b in boxes])
    typical = np.median(widths, axis=0)
    spread = 1.4826 * np.median(np.abs(widths - typical), axis=0)  # the noise of a core's width
    wider = (widths > np.maximum(DOUBLET_WIDTH * np.maximum(typical, DOUBLET_CORE),
                                 typical + DOUBLET_SPREAD * spread)).any(axis=1)
    bright = sums > 2 * median
    doublets = ~bright & (sums > DOUBLET_LIGHT * median) & wider
    if bright.any():
        warnings.warn(f"{int(bright.sum())} of {len(boxes)} beads were left out: their boxes hold over twice the "
                      "median bead's light (doublets, clusters or uneven background); use a sparser bead image, or "
                      "one with an even background, for them to count", RuntimeWarning, stacklevel=3)
    if doublets.any():
        warnings.warn(f"{int(doublets.sum())} of {len(boxes)} beads were left out as unresolved doublets or "
                      f"clusters (over {DOUBLET_LIGHT} times the median bead's light and wider): use a sparser bead "
                      "image for them to count", RuntimeWarning, stacklevel=3)
    return [b for b, s, c in zip(boxes, sums, bright | doublets) if s > 0 and not c]


def _core_widths(box: np.ndarray) -> np.ndarray:
    """The standard deviation along each axis of a box's excess over half its maximum."""
    core = np.clip(box - 0.5 * box.max(), 0, None)
    grids = np.indices(box.shape)
    total = core.sum()
    means = [(core * g).sum() / total for g in grids]
    return np.sqrt([(core * (g - m) ** 2).sum() / total for g, m in zip(grids, means)])
