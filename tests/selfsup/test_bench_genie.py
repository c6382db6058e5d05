"""bench_selfsup's reference row: the library's residual network trained on the ground truth."""

import os
import sys

import numpy as np
import pytest

from deconv3d.selfsup import TrainConfig, UNetConfig, apply_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from selfsup_genie import train_on_truth  # noqa: E402

from test_train import problem  # noqa: E402


def test_training_on_the_truth_moves_the_rl_base_towards_the_truth():
    truth, noisy, psf = problem(3, sigma=0.15)
    cfg = TrainConfig(steps=40, patch=16, batch=2, lr=2e-3, seed=0, warm_tv=0.0)
    unet = UNetConfig(ndim=3, base_channels=8, depth=2)
    res = train_on_truth(truth, noisy, psf, cfg, unet)
    assert res.steps_done == 40 and res.reference is not None and not res.unet.positive
    base = res.reference.estimate(noisy, psf)  # what the zero-initialised correction starts from
    out = apply_model(res, noisy, device="cpu")
    assert out.min() >= 0
    # The supervised loss falls, and the corrected estimate is closer to the truth than the RL base.
    losses = [loss for _, loss in res.history]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert np.mean((out - truth) ** 2) < 0.8 * np.mean((base - truth) ** 2)


def test_only_the_residual_form_is_trained_on_the_truth():
    truth, noisy, psf = problem(3, sigma=0.15)
    with pytest.raises(ValueError, match="residual"):
        train_on_truth(truth, noisy, psf, TrainConfig(steps=1, residual=False), UNetConfig(ndim=3))
