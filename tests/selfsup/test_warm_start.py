"""Warm start: the first steps regress the network onto Richardson-Lucy at the held-out count."""

import time
import warnings

import numpy as np
import pytest
import torch

from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.errors import InputError
from deconv3d.metrics import psnr_rescaled
from deconv3d.selfsup import TrainConfig, apply_model, load_checkpoint, save_checkpoint, train
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.patches import _PatchSampler
from deconv3d.selfsup.rl_reference import warm_start_target
from deconv3d.selfsup.train_setup import standardize
from test_train import TINY, problem


def test_target_is_bertero_rl_at_the_held_out_count():
    _, noisy, psf = problem(3, sigma=0.02)
    target, reference = warm_start_target(noisy, psf, "cpu")
    iterations = reference.iterations
    assert iterations == choose_iterations(noisy, psf, 100, device="cpu").iterations and reference.tv_weight == 0
    np.testing.assert_array_equal(target, richardson_lucy(noisy, psf, iterations, device="cpu"))


def test_a_deadline_ends_the_reference_search_with_the_best_so_far(monkeypatch):
    """The search (six TV weights, up to 100 held-out iterations each) ran before the training
    loop checked its budget: 17 s for a 2 s budget. A passed deadline keeps one iteration of the
    first weight; train() gives the search half its budget."""
    import importlib

    reference_module = importlib.import_module("deconv3d.selfsup.rl_reference")  # (where train() finds chosen_reference)

    _, noisy, psf = problem(3, sigma=0.02)
    with pytest.warns(RuntimeWarning, match="time budget ended the search .* at 1 iteration"):  # (it said nothing)
        _, reference = warm_start_target(noisy, psf, "cpu", "auto", deadline=0.0)
    assert (reference.iterations, reference.tv_weight) == (1, reference_module.WARM_TV_WEIGHTS[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a search that finished in time says nothing
        warm_start_target(noisy, psf, "cpu", 0.0, deadline=time.perf_counter() + 600)
    seen = []
    real = reference_module.chosen_reference

    def spy(*args, deadline=None, **kwargs):
        seen.append(deadline - time.perf_counter())
        # (the search runs to its end: on a loaded machine the set-up, inside the budget, left it too little)
        return real(*args, deadline=None, **kwargs)

    monkeypatch.setattr(reference_module, "chosen_reference", spy)
    train(noisy, psf, config=TrainConfig(steps=1, patch=16, batch=1, time_budget=8.0), unet=TINY[3], device="cpu")
    assert 0 < seen[0] <= reference_module.REFERENCE_SHARE * 8.0


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
    warm = train(noisy, psf, config=TrainConfig(residual=False, steps=80, warm_start=80, patch=16, batch=2, lr=2e-3, ema=0),
                 unet=TINY[3], device="cpu")
    losses = [loss for _, loss in warm.history]
    assert set(warm.last_terms) == {"warm", "total"}
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    out = apply_model(warm, noisy, device="cpu", band_limit=None)
    inner = (slice(3, -3), slice(4, -4), slice(4, -4))
    assert np.mean((out - target)[inner] ** 2) < 0.5 * np.mean((noisy - target)[inner] ** 2)
    assert psnr_rescaled(truth, out) > psnr_rescaled(truth, noisy) + 0.5  # measured 28.36 vs 27.63
    both = train(noisy, psf, config=TrainConfig(residual=False, steps=6, warm_start=4, patch=16, batch=2), unet=TINY[3], device="cpu")
    assert "data" in both.last_terms and "warm" not in both.last_terms and both.steps_done == 6


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", "Auto", None])
def test_bad_warm_start_is_refused(bad):
    with pytest.raises(InputError, match="warm_start"):
        TrainConfig(warm_start=bad)


def test_warm_start_auto_is_three_eighths_of_the_steps_and_the_default(monkeypatch):
    import sys

    assert TrainConfig().warm_start == "auto" and TrainConfig().precondition == "auto"
    assert [TrainConfig(residual=False, steps=n).warm_steps for n in (1, 2, 3, 8, 300, 400)] == [0, 0, 1, 3, 112, 150]
    assert TrainConfig(residual=False, steps=400, warm_start=7).warm_steps == 7 and TrainConfig(warm_start=0).warm_steps == 0
    calls = []
    steps = sys.modules["deconv3d.selfsup.steps"]  # the loop's own module
    warm_step = steps._warm_step
    monkeypatch.setattr(steps, "_warm_step", lambda *a, **k: calls.append(1) or warm_step(*a, **k))
    noisy, psf = problem(3, sigma=0.02)[1:]
    res = train(noisy, psf, config=TrainConfig(residual=False, steps=8, patch=16, batch=1), unet=TINY[3], device="cpu")
    assert len(calls) == 3 and res.steps_done == 8
    assert "data" in res.last_terms and "warm" not in res.last_terms


def test_checkpoint_records_the_warm_start_and_old_files_load_without(tmp_path):
    _, noisy, psf = problem(2, sigma=0.05)
    res = train(noisy, psf, config=TrainConfig(residual=False, steps=2, warm_start=1, patch=16, batch=1), unet=TINY[2], device="cpu")
    assert saved_then_without(res, tmp_path / "m.ckpt", "warm_start") == (1, 0)


def saved_then_without(res, path, name):
    """The field ``name`` of a saved checkpoint's config, then of the same file written without it."""
    save_checkpoint(res, path)
    saved = getattr(load_checkpoint(path).config, name)
    data = torch.load(path, weights_only=True)
    del data["train"][name]
    torch.save(data, path)
    return saved, getattr(load_checkpoint(path).config, name)


def test_anchor_adds_its_weighted_distance_to_the_target():
    """The anchored step's loss is the Siamese loss plus lambda * MSE(f(x), target), checked by hand."""
    from deconv3d.selfsup.losses import loss_weights
    from deconv3d._torch_common import MixedPrecision
    from deconv3d.selfsup.steps import _train_step
    from deconv3d.selfsup.train_setup import build_model

    _, noisy, psf = problem(3, sigma=0.02)
    image, mean, std = standardize(noisy)
    config = TrainConfig(patch=16, batch=2, augment=False)
    forward = ForwardModel(psf)
    geometry = forward.geometry([16, 16, 16], TINY[3].divisor)
    sampler = _PatchSampler(image, geometry, config, torch.device("cpu"))
    target = np.random.default_rng(3).normal(size=image.shape).astype(np.float32)
    sampler.set_target(target)
    batch = sampler.sample(2)
    model = build_model(TINY[3], 0).train()
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay put between the two steps
    args = (model, batch, forward, geometry.region, loss_weights(config), frozen, MixedPrecision(None), (mean, std))
    plain = _train_step(*args)
    anchored = _train_step(*args, anchor=2.5)
    with torch.no_grad():
        f = model(batch.fields)[(Ellipsis,) + tuple(geometry.region)].numpy().astype(np.float64)
    expected = np.mean((f - batch.target.numpy()) ** 2)
    assert "anchor" not in plain and anchored["anchor"] == pytest.approx(expected, rel=1e-5)
    assert anchored["total"] == pytest.approx(plain["total"] + 2.5 * expected, rel=1e-5)
    batch.target = None  # no target, no anchor (the paper's random start)
    assert "anchor" not in _train_step(*args[:1], batch, *args[2:], anchor=2.5)


def test_anchor_holds_after_the_warm_start_and_old_files_load_without(tmp_path):
    _, noisy, psf = problem(2, sigma=0.05)
    on = train(noisy, psf, config=TrainConfig(residual=False, steps=3, warm_start=1, patch=16, batch=1), unet=TINY[2], device="cpu")
    off = train(noisy, psf, config=TrainConfig(residual=False, steps=3, warm_start=1, patch=16, batch=1, lambda_anchor=0),
                unet=TINY[2], device="cpu")
    assert TrainConfig().lambda_anchor == "auto" and TrainConfig(residual=False).anchor_weight == 1.0
    assert TrainConfig(residual=True).anchor_weight == 0.0 and TrainConfig(lambda_anchor=0.5).anchor_weight == 0.5
    # The paper's random start has no RL target: "auto" adds none (it was 1, an RL pull in the paper's recipe).
    paper = TrainConfig(residual=False, warm_start=0, precondition=0, steps=3, patch=16, batch=1)
    assert paper.anchor_weight == 0.0 and TrainConfig(residual=False, warm_start=0, lambda_anchor=1).anchor_weight == 1
    assert "anchor" not in train(noisy, psf, config=paper, unet=TINY[2], device="cpu").last_terms
    assert "anchor" in on.last_terms and "anchor" not in off.last_terms
    for bad in (-1, float("inf"), "high", True):
        with pytest.raises(InputError, match="lambda_anchor"):
            TrainConfig(lambda_anchor=bad)
    assert saved_then_without(on, tmp_path / "m.ckpt", "lambda_anchor") == ("auto", 0.0)


def test_tv_target_is_rl_tv_and_auto_takes_the_lowest_held_out_error():
    from deconv3d.selfsup.rl_reference import WARM_TV_WEIGHTS

    _, noisy, psf = problem(3, sigma=0.02)
    target, reference = warm_start_target(noisy, psf, "cpu", tv_weight=0.01)
    k = reference.iterations
    assert reference.tv_weight == 0.01 and k == choose_iterations(noisy, psf, 100, tv_weight=0.01, device="cpu").iterations
    np.testing.assert_array_equal(target, richardson_lucy(noisy, psf, k, tv_weight=0.01, device="cpu"))
    choices = {w: choose_iterations(noisy, psf, 100, tv_weight=w, device="cpu") for w in WARM_TV_WEIGHTS}
    best = min(WARM_TV_WEIGHTS, key=lambda w: min(choices[w].risk))
    target, reference = warm_start_target(noisy, psf, "cpu", tv_weight="auto")
    k = reference.iterations
    assert k == choices[best].iterations and reference.tv_weight == best
    np.testing.assert_array_equal(target, richardson_lucy(noisy, psf, k, tv_weight=best, device="cpu"))
    assert TrainConfig(warm_tv=0.0).warm_tv == 0.0 and TrainConfig().warm_tv == "auto"
    _, noisier, psf = problem(3, sigma=0.15)  # noise-dominated: held-out voxels ask for more TV than 0.03
    assert warm_start_target(noisier, psf, "cpu", tv_weight="auto")[1].tv_weight > 0.03  # measured 0.1


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), True, "high", None])
def test_bad_warm_tv_is_refused(bad):
    with pytest.raises(InputError, match="warm_tv"):
        TrainConfig(warm_tv=bad)


