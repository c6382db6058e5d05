"""Synthetic fluorescence data: ground-truth phantoms, blur and microscope noise.

Everything here is plain numpy/scipy (independent of the torch FFT code it is
used to test), returns ``float32`` arrays and draws all randomness from an
explicit ``seed`` (an ``int`` or a ``numpy.random.Generator``), so a result is
reproducible from its arguments alone.

Lengths are in voxels of the finest axis; pass ``voxel_size`` (z, y, x) to make
objects physically isotropic on an anisotropic grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from deconv3d.errors import InputError

Seed = "np.random.Generator | int | None"

__all__ = [
    "phantom",
    "beads",
    "filaments",
    "nuclei",
    "microtubules",
    "blur",
    "add_noise",
    "add_noise_gaussian_poisson",
    "degrade",
]


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


# --------------------------------------------------------------------------- imaging


def blur(image, psf) -> np.ndarray:
    """Convolve ``image`` with ``psf`` (same-size output), clamp at zero.

    Uses :func:`scipy.signal.fftconvolve` in float64 as an independent reference
    for the library's own FFT convolution. The PSF is used as given (normalise it
    to unit sum to conserve flux); its centre is at ``psf.shape // 2``.

    Parameters
    ----------
    image : array_like
        2D or 3D image.
    psf : array_like
        Point-spread function with the same number of dimensions.

    Returns
    -------
    numpy.ndarray
        ``float32`` blurred image, same shape as ``image``, non-negative.

    Examples
    --------
    >>> img = np.zeros((9, 9)); img[4, 4] = 1
    >>> float(blur(img, np.full((3, 3), 1 / 9)).sum())  # doctest: +ELLIPSIS
    1.0...
    """
    image = np.asarray(image, dtype=np.float64)
    psf = np.asarray(psf, dtype=np.float64)
    if image.ndim != psf.ndim:
        raise InputError(f"image is {image.ndim}D but psf is {psf.ndim}D; give them the same dimensions")
    out = signal.fftconvolve(image, psf, mode="same")
    return np.maximum(out, 0).astype(np.float32)


def add_noise(image, *, photons=100.0, read_noise=1.0, background=0.0,
              seed: Seed = 0) -> np.ndarray:
    """Poisson-Gaussian camera noise at a given photon budget.

    The image is scaled so that its maximum corresponds to ``photons`` expected
    counts, ``background`` counts are added, the counts are Poisson-sampled, Gaussian
    read noise is added, and the result is divided back to the input scale.

    Parameters
    ----------
    image : array_like
        Noise-free, non-negative image (negative values are treated as 0).
    photons : float, optional
        Expected photon count at the image maximum; lower is noisier.
    read_noise : float, optional
        Standard deviation of the Gaussian read noise, in counts.
    background : float, optional
        Uniform background, in expected counts per voxel. It stays in the output
        as an offset of ``background * max(image) / photons``.
    seed : int or numpy.random.Generator, optional
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``float32`` noisy image (not clipped: read noise may make values negative).

    Notes
    -----
    With ``s = photons / max(image)``, a voxel of value ``v`` has mean
    ``v + background / s`` and variance ``(v + background / s) / s + read_noise**2 / s**2``.

    Examples
    --------
    >>> noisy = add_noise(np.full((8, 8), 0.5), photons=1000, seed=0)
    >>> bool(abs(noisy.mean() - 0.5) < 0.01)
    True
    """
    image = np.maximum(np.asarray(image, dtype=np.float64), 0)
    if photons <= 0 or read_noise < 0 or background < 0:
        raise InputError("photons must be > 0, read_noise and background >= 0")
    rng = _rng(seed)
    peak = image.max() if image.size else 0.0
    scale = photons / peak if peak > 0 else float(photons)
    counts = rng.poisson(image * scale + background).astype(np.float64)
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, size=image.shape)
    return (counts / scale).astype(np.float32)


def add_noise_gaussian_poisson(b, *, a=0.001, sigma=0.1, bits=10, salt_pepper=0.0,
                               seed: Seed = 0) -> np.ndarray:
    """Heteroscedastic Gaussian approximation of Poisson-Gaussian noise, quantised.

    ``y = b + sqrt(a * b + sigma**2) * N(0, 1)``, optionally with a fraction of
    voxels replaced by uniform noise (salt and pepper), then clipped to [0, 1] and
    quantised to ``2**bits`` levels, following the degradation used by Papkov et al.

    Parameters
    ----------
    b : array_like
        Noise-free (blurred) image, expected in [0, 1].
    a : float, optional
        Signal-dependent (Poisson-like) variance factor.
    sigma : float, optional
        Signal-independent (read noise) standard deviation.
    bits : int, optional
        Bit depth of the quantiser.
    salt_pepper : float, optional
        Fraction of voxels replaced by uniform random values in [0, 1).
    seed : int or numpy.random.Generator, optional
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``float32`` image in [0, 1] with at most ``2**bits`` distinct values.

    Notes
    -----
    The quantiser is ``round(y * (2**bits - 1)) / (2**bits - 1)`` after clipping,
    so exactly ``2**bits`` levels span [0, 1] (the reference code rounds with
    ``2**bits`` steps, giving one extra level).

    References
    ----------
    .. [1] M. Papkov et al., "Self-supervised single-image deconvolution with
       Siamese neural networks", arXiv:2308.09426 (2023).
    .. [2] H. Kobayashi, A. C. Solak, J. Batson, L. A. Royer, "Image
       deconvolution via noise-tolerant self-supervised inversion",
       arXiv:2006.06156 (2020).

    Examples
    --------
    >>> y = add_noise_gaussian_poisson(np.linspace(0, 1, 100), bits=4, seed=0)
    >>> len(np.unique(y)) <= 16
    True
    """
    b = np.asarray(b, dtype=np.float64)
    if a < 0 or sigma < 0 or int(bits) < 1:
        raise InputError("a and sigma must be >= 0 and bits >= 1")
    rng = _rng(seed)
    y = b + np.sqrt(a * np.maximum(b, 0) + sigma**2) * rng.standard_normal(b.shape)
    if salt_pepper > 0:
        hit = rng.uniform(size=b.shape) < salt_pepper
        y = np.where(hit, rng.uniform(size=b.shape), y)
    levels = 2 ** int(bits) - 1
    return (np.round(np.clip(y, 0, 1) * levels) / levels).astype(np.float32)


def degrade(truth, psf, *, photons=100.0, read_noise=1.0, background=0.0,
            seed: Seed = 0) -> np.ndarray:
    """Simulate a widefield acquisition: :func:`blur` then :func:`add_noise`.

    Parameters
    ----------
    truth : array_like
        Ground-truth object (2D or 3D).
    psf : array_like
        Point-spread function (unit sum conserves flux).
    photons, read_noise, background : float, optional
        Noise parameters, see :func:`add_noise`.
    seed : int or numpy.random.Generator, optional
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``float32`` blurred, noisy image.

    Examples
    --------
    >>> truth = phantom((16, 32, 32), seed=0)
    >>> psf = np.ones((3, 3, 3)) / 27
    >>> degrade(truth, psf, photons=50, seed=1).shape
    (16, 32, 32)
    """
    return add_noise(blur(truth, psf), photons=photons, read_noise=read_noise,
                     background=background, seed=seed)
