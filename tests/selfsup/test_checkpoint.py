"""Checkpoints: exact round trip, refusal of crafted pickles and of mismatched images or PSFs."""

import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.selfsup import (TrainConfig, TrainedModel, UNetConfig, apply_model, load_checkpoint, save_checkpoint,
                              training_record)
from deconv3d.selfsup.train import train


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    image = rng.random((12, 24, 24)).astype(np.float32)
    psf = np.ones((3, 5, 5), np.float32)
    cfg = TrainConfig(steps=2, patch=8, batch=2, invariance="both", seed=3)
    res = train(image, psf, config=cfg, unet=UNetConfig(ndim=3, base_channels=4, depth=2), device="cpu",
                voxel_size=(0.3, 0.1, 0.1))
    return res, image, psf


def test_round_trip_reproduces_outputs_exactly(trained, tmp_path):
    res, image, psf = trained
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    loaded = load_checkpoint(path)
    assert loaded.unet == res.unet and loaded.config == res.config
    assert (loaded.mean, loaded.std, loaded.voxel_size) == (res.mean, res.std, (0.3, 0.1, 0.1))
    np.testing.assert_array_equal(loaded.psf, res.psf)
    # (without the training run's RL estimate, which the file does not carry: RL runs afresh on both sides)
    np.testing.assert_array_equal(apply_model(loaded, image, device="cpu"),
                                  apply_model(replace(res, reference_cache=None), image, device="cpu"))
    assert os.listdir(tmp_path) == ["m.ckpt"]  # no temporary left


def test_the_checkpoint_records_how_training_went(trained, tmp_path):
    """Steps run, stop reason, warm-start steps, anchor and precision survive; older files have none."""
    res, _, _ = trained
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    run = {"train_steps": 2, "stopped": "completed", "warm_start": res.warm_steps, "anchor": res.config.anchor_weight,
           "precision": res.precision}
    from deconv3d import __version__

    saved = load_checkpoint(path).run  # with the release that saved it and when
    assert {k: saved[k] for k in run} == run and saved["deconv3d_version"] == __version__ and saved["saved"]
    record = load_checkpoint(path).record()  # what an output trained in the run records, and those two
    assert {k: v for k, v in record.items() if k not in ("deconv3d_version", "saved")} == training_record(res)
    data = torch.load(path, weights_only=True)
    del data["run"]  # a checkpoint from before the record
    torch.save(data, path)
    assert load_checkpoint(path).run is None and "train_steps" not in load_checkpoint(path).record()
    save_checkpoint(load_checkpoint(path), tmp_path / "again.ckpt")  # saved again, it still loads
    assert load_checkpoint(tmp_path / "again.ckpt").run is None
    data["run"] = {**run, "later": [1], "model": "other.ckpt"}  # keys of a later version are dropped
    torch.save(data, path)
    assert load_checkpoint(path).run == run
    for damaged in ("2 steps", {**run, "train_steps": "2"}, {**run, "train_steps": torch.tensor(2)},
                    {**run, "anchor": float("nan")}, {**run, "stopped": True}, {k: run[k] for k in list(run)[1:]}):
        data["run"] = damaged
        torch.save(data, path)
        with pytest.raises(InputError, match="damaged"):
            load_checkpoint(path)


def test_a_checkpoint_gets_the_mode_the_umask_gives_like_other_outputs(trained, tmp_path):
    """It was created owner-only (0600, tempfile.mkstemp) where TIFF outputs get 0644."""
    before = os.umask(0o022)
    try:
        save_checkpoint(trained[0], tmp_path / "m.ckpt")
    finally:
        os.umask(before)
    assert (tmp_path / "m.ckpt").stat().st_mode & 0o777 == 0o644


def test_checkpoint_from_before_the_weighted_data_term_loads_as_plain_mse(trained, tmp_path):
    """The recorded eps survives the round trip; a file without the field was trained with the plain MSE."""
    res, _, _ = trained
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    assert load_checkpoint(path).config.precondition == res.config.precondition
    data = torch.load(path, weights_only=True)
    del data["train"]["precondition"]
    torch.save(data, path)
    assert load_checkpoint(path).config.precondition == 0.0


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file if it is ever unpickled


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_crafted_pickle_is_refused_without_running_it(tmp_path, writer):
    marker, path = tmp_path / "ran", tmp_path / "evil.ckpt"
    obj = {"format": "deconv3d.selfsup/1", "state_dict": Payload(str(marker))}
    with open(path, "wb") as fh:
        (pickle.dump if writer == "pickle" else torch.save)(obj, fh)
    with pytest.raises(InputError, match="not a safe deconv3d checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_other_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "run").mkdir()  # (was "model file ... does not exist")
    with pytest.raises(InputError, match=r"^model .*run is a folder, not a checkpoint file: give the \.ckpt file "
                                         r"written by deconv3d train$"):
        load_checkpoint(tmp_path / "run")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a deconv3d self-supervised checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "text.ckpt")