def test_auto_warm_start_leaves_most_of_a_time_budget_to_the_siamese_loss():
    """(A budget of 2 s: the warm steps were 0.38-0.44 of all, as with 4 s, 0.39-0.40.) The search for the
    RL reference tries one TV weight: the six of warm_tv="auto" took 1.5 s on a loaded 2-core machine
    (two test processes and more), past their half of the budget, and the test warned that the budget
    had cut the search short; one takes 0.05 s there."""
    _, noisy, psf = problem(2, sigma=0.05)
    config = TrainConfig(residual=False, steps=100000, time_budget=2.0, patch=16, batch=1, warm_tv=0.0)
    res = train(noisy, psf, config=config, unet=TINY[2], device="cpu")
    assert res.reason == "time_budget" and res.warm_steps < config.warm_steps
    assert res.warm_steps < res.steps_done and "data" in res.last_terms and "warm" not in res.last_terms
    fixed = train(noisy, psf, config=TrainConfig(residual=False, steps=6, warm_start=4, patch=16, batch=1), unet=TINY[2], device="cpu")
    assert fixed.warm_steps == 4


def test_an_anchor_without_a_warm_start_still_anchors():
    """lambda_anchor > 0 with warm_start 0 (paper's form) keeps the anchor term; it was dropped for lack of a target."""
    from deconv3d.selfsup import TrainConfig, UNetConfig, train

    rng = np.random.default_rng(0)
    result = train(rng.random((12, 24, 24)).astype(np.float32) + 0.1, np.ones((3, 3, 3), np.float32),
                   config=TrainConfig(steps=2, patch=8, batch=1, residual=False, warm_start=0, lambda_anchor=5.0),
                   unet=UNetConfig(ndim=3, base_channels=4, depth=2), device="cpu")
    assert result.warm_steps == 0 and result.last_terms.get("anchor", 0.0) > 0


