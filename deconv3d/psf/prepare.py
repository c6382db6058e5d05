"""Validate, normalise, centre, crop and resample a PSF array for use against an image."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from deconv3d._arrays import as_numpy, refuse_complex
from deconv3d._voxel import checked_voxel_size, format_sizes
from deconv3d.errors import InputError, note_warning

#: Negative PSF values down to this share of its peak are round-off (an FFT's, a resampling's undershoot).
NEGATIVE_TOLERANCE = 1e-6


def _positive_ints(values, what: str) -> tuple[int, ...]:
    """``values`` as 2 or 3 positive ints; 9.7 (silently 9 before), strings and bools are refused."""
    try:
        whole = all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                    or isinstance(v, (float, np.floating)) and float(v).is_integer() for v in values)
        ints = tuple(int(v) for v in values) if whole else None
    except (TypeError, ValueError, OverflowError):
        ints = None
    if ints is None or len(ints) not in (2, 3) or min(ints) < 1:
        raise InputError(f"{what} must be 2 or 3 positive integers, got {values!r}")
    return ints


def _centred_zoom(arr: np.ndarray, step, out_shape, order: int = 3) -> np.ndarray:
    """Resample so that output centre ``(m-1)//2`` samples the input centre ``(n-1)//2``.

    Both are the kernel origin of :func:`deconv3d.fft.kernel_origin`, also for even sizes.
    ``step[i]`` is the distance, in input voxels, between neighbouring output voxels.
    """
    from scipy import ndimage

    step = np.array(step, dtype=float)  # a copy: an end sample moved inside changes its axis's step
    c_in = (np.asarray(arr.shape) - 1) // 2
    c_out = (np.asarray(out_shape) - 1) // 2
    if np.allclose(step, 1) and np.allclose(c_in - c_out, np.round(c_in - c_out)):
        start = np.round(c_in - c_out).astype(int)
        return arr[tuple(slice(s, s + m) for s, m in zip(start, out_shape))].copy()
    offset = c_in - step * c_out
    # Rounding put the end samples of upsampling 3x (0.1 / 0.3 = 0.33333333333333337) at -5e-16 and
    # 10 + 2e-15 of an 11-voxel axis, outside it, where 'constant' mode gives 0: whole faces were
    # emptied. An end sample within 1e-9 outside is moved a hair inside, and that axis's step follows.
    last = offset + step * (np.asarray(out_shape) - 1)
    for i, n in enumerate(arr.shape):
        low = 1e-12 if -1e-9 < offset[i] < 0 else offset[i]
        high = n - 1 - 1e-12 if n - 1 < last[i] < n - 1 + 1e-9 else last[i]
        if (low, high) != (offset[i], last[i]) and out_shape[i] > 1:
            offset[i], step[i] = low, (high - low) / (out_shape[i] - 1)
    # (The matrix as a diagonal: scipy before 1.16 warned, as a deprecation, of the 1-D form.)
    return ndimage.affine_transform(arr, np.diag(step), offset=offset, output_shape=tuple(out_shape), order=order)


# ------------------------------------------------------ basic operations ---


def validate_psf(psf) -> np.ndarray:
    """Check that an array can serve as a PSF.

    Parameters
    ----------
    psf : array_like
        2D or 3D array.

    Returns
    -------
    numpy.ndarray
        The PSF as float32 (not normalised).

    Raises
    ------
    InputError
        If the PSF is not 2D/3D, is empty, has NaN/Inf, has values beyond float32's range
        (3.4e38), has negative values below ``-1e-6 * max`` or is all zero.
    """
    psf = as_numpy(psf)
    if psf.dtype.kind == "f" and psf.size and np.isfinite(psf).all() and np.abs(psf).max() > np.finfo(np.float32).max:
        raise InputError(f"PSF values up to {float(np.abs(psf).max()):.3g} are too large for float32 (3.4e38): "
                         "rescale the PSF (e.g. divide by its maximum)")
    psf = as_numpy(psf, dtype=np.float32)
    if psf.ndim not in (2, 3) or psf.size == 0:
        raise InputError(f"PSF must be a non-empty 2D or 3D array, got shape {psf.shape}: check the PSF file")
    if not np.isfinite(psf).all():
        raise InputError("PSF contains NaN or Inf values: check the PSF file or regenerate it")
    peak = float(psf.max())
    if peak == 0 and float(psf.min()) == 0:
        raise InputError("PSF is all zero: check the PSF file or regenerate it")
    if float(psf.min()) < -NEGATIVE_TOLERANCE * max(peak, 0.0):
        raise InputError(
            f"PSF has negative values (min {float(psf.min()):.3g}, max {peak:.3g}): "
            "subtract the background and clip at zero, or regenerate it"
        )
    return psf


def _warn(text: str, stacklevel: int) -> None:
    """Issue ``text`` as a RuntimeWarning, noted for :func:`deconv3d.errors.recorded_warnings`."""
    message = RuntimeWarning(text)
    note_warning(message)
    warnings.warn(message, stacklevel=stacklevel)


#: :func:`prepare_psf` warns when a PSF's faces, flat, exceed this share of its peak. Generated
#: widefield PSFs' lowest values stayed below 0.0034 (psfmodels' vectorial and Gibson-Lanni models, NA 1.4, boxes
#: from 9x15x15 to 63x31x31, 0 and 5 µm deep); a bead crop keeping a camera offset of 100 counts
#: under a 2756-count peak (3.6%) had deconvolved intensities come out 2.7x too high.
OFFSET_LEVEL = 0.01


def _warn_of_an_offset(psf: np.ndarray) -> None:
    """Warn of a flat floor under a (measured) PSF: unit-sum normalisation counts it as the PSF's light.

    The floor is the 5th percentile of the box's faces (robust to shot noise), and flat: at least
    0.8 of their median (a Gaussian cut close to its core, e.g. 3x3x3 with sigma 1 voxel, has its
    corners at 0.6 of the faces' median). A floor above half the peak is taken for a flat kernel
    given on purpose (a box blur). 3D PSFs only: in a small 2D box the first Airy ring can lie
    evenly along the edges (7 of 147 generated 2D PSFs were flagged).
    """
    if psf.ndim != 3:
        return
    faces = np.concatenate([np.take(psf, i, axis=a).ravel() for a in range(psf.ndim) for i in (0, -1)])
    low, peak = float(np.percentile(faces, 5)), float(psf.max())
    if OFFSET_LEVEL < low / peak <= 0.5 and low >= 0.8 * float(np.median(faces)):
        _warn(f"the PSF's faces sit at {low / peak:.1%} of its peak or more, a flat background (a camera "
              "offset?) that deconvolution takes for light of the PSF: subtract it from the PSF, or distill "
              "the PSF from beads with 'deconv3d psf distill'", stacklevel=4)


def normalize_psf(psf) -> np.ndarray:
    """Return ``psf / psf.sum()`` as float32.

    Parameters
    ----------
    psf : array_like
        The PSF, any shape (a tensor is taken too); summed and divided in float64, so a PSF in
        large units (a sum beyond float32's 3.4e38, as summed bead boxes of peak 1e37 reach) is
        normalised too: divided in float32, by a sum cast to inf, it came out all zero.

    Returns
    -------
    numpy.ndarray
        float32 array of unit sum.

    Raises
    ------
    InputError
        If the sum is not a positive finite number, or too large for float64.
    """
    psf = as_numpy(psf, dtype=np.float64)
    with np.errstate(over="ignore"):
        total = float(psf.sum())
    if np.isinf(total) and np.isfinite(psf).all():
        raise InputError("PSF values are too large to sum in float64: rescale the PSF (e.g. divide by its maximum)")
    if not (np.isfinite(total) and total > 0):
        raise InputError("PSF sum is not positive: check the PSF file or regenerate it")
    return (psf / total).astype(np.float32)


def _centroid(arr: np.ndarray) -> np.ndarray:
    weights = arr.astype(np.float64)
    total = weights.sum()
    grids = np.ogrid[tuple(slice(0, n) for n in arr.shape)]
    return np.array([(weights * g).sum() / total for g in grids])


#: :func:`center_psf` centres the PSF's core: the voxels above this fraction of its peak.
CORE_LEVEL = 0.5
#: :func:`center_psf` takes a voxel over this many times its brightest neighbour for a hot one.
SPIKE_RATIO = 2.0


def _core_centroid(arr: np.ndarray, level: float = CORE_LEVEL) -> np.ndarray:
    """The centroid of ``arr - level * peak`` where positive around the in-focus core of a PSF.

    The core is found on a copy smoothed by a Gaussian of 1 voxel: the connected voxels above
    ``level`` of its maximum around that maximum, widened by 2 voxels; ``peak`` is the largest value
    inside it. (The smoothing alone kept a hot voxel below a bead up to 4-9x the bead's peak;
    :func:`center_psf` measures on :func:`_despiked` values.)
    """
    from scipy import ndimage

    arr = arr.astype(np.float64)
    smooth = ndimage.gaussian_filter(arr, 1.0)
    labels, _ = ndimage.label(smooth > level * float(smooth.max()))
    core = labels == labels[np.unravel_index(np.argmax(smooth), smooth.shape)]
    core = ndimage.binary_dilation(core, iterations=2)
    return _centroid(np.clip(arr - level * float(arr[core].max()), 0, None) * core)


def _despiked(psf: np.ndarray) -> np.ndarray:
    """``psf`` with every voxel over :data:`SPIKE_RATIO` times its brightest neighbour lowered to
    that neighbour's value (a camera's hot voxel, however bright); ``psf`` itself when none is, and
    when the voxels lowered held all but :data:`SPIKE_KEPT` of its light: a
    PSF narrower than a voxel, as a small one resampled to coarser voxels comes out, is no hot
    voxel (despiked to nothing, it made center_psf fail with "PSF sum is not positive")."""
    from scipy import ndimage

    ring = np.ones((3,) * psf.ndim, bool)
    ring[(1,) * psf.ndim] = False
    neighbours = ndimage.maximum_filter(psf, footprint=ring, mode="constant")
    spikes = psf > SPIKE_RATIO * neighbours
    if not spikes.any():
        return psf
    out = np.where(spikes, neighbours, psf)
    return out if out.sum(dtype=np.float64) >= SPIKE_KEPT * psf.sum(dtype=np.float64) else psf


#: :func:`_despiked` keeps a PSF whose spikes hold all but this share of its light (a sub-voxel PSF;
#: at 1 %, a hot voxel 3000x the peak of a dim, narrow bead, 99.4 % of the light, passed for one).
SPIKE_KEPT = 1e-3


def center_psf(psf) -> np.ndarray:
    """Shift a PSF so the centroid of its core (the voxels above half its peak) lies on the centre voxel.

    The core, not all of the light: a widefield PSF's defocus cone holds much of its light, and a
    box that cuts the cone unevenly (a bead stack not centred on the bead, a depth-aberrated PSF)
    put the whole-box centroid up to 7 planes from the bead, which moved every deconvolved object
    along z. For a symmetric PSF the two coincide. A depth-aberrated PSF's core sits where the
    emitter appears in the data (the focal shift), so objects keep the depth they show in the image.

    Even axes are first padded by one zero plane at the end so the output has
    odd sizes, with centre index ``n // 2``.  The sub-voxel shift uses cubic
    spline interpolation (:func:`scipy.ndimage.shift`) with zeros beyond the box, interpolated
    into its faces (``mode="grid-constant"``: ``"constant"`` emptied the face the PSF moved away
    from, 2.5 % of a widefield PSF's light, for any shift however small); negative undershoot is
    clamped to 0, the shift is refined twice, and the result has unit sum. A shift of more than
    half a voxel that moves more than :data:`CENTRING_LOSS` of the light out of the box is
    warned about (a bead stack not centred on its bead: a box one voxel over would hold it): the
    PSF then lacks that side's light. Up to half a voxel it is not: a bead sits anywhere between
    voxel centres, and in a tight box a face holds 5-8 % of a widefield PSF's light.

    Parameters
    ----------
    psf : array_like
        Non-negative 2D or 3D PSF.

    Returns
    -------
    numpy.ndarray
        float32, odd-shaped, centred, unit-sum PSF.
    """
    from scipy import ndimage

    psf = np.clip(as_numpy(psf, dtype=np.float32), 0, None)
    psf = np.pad(psf, [(0, 1 - n % 2) for n in psf.shape])
    target = (np.asarray(psf.shape) - 1) / 2.0
    # Measured without hot voxels: one at 2x the bead's peak had been taken for the core, which put
    # the bead 5 planes and 20 pixels off the centre (1 pixel at 1.2x). Each shift is measured on the
    # despiked PSF shifted alike (shifted, a spike spreads and no longer looks like one).
    probe = _despiked(psf)
    total, out, seen = np.zeros(psf.ndim), psf, probe
    for _ in range(3):
        error = target - _core_centroid(seen)
        if np.abs(error).max() < 1e-3:
            break
        total += error
        out = np.clip(ndimage.shift(psf, total, order=3, mode="grid-constant"), 0, None)
        seen = out if probe is psf else np.clip(ndimage.shift(probe, total, order=3, mode="grid-constant"), 0, None)
    lost = 1.0 - float(out.sum(dtype=np.float64)) / max(float(psf.sum(dtype=np.float64)), 1e-300)
    if lost > CENTRING_LOSS and np.abs(total).max() > 0.55:  # (up to half a voxel: where a bead happens to sit)
        moved = ", ".join(f"{v:+.1f}" for v in total)
        _warn(f"centring the PSF's core moved it by ({moved}) voxels and {lost:.0%} of its light out of its "
              "box: give a PSF stack centred on the bead, with as much room on each side", stacklevel=3)
    return normalize_psf(out)


#: :func:`center_psf` warns when centring moves the PSF by more than half a voxel and this share of its
#: light out of its box. A generated widefield PSF centred at depth (``deconv3d.psf.generate``;
#: Gibson-Lanni, NA 0.8 and 1.3, water under oil, up to 150 µm deep, 31 planes of 0.2 µm) moves up
#: to half a plane and loses at most 1.5 %; a bead stack of 31 planes 1, 2 or 3 planes off its bead
#: loses 1.4, 2.7 or 3.9 % (NA 1.3) and 2.8, 5.6 or 8.2 % (NA 0.8); boxes of 15-21 planes lose
#: 3-5 % a plane.
CENTRING_LOSS = 0.03


def fit_shape(psf_shape, shape) -> tuple[int, ...]:
    """The shape of :func:`fit_psf`'s PSF for a PSF of ``psf_shape`` and at most ``shape``: what the
    FFT shapes of a run's record are computed from without the arrays
    (:func:`deconv3d.classical._problem.rl_fft_shape`)."""
    return tuple(min(int(k), int(n)) for k, n in zip(psf_shape, shape))


def fit_psf(psf: np.ndarray, shape) -> np.ndarray:
    """Centre-crop a PSF to at most ``shape`` (renormalised to unit sum); unchanged when it fits.

    For blocks or images smaller than the PSF along some axis (a chunk at a volume's
    corner, a thin stack given to a trained model), where an unchanged PSF is refused.

    Parameters
    ----------
    psf : array_like
        2D or 3D PSF; its origin ``(k - 1) // 2`` per axis lands on the crop's, so
        convolution with the crop does not shift.
    shape : sequence of int
        The most voxels per axis.

    Returns
    -------
    numpy.ndarray
        ``psf`` itself (no copy) when it fits; else the crop, float32 (float64 stays float64),
        summed in float64 (a float16 PSF's sum had overflowed and come back all zero).
    """
    psf = as_numpy(psf)
    refuse_complex(psf, "the PSF")
    if all(k <= n for k, n in zip(psf.shape, shape)):
        return psf
    # The PSF's origin (k-1)//2 lands on the crop's origin (m-1)//2, so convolution does not shift.
    box = tuple(slice((k - 1) // 2 - (m - 1) // 2, (k - 1) // 2 - (m - 1) // 2 + m)
                for k, m in zip(psf.shape, fit_shape(psf.shape, shape)))
    cropped = psf[box].astype(np.promote_types(psf.dtype, np.float32))
    return cropped / cropped.dtype.type(cropped.sum(dtype=np.float64))


def crop_psf(psf, energy=0.999) -> np.ndarray:
    """Crop to the smallest centred odd box holding ``energy`` of the total.

    Every box centred on the voxel ``(n-1)//2`` (the kernel origin, for even sides too) is
    considered (box sums from a summed-area table of the PSF, evaluated for one first-axis
    half-size at a time); among those that hold at least ``energy`` of the sum and have at
    most :data:`CROP_SLACK` more voxels than the smallest of them, the one holding the most
    energy wins. A PSF symmetric in its last two axes keeps them equal.

    Parameters
    ----------
    psf : array_like
        Non-negative 2D or 3D PSF, centred on its centre voxel.
    energy : float, optional
        Fraction of the total intensity to keep, in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        Cropped float32 PSF with unit sum and odd sizes.
    """
    if not (isinstance(energy, numbers.Real) and not isinstance(energy, bool) and 0 < energy <= 1):
        raise InputError(f"PSF crop energy must be a number in (0, 1], got {energy!r}")
    psf = as_numpy(psf, dtype=np.float32)
    # An even axis gets a zero plane in front: its centre voxel n/2 - 1 becomes (n+1 - 1)//2 = n/2,
    # the same voxel, and odd boxes around it can then hold the whole axis (they missed its last plane).
    psf = np.pad(psf, [(1 - n % 2, 0) for n in psf.shape])
    centre = (np.asarray(psf.shape) - 1) // 2
    limit = np.minimum(centre, np.asarray(psf.shape) - 1 - centre)
    table = _summed_area(np.clip(psf, 0, None))
    goal = energy * table[(-1,) * psf.ndim] * (1 - 1e-7)
    # A PSF that is symmetric in y and x (every widefield PSF on axis) keeps equal lateral sides.
    square = psf.ndim >= 2 and psf.shape[-1] == psf.shape[-2] and np.allclose(psf, np.swapaxes(psf, -1, -2), rtol=1e-3,
                                                            atol=1e-6 * float(psf.max()))
    half = _smallest_box(table, centre, limit, goal, square)
    box = tuple(slice(c - h, c + h + 1) for c, h in zip(centre, half))
    return normalize_psf(psf[box])


def _summed_area(arr: np.ndarray) -> np.ndarray:
    """Summed-area table padded with a leading zero along every axis."""
    table = np.pad(arr.astype(np.float64), [(1, 0)] * arr.ndim)
    for axis in range(arr.ndim):
        np.cumsum(table, axis=axis, out=table)
    return table


def _box_sums(table: np.ndarray, centre, halves) -> np.ndarray:
    """Sums of the boxes ``centre +- halves`` (one integer array per axis, broadcast together)
    by inclusion-exclusion on the summed-area table."""
    total = 0.0
    for corner in np.ndindex(*(2,) * table.ndim):
        index = tuple(c + h + 1 if up else c - h for c, h, up in zip(centre, halves, corner))
        total = total + (-1) ** (table.ndim - sum(corner)) * table[index]
    return np.asarray(total)


#: Boxes up to this much larger than the smallest that holds the energy compete on the energy
#: they hold: the strictly smallest box of a round PSF is often lopsided ((17, 13) where (15, 15)
#: has 2% more voxels), which would truncate one axis more than the other.
CROP_SLACK = 0.02


def _smallest_box(table: np.ndarray, centre, limit, goal: float, square: bool = False) -> np.ndarray:
    """Half-sizes of the centred box whose sum reaches ``goal`` with the fewest voxels (within
    :data:`CROP_SLACK`, the one holding the most); ``square``: only boxes with equal last two sides."""
    rest = list(np.meshgrid(*[np.arange(n + 1) for n in limit[1:]], indexing="ij"))
    volume_rest = np.prod([2 * h + 1 for h in rest], axis=0)

    def boxes():  # (h0, sums, volumes of the boxes that reach the goal, inf elsewhere), one h0 at a time
        for h0 in range(int(limit[0]) + 1):
            halves = [np.full(volume_rest.shape, h0)] + rest
            sums = _box_sums(table, centre, halves)
            allowed = (sums >= goal) & ((halves[-1] == halves[-2]) if square else True)
            yield h0, sums, np.where(allowed, (2 * h0 + 1) * volume_rest, np.inf)

    smallest = min(float(volume.min()) for _, _, volume in boxes())
    if not np.isfinite(smallest):
        return np.asarray(limit)
    best, best_key = np.asarray(limit), (-np.inf, 0.0)
    for h0, sums, volume in boxes():
        near = volume <= smallest * (1 + CROP_SLACK)
        if not near.any():
            continue
        i = np.flatnonzero(near.ravel())[np.argmax(np.where(near, sums, -np.inf).ravel()[near.ravel()])]
        key = (float(sums.ravel()[i]), -float(volume.ravel()[i]))
        if key > best_key:
            best_key = key
            best = np.array([h0] + [int(h.ravel()[i]) for h in rest])
    return best


#: Voxel sizes of a PSF and an image that differ this many times along an axis are taken for units
#: that disagree (nanometres given as micrometres: 1000), not for a PSF measured at another sampling.
MAX_VOXEL_RATIO = 100

#: The largest PSF :func:`resample_psf` builds (512^3, 0.5 GiB in float32): beyond it the two voxel
#: sizes are in different units (nanometres given as micrometres) far more often than a PSF is that large.
MAX_RESAMPLED_VOXELS = 512**3


def _voxel_integrated(psf: np.ndarray, step) -> np.ndarray:
    """``psf`` averaged over a box ``step`` input voxels wide along every lateral axis it coarsens.

    A camera pixel records the light over its whole extent: sampled at the coarse pixel
    centres alone, a finely sampled PSF came out too narrow (a Gaussian of sigma 0.12 µm
    resampled from 0.05 to 0.4 µm had an RMS width of 0.035 µm instead of the 0.167 µm of
    its pixel-integrated form). A z step does not integrate: each plane is taken at one focus
    position, as psfmodels computes planes, so the z axis of a 3D PSF is only interpolated
    (averaging over a doubled step had widened a Gaussian's axial RMS width by 8%). Box
    weights have fractional ends for a step that is not a whole number of voxels.
    """
    from scipy import ndimage

    out = np.asarray(psf, dtype=np.float64)
    for axis, width in enumerate(np.asarray(step, dtype=float)):
        if width <= 1 + 1e-9 or axis < out.ndim - 2:
            continue
        reach = int(np.ceil(width / 2 - 0.5))
        k = np.arange(-reach, reach + 1)
        weights = np.clip(np.minimum(k + 0.5, width / 2) - np.maximum(k - 0.5, -width / 2), 0, None)
        out = ndimage.convolve1d(out, weights / weights.sum(), axis=axis, mode="constant")
    return out


def resample_psf(psf, psf_voxel, image_voxel) -> np.ndarray:
    """Resample a PSF from its voxel size to the image's, keeping its physical extent.

    Parameters
    ----------
    psf : array_like
        2D or 3D PSF.
    psf_voxel, image_voxel : float or tuple of float
        Voxel sizes (micrometres), one per axis, or one number for isotropic voxels.

    Returns
    -------
    numpy.ndarray
        float32, unit sum, odd-sized; the input's centre voxel ``(n-1)//2`` (the kernel
        origin, also for even sizes) stays on the output's centre voxel.
        Returned unchanged (as float32) when the voxel sizes agree to 1e-6.

    Raises
    ------
    InputError
        For a voxel size that is not positive, for voxel sizes :data:`MAX_VOXEL_RATIO` times
        apart along an axis, and when the resampled PSF would be more than
        :data:`MAX_RESAMPLED_VOXELS` voxels: these come from voxel sizes in different units
        (nanometres given as micrometres).

    Notes
    -----
    Cubic-spline interpolation (:func:`scipy.ndimage.affine_transform`, a
    centred :func:`scipy.ndimage.zoom`) samples the PSF on the image grid;
    negative undershoot is clamped to 0. Along a lateral axis that gets coarser the PSF is
    first averaged over the new pixel's extent, as a camera pixel integrates the light falling
    on it; planes are taken at one focus each, so z is interpolated only. The output spans the
    input's physical extent, rounded to whole voxels.
    """
    psf = as_numpy(psf, dtype=np.float32)
    src, dst = (np.asarray(checked_voxel_size(v if v is not None else (), psf.ndim, what))
                for v, what in ((psf_voxel, "PSF voxel size"), (image_voxel, "image voxel size")))
    if np.allclose(src, dst, rtol=1e-6, atol=0):
        return psf.copy()
    step = dst / src
    half = np.floor((np.asarray(psf.shape) - 1) / 2.0 / step + 0.5).astype(int)
    shape = tuple(int(n) for n in 2 * half + 1)
    sizes = f"from {format_sizes(src)} µm voxels to {format_sizes(dst)} µm"
    if (step >= MAX_VOXEL_RATIO).any() or (step <= 1 / MAX_VOXEL_RATIO).any():
        # a PSF shrunk to a voxel (the image returned unchanged) or blown up: units that disagree
        raise InputError(f"resampled {sizes} the PSF changes scale {format_sizes(np.round(step, 3))}-fold: "
                         "check that both voxel sizes are in micrometres")
    if np.prod(shape, dtype=float) > MAX_RESAMPLED_VOXELS:
        raise InputError(f"resampled {sizes} the PSF would be {shape} voxels: check that both voxel sizes are in "
                         "micrometres, or crop the PSF")
    out = _centred_zoom(_voxel_integrated(psf, step), step, shape, order=3)
    return normalize_psf(np.clip(out, 0, None))


def prepare_psf(psf, image_shape, psf_voxel=None, image_voxel=None, energy=0.999, fit_image: bool = True) -> np.ndarray:
    """Make a PSF ready for deconvolving an image.

    Validate, resample to the image voxel size (when both are known and differ),
    centre on the centroid of its core (:func:`center_psf`), crop to ``energy`` and normalise to unit sum.

    Parameters
    ----------
    psf : array_like
        2D or 3D PSF with the same number of dimensions as the image.
    image_shape : tuple of int
        Shape of the image to deconvolve.
    psf_voxel, image_voxel : tuple of float, optional
        Voxel sizes in micrometres. Where only one is given, the PSF is taken as sampled like the
        image, with a RuntimeWarning (a PSF file saved without calibration reads with voxel size None).
    energy : float, optional
        Fraction of the PSF intensity kept by :func:`crop_psf`.
    fit_image : bool, optional
        Refuse a PSF larger than the image (default). ``False`` for a PSF that is only compared
        with another, e.g. a trained network's, which crops its own (:func:`fit_psf`).

    Returns
    -------
    numpy.ndarray
        float32, odd-shaped, centred, unit-sum PSF no larger than the image.

    Raises
    ------
    InputError
        If the PSF is invalid, its dimensionality differs from the image's, or it is larger
        than the image (after resampling). An even PSF axis as long as the image's, which
        centring pads to odd, is cropped to the largest odd size that fits.
    """
    if np.ndim(image_shape) != 1:
        raise InputError(f"image_shape must be the image's shape (a tuple of ints), got an array of shape "
                         f"{np.shape(image_shape)}: pass image.shape")
    psf = as_numpy(psf)
    if psf.ndim != len(image_shape):
        raise InputError(
            f"PSF is {psf.ndim}D but image is {len(image_shape)}D: "
            "use a PSF with the same number of dimensions as the image"
        )
    image_shape = _positive_ints(image_shape, "image_shape")
    psf = validate_psf(psf)
    _warn_of_an_offset(psf)
    if psf_voxel is not None and image_voxel is not None:
        psf = resample_psf(psf, psf_voxel, image_voxel)
    elif psf_voxel is not None:  # (the command line completes the image's from the PSF's before)
        _warn(f"the image's voxel size is not given (image_voxel=None), so the PSF, sampled at "
              f"{format_sizes(checked_voxel_size(psf_voxel, psf.ndim, 'PSF voxel size'))} µm, is used as if "
              "sampled like the image: pass image_voxel (read_image(...).voxel_size, or partial_voxel "
              "completed by hand)", stacklevel=3)
    elif image_voxel is not None:  # (the command line passes the image's for a PSF file that records none)
        _warn(f"the PSF's voxel size is not given (psf_voxel=None), so the PSF is used as if sampled like "
              f"the image, at {format_sizes(checked_voxel_size(image_voxel, psf.ndim, 'image voxel size'))} "
              "µm: pass psf_voxel (read_psf(...).voxel_size, or its partial_voxel completed by hand)", stacklevel=3)
    given = psf.shape
    psf = crop_psf(center_psf(psf), energy)
    if fit_image and any(p > n for p, n in zip(psf.shape, image_shape)):
        if any(p > n for p, n in zip(given, image_shape)):
            raise InputError(
                f"PSF {given} is larger than the image {image_shape}: crop the PSF (or generate it "
                "with a smaller shape) or use a larger image"
            )
        # An even axis as long as the image's, padded to odd by centring: keep the largest odd box that fits.
        psf = fit_psf(psf, tuple(n - 1 + n % 2 for n in image_shape))
    return normalize_psf(psf)
