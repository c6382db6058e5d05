"""The bead boxes of :func:`deconv3d.psf.distill_psf`: cut, aligned, measured and averaged.

Each bead's background, from the faces of a wider box, near the bead's focal plane where its defocus
light does not reach them (``_surroundings``, ``_face_background``, ``_focal_background``,
``_wider_box``); its box less that background, shifted so its centroid is central
(``_aligned_box``); the noise of the summed boxes' faint tails averaged out (``_quiet_tails``); and the
share of the beads' light that the box holds (``_tail_share``, ``_light_in_box``), which
:data:`MIN_BOX_SHARE` warns of. The boxes left out as too bright, doublets or clusters:
:mod:`deconv3d.psf.bead_outliers`.
"""

from __future__ import annotations

import numpy as np

from deconv3d.psf.bead_detection import _robust_background, _smoothed_noise
from deconv3d.psf.center_crop import _centroid


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


#: :func:`distill_psf` warns when its box holds less than this share of the brightest bead's light
#: against a box twice as wide; in 3D both laterally, within the planes ``size[0] // 6`` (at least 1)
#: either side of the bead's. A widefield bead's light does not end along z (each plane of a
#: Gibson-Lanni PSF, NA 1.3, holds within 2 % of the focal plane's light 2.5 µm from it), so against a
#: box twice as wide along z too any box held about half of it (51-55 % of noise-free Gibson-Lanni
#: NA 1.4 and vectorial NA 1.2 PSFs, voxels 0.2 x 0.1 x 0.1 µm, in their default box, half of it and
#: twice it) and the warning could not be met; near the focal plane the default box holds 92-96 % of
#: their light, a Gaussian halo (sigma 6 x 5 x 5 voxels, 6 % of the peak) cut by a 17 x 11 x 11 box 77 %.
MIN_BOX_SHARE = 0.8

#: :func:`distill_psf` also warns when the mean of a face pair of the summed boxes (the PSF before it is
#: normalised) exceeds this share of its peak: the box cuts the PSF where it is still bright, along any
#: axis, z included. Noise-free, the default box's faces held 1.3 % (Gibson-Lanni, NA 1.4) and 1.7 %
#: (vectorial, NA 1.2) of the peak, half that box's 9 %; a Gaussian's face pair in a box 2 sigma
#: either side about 5 %, 2.5 sigma 2 % (the box then holds 96 % of its light).
MAX_FACE_LEVEL = 0.03


def _face_levels(total: np.ndarray) -> np.ndarray:
    """Per axis, the mean of ``total``'s two faces along it as a share of its peak (0 without light)."""
    peak = float(total.max())
    levels = [np.mean([np.moveaxis(total, a, 0)[i].mean() for i in (0, -1)]) for a in range(total.ndim)]
    return np.asarray(levels) / peak if peak > 0 else np.zeros(total.ndim)


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


