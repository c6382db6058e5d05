"""Residual UNet for 2D and 3D images (the Noise2Same backbone used by Papkov et al.).

Structure: a 3x3(x3) convolution lifts the single input channel to ``base_channels``;
each level holds residual blocks (conv-BN-ReLU-conv-BN plus identity, then ReLU);
strided 2x2(x2) convolutions halve the size and double the channels ``depth`` times;
transposed convolutions bring the size back and the encoder features join by addition
(or concatenation followed by a 1x1 convolution); a BN-ReLU-1x1 convolution head maps
to one output channel.

References
----------
.. [1] K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image
   recognition", CVPR 2016.
.. [2] O. Ronneberger, P. Fischer and T. Brox, "U-Net: convolutional networks for
   biomedical image segmentation", MICCAI 2015.
.. [3] Y. Xie, Z. Wang and S. Ji, "Noise2Same: optimizing a self-supervised bound for
   image denoising", NeurIPS 2020.
.. [4] K. Papkov, M. Palo and L. Parts, "Self-supervised single-image deconvolution
   with Siamese neural networks", arXiv:2308.09426 (2023).
"""

from __future__ import annotations

import torch
from torch import nn

from deconv3d._fft_shapes import pad_spatial
from deconv3d._torch_common import at_own_precision
from deconv3d.errors import InputError
from deconv3d.selfsup.config import UNetConfig