def test_a_checkpoint_of_another_format_version_names_it(trained, tmp_path):
    """A file a later release wrote (format deconv3d.selfsup/2) was called "not a deconv3d
    self-supervised checkpoint"; the error now names its format and what to do."""
    res, _, _ = trained
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    data = torch.load(path, weights_only=True)
    data["format"] = "deconv3d.selfsup/2"
    torch.save(data, path)
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"m\.ckpt is a deconv3d checkpoint in format 'deconv3d\.selfsup/2', which "
                                         r"deconv3d \S+ does not read \(it reads 'deconv3d\.selfsup/1'\): apply it "
                                         r"with the deconv3d release that wrote it, or retrain"):
        load_checkpoint(path)
    assert path.read_bytes() == before


def test_mismatched_image_psf_or_voxel_size_is_refused(trained):
    res, image, psf = trained
    model = TrainedModel.from_result(res)
    model.check_compatible(3, psf * 7.0, (0.3, 0.1, 0.1))  # same PSF up to scale: accepted
    # A PSF file x1000 (or x3) prepared as the command line prepares it (centred by interpolation)
    # comes a float32 rounding from the training one (9e-8 of its peak) and was refused as "another PSF".
    import dataclasses

    from deconv3d.psf import generate_psf, prepare_psf

    raw = np.roll(generate_psf("gibson-lanni", (9, 15, 15), (0.3, 0.1, 0.1), 1.2, 0.52), 1, axis=2)
    measured = dataclasses.replace(model, psf=prepare_psf(raw, image.shape))
    for scale in (3.0, 1000.0):
        measured.check_compatible(3, prepare_psf(raw * np.float32(scale), image.shape), (0.3, 0.1, 0.1))
    other = model.psf.copy()  # one voxel 1 % off: another PSF
    other[tuple(n // 2 for n in other.shape)] *= 1.01
    with pytest.raises(InputError, match="another PSF"):
        model.check_compatible(3, other)
    with pytest.raises(InputError, match="trained on 3D"):
        model.check_compatible(2)
    with pytest.raises(InputError, match="another PSF"):
        model.check_compatible(3, np.ones((3, 3, 3), np.float32))
    with pytest.raises(InputError, match="voxel size"):
        model.check_compatible(3, psf, (0.5, 0.1, 0.1))
    with pytest.raises(InputError, match="must be 3 positive finite numbers"):
        model.check_compatible(3, psf, (0.1, 0.1))
    with pytest.raises(InputError, match="trained on 3D"):
        apply_model(model, image[0], device="cpu")


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("psf_fingerprint"),
    lambda d: d.update(mean="abc"),
    lambda d: d.update(std=0.0),
    lambda d: d.update(voxel_size=[0.3, "x", 0.1]),
    lambda d: d.update(voxel_size=[0.3, -0.1, 0.1]),
    lambda d: d["unet"].update(ndim=4),
    lambda d: d.update(voxel_size=[0.1, 0.1]),  # two values for a 3D network
])
def test_damaged_fields_are_a_clear_input_error(trained, tmp_path, damage):
    """A checkpoint that loads safely but has a field missing or out of range is refused as
    damaged (exit 2 in the CLI), not left to fail later with an internal error."""
    res, _, _ = trained
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    data = torch.load(path, weights_only=True)
    damage(data)
    torch.save(data, path)
    with pytest.raises(InputError, match="damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_damaged(trained, tmp_path, bad):
    """A NaN weight loaded, and its NaN result was blamed on the image ("the ssl result has NaN or
    Inf values ...: rescale the image")."""
    res, _, _ = trained
    path = tmp_path / "m.ckpt"
    save_checkpoint(res, path)
    data = torch.load(path, weights_only=True)
    name = next(k for k, t in data["state_dict"].items() if t.ndim > 1)
    data["state_dict"][name].view(-1)[0] = bad
    torch.save(data, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} is a damaged deconv3d checkpoint (non-finite weights): retrain the model"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_network_with_non_finite_weights_is_not_saved(trained, tmp_path, bad):
    """save_checkpoint wrote a network with a NaN weight, which load_checkpoint then refused as
    damaged: it is refused as it is saved, and neither a file nor a temporary is left (one already
    there stays as it was)."""
    import copy

    res, _, _ = trained
    broken = replace(res, model=copy.deepcopy(res.model))
    with torch.no_grad():
        next(p for p in broken.model.parameters() if p.ndim > 1).view(-1)[0] = bad
    with pytest.raises(InputError) as info:
        save_checkpoint(broken, tmp_path / "m.ckpt")
    assert str(info.value) == ("the network has NaN or infinite weights (its training diverged), so there is no "
                               "model to save: retrain with a lower learning rate")
    assert os.listdir(tmp_path) == []
    save_checkpoint(res, tmp_path / "m.ckpt")
    before = (tmp_path / "m.ckpt").read_bytes()
    with pytest.raises(InputError, match="no model to save"):
        save_checkpoint(TrainedModel.from_result(broken), tmp_path / "m.ckpt")
    assert os.listdir(tmp_path) == ["m.ckpt"] and (tmp_path / "m.ckpt").read_bytes() == before


def test_non_finite_image_is_refused_by_apply_model(trained):
    """A NaN would spread over the network's receptive field (in the paper's form no RL refuses it first)."""
    res, image, _ = trained
    plain = TrainedModel.from_result(res)
    for bad in (np.nan, np.inf):
        broken = image.copy()
        broken[5, 10, 10] = bad
        with pytest.raises(InputError, match="NaN or Inf"):
            apply_model(plain, broken, device="cpu")


def test_a_diverged_training_is_not_saved(trained, tmp_path):
    import dataclasses

    res, _, _ = trained
    diverged = dataclasses.replace(res, reason="non-finite loss", stopped_early=True)  # as train() reports one
    with pytest.raises(InputError, match="diverged"):
        save_checkpoint(diverged, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


@pytest.mark.parametrize("kwargs, word", [
    (dict(lr=float("nan")), "lr"), (dict(lr=1e39), "lr"), (dict(time_budget=-1.0), "time_budget"),
    (dict(time_budget=float("nan")), "time_budget"), (dict(lambda_inv=float("nan")), "loss weights"),
    (dict(mask_noise_std=float("inf")), "mask noise"), (dict(patch=2.5), "positive integers"),
    (dict(steps=True), "positive integers"), (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"),
    (dict(amp="no"), "amp must be True or False"),
])
def test_train_config_refuses_values_torch_cannot_use(kwargs, word):
    with pytest.raises(InputError, match=word):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(base_channels=2.5), dict(depth=0.5), dict(ndim=3.0)])
def test_unet_config_refuses_non_integers(kwargs):
    with pytest.raises(InputError):
        UNetConfig(**kwargs)


@pytest.mark.parametrize("voxel", [(float("nan"), 0.1, 0.1), (0.1, 0.1), 0.1, (0.0, 0.1, 0.1)])
def test_a_checkpoint_with_a_bad_voxel_size_is_damaged(trained, tmp_path, voxel):
    res, _, _ = trained
    save_checkpoint(res, tmp_path / "m.ckpt")
    data = torch.load(tmp_path / "m.ckpt", weights_only=True)
    data["voxel_size"] = voxel
    torch.save(data, tmp_path / "m.ckpt")
    with pytest.raises(InputError, match="damaged"):
        load_checkpoint(tmp_path / "m.ckpt")


@pytest.mark.parametrize("positive", [True, False])
def test_a_residual_network_records_the_positivity_it_was_trained_with(tmp_path, positive):
    """A residual network is built with a linear head either way, and the positivity asked for clamps
    its sum in training instead: ``--positive`` and ``--no-positive`` both recorded ``positive: false``,
    though their weights differ (reproducibility review). The record holds what ``train`` was given."""
    image = np.random.default_rng(0).random((24, 24)).astype(np.float32) - 0.5
    res = train(image, np.ones((3, 3), np.float32), config=TrainConfig(steps=1, patch=16, batch=2),
                unet=UNetConfig(ndim=2, base_channels=4, depth=2, positive=positive), device="cpu")
    assert not res.unet.positive  # the network's own head
    assert training_record(res)["unet"]["positive"] is positive
    save_checkpoint(res, tmp_path / "m.ckpt")
    loaded = load_checkpoint(tmp_path / "m.ckpt")
    assert not loaded.unet.positive and loaded.record()["unet"]["positive"] is positive


def test_the_checkpoint_records_the_environment_it_trained_in(trained, tmp_path):
    """Threads, the FFT backend and the versions change the weights' last bits, and checkpoints kept
    none of them (reproducibility review): those of the training, not of the saving (another test may
    have changed torch's threads since); saved again, a loaded network keeps its own."""
    import platform

    res, _, _ = trained
    save_checkpoint(res, tmp_path / "m.ckpt")
    loaded = load_checkpoint(tmp_path / "m.ckpt")
    environment = loaded.record()["environment"]
    assert environment == res.environment and environment["python"] == platform.python_version()
    assert environment["device"] == "cpu" and environment["threads"] >= 1 and environment["fft"].startswith("torch")
    loaded.run["environment"] = {**loaded.run["environment"], "threads": 99}  # as trained on another machine
    save_checkpoint(loaded, tmp_path / "again.ckpt")
    assert load_checkpoint(tmp_path / "again.ckpt").run["environment"]["threads"] == 99


def test_a_checkpoint_that_never_recorded_its_environment_is_saved_again_without_one(trained, tmp_path):
    """A file from before the environment was recorded, loaded and saved again, was given the saving
    process's (another machine's threads, and ``fft: torch`` for a residual network whatever its
    reference's transforms had used) as the one its network trained in (reproducibility review)."""
    res, _, _ = trained
    save_checkpoint(res, tmp_path / "m.ckpt")
    data = torch.load(tmp_path / "m.ckpt", weights_only=True)
    del data["run"]["environment"]  # as written before it was recorded
    torch.save(data, tmp_path / "old.ckpt")
    save_checkpoint(load_checkpoint(tmp_path / "old.ckpt"), tmp_path / "again.ckpt")
    run = load_checkpoint(tmp_path / "again.ckpt").run
    assert "environment" not in run and run["train_steps"] == res.steps_done
