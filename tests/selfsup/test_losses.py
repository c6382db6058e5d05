"""Loss terms against hand-computed values; the forward model against scipy; the blind spot."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from deconv3d.errors import InputError
from deconv3d.selfsup.config import TrainConfig, UNetConfig
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import (LossWeights, blind_spot_term, bound_term, data_term, invariance_term,
                                     loss_weights, masked_mse, mse, siamese_loss)
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


def test_bound_term_gradient_treats_the_detached_maximum_as_a_constant():
    """With ``detach_max`` the gradient is that of the formula with the peak a fixed number:
    ``d/df_i mean(relu(-z/P))**2 = -2 m std / (N P)`` where ``z_i < 0``, 0 elsewhere (the brightest
    voxel included); a differentiable maximum would also push the brightest voxel."""
    values = np.array([-1.5, -0.4, 0.3, 2.0, 0.9, -2.2, 1.1, 0.0], np.float64)  # standardised, one clear maximum
    mean, std = 0.5, 2.0
    z = values * std + mean  # [-2.5, -0.3, 1.1, 4.5, 2.3, -3.9, 2.7, 0.5]
    peak = z.max()
    m = np.mean(np.maximum(-z / peak, 0) + np.maximum(z / peak - 1, 0))
    expected = np.where(z < 0, -2 * m * std / (len(z) * peak), 0.0)

    f = torch.tensor(values, requires_grad=True)
    loss = bound_term(f.view(1, 1, -1), mean=mean, std=std, detach_max=True)
    assert loss.item() == pytest.approx(m**2, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, f)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert grad[3].item() == 0.0  # the maximum gets no gradient

    (free,) = torch.autograd.grad(bound_term(f.view(1, 1, -1), mean=mean, std=std, detach_max=False), f)
    assert free[3].item() < 0  # a differentiable maximum: raising the brightest voxel lowers the loss
    np.testing.assert_allclose(free.numpy()[z != peak], expected[z != peak], rtol=1e-12)


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


@pytest.mark.parametrize("shape, psf_shape", [((9, 10, 7), (5, 4, 3)), ((12, 11), (5, 6))])
def test_weighted_data_term_equals_a_numpy_reference(shape, psf_shape):
    """mean_w (1 + eps) / (|H|^2 + eps) |FFT(r)|^2 / N over the full spectrum, with numpy's fftn."""
    rng = np.random.default_rng(3)
    psf = rng.random(psf_shape).astype(np.float32)
    psf /= psf.sum()
    fm = ForwardModel(psf)
    data, blurred = (torch.from_numpy(rng.standard_normal((2, 1) + shape).astype(np.float32)) for _ in range(2))
    axes = tuple(range(-len(shape), 0))
    for eps in (0.01, 1.0):
        weight = fm.data_weight(shape, eps)
        assert all(n >= s + k - 1 for n, s, k in zip(weight.fft_shape, shape, psf_shape))
        h2 = np.abs(np.fft.fftn(psf, s=weight.fft_shape, axes=axes)) ** 2
        spectrum = np.fft.fftn((blurred - data).numpy().astype(np.float64), s=weight.fft_shape, axes=axes)
        expected = ((1 + eps) / (h2 + eps) * np.abs(spectrum) ** 2).sum() / np.prod(weight.fft_shape) / data.numel()
        assert data_term(data, blurred, weight).item() == pytest.approx(expected, rel=1e-5)
    # W -> 1 as eps grows: Parseval, the plain MSE
    assert data_term(data, blurred, fm.data_weight(shape, 1e9)).item() == pytest.approx(mse(data, blurred).item(),
                                                                                         rel=1e-5)
    assert data_term(data, blurred).item() == mse(data, blurred).item()


def test_weighted_data_term_gradient_is_the_wiener_preconditioned_residual():
    """d/df of the weighted term through H is H^T (H H^T + eps)^-1 (H f - x) up to the (1 + eps) scale (1D)."""
    rng = np.random.default_rng(4)
    psf = np.array([0.2, 0.5, 0.3], np.float32)
    fm = ForwardModel(psf)
    n, eps = 16, 0.05
    f = torch.from_numpy(rng.standard_normal((1, 1, n + 2)).astype(np.float32)).requires_grad_()
    x = torch.from_numpy(rng.standard_normal((1, 1, n)).astype(np.float32))
    weight = fm.data_weight((n,), eps)
    data_term(x, fm.valid(f), weight).backward()
    # dense reference: H is the (n, n + 2) valid-convolution matrix on a circulant FFT grid
    N = weight.fft_shape[0]
    H = np.zeros((n, n + 2))
    for i in range(n):
        H[i, i:i + 3] = psf[::-1]
    otf = np.fft.fft(psf, N)
    spectral = ((1 + eps) / (np.abs(otf) ** 2 + eps))[:, None]
    W = np.real(np.fft.ifft(spectral * np.fft.fft(np.eye(N), axis=0), axis=0))[:n, :n]
    r = H @ f.detach().numpy().ravel() - x.numpy().ravel()
    expected = 2 * H.T @ W @ r / n
    np.testing.assert_allclose(f.grad.numpy().ravel(), expected, rtol=1e-4, atol=1e-6)