def test_train_s_reference_warnings_point_at_the_caller():
    """They pointed at deconv3d/selfsup/train.py (stacklevel 2 in warm_start_target, two calls below train)."""
    _, noisy, psf = problem(2, sigma=0.02)
    with pytest.warns(RuntimeWarning, match="time budget ended the search") as caught:
        train(noisy, psf, config=TrainConfig(steps=1, patch=16, batch=2, time_budget=1e-3), unet=TINY[2], device="cpu")
    (said,) = [w for w in caught if "time budget" in str(w.message)]
    assert said.filename == __file__ and "give a larger TrainConfig.time_budget" in str(said.message)
    assert "give a larger --time-budget" in said.message.command_line  # what the command line prints
    with pytest.warns(RuntimeWarning, match="too small to choose") as caught:
        train(noisy[:12, :12], psf, config=TrainConfig(steps=1, patch=8, batch=2), unet=TINY[2], device="cpu")
    assert [w.filename for w in caught if "too small" in str(w.message)] == [__file__]


def test_train_s_callback_hears_and_can_cancel_the_reference_search(tmp_path):
    """The search for RL's count (up to a minute on large stacks) called no callback: a GUI saw
    nothing and could not cancel it. It is step 0 now; cancelling there runs no step."""
    from deconv3d import Cancelled
    from deconv3d.selfsup import deconvolve

    _, noisy, psf = problem(2, sigma=0.02)
    calls = []

    def cancel_at_third(step, loss):
        calls.append(step)
        return len(calls) == 3

    result = train(noisy, psf, config=TrainConfig(steps=5, patch=16, batch=2), unet=TINY[2], device="cpu",
                   callback=cancel_at_third)
    assert calls == [0, 0, 0] and (result.reason, result.steps_done, result.history) == ("cancelled", 0, [])
    from deconv3d.selfsup import save_checkpoint  # no reference and no step: nothing to save (it saved an
    with pytest.raises(InputError, match="stopped before its first step"):  # unloadable file)
        save_checkpoint(result, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()
    with pytest.raises(Cancelled, match="training cancelled after 0 steps"):
        deconvolve(noisy, psf, config=TrainConfig(steps=5, patch=16, batch=2), unet=TINY[2], device="cpu",
                   train_callback=lambda step, loss: True)
    calls.clear()
    result = train(noisy, psf, config=TrainConfig(steps=2, patch=16, batch=2), unet=TINY[2], device="cpu",
                   callback=lambda step, loss: calls.append(step))
    assert calls[0] == 0 and calls[-2:] == [1, 2] and set(calls[:-2]) == {0} and result.reason == "completed"


def test_on_reference_hears_the_chosen_reference_before_rl_runs_at_it(monkeypatch):
    """Between the search's last report and step 1, RL at the chosen count and the first step (slower
    than the next ones) ran with nothing reported: `deconv3d train` showed no line for seconds.
    ``on_reference`` is called once the search has chosen, before both; never without a search."""
    from deconv3d.selfsup.config import Reference
    from deconv3d.selfsup.rl_reference import search_cap

    _, noisy, psf = problem(2, sigma=0.02)
    events = []
    estimate = Reference.estimate
    monkeypatch.setattr(Reference, "estimate", lambda self, *a, **k: events.append("rl") or estimate(self, *a, **k))
    result = train(noisy, psf, config=TrainConfig(steps=2, patch=16, batch=2, warm_tv=0.0), unet=TINY[2],
                   device="cpu", callback=lambda step, loss: events.append(step),
                   on_reference=lambda reference: events.append(reference))
    searched = events.index(result.reference)
    assert searched > 0 and set(events[:searched]) == {0} and events[searched + 1:] == ["rl", 1, 2], events
    assert searched <= search_cap(0.0) == 100 and search_cap("auto") == 600  # one TV weight searched, or six
    events.clear()
    train(noisy, psf, config=TrainConfig(steps=2, patch=16, batch=2, residual=False, warm_start=0), unet=TINY[2],
          device="cpu", callback=lambda step, loss: events.append(step),
          on_reference=lambda reference: events.append(reference))
    assert events == [1, 2]  # the paper's recipe: no reference


def test_the_search_and_the_reference_build_the_rl_set_up_once(monkeypatch, computed):
    """Each held-out fit of the search built the OTF twice and Bertero's 1 / H^T 1 once, and the reference's
    RL both again: 13 OTFs and 7 weights for warm_tv="auto", where one of each serves. They depend on the PSF and
    shape alone, so sharing them leaves the reference and its estimate unchanged, to the bit."""
    import contextlib
    import importlib

    from deconv3d.classical import _reuse

    reference_module = importlib.import_module("deconv3d.selfsup.rl_reference")
    _, noisy, psf = problem(3, sigma=0.02)
    builds = computed
    with monkeypatch.context() as unshared:
        unshared.setattr(reference_module, "_one_setup", contextlib.nullcontext)
        before = warm_start_target(noisy, psf, "cpu", "auto", extended=True)
    assert builds == {"otf": 13, "weight": 7}
    builds.update(otf=0, weight=0)
    after = warm_start_target(noisy, psf, "cpu", "auto", extended=True)
    assert builds == {"otf": 1, "weight": 1}
    assert after[1] == before[1]
    np.testing.assert_array_equal(after[0], before[0])
    assert _reuse._kept[0] is None  # dropped once the reference is computed
    builds.update(weight=0)
    train(noisy, psf, config=TrainConfig(steps=1, patch=16, batch=1, warm_tv=0.0), unet=TINY[3], device="cpu")
    assert builds["weight"] == 1 and _reuse._kept[0] is None  # train()'s search and reference share theirs too
