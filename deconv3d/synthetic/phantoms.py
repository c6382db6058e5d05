"""Ground-truth phantoms: beads, filaments, nuclei-like blobs, microtubules (see :mod:`deconv3d.synthetic`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from deconv3d.errors import InputError

Seed = "np.random.Generator | int | None"


# --------------------------------------------------------------------------- helpers


def _rng(seed) -> np.random.Generator:
    """Return ``seed`` if it is a Generator, else a new Generator seeded with it."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _check_shape(shape) -> tuple[int, ...]:
    """Validate a 2D or 3D shape and return it as a tuple of ints."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InputError(f"shape must be a sequence of 2 or 3 ints, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InputError(f"shape must be 2 or 3 positive ints, got {shape}")
    return shape


def _axis_scale(ndim: int, voxel_size) -> np.ndarray:
    """Voxels per unit length along each axis (unit: the finest voxel size)."""
    if voxel_size is None:
        return np.ones(ndim)
    vs = np.asarray(voxel_size, dtype=float)
    if vs.shape != (ndim,) or np.any(vs <= 0):
        raise InputError(f"voxel_size must be {ndim} positive numbers, got {voxel_size!r}")
    return vs.min() / vs


def _extent(shape, scale) -> np.ndarray:
    """Physical extent of each axis, in units of the finest voxel size."""
    return np.asarray(shape, dtype=float) / scale


def _local_box(shape, center, half):
    """Slices and open-grid offsets (voxel - center) of a box clipped to ``shape``.

    Returns ``None`` when the box lies entirely outside the array.
    """
    lo = np.maximum(np.floor(center - half).astype(int), 0)
    hi = np.minimum(np.ceil(center + half).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    slices = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.ogrid[slices]
    offsets = [g - c for g, c in zip(grids, center)]
    return slices, offsets


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------- objects


def beads(shape, n, *, seed: Seed = 0, sigma=(0.0, 1.0), intensity=(0.5, 1.0),
          voxel_size=None) -> np.ndarray:
    """Point-like beads: single bright voxels or tiny Gaussian spots.

    Parameters
    ----------
    shape : tuple of int
        2D ``(y, x)`` or 3D ``(z, y, x)`` output shape.
    n : int
        Number of beads.
    seed : int or numpy.random.Generator, optional
        Source of randomness.
    sigma : (float, float), optional
        Range of the Gaussian standard deviation (finest-voxel units); a bead with
        sigma below 0.5 is a single voxel.
    intensity : (float, float), optional
        Range of the peak intensities.
    voxel_size : sequence of float, optional
        Voxel size per axis, to keep beads physically round.

    Returns
    -------
    numpy.ndarray
        ``float32`` image in [0, 1].

    Examples
    --------
    >>> img = beads((16, 32, 32), 5, seed=1)
    >>> img.shape, float(img.max()) > 0
    ((16, 32, 32), True)
    """
    shape = _check_shape(shape)
    rng, scale = _rng(seed), _axis_scale(len(shape), voxel_size)
    image = np.zeros(shape, dtype=np.float64)
    centers = rng.uniform(0, shape, size=(int(n), len(shape)))
    sigmas = rng.uniform(*sigma, size=int(n))
    amps = rng.uniform(*intensity, size=int(n))
    for center, s, amp in zip(centers, sigmas, amps):
        if s < 0.5:
            image[tuple(np.minimum(center.astype(int), np.array(shape) - 1))] += amp
            continue
        box = _local_box(shape, center, np.ceil(3 * s * scale))
        if box is not None:
            r2 = sum((d / (s * k)) ** 2 for d, k in zip(box[1], scale))
            image[box[0]] += amp * np.exp(-0.5 * r2)
    return np.clip(image, 0, 1).astype(np.float32)


def _curve_points(rng, start, length, persistence, scale, planarity, step=0.5):
    """Sample a smooth random curve: unit steps along a smoothed random direction.

    The direction is Gaussian-filtered white noise (correlation ``persistence``
    finest-voxel units), normalised; the z component is damped by ``planarity``
    in 3D so that curves run mostly laterally, as in a flat cell.
    """
    m = max(int(np.ceil(length / step)), 2)
    noise = rng.standard_normal((m, start.size))
    direction = ndimage.gaussian_filter1d(noise, persistence / step, axis=0, mode="nearest")
    if start.size == 3:
        direction[:, 0] *= planarity
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    return start + np.cumsum(step * direction * scale, axis=0)


def _render_curve(total, points, values):
    """Add a curve to ``total``: each voxel it crosses gets the max value along it."""
    idx = np.round(points).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(total.shape)), axis=1)
    if not np.any(inside):
        return
    flat = np.ravel_multi_index(tuple(idx[inside].T), total.shape)
    vals = values[inside]
    order = np.argsort(-vals, kind="stable")
    unique, first = np.unique(flat[order], return_index=True)
    total.reshape(-1)[unique] += vals[order][first]


def filaments(shape, n, *, seed: Seed = 0, length=(0.3, 1.0), persistence=12.0,
              intensity=(0.5, 1.0), variation=0.3, width=0.6, planarity=0.25,
              voxel_size=None) -> np.ndarray:
    """Thin filaments: smooth random curves, one voxel wide, lightly smoothed.

    Each filament starts at a random point and follows a direction that varies
    smoothly along its length; its brightness varies smoothly too. Filaments may
    leave the volume (they are clipped) and add where they cross.

    Parameters
    ----------
    shape : tuple of int
        2D ``(y, x)`` or 3D ``(z, y, x)`` output shape.
    n : int
        Number of filaments.
    seed : int or numpy.random.Generator, optional
        Source of randomness.
    length : (float, float), optional
        Range of lengths, as fractions of the largest physical extent.
    persistence : float, optional
        Correlation length of the direction (finest-voxel units); larger is straighter.
    intensity : (float, float), optional
        Range of each filament's peak brightness.
    variation : float, optional
        Relative brightness variation along a filament, in [0, 1).
    width : float, optional
        Standard deviation of the final Gaussian smoothing (0 for none).
    planarity : float, optional
        Damping of the axial (z) direction in 3D; 1 gives isotropic curves.
    voxel_size : sequence of float, optional
        Voxel size per axis.

    Returns
    -------
    numpy.ndarray
        ``float32`` image in [0, 1].

    Examples
    --------
    >>> img = filaments((64, 64), 4, seed=0)
    >>> bool(0 < img.max() <= 1)
    True
    """
    shape = _check_shape(shape)
    rng, scale = _rng(seed), _axis_scale(len(shape), voxel_size)
    total = np.zeros(shape, dtype=np.float64)
    longest = _extent(shape, scale).max()
    for _ in range(int(n)):
        start = rng.uniform(0, shape)
        pts = _curve_points(rng, start, rng.uniform(*length) * longest, persistence,
                            scale, planarity)
        wobble = ndimage.gaussian_filter1d(rng.standard_normal(len(pts)), 2 * persistence)
        wobble /= wobble.std() + 1e-12
        values = rng.uniform(*intensity) * (1 - variation * (0.5 - 0.5 * np.tanh(wobble)))
        _render_curve(total, pts, values)
    return _smooth_keep_peak(total, width * scale)


def _smooth_keep_peak(image, sigma) -> np.ndarray:
    """Gaussian-smooth ``image`` and rescale so its maximum is unchanged; clip to [0, 1]."""
    peak = image.max()
    if peak > 0 and np.any(np.asarray(sigma) > 0):
        image = ndimage.gaussian_filter(image, sigma)
        image *= peak / image.max()
    return np.clip(image, 0, 1).astype(np.float32)


def _ellipsoid_envelope(offsets, scale, semi_axes, rotation, edge):
    """Soft ellipsoid indicator (1 inside, smooth cosine fall-off over ``edge``)."""
    rho2 = 0.0
    for j, r in enumerate(semi_axes):
        u = sum(rotation[i, j] * d / k for i, (d, k) in enumerate(zip(offsets, scale)))
        rho2 = rho2 + (u / r) ** 2
    t = np.clip((1.0 - np.sqrt(rho2)) / edge, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def nuclei(shape, n, *, seed: Seed = 0, radius=(0.08, 0.16), intensity=(0.2, 0.45),
           texture=0.3, edge=0.15, voxel_size=None) -> np.ndarray:
    """Nucleus-like blobs: soft-edged random ellipsoids with a smooth textured interior.

    Parameters
    ----------
    shape : tuple of int
        2D ``(y, x)`` or 3D ``(z, y, x)`` output shape.
    n : int
        Number of nuclei.
    seed : int or numpy.random.Generator, optional
        Source of randomness.
    radius : (float, float), optional
        Range of mean radii, as fractions of the smallest lateral physical extent.
    intensity : (float, float), optional
        Range of mean brightness per nucleus.
    texture : float, optional
        Relative amplitude of the interior texture, in [0, 1).
    edge : float, optional
        Width of the soft boundary, as a fraction of the radius.
    voxel_size : sequence of float, optional
        Voxel size per axis.

    Returns
    -------
    numpy.ndarray
        ``float32`` image in [0, 1]; overlapping nuclei take the brighter value.

    Examples
    --------
    >>> img = nuclei((16, 48, 48), 2, seed=3)
    >>> bool(img.max() > 0)
    True
    """
    shape = _check_shape(shape)
    rng, scale = _rng(seed), _axis_scale(len(shape), voxel_size)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5 * scale)
    field = 1.0 + texture * np.tanh(field / (field.std() + 1e-12))
    image = np.zeros(shape, dtype=np.float64)
    lateral = _extent(shape, scale)[-2:].min()
    for _ in range(int(n)):
        semi = rng.uniform(*radius) * lateral * rng.uniform(0.7, 1.3, size=len(shape))
        center, rotation = rng.uniform(0, shape), _random_rotation(rng, len(shape))
        box = _local_box(shape, center, np.ceil(semi.max() * scale) + 1)
        if box is None:
            continue
        env = _ellipsoid_envelope(box[1], scale, semi, rotation, edge)
        blob = rng.uniform(*intensity) * env * field[box[0]]
        image[box[0]] = np.maximum(image[box[0]], blob)
    return np.clip(image, 0, 1).astype(np.float32)


def _default_counts(shape) -> tuple[int, int, int]:
    """Default (beads, filaments, nuclei) counts scaled to the volume size."""
    ndim, voxels = len(shape), float(np.prod(shape))
    ref_voxels, ref = (32 * 64 * 64, (16, 6, 3)) if ndim == 3 else (128 * 128, (24, 8, 3))
    ratio = voxels / ref_voxels
    n_beads = max(3, int(round(ref[0] * ratio)))
    n_filaments = max(2, int(round(ref[1] * ratio ** ((ndim - 1) / ndim))))
    return n_beads, n_filaments, ref[2]


def phantom(shape, *, seed: Seed = 0, n_beads=None, n_filaments=None, n_nuclei=None,
            voxel_size=None) -> np.ndarray:
    """Ground-truth fluorescence phantom: nuclei, filaments and beads.

    The sum of :func:`nuclei` (dim, textured), :func:`filaments` (thin, bright) and
    :func:`beads` (point-like, bright), clipped to [0, 1]. Objects may touch the
    border. The result depends only on the arguments.

    Parameters
    ----------
    shape : tuple of int
        2D ``(y, x)`` or 3D ``(z, y, x)`` output shape.
    seed : int or numpy.random.Generator, optional
        Source of randomness.
    n_beads, n_filaments, n_nuclei : int, optional
        Object counts; by default they scale with the volume (a 32x64x64 volume
        gets 16 beads, 6 filaments and 3 nuclei).
    voxel_size : sequence of float, optional
        Voxel size per axis (z, y, x), to keep objects physically isotropic.

    Returns
    -------
    numpy.ndarray
        ``float32`` image in [0, 1].

    Examples
    --------
    >>> truth = phantom((32, 64, 64), seed=0)
    >>> truth.dtype, bool(truth.min() >= 0 and truth.max() <= 1)
    (dtype('float32'), True)
    """
    shape = _check_shape(shape)
    defaults = _default_counts(shape)
    counts = [d if c is None else int(c) for c, d in
              zip((n_beads, n_filaments, n_nuclei), defaults)]
    seeds = _rng(seed).integers(0, 2**63 - 1, size=3)
    kw = {"voxel_size": voxel_size}
    total = nuclei(shape, counts[2], seed=int(seeds[0]), **kw).astype(np.float64)
    total += filaments(shape, counts[1], seed=int(seeds[1]), **kw)
    total += beads(shape, counts[0], seed=int(seeds[2]), **kw)
    return np.clip(total, 0, 1).astype(np.float32)


def microtubules(shape, *, seed: Seed = 0, n=None, voxel_size=None) -> np.ndarray:
    """A network of long, gently curving filaments of near-uniform brightness.

    Parameters
    ----------
    shape : tuple of int
        2D ``(y, x)`` or 3D ``(z, y, x)`` output shape.
    seed : int or numpy.random.Generator, optional
        Source of randomness.
    n : int, optional
        Number of filaments; by default about one per 10 pixels of side in 2D,
        and ``voxels**(2/3) / 150`` in 3D (at least 3).
    voxel_size : sequence of float, optional
        Voxel size per axis.

    Returns
    -------
    numpy.ndarray
        ``float32`` image in [0, 1]; crossings add and are clipped at 1.

    Examples
    --------
    >>> img = microtubules((64, 64), seed=0)
    >>> bool(0 < img.max() <= 1)
    True
    """
    shape = _check_shape(shape)
    if n is None:
        ndim, voxels = len(shape), float(np.prod(shape))
        n = max(3, int(round(voxels ** ((ndim - 1) / ndim) / (10 if ndim == 2 else 150))))
    return filaments(shape, n, seed=seed, length=(0.8, 1.6), persistence=30.0,
                     intensity=(0.7, 1.0), variation=0.1, width=0.7, planarity=0.2,
                     voxel_size=voxel_size)