def test_snr_gain_keeps_signal_frequencies_and_drops_noise_ones():
    """A blurred object plus white noise: gain ~1 at the lowest frequencies, 0 beyond the
    PSF's band, and 0 almost everywhere in it for noise alone."""
    from deconv3d.selfsup.forward_model import _resample_gain
    from deconv3d.selfsup.losses import snr_gain

    rng = np.random.default_rng(1)
    grid = np.meshgrid(*[np.arange(15) - 7] * 3, indexing="ij")
    psf = np.exp(-sum(g.astype(float) ** 2 for g in grid) / (2 * 2.0 ** 2)).astype(np.float32)
    psf /= psf.sum()
    shape = (32, 48, 48)
    clean = scipy.signal.fftconvolve(rng.random(shape) ** 8, psf, mode="same") * 50
    gain = snr_gain(clean + rng.normal(0, 0.05, shape), psf)
    freq = np.sqrt(sum(f ** 2 for f in np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")))
    assert gain.shape == shape and gain.min() >= 0 and gain.max() <= 1
    assert gain[(freq > 0) & (freq < 0.05)].mean() > 0.9
    assert gain[freq > 0.3].max() == 0.0
    noise_only = snr_gain(rng.normal(0, 1, shape), psf)
    assert (noise_only > 0).mean() < 0.01
    assert snr_gain(clean, np.ones((1, 1, 1), np.float32)) is None  # nowhere to measure the noise
    # resampled to an rfft half-grid of another size: nearest frequency
    half = _resample_gain(gain, (16, 24, 20))
    assert half.shape == (16, 24, 11) and half[0, 0, 0] == gain[0, 0, 0]
    assert half[8, 12, 10] == gain[16, 24, 24] and half[-1, -1, 5] == gain[-2, -2, 12]


def test_gated_weight_is_the_wiener_weight_times_the_gain():
    from deconv3d.selfsup.forward_model import _resample_gain

    psf = np.ones((3, 3, 3), np.float32) / 27
    fm = ForwardModel(psf)
    gain = np.random.default_rng(2).random((10, 12, 14))
    plain, gated = fm.data_weight((8, 8, 8), 0.01), fm.data_weight((8, 8, 8), 0.01, gain)
    expected = plain.weight * torch.from_numpy(_resample_gain(gain, plain.fft_shape)).float()
    assert gated.fft_shape == plain.fft_shape and torch.allclose(gated.weight, expected)
    assert fm.data_weight((8, 8, 8), 0.01) is plain  # the ungated weight is cached, the gated one is not


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "often", None, True])
def test_precondition_must_be_auto_or_a_non_negative_number(bad):
    with pytest.raises(InputError, match="precondition"):
        TrainConfig(precondition=bad)
    assert TrainConfig(precondition="auto").precondition == "auto" and TrainConfig().precondition == "auto"


def test_loss_weights_follow_the_config():
    assert loss_weights(TrainConfig()) == LossWeights(1.0, 2.0, 0.0, 0.0, 0.1)
    assert loss_weights(TrainConfig(invariance="after-psf")) == LossWeights(1.0, 0.0, 2.0, 0.0, 0.1)
    assert loss_weights(TrainConfig(invariance="both", lambda_inv=3)) == LossWeights(1.0, 3.0, 3.0, 0.0, 0.1)
    ssi = loss_weights(TrainConfig(invariance="none", lambda_bsp=1.0))
    assert ssi.data == 0.0 and ssi.bsp == 1.0 and ssi.inv_before == ssi.inv_after == 0.0
    # The issue's formula with lambda_inv = 0, lambda_bsp = 1 keeps the data term: lambda_rec = 1 selects it.
    assert loss_weights(TrainConfig(invariance="none", lambda_bsp=1.0, lambda_rec=1.0)).data == 1.0
    both = loss_weights(TrainConfig(invariance="both", lambda_inv=3, lambda_inv_psf=0.5))
    assert (both.inv_before, both.inv_after) == (3.0, 0.5)
    assert loss_weights(TrainConfig(invariance="before-psf", lambda_inv_psf=0.5)).inv_after == 0.0
    for bad in ({"lambda_inv_psf": -1.0}, {"lambda_rec": float("nan")}, {"lambda_rec": "1"}):
        with pytest.raises(InputError):
            TrainConfig(**bad)
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
