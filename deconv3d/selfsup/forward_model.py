"""The forward model of self-supervised training: ``H f = PSF ⊛ f`` on the network's field.

Light from outside the field: the data are compared on a region of the network's
field; ``f`` is evaluated on that region extended by the PSF halo (and more, up to a
multiple of the UNet divisor) and ``H f`` is the *valid* part of the convolution, so
light from objects just outside the compared region is modelled (as in the Bertero
boundary of :func:`deconv3d.classical.richardson_lucy`). :meth:`ForwardModel.data_weight`
gives the frequency weight of the data term (:func:`deconv3d.selfsup.losses.data_term`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from deconv3d._fft_shapes import fast_shape, irfftn
from deconv3d.errors import InputError
from deconv3d.fft import FFTConvolver

__all__ = ["FieldGeometry", "ForwardModel", "SpectralWeight"]


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
        """The :class:`SpectralWeight` of :func:`~deconv3d.selfsup.losses.data_term` for regions of ``data_shape``.

        The residual is zero-padded to a fast FFT size at least the region plus the PSF, and
        its frequencies are weighted by ``(1 + eps) / (|H|^2 + eps)``: 1 at zero frequency,
        ``(1 + eps) / eps`` where the OTF vanishes. ``gain`` (:func:`~deconv3d.selfsup.losses.snr_gain`, on any full
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


def _resample_gain(gain: np.ndarray, fft_shape: Sequence[int]) -> np.ndarray:
    """``gain`` (a full FFT grid) at the frequencies of an rfftn half-grid of ``fft_shape`` (nearest bin)."""
    index = []
    for axis, n in enumerate(fft_shape):
        bins = np.arange(n // 2 + 1 if axis == len(fft_shape) - 1 else n)
        signed = np.where(bins > n // 2, bins - n, bins)
        index.append(np.round(signed / n * gain.shape[axis]).astype(int) % gain.shape[axis])
    return gain[np.ix_(*index)]
