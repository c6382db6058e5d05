"""Loss of the Siamese blind-spot deconvolution network, and its forward model.

The network ``f`` maps a standardised image ``x`` to a standardised estimate of the
object; the forward model ``H f = PSF ⊛ f`` predicts the data. One training step runs
``f`` twice with shared weights, on ``x`` and on the masked copy ``x_m``
(:mod:`deconv3d.selfsup.masking`), and combines (``M`` = masked voxels)::

    L = λ_rec · MSE(x, H f(x))                                  data term, all voxels
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

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from deconv3d.errors import InputError
from deconv3d.fft import FFTConvolver, fast_shape
from deconv3d.selfsup.config import TrainConfig

__all__ = [
    "FieldGeometry", "ForwardModel", "LossWeights", "loss_weights", "mse", "masked_mse",
    "data_term", "invariance_term", "blind_spot_term", "bound_term", "siamese_loss",
]

_SQRT_EPS = 1e-12  # keeps the gradient of sqrt finite when both passes agree exactly


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
        full = torch.fft.irfftn(spectrum, s=fft, dim=dims)
        # A circular convolution of size >= n has no wrap-around at indices k-1 .. n-1.
        return full[(Ellipsis,) + tuple(slice(kk - 1, n) for kk, n in zip(k, ext))]

    def blur(self, f: torch.Tensor, region: Sequence[slice]) -> torch.Tensor:
        """Predicted data on ``region`` of the field of ``f``: ``valid(f[region + halo])``."""
        ext = tuple(slice(r.start - b, r.stop + a) for r, b, a in zip(region, self.halo_before, self.halo_after))
        if any(s.start < 0 or s.stop > n for s, n in zip(ext, f.shape[-self.ndim:])):
            raise InputError(f"region {tuple(region)} plus the PSF halo does not fit in the field {tuple(f.shape)}")
        return self.valid(f[(Ellipsis,) + ext])


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

    ``invariance`` picks the invariance term(s) with weight ``lambda_inv``
    (``config.invariance_weights``). The data term has weight 1, except in the SSI
    baseline (``invariance="none"`` with ``lambda_bsp > 0``) where, as in Kobayashi et
    al., only masked voxels train the network and the data term is off.
    """
    before, after = config.invariance_weights
    ssi = config.invariance == "none" and config.lambda_bsp > 0
    return LossWeights(0.0 if ssi else 1.0, before, after, config.lambda_bsp, config.lambda_bound)


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


def data_term(data: torch.Tensor, blurred: torch.Tensor) -> torch.Tensor:
    """``MSE(x, H f(x))`` over all voxels of the compared region."""
    return mse(data, blurred)


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
        terms["data"] = data_term(data, blurred)
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
