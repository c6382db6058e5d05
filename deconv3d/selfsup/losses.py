"""Loss of the Siamese blind-spot deconvolution network.

The network ``f`` maps a standardised image ``x`` to a standardised estimate of the
object; the forward model ``H f = PSF ⊛ f`` (:mod:`deconv3d.selfsup.forward_model`) predicts
the data. One training step runs ``f`` twice with shared weights, on ``x`` and on the masked
copy ``x_m`` (:mod:`deconv3d.selfsup.masking`), and combines (``M`` = masked voxels)::

    L = λ_rec · MSE(x, H f(x))                                  data term, all voxels
                 (optionally Wiener-weighted: :func:`data_term`)
      + λ_inv · sqrt(MSE_M(f(x), f(x_m)))                       invariance before the PSF
      + λ_inv_psf · sqrt(MSE_M(H f(x), H f(x_m)))               invariance after the PSF
      + λ_bsp · MSE_M(x, H f(x_m))                              SSI blind-spot term
      + λ_bound · mean(relu(-z) + relu(z - 1))**2               bound, z = (f·std + mean) / max

The data are compared on a region of the network's field, and ``H f`` is the valid part of
the convolution of ``f`` over that region extended by the PSF halo, so light from objects
just outside the compared region is modelled (:class:`ForwardModel`).

All loss functions are pure: tensors in, tensors out, no state.

References
----------
.. [1] K. Papkov, M. Palo and L. Parts, "Self-supervised single-image deconvolution
   with Siamese neural networks", arXiv:2308.09426 (2023).
.. [2] Y. Xie, Z. Wang and S. Ji, "Noise2Same: optimizing a self-supervised bound for
   image denoising", NeurIPS 2020.
.. [3] H. Kobayashi, A. C. Solak, J. Batson and L. A. Royer, "Image deconvolution via
   noise-tolerant self-supervised inversion", arXiv:2006.06156 (2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from deconv3d._spectral import BLIND, tapered_crop, white_noise_variance
from deconv3d.errors import InputError
from deconv3d.selfsup.config import TrainConfig
from deconv3d.selfsup.forward_model import FieldGeometry, ForwardModel, SpectralWeight

__all__ = [
    "FieldGeometry", "ForwardModel", "SpectralWeight", "LossWeights", "loss_weights", "mse", "masked_mse",
    "data_term", "snr_gain", "AUTO_EPS", "invariance_term", "blind_spot_term", "bound_term", "siamese_loss",
]

_SQRT_EPS = 1e-12  # keeps the gradient of sqrt finite when both passes agree exactly
AUTO_EPS = 1e-3  # eps of TrainConfig(precondition="auto"), with the weight gated by the image's SNR


# ------------------------------------------------------------------------- weights ---


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (0 switches a term off)."""

    data: float = 1.0
    inv_before: float = 2.0
    inv_after: float = 0.0
    bsp: float = 0.0
    bound: float = 0.1


def loss_weights(config: TrainConfig) -> LossWeights:
    """Loss weights implied by a :class:`TrainConfig`.

    ``invariance`` picks the invariance term(s) with weights ``lambda_inv`` (before the PSF)
    and ``lambda_inv_psf`` (after it; ``lambda_inv`` when None): ``config.invariance_weights``.
    The data term has weight ``lambda_rec``; when None, 1, except in the SSI baseline
    (``invariance="none"`` with ``lambda_bsp > 0``) where, as in Kobayashi et al., only
    masked voxels train the network and the data term is off (``lambda_rec=1`` keeps it).
    """
    before, after = config.invariance_weights
    ssi = config.invariance == "none" and config.lambda_bsp > 0
    data = config.lambda_rec if config.lambda_rec is not None else (0.0 if ssi else 1.0)
    return LossWeights(data, before, after, config.lambda_bsp, config.lambda_bound)


# ---------------------------------------------------------------------------- terms ---


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all elements."""
    return torch.mean((a - b) ** 2)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the voxels where ``mask`` (broadcast to ``a``) is True.

    Zero (still attached to the graph) when the mask selects nothing.
    """
    weight = mask.expand_as(a).to(a.dtype)
    return torch.sum(weight * (a - b) ** 2) / weight.sum().clamp_min(1.0)


