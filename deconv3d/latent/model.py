"""Deterministic convolutional autoencoder whose latent space is trained to be linear in blur.

The paper's model (Mazilu et al. 2023) is a plain autoencoder on single-channel 2D planes:
the encoder stacks ``Conv3x3(stride 2) -> BatchNorm -> LeakyReLU`` blocks (widths 64, 128,
256, 512, 1024: a 128x128 plane becomes a 1024x4x4 latent), the decoder mirrors it with
``ConvTranspose3x3(stride 2) -> BatchNorm -> LeakyReLU`` blocks and ends in a 3x3
convolution and a sigmoid (planes are min-max normalised to [0, 1]).

Beyond the paper, ``AEConfig(skip_interp=True)`` gives a UNet-like variant: the encoder
features at every scale are part of the latent, and the decoder joins each upsampled map
with the (combined) encoder features of the same scale by concatenation. Latent arithmetic
stays linear because every linear combination is applied to every tensor of the latent
with the same coefficients (:func:`deconv3d.latent.encoding.lincomb`), so fine detail that a
4x4 bottleneck cannot hold is carried through the skip features.

A latent is always a tuple of tensors: ``(bottleneck,)`` for the plain autoencoder and
``(f_1, ..., f_L)`` (finest first, bottleneck last) for the skip variant.

References
----------
.. [1] P. Mazilu, H. Wang, S. Dummer, R. Veldhuis, C. Brune and N. Strisciuglio,
   "Defocus blur synthesis and deblurring via interpolation and extrapolation in latent
   space", CAIP 2023, arXiv:2307.15461.
.. [2] O. Ronneberger, P. Fischer and T. Brox, "U-Net: convolutional networks for
   biomedical image segmentation", MICCAI 2015.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
from torch import nn

from deconv3d._arrays import is_whole
from deconv3d._torch_common import at_own_precision
from deconv3d.errors import InputError

__all__ = ["AEConfig", "Autoencoder", "Latent", "PAPER_WIDTHS", "build_autoencoder", "config_from_dict",
           "config_to_dict"]

Latent = tuple  # tuple[torch.Tensor, ...]

#: Channel widths of the paper's encoder (input 128x128 -> latent 1024x4x4).
PAPER_WIDTHS = (64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class AEConfig:
    """Shape of the autoencoder.

    Parameters
    ----------
    widths : tuple of int
        Output channels of the encoder blocks, finest first; each block halves the size.
        The default is a CPU-sized version of the paper's ``PAPER_WIDTHS``.
    crop : int
        Side of the square training crops (the paper: 128); a multiple of ``divisor``.
    skip_interp : bool
        ``False``: the paper's plain autoencoder (latent = bottleneck). ``True``: the
        encoder features of every scale belong to the latent and feed the decoder
        through skip connections.
    """

    widths: tuple = (32, 64, 128, 256)
    crop: int = 64
    skip_interp: bool = False

    def __post_init__(self):
        try:
            if isinstance(self.widths, (str, bytes)) or any(isinstance(w, bool) or int(w) != w for w in self.widths):
                raise ValueError
            widths = tuple(int(w) for w in self.widths)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"widths must be a sequence of positive integers, got {self.widths!r}") from None
        if not widths or min(widths) < 1:
            raise InputError(f"widths must be a non-empty sequence of positive integers, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        if not is_whole(self.crop):  # (16.5 became 16)
            raise InputError(f"crop must be a whole number of pixels, got {self.crop!r}: give e.g. 64")
        if int(self.crop) < 1 or int(self.crop) % self.divisor:
            d, below = self.divisor, int(self.crop) // self.divisor * self.divisor
            nearest = f"{below} or {below + d}" if below else f"{d}"
            raise InputError(f"crop {self.crop} must be a positive multiple of {d} (the autoencoder halves the "
                             f"planes once per width, {len(widths)} widths): give crop {nearest}, or fewer widths")
        object.__setattr__(self, "crop", int(self.crop))
        object.__setattr__(self, "skip_interp", bool(self.skip_interp))

    @property
    def divisor(self) -> int:
        """Plane sides fed to the network must be multiples of this (``2**len(widths)``)."""
        return 2 ** len(self.widths)


def config_from_dict(data: dict) -> AEConfig:
    """Rebuild an :class:`AEConfig` from a plain dict, ignoring unknown keys."""
    names = {f.name for f in fields(AEConfig)}
    return AEConfig(**{k: v for k, v in dict(data).items() if k in names})


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU())


class Autoencoder(nn.Module):
    """Convolutional autoencoder mapping ``(N, 1, H, W)`` planes in [0, 1] to themselves.

    Parameters
    ----------
    config : AEConfig
        Widths, training crop and the skip-interpolation switch.

    Notes
    -----
    ``H`` and ``W`` must be multiples of ``config.divisor``. :meth:`encode` returns a
    tuple of tensors (see the module docstring); :meth:`decode` accepts any tuple of the
    same shapes, e.g. a linear combination of encodings.

    Examples
    --------
    >>> ae = Autoencoder(AEConfig(widths=(4, 8), crop=16))
    >>> z = ae.encode(torch.rand(2, 1, 16, 16))
    >>> [tuple(t.shape) for t in z], tuple(ae.decode(z).shape)
    ([(2, 8, 4, 4)], (2, 1, 16, 16))
    """

    def __init__(self, config: AEConfig = AEConfig()):
        super().__init__()
        self.config = config
        # The form it was trained in (LatentTrainConfig.residual), set by train() and load_checkpoint from the
        # checkpoint's training config; None for a network that does not know, which deconv3d.latent.ops then
        # applies in the paper's plain form.
        self.residual: Optional[bool] = None
        w = config.widths
        self.encoder = nn.ModuleList(_down(c_in, c_out) for c_in, c_out in zip((1,) + w[:-1], w))
        ups = []
        for i in reversed(range(len(w))):
            c_in = w[i] * (2 if config.skip_interp and i < len(w) - 1 else 1)
            ups.append(_up(c_in, w[max(i - 1, 0)]))
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Sequential(nn.Conv2d(w[0], 1, 3, padding=1), nn.Sigmoid())

    @property
    def divisor(self) -> int:
        return self.config.divisor

    def _check_planes(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 1:
            raise InputError(f"the autoencoder takes (N, 1, H, W) planes, got shape {tuple(x.shape)}")
        if x.shape[-2] % self.divisor or x.shape[-1] % self.divisor:
            raise InputError(f"plane size {tuple(x.shape[-2:])} is not a multiple of {self.divisor}: "
                             "pad or crop the planes (deconv3d.latent.ops pads them for you)")

    def encode(self, x: torch.Tensor) -> Latent:
        """Latent of a batch of planes: ``(bottleneck,)`` or all encoder features."""
        self._check_planes(x)
        features = []
        for block in self.encoder:
            x = block(x)
            features.append(x)
        return tuple(features) if self.config.skip_interp else (features[-1],)

    def decode(self, z: Latent) -> torch.Tensor:
        """Planes in [0, 1] from a latent (a tuple as returned by :meth:`encode`)."""
        z = tuple(z) if isinstance(z, (tuple, list)) else (z,)
        expected = len(self.encoder) if self.config.skip_interp else 1
        if len(z) != expected:
            raise InputError(f"latent has {len(z)} tensors but this autoencoder expects {expected}")
        x = z[-1]
        for k, block in enumerate(self.decoder):
            if k > 0 and self.config.skip_interp:
                x = torch.cat([x, z[-1 - k]], dim=1)
            x = block(x)
        return at_own_precision(self.head, x)  # float32 under mixed precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_autoencoder(config: AEConfig = AEConfig(), seed: int = 0, device="cpu") -> Autoencoder:
    """An :class:`Autoencoder` initialised from ``seed`` (the global RNG is left untouched)."""
    from deconv3d._torch_common import build_seeded

    return build_seeded(lambda: Autoencoder(config), seed).to(device)


def config_to_dict(config: AEConfig) -> dict:
    """Plain-dict form of a config (tuples become lists) for checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
