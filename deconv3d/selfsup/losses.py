"""Loss of the Siamese blind-spot deconvolution network, and its forward model.

The network ``f`` maps a standardised image ``x`` to a standardised estimate of the
object; the forward model ``H f = PSF ⊛ f`` predicts the data. One training step runs
``f`` twice with shared weights, on ``x`` and on the masked copy ``x_m``
(:mod:`deconv3d.selfsup.masking`), and combines (``M`` = masked voxels)::

    L = λ_rec · MSE(x, H f(x))                                  data term, all voxels
                 (optionally Wiener-weighted: :func:`data_term`)
      + λ_inv · sqrt(MSE_M(f(x), f(x_m)))                       invariance before the PSF
      + λ_inv_psf · sqrt(MSE_M(H f(x), H f(x_m)))               invariance after the PSF
      + λ_bsp · MSE_M(x, H f(x_m))                              SSI blind-spot term
      + λ_bound · mean(relu(-z) + relu(z - 1))**2               bound, z = (f·std + mean) / max

Light from outside the field: the data are compared on a region of the network's
field; ``f`` is evaluated on that region extended by the PSF halo (and more, up to a
multiple of the UNet divisor) and ``H f`` is the *valid* part of the convolution, so
light from objects just outside the compared region is modelled (as in the Bertero
boundary of :func:`deconv3d.classical.richardson_lucy`).

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

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from deconv3d._fft_shapes import fast_shape, irfftn
from deconv3d._spectral import BLIND, tapered_crop, white_noise_variance
from deconv3d.errors import InputError
from deconv3d.fft import FFTConvolver
from deconv3d.selfsup.config import TrainConfig

__all__ = [
    "FieldGeometry", "ForwardModel", "SpectralWeight", "LossWeights", "loss_weights", "mse", "masked_mse",
    "data_term", "snr_gain", "AUTO_EPS", "invariance_term", "blind_spot_term", "bound_term", "siamese_loss",
]

_SQRT_EPS = 1e-12  # keeps the gradient of sqrt finite when both passes agree exactly
AUTO_EPS = 1e-3  # eps of TrainConfig(precondition="auto"), with the weight gated by the image's SNR


# ------------------------------------------------------------------ forward model ---


@dataclass(frozen=True)
class FieldGeometry:
    """Where the compared data region sits inside the network's field.

    ``field_shape`` is the network input size (multiple of the divisor); ``region`` the
    slices of the compared region inside it; ``before``/``after`` the field margins
    around the region (at least the PSF halo on each side).
    """

    field_shape: tuple[int, ...]
    region: tuple[slice, ...]

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.region)

    @property
    def before(self) -> tuple[int, ...]:
        return tuple(s.start for s in self.region)

    @property
    def after(self) -> tuple[int, ...]:
        return tuple(n - s.stop for n, s in zip(self.field_shape, self.region))


class ForwardModel:
    """``PSF ⊛ f`` restricted to the voxels whose whole PSF footprint lies in ``f``.

    Parameters
    ----------
    psf : array_like or torch.Tensor
        The PSF (used as given: normalise it to unit sum first).
    device : str or torch.device, optional
        Where the OTF lives and the convolution runs.

    Notes
    -----
    With the kernel origin ``o = (k - 1) // 2`` (:func:`deconv3d.fft.kernel_origin`), data
    voxel ``i`` sees ``f`` from ``i - (k - 1 - o)`` to ``i + o``: the halo is
    ``k - 1 - o`` voxels before and ``o`` after (equal for odd ``k``). :meth:`valid`
    equals ``scipy.signal.fftconvolve(f, psf, mode="valid")``. The FFT runs in float32
    whatever the input dtype (mixed precision stays inside the network).

    Examples
    --------
    >>> import numpy as np
    >>> fm = ForwardModel(np.full((3, 3), 1 / 9, np.float32))
    >>> geom = fm.geometry((5, 5), divisor=4)
    >>> geom.field_shape, fm.halo_before
    ((8, 8), (1, 1))
    """

    def __init__(self, psf, device="cpu"):
        self.conv = FFTConvolver(psf, device=device, dtype=torch.float32)
        self.ndim = self.conv.ndim
        self.psf_shape = tuple(self.conv.psf.shape)
        self.halo_before = tuple(k - 1 - o for k, o in zip(self.psf_shape, self.conv.origin))
        self.halo_after = tuple(self.conv.origin)
        self._weights: dict = {}

    def data_weight(self, data_shape: Sequence[int], eps: float, gain: np.ndarray | None = None) -> "SpectralWeight":
        """The :class:`SpectralWeight` of :func:`data_term` for regions of ``data_shape``.

        The residual is zero-padded to a fast FFT size at least the region plus the PSF, and
        its frequencies are weighted by ``(1 + eps) / (|H|^2 + eps)``: 1 at zero frequency,
        ``(1 + eps) / eps`` where the OTF vanishes. ``gain`` (:func:`snr_gain`, on any full
        FFT grid) multiplies the weight at the nearest frequency: the residual then counts
        only where the image holds signal above its noise. Cached per (shape, eps) without gain.
        """
        key = (tuple(int(n) for n in data_shape), float(eps))
        if key not in self._weights:
            fft = fast_shape([n + k - 1 for n, k in zip(key[0], self.psf_shape)])
            h2 = self.conv.otf(fft, (0,) * self.ndim).abs() ** 2  # |H|^2 does not depend on the origin
            h2 = h2 / h2.flatten()[0].clamp_min(1e-30)  # |H(0)| = 1 whatever the PSF's sum
            weight = (1.0 + eps) / (h2 + eps)
            # Hermitian multiplicity of the half spectrum and Parseval's 1/N, folded in once.
            count = torch.full((fft[-1] // 2 + 1,), 2.0, device=weight.device)
            count[0] = 1.0
            if fft[-1] % 2 == 0:
                count[-1] = 1.0
            self._weights[key] = SpectralWeight(fft, (weight * count / math.prod(fft)).float())
        base = self._weights[key]
        if gain is None:
            return base
        resampled = torch.from_numpy(_resample_gain(np.asarray(gain), base.fft_shape)).to(base.weight)
        return SpectralWeight(base.fft_shape, base.weight * resampled)

    @property
    def device(self) -> torch.device:
        return self.conv.device

    def geometry(self, data_shape: Sequence[int], divisor: int = 1) -> FieldGeometry:
        """Field that holds ``data_shape`` plus the PSF halo, rounded up to ``divisor``.

        The extra voxels of the rounding are split evenly around the halo-extended region.
        """
        if len(data_shape) != self.ndim:
            raise InputError(f"data region {tuple(data_shape)} and PSF {self.psf_shape} differ in dimensions")
        field, region = [], []
        for n, b, a in zip(data_shape, self.halo_before, self.halo_after):
            need = int(n) + b + a
            size = -(-need // divisor) * divisor
            start = b + (size - need) // 2
            field.append(size)
            region.append(slice(start, start + int(n)))
        return FieldGeometry(tuple(field), tuple(region))

    def valid(self, f: torch.Tensor) -> torch.Tensor:
        """Valid part of ``PSF ⊛ f`` over the last ``ndim`` axes (size ``n - k + 1``)."""
        nd, k = self.ndim, self.psf_shape
        ext = tuple(f.shape[-nd:])
        out = tuple(n - kk + 1 for n, kk in zip(ext, k))
        if min(out) < 1:
            raise InputError(f"field {ext} is smaller than the PSF {k}: enlarge the field")
        fft = fast_shape(ext)
        dims = self.conv.dims
        spectrum = torch.fft.rfftn(f.float(), s=fft, dim=dims) * self.conv.otf(fft, (0,) * nd)
        full = irfftn(spectrum, fft, dims)
        # A circular convolution of size >= n has no wrap-around at indices k-1 .. n-1.
        return full[(Ellipsis,) + tuple(slice(kk - 1, n) for kk, n in zip(k, ext))]

    def blur(self, f: torch.Tensor, region: Sequence[slice]) -> torch.Tensor:
        """Predicted data on ``region`` of the field of ``f``: ``valid(f[region + halo])``."""
        ext = tuple(slice(r.start - b, r.stop + a) for r, b, a in zip(region, self.halo_before, self.halo_after))
        if any(s.start < 0 or s.stop > n for s, n in zip(ext, f.shape[-self.ndim:])):
            raise InputError(f"region {tuple(region)} plus the PSF halo does not fit in the field {tuple(f.shape)}")
        return self.valid(f[(Ellipsis,) + ext])


@dataclass(frozen=True)
class SpectralWeight:
    """A frequency weighting of the data term: FFT shape and half-spectrum weight (Parseval-scaled)."""

    fft_shape: tuple[int, ...]
    weight: torch.Tensor


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


def _resample_gain(gain: np.ndarray, fft_shape: Sequence[int]) -> np.ndarray:
    """``gain`` (a full FFT grid) at the frequencies of an rfftn half-grid of ``fft_shape`` (nearest bin)."""
    index = []
    for axis, n in enumerate(fft_shape):
        bins = np.arange(n // 2 + 1 if axis == len(fft_shape) - 1 else n)
        signed = np.where(bins > n // 2, bins - n, bins)
        index.append(np.round(signed / n * gain.shape[axis]).astype(int) % gain.shape[axis])
    return gain[np.ix_(*index)]


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
