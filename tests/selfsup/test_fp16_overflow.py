"""Mixed precision whose float16 forward pass overflows: training and prediction go on in float32.

Without a GPU, float16 is stood in for by a context that makes every module's output infinite
(what an overflow above 65504 gives), and mixed precision is allowed on the CPU; the CUDA test
overflows for real.
"""

import contextlib
import importlib

import numpy as np
import pytest
import torch

from deconv3d.selfsup import TrainConfig, train
from deconv3d.selfsup.predict import predict_tiled
from tests.selfsup.test_train import TINY, problem


@pytest.fixture
def overflowing_half(monkeypatch):
    """Mixed precision allowed on the CPU, and its 'float16' turns every module output into inf."""
    entered = []

    @contextlib.contextmanager
    def fake_half(dtype, device):
        if dtype is None:
            yield
            return
        assert dtype == torch.float16
        entered.append(1)
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, out: out + float("inf"))
        try:
            yield
        finally:
            handle.remove()

    for mod in map(importlib.import_module, ("deconv3d.selfsup.train", "deconv3d.selfsup.network_runner")):
        monkeypatch.setattr(mod, "amp_dtype", lambda requested, device, training=False:
                            torch.float16 if requested else None)
    for mod in map(importlib.import_module, ("deconv3d.selfsup.steps", "deconv3d.selfsup.network_runner")):
        monkeypatch.setattr(mod, "autocast", fake_half)
    return entered


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
@pytest.mark.parametrize("warm", [0, 2])  # the first step a Siamese step, or a warm-start step
def test_training_redoes_an_overflowing_step_in_float32_and_goes_on(overflowing_half, warm):
    _, noisy, psf = problem(3, sigma=0.15)
    kwargs = dict(steps=4, patch=16, batch=2, seed=0, warm_start=warm, warm_tv=0.0, residual=False,
                  precondition=0.0, lambda_anchor=0.0)
    with pytest.warns(RuntimeWarning, match="float16 gave a non-finite value"):
        mixed = train(noisy, psf, config=TrainConfig(amp=True, **kwargs), unet=TINY[3], device="cpu")
    assert len(overflowing_half) == 1  # tried once, then float32 for the rest of the run
    assert mixed.reason == "completed" and mixed.steps_done == 4 and mixed.warm_steps == warm
    # The failed step changed nothing: the run is the float32 run, step for step.
    plain = train(noisy, psf, config=TrainConfig(amp=False, **kwargs), unet=TINY[3], device="cpu")
    assert mixed.history == plain.history
    for a, b in zip(mixed.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)  # the BatchNorm statistics too: the failed pass's infinities are undone


def test_prediction_recomputes_an_overflowing_tile_in_float32(overflowing_half):
    _, noisy, psf = problem(3, sigma=0.15)
    result = train(noisy, psf, config=TrainConfig(steps=2, patch=16, batch=1, seed=0, amp=False), unet=TINY[3],
                   device="cpu")
    opts = dict(mean=result.mean, std=result.std, divisor=result.unet.divisor, tile_shape=8, device="cpu")
    plain = predict_tiled(result.model, noisy, amp=False, **opts)
    assert not overflowing_half
    with pytest.warns(RuntimeWarning, match="float16 gave a non-finite value"):
        mixed = predict_tiled(result.model, noisy, amp=True, **opts)
    assert len(overflowing_half) == 1  # the first tile only: the rest ran in float32
    assert np.isfinite(mixed).all()
    np.testing.assert_array_equal(mixed, plain)


@pytest.mark.cuda
def test_cuda_float16_overflow_falls_back_to_float32():
    """A network whose hidden activations exceed float16's range but whose output does not."""
    class Overflowing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Conv3d(1, 1, 1, bias=False)
            self.down = torch.nn.Conv3d(1, 1, 1, bias=False)
            torch.nn.init.constant_(self.up.weight, 1e5)
            torch.nn.init.constant_(self.down.weight, 1e-5)

        def forward(self, x):
            return self.down(self.up(x))

    model = Overflowing().cuda().eval()
    x = torch.rand(1, 1, 8, 8, 8, device="cuda") + 1.0
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        assert not torch.isfinite(model(x)).all()  # the premise: float16 overflows here
    volume = np.random.default_rng(0).random((8, 16, 16), dtype=np.float32) + 1.0
    with pytest.warns(RuntimeWarning, match="float16 gave a non-finite value"):
        out = predict_tiled(model, volume, mean=0.0, std=1.0, divisor=1, device="cuda", amp=True, tile_shape=8)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, volume, rtol=1e-3)
