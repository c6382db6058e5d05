"""ssl without a model on the chunked path (a .zarr output, --chunks, batch): the network is trained
on the image first, as an in-memory run does, and its recipe goes into the provenance."""

import copy
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from deconv3d import _torch_common
from deconv3d.errors import InputError
from deconv3d.io import read_image, write_tiff
from deconv3d.omezarr import read_ome_zarr
from deconv3d.pipeline.settings import make_settings

from .conftest import blurred_beads, gaussian_psf

SMALL = ["--base-channels", "4", "--unet-depth", "2", "--patch", "16", "--no-residual", "--warm-start", "0"]


@pytest.fixture
def files(tmp_path):
    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(tmp_path / "img.tif", blurred_beads((8, 32, 32), psf, seed=4), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def _provenance(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]["deconv3d"]


def test_a_zarr_output_trains_on_the_image_as_an_in_memory_run_does(files, capsys, monkeypatch):
    """`deconvolve --method ssl --train-steps N -o OUT.zarr` was refused ("train one first")."""
    monkeypatch.chdir(files)
    write_tiff(files / "wide.tif", blurred_beads((8, 32, 96), gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0)), seed=4),
               voxel_size=(0.3, 0.1, 0.1))
    # (in float32: bfloat16 inference on a CPU with AMX rounds differently in the blocks' shapes, 1e-3 of the peak)
    argv = ["wide.tif", "--psf", "psf.tif", "--method", "ssl", "--train-steps", "3", "--seed", "5", "--no-amp", *SMALL]
    assert run(["deconvolve", "-o", "mem.tif", *argv], capsys)[0] == 0
    code, out, err = run(["deconvolve", "-o", "out.zarr", "--chunks", "8", "32", "32", *argv], capsys)
    assert code == 0, err
    assert "in 3 block(s)" in out
    in_memory = read_image(files / "mem.tif").data
    chunked = np.asarray(read_ome_zarr(files / "out.zarr")[0]).reshape(in_memory.shape)
    assert in_memory.max() > 0
    # The same network (same seed): the blocks differ from the one in-memory pass only at their seams,
    # where the context cuts the network's reach (1.3e-5 of the peak here)
    np.testing.assert_allclose(chunked, in_memory, rtol=0, atol=1e-4 * in_memory.max())
    record = _provenance(files / "out.zarr")
    assert "model_sha256" not in record and "model" not in record["parameters"]
    assert record["parameters"]["train_steps"] == 3 and record["parameters"]["training"]["seed"] == 5
    assert record["parameters"]["unet"]["base_channels"] == 4


