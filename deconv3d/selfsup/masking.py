"""Stratified blind-spot masks for self-supervised training.

A small, random, evenly spread subset of voxels is hidden from the network: the
volume is tiled with boxes of side ``b`` and one voxel is picked at random inside
every box, so that the density is about ``1 / b**ndim``. The network sees the
hidden voxels replaced by Gaussian noise; losses evaluated at those voxels then
cannot be reduced by copying the input (J-invariance).

References
----------
.. [1] A. Krull, T.-O. Buchholz and F. Jug, "Noise2Void - learning denoising from
   single noisy images", CVPR 2019 (stratified random masking).
.. [2] Y. Xie, Z. Wang and S. Ji, "Noise2Same: optimizing a self-supervised bound for
   image denoising", NeurIPS 2020 (masked voxels replaced by Gaussian noise).
.. [3] K. Papkov, M. Palo and L. Parts, "Self-supervised single-image deconvolution
   with Siamese neural networks", arXiv:2308.09426 (2023).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from deconv3d.errors import InputError

__all__ = ["box_size", "stratified_mask", "apply_mask"]


def box_size(percent: float, ndim: int) -> int:
    """Side of the box that holds one masked voxel for a mask density of ``percent``.

    Parameters
    ----------
    percent : float
        Fraction of masked voxels, in percent (0 < percent < 100).
    ndim : int
        Number of spatial dimensions.

    Returns
    -------
    int
        ``round((100 / percent) ** (1 / ndim))``, at least 1.

    Examples
    --------
    >>> box_size(0.5, 2), box_size(0.5, 3)
    (14, 6)
    """
    if not 0 < percent < 100:
        raise InputError(f"mask percent must be in (0, 100), got {percent}")
    if ndim < 1:
        raise InputError(f"mask needs at least one spatial dimension, got {ndim}")
    return max(1, int(round((100.0 / percent) ** (1.0 / ndim))))


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def stratified_mask(
    shape: Sequence[int],
    percent: float = 0.5,
    generator: torch.Generator | None = None,
    device="cpu",
    batch: int | None = None,
) -> torch.Tensor:
    """Boolean blind-spot mask with one random voxel per box of side :func:`box_size`.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the mask.
    percent : float, optional
        Mask density in percent (0.5 by default, as in Noise2Same and Papkov et al.).
    generator : torch.Generator, optional
        Source of randomness; draws happen on the generator's device and are moved
        to ``device`` (use a generator on ``device`` to avoid the transfer).
    device : str or torch.device, optional
        Device of the returned mask.
    batch : int, optional
        If given, return ``batch`` independent masks shaped ``(batch, 1, *shape)``.

    Returns
    -------
    torch.Tensor
        Bool tensor, ``shape`` or ``(batch, 1, *shape)``. Every full box holds exactly
        one ``True``; boxes cut by the far border hold at most one.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> int(stratified_mask((28, 28), 0.5, g).sum())
    4
    """
    shape = tuple(int(s) for s in shape)
    b = box_size(percent, len(shape))
    counts = tuple(math.ceil(n / b) for n in shape)
    lead = (int(batch),) if batch is not None else ()
    offsets = torch.randint(0, b, lead + counts + (len(shape),), generator=generator,
                            device=_generator_device(generator)).to(device)
    corners = torch.stack(torch.meshgrid(*[torch.arange(c, device=device) * b for c in counts], indexing="ij"), -1)
    coords = corners + offsets
    inside = (coords < torch.tensor(shape, device=device)).all(-1)
    mask = torch.zeros(lead + shape, dtype=torch.bool, device=device)
    index = tuple(coords[inside].unbind(-1))
    if batch is not None:
        sample = torch.arange(batch, device=device).view((-1,) + (1,) * len(shape)).expand(lead + counts)
        index = (sample[inside],) + index
    mask[index] = True
    return mask.unsqueeze(1) if batch is not None else mask


def apply_mask(
    x: torch.Tensor, mask: torch.Tensor, noise_std: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace the masked voxels of ``x`` by ``N(0, noise_std**2)`` noise.

    Parameters
    ----------
    x : torch.Tensor
        Standardised input, e.g. ``(N, C, *spatial)``.
    mask : torch.Tensor
        Bool mask broadcastable to ``x`` (``spatial`` or ``(N, 1, *spatial)``).
    noise_std : float, optional
        Standard deviation of the replacement noise (0.2 in standardised units).
    generator : torch.Generator, optional
        Source of the noise (drawn on the generator's device).

    Returns
    -------
    torch.Tensor
        ``where(mask, noise, x)``: a new tensor; the gradient with respect to ``x`` is
        exactly zero at masked voxels.
    """
    if mask.dtype != torch.bool:
        raise InputError(f"mask must be a bool tensor, got {mask.dtype}")
    noise = torch.randn(x.shape, generator=generator, device=_generator_device(generator), dtype=x.dtype)
    noise = noise.to(x.device).mul_(noise_std)
    return torch.where(mask.to(x.device), noise, x)
