"""Checkpoints: exact round trip, plain-dict config, atomic writes, crafted pickles refused."""

import dataclasses
import os
import pathlib
import pickle
import re
import shlex

import numpy as np
import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.latent.checkpoint import FORMAT, TrainedAutoencoder, load_checkpoint, save_checkpoint
from deconv3d.latent.model import AEConfig, build_autoencoder
from deconv3d.latent.ops import synthesize_blur
from deconv3d.latent.train import LatentTrainConfig, train


def trained(skip=False, widths=(4, 8)):
    ae = AEConfig(widths=widths, crop=16, skip_interp=skip)
    model = build_autoencoder(ae, seed=3).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return TrainedAutoencoder(model, ae, LatentTrainConfig(variant="implicit", steps=7), np.array([0.0, 2.0, 4.0]),
                              (16, 16), 21.5)


@pytest.mark.parametrize("skip", [False, True])
def test_round_trip_reproduces_outputs_exactly(tmp_path, skip):
    original = trained(skip)
    path = tmp_path / "ae.ckpt"
    save_checkpoint(original, path)
    loaded = load_checkpoint(path)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original.model(x), loaded.model(x))
    assert loaded.ae_config == original.ae_config and loaded.config == original.config
    assert loaded.levels.tolist() == [0.0, 2.0, 4.0] and loaded.plane_shape == (16, 16)
    assert loaded.best_score == 21.5 and not loaded.model.training
    far, near = np.random.default_rng(1).random((2, 16, 16))
    assert np.array_equal(synthesize_blur(original, far, near, [0.5]), synthesize_blur(loaded, far, near, [0.5]))
    # the network alone knows the form it was trained in (residual here), and is applied in it
    assert original.model.residual is None and loaded.model.residual is True
    assert np.array_equal(synthesize_blur(loaded.model, far, near, [0.5]), synthesize_blur(original, far, near, [0.5]))


def test_round_trip_from_a_training_result(tmp_path, stacks):
    result = train(stacks, [0, 1, 2], LatentTrainConfig(steps=2, batch=2, val_fraction=0.0),
                   AEConfig(widths=(4, 8), crop=16), device="cpu")
    save_checkpoint(result, tmp_path / "r.ckpt", plane_shape=stacks.shape[-2:])
    loaded = load_checkpoint(tmp_path / "r.ckpt")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(result.model(x), loaded.model(x))
    assert loaded.config.steps == 2 and loaded.plane_shape == (16, 16)


@pytest.mark.parametrize("val_fraction", [0.5, 0.0])
def test_the_checkpoint_records_the_step_whose_weights_it_holds(tmp_path, stacks, val_fraction):
    """The best validated weights are kept, so a run of 400 steps could hold step 300's while its
    record said only train_steps 400 (reproducibility review); without validation, the last ones."""
    result = train(stacks, [0, 1, 2], LatentTrainConfig(steps=3, batch=2, val_every=1, val_fraction=val_fraction),
                   AEConfig(widths=(4, 8), crop=16), device="cpu")
    save_checkpoint(result, tmp_path / "r.ckpt", plane_shape=stacks.shape[-2:])
    run = load_checkpoint(tmp_path / "r.ckpt").run
    if val_fraction:
        scores = dict(result.val_history)
        assert run["best_step"] == result.best_step == max(scores, key=scores.get)
    else:
        assert result.best_score is None and run["best_step"] == run["train_steps"] == 3


