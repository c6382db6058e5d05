"""Short CPU trainings on tiny seeded phantoms: the loss falls and PSNR rises over the input."""

import numpy as np
import pytest
import torch

from deconv3d.classical import richardson_lucy
from deconv3d.errors import InputError, OptionWarning
from deconv3d.metrics import psnr_rescaled
from deconv3d.selfsup import TrainConfig, UNetConfig, apply_model, default_context, deconvolve, train
from deconv3d.selfsup.predict import predict_tiled
from deconv3d.synthetic import add_noise_gaussian_poisson, blur, phantom


def gaussian_psf(ndim):
    grid = np.mgrid[(slice(-3, 4),) * ndim]
    scale = (2.0, 1.0, 1.0)[-ndim:]
    r2 = sum((g / s) ** 2 for g, s in zip(grid, scale))
    psf = np.exp(-r2 / (2 * 1.2**2)).astype(np.float32)
    return psf / psf.sum()


def problem(ndim, sigma):
    shape = (48, 48) if ndim == 2 else (16, 32, 32)
    psf = gaussian_psf(ndim)
    truth = phantom(shape, seed=1).astype(np.float32)
    truth /= truth.max()
    noisy = add_noise_gaussian_poisson(np.clip(blur(truth, psf), 0, 1), sigma=sigma, seed=0).astype(np.float32)
    return truth, noisy, psf


TINY = {2: UNetConfig(ndim=2, base_channels=8, depth=2), 3: UNetConfig(ndim=3, base_channels=8, depth=2)}


def train_for_module(*args, **kwargs):
    """train() for a module-scoped fixture, on one torch thread as every test runs (conftest's
    one_thread, a per-test fixture, is not yet set up when a module-scoped one is)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def assert_rl_base_plus_network(result, image, psf, out, margin: float, amp: bool = True):
    """``out``, a residual network's output on ``image``, is Richardson-Lucy with its reference's
    settings (run here by richardson_lucy) plus the network's own correction (predict_tiled alone,
    at inference precision ``amp``), clamped at 0; and it differs from that base alone by more than
    ``margin`` of the base's peak: the network moved off its zero start."""
    reference = result.reference
    base = richardson_lucy(image, psf, reference.iterations, tv_weight=reference.tv_weight, device="cpu")
    correction = predict_tiled(result.model, image, mean=result.mean, std=result.std, divisor=result.unet.divisor,
                               context=default_context(result), device="cpu", signed=True, amp=amp)
    peak = float(base.max())
    np.testing.assert_allclose(out, np.maximum(base + correction, 0), rtol=0, atol=1e-5 * peak)
    assert np.abs(out - np.maximum(base, 0)).max() > margin * peak


def short_training(once, ndim, recipe):
    """(truth, noisy image, PSF, config, result) of a 60-step training by ``recipe`` ("paper" or
    "default"), made once per session (by the conftest's ``once``): test_residual reads the 3D default one."""
    def make():
        truth, noisy, psf = problem(ndim, sigma=0.15)
        paper = dict(precondition=0.0, warm_start=0, residual=False) if recipe == "paper" else {}
        cfg = TrainConfig(steps=60, patch=16, batch=2, lr=2e-3, seed=0, **paper)  # (batches of 4 took twice as long)
        return truth, noisy, psf, cfg, train(noisy, psf, config=cfg, unet=TINY[ndim], device="cpu")

    return once(("short_training", ndim, recipe), make)


@pytest.mark.parametrize("recipe", ["paper", "default"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_short_training_lowers_loss_and_beats_the_input(once, ndim, recipe):
    truth, noisy, psf, cfg, result = short_training(once, ndim, recipe)
    losses = [loss for _, loss in result.history]
    assert result.steps_done == 60 and result.reason == "completed" and cfg.warm_steps == 0
    assert (result.reference is not None) == (recipe == "default")  # the default corrects RL
    if recipe == "paper":  # from a random start; the default starts at RL, whose loss is already low
        assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:5])
    out = apply_model(result, noisy, device="cpu")
    assert out.shape == noisy.shape and out.dtype == np.float32 and out.min() >= 0
    assert psnr_rescaled(truth, out) > psnr_rescaled(truth, noisy) + 0.5
    if recipe == "default":  # RL plus the correction: without the base the PSNR above still passed in 3D
        # (the output moved off RL by 2.4e-3 (2D) and 0.22 (3D) of its peak)
        assert_rl_base_plus_network(result, noisy, psf, out, margin={2: 1e-3, 3: 0.05}[ndim])


