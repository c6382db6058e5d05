"""Linear-latent autoencoders for defocus blur synthesis and deblurring.

Mazilu, Wang, Dummer, Veldhuis, Brune & Strisciuglio (2023), "Defocus Blur Synthesis and
Deblurring via Interpolation and Extrapolation in Latent Space", CAIP 2023,
arXiv:2307.15461: an autoencoder trained so that the latents of the planes of a focal
stack lie on a line, whence ``D((1 - a) E(x_far) + a E(x_near))`` synthesises blur levels
and ``D(E(x_k) / (1 - alpha) - alpha E(x_far) / (1 - alpha))`` deblurs.

Modules: :mod:`~deconv3d.latent.model` (network), :mod:`~deconv3d.latent.losses`
(objectives), :mod:`~deconv3d.latent.data` (levels, triplets, synthetic stacks),
:mod:`~deconv3d.latent.train`, :mod:`~deconv3d.latent.ops` (synthesis, deblurring),
:mod:`~deconv3d.latent.encoding` (planes to latents and back, latent arithmetic) and
:mod:`~deconv3d.latent.checkpoint`.
"""

from deconv3d.latent.checkpoint import TrainedAutoencoder, load_checkpoint, save_checkpoint
from deconv3d.latent.data import synthetic_focal_stacks
from deconv3d.latent.model import AEConfig, Autoencoder
from deconv3d.latent.ops import deblur, synthesize_blur
from deconv3d.latent.train import LatentTrainConfig, LatentTrainResult, train

__all__ = ["AEConfig", "Autoencoder", "LatentTrainConfig", "LatentTrainResult", "TrainedAutoencoder", "train",
           "synthesize_blur", "deblur", "save_checkpoint", "load_checkpoint", "synthetic_focal_stacks"]
