"""bench_selfsup's reference rows: the library's residual network trained on the ground truth,
or in data space on the noise-free blurred image."""

import os
import sys

import numpy as np
import pytest

from deconv3d.selfsup import TrainConfig, UNetConfig, apply_model
from deconv3d.synthetic import blur

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from selfsup_genie import train_supervised  # noqa: E402

from test_train import problem  # noqa: E402


@pytest.mark.parametrize("space", ["object", "data"])
def test_training_on_the_truth_moves_the_rl_base_towards_the_truth(space):
    truth, noisy, psf = problem(3, sigma=0.15)
    target = np.clip(blur(truth, psf), 0, 1).astype(np.float32) if space == "data" else truth
    cfg = TrainConfig(steps=40, patch=16, batch=2, lr=2e-3, seed=0, warm_tv=0.0)
    unet = UNetConfig(ndim=3, base_channels=8, depth=2)
    res = train_supervised(noisy, psf, target, cfg, unet, data_space=space == "data")
    assert res.steps_done == 40 and res.reference is not None and not res.unet.positive
    base = res.reference.estimate(noisy, psf)  # what the zero-initialised correction starts from
    out = apply_model(res, noisy, device="cpu")
    assert out.min() >= 0
    # The supervised loss falls, and the corrected estimate is closer to the truth than the RL base
    # (trained on the noisy image instead of the truth or the clean data, these ratios come out above 1).
    losses = [loss for _, loss in res.history]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert np.mean((out - truth) ** 2) < 0.8 * np.mean((base - truth) ** 2)


def test_only_the_residual_form_is_trained_on_the_truth():
    truth, noisy, psf = problem(3, sigma=0.15)
    with pytest.raises(ValueError, match="residual"):
        train_supervised(noisy, psf, truth, TrainConfig(steps=1, residual=False), UNetConfig(ndim=3))