def test_the_checkpoint_records_the_environment_it_trained_in(tmp_path, stacks):
    """Threads, the FFT backend and the versions change the weights' last bits (reproducibility review):
    the training records them; a file saved again keeps its own, or none where it never had one (it
    was given the saving process's)."""
    from deconv3d.pipeline import run_environment

    result = train(stacks, [0, 1, 2], LatentTrainConfig(steps=1, batch=2, val_fraction=0.0),
                   AEConfig(widths=(4, 8), crop=16), device="cpu")
    save_checkpoint(result, tmp_path / "r.ckpt")
    loaded = load_checkpoint(tmp_path / "r.ckpt")
    assert loaded.run["environment"] == run_environment("cpu", fft_shapes=None)  # (the autoencoder has no FFT)
    loaded.run["environment"] = {**loaded.run["environment"], "threads": 99}  # as trained on another machine
    save_checkpoint(loaded, tmp_path / "again.ckpt")  # saved again, it keeps its own
    assert load_checkpoint(tmp_path / "again.ckpt").run["environment"]["threads"] == 99
    # one that never recorded it (written before it was recorded) is not given the saving process's
    del loaded.run["environment"]
    save_checkpoint(loaded, tmp_path / "old.ckpt")
    assert "environment" not in load_checkpoint(tmp_path / "old.ckpt").run
    assert result.environment == run_environment("cpu", fft_shapes=None)  # the training's own


