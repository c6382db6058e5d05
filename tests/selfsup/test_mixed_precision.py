"""Mixed precision: which dtype each device trains and predicts in, and that training reports it.

bfloat16 on the CPU is used only where the CPU has AMX; these tests force the check either way,
so they run the same on any CPU (forced bfloat16 on a CPU without AMX is emulated: slow, but right).
"""

import importlib

import numpy as np
import pytest
import torch

from amp_helpers import autocast_failing_at
from deconv3d import _torch_common
from deconv3d._torch_common import amp_dtype, cpu_has_amx, grad_scaler
from deconv3d.selfsup import TrainConfig, apply_model, train, training_record
from tests.selfsup.test_train import TINY, assert_rl_base_plus_network, problem, train_for_module

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TRAIN = importlib.import_module("deconv3d.selfsup.train")


@pytest.mark.parametrize("amx", [True, False])
def test_the_dtype_follows_device_and_request(monkeypatch, amx):
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: amx)
    assert amp_dtype(True, CUDA) is torch.float16
    assert amp_dtype(True, CPU) is (torch.bfloat16 if amx else None)
    assert amp_dtype(False, CPU) is None and amp_dtype(False, CUDA) is None


@pytest.fixture(scope="module")
def float32_network():
    """(network trained in float32, its noisy image): trained once for the inference tests below."""
    _, noisy, psf = problem(3, sigma=0.05)
    config = TrainConfig(steps=3, patch=16, batch=2, seed=0, amp=False)
    return train_for_module(noisy, psf, config=config, unet=TINY[3], device="cpu"), noisy


@pytest.mark.parametrize("amp", [True, False, "default"])
def test_inference_runs_in_bfloat16_on_a_cpu_with_amx_unless_asked_not_to(monkeypatch, amp, float32_network):
    """apply_model's amp (default on, as the command line's --amp, for a network trained in float32
    too: the API followed the training setting where the CLI did not) picks the inference precision;
    the bfloat16 result stays within 1e-2 of the float32 one's peak, with the last layer in float32.
    (A context of 4 voxels, not the default 16: the tile is 4x smaller, and emulated bfloat16 slow.)"""
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: True)
    res, noisy = float32_network
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, out: seen.append(out.dtype) if isinstance(m, torch.nn.Conv3d) else None)
    try:
        out = apply_model(res, noisy, device="cpu", context=4, **({} if amp == "default" else {"amp": amp}))
    finally:
        handle.remove()
    low = amp in (True, "default")
    assert (torch.bfloat16 in seen) is low and seen[-1] == torch.float32  # the head's convolution: float32
    full = apply_model(res, noisy, device="cpu", context=4, amp=False)
    difference = np.abs(out - full).max() / full.max()
    assert (0 < difference < 1e-2) if low else difference == 0


def test_only_float16_scales_gradients(monkeypatch):
    """bfloat16 has float32's exponent range: its gradients need no scaling."""
    asked = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: asked.append((device, enabled)))
    for dtype in (torch.float16, torch.bfloat16, None):
        grad_scaler(dtype)
    assert asked == [("cuda", True), ("cuda", False), ("cuda", False)]


@pytest.mark.parametrize("helper", ["missing", "raises"])
def test_no_amx_where_torch_cannot_tell(monkeypatch, helper):
    if helper == "missing":
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: 1 / 0, raising=False)
    assert cpu_has_amx() is False


