"""Short seeded trainings: every objective lowers its loss; validation keeps the best weights."""

import importlib

import numpy as np
import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.latent.data import dyadic_triplets, fixed_triplet_crops, split_by_image
from deconv3d.latent.model import AEConfig, build_autoencoder
from deconv3d.latent.train import LatentTrainConfig, interpolation_psnr, train

TINY = AEConfig(widths=(4, 8), crop=16)
LEVELS = [0.0, 1.0, 2.0]


def quick(**kwargs):
    options = dict(steps=30, batch=4, lr=1e-2, ema_decay=0.9, val_fraction=0.0)
    options.update(kwargs)
    return LatentTrainConfig(**options)


@pytest.mark.parametrize("variant, dist, skip", [("baseline", "mse", False), ("implicit", "mse", False),
                                                 ("explicit", "mse", False), ("explicit", "l1", False),
                                                 ("explicit", "mse", True), ("explicit-residual", "mse", False)])
def test_short_training_lowers_every_loss(stacks, variant, dist, skip):
    ae = AEConfig(widths=(4, 8), crop=16, skip_interp=skip)
    residual = variant.endswith("-residual")
    result = train(stacks, LEVELS, quick(variant=variant.split("-")[0], dist=dist, residual=residual), ae, device="cpu")
    losses = np.array([loss for _, loss in result.history])
    assert result.reason == "completed" and len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.7 * losses[:5].mean()
    assert not result.model.training


def test_validation_keeps_the_best_averaged_weights(make_stacks):
    data = make_stacks(n_images=4)
    config = quick(steps=20, val_every=5, val_fraction=0.5, residual=False)  # the paper's form
    result = train(data, LEVELS, config, TINY, device="cpu")
    steps, scores = zip(*result.val_history)
    assert steps == (5, 10, 15, 20)
    assert result.best_score == max(scores) and result.best_step == steps[int(np.argmax(scores))]
    _, val = split_by_image(data, 0.5, config.seed)
    crops = [torch.from_numpy(a) for a in fixed_triplet_crops(val, dyadic_triplets(LEVELS), 16)]
    assert interpolation_psnr(result.model, *crops) == pytest.approx(result.best_score, abs=1e-3)


def test_callback_cancels_and_reports_every_step(stacks):
    seen = []

    def callback(step, loss):
        seen.append(step)
        return step == 3

    result = train(stacks, LEVELS, quick(), TINY, device="cpu", callback=callback)
    assert result.reason == "cancelled" and result.steps_done == 3 and seen == [1, 2, 3]


def thirty_second_steps(monkeypatch) -> list:
    """A fake clock (``[seconds]``, returned) on which each training step takes 30 s and nothing else any time."""
    import time

    train_module = importlib.import_module("deconv3d.latent.train")
    now = [0.0]
    real_step_function = train_module._step_function

    def slow_step_function(*args):
        once = real_step_function(*args)

        def slow(*batch):
            now[0] += 30.0
            return once(*batch)
        return slow

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(train_module, "_step_function", slow_step_function)
    return now


def test_a_step_that_would_end_past_the_time_budget_is_not_started(stacks, monkeypatch):
    """A step always finished, so the one started just before the budget ended ran past it by a step's time
    (0.4-4.6 s at the command's defaults on 2 cores). On a fake clock where each step takes 30 s and nothing
    else any time, a budget of 100 s runs 3 steps (90 s): a fourth would end at 120 s."""
    thirty_second_steps(monkeypatch)
    result = train(stacks, LEVELS, quick(steps=10, time_budget=100.0), TINY, device="cpu")
    assert (result.reason, result.steps_done, result.seconds) == ("time_budget", 3, 90.0)
    # a budget the last step fits in exactly runs it; one step always runs
    result = train(stacks, LEVELS, quick(steps=10, time_budget=90.0), TINY, device="cpu")
    assert (result.reason, result.steps_done) == ("time_budget", 3)
    result = train(stacks, LEVELS, quick(steps=10, time_budget=10.0), TINY, device="cpu")
    assert (result.reason, result.steps_done) == ("time_budget", 1)


