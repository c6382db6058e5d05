"""Estimates from a PSF's spectrum: its RMS width (:func:`psf_rms_width`), the band limit that
attenuates what the microscope does not transmit (:func:`band_limit`, its halo :func:`band_limit_halo`),
and the white-noise variance measured where it transmits nothing (:func:`white_noise_variance`, with
:data:`BLIND` and :func:`tapered_crop`). :mod:`deconv3d.fft` exports them.
"""

from __future__ import annotations

import numpy as np
import torch

from deconv3d._fft_shapes import fast_shape, irfftn, pad_spatial
from deconv3d._tensors import as_tensor
from deconv3d.errors import InputError


def psf_rms_width(psf) -> tuple[float, ...]:
    """RMS width (square root of the second central moment) of a PSF along each axis, in voxels."""
    arr = psf.detach().cpu().numpy() if isinstance(psf, torch.Tensor) else psf
    h = np.clip(np.asarray(arr, dtype=np.float64), 0, None)
    total = h.sum() or 1.0
    widths = []
    for axis in range(h.ndim):
        profile = h.sum(axis=tuple(a for a in range(h.ndim) if a != axis)) / total
        x = np.arange(profile.size)
        mean = (profile * x).sum()
        widths.append(float(np.sqrt(max((profile * (x - mean) ** 2).sum(), 0.0))))
    return tuple(widths)


def band_limit_halo(psf) -> tuple[int, ...]:
    """How far, per axis, :func:`band_limit` reaches: ``max(k // 2, ceil(8 sigma))``.

    ``sigma`` is the PSF's RMS width along the axis. The filter's impulse response is about
    as wide as the PSF's autocorrelation with slowly decaying tails; eight widths of
    mirrored margin make the result independent of what lies beyond (a chunked run with
    this halo agrees with the whole-volume result to better than 90 dB).
    """
    return tuple(max(k // 2, int(np.ceil(8 * sigma))) for k, sigma in zip(psf.shape, psf_rms_width(psf)))


def band_limit(x, psf, eps: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Attenuate what the PSF does not transmit: scale the spectrum by ``(1 + eps) |H|^2 / (|H|^2 + eps)``.

    ``H`` is the PSF's transfer function normalised to 1 at zero frequency. Frequencies
    where ``|H|`` is far above ``sqrt(eps)`` pass unchanged; those the microscope barely
    transmits (``|H| << sqrt(eps)``) are suppressed. Content there is in the null space
    of the forward model, so no data term constrains it: this is the Wiener filter's
    shape applied to an estimate of the *object*, a projection onto what the data can
    tell. The filter is real and even (zero phase), so nothing shifts. The borders are
    mirrored by :func:`band_limit_halo` before the FFT, so they do not wrap around.
    """
    if not eps > 0:
        raise InputError(f"band-limit eps must be a positive number, got {eps}: try 0.01")
    from deconv3d.fft import convolver_for  # (deconv3d.fft imports this module)

    conv = convolver_for(x, psf, device, dtype)  # (a PSF tensor that requires grad stays in the graph)
    x = as_tensor(x, conv.device, dtype)
    shape = tuple(x.shape[-conv.ndim:])
    before = list(band_limit_halo(conv.psf))
    # The mirror fills the whole FFT box: zeros after it would be an edge that rings into the image.
    fft_shape = fast_shape([max(n + 2 * b, k) for n, b, k in zip(shape, before, conv.psf.shape)])
    padded = pad_spatial(x, before, [f - n - b for f, n, b in zip(fft_shape, shape, before)], "reflect")
    power = conv.otf(fft_shape).abs().square_()
    power = power / power.flatten()[0].clamp_min(1e-30)  # |H(0)|^2 = 1 whatever the PSF's sum
    gain = (power / (power + eps)).mul_(1 + eps)  # 1 at zero frequency: the total intensity is kept
    spectrum = torch.fft.rfftn(padded, s=fft_shape, dim=conv.dims) * gain
    out = irfftn(spectrum, fft_shape, conv.dims)
    return out[(Ellipsis,) + tuple(slice(b, b + n) for b, n in zip(before, shape))]


BLIND = 1e-4  # |H|^2 / |H(0)|^2 below which the microscope transmits nothing measurable


def white_noise_variance(image, psf, threshold: float = BLIND, max_side: int = 128) -> float | None:
    """Variance of the white noise in ``image``, measured where the PSF transmits no light.

    Beyond the support of the transfer function ``H`` (``|H|^2 < threshold |H(0)|^2``) the
    microscope passes nothing, so the image's power there is noise alone; for noise that
    is independent from voxel to voxel (Gaussian read noise, Poisson shot noise) it is the
    same at every frequency, and its mean is the noise variance. The image (its central
    crop of at most ``max_side`` per axis, mean removed) is tapered by a Hann window so that
    its borders do not leak broadband power. Returns ``None`` when the PSF is so small
    that every frequency of the crop is transmitted: there is nowhere to look.
    """
    x = np.asarray(image, dtype=np.float64)
    h = np.asarray(psf.detach().cpu() if isinstance(psf, torch.Tensor) else psf, dtype=np.float64)
    if x.ndim != h.ndim:
        raise InputError(f"image is {x.ndim}D but the PSF is {h.ndim}D: give them the same dimensions")
    tapered, energy = tapered_crop(x, max_side)
    power_h = np.abs(np.fft.rfftn(h, s=tapered.shape, axes=tuple(range(x.ndim)))) ** 2
    blind = power_h < threshold * power_h.flat[0]
    if not blind.any():
        return None
    power_x = np.abs(np.fft.rfftn(tapered)) ** 2
    return float(power_x[blind].mean() / energy)


def tapered_crop(image: np.ndarray, max_side: int = 128) -> tuple[np.ndarray, float]:
    """The central crop (at most ``max_side`` per axis), mean removed, times a Hann window,
    and the window's energy ``sum(w^2)``: a periodogram of the result divided by that energy
    estimates the power spectrum without the leakage of the crop's borders."""
    crop = tuple(slice((n - min(n, max_side)) // 2, (n - min(n, max_side)) // 2 + min(n, max_side))
                 for n in image.shape)
    x = np.asarray(image, dtype=np.float64)[crop]
    window = np.ones(x.shape)
    for axis, n in enumerate(x.shape):
        shape = [1] * x.ndim
        shape[axis] = n
        window = window * np.hanning(n + 2)[1:-1].reshape(shape)  # no zero end points
    return (x - x.mean()) * window, float(np.sum(window ** 2))
