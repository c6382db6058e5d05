"""Image-quality metrics for restoration benchmarks.

PSNR and SSIM wrap :mod:`skimage.metrics` for 2D and 3D float arrays. The
``*_rescaled`` variants first fit the restored image to the reference with the
least-squares affine map ``a * image + b`` (the evaluation protocol of CSBDeep /
CARE and of Papkov et al.), so that methods that change the global intensity
scale (deconvolution usually does) are compared on structure alone.

References
----------
.. [1] Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality
   assessment: from error visibility to structural similarity", IEEE Trans.
   Image Process. 13(4):600-612 (2004).
.. [2] M. Weigert et al., "Content-aware image restoration: pushing the limits
   of fluorescence microscopy", Nature Methods 15:1090-1097 (2018).
.. [3] M. Papkov et al., "Self-supervised single-image deconvolution with
   Siamese neural networks", arXiv:2308.09426 (2023).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deconv3d.errors import InputError

__all__ = ["psnr", "ssim", "rescale_affine", "psnr_rescaled", "ssim_rescaled"]


def _pair(reference, image) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64, checked to have the same 2D or 3D shape."""
    reference, image = (np.asarray(_numpy(a), dtype=np.float64) for a in (reference, image))
    if reference.shape != image.shape:
        raise InputError(f"reference {reference.shape} and image {image.shape} differ in shape")
    if reference.ndim not in (2, 3):
        raise InputError(f"metrics need 2D or 3D arrays, got {reference.ndim}D")
    for name, a in (("reference", reference), ("image", image)):
        if not np.isfinite(a).all():  # the score was NaN, quietly
            raise InputError(f"the {name} has NaN or Inf values: a metric over them means nothing; replace them")
    return reference, image


def _numpy(a):
    """An array for ``a``; a torch tensor detached and moved to the CPU first."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") and hasattr(a, "cpu") else a


def _data_range(reference: np.ndarray, data_range) -> float:
    """``data_range`` or the reference's max - min (1.0 for a constant reference)."""
    if data_range is not None:
        try:  # a number, or a 0-d array or tensor (t.max() - t.min())
            value = float(data_range) if not isinstance(data_range, (bool, np.bool_)) else float("nan")
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value > 0):  # -1 was squared away, 0 gave -inf
            raise InputError(f"data_range must be a positive number, got {data_range!r}")
        return value
    span = float(reference.max() - reference.min())
    return span if span > 0 else 1.0


def psnr(reference, image, data_range=None) -> float:
    """Peak signal-to-noise ratio, ``10 log10(data_range**2 / MSE)`` in dB.

    Parameters
    ----------
    reference : array_like
        Ground truth, 2D or 3D.
    image : array_like
        Image to score, same shape.
    data_range : float, optional
        Peak-to-peak range of the signal; defaults to ``reference.max() - reference.min()``
        (1.0 when the reference is constant). Integer images are scored as numbers too, not
        against their type's range, which is scikit-image's default (255 for uint8): pass
        ``data_range=255`` to score a uint8 pair as scikit-image does.

    Returns
    -------
    float
        PSNR in dB; ``inf`` for identical arrays.

    Notes
    -----
    Computed with :func:`skimage.metrics.peak_signal_noise_ratio`.

    Examples
    --------
    >>> ref = np.linspace(0, 1, 64).reshape(8, 8)
    >>> round(psnr(ref, ref + 0.01), 1)
    40.0
    """
    reference, image = _pair(reference, image)
    if np.array_equal(reference, image):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, image,
                                         data_range=_data_range(reference, data_range)))


def _win_size(shape, win_size) -> int:
    """Largest odd window <= the smallest dimension, at most 7 (or ``win_size``)."""
    if win_size is not None:
        if not (isinstance(win_size, (int, np.integer)) and win_size >= 3 and win_size % 2 == 1
                and win_size <= min(shape)):
            raise InputError(f"win_size must be an odd integer from 3 to the smallest dimension {min(shape)}, "
                             f"got {win_size!r}")
        return int(win_size)
    size = min(7, min(shape))
    size -= 1 - size % 2
    if size < 3:
        raise InputError(f"SSIM needs every dimension >= 3, got shape {tuple(shape)}")
    return size