def test_a_step_after_a_validation_that_leaves_too_little_budget_is_not_started(make_stacks, monkeypatch):
    """Found by the review of this stop's diff: the time budget was asked before the step's validation
    ran, so the step after it started when the validation had left too little of the budget (and ran
    past it by up to a step). On a fake clock, steps of 30 s and a validation of 20 s every 2 steps:
    under a budget of 100 s, step 2 and its validation end at 80 s, and a third step would end at 110 s."""
    train_module = importlib.import_module("deconv3d.latent.train")
    now = thirty_second_steps(monkeypatch)
    real_validate = train_module._Validator.__call__

    def twenty_second_validation(self, step, model):
        now[0] += 20.0
        return real_validate(self, step, model)

    monkeypatch.setattr(train_module._Validator, "__call__", twenty_second_validation)
    config = quick(steps=10, val_every=2, val_fraction=0.5, time_budget=100.0)
    result = train(make_stacks(n_images=4), LEVELS, config, TINY, device="cpu")
    assert (result.reason, result.steps_done, result.seconds) == ("time_budget", 2, 80.0)


def test_training_is_reproducible_from_seed(stacks):
    runs = [train(stacks, LEVELS, quick(steps=3), TINY, device="cpu") for _ in range(2)]
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_model_shapes_follow_the_config():
    model = build_autoencoder(AEConfig(widths=(2, 4, 8), crop=16), seed=0)
    z = model.encode(torch.rand(3, 1, 16, 16))
    assert [tuple(t.shape) for t in z] == [(3, 8, 2, 2)]
    assert tuple(model.decode(z).shape) == (3, 1, 16, 16)
    skip = build_autoencoder(AEConfig(widths=(2, 4), crop=16, skip_interp=True), seed=0)
    assert [tuple(t.shape) for t in skip.encode(torch.rand(1, 1, 16, 16))] == [(1, 2, 8, 8), (1, 4, 4, 4)]


@pytest.mark.parametrize("case", ["crop", "levels", "nan", "single plane", "one level pair"])
def test_bad_training_inputs_are_input_errors(stacks, case):
    data, levels, ae = stacks, LEVELS, TINY
    if case == "crop":
        ae = AEConfig(widths=(4, 8), crop=32)
    elif case == "levels":
        levels = [0.0, 1.0]
    elif case == "nan":
        data = stacks.copy()
        data[0, 0, 0, 0] = np.nan
    elif case == "single plane":
        data = stacks[0, 0]
    else:
        data, levels = stacks[:, :2], [0.0, 1.0]
    with pytest.raises(InputError):
        train(data, levels, quick(steps=1), ae, device="cpu")


@pytest.mark.parametrize("kwargs", [{"variant": "other"}, {"dist": "l2"}, {"steps": 0}, {"lr": -1.0},
                                    {"ema_decay": 1.0}, {"val_fraction": 1.0},
                                    {"variant": "baseline", "residual": True}, {"latent_weight": -0.1},
                                    {"latent_weight": float("nan")}, {"latent_norm": "batch"},
                                    {"stop_after": 0}, {"steps": 5, "stop_after": 6}, {"stop_after": 2.0},
                                    {"stop_after": True}])
def test_bad_train_config_is_input_error(kwargs):
    with pytest.raises(InputError):
        LatentTrainConfig(**kwargs)
    with pytest.raises(InputError):
        AEConfig(widths=(4, 8), crop=18)


@pytest.mark.parametrize("widths", ["48", (4.5, 8), (True, 8), (4, float("inf")), ()])
def test_widths_must_be_whole_positive_numbers(widths):
    with pytest.raises(InputError, match="widths must be"):
        AEConfig(widths=widths, crop=16)