def _near_focus(box: np.ndarray, half, wide) -> tuple[np.ndarray, int]:
    """The planes of a 3D bead's wider ``box`` (half-widths ``wide``, around a box of ``half``) within
    ``half[0] // 3`` (at least 1, at most ``wide[0]``) either side of the bead's, and that reach."""
    reach = min(max(1, int(half[0]) // 3), int(wide[0]))
    return box[wide[0] - reach:wide[0] + reach + 1], reach


def _light_in_box(beads, centre, half, wide, background: float) -> tuple[float, float, float] | None:
    """A bead's light inside its box and inside the wider box of half-widths ``wide`` (in 3D both within
    the planes ``half[0] // 3``, at least 1, either side of the bead's: see :data:`MIN_BOX_SHARE`), and the
    variance the noise gives the share of the two, scaled by the total squared (None without light).
    Both lose ``background``, the wide box's own (:func:`_surroundings`): against the image's
    median, an uneven background of +-10 % made a box that held all of a bead's light look like
    34 %. A widefield PSF's out-of-focus cone holds much of its light far from the peak: 3 FWHM
    kept 42 %."""
    big = beads[tuple(slice(c - r, c + r + 1) for c, r in zip(centre, wide))].astype(np.float64) - background
    if big.ndim == 3:  # laterally, near the focal plane (MIN_BOX_SHARE)
        big, reach = _near_focus(big, half, wide)
        wide, half = (reach, *wide[1:]), (reach, *half[1:])
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


def _face_level(face: np.ndarray) -> tuple[float, float]:
    """A face's level and its standard error: its mean within 3 robust standard deviations of its
    median, not the median: a Poisson background's median lies below its mean (98.98 against 100, taken
    as the background of a box of 14,297 voxels, that added 14,600 counts of light to a bead of 20,400
    and made a box holding all of its light read as 65 %)."""
    median, sigma = _robust_background(face)
    if sigma <= 0:
        return median, 0.0
    kept = face[np.abs(face - median) <= 3 * sigma]
    return float(kept.mean()), float(kept.std() / np.sqrt(kept.size))


def _face_pair(box: np.ndarray, axis: int) -> tuple[float, float]:
    """The mean of the levels of ``box``'s two faces along ``axis`` (:func:`_face_level`; what lies at
    the centre under a background that slopes along that axis) and its standard error."""
    (low, low_error), (high, high_error) = (_face_level(np.moveaxis(box, axis, 0)[i]) for i in (0, -1))
    return (low + high) / 2, float(np.hypot(low_error, high_error)) / 2


def _face_background(box: np.ndarray) -> tuple[float, float]:
    """The background under a box and its standard error: per axis the mean of its two faces' levels
    (:func:`_face_pair`), the smallest over the axes (faces that a widefield bead's defocus cone reaches
    read high: their border median was 101-104 over a background of 100, which made a box holding 52 %
    of the light look like 77 %)."""
    return min(_face_pair(box, a) for a in range(box.ndim))


def _focal_background(box: np.ndarray, half, wide) -> tuple[float, float] | None:
    """The background under a 3D bead's wider ``box`` (half-widths ``wide``, around a box of ``half``),
    read where its defocus light does not reach: on the y and x faces, within the planes
    ``half[0] // 3`` (at least 1) either side of the bead's. Per axis the mean of the two faces' levels
    (:func:`_face_pair`), averaged over the axes with room beyond the box (None when neither has any),
    and its standard error.

    A widefield bead's cone widens with the distance from its focus and reaches the y and x faces a
    few planes away; the smallest of the three axes' face levels (:func:`_face_background`) still
    read 102.5-104.6 over a background of 100 at 1e6 photons (110.6-111.6 in the default box), which
    took that light from the whole box as background: nine Gibson-Lanni beads (NA 1.4, voxels 0.2 x
    0.1 x 0.1 µm) came out with their peak 8-15 % high. Close to the focal plane the faces read
    99.9-102.7 (the first three beads of each box). The mean of both axes rather than the smaller: from fewer voxels,
    the smaller was biased low by the noise (peak 13-17 % low at 4e4 photons, 21 x 31 x 31 box)."""
    room = [a for a in (1, 2) if box.ndim == 3 and wide[a] > half[a]]
    if not room:
        return None
    slab, _ = _near_focus(box, half, wide)
    pairs = [_face_pair(slab, a) for a in room]
    return float(np.mean([p[0] for p in pairs])), float(np.sqrt(sum(p[1] ** 2 for p in pairs))) / len(pairs)


#: :func:`_surroundings` averages the two background readings of a bead (its wider box's faces and
#: those near its focal plane) when they differ by at most this many standard errors of their
#: difference, and takes the lower only beyond it (:func:`_background`).
BACKGROUND_AGREEMENT = 2.0


def _background(faces: tuple[float, float], focal: tuple[float, float] | None) -> float:
    """The background from the faces' reading and the focal one, each ``(level, standard error)``:
    their inverse-variance mean when they agree within :data:`BACKGROUND_AGREEMENT` standard errors,
    else the lower (the other holds the bead's defocus light).

    The lower of two noisy readings, always, was biased low at low photon counts: with nine
    Gibson-Lanni beads (NA 1.4, voxels 0.2 x 0.1 x 0.1 µm, seeds 0-3) over a background of 100, the
    PSF's peak came out 18-44 % low at 1e4 photons in the default box (0-19 % with the true
    background) and 37-62 % low in a 21 x 31 x 31 box (5-23 % with the true background); the mean
    when they agree gave 10-41 % and 13-51 % (README)."""
    if focal is None:
        return faces[0]
    (a, a_error), (b, b_error) = faces, focal
    if abs(a - b) > BACKGROUND_AGREEMENT * np.hypot(a_error, b_error):
        return min(a, b)
    if a_error <= 0 or b_error <= 0:
        return (a + b) / 2
    return float((a / a_error**2 + b / b_error**2) / (1 / a_error**2 + 1 / b_error**2))


def _surroundings(beads, centre, peaks, half) -> tuple[np.ndarray, np.ndarray | None, float]:
    """``(centre, wide, background)`` of a bead: the half-widths of its wider box (:func:`_wider_box`)
    and the background under it, from the level of that box's faces (:func:`_face_background`) and,
    in 3D, of its y and x faces near the bead's focal plane (:func:`_focal_background`): their mean
    when they agree within their noise, else the lower (:func:`_background`); with no
    room beyond its box, the level of the faces of its box with the one-voxel margin.

    The background is what the image would hold without the beads. Everything a bead puts in its box,
    the defocus light that a widefield PSF spreads over every plane included, belongs to the PSF that
    :func:`distill_psf` returns (the bead's PSF cropped to the box, at unit sum), so the background is
    read where that light does not reach: light of the bead's taken as background is subtracted from
    every voxel of the box, which takes it from the faint tails and leaves the peak too high. The
    lower of the two readings where they differ beyond their noise, so that a bead whose light fades faster along z than across (a halo
    narrower along z than the wider box, a confocal bead) keeps its faces' reading.

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
    return centre, wide, _background(_face_background(box), None if wide is None else _focal_background(box, half, wide))


def _aligned_box(image, centre, half, background: float) -> np.ndarray | None:
    """The box around ``centre`` less ``background``, shifted so its core's centroid (:func:`_core_weights`)
    is central.

    The shift is a Fourier shift, exact for a bead sampled finely enough (its spectrum inside the
    voxel grid's): cubic-spline interpolation blurred every shifted box. A noise-free bead of a
    Gibson-Lanni PSF (NA 1.3, 0.52 µm, voxels 0.25 x 0.1 x 0.1 µm) shifted by a third of a voxel
    along each axis lost 4 % of its peak by the spline (relative L2 error 0.039), none by the
    Fourier shift (0.006). Its wrap-around mixes the box's opposite faces, which hold the same faint
    tails on either side of a bead. A bead sampled more coarsely (the product of that PSF and one at
    0.488 µm, a confocal one with a closed pinhole) is aliased, and no shift restores it: nine such
    beads of 1e5-1e6 photons distilled with their peak 14-17 % low, against 20-23 % by the spline."""
    from scipy import ndimage

    box = image[tuple(slice(c - h - 1, c + h + 2) for c, h in zip(centre, half))].astype(np.float64)
    box -= background
    weights = _core_weights(box)
    if weights.sum() <= 0:
        return None
    shift = (np.asarray(box.shape) - 1) / 2.0 - _centroid(weights)
    moved = np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(box), shift)).real
    return moved[(slice(1, -1),) * box.ndim]


#: :func:`_core_weights` centres a bead on its excess over this share of its box's smoothed maximum.
ALIGN_LEVEL = 0.3


def _core_weights(box: np.ndarray) -> np.ndarray:
    """The weights whose centroid :func:`_aligned_box` puts on the centre voxel: the box's excess over
    :data:`ALIGN_LEVEL` of the maximum of a copy smoothed by a Gaussian of 1 voxel, within the voxels
    of that copy above it connected to its maximum, widened by one voxel.

    The excess over 10 % of the box's own maximum, anywhere in the box, took in the noise: with beads
    of 4e4 photons over a background of 100 (Gibson-Lanni, NA 1.4, voxels 0.2 x 0.1 x 0.1 µm) the
    centres were off by 0.16-0.42 voxel (rms per axis) in a 21 x 31 x 31 box and 0.13-0.18 in an
    11-voxel one, which blurred the average; these weights put them within 0.04-0.07 voxel, and
    within 0.02 at 1e6 photons, as before (also for the confocal beads of :func:`_aligned_box`)."""
    from scipy import ndimage

    _, top, core = _smoothed_core(box, ALIGN_LEVEL)
    if top <= 0:
        return np.zeros_like(box)
    return np.clip(box - ALIGN_LEVEL * top, 0, None) * ndimage.binary_dilation(core)


def _smoothed_core(box: np.ndarray, level: float) -> tuple:
    """A copy of ``box`` smoothed by a Gaussian of 1 voxel, that copy's maximum, and its core: the voxels
    of the copy above ``level`` times the maximum that are connected to it."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(box, 1.0)
    top = float(smooth.max())
    labels, _ = ndimage.label(smooth > level * top)
    return smooth, top, labels == labels[np.unravel_index(np.argmax(smooth), smooth.shape)]
