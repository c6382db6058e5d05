"""The bead boxes that :func:`deconv3d.psf.distill_psf` leaves out: too bright (doublets, clusters), or
unresolved doublets and clusters by their cores' widths against the median box's (``_reject_outliers``),
and, where only one box is left, a warning when its core looks like two beads merged
(``_warn_of_a_lone_doublet``).
"""

from __future__ import annotations

import warnings

import numpy as np

from deconv3d.psf.bead_boxes import _smoothed_core


#: :func:`distill_psf` leaves out, as an unresolved doublet, a box that holds more than this many
#: times the median box's light and whose core is wider along an axis than :data:`DOUBLET_WIDTH` times
#: the median core's, or than :data:`DOUBLET_CORE`, whichever is wider, and than the median core by
#: :data:`DOUBLET_SPREAD` deviations of the cores' widths.
DOUBLET_LIGHT = 1.5
#: The core must be this much wider along the same axis on a copy of the box smoothed by a Gaussian of
#: 1 voxel too: the noise narrows a fainter bead's raw core (its maximum is lifted more), and of two
#: single widefield beads of 4e4 and 8e4 photons (Gibson-Lanni NA 1.4 and vectorial NA 1.2, voxels
#: 0.2 x 0.1 x 0.1 µm, default box, 20 seeds each) 2 and 5 pairs lost the brighter as a doublet, its raw
#: core up to 1.55 times as wide along z; smoothed, the brighter core was 0.94-1.13 times as wide in all
#: 40 pairs, while doublets of Gaussian beads 2-4 voxels apart (sigma 0.7-1.4 voxel across) are 1.24-2.44 times
#: as wide as one bead, noise-free.
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
    scatter of the cores' widths (:data:`DOUBLET_SPREAD`), and wider by :data:`DOUBLET_WIDTH` on a copy
    smoothed by 1 voxel too (the noise of a raw core).

    Twice the median alone let two beads 2-4 voxels apart, found as one peak, in at 1.99 times the
    median (the PSF 18 % too wide along the pair's axis) and left them out at 2.01, as the noise fell;
    their core is 20 % wider or more. A single bead 1.5 to 2 times as bright as the median has the
    median's shape and is kept.

    Of two boxes the fainter is the reference (the median of two is their mean, which no box exceeds
    twice): a doublet beside one single bead was averaged in, without a word. Neither is left out for
    its light alone, and the cores' scatter is unknown (no :data:`DOUBLET_SPREAD`)."""
    from scipy import ndimage

    if len(boxes) < 2:
        _warn_of_a_lone_doublet(boxes)
        return boxes
    sums = np.array([b.sum() for b in boxes])
    widths = np.array([_core_widths(b) for b in boxes])
    smoothed = np.array([_core_widths(ndimage.gaussian_filter(b, 1.0)) for b in boxes])  # (noise: DOUBLET_WIDTH)
    pair = len(boxes) == 2
    faint = int(np.argmin(sums))

    def reference(values: np.ndarray) -> np.ndarray:  # the fainter box of a pair, else the median box
        return values[faint] if pair else np.median(values, axis=0)

    median, typical = reference(sums), reference(widths)
    # A pair: no cores' scatter, and neither left out for its light alone
    spread, most = (0.0, np.inf) if pair else (1.4826 * np.median(np.abs(widths - typical), axis=0), 2 * median)
    wider = ((widths > np.maximum(DOUBLET_WIDTH * np.maximum(typical, DOUBLET_CORE), typical + DOUBLET_SPREAD * spread))
             & (smoothed > DOUBLET_WIDTH * reference(smoothed))).any(axis=1)
    bright = sums > most
    doublets = ~bright & (sums > DOUBLET_LIGHT * median) & wider
    if bright.any():
        warnings.warn(f"{int(bright.sum())} of {len(boxes)} beads were left out: their boxes hold over twice the "
                      "median bead's light (doublets, clusters or uneven background); use a sparser bead image, or "
                      "one with an even background, for them to count", RuntimeWarning, stacklevel=3)
    if doublets.any():
        warnings.warn(f"{int(doublets.sum())} of {len(boxes)} beads were left out as unresolved doublets or "
                      f"clusters (over {DOUBLET_LIGHT} times the {'other' if pair else 'median'} bead's light and "
                      "wider): use a sparser bead "
                      "image for them to count", RuntimeWarning, stacklevel=3)
    return [b for b, s, c in zip(boxes, sums, bright | doublets) if s > 0 and not c]


#: :func:`_warn_of_a_lone_doublet` warns when the only box's core (:func:`_lateral_elongation`) is this
#: many times as wide along one lateral direction as across it. Of lone single beads, 20 seeds per
#: setting and 60 at the faintest found (Gaussian sigma 2 x 1.4 x 1.4 voxels, 1.5e3-1e6 photons;
#: Gibson-Lanni NA 1.4 and vectorial NA 1.2, 0.52 µm, voxels 0.2 x 0.1 x 0.1 µm, 1e4-1e6 photons;
#: sub-voxel positions, background 100), none measured over 1.31; two such beads measured 1.54-2.07
#: 1.0 lateral FWHM (3 voxels) apart along x or the diagonal, 1.29-1.72 0.8 FWHM apart and 1.07-1.46
#: 0.6 FWHM apart, within the singles' scatter (1.5 FWHM apart or more they are two peaks).
LONE_DOUBLET_ELONGATION = 1.4


def _lateral_elongation(box: np.ndarray) -> float:
    """How many times as wide a box's core is along its most extended lateral direction as across it:
    the square root of the ratio of the eigenvalues of the second moments, over the last two axes, of the
    excess over half the maximum of a copy smoothed by a Gaussian of 1 voxel, within the voxels above
    that level connected to the maximum. A single bead's core is round across (1 within the noise) on
    square pixels; two beads merged into one blob are longer along the line joining them. Measured in
    voxels: where the y and x pixel sizes differ, a single bead measures about their ratio (1.44 for a
    Gaussian bead 1.5 times as many pixels wide along x as along y)."""
    smooth, top, core = _smoothed_core(box, 0.5)
    weights = (np.clip(smooth - 0.5 * top, 0, None) * core).ravel()
    grids = np.indices(box.shape)[-2:].reshape(2, -1).astype(np.float64)
    offsets = grids - (grids * weights).sum(axis=1, keepdims=True) / weights.sum()
    moments = (offsets[:, None] * offsets[None] * weights).sum(axis=-1) / weights.sum()
    low, high = np.linalg.eigvalsh(moments)
    return float(np.sqrt(high / low)) if low > 0 else np.inf


def _warn_of_a_lone_doublet(boxes: list) -> None:
    """Warn when the image's only bead box (nothing to compare it with, :func:`_reject_outliers`) has a
    core over :data:`LONE_DOUBLET_ELONGATION` times as long across as it is wide: two beads merged into one
    blob, whose PSF would be too wide along the line joining them. Only lateral pairs are seen: along z a
    single bead's own extent is unknown here. The pixels are taken as square (no voxel size is given here):
    a single bead of an image whose y and x pixel sizes differ about 1.5 times or more is warned about too."""
    if len(boxes) != 1 or boxes[0].ndim < 2:
        return
    elongation = _lateral_elongation(boxes[0])
    if elongation > LONE_DOUBLET_ELONGATION:
        warnings.warn(f"the only bead found is {elongation:.2f} times as long as it is wide across (a single bead's "
                      "core is round on square pixels): it may be two beads merged, which widens the PSF along the "
                      "line joining them; image more beads, or a sparser field, for the doublet to be told from "
                      "single beads",
                      RuntimeWarning, stacklevel=4)


def _core_widths(box: np.ndarray) -> np.ndarray:
    """The standard deviation along each axis of a box's excess over half its maximum."""
    core = np.clip(box - 0.5 * box.max(), 0, None)
    grids = np.indices(box.shape)
    total = core.sum()
    means = [(core * g).sum() / total for g in grids]
    return np.sqrt([(core * (g - m) ** 2).sum() / total for g, m in zip(grids, means)])