def _conv_dtypes():
    """Record the output dtype of every convolution, by its name in the network (a forward hook on all
    modules; the names are filled in once the network exists)."""
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, out: seen.append((m, out.dtype)) if isinstance(m, torch.nn.Conv3d) else None)
    return seen, handle


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_training_runs_bfloat16_only_with_amx_and_says_so(monkeypatch, once, amx):
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: amx)
    truth, noisy, psf = problem(3, sigma=0.05)
    cfg = dict(steps=3, patch=12, batch=2, seed=0)  # (12: half the voxels of 16, as slow bfloat16 is emulated)
    seen, handle = _conv_dtypes()
    try:
        mixed = train(noisy, psf, config=TrainConfig(amp=True, **cfg), unet=TINY[3], device="cpu")
    finally:
        handle.remove()
    head = mixed.model.head[-1]
    assert isinstance(head, torch.nn.Conv3d) and any(m is head for m, _ in seen)
    # the head, whose output is the estimate, in float32; every other convolution in bfloat16 with AMX
    assert {dtype for m, dtype in seen if m is head} == {torch.float32}
    assert {dtype for m, dtype in seen if m is not head} == {torch.bfloat16 if amx else torch.float32}
    assert mixed.precision == ("bfloat16" if amx else "float32")
    assert training_record(mixed)["precision"] == mixed.precision
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())  # weights stay float32
    # (the float32 run, trained once for both cases: without amp, AMX is not asked about)
    plain = once("float32 of test_cpu_training_runs_bfloat16_only_with_amx_and_says_so", lambda: train(
        noisy, psf, config=TrainConfig(amp=False, **cfg), unet=TINY[3], device="cpu"))
    assert plain.precision == "float32"
    same = all(torch.equal(a, b) for a, b in zip(mixed.model.parameters(), plain.model.parameters()))
    assert same is (not amx)  # without AMX, amp on the CPU is the float32 run, bit for bit


@pytest.mark.parametrize("recipe", ["default", "paper"])
def test_bfloat16_training_tracks_float32(monkeypatch, recipe):
    """The loss of a short bfloat16 run follows the float32 run's: step for step in the residual
    form, and falls as far in the paper's form (there per step within 10 %). In the residual form,
    whose loss starts at RL's, already low, a bfloat16 run that took no optimiser step tracked it as
    closely: there its weights move as far as float32's, and its output is RL plus its correction."""
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: True)
    starts, made = [], TRAIN.trainable_model

    def recorded(*args):  # each run's initial weights
        started = made(*args)
        starts.append([p.detach().clone() for p in started[0].parameters()])
        return started

    monkeypatch.setattr(TRAIN, "trainable_model", recorded)
    _, noisy, psf = problem(3, sigma=0.05)
    paper = dict(precondition=0.0, warm_start=0, residual=False) if recipe == "paper" else {}
    # 12 / 20 steps of 12-voxel patches: forced bfloat16 on a CPU without AMX is emulated, ~10x slower
    # than float32 (patches of 16 took twice as long; with 12 the paper's float32 loss falls as far:
    # seeds 0-2 to 0.55, 0.58, 0.37 of its start, against 0.47, 0.58, 0.69 with 16)
    cfg = dict(steps=12 if recipe == "default" else 20, patch=12, batch=2, seed=0, lr=2e-3, **paper)
    runs = [train(noisy, psf, config=TrainConfig(amp=amp, **cfg), unet=TINY[3], device="cpu") for amp in (True, False)]
    assert [r.precision for r in runs] == ["bfloat16", "float32"]
    mixed, plain = (np.array([loss for _, loss in r.history]) for r in runs)
    assert not np.array_equal(mixed, plain)  # the premise: bfloat16 did run
    if recipe == "default":
        rel = np.abs(mixed / plain - 1)
        assert rel.mean() < 0.01 and rel.max() < 0.05  # 30 steps: AMX 0.4 % at most; emulated (AVX2 only) 1.6-2.3 %
        moved = [float(torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(r.model.parameters(), start)]).norm())
                 for r, start in zip(runs, starts)]
        assert moved[0] > 0.5 * moved[1] > 0  # measured 2.21 and 2.22 (Adam's steps: their size, not their sign)
        out = apply_model(runs[0], noisy, device="cpu", amp=False)  # (bfloat16 inference: tested above)
        assert_rl_base_plus_network(runs[0], noisy, psf, out, margin=5e-3, amp=False)  # measured 1.9e-2
    else:
        assert mixed[-10:].mean() < 0.6 * mixed[0] and mixed[-10:].mean() == pytest.approx(plain[-10:].mean(), rel=0.05)


