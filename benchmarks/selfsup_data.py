"""Volumes and classical baselines for bench_selfsup.py (Papkov et al. 2023's synthetic recipe).

Ground truth scaled to [0, 1]; a Gibson-Lanni PSF (NA 0.8, water n = 1.33, emission
0.6 µm, voxel 0.406 µm, 17^3); the truth is blurred on a field larger than the one kept,
then cropped, so light enters from outside the field as in a real stack; noise
``y = b + sqrt(0.001 b + σ²) N(0, 1)`` quantised to 10 bits and clipped to [0, 1].

The sources limit two volumes. flowdec's ``bars`` ships as a 32x64x64 stack whose bars lie well
inside it, so its field is 18x48x48 and no light enters from outside (the exception to the
recipe: a crop tight enough to cut the bars would leave a field smaller than a training patch).
The nuclei stack has 60 planes, so its field is 44x128x128. Microtubules are synthesised at
64x128x128 with a margin of half the PSF around the field.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch

from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.fft import FFTConvolver
from deconv3d.metrics import psnr_rescaled, ssim_rescaled
from deconv3d.psf import generate_psf
from deconv3d.synthetic import add_noise_gaussian_poisson, blur, microtubules

PSF_SIZE = 17
RL_CHECKPOINTS = (2, 5, 10, 20, 50)


def bench_psf() -> np.ndarray:
    return generate_psf("gibson-lanni", (PSF_SIZE,) * 3, voxel_size=(0.406,) * 3, na=0.8, wavelength=0.6,
                        ni=1.33, ns=1.33).astype(np.float32)


def _unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a = a - a.min()
    return a / max(float(a.max()), 1e-12)


def ground_truth(name: str, shape=(64, 128, 128), seed: int = 0) -> np.ndarray:
    """The larger-than-field truth: ``shape`` plus a PSF-sized margin where the source allows it."""
    margin = PSF_SIZE // 2
    if name == "microtubules":
        big = tuple(s + 2 * margin for s in shape)
        return _unit(microtubules(big, seed=seed))
    from deconv3d import sample_data

    if name == "bars":
        return _unit(sample_data.flowdec_bars()["truth"])
    if name == "nuclei":
        stack = sample_data.nuclei()
        z = min(stack.shape[0], shape[0] + 2 * margin)
        y0 = (stack.shape[1] - shape[1] - 2 * margin) // 2
        x0 = (stack.shape[2] - shape[2] - 2 * margin) // 2
        return _unit(stack[:z, y0:y0 + shape[1] + 2 * margin, x0:x0 + shape[2] + 2 * margin])
    raise ValueError(f"unknown volume {name!r}")


def make_volume(name: str, sigma: float, psf: np.ndarray, shape=(64, 128, 128), seed: int = 0):
    """(truth, noise-free blurred image, noisy input) on the kept field; the blur saw the whole larger truth."""
    big = ground_truth(name, shape, seed)
    blurred = np.clip(blur(big, psf), 0, 1)
    m = [min(PSF_SIZE // 2, max(0, (b - PSF_SIZE - 1) // 2)) for b in big.shape]  # keep more than the PSF
    crop = tuple(slice(k, b - k) for k, b in zip(m, big.shape))
    noisy = add_noise_gaussian_poisson(blurred[crop], a=0.001, sigma=sigma, bits=10, seed=seed).astype(np.float32)
    return big[crop], blurred[crop].astype(np.float32), noisy


def score(truth, result) -> tuple[float, float]:
    return psnr_rescaled(truth, result), ssim_rescaled(truth, result)


def constant_floor(truth) -> tuple[float, float]:
    """The score of a constant output: PSNR ``-10 log10 var(truth)`` after the affine rescale, SSIM of the mean.

    A result scoring near it explains almost none of the truth's variance.
    """
    return score(truth, np.zeros_like(truth))


def genie_wiener(truth, noisy, psf, sigma: float) -> tuple[float, float]:
    """Wiener filter told the truth's own power spectrum: a reference for linear filters, not a method.

    Per frequency, ``H* |X|^2 / (|H|^2 |X|^2 + N s)`` with ``X`` the FFT of the mean-free truth, ``N`` the
    voxel count and ``s`` the recipe's mean noise variance ``0.001 b + sigma^2``: in expectation over the
    noise, the lowest-MSE shift-invariant linear estimate of this very truth if the field were periodic
    and the noise white. It is a bound only under that model: light entering from outside the field
    breaks periodicity, so at low noise the boundary limits it (it can score below the input), while at
    high noise, where the noise dominates, it shows roughly how much a linear filter can recover.
    Nonlinear methods (TV, networks) may pass it.
    """
    otf = FFTConvolver(psf, dtype=torch.float64).otf(truth.shape).numpy()
    power = np.abs(np.fft.rfftn(truth - truth.mean())) ** 2
    noise = float(np.mean(0.001 * np.clip(noisy, 0, None) + sigma**2)) * truth.size
    gain = np.conj(otf) * power / (np.abs(otf) ** 2 * power + noise)
    axes = tuple(range(truth.ndim))
    estimate = np.fft.irfftn(gain * np.fft.rfftn(noisy - noisy.mean()), s=truth.shape, axes=axes)
    return score(truth, estimate.astype(np.float32))


def best_gaussian(truth, noisy, sigmas=(0.5, 1.0, 1.5, 2.0)):
    """Gaussian smoothing at its best width (a sanity floor)."""
    scored = [(score(truth, ndi.gaussian_filter(noisy, s)), s) for s in sigmas]
    return max(scored)


def best_rl(truth, noisy, psf, tv_weight=0.0, boundaries=("zero", "bertero"), device="cpu"):
    """RL at its best iteration count among RL_CHECKPOINTS and boundaries: an oracle baseline."""
    best = ((-np.inf, 0.0), None)
    for boundary in boundaries:
        found = []

        def keep(it, estimate, boundary=boundary):
            if it in RL_CHECKPOINTS:
                found.append((score(truth, estimate.cpu().numpy()), f"{boundary}, {it} it"))

        richardson_lucy(noisy, psf, max(RL_CHECKPOINTS), boundary=boundary, tv_weight=tv_weight,
                        callback=keep, device=device)
        best = max([best] + found, key=lambda t: t[0][0])
    return best


def calibrated_rl(truth, noisy, psf, tv_weight=0.0, device="cpu"):
    """Bertero RL at the count :func:`deconv3d.classical.choose_iterations` picks from the image
    alone (held-out voxels, no truth): the honest counterpart of :func:`best_rl`."""
    choice = choose_iterations(noisy, psf, 100, tv_weight=tv_weight, device=device)
    estimate = richardson_lucy(noisy, psf, choice.iterations, tv_weight=tv_weight, device=device)
    return score(truth, estimate), f"bertero, {choice.iterations} it (chosen)"