def test_precondition_settings_train_and_auto_falls_back_to_plain_mse():
    """"auto", a number and 0 all train; with a PSF that transmits every frequency (no
    noise to measure) "auto" is exactly the plain MSE."""
    _, noisy, psf = problem(3, sigma=0.02)
    histories = {}
    for given in ("auto", 0.0, 0.05):
        res = train(noisy, psf, config=TrainConfig(steps=2, patch=16, batch=1, precondition=given), unet=TINY[3],
                    device="cpu")
        assert res.config.precondition == given and np.isfinite(res.last_terms["data"])
        histories[given] = res.history
    assert histories["auto"] != histories[0.05]  # (seeded: "auto" trained again gave the same history)
    delta = np.zeros((3, 3, 3), np.float32)
    delta[1, 1, 1] = 1
    runs = [train(noisy, delta, config=TrainConfig(steps=3, patch=16, batch=1, precondition=p), unet=TINY[3],
                  device="cpu").history for p in ("auto", 0.0)]
    assert runs[0] == runs[1]


def test_training_is_reproducible_with_a_seed():
    _, noisy, psf = problem(2, sigma=0.1)
    cfg = TrainConfig(steps=4, patch=16, batch=2, seed=5)
    a = train(noisy, psf, config=cfg, unet=TINY[2], device="cpu")
    b = train(noisy, psf, config=cfg, unet=TINY[2], device="cpu")
    assert a.history == b.history
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_callback_cancels_and_time_budget_stops():
    _, noisy, psf = problem(2, sigma=0.1)
    seen = []
    res = train(noisy, psf, config=TrainConfig(steps=50, patch=16, batch=1), unet=TINY[2], device="cpu",
                callback=lambda step, loss: seen.append((step, loss)) or step == 3)
    # (step 0: the search for the RL reference, before the first step)
    assert res.reason == "cancelled" and res.steps_done == 3 and [s for s, _ in seen if s] == [1, 2, 3]
    # Without the RL reference (residual, warm start): its search takes up to half the budget and, on a
    # loaded machine, warns that the budget cut it short (tested in test_warm_start); the steps are tested here.
    seen.clear()
    res = train(noisy, psf, config=TrainConfig(steps=10_000, patch=16, batch=1, time_budget=0.5, residual=False,
                                               warm_start=0), unet=TINY[2], device="cpu",
                callback=lambda step, loss: seen.append(step) and False)
    assert res.reason == "time_budget" and 1 <= res.steps_done < 10_000
    assert seen and 0 not in seen  # (step 0: the search for the RL reference, which did not run)


def test_the_time_budget_counts_the_set_up(monkeypatch):
    """``--time-budget 3`` ran 7.3 s: the clock started after the set-up (standardisation, the data term's
    weight, the network). A clock that the set-up moves on by more than the budget (a fake one, no timing)
    leaves time for the one step that is always run, and the search for the RL reference sees its deadline
    passed."""
    import importlib
    import time

    train_module = importlib.import_module("deconv3d.selfsup.train")
    _, noisy, psf = problem(2, sigma=0.1)
    offset = [0.0]
    real_clock, real_standardize = time.perf_counter, train_module.standardize

    def slow_standardize(image):  # the set-up's first stage, which now takes "100 s"
        offset[0] += 100.0
        return real_standardize(image)

    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + offset[0])
    monkeypatch.setattr(train_module, "standardize", slow_standardize)
    paper = dict(residual=False, warm_start=0, steps=3, patch=16, batch=1)  # (no RL reference)
    res = train(noisy, psf, config=TrainConfig(time_budget=50.0, **paper), unet=TINY[2], device="cpu")
    assert (res.reason, res.steps_done) == ("time_budget", 1) and res.seconds >= 100
    with pytest.warns(OptionWarning, match="the time budget ended the search"):  # (the residual form's reference)
        res = train(noisy, psf, config=TrainConfig(steps=3, patch=16, batch=1, time_budget=50.0), unet=TINY[2],
                    device="cpu")
    assert (res.reason, res.steps_done) == ("time_budget", 1)