def test_file_holds_format_tag_and_plain_config(tmp_path):
    save_checkpoint(trained(), tmp_path / "ae.ckpt")
    data = torch.load(tmp_path / "ae.ckpt", weights_only=True)
    assert data["format"] == FORMAT
    assert data["model"] == {"widths": [4, 8], "depth": 2, "crop": 16, "skip_interp": False}
    assert data["train"]["variant"] == "implicit" and data["levels"] == [0.0, 2.0, 4.0]
    assert os.listdir(tmp_path) == ["ae.ckpt"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(trained(), tmp_path / "ae.ckpt")
    assert os.listdir(tmp_path) == []


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_crafted_pickle_is_refused_without_running(tmp_path, writer):
    marker, path = tmp_path / "PWNED", tmp_path / "evil.ckpt"
    obj = {"format": FORMAT, "state_dict": Payload(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    with pytest.raises(InputError, match="not a safe"):
        load_checkpoint(path)
    assert not marker.exists()


def test_payload_is_live_so_the_refusal_test_means_something(tmp_path):
    marker = tmp_path / "RAN"
    pickle.loads(pickle.dumps(Payload(marker)))  # an unsafe loader runs it
    assert marker.exists()


def test_other_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"format": "deconv3d.selfsup/1"}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a deconv3d blur"):
        load_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "text.ckpt")


def test_weights_of_another_size_are_refused(tmp_path):
    path = tmp_path / "ae.ckpt"
    save_checkpoint(trained(widths=(4, 8)), path)
    data = torch.load(path, weights_only=True)
    data["model"]["widths"] = [8, 16]
    torch.save(data, path)
    with pytest.raises(InputError, match="another size"):
        load_checkpoint(path)
    data["model"] = {"widths": [4, 8], "depth": 3, "crop": 16}
    torch.save(data, path)
    with pytest.raises(InputError, match="damaged"):
        load_checkpoint(path)


def test_planes_smaller_than_the_training_crops_are_refused():
    model = trained()
    model.check_planes((16, 40))
    with pytest.raises(InputError, match="another size.*--crop 8"):
        model.check_planes((8, 40))


def test_config_without_a_latent_weight_was_trained_at_the_papers_weight():
    from deconv3d.latent.train import LatentTrainConfig, config_to_dict, train_config_from_dict

    stored = config_to_dict(LatentTrainConfig(latent_weight=0.3, steps=7))
    assert train_config_from_dict(stored) == LatentTrainConfig(latent_weight=0.3, steps=7)
    del stored["latent_weight"]  # a checkpoint from before the weight was a parameter
    assert train_config_from_dict(stored).latent_weight == 1.0


def test_config_without_a_latent_norm_used_the_absolute_term():
    from deconv3d.latent.train import LatentTrainConfig, config_to_dict, train_config_from_dict

    stored = config_to_dict(LatentTrainConfig(latent_norm="endpoints"))
    assert train_config_from_dict(stored).latent_norm == "endpoints"
    del stored["latent_norm"]
    assert train_config_from_dict(stored).latent_norm == "none"


def test_residual_form_is_the_default_except_for_baseline_and_old_checkpoints():
    from deconv3d.latent.train import LatentTrainConfig, config_to_dict, train_config_from_dict

    assert LatentTrainConfig().residual is True
    assert LatentTrainConfig(variant="implicit").residual is True
    assert LatentTrainConfig(variant="baseline").residual is False
    assert LatentTrainConfig(residual=False).residual is False
    stored = config_to_dict(LatentTrainConfig())
    assert stored["residual"] is True and train_config_from_dict(stored).residual is True
    del stored["residual"]  # a checkpoint from before residual training existed: the paper's form
    assert train_config_from_dict(stored).residual is False


@pytest.mark.parametrize("damage, words", [
    (lambda d: d["train"].update(variant="fancy"), ["variant must be one of"]),
    (lambda d: d["train"].update(residual="no"), ["residual must be"]),
    (lambda d: d.update(levels=[0.0, 1.0]), ["levels"]),
    (lambda d: d.update(pixel_size=[0.1, -1.0]), ["ValueError"]),
    (lambda d: d["model"].update(widths="48"), ["widths must be"]),  # read as (4, 8) before
])
def test_a_field_out_of_range_names_the_damaged_file(tmp_path, damage, words):
    """Not the training option's own message alone (the user ran synth, not train)."""
    path = tmp_path / "ae.ckpt"
    save_checkpoint(trained(), path)
    data = torch.load(path, weights_only=True)
    damage(data)
    torch.save(data, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "damaged deconv3d checkpoint" in message and "retrain" in message
    assert all(w in message for w in words), message


def test_a_truncated_checkpoint_is_called_truncated_not_unsafe(tmp_path):
    """A copy cut short (head -c 7000 ae.ckpt) was "not a safe deconv3d checkpoint (it holds objects
    that could run code, ...)"; the unpickler's refusal of such objects stays (tests/selfsup)."""
    path = tmp_path / "ae.ckpt"
    save_checkpoint(trained(), path)
    whole = path.read_bytes()
    for size in (0, 10, 1000, len(whole) // 2, len(whole) - 1):
        cut = tmp_path / f"cut{size}.ckpt"
        cut.write_bytes(whole[:size])
        with pytest.raises(InputError) as info:
            load_checkpoint(cut)
        assert str(info.value) == (f"{cut} is truncated or damaged (it cannot be read to its end): copy it again, "
                                   "or write it again with deconv3d blur train"), size


def test_a_checkpoint_whose_weight_bytes_were_overwritten_is_called_damaged(tmp_path):
    """8 bytes of a weight tensor overwritten (zip CRC no longer matching) loaded silently, and the
    damaged weights changed the result: torch.load does not check the CRC."""
    import struct
    import zipfile

    path = tmp_path / "ae.ckpt"
    save_checkpoint(trained(), path)
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
    data[start:start + 8] = struct.pack("<2f", 12.5, -7.25)  # finite weights: only the CRC tells
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    before, after = (torch.load(p, weights_only=True)["state_dict"] for p in (path, damaged))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # torch.load takes the damage as weights
    with pytest.raises(InputError) as info:
        load_checkpoint(damaged)
    assert str(info.value) == (f"{damaged} is truncated or damaged (it cannot be read to its end): copy it again, "
                               "or write it again with deconv3d blur train")
    assert load_checkpoint(path).levels.tolist() == [0.0, 2.0, 4.0]  # the intact file still loads


def test_a_network_with_non_finite_buffers_is_not_saved(tmp_path):
    """load_checkpoint refuses such a file as damaged, so save_checkpoint must not write one."""
    original = trained()
    bn = next(m for m in original.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        save_checkpoint(original, tmp_path / "ae.ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, words", [
    ({"pixel_size": (0.0, -1.0)}, "pixel_size must be two positive, finite (y, x) sizes in µm"),
    ({"pixel_size": (0.1,)}, "pixel_size must be two positive"),
    ({"pixel_size": 0.1}, "pixel_size must be two positive"),  # (TypeError and ValueError from the conversion:
    ({"pixel_size": ("a", "b")}, "pixel_size must be two positive"),  # found by the review of this stop's diff)
    ({"training_stacks": [{"path": pathlib.Path("a.tif"), "sha256": "0" * 64}]}, "str(path)"),
    ({"training_stacks": [{"path": "a.tif", "size": np.int64(3)}]}, "refuses to unpickle"),
])
def test_what_loading_would_refuse_is_not_saved(tmp_path, options, words):
    """save_checkpoint wrote such a file whole, and load_checkpoint then refused it on every load (as
    damaged for the pixel size, as "not a safe deconv3d checkpoint" for a Path): the model was lost.
    A file already at the path is left as it was."""
    path = tmp_path / "ae.ckpt"
    path.write_bytes(b"before")
    run = {"train_steps": 7, "stopped": "completed", "precision": "float32"}  # (training_stacks join a run record)
    model = dataclasses.replace(trained(), run=run, pixel_size=options.get("pixel_size"))
    with pytest.raises(InputError) as info:
        save_checkpoint(model, path, training_stacks=options.get("training_stacks"))
    assert words in str(info.value)
    assert path.read_bytes() == b"before" and os.listdir(tmp_path) == ["ae.ckpt"]
    save_checkpoint(dataclasses.replace(model, pixel_size=(0.1, 0.1)), path,
                    training_stacks=[{"path": "a.tif", "sha256": "0" * 64}])  # plain values load
    assert load_checkpoint(path).run["training_stacks"] == [{"path": "a.tif", "sha256": "0" * 64}]


@pytest.mark.parametrize("stacks", ["a.tif", ("a.tif",), {"path": "a.tif", "sha256": "0" * 64}])
def test_training_stacks_that_are_not_a_list_are_refused_before_writing(tmp_path, stacks):
    """A string (one path) was saved and read back with no training_stacks in the run record: the
    record's type is a list, and load_checkpoint drops what is not. Refused, naming the fix; a file
    already at the path is left as it was."""
    path = tmp_path / "ae.ckpt"
    path.write_bytes(b"before")
    model = dataclasses.replace(trained(), run={"train_steps": 7, "stopped": "completed", "precision": "float32"})
    with pytest.raises(InputError, match=r"training_stacks must be a list, got \w+: give a list") as info:
        save_checkpoint(model, path, training_stacks=stacks)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"before" and os.listdir(tmp_path) == ["ae.ckpt"]
    one = [{"path": "a.tif", "sha256": "0" * 64}]  # the fix the line names: a list, of one stack here
    save_checkpoint(model, path, training_stacks=one)
    assert load_checkpoint(path).run["training_stacks"] == one


@pytest.mark.parametrize("changed, words", [
    ({"training_stacks": "a.tif"}, "training_stacks must be a list, got str: give a list"),
    ({"best_step": "3"}, "run record's best_step must be of type int, got str"),
    ({"precision": None}, "run record's precision must be of type str, got NoneType"),
])
def test_a_run_record_that_would_not_read_back_is_refused_before_writing(tmp_path, changed, words):
    """training_stacks='a.tif' in TrainedAutoencoder.run (not given to save_checkpoint, whose own argument
    was checked) was saved, and read back with no training_stacks: load_checkpoint drops a later key of
    another type. A required key of another type was saved and the file then refused as damaged."""
    path = tmp_path / "ae.ckpt"
    path.write_bytes(b"before")
    run = {"train_steps": 7, "stopped": "completed", "precision": "float32"}
    with pytest.raises(InputError, match=re.escape(words)) as info:
        save_checkpoint(dataclasses.replace(trained(), run={**run, **changed}), path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"before" and os.listdir(tmp_path) == ["ae.ckpt"]
    one = [{"path": "a.tif", "sha256": "0" * 64}]
    save_checkpoint(dataclasses.replace(trained(), run={**run, "best_step": 3, "training_stacks": one}), path)
    assert load_checkpoint(path).run["training_stacks"] == one and load_checkpoint(path).run["best_step"] == 3