def ssim(reference, image, data_range=None, *, win_size=None) -> float:
    """Mean structural similarity index (Wang et al. 2004) for 2D or 3D images.

    Parameters
    ----------
    reference : array_like
        Ground truth, 2D or 3D (every dimension >= 3).
    image : array_like
        Image to score, same shape.
    data_range : float, optional
        Peak-to-peak range of the signal; defaults to ``reference.max() - reference.min()``
        (1.0 when the reference is constant).
    win_size : int, optional
        Odd side of the uniform sliding window; by default 7, or the largest odd
        size that fits the smallest dimension.

    Returns
    -------
    float
        Mean SSIM in [-1, 1]; 1 for identical arrays.

    Notes
    -----
    Computed with :func:`skimage.metrics.structural_similarity` (uniform window,
    ``K1 = 0.01``, ``K2 = 0.03``).

    Examples
    --------
    >>> ref = np.random.default_rng(0).random((5, 16, 16))
    >>> ssim(ref, ref)
    1.0
    """
    reference, image = _pair(reference, image)
    return float(structural_similarity(reference, image,
                                       data_range=_data_range(reference, data_range),
                                       win_size=_win_size(reference.shape, win_size)))


def rescale_affine(reference, image) -> np.ndarray:
    """Affine rescaling ``a * image + b`` that minimises the MSE to ``reference``.

    Parameters
    ----------
    reference : array_like
        Target intensities.
    image : array_like
        Image to rescale, same shape.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``a * image + b``.

    Notes
    -----
    The least-squares solution is ``a = cov(image, reference) / var(image)`` and
    ``b = mean(reference) - a * mean(image)`` (``a = 0`` for a constant image);
    this is the min-MSE normalisation of CSBDeep used by Papkov et al. [3]_.

    Examples
    --------
    >>> ref = np.linspace(0, 1, 10)
    >>> np.allclose(rescale_affine(ref, 3 * ref - 2), ref, atol=1e-6)
    True
    """
    reference, image = (np.asarray(_numpy(a), dtype=np.float64) for a in (reference, image))
    if reference.shape != image.shape:
        raise InputError(f"reference {reference.shape} and image {image.shape} differ in shape")
    centred = image - image.mean()
    var = float(np.mean(centred**2))
    a = float(np.mean(centred * (reference - reference.mean()))) / var if var > 0 else 0.0
    b = reference.mean() - a * image.mean()
    return (a * image + b).astype(np.float32)


def psnr_rescaled(reference, image) -> float:
    """PSNR with ``data_range=1`` after :func:`rescale_affine` (reference in [0, 1]).

    Examples
    --------
    >>> ref = np.linspace(0, 1, 64).reshape(8, 8)
    >>> psnr_rescaled(ref, 5 * ref + 1) > 100
    True
    """
    return psnr(_unit_range(reference), rescale_affine(reference, image), data_range=1.0)


def ssim_rescaled(reference, image) -> float:
    """SSIM with ``data_range=1`` after :func:`rescale_affine` (reference in [0, 1]).

    Examples
    --------
    >>> ref = np.random.default_rng(0).random((16, 16))
    >>> round(ssim_rescaled(ref, 2 * ref), 4)
    1.0
    """
    return ssim(_unit_range(reference), rescale_affine(reference, image), data_range=1.0)


def _unit_range(reference):
    """``reference``, refused unless it lies in [0, 1] (the benchmark recipe's scale, which ``data_range=1``
    assumes: raw counts gave -46 dB where the same data in [0, 1] gave 26 dB)."""
    arr = np.asarray(_numpy(reference))
    if arr.size and (float(np.min(arr)) < -1e-6 or float(np.max(arr)) > 1 + 1e-6):
        raise InputError(f"the reference spans [{float(np.min(arr)):.4g}, {float(np.max(arr)):.4g}], but the "
                         "rescaled metrics use data_range 1: scale it to [0, 1] first, or use psnr/ssim with "
                         "data_range")
    return reference


# --------------------------------------------------------------------------- latent linearity
#
# Scores of how linearly a sequence of latents (the encodings E(x_l) of the planes of one
# focal stack, ordered by blur level) is arranged, after P. Mazilu, H. Wang, S. Dummer,
# R. Veldhuis, C. Brune and N. Strisciuglio, "Defocus blur synthesis and deblurring via
# interpolation and extrapolation in latent space", CAIP 2023, arXiv:2307.15461.

__all__ += ["latent_lds", "latent_apd"]