def test_a_step_that_would_end_past_the_time_budget_is_not_started(monkeypatch):
    """A step always finished, so the one started just before the budget ended ran past it by a step's time
    (seconds on a CPU). On a fake clock where each step takes 30 s and nothing else any time, a budget of
    100 s runs 3 steps (90 s): a fourth would end at 120 s."""
    import time

    from deconv3d.selfsup.steps import _Steps

    now = [0.0]
    real_once = _Steps._once

    def thirty_seconds(self, batch, warming):
        now[0] += 30.0
        return real_once(self, batch, warming)

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(_Steps, "_once", thirty_seconds)
    _, noisy, psf = problem(2, sigma=0.1)
    paper = dict(residual=False, warm_start=0, patch=16, batch=1)  # (no RL reference)
    res = train(noisy, psf, config=TrainConfig(steps=10, time_budget=100.0, **paper), unet=TINY[2], device="cpu")
    assert (res.reason, res.steps_done, res.seconds) == ("time_budget", 3, 90.0)
    # a budget the last step fits in exactly runs it; one step always runs
    res = train(noisy, psf, config=TrainConfig(steps=10, time_budget=90.0, **paper), unet=TINY[2], device="cpu")
    assert (res.reason, res.steps_done) == ("time_budget", 3)
    res = train(noisy, psf, config=TrainConfig(steps=10, time_budget=10.0, **paper), unet=TINY[2], device="cpu")
    assert (res.reason, res.steps_done) == ("time_budget", 1)


def test_the_step_clock_takes_the_longest_recent_step_per_pass():
    """_StepClock's estimate: the longest of the last 3 steps per network pass, times the next step's passes
    (a Siamese step, 2, after warm-start steps, 1); the first step only while it is the only one."""
    from deconv3d._training_stop import _StepClock

    clock = _StepClock(100.0, started=10.0)
    assert clock.estimate(2) == 0 and not clock.would_overrun(109.0, 2)
    clock.record(20.0, 2)  # the first step, slower
    assert clock.estimate(2) == 20.0 and clock.would_overrun(91.0, 2) and not clock.would_overrun(90.0, 2)
    clock.record(4.0, 2)  # (the first no longer counts)
    assert clock.estimate(2) == 4.0
    for seconds in (6.0, 5.0, 4.0, 4.0):
        clock.record(seconds, 2)
    assert clock.estimate(2) == 5.0 and clock.would_overrun(105.5, 2) and not clock.would_overrun(105.0, 2)
    warm = _StepClock(100.0, started=0.0)
    for seconds in (9.0, 2.0, 3.0):  # warm-start steps of one pass: the Siamese step after them runs two
        warm.record(seconds, 1)
    assert warm.estimate(1) == 3.0 and warm.estimate(2) == 6.0 and warm.would_overrun(94.5, 2)
    assert not _StepClock(None, started=0.0).would_overrun(1e9, 2)


@pytest.mark.parametrize("variant", [dict(invariance="after-psf"), dict(invariance="both"),
                                     dict(invariance="none", lambda_bsp=1.0)])
def test_every_loss_position_trains(variant):
    _, noisy, psf = problem(2, sigma=0.1)
    res = train(noisy, psf, config=TrainConfig(steps=3, patch=16, batch=2, **variant), unet=TINY[2], device="cpu")
    terms = set(res.last_terms)
    expected = {"after-psf": {"inv_after"}, "both": {"inv_before", "inv_after"}}.get(variant["invariance"], {"bsp"})
    assert expected <= terms and all(np.isfinite(v) for v in res.last_terms.values())


def test_tiled_inference_equals_whole_volume_away_from_the_border():
    """The paper's recipe: a residual network's output is mostly the RL estimate, the same whole or
    tiled, which hid tiling errors (windows off the pooling grid: 1e-3 of the bound, against 8x it).
    Tiles of 10 x 20 x 20 overlap on every axis and start off the grid of 4 (z at 6, y and x at 12)."""
    _, noisy, psf = problem(3, sigma=0.1)
    res = train(noisy, psf, config=TrainConfig(steps=3, patch=16, batch=2, precondition=0.0, warm_start=0,
                                               residual=False), unet=TINY[3], device="cpu")
    whole = apply_model(res, noisy, device="cpu")
    counts = []
    tiled = apply_model(res, noisy, device="cpu", tile_shape=(10, 20, 20), callback=lambda d, n: counts.append(n))
    assert counts[-1] >= 8  # really tiled
    inner = (slice(4, -4), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-3 * float(whole.max()))


