"""The UNet's receptive-field radius, derived from its layers, against an autograd probe."""

import numpy as np
import pytest
import torch

from deconv3d.selfsup.config import UNetConfig
from deconv3d.selfsup.unet import ResUNet, receptive_radius


def probed_radius(config: UNetConfig, seed: int = 0) -> int:
    """Widest input offset with a non-zero gradient, over one output voxel per pooling phase."""
    torch.manual_seed(seed)
    net = ResUNet(config).eval()
    size = 4 * receptive_radius(config) + 4 * config.divisor  # far from the zero-padded border
    reach = 0
    for phase in range(config.divisor):
        x = torch.rand((1, 1) + (size,) * config.ndim, generator=torch.Generator().manual_seed(phase),
                       requires_grad=True)
        centre = size // 2 + phase
        net(x)[(0, 0) + (centre,) * config.ndim].backward()
        support = np.argwhere(x.grad[0, 0].numpy() != 0)
        assert support.size, "every probed voxel responds"
        reach = max(reach, int(np.abs(support - centre).max()))
    return reach


@pytest.mark.parametrize("config", [
    UNetConfig(ndim=2, base_channels=4, depth=1),
    UNetConfig(ndim=2, base_channels=4, depth=2),
    UNetConfig(ndim=2, base_channels=4, depth=3),
    UNetConfig(ndim=2, base_channels=4, depth=2, blocks_per_level=2),
    UNetConfig(ndim=2, base_channels=4, depth=2, skip="concat"),
    UNetConfig(ndim=3, base_channels=2, depth=1),
], ids=repr)
def test_derived_radius_equals_probe(config):
    assert receptive_radius(config) == probed_radius(config)


def test_default_3d_network_radius():
    # Default 3D UNet (depth 3, one block per level): what the chunked pipeline's halo starts from.
    # Probing it takes about a minute on 2 cores; the 2D depth-3 case above has the same radius.
    assert receptive_radius(UNetConfig()) == receptive_radius(UNetConfig(ndim=2, depth=3)) == 52

