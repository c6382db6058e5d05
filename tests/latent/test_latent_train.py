"""Short seeded trainings: every objective lowers its loss; validation keeps the best weights."""

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
                                    {"latent_weight": float("nan")}, {"latent_norm": "batch"}])
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