__all__ = ["ResUNet", "ResidualBlock", "pad_to_multiple", "receptive_radius"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class ResidualBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))`` with 3x3(x3) convolutions."""

    def __init__(self, ndim: int, channels: int):
        super().__init__()
        conv, norm = _CONV[ndim], _NORM[ndim]
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, bias=False), norm(channels), nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, bias=False), norm(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _blocks(ndim: int, channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(ndim, channels) for _ in range(n)])


class ResUNet(nn.Module):
    """Residual UNet mapping ``(N, 1, *spatial)`` to ``(N, 1, *spatial)``.

    Parameters
    ----------
    config : UNetConfig
        Dimensionality, base channels, depth, blocks per level and skip mode.

    Notes
    -----
    Spatial sizes must be multiples of ``config.divisor`` (``2**depth``); use
    :func:`pad_to_multiple` for arbitrary images. The output is the standardised
    estimate of the object: linear (the paper), or with ``config.positive``
    ``floor + softplus(raw - floor)``, where the buffer ``floor = -mean / std`` (set by
    training) is zero intensity, so that the estimate is never negative, as Richardson-Lucy's.

    Examples
    --------
    >>> net = ResUNet(UNetConfig(ndim=2, base_channels=4, depth=2))
    >>> tuple(net(torch.zeros(1, 1, 16, 8)).shape)
    (1, 1, 16, 8)
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        nd, depth, nb = config.ndim, config.depth, config.blocks_per_level
        ch = [config.base_channels * 2**i for i in range(depth + 1)]
        conv = _CONV[nd]
        self.stem = conv(1, ch[0], 3, padding=1)
        self.encoder = nn.ModuleList([_blocks(nd, ch[i], nb) for i in range(depth)])
        self.down = nn.ModuleList([conv(ch[i], ch[i + 1], 2, stride=2) for i in range(depth)])
        self.bottom = _blocks(nd, ch[depth], nb)
        self.up = nn.ModuleList([_UP[nd](ch[i + 1], ch[i], 2, stride=2) for i in range(depth)])
        merge = (lambda c: conv(2 * c, c, 1)) if config.skip == "concat" else (lambda c: nn.Identity())
        self.merge = nn.ModuleList([merge(ch[i]) for i in range(depth)])
        self.decoder = nn.ModuleList([_blocks(nd, ch[i], nb) for i in range(depth)])
        self.head = nn.Sequential(_NORM[nd](ch[0]), nn.ReLU(inplace=True), conv(ch[0], 1, 1))
        self.register_buffer("floor", torch.zeros(()))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is ``(N, 1, *spatial)`` with sizes divisible."""
        nd, div = self.config.ndim, self.config.divisor
        if x.ndim != nd + 2 or x.shape[1] != 1:
            raise InputError(f"network input must be shaped (N, 1, {'Z, ' if nd == 3 else ''}Y, X), "
                             f"got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % div for s in spatial):
            raise InputError(f"network input sizes {spatial} must be multiples of {div} (2**depth): "
                             "pad with pad_to_multiple()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.encoder, self.down):
            h = blocks(h)
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if self.config.skip == "concat":
                h = self.merge[i](torch.cat([h, skips[i]], dim=1))
            else:
                h = h + skips[i]
            h = self.decoder[i](h)
        out = at_own_precision(self.head, h)  # float32 under mixed precision
        if self.config.positive:
            out = self.floor + nn.functional.softplus(out - self.floor)
        return out


def receptive_radius(config: UNetConfig) -> int:
    """Largest distance, in voxels along an axis, from which an input voxel can change an output voxel.

    Derived from :class:`ResUNet`'s layers, not probed: a 3x3(x3) convolution widens the
    interval of inputs reaching a voxel by one cell of its level on each side, a strided 2x2(x2)
    convolution maps cells ``[a, b]`` of level ``i + 1`` to ``[2a, 2b + 1]`` of level ``i``, a
    transposed one maps ``[a, b]`` of level ``i`` to ``[a // 2, b // 2]`` of level ``i + 1``,
    and batch norm (in eval mode), ReLU and 1x1 convolutions keep it. The answer is the widest
    reach over the ``2**depth`` pooling phases of the output voxel, so it holds for every voxel.
    Weights can only make the true reach shorter, so this is a safe halo for tiled or chunked
    inference. Kernels are cubic, so the radius is the same along every axis.

    >>> receptive_radius(UNetConfig(ndim=2, depth=1))
    10
    """
    nb, depth = config.blocks_per_level, config.depth

    def widen(cells, r):
        return cells[0] - r, cells[1] + r

    def encoder_input(level, cells):  # the tensor entering ``level``'s encoder blocks -> input voxels
        if level == 0:
            return widen(cells, 1)  # the stem
        below = (2 * cells[0], 2 * cells[1] + 1)  # the strided down-sampling convolution
        return encoder_input(level - 1, widen(below, 2 * nb))  # the encoder blocks of the level below

    def decoder_output(level, cells):  # the output of ``level``'s decoder blocks (the bottom at ``depth``)
        cells = widen(cells, 2 * nb)  # two 3x3(x3) convolutions per residual block
        if level == depth:
            return encoder_input(depth, cells)
        skip = encoder_input(level, widen(cells, 2 * nb))
        up = decoder_output(level + 1, (cells[0] // 2, cells[1] // 2))  # the transposed convolution
        return min(skip[0], up[0]), max(skip[1], up[1])

    reach = 0
    for phase in range(config.divisor):
        first, last = decoder_output(0, (phase, phase))
        reach = max(reach, phase - first, last - phase)
    return reach


def pad_to_multiple(x: torch.Tensor, divisor: int, mode: str = "reflect", ndim: int | None = None):
    """Pad the spatial axes of ``x`` up to multiples of ``divisor``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` tensor (``ndim`` spatial axes, by default ``x.ndim - 2``).
    divisor : int
        Required multiple, e.g. ``UNetConfig.divisor``.
    mode : {"reflect", "replicate", "zero"}
        Padding mode; reflection falls back to replicating the edge where an axis is
        too short to mirror.
    ndim : int, optional
        Number of trailing spatial axes.

    Returns
    -------
    padded : torch.Tensor
        The padded tensor; the extra voxels are split evenly before and after.
    crop : tuple of slice
        Index (with a leading ``Ellipsis``) that recovers the original region from a
        tensor of the padded size, e.g. ``net(padded)[crop]``.

    Examples
    --------
    >>> y, crop = pad_to_multiple(torch.zeros(1, 1, 5, 8), 4)
    >>> tuple(y.shape), tuple(y[crop].shape)
    ((1, 1, 8, 8), (1, 1, 5, 8))
    """
    nd = x.ndim - 2 if ndim is None else int(ndim)
    if divisor < 1 or nd < 1:
        raise InputError(f"divisor must be positive and x must have spatial axes, got {divisor}, {tuple(x.shape)}")
    spatial = tuple(x.shape[-nd:])
    extra = [(-n) % divisor for n in spatial]
    before = [e // 2 for e in extra]
    after = [e - b for e, b in zip(extra, before)]
    crop = (Ellipsis,) + tuple(slice(b, b + n) for b, n in zip(before, spatial))
    if not any(extra):
        return x, crop
    return pad_spatial(x, before, after, mode), crop
