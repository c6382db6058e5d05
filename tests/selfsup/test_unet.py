import numpy as np
import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.selfsup.config import UNetConfig
from deconv3d.selfsup.unet import ResUNet, pad_to_multiple


@pytest.mark.parametrize("skip", ["add", "concat"])
@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 16, 24)), (3, (2, 1, 8, 16, 8))])
def test_output_shape_equals_input(ndim, shape, skip):
    torch.manual_seed(0)
    net = ResUNet(UNetConfig(ndim=ndim, base_channels=4, depth=2, blocks_per_level=1, skip=skip))
    out = net(torch.randn(shape))
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_concat_skips_add_merge_convolutions():
    add = ResUNet(UNetConfig(ndim=2, base_channels=4, depth=2))
    cat = ResUNet(UNetConfig(ndim=2, base_channels=4, depth=2, skip="concat"))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(cat) > n(add)


def test_depth_and_blocks_change_the_network():
    small = ResUNet(UNetConfig(ndim=3, base_channels=4, depth=1))
    deep = ResUNet(UNetConfig(ndim=3, base_channels=4, depth=3, blocks_per_level=2))
    assert len(deep.down) == 3 and len(deep.encoder[0]) == 2 and len(small.down) == 1
    assert deep(torch.zeros(2, 1, 8, 8, 8)).shape == (2, 1, 8, 8, 8)  # batch 2: BN needs >1 value


@pytest.mark.parametrize("shape", [(1, 1, 12, 16), (1, 2, 16, 16), (1, 16, 16), (1, 1, 16, 16, 16)])
def test_bad_input_gives_input_error(shape):
    net = ResUNet(UNetConfig(ndim=2, base_channels=4, depth=3))
    with pytest.raises(InputError):
        net(torch.zeros(shape))


@pytest.mark.parametrize("spatial, divisor", [((5, 8), 4), ((9, 10, 3), 8), ((16, 16), 8)])
def test_pad_to_multiple_pads_and_crops_back(spatial, divisor):
    x = torch.randn((2, 1) + spatial, generator=torch.Generator().manual_seed(0))
    y, crop = pad_to_multiple(x, divisor)
    assert all(n % divisor == 0 for n in y.shape[2:])
    assert all(0 <= m - n < divisor for m, n in zip(y.shape[2:], spatial))
    assert torch.equal(y[crop], x)


def test_pad_to_multiple_reflects_like_numpy():
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    y, crop = pad_to_multiple(x, 4)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 2), (1, 1)), mode="reflect")
    np.testing.assert_array_equal(y.numpy(), ref)


def test_pad_to_multiple_falls_back_to_replicate_on_tiny_axes():
    x = torch.arange(3.0).reshape(1, 1, 1, 3)
    y, crop = pad_to_multiple(x, 8)
    assert y.shape == (1, 1, 8, 8)
    assert torch.equal(y[crop], x)
    assert torch.equal(y[0, 0, :, 0], torch.full((8,), y[0, 0, 0, 0].item()))  # constant along the 1-voxel axis


def test_network_runs_on_padded_odd_image():
    net = ResUNet(UNetConfig(ndim=3, base_channels=4, depth=2)).eval()
    x = torch.randn(1, 1, 7, 9, 10)
    y, crop = pad_to_multiple(x, net.config.divisor)
    with torch.no_grad():
        assert net(y)[crop].shape == x.shape


def test_positive_output_never_below_the_floor():
    torch.manual_seed(0)
    net = ResUNet(UNetConfig(ndim=2, base_channels=4, depth=2, positive=True)).eval()
    net.floor.fill_(-0.7)
    plain = ResUNet(UNetConfig(ndim=2, base_channels=4, depth=2, positive=False)).eval()
    plain.load_state_dict(net.state_dict())
    x = 3 * torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out, raw = net(x), plain(x)
    assert out.min().item() >= -0.7
    expected = -0.7 + torch.nn.functional.softplus(raw + 0.7)
    torch.testing.assert_close(out, expected)