def test_command_line_no_amp_trains_in_float32():
    from deconv3d.cli import build_parser
    from deconv3d.cli.selfsup import configs

    parser = build_parser()
    on = parser.parse_args(["train", "in.tif", "--psf", "p.tif", "-o", "m.ckpt"])
    off = parser.parse_args(["train", "in.tif", "--psf", "p.tif", "-o", "m.ckpt", "--no-amp"])
    assert configs(on, 3)[0].amp is True and configs(off, 3)[0].amp is False


@pytest.mark.parametrize("onednn, dnnl, amx", [
    ("AVX2", None, False), ("avx512_core_bf16", None, False), (None, "AVX2", False),  # below AMX
    ("AVX512_CORE_AMX", None, True), ("avx10_1_512_amx", None, True), ("ALL", None, True), (None, None, True),
    ("DEFAULT", "AVX2", True),  # oneDNN reads the new name first
    ("bogus", None, True), (" AVX2", None, True),  # values oneDNN ignores: AMX stays in use
])
def test_a_onednn_limit_below_amx_keeps_float32(monkeypatch, onednn, dnnl, amx):
    """torch's check reads the CPU; a oneDNN limit set by the user would emulate bfloat16 (slower)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    for name, value in (("ONEDNN_MAX_CPU_ISA", onednn), ("DNNL_MAX_CPU_ISA", dnnl)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert cpu_has_amx() is amx


def test_grad_scaler_refuses_the_old_flag():
    with pytest.raises(TypeError, match="dtype"):
        grad_scaler(True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_network_converted_as_a_whole_runs_in_its_own_dtype(dtype):
    """The float32 head is for autocast only: a network converted to one dtype keeps it throughout."""
    net = TRAIN.build_model(TINY[3]).to(dtype).eval()
    x = torch.rand(1, 1, 8, 16, 16, dtype=dtype)
    with torch.no_grad():
        assert net(x).dtype == dtype


def test_under_autocast_the_head_computes_in_float32():
    net = TRAIN.build_model(TINY[3]).eval()
    x = torch.rand(1, 1, 8, 16, 16)
    seen = {}
    net.head.register_forward_hook(lambda m, i, out: seen.update(h=i[0].detach().clone(), out=out))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32 and seen["h"].dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(seen["out"], net.head(seen["h"]), rtol=0, atol=0)  # float32 all through


@pytest.mark.parametrize("diverged", [False, True])
def test_the_precision_says_when_training_fell_back_to_float32(monkeypatch, diverged):
    """A non-finite bfloat16 pass at step 3: steps 1-2 ran in bfloat16, the rest in float32."""
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: True)
    steps_module = importlib.import_module("deconv3d.selfsup.steps")
    calls = []
    real_once = steps_module._Steps._once
    monkeypatch.setattr(steps_module, "autocast", autocast_failing_at(3, steps_module.autocast, calls))
    _, noisy, psf = problem(3, sigma=0.05)
    if diverged:  # the float32 redo fails too: no float32 step was taken, and the run ends there
        monkeypatch.setattr(steps_module._Steps, "_once", lambda self, batch, warming: {"total": float("nan")}
                            if len(calls) >= 3 else real_once(self, batch, warming))
        res = train(noisy, psf, config=TrainConfig(steps=5, patch=12, batch=2, seed=0), unet=TINY[3], device="cpu")
        assert res.reason == "non-finite loss" and res.precision == "bfloat16"
        return
    with pytest.warns(RuntimeWarning, match="bfloat16 gave a non-finite value") as caught:
        res = train(noisy, psf, config=TrainConfig(steps=5, patch=12, batch=2, seed=0), unet=TINY[3], device="cpu")
    assert caught[0].filename == __file__  # the warning names the caller's line
    assert res.steps_done == 5 and len(calls) == 3
    assert res.precision == "bfloat16 for steps 1-2, then float32" == training_record(res)["precision"]
