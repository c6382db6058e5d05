"""Warm start: the first steps regress the network onto Richardson-Lucy at the held-out count."""

import numpy as np
import pytest
import torch

from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.errors import InputError
from deconv3d.metrics import psnr_rescaled
from deconv3d.selfsup import TrainConfig, apply_model, load_checkpoint, save_checkpoint, train
from deconv3d.selfsup.losses import ForwardModel
from deconv3d.selfsup.train import _PatchSampler, standardize, warm_start_target
from test_train import TINY, problem


def test_target_is_bertero_rl_at_the_held_out_count():
    _, noisy, psf = problem(3, sigma=0.02)
    target, iterations = warm_start_target(noisy, psf, "cpu")
    assert iterations == choose_iterations(noisy, psf, 100, device="cpu").iterations
    np.testing.assert_array_equal(target, richardson_lucy(noisy, psf, iterations, device="cpu"))


def test_target_patches_are_cut_where_the_fields_are():
    """With the image itself as target, every batch's target equals its data region exactly."""
    _, noisy, psf = problem(3, sigma=0.02)
    image, _, _ = standardize(noisy)
    config = TrainConfig(patch=16, batch=3)
    geometry = ForwardModel(psf).geometry([16, 16, 16], TINY[3].divisor)
    sampler = _PatchSampler(image, geometry, config, torch.device("cpu"))
    sampler.set_target(image)
    for _ in range(3):
        batch = sampler.sample(3)
        assert batch.target.shape == batch.data.shape
        assert torch.equal(batch.target, batch.data)
    sampler.set_target(None)
    assert sampler.sample(2).target is None


def test_warm_steps_fit_the_target_then_the_siamese_loss_takes_over():
    truth, noisy, psf = problem(3, sigma=0.02)
    target, _ = warm_start_target(noisy, psf, "cpu")
    warm = train(noisy, psf, config=TrainConfig(steps=80, warm_start=80, patch=16, batch=2, lr=2e-3, ema=0),
                 unet=TINY[3], device="cpu")
    losses = [loss for _, loss in warm.history]
    assert set(warm.last_terms) == {"warm", "total"}
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    out = apply_model(warm, noisy, device="cpu", band_limit=None)
    inner = (slice(3, -3), slice(4, -4), slice(4, -4))
    assert np.mean((out - target)[inner] ** 2) < 0.5 * np.mean((noisy - target)[inner] ** 2)
    assert psnr_rescaled(truth, out) > psnr_rescaled(truth, noisy) + 0.5  # measured 28.36 vs 27.63
    both = train(noisy, psf, config=TrainConfig(steps=6, warm_start=4, patch=16, batch=2), unet=TINY[3], device="cpu")
    assert "data" in both.last_terms and "warm" not in both.last_terms and both.steps_done == 6


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_bad_warm_start_is_refused(bad):
    with pytest.raises(InputError, match="warm_start"):
        TrainConfig(warm_start=bad)


def test_checkpoint_records_the_warm_start_and_old_files_load_without(tmp_path):
    _, noisy, psf = problem(2, sigma=0.05)
    res = train(noisy, psf, config=TrainConfig(steps=2, warm_start=1, patch=16, batch=1), unet=TINY[2], device="cpu")
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    assert load_checkpoint(path).config.warm_start == 1
    data = torch.load(path, weights_only=True)
    del data["train"]["warm_start"]
    torch.save(data, path)
    assert load_checkpoint(path).config.warm_start == 0