def test_batch_trains_one_network_per_image(files, capsys, monkeypatch):
    from deconv3d.cli import selfsup

    defaults = selfsup.training_defaults()  # 'deconv3d train''s, on a smaller network to keep the test short
    small = {"base_channels": 4, "unet_depth": 2, "patch": 16, "residual": False, "warm_start": 0}
    monkeypatch.setattr(selfsup, "training_defaults", lambda: {**defaults, **small})
    monkeypatch.chdir(files)
    (files / "in").mkdir()
    for name, seed in (("a.tif", 1), ("b.tif", 2)):
        write_tiff(files / "in" / name, blurred_beads((8, 32, 32), gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0)), seed=seed),
                   voxel_size=(0.3, 0.1, 0.1))
    argv = ["batch", "in", "-o", "res", "--psf", "psf.tif", "--method", "ssl", "--train-steps", "2", "--no-amp"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads((files / "res" / "batch_report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["done", "done"]
    records = [_provenance(files / "res" / name) for name in ("a.zarr", "b.zarr")]
    # The defaults of 'deconv3d train' (batch 2 patches, not TrainConfig's 4)
    assert all(r["parameters"]["train_steps"] == 2 and r["parameters"]["training"]["batch"] == 2 for r in records)
    assert all(r["parameters"]["unet"]["base_channels"] == 4 for r in records)
    # --no-amp: trained in float32 (bfloat16 on a CPU with AMX otherwise)
    assert all(r["parameters"]["precision"] == "float32" and not r["parameters"]["training"]["amp"] for r in records)
    code, out, err = run(argv, capsys)
    assert code == 0 and out.count("] skipped") == 2, out  # finished: not trained again


@pytest.mark.parametrize("values, words", [
    ({"method": "ssl", "train_steps": 2, "model": "m.ckpt"}, ["model", "train_steps", "not both"]),
    ({"method": "ssl"}, ["model", "train_steps"]),
    ({"method": "rl", "model": "m.ckpt"}, ["model applies to method ssl only: remove it for rl"]),
    ({"method": "wiener", "train_steps": 3}, ["train_steps applies to method ssl only: remove it"]),
    ({"method": "rl", "model": "m.ckpt", "train_steps": 3}, ["model and train_steps", "remove them"]),
    ({"method": "ssl", "train_steps": 0}, ["positive whole number"]),
    ({"method": "ssl", "train_steps": 2.5}, ["positive whole number"]),
    ({"method": "ssl", "train_steps": 2, "seed": -1}, ["seed"]),
])
def test_settings_refuse_a_model_or_training_that_does_not_apply(files, values, words):
    """A batch with --model and method rl ran without a word (deconvolve refuses it)."""
    (files / "m.ckpt").write_bytes(b"")
    with pytest.raises(InputError) as caught:
        make_settings({"psf": str(files / "psf.tif"), **{k: str(files / v) if k == "model" else v
                                                          for k, v in values.items()}})
    for word in words:
        assert word in str(caught.value)


def test_a_missing_psf_beside_a_model_is_refused_as_missing(files):
    """Found by the review of this stop's diff: with a model, the PSF files were not checked, and a PSF file
    that does not exist ended the batch in an internal error (FileNotFoundError)."""
    (files / "m.ckpt").write_bytes(b"")
    with pytest.raises(InputError, match="PSF file not found: .*missing.tif: check the path"):
        make_settings({"method": "ssl", "model": str(files / "m.ckpt"), "psf": str(files / "missing.tif")})


def test_training_on_a_hyperstack_or_past_the_memory_limit_is_refused(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    stack = np.stack([read_image(files / "img.tif").data] * 2, axis=1)  # z, c, y, x
    _write_zcyx(files / "two.tif", stack)
    code, _, err = run(["deconvolve", "two.tif", "-o", "two.zarr", "--psf", "psf.tif", "--method", "ssl",
                        "--train-steps", "2"], capsys)
    assert_one_line_error(code, err, "one channel and time point", "--model")
    write_tiff(files / "big.tif", np.ones((8, 96, 96), np.float32), voxel_size=(0.3, 0.1, 0.1))  # 295 kB
    code, _, err = run(["deconvolve", "big.tif", "-o", "lim.zarr", "--psf", "psf.tif", "--method", "ssl",
                        "--train-steps", "2", "--memory-limit", "1MB"], capsys)
    assert_one_line_error(code, err, "memory", "crop")
    assert not (files / "two.zarr").exists() and not (files / "lim.zarr").exists()


def _write_zcyx(path, stack):
    import tifffile

    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "um"},
                     resolution=(10.0, 10.0))


def test_batch_records_still_match_after_the_new_settings_and_the_auto_device(files, monkeypatch):
    """Adding train_steps and seed, and making the device default auto, must not make every
    batch folder's completion records stale: the fingerprint of settings that leave them at
    their defaults is computed as before (and auto is the device it resolves to, here the CPU).
    (Records written with an explicit ``auto`` before auto was fingerprinted as its device are
    redone once.)"""
    from deconv3d.omezarr import file_sha256

    def old_fingerprint(settings, device):
        before = {k: v for k, v in dataclasses.asdict(settings).items()
                  if k not in ("pattern", "train_steps", "seed", "amp", "saturation")}
        before.update(device=device, psf=[file_sha256(files / "psf.tif")])
        before["acceleration_floor"] = 0.65  # (accelerated rl, 20 iterations: records made before it are redone once)
        return hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]

    import torch

    psf = {"psf": str(files / "psf.tif")}
    settings = make_settings(psf)
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    assert settings.device is None and settings.run_device == "auto"  # runs as auto ...
    assert settings.fingerprint() == old_fingerprint(settings, kind)  # ... and matches the old default's records
    # auto is the device it picks: --device auto did not match a batch run without --device (it
    # redid every file, and was refused as other settings while that ran); cuda:N is cuda
    for device in ("auto", kind):
        assert make_settings({**psf, "device": device}).fingerprint() == settings.fingerprint()
    for device, expected in (("cuda:1", "cuda"), ("cuda", "cuda"), ("cpu", "cpu")):
        other = copy.copy(settings)  # not validated: validation refuses cuda on a machine without a GPU
        object.__setattr__(other, "device", device)
        assert other.device_kind() == expected
    assert make_settings({**psf, "seed": 1}).fingerprint() == settings.fingerprint()  # rl ignores the seed
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: True)  # amp on resolves to bfloat16
    ssl = [make_settings({**psf, "method": "ssl", "train_steps": 5, "seed": s}).fingerprint() for s in (0, 1)]
    assert ssl[0] != ssl[1]
    # amp: another training for ssl (float32 against bfloat16 on AMX CPUs), nothing for rl
    assert make_settings({**psf, "method": "ssl", "train_steps": 5, "amp": False}).fingerprint() != ssl[0]
    assert make_settings({**psf, "amp": False}).fingerprint() == settings.fingerprint()
    # a trained --model: nothing is trained, so the training's seed changes nothing (--seed with --model redid
    # every finished file); amp does, as the network's inference runs in bfloat16 on AMX CPUs with it
    (files / "m.ckpt").write_bytes(b"weights")
    model = {**psf, "method": "ssl", "model": str(files / "m.ckpt")}
    assert make_settings({**model, "seed": 3}).fingerprint() == make_settings(model).fingerprint()
    assert make_settings({**model, "amp": False}).fingerprint() != make_settings(model).fingerprint()