def _flat_latents(latents) -> np.ndarray:
    """``(n, D)`` float64 matrix: each latent (array, tensor or tuple of them) flattened."""
    rows = []
    for z in latents:
        parts = z if isinstance(z, (tuple, list)) else (z,)
        arrays = [np.asarray(p.detach().cpu().numpy() if hasattr(p, "detach") else p, dtype=np.float64).ravel()
                  for p in parts]
        rows.append(np.concatenate(arrays) if arrays else np.zeros(0))
    if len({r.size for r in rows}) > 1:
        raise InputError("latents differ in size: encode every plane of the stack with the same model and shape")
    return np.stack(rows)


def latent_lds(latents) -> float:
    """LDS: mean cosine similarity of consecutive latent differences (1 = collinear steps).

    Parameters
    ----------
    latents : sequence
        At least three latents ordered by blur level; each a numpy array, a torch tensor or
        a tuple/list of them (tuples are flattened and concatenated).

    Returns
    -------
    float
        In [-1, 1]; 1 when every step points the same way.

    Notes
    -----
    With ``d_i = z_{i+1} - z_i`` (flattened), ``i = 0 .. n-2``,

    ``LDS = 1/(n-2) * sum_{i=0}^{n-3} <d_i, d_{i+1}> / (||d_i|| ||d_{i+1}||)``.

    References
    ----------
    .. [1] P. Mazilu et al., "Defocus blur synthesis and deblurring via interpolation
       and extrapolation in latent space", CAIP 2023, arXiv:2307.15461.

    Examples
    --------
    >>> latent_lds([np.zeros(3), np.ones(3), 3 * np.ones(3)])
    1.0
    """
    z = _flat_latents(latents)
    if z.shape[0] < 3:
        raise InputError(f"LDS needs at least 3 latents, got {z.shape[0]}")
    d = np.diff(z, axis=0)
    norms = np.linalg.norm(d, axis=1)
    if np.any(norms == 0):
        raise InputError("two consecutive latents are identical: LDS is undefined for a zero step")
    cos = np.sum(d[:-1] * d[1:], axis=1) / (norms[:-1] * norms[1:])
    return float(np.clip(np.mean(cos), -1.0, 1.0))


def latent_apd(latents, levels=None) -> float:
    """APD: mean deviation of consecutive latent distances from straight-line interpolation.

    Parameters
    ----------
    latents : sequence
        At least two latents ordered by blur level (arrays, tensors or tuples of them).
    levels : sequence of float, optional
        Strictly increasing level values of the latents; evenly spaced by default.

    Returns
    -------
    float
        Non-negative; 0 when the latents are evenly placed on the segment between the ends.

    Notes
    -----
    With ``t_i = (l_i - l_0) / (l_{n-1} - l_0)``, the synthesised latents are
    ``zhat_i = (1 - t_i) z_0 + t_i z_{n-1}``, so ``||zhat_{i+1} - zhat_i|| = (t_{i+1} - t_i) D``
    with ``D = ||z_{n-1} - z_0||``, and

    ``APD = 1/(n-1) * sum_{i=0}^{n-2} | ||z_{i+1} - z_i|| - ||zhat_{i+1} - zhat_i|| | / D``.

    References
    ----------
    .. [1] P. Mazilu et al., "Defocus blur synthesis and deblurring via interpolation
       and extrapolation in latent space", CAIP 2023, arXiv:2307.15461.

    Examples
    --------
    >>> round(latent_apd([np.zeros(2), np.array([1.0, 1.0]), np.array([2.0, 0.0])]), 4)
    0.2071
    """
    z = _flat_latents(latents)
    n = z.shape[0]
    if n < 2:
        raise InputError(f"APD needs at least 2 latents, got {n}")
    lv = np.arange(n, dtype=np.float64) if levels is None else np.asarray(levels, dtype=np.float64).ravel()
    if lv.size != n or not np.isfinite(lv).all() or np.any(np.diff(lv) <= 0):  # NaN passes the diff test
        raise InputError(f"levels must be {n} finite, strictly increasing values, one per latent, "
                         f"got {lv.tolist()[:8]}")
    total = float(np.linalg.norm(z[-1] - z[0]))
    if total == 0:
        raise InputError("the first and last latents are identical: APD is undefined")
    t = (lv - lv[0]) / (lv[-1] - lv[0])
    real = np.linalg.norm(np.diff(z, axis=0), axis=1)
    synthetic = np.diff(t) * total
    return float(np.mean(np.abs(real - synthetic)) / total)
