"""A chunked ssl run takes its halo from the UNet's layers: no probe, and at least the probed reach."""

import numpy as np
import torch

from deconv3d.selfsup.unet import receptive_radius


def test_network_block_context_covers_the_trained_network():
    from deconv3d.pipeline import NetworkBlock
    from deconv3d.selfsup import TrainConfig, UNetConfig, train

    from .conftest import blurred_beads, gaussian_psf

    psf = gaussian_psf((5, 5), (1.0, 1.0))
    image = blurred_beads((48, 48), psf, seed=3, count=20)
    unet = UNetConfig(ndim=2, base_channels=4, depth=2)
    result = train(image, psf, config=TrainConfig(steps=2, patch=16, batch=2, residual=False), unet=unet,
                   device="cpu")
    block = NetworkBlock(result, band_limit=None)
    assert block.context == receptive_radius(unet) == 24  # above the PSF half-size, on the pooling grid (4)
    # The trained network's outputs feel no input further away than that.
    model = block.trained.model.eval()
    x = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(0), requires_grad=True)
    model(x)[0, 0, 48, 49].backward()
    support = np.argwhere(x.grad[0, 0].numpy() != 0)
    assert support.size and np.abs(support - [48, 49]).max() <= block.context