@pytest.mark.parametrize("bad, message", [
    (lambda img, psf: (img[None, None], psf), "2D or 3D"),
    (lambda img, psf: (np.where(img > 0.5, np.nan, img), psf), "NaN"),
    (lambda img, psf: (img, psf[None]), "same dimensions"),
    (lambda img, psf: (img[:4, :4], psf), "smaller than the PSF"),
    (lambda img, psf: (np.ones_like(img), psf), "constant"),
])
def test_bad_inputs_are_refused(bad, message):
    _, noisy, psf = problem(2, sigma=0.1)
    image, kernel = bad(noisy, psf)
    with pytest.raises(InputError, match=message):
        deconvolve(image, kernel, config=TrainConfig(steps=1, patch=16, batch=1), unet=TINY[2], device="cpu")


@pytest.mark.cuda
def test_cuda_training_with_mixed_precision_and_prediction():
    truth, noisy, psf = problem(3, sigma=0.15)
    cfg = TrainConfig(steps=60, patch=16, batch=4, lr=2e-3, seed=0, amp=True)
    result = train(noisy, psf, config=cfg, unet=TINY[3], device="cuda")
    assert next(result.model.parameters()).device.type == "cuda" and result.reason == "completed"
    out = apply_model(result, noisy, device="cuda", tta=True)
    assert out.dtype == np.float32 and out.min() >= 0
    assert psnr_rescaled(truth, out) > psnr_rescaled(truth, noisy) + 0.5


def test_a_batch_that_leaves_one_value_per_channel_at_the_bottom_is_refused():
    """Batch normalisation in training needs two values per channel: one small field in a batch of
    one ended in torch's ValueError (an internal error, exit 1); two fields are fine. A patch that
    already takes the whole image is not advised a larger one, which makes the same fields (it was;
    found by the second review of this stop's diff)."""
    _, noisy, psf = problem(2, sigma=0.1)
    small, psf = noisy[:6, :6], psf[2:-2, 2:-2]  # patch 6 and a 3x3 PSF: 8x8 fields, 1x1 after three halvings
    unet = UNetConfig(ndim=2, base_channels=4, depth=3)
    for patch in (6, 32):  # (the patch holds the whole image: no larger one changes the fields, check_patch)
        with pytest.raises(InputError, match=r"a batch of 1 training field.*use a batch of 2 or more \(--batch\)$"):
            train(small, psf, config=TrainConfig(steps=1, patch=patch, batch=1), unet=unet, device="cpu")
    # (too small to choose the reference's RL count by held-out voxels: a fixed count, said)
    with pytest.warns(RuntimeWarning, match=r"too small to choose the Richardson-Lucy reference's iteration count"):
        res = train(small, psf, config=TrainConfig(steps=1, patch=6, batch=2), unet=unet, device="cpu")
    assert res.steps_done == 1 and res.reference.iterations == 20


def test_a_patch_below_an_image_smaller_than_the_unet_s_factor_is_advised_a_batch_too():
    """On a 6x6 image and a UNet of depth 3, a patch of 2 was told "use a patch of 6 (--patch)", which a batch of 1
    then failed on (one value per channel at the coarsest level), and no larger patch could help: the advice names
    the batch of 2 too, and the run it advises trains."""
    import re

    _, noisy, psf = problem(2, sigma=0.1)
    small, psf = noisy[:6, :6], psf[2:-2, 2:-2]  # a 3x3 PSF: patch 6 makes 8x8 fields, 1x1 after three halvings
    unet = UNetConfig(ndim=2, base_channels=4, depth=3)
    with pytest.raises(InputError) as refused:
        train(small, psf, config=TrainConfig(steps=1, patch=2, batch=1), unet=unet, device="cpu")
    assert str(refused.value) == ("a training patch of 2 is smaller than the image (6, 6), itself smaller than 8, the "
                                  "down-sampling factor of a UNet of depth 3 (2**depth): use a patch of 6 and a batch "
                                  "of 2 or more (--patch, --batch)")
    patch, batch = map(int, re.search(r"use a patch of (\d+) and a batch of (\d+)", str(refused.value)).groups())
    with pytest.warns(RuntimeWarning, match=r"too small to choose the Richardson-Lucy reference's iteration count"):
        res = train(small, psf, config=TrainConfig(steps=1, patch=patch, batch=batch), unet=unet, device="cpu")
    assert res.steps_done == 1