def data_term(data: torch.Tensor, blurred: torch.Tensor, weight: SpectralWeight | None = None) -> torch.Tensor:
    """``MSE(x, H f(x))`` over all voxels of the compared region, optionally Wiener-weighted.

    With ``weight`` (:meth:`ForwardModel.data_weight`) the residual ``r = H f - x`` is
    measured as ``mean_ω W(ω) |r̂(ω)|^2`` with ``W = (1 + ε) / (|H|^2 + ε)`` (Parseval: ``W = 1``
    gives the plain MSE). The gradient with respect to ``f`` becomes
    ``H^T (H H^T + ε)^{-1} (H f - x)``, a Wiener-preconditioned residual: in the passband it
    pulls every frequency of ``f`` at the same rate instead of in proportion to ``|H|^2``,
    which is what keeps plain gradient descent (and a network trained through ``H``) from
    recovering fine detail in few steps. Beyond Papkov et al. [1]_; ``ε`` plays the role of
    the regularisation of a Wiener/Landweber preconditioner.

    The weighted value is not the data's MSE, and it is not comparable between images: it is the
    MSE with each frequency counted ``W`` times (up to ``(1 + ε) / ε``, about 1000 for ``"auto"``,
    where the OTF is small but :func:`snr_gain` finds signal), so it grows with how much of the
    residual sits at such frequencies (the noise level, the PSF, the image). The normalisation is
    the same in 2D and 3D (``W = 1`` gives the plain MSE in both). Measured after 30 steps on the
    tests' phantoms (``TrainConfig.precondition="auto"``): 1.3 to 7 times the plain MSE in 2D and
    1.2 to 23 times in 3D, the factor rising as the noise falls (sigma 0.1 to 0.005).
    """
    if weight is None:
        return mse(data, blurred)
    residual = (blurred - data).float()
    nd = len(weight.fft_shape)
    spectrum = torch.fft.rfftn(residual, s=weight.fft_shape, dim=tuple(range(-nd, 0)))
    return torch.sum(weight.weight * (spectrum.real ** 2 + spectrum.imag ** 2)) / residual.numel()


def snr_gain(image, psf, max_side: int = 128, box: int = 5, margin: float = 1.5) -> np.ndarray | None:
    """The signal's share of ``image``'s power at each frequency, ``max(1 - margin·N/P, 0)``.

    ``P`` is the periodogram of the image's central crop (at most ``max_side`` per axis,
    mean removed, Hann-tapered), averaged over ``box`` bins per axis; ``N`` the white noise
    level measured where the PSF transmits nothing (:func:`deconv3d.fft.white_noise_variance`).
    ``margin`` keeps most of the periodogram's scatter around ``N`` from reading as signal,
    and the gain is 0 wherever the PSF transmits nothing (``|H|^2 < 1e-4 |H(0)|^2``).
    Returns the gain on the crop's full FFT grid, or ``None`` when the noise cannot be
    measured (a PSF that transmits every frequency of the crop). In 2D the ``box`` average
    holds fewer bins, so more scatter passes the margin (measured in 3D only).
    """
    x = np.asarray(image, dtype=np.float64)
    noise = white_noise_variance(x, psf, max_side=max_side)
    if noise is None:
        return None
    tapered, energy = tapered_crop(x, max_side)
    power = ndi.uniform_filter(np.abs(np.fft.fftn(tapered)) ** 2 / energy, size=box, mode="wrap")
    gain = np.clip(1.0 - margin * noise / np.maximum(power, 1e-30), 0.0, 1.0)
    h2 = np.abs(np.fft.fftn(np.asarray(psf, dtype=np.float64), s=tapered.shape, axes=tuple(range(x.ndim)))) ** 2
    gain[h2 < BLIND * h2.flat[0]] = 0.0  # no light reaches these frequencies: any excess there is scatter
    return gain



