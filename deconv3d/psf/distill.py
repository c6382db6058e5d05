"""A PSF distilled from an image of sub-resolution beads: :func:`distill_psf`.

The beads are found in :mod:`deconv3d.psf.bead_detection` and their boxes cut, aligned, measured and
averaged in :mod:`deconv3d.psf.bead_boxes`, the boxes left out chosen in :mod:`deconv3d.psf.bead_outliers`;
this module checks the bead image and runs the steps.
"""

from __future__ import annotations

import warnings

import numpy as np

from deconv3d._arrays import as_numpy
from deconv3d.errors import InputError
from deconv3d.psf.bead_boxes import (MAX_FACE_LEVEL, MIN_BOX_SHARE, _aligned_box, _face_levels, _quiet_tails,
                                     _surroundings, _tail_share)
from deconv3d.psf.bead_outliers import _reject_outliers
from deconv3d.psf.bead_detection import (_box_half, _brightest_unsaturated, _clip_note, _clipped, _despiked, _fwhm,
                                         _isolated_beads, _robust_background, _smoothed_noise, _unsaturated,
                                         _why_no_beads, _without_hot_voxels)
from deconv3d.psf.validate import normalize_psf


def distill_psf(beads, size=None, min_distance=None, threshold=None) -> np.ndarray:
    """Estimate a PSF from an image of sub-resolution beads ("PSF distillation").

    Bright, isolated beads are found on a Gaussian-smoothed copy, from which single hot voxels
    are first removed (:func:`skimage.feature.peak_local_max`); beads whose box would leave the
    image, or that have another bead inside it, are rejected, as are unresolved doublets and
    clusters (:func:`_reject_outliers`).  Each box loses its
    background (measured at the faces of a box twice as wide, near the bead's focal plane where its
    defocus light does not reach them), is shifted with sub-voxel
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
        When the box cuts the PSF's tails: it holds less than :data:`MIN_BOX_SHARE` of the brightest
        bead's light against a box twice as wide (in 3D across, near the focal plane), or the summed
        boxes' faces along an axis over :data:`MAX_FACE_LEVEL` of their peak; when beads with saturated voxels were left out
        (:func:`_unsaturated`: voxels at an 8- to 16-bit camera's ceiling, or at the image's maximum
        where a clipped plateau holds it, wherever it was clipped (:func:`_flat_tops`); all of them
        saturated is an error); when beads were left out for
        holding over twice the median bead's light, or as doublets or clusters
        (:func:`_reject_outliers`); when the only bead box's core is elongated across, as two beads
        merged into one blob (:func:`_warn_of_a_lone_doublet`; lateral pairs only).

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
    subtracted: the level of the faces of the wider box that the tail share below uses, from
    all its faces (:func:`_face_background`) and its y and x faces within the planes
    ``size[0] // 6`` (at least 1) either side of the bead's (:func:`_focal_background`): their mean
    when they agree within their noise, else the lower (:func:`_background`), or the level of the box
    with its margin where neighbours or the image border leave no room beyond it. The background is
    what the image would hold without the beads: a bead's own light in its box, the defocus light that
    a widefield PSF spreads over every plane included, is part of the PSF returned (the bead's PSF
    cropped to the box, at unit sum). The faces of all axes still held that light (102.5-104.6 over
    a background of 100 at 1e6 photons in a 21 x 31 x 31 box, 110.6-111.6 in the default one), and
    nine widefield beads came out with their peak 8-15 % high (README). The centroid of the
    bead's core (:func:`_core_weights`: its excess over 30 % of the maximum of a lightly smoothed copy,
    connected to that maximum) is computed, and the box is shifted by a Fourier
    shift (:func:`scipy.ndimage.fourier_shift`) so that this centroid falls on the centre voxel;
    the margin is then cropped. A box with no voxel above its background is dropped.

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
    narrowed to stay on the bead's side of any neighbouring peak; in 3D across only, within the
    planes ``size[0] // 6`` either side of the bead's, since a widefield bead's cone reaches every
    plane), and the faces of the summed boxes with their peak, which give the warning above.

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
    clipped = _clipped(beads)  # (full-image: computed once, for the brightest bead, the boxes and the failure)
    near_clipped = _near_clipped(clipped)
    brightest = _brightest_unsaturated(smooth, near_clipped)
    fwhm = _fwhm(smooth - background, brightest)
    half = _box_half(size, fwhm, beads.ndim)
    measured_box = size is None and threshold is None  # (both set from the brightest unclipped maximum)
    threshold = _threshold(threshold, smooth, background, spread, brightest)
    if min_distance is None:
        min_distance = max(1, int(round(min(fwhm) / 2)))
    centres, peaks = _isolated_beads(smooth, half, int(min_distance), float(threshold), background)
    clipped_only = _clipped_beads_only(near_clipped, smooth, peaks, float(threshold))
    centres = _unsaturated(beads, centres, half, clipped, clipped_only)
    cut = _without_hot_voxels(beads, despiked)  # what the boxes are cut from
    found = [_surroundings(cut, c, peaks, half) for c in centres]  # (centre, wider box, background)
    boxes = [_aligned_box(cut, c, half, level) for c, _, level in found]
    boxes = _reject_outliers([b for b in boxes if b is not None])
    if not boxes:
        raise _no_beads(beads, despiked, smooth, peaks, half, background, float(threshold), fwhm, near_clipped,
                        measured_box and clipped_only)
    total = np.sum(boxes, axis=0)
    _warn_of_cut_tails(cut, smooth, found, half, total)
    return normalize_psf(_quiet_tails(total))



def _no_beads(beads, despiked, smooth, peaks, half, background, threshold: float, fwhm, near_clipped,
              all_clipped: bool) -> InputError:
    """The refusal of a bead image no box was kept from (:func:`distill_psf`); ``all_clipped``: every bead
    is clipped and the box was measured."""
    if all_clipped:
        # With every bead clipped, the brightest unclipped maximum is a bump of their defocus light, whose
        # width set a box of 25 x 67 x 61 voxels (widefield beads clipped at half their peak): no crowding.
        # A box or threshold given is not set by that bump: a bead left out for them is told why.
        return InputError(f"every bead found has saturated voxels ({_clip_note(beads)}), or the box was measured "
                          "on what lies beside them: image the beads with less exposure or gain")
    why = _why_no_beads(smooth, peaks, half, background, _smoothed_noise(despiked, 1.0), threshold, fwhm,
                        near_clipped)
    return InputError(f"no isolated beads found (box {tuple(int(v) for v in 2 * half + 1)}, threshold "
                      f"{threshold:.3g}): {why}")


def _clipped_beads_only(near, smooth, peaks, threshold: float) -> bool:
    """Whether every peak that reaches ``threshold`` has a clipped voxel (:func:`_clipped`) within 2 voxels
    of it (``near``, :func:`_near_clipped`), and one does: then no bead was found for their saturation. Beads
    crowded 12 voxels apart beside one clipped bead were told that every bead was saturated, not that their
    boxes overlap."""
    found = [tuple(p) for p in np.asarray(peaks).reshape(-1, near.ndim) if smooth[tuple(p)] >= threshold]
    return bool(found) and all(near[p] for p in found)


def _near_clipped(clipped) -> np.ndarray:
    """The voxels within 2 voxels of a ``clipped`` one (:func:`_clipped`)."""
    from scipy import ndimage

    return ndimage.maximum_filter(clipped, size=5)


def _threshold(threshold, smooth, background: float, spread: float, brightest):
    """``threshold`` as given, refused where it is not finite; not given, the background plus the larger of
    10 noise spreads and 20 % of the brightest unsaturated smoothed peak above the background."""
    if threshold is not None and not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite intensity, got {threshold}")
    if threshold is None:
        threshold = background + max(10 * spread, 0.2 * (float(smooth[brightest]) - background))
    return threshold


def _warn_of_cut_tails(cut, smooth, found, half, total) -> None:
    """Warn (at :func:`distill_psf`'s caller) where the box holds less than :data:`MIN_BOX_SHARE` of a bead's
    light (:func:`_tail_share`, against a box twice as wide, in 3D laterally near the focal plane), or the
    summed boxes' faces along some axis hold over :data:`MAX_FACE_LEVEL` of their peak (:func:`_face_levels`);
    the box advised is twice as wide along those axes, as far as the neighbours leave room (:func:`_wider_box`)
    and the image holds it with its one-voxel margin (a 7-plane stack was advised a 7-plane box, which
    then found no bead)."""
    measured, wide = _tail_share(cut, smooth, found, half)
    share, margin = measured or (1.0, 0.0)
    faces = _face_levels(total)
    cut_axes = faces > MAX_FACE_LEVEL
    if share + margin < MIN_BOX_SHARE:
        cut_axes[-2:] = True  # the lateral axes (all of a 2D image's)
    if cut_axes.any():
        fits = (np.asarray(cut.shape) - 3) // 2  # the widest box (half-widths) the image holds with its margin
        wider = np.where(cut_axes, np.maximum(half, np.minimum(wide, fits)), half)
        held = "" if measured is None else (  # (the box measured against: twice as wide where there is room)
            f"it holds about {share:.0%} of a bead's light{' near its focal plane' if cut.ndim == 3 else ''} against "
            f"a box of size {tuple(int(v) for v in 2 * np.asarray(wide) + 1)}, and ")
        warnings.warn(f"the bead box {_size(half)} cuts the PSF's tails ({held}its faces hold up to {faces.max():.0%} "
                      f"of the peak): deconvolution with it leaves haze; {_larger_box_advice(half, wider, fits, cut_axes)}",
                      RuntimeWarning, stacklevel=3)


def _size(half) -> tuple:
    """A box's size (voxels per axis) from its half-widths."""
    return tuple(int(v) for v in 2 * np.asarray(half) + 1)


def _larger_box_advice(half, wider, fits, cut_axes) -> str:
    """What the cut-tails warning advises: the ``wider`` box where it is larger than ``half``; else why none is
    along the ``cut_axes``: the image (``fits``: the half-widths it holds with its margin) or the beads' neighbours."""
    if (np.asarray(wider) > half).any():
        return f"give a larger box, e.g. size {_size(wider)}"
    if (np.asarray(fits)[cut_axes] <= np.asarray(half)[cut_axes]).all():
        return "no larger box fits the image with a voxel of margin: image more planes or a larger field"
    return "the beads' neighbours leave no room for a larger box: image sparser beads"


def _check_beads(beads) -> np.ndarray:
    beads = as_numpy(beads, dtype=np.float32)
    if beads.ndim not in (2, 3) or beads.size == 0:
        raise InputError(f"bead image must be 2D or 3D, got shape {beads.shape}: check the file")
    if not np.isfinite(beads).all():
        raise InputError("bead image contains NaN or Inf values: replace them and try again")
    thin = [(n, name) for n, name in zip(beads.shape, ("z", "y", "x")[-beads.ndim:]) if n < 5]
    if thin:
        n, name = thin[0]
        count = f"{n} planes" if name == "z" and beads.ndim == 3 else f"{n} voxels along {name}"
        raise InputError(f"bead image of shape {beads.shape} has {count}: a bead's box needs at least 5 (3 and one "
                         "of margin either side); "
                         + ("image more planes, or give a single plane as a 2D image" if count.endswith("planes")
                            else f"image a field wider along {name}"))
    if float(beads.max()) <= float(beads.min()):
        raise InputError("bead image is constant: no beads to distil; check the file")
    return beads