def test_residual_validation_scores_the_residual_form(make_stacks):
    data = make_stacks(n_images=4)
    config = quick(steps=10, val_every=5, val_fraction=0.5, residual=True)
    result = train(data, LEVELS, config, TINY, device="cpu")
    _, val = split_by_image(data, 0.5, config.seed)
    crops = [torch.from_numpy(a) for a in fixed_triplet_crops(val, dyadic_triplets(LEVELS), 16)]
    best = interpolation_psnr(result.model, *crops, residual=True)
    assert best == pytest.approx(result.best_score, abs=1e-3)
    assert abs(best - interpolation_psnr(result.model, *crops)) > 0.01


# ------------------------------------------------------------------ weight averaging


def _trained_bn(seed):
    """A tiny network whose BatchNorm statistics have moved off their initial 0 / 1."""
    model = build_autoencoder(TINY, seed=seed).train()
    with torch.no_grad():
        model(torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(seed)))
    return model


def test_weight_average_update_is_the_warmed_up_lerp():
    """Update t moves every float parameter and buffer by ``1 - min(decay, (1 + t) / (10 + t))``
    of the way to the live network (Polyak-style averaging with warm-up); integer buffers are
    copied. With decay 0.2 the warm-up rules the first update (1 - 2/11) and the decay the second (1 - 0.2)."""
    from deconv3d._torch_common import WeightAverage

    average = WeightAverage(_trained_bn(0), decay=0.2, buffers=True)
    live = _trained_bn(1)
    expected = {k: v.clone() for k, v in average.model.state_dict().items()}
    for weight in (1 - 2 / 11, 1 - 0.2):
        average.update(live)
        for name, value in live.state_dict().items():
            if value.is_floating_point():
                expected[name] = expected[name] + weight * (value - expected[name])
            else:
                expected[name] = value.clone()
            torch.testing.assert_close(average.model.state_dict()[name], expected[name], rtol=1e-6, atol=1e-7)
    moved = [(expected[k] - v).abs().max() for k, v in _trained_bn(0).state_dict().items() if v.is_floating_point()]
    assert max(moved) > 0.1  # the check above compared values that really changed


def test_train_returns_trained_weights_not_the_initial_ones(stacks):
    """Without validation train() returns the averaged weights of the last step: they must have
    left the network built from the same seed (a frozen average would hand back the random start)."""
    result = train(stacks, LEVELS, quick(steps=5), TINY, device="cpu")
    initial = build_autoencoder(TINY, seed=0).state_dict()
    change = max(float((v - initial[k]).abs().max()) for k, v in result.model.state_dict().items()
                 if v.is_floating_point())
    assert change > 1e-3


# ------------------------------------------------------------------ interpolation score, divergence


class _SquareToy(torch.nn.Module):
    """``E(x) = (2 x,)``, ``D(z) = (z / 2) ** 2``: a decoder nonlinear in the latent, so the
    latent weights show in the output; it has no weights of its own."""

    @staticmethod
    def encode(x):
        return (2 * x,)

    @staticmethod
    def decode(z):
        return (z[0] / 2) ** 2


@pytest.mark.parametrize("residual", [False, True])
def test_interpolation_psnr_weights_the_far_latent_by_alpha_on_uneven_levels(make_stacks, residual):
    """Levels 0, 1, 4 give the one dyadic triplet (0, 1, 4) with alpha = (4 - 1) / (4 - 0) = 0.75,
    the weight of the level-0 latent (Mazilu et al., CAIP 2023, Sect. 3); the score is compared with
    the PSNR of ``D(0.75 E(x1) + 0.25 E(x3))`` (or its residual form) against ``x2`` by hand."""
    crops = fixed_triplet_crops(make_stacks(n_images=1), dyadic_triplets([0.0, 1.0, 4.0]), 16)
    x1, x2, x3, alpha = (a.astype(np.float64) for a in crops)
    assert np.allclose(alpha, 0.75)
    a = 0.75
    y2 = (a * x1 + (1 - a) * x3) ** 2
    if residual:
        y2 = y2 + a * (x1 - x1 ** 2) + (1 - a) * (x3 - x3 ** 2)
    want = np.mean(-10 * np.log10(np.maximum(((y2 - x2) ** 2).mean(axis=(1, 2, 3)), 1e-10)))
    got = interpolation_psnr(_SquareToy(), *(torch.from_numpy(c) for c in crops), residual=residual)
    assert got == pytest.approx(want, abs=1e-3)