def invariance_term(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Noise2Same invariance ``sqrt(MSE_M(a, b))`` between the unmasked and masked passes."""
    return torch.sqrt(masked_mse(a, b, mask) + _SQRT_EPS)


def blind_spot_term(data: torch.Tensor, blurred_masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SSI blind-spot loss ``MSE_M(x, H f(x_m))``: the data at voxels the network did not see."""
    return masked_mse(data, blurred_masked, mask)


def bound_term(f: torch.Tensor, mean: float = 0.0, std: float = 1.0, detach_max: bool = True) -> torch.Tensor:
    """Range penalty ``mean(relu(-z) + relu(z - 1))**2`` with ``z = (f·std + mean) / max``.

    The maximum is taken over the whole tensor (all samples), clamped at a tiny positive
    value so that an all-negative output is strongly penalised rather than flipped in
    sign. With ``detach_max`` (default) the maximum is a constant for the gradient: the
    penalty then lifts negative values instead of being lowered by inflating the
    brightest voxel, which a differentiable maximum would also reward.

    Scaled by its own maximum, ``z`` never exceeds 1, so only the negative part acts: with a
    non-negative output (``UNetConfig.positive``, or the residual form's sum clamped at zero
    intensity) the term is 0.
    """
    z = f * std + mean
    peak = z.max()
    if detach_max:
        peak = peak.detach()
    z = z / peak.clamp_min(1e-6)
    return torch.mean(F.relu(-z) + F.relu(z - 1.0)) ** 2


def siamese_loss(
    data: torch.Tensor,
    f: torch.Tensor,
    f_masked: torch.Tensor,
    mask: torch.Tensor,
    blur: Callable[[torch.Tensor], torch.Tensor],
    region: Sequence[slice],
    weights: LossWeights = LossWeights(),
    *,
    mean: float = 0.0,
    std: float = 1.0,
    detach_max: bool = True,
    data_weight: SpectralWeight | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total Siamese blind-spot deconvolution loss and its terms.

    Parameters
    ----------
    data : torch.Tensor
        ``(N, 1, *data_shape)`` standardised image on the compared region.
    f, f_masked : torch.Tensor
        ``(N, 1, *field_shape)`` network outputs for the full and the masked input.
    mask : torch.Tensor
        ``(N, 1, *field_shape)`` bool blind-spot mask over the whole network input.
    blur : callable
        Forward model: field-sized ``f`` to the predicted data on the compared region,
        e.g. ``lambda f: ForwardModel.blur(f, region)``.
    region : sequence of slice
        The compared region inside the field (selects the mask voxels that count in
        the after-PSF and blind-spot terms).
    weights : LossWeights
        Term weights; terms with weight 0 are not computed.
    mean, std : float
        The image standardisation, to de-standardise ``f`` in the bound term.
    detach_max : bool
        See :func:`bound_term`.
    data_weight : SpectralWeight, optional
        Frequency weighting of the data term (see :func:`data_term`); ``None`` = plain MSE.

    Returns
    -------
    total : torch.Tensor
        Scalar loss.
    terms : dict of str to float
        Unweighted values of the active terms (``data``, ``inv_before``, ``inv_after``,
        ``bsp``, ``bound``) and ``total``, for logging.

    Notes
    -----
    The before-PSF invariance counts masked voxels anywhere in the network's output
    field (more voxels, a less noisy estimate; the field is real image context). The
    after-PSF and blind-spot terms count masked voxels inside the compared region only,
    where ``H f`` is defined. The bound term covers the whole output field of ``f(x)``.
    """
    w = weights
    inner = mask[(Ellipsis,) + tuple(region)]
    blurred = blur(f) if (w.data or w.inv_after) else None
    blurred_m = blur(f_masked) if (w.inv_after or w.bsp) else None
    terms: dict[str, torch.Tensor] = {}
    if w.data:
        terms["data"] = data_term(data, blurred, data_weight)
    if w.inv_before:
        terms["inv_before"] = invariance_term(f.float(), f_masked.float(), mask)
    if w.inv_after:
        terms["inv_after"] = invariance_term(blurred, blurred_m, inner)
    if w.bsp:
        terms["bsp"] = blind_spot_term(data, blurred_m, inner)
    if w.bound:
        terms["bound"] = bound_term(f.float(), mean, std, detach_max)
    if not terms:
        raise InputError("all loss weights are zero: nothing to train")
    total = sum(getattr(w, name) * value for name, value in terms.items())
    logged = {name: float(value.detach()) for name, value in terms.items()}
    logged["total"] = float(total.detach())
    return total, logged
