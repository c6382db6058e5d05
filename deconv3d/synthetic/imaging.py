"""Imaging: blur by a PSF and microscope noise models (see :mod:`deconv3d.synthetic`)."""

from __future__ import annotations

import numpy as np
from scipy import signal

from deconv3d.errors import InputError
from deconv3d.synthetic.phantoms import Seed, _rng


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
    >>> from deconv3d.synthetic import phantom
    >>> truth = phantom((16, 32, 32), seed=0)
    >>> psf = np.ones((3, 3, 3)) / 27
    >>> degrade(truth, psf, photons=50, seed=1).shape
    (16, 32, 32)
    """
    return add_noise(blur(truth, psf), photons=photons, read_noise=read_noise,
                     background=background, seed=seed)