@pytest.mark.parametrize("amx", [True, False])
def test_the_fingerprint_holds_the_precision_amp_resolves_to(files, monkeypatch, amx):
    """Found by review: the fingerprint held amp as asked, so a batch resumed on a CPU without AMX
    (float32) skipped the files finished in bfloat16 and wrote the rest in float32 under one record.
    An earlier version's records cannot tell the two precisions apart (amp on was left out of them,
    and ran in bfloat16 on AMX CPUs and float32 elsewhere), so none of them matches: redone once."""
    from deconv3d.omezarr import file_sha256

    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: amx)
    (files / "m.ckpt").write_bytes(b"weights")
    model = {"psf": str(files / "psf.tif"), "method": "ssl", "model": str(files / "m.ckpt"), "device": "cpu"}
    on, off = (make_settings({**model, "amp": amp}) for amp in (True, False))
    assert on.precision() == ("bfloat16" if amx else "float32") and off.precision() == "float32"
    assert (on.fingerprint() == off.fingerprint()) is not amx
    before = {k: v for k, v in dataclasses.asdict(off).items()
              if k not in ("pattern", "train_steps", "seed", "amp", "saturation")}
    before.update(psf=[file_sha256(files / "psf.tif")], model=[file_sha256(files / "m.ckpt")])
    for old in (before, {**before, "amp": False}):  # the earlier version's records: amp on, and --no-amp
        digest = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
        assert digest not in (on.fingerprint(), off.fingerprint())


