"""Loss terms against hand-computed values; the forward model against scipy; the blind spot."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from deconv3d.errors import InputError
from deconv3d.selfsup.config import TrainConfig, UNetConfig
from deconv3d.selfsup.losses import (ForwardModel, LossWeights, blind_spot_term, bound_term, invariance_term,
                                     loss_weights, masked_mse, siamese_loss)
from deconv3d.selfsup.masking import apply_mask, stratified_mask
from deconv3d.selfsup.unet import ResUNet


def t(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)


def test_masked_mse_and_invariance_by_hand():
    a, b = t([1.0, 2.0, 3.0, 4.0]), t([1.0, 0.0, 3.0, 1.0])
    mask = torch.tensor([False, True, False, True]).reshape(1, 1, -1)
    # masked voxels: differences 2 and 3 -> (4 + 9) / 2 = 6.5
    assert masked_mse(a, b, mask).item() == pytest.approx(6.5)
    assert invariance_term(a, b, mask).item() == pytest.approx(math.sqrt(6.5), rel=1e-6)
    assert blind_spot_term(a, b, mask).item() == pytest.approx(6.5)
    assert masked_mse(a, b, torch.zeros_like(mask)).item() == 0.0


def test_bound_term_by_hand():
    f = t([-1.0, 0.0, 1.0, 3.0])  # standardised
    # de-standardised with mean 1, std 2: z = [-1, 1, 3, 7]; max 7 -> z/7 = [-1/7, 1/7, 3/7, 1]
    # relu(-z) = [1/7, 0, 0, 0], relu(z - 1) = 0 -> mean 1/28, squared
    assert bound_term(f, mean=1.0, std=2.0).item() == pytest.approx((1 / 28) ** 2, rel=1e-6)
    assert bound_term(t([0.5, 1.0]), 0.0, 1.0).item() == 0.0


def test_siamese_loss_combines_terms_with_weights():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(1, 1, 6, generator=g)
    fm = f + 0.5 * torch.rand(1, 1, 6, generator=g)
    data = torch.rand(1, 1, 4, generator=g)
    mask = torch.tensor([True, False, False, True, True, False]).reshape(1, 1, -1)
    region = (slice(1, 5),)
    blur = lambda x: 0.5 * (x[..., 0:4] + x[..., 2:6])  # noqa: E731 - a 3-tap valid "PSF" [0.5, 0, 0.5]
    w = LossWeights(data=1.0, inv_before=2.0, inv_after=3.0, bsp=4.0, bound=5.0)
    total, terms = siamese_loss(data, f, fm, mask, blur, region, w)
    bf, bfm = blur(f).numpy().ravel(), blur(fm).numpy().ravel()
    fn, fmn, d, m = f.numpy().ravel(), fm.numpy().ravel(), data.numpy().ravel(), mask.numpy().ravel()
    inner = m[1:5]
    expected = {
        "data": np.mean((d - bf) ** 2),
        "inv_before": np.sqrt(np.mean((fn[m] - fmn[m]) ** 2)),
        "inv_after": np.sqrt(np.mean((bf[inner] - bfm[inner]) ** 2)),
        "bsp": np.mean((d[inner] - bfm[inner]) ** 2),
        "bound": np.mean(np.maximum(-fn / fn.max(), 0) + np.maximum(fn / fn.max() - 1, 0)) ** 2,
    }
    for name, value in expected.items():
        assert terms[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    weighted = sum(getattr(w, k) * v for k, v in expected.items())
    assert total.item() == pytest.approx(weighted, rel=1e-5)


def test_loss_weights_follow_the_config():
    assert loss_weights(TrainConfig()) == LossWeights(1.0, 2.0, 0.0, 0.0, 0.1)
    assert loss_weights(TrainConfig(invariance="after-psf")) == LossWeights(1.0, 0.0, 2.0, 0.0, 0.1)
    assert loss_weights(TrainConfig(invariance="both", lambda_inv=3)) == LossWeights(1.0, 3.0, 3.0, 0.0, 0.1)
    ssi = loss_weights(TrainConfig(invariance="none", lambda_bsp=1.0))
    assert ssi.data == 0.0 and ssi.bsp == 1.0 and ssi.inv_before == ssi.inv_after == 0.0
    with pytest.raises(InputError):
        siamese_loss(t([1.0]), t([1.0]), t([1.0]), torch.ones(1, 1, 1, dtype=torch.bool), lambda x: x,
                     (slice(0, 1),), LossWeights(0, 0, 0, 0, 0))


@pytest.mark.parametrize("psf_shape", [(5, 5), (4, 6), (3, 5, 4)])
def test_forward_model_valid_equals_scipy(psf_shape):
    rng = np.random.default_rng(1)
    psf = rng.random(psf_shape).astype(np.float32)
    f = rng.random(tuple(s + 7 for s in psf_shape)).astype(np.float32)
    fm = ForwardModel(psf)
    got = fm.valid(torch.from_numpy(f)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, scipy.signal.fftconvolve(f, psf, mode="valid"), atol=1e-5)


def test_geometry_holds_region_and_halo_in_a_divisible_field():
    fm = ForwardModel(np.ones((5, 4, 7), np.float32) / 140)
    geom = fm.geometry((10, 12, 9), divisor=8)
    assert all(n % 8 == 0 for n in geom.field_shape)
    assert geom.data_shape == (10, 12, 9)
    assert all(b >= h for b, h in zip(geom.before, fm.halo_before))
    assert all(a >= h for a, h in zip(geom.after, fm.halo_after))
    f = torch.rand((1, 1) + geom.field_shape)
    assert tuple(fm.blur(f, geom.region).shape[2:]) == (10, 12, 9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_blind_spot_gradient_is_zero_at_masked_voxels(ndim):
    """d f(x_m)[i] / d x[i] = 0 for every masked voxel i (the network cannot copy its input there)."""
    torch.manual_seed(0)
    shape = (16, 16) if ndim == 2 else (8, 12, 12)
    net = ResUNet(UNetConfig(ndim=ndim, base_channels=4, depth=2)).eval()
    g = torch.Generator().manual_seed(3)
    mask = stratified_mask(shape, 0.5 if ndim == 3 else 5.0, g, batch=1)
    x = torch.randn((1, 1) + shape, requires_grad=True)
    out = net(apply_mask(x, mask, 0.2, g))
    picked = out[mask]  # f(x_m) at the masked voxels
    for k in range(picked.numel()):
        grad, = torch.autograd.grad(picked[k], x, retain_graph=True)
        index = mask.nonzero()[k]
        assert grad[tuple(index)].item() == 0.0
        assert grad.abs().sum().item() > 0  # the voxel does see its neighbours