@pytest.mark.parametrize("side, psf_side, depth", [(12, 3, 5), (8, 7, 5), (6, 1, 4), (6, 3, 6)])
def test_the_advice_for_a_patch_below_a_small_image_is_accepted_when_followed(side, psf_side, depth):
    """On an image smaller than 2**depth, the advice for a smaller patch (the whole image, a batch of 2) led to
    the next refusal, of the depth (a 12x12 image, a 3x3 PSF, depth 5: "pads the training fields to 32 voxels
    ... use a depth of 4 or less"): the advice names the depth that the fields take too, and the options it
    advises train."""
    import re

    _, noisy, _ = problem(2, sigma=0.1)
    small, psf = noisy[:side, :side], np.ones((psf_side, psf_side), np.float32)
    with pytest.raises(InputError) as refused:
        train(small, psf, config=TrainConfig(steps=1, patch=2, batch=1), unet=UNetConfig(ndim=2, base_channels=4,
                                                                                          depth=depth), device="cpu")
    advised = re.search(r"use a patch of (\d+), a batch of (\d+) or more and a depth of (\d+) or less \(--patch, "
                        r"--batch, --unet-depth\)$", str(refused.value))
    assert advised, str(refused.value)
    patch, batch, depth = map(int, advised.groups())
    with pytest.warns(RuntimeWarning, match=r"too small to choose the Richardson-Lucy reference's iteration count"):
        res = train(small, psf, config=TrainConfig(steps=1, patch=patch, batch=batch),
                    unet=UNetConfig(ndim=2, base_channels=4, depth=depth), device="cpu")
    assert res.steps_done == 1
    # the deepest the fields (the image and the PSF's halo) take: one deeper is refused
    with pytest.raises(InputError, match=rf"use a depth of {depth} or less"):
        train(small, psf, config=TrainConfig(steps=1, patch=patch, batch=batch),
              unet=UNetConfig(ndim=2, base_channels=4, depth=depth + 1), device="cpu")


def test_a_unet_deeper_than_its_fields_is_refused_before_it_allocates():
    """--unet-depth 10 padded 16-voxel fields to 1024 voxels a side: the run was killed for memory
    (23.6 GB) without a message. Padding up to twice the field still trains, as before."""
    _, noisy, psf = problem(2, sigma=0.1)  # 7x7 PSF: a 32-voxel patch makes fields of 38 voxels
    small = UNetConfig(ndim=2, base_channels=4, depth=5)  # 64 voxels a side: padded, allowed
    assert train(noisy, psf, config=TrainConfig(steps=1, patch=32, batch=2), unet=small, device="cpu").steps_done == 1
    # (a patch of the whole 48x48 image: fields of 54 voxels; a patch smaller than 2**depth is refused first)
    with pytest.raises(InputError, match="depth 7 pads the training fields to 128 voxels.*54.*use a depth of 6 or less"):
        train(noisy, psf, config=TrainConfig(steps=1, patch=48, batch=2), unet=UNetConfig(ndim=2, base_channels=4,
                                                                                         depth=7), device="cpu")


def test_a_patch_larger_than_the_image_takes_the_image_and_one_below_the_unet_s_factor_is_refused():
    """The compared regions take the image's size along axes shorter than the patch: the default 32 on a
    small image trains. A patch below the UNet's 2**depth (``--patch 1``, which trained) is refused."""
    _, noisy, psf = problem(2, sigma=0.1)  # 48x48
    res = train(noisy, psf, config=TrainConfig(steps=1, patch=64, batch=1, residual=False, warm_start=0),
                unet=TINY[2], device="cpu")
    assert res.steps_done == 1
    with pytest.raises(InputError, match=r"a training patch of 1 is smaller than \d+, the down-sampling factor"):
        train(noisy, psf, config=TrainConfig(steps=1, patch=1, batch=1), unet=TINY[2], device="cpu")