def test_chunked_ssl_trains_by_default_as_in_memory_and_takes_the_psf_s_voxel_size(files, capsys, monkeypatch):
    """Found by the diff review: the chunked path refused ssl without --model or --train-steps (in
    memory it trains 300 steps), and trained on an image without a voxel size with none, where the
    in-memory run takes the PSF's and says so."""
    from deconv3d.cli import build_parser
    from deconv3d.cli.pipeline import settings_from_args

    monkeypatch.chdir(files)
    args = build_parser().parse_args(["deconvolve", "img.tif", "-o", "o.zarr", "--psf", "psf.tif", "--method", "ssl"])
    assert settings_from_args(args).train_steps == 300
    write_tiff(files / "novox.tif", read_image(files / "img.tif").data)  # no voxel size
    code, _, err = run(["deconvolve", "novox.tif", "-o", "nv.zarr", "--psf", "psf.tif", "--method", "ssl",
                        "--train-steps", "1", *SMALL], capsys)
    assert code == 0 and "carries no voxel size; assuming the PSF's" in err, err
    scale = json.loads((files / "nv.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert scale["datasets"][0]["coordinateTransformations"][0]["scale"][-3:] == [0.3, 0.1, 0.1]


def test_the_reported_time_includes_the_training(files, capsys, monkeypatch):
    """A chunked ssl run that trained first reported only the blocks' time (0.3 s after a long training)."""
    import types

    from deconv3d.cli import pipeline as cli_pipeline
    from deconv3d.cli import selfsup

    clock = iter([0.0, 42.0])
    monkeypatch.setattr(cli_pipeline, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    trained = []
    real = selfsup.train_with_progress
    monkeypatch.setattr(selfsup, "train_with_progress", lambda *a, **k: trained.append(1) or real(*a, **k))
    monkeypatch.chdir(files)
    code, out, err = run(["deconvolve", "img.tif", "-o", "t.zarr", "--psf", "psf.tif", "--method", "ssl",
                          "--train-steps", "1", *SMALL], capsys)
    assert code == 0 and trained == [1] and out.strip().endswith("in 42.0 s"), out + err


@pytest.mark.parametrize("through_cli", [True, False])
def test_a_memory_limit_no_block_fits_is_refused_before_training(files, capsys, monkeypatch, through_cli):
    """A --memory-limit the training image fits but no block of the network does was found only
    after training (minutes): the blocks are now planned first, with the configuration to be trained."""
    from deconv3d.pipeline.files import deconvolve_file
    from deconv3d.selfsup import train as real_train

    trained = []

    def counting_train(*args, **kwargs):
        trained.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.chdir(files)
    monkeypatch.setattr("deconv3d.selfsup.train", counting_train)
    limit = "40MB"  # 4x the image's 33 kB passes the training check; no network block fits
    if through_cli:
        code, _, err = run(["deconvolve", "img.tif", "-o", "lim.zarr", "--psf", "psf.tif", "--method", "ssl",
                            "--train-steps", "2", "--memory-limit", limit, *SMALL], capsys)
        assert_one_line_error(code, err, "memory limit", "too small", "--memory-limit")
    else:
        settings = make_settings({"psf": "psf.tif", "method": "ssl", "train_steps": 2, "memory_limit": limit})
        with pytest.raises(InputError, match="too small"):
            deconvolve_file("img.tif", "lim.zarr", settings)
    assert not trained and not (files / "lim.zarr").exists()


def test_a_memory_limit_is_fingerprinted_by_its_value_not_its_spelling(files):
    """A rerun with --memory-limit 4G after 4GB redid every file (its records held the text), and a
    concurrent run with the other spelling was refused as having other settings. Records made
    with the usual spelling (4GB) still match."""
    from deconv3d.omezarr import file_sha256

    psf = {"psf": str(files / "psf.tif")}
    prints = {text: make_settings({**psf, "memory_limit": text}).fingerprint() for text in ("4GB", "4G", "4000MB")}
    assert len(set(prints.values())) == 1
    assert make_settings({**psf, "memory_limit": "8GB"}).fingerprint() != prints["4GB"]
    settings = make_settings({**psf, "memory_limit": "4GB"})
    before = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in ("pattern", "train_steps", "seed", "amp", "saturation")}
    before.update(device="cpu", psf=[file_sha256(files / "psf.tif")], acceleration_floor=0.65)  # (rl's step floor)
    assert prints["4GB"] == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_the_plan_before_training_takes_blocks_in_whole_stored_chunks_as_the_run_does(files, monkeypatch):
    """The check before training planned without the stored chunks' cap, so blocks the run rounds up
    to whole chunks (and over the limit) passed it and failed only after training."""
    from deconv3d.pipeline import planning
    from deconv3d.pipeline.files import deconvolve_file

    caps = []

    class Planned(Exception):
        pass

    def spy(*args, **kwargs):
        caps.append(kwargs.get("cap"))
        raise Planned

    monkeypatch.chdir(files)
    monkeypatch.setattr(planning, "spatial_plan", spy)
    settings = make_settings({"psf": "psf.tif", "method": "ssl", "train_steps": 2, "memory_limit": "40MB"})
    with pytest.raises(Planned):
        deconvolve_file("img.tif", "lim.zarr", settings)
    ndim = read_image(files / "img.tif").data.ndim
    assert caps == [(64, 512, 512)[-ndim:]]
