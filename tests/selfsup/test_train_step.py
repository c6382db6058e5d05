"""One training step and its batches: the masking recipe, the blind spot of the masked pass and the
bound term's de-standardisation, checked on the real sampler and ``_train_step`` with tiny models."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from deconv3d.selfsup.config import TrainConfig
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import LossWeights
from deconv3d.selfsup.patches import _PatchSampler
from deconv3d._torch_common import MixedPrecision
from deconv3d.selfsup.steps import _train_step

CPU = torch.device("cpu")


def uniform_psf(ndim, side=3):
    return np.full((side,) * ndim, 1.0 / side**ndim, np.float32)


def sampler_2d(config, shape=(20, 20), seed=7):
    """A real sampler over a seeded standardised 2D image: fields of 16 x 16 around a 12 x 12 region."""
    forward = ForwardModel(uniform_psf(2))
    geometry = forward.geometry((12, 12), divisor=4)
    image = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return forward, geometry, _PatchSampler(image, geometry, config, CPU)


def step_tools(model):
    return torch.optim.SGD(model.parameters(), lr=1e-3), MixedPrecision(None)


@pytest.mark.parametrize("given, box", [({}, 6), ({"mask_percent": 2.0, "mask_noise_std": 0.5}, 4)])
def test_sampler_masks_with_the_configured_density_and_noise(given, box):
    """TrainConfig's defaults are the paper's: 0.5 % of the voxels masked, replaced by N(0, 0.2^2)
    (standardised units). The sampler follows the config: one voxel per box of side
    round((100 / percent) ** (1 / 3)) (6 for 0.5 %, 4 for 2 %) and noise of the configured std."""
    if not given:
        assert TrainConfig().mask_percent == 0.5 and TrainConfig().mask_noise_std == 0.2
    config = replace(TrainConfig(seed=3), **given)
    forward = ForwardModel(uniform_psf(3))
    geometry = forward.geometry((22, 22, 22), divisor=8)
    assert geometry.field_shape == (24, 24, 24)  # a whole number of boxes of either side
    image = np.random.default_rng(0).standard_normal((26, 26, 26)).astype(np.float32)
    batch = _PatchSampler(image, geometry, config, CPU).sample(16)
    counts = batch.mask.flatten(1).sum(1)
    assert (counts == (24 // box) ** 3).all()
    noise = batch.masked[batch.mask].double()
    assert (batch.masked[batch.mask] != batch.fields[batch.mask]).all()  # noise, not the image values
    std = config.mask_noise_std
    assert float(noise.std()) == pytest.approx(std, rel=0.1)
    assert abs(float(noise.mean())) < 4 * std / noise.numel() ** 0.5


class Recorder(nn.Module):
    """A seeded 3 x 3 convolution that keeps every input it is given."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, 9).view(1, 1, 3, 3))
            self.conv.bias.fill_(0.1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def test_masked_pass_of_a_training_step_does_not_see_the_masked_voxels():
    """The step's second network pass gets the masked copy: at every masked voxel the network's
    input is noise, never the image value it must predict (the blind spot of the invariance terms)."""
    forward, geometry, sampler = sampler_2d(TrainConfig(patch=12, batch=3, mask_percent=5.0, seed=1))
    batch = sampler.sample(3)
    assert any(batch.rotations) or any(batch.flips)  # the augmentation is undone below
    model = Recorder()
    optimizer, precision = step_tools(model)
    terms = _train_step(model, batch, forward, geometry.region, LossWeights(), optimizer, precision, (0.0, 1.0))
    assert np.isfinite(terms["total"]) and terms["inv_before"] > 0
    assert len(model.inputs) == 2
    full, masked = (batch.restore(x) for x in model.inputs)
    assert torch.equal(full, batch.fields)
    assert int(batch.mask.sum()) >= 3 * 9  # a few masked voxels per sample
    assert (masked[batch.mask] != batch.fields[batch.mask]).all()
    assert torch.equal(masked, batch.masked)


class Affine(nn.Module):
    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.tensor(scale)), nn.Parameter(torch.tensor(shift))

    def forward(self, x):
        return x * self.scale + self.shift


@pytest.mark.parametrize("mean, std", [(4.0, 1.5), (-2.0, 0.5)])
def test_training_step_bound_term_is_taken_on_the_de_standardised_output(mean, std):
    """``_train_step`` passes the image's (mean, std) to the bound term: the term it reports and
    minimises is ``mean(relu(-z) + relu(z - 1))**2`` with ``z = (f std + mean) / max``, computed here
    by hand from the network output ``f = 3x - 1`` of the unmasked pass."""
    forward, geometry, sampler = sampler_2d(TrainConfig(patch=12, batch=2, seed=4))
    batch = sampler.sample(2)
    model = Affine(3.0, -1.0)
    optimizer, precision = step_tools(model)
    weights = LossWeights(data=0.0, inv_before=0.0, inv_after=0.0, bsp=0.0, bound=1.0)
    terms = _train_step(model, batch, forward, geometry.region, weights, optimizer, precision, (mean, std))
    z = (3.0 * batch.fields.double().numpy() - 1.0) * std + mean
    z = z / z.max()
    expected = np.mean(np.maximum(-z, 0) + np.maximum(z - 1, 0)) ** 2
    assert expected > 1e-4
    assert terms["bound"] == pytest.approx(expected, rel=1e-5)
    assert terms["total"] == pytest.approx(expected, rel=1e-5)


def test_grad_scaler_falls_back_to_the_torch_2_2_class(monkeypatch):
    """pyproject allows torch 2.2, which has no torch.amp.GradScaler (added in 2.3): training built one
    unconditionally, so it failed there even on the CPU."""
    import warnings

    import torch

    from deconv3d._torch_common import grad_scaler

    assert not grad_scaler(None).is_enabled()
    monkeypatch.delattr(torch.amp, "GradScaler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the 2.2 class is deprecated in later releases
        scaler = grad_scaler(None)
    assert isinstance(scaler, torch.cuda.amp.GradScaler) and not scaler.is_enabled()


def test_weight_average_without_buffers_writes_back_the_averaged_parameters_only():
    """Self-supervised training averages the parameters and, at the end, writes them into the
    network, whose BatchNorm statistics (already running averages) stay its own."""
    from deconv3d._torch_common import WeightAverage

    torch.manual_seed(0)
    live = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2))
    start = [p.detach().clone() for p in live.parameters()]
    average = WeightAverage(live, decay=0.5)
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
        live.train()(torch.rand(2, 1, 5, 5, 5))  # moves the BatchNorm statistics
    buffers = [b.clone() for b in live.buffers()]
    average.update(live)  # warm-up: keep min(0.5, 2/11) of the average
    average.copy_to(live)
    for p, s in zip(live.parameters(), start):
        torch.testing.assert_close(p.detach(), s + 9 / 11)
    for b, kept in zip(live.buffers(), buffers):
        assert torch.equal(b, kept)
    assert not torch.equal(next(average.model.buffers()), buffers[0])  # the average's own were not averaged
