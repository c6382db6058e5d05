"""Centring a PSF on its core and cropping it to a centred box.

:func:`center_psf` shifts a PSF so that the centroid of its core (found without hot voxels,
``_despiked``) lies on the centre voxel; :func:`crop_psf` keeps the smallest centred odd box holding
a given share of its light (box sums from a summed-area table); :func:`fit_psf` centre-crops a PSF to
at most a given shape, and :func:`fit_shape` says what shape that gives without the array.
"""

from __future__ import annotations

import numbers

import numpy as np

from deconv3d.errors import InputError
from deconv3d.psf.validate import _psf_array, _warn, normalize_psf, validate_psf


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

    Raises
    ------
    InputError
        For a PSF that :func:`~deconv3d.psf.validate_psf` refuses (not 2D/3D real numbers, NaN or
        Inf, negative beyond round-off, all zero).
    """
    from scipy import ndimage

    psf = np.clip(validate_psf(psf), 0, None)  # (NaN, negative, all-zero or 1D PSFs refused by name)
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
    psf = _psf_array(psf)
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

    Raises
    ------
    InputError
        For an ``energy`` outside ``(0, 1]`` and a PSF that :func:`~deconv3d.psf.validate_psf` refuses.
    """
    if not (isinstance(energy, numbers.Real) and not isinstance(energy, bool) and 0 < energy <= 1):
        raise InputError(f"PSF crop energy must be a number in (0, 1], got {energy!r}")
    psf = validate_psf(psf)  # (NaN, negative, all-zero or 1D PSFs refused by name)
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