def test_validator_never_keeps_a_non_finite_score(make_stacks, monkeypatch):
    """Nothing compares greater than NaN, so a NaN first score used to stay the best for good."""
    latent_train = importlib.import_module("deconv3d.latent.train")  # the package exports a function train

    scores = iter([float("nan"), 20.0, float("inf"), 10.0])
    monkeypatch.setattr(latent_train, "interpolation_psnr", lambda *args, **kwargs: next(scores))
    validator = latent_train._Validator(make_stacks(n_images=1), LEVELS, 16, torch.device("cpu"))
    model = build_autoencoder(TINY, seed=0)
    for step in (1, 2, 3, 4):
        validator(step, model)
    assert validator.best == 20.0 and validator.best_step == 2 and validator.best_state is not None
    assert len(validator.history) == 4


def test_a_diverging_run_stops_as_non_finite_loss(stacks, tmp_path):
    """With a learning rate of 1e9 the loss stays finite (the decoder ends in a sigmoid) while the
    BatchNorm running variances overflow; the run must stop as diverged, not report "completed",
    and its network must not be saved."""
    from deconv3d.latent.checkpoint import save_checkpoint

    result = train(stacks, LEVELS, quick(steps=8, lr=1e9), TINY, device="cpu")
    assert np.isfinite([loss for _, loss in result.history]).all()
    assert result.reason == "non-finite loss" and result.steps_done < 8 and result.best_score is None
    with pytest.raises(InputError, match="diverged"):
        save_checkpoint(result, tmp_path / "ae.ckpt", plane_shape=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_validation_score_stops_training(make_stacks, monkeypatch):
    latent_train = importlib.import_module("deconv3d.latent.train")  # the package exports a function train

    monkeypatch.setattr(latent_train, "interpolation_psnr", lambda *args, **kwargs: float("nan"))
    result = train(make_stacks(n_images=4), LEVELS, quick(steps=10, val_every=2, val_fraction=0.5), TINY,
                   device="cpu")
    assert result.reason == "non-finite loss" and result.steps_done == 2 and result.best_score is None


@pytest.mark.parametrize("residual", [False, True])
def test_the_trained_network_alone_is_applied_in_the_form_it_was_trained_in(stacks, residual):
    """``synthesize_blur(result.model, ...)`` scored 23.56 dB against 34.79 dB for ``synthesize_blur(result, ...)``:
    the bare network fell back to the plain form. It now records its form; a network that does not know keeps
    the plain default."""
    from deconv3d.latent.ops import FormWarning, deblur, synthesize_blur

    result = train(stacks, LEVELS, quick(steps=2, residual=residual), TINY, device="cpu")
    assert result.model.residual is residual
    far, mid, near = (p * 300 + 20 for p in stacks[0])
    synth = synthesize_blur(result.model, far, near, [0.25, 0.5])
    np.testing.assert_array_equal(synth, synthesize_blur(result, far, near, [0.25, 0.5]))
    np.testing.assert_array_equal(synth, synthesize_blur(result, far, near, [0.25, 0.5], residual=residual))
    with pytest.warns(FormWarning, match="not trained for"):  # the other form: it differs, and is said
        assert np.abs(synth - synthesize_blur(result.model, far, near, [0.25, 0.5], residual=not residual)).max() > 0
    np.testing.assert_array_equal(deblur(result.model, far, mid, 0.5), deblur(result, far, mid, 0.5))
    bare = build_autoencoder(TINY, seed=0)
    assert bare.residual is None
    np.testing.assert_array_equal(synthesize_blur(bare, far, near, [0.5]),
                                  synthesize_blur(bare, far, near, [0.5], residual=False))
