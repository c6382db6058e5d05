"""Method ssl with a trained --model on images of several channels: every channel's PSF is checked
against the model that deconvolves that channel."""

import numpy as np
import pytest
import tifffile

from cli_helpers import assert_one_line_error, run
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr, write_ome_zarr

from .conftest import blurred_beads, gaussian_psf

VOXEL = (0.3, 0.1, 0.1)


def _untrained_model(path, psf, image, seed=0):
    """A small network (untrained: its output is still a fixed function of the input) saved with
    ``psf`` as its training PSF and ``image``'s statistics as its training image's."""
    import torch

    from deconv3d.psf import normalize_psf
    from deconv3d.selfsup import TrainedModel, save_checkpoint
    from deconv3d.selfsup.config import TrainConfig, UNetConfig
    from deconv3d.selfsup.unet import ResUNet

    torch.manual_seed(seed)
    unet = UNetConfig(ndim=3, base_channels=4, depth=2)
    trained = TrainedModel(ResUNet(unet), unet, TrainConfig(residual=False), float(image.mean()), float(image.std()),
                           normalize_psf(psf), VOXEL)
    save_checkpoint(trained, path)
    return path


def _each(option, values) -> list:
    """``option`` before each of ``values``: ``--model`` takes one file, repeated per channel."""
    return [a for v in values for a in (option, v)]


@pytest.fixture
def two_channels(tmp_path):
    """A CZYX OME-Zarr whose channel c was blurred by PSF c, both PSFs as files, and a model
    (m0.ckpt) with PSF 0 as its training PSF."""
    psfs = [gaussian_psf((5, 5, 5), (1.0, 0.8, 0.8)), gaussian_psf((5, 7, 7), (1.4, 1.3, 1.3))]
    channels = np.stack([blurred_beads((8, 16, 16), p, seed=c) for c, p in enumerate(psfs)])
    write_ome_zarr(tmp_path / "two.zarr", channels, axes="CZYX", voxel_size=VOXEL)
    for c, p in enumerate(psfs):
        write_tiff(tmp_path / f"psf{c}.tif", p, voxel_size=VOXEL)
    _untrained_model(tmp_path / "m0.ckpt", psfs[0], channels[0])
    return tmp_path, channels


@pytest.mark.parametrize("command", ["deconvolve", "batch"])
def test_one_model_is_checked_against_every_channel_s_psf(two_channels, capsys, command):
    """``--model m0 --psf psf0 psf1``: only the first PSF was checked against the model, the second
    dropped without a word (exit 0, every channel deconvolved by m0) yet recorded as channel 1's."""
    d, _ = two_channels
    psfs = [d / "psf0.tif", d / "psf1.tif"]
    if command == "deconvolve":
        argv = ["deconvolve", d / "two.zarr", "-o", d / "out.zarr"]
    else:
        argv = ["batch", d, "-o", d / "out", "--pattern", "two.zarr"]
    code, _, err = run([*argv, "--method", "ssl", "--model", d / "m0.ckpt", "--psf", *psfs, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "another PSF")  # (a batch: before any file runs, as deconvolve refuses it)
    assert not (d / "out.zarr").exists() and not (d / "out").exists()
    # the training PSF for both channels is the model's own: accepted, and recorded per channel
    code, _, err = run(["deconvolve", d / "two.zarr", "-o", d / "same.zarr", "--method", "ssl", "--model",
                        d / "m0.ckpt", "--psf", psfs[0], psfs[0], "--device", "cpu"], capsys)
    assert code == 0, err
    parameters = read_ome_zarr(d / "same.zarr")[3]["deconv3d"]["parameters"]
    assert len(set(parameters["per_channel_psf_sha256_16"])) == 1


def test_each_channel_gets_its_own_model(two_channels, capsys):
    """``--model A --model B`` gives channel c network c, as ``--psf A B`` gives it PSF c (--model took one
    file, applied to every channel, while the messages told users to pass one per channel), each
    network checked against its channel's PSF and recorded per channel."""
    from deconv3d.metrics import psnr
    from deconv3d.omezarr import file_sha256
    from deconv3d.selfsup import apply_model, load_checkpoint

    d, channels = two_channels
    psf1 = gaussian_psf((5, 7, 7), (1.4, 1.3, 1.3))
    models = [d / "m0.ckpt", _untrained_model(d / "m1.ckpt", psf1, channels[1], seed=1)]
    psfs = [d / "psf0.tif", d / "psf1.tif"]
    code, _, err = run(["deconvolve", d / "two.zarr", "-o", d / "out.zarr", "--method", "ssl",
                        *_each("--model", models), "--psf", *psfs, "--device", "cpu"], capsys)
    assert code == 0, err
    data, _, _, attrs = read_ome_zarr(d / "out.zarr")
    networks = [load_checkpoint(m) for m in models]
    for c in range(2):
        assert psnr(apply_model(networks[c], channels[c], device="cpu"), data[c]) >= 50
    assert psnr(apply_model(networks[0], channels[1], device="cpu"), data[1]) < 40  # (not the first for all)
    record = attrs["deconv3d"]
    assert record["model_sha256"] == [file_sha256(m) for m in models]
    assert [p["model"] for p in record["parameters"]["per_channel_model"]] == [str(m) for m in models]
    assert [s["shape"] for s in record["psf"]["per_channel"]] == [[5, 5, 5], [5, 7, 7]]  # (each network's)
    # each network against its own channel's PSF: swapped, they are refused
    code, _, err = run(["deconvolve", d / "two.zarr", "-o", d / "swapped.zarr", "--method", "ssl",
                        *_each("--model", models), "--psf", *psfs[::-1], "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "another PSF")
    assert f"model {models[0]}: the model was trained with another PSF" in err, err  # which of the two
    code, _, err = run(["deconvolve", d / "two.zarr", "-o", d / "three.zarr", "--method", "ssl",
                        *_each("--model", [*models, models[0]]), "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "2 channel(s) but 3 models")


@pytest.mark.parametrize("axes, words, not_words", [("CZYX", ["one per channel", "--model"], []),
                                                    ("TZYX", ["every time point", "--model"], ["per channel"])])
def test_training_on_several_channels_or_time_points_names_a_way_that_works(tmp_path, capsys, axes, words, not_words):
    """Refused --train-steps on a multi-channel image said to pass one network per channel with
    --model, which took one file; a single-channel time series was told the same."""
    psf = gaussian_psf((5, 5, 5))
    write_ome_zarr(tmp_path / "in.zarr", np.stack([blurred_beads((8, 16, 16), psf, seed=s) for s in (0, 1)]),
                   axes=axes, voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=VOXEL)
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "-o", tmp_path / "out.zarr", "--method", "ssl", "--psf",
                        tmp_path / "psf.tif", "--train-steps", 1], capsys)
    assert_one_line_error(code, err, "deconv3d train", *words)
    assert not any(w in err for w in not_words), err


def test_a_channel_on_another_scale_is_not_told_to_train_in_the_run(two_channels, capsys):
    """The warning for a channel far from the training image's scale offered --train-steps, which
    an image of several channels refuses."""
    d, channels = two_channels
    write_ome_zarr(d / "bright.zarr", channels * np.float32([1, 10])[:, None, None, None], axes="CZYX",
                   voxel_size=VOXEL)
    code, _, err = run(["deconvolve", d / "bright.zarr", "-o", d / "out.zarr", "--method", "ssl", "--model",
                        d / "m0.ckpt", "--device", "cpu"], capsys)
    assert code == 0 and "channel 1" in err and "one per channel" in err and "--train-steps" not in err, err
    # with one network per channel given, the advice is to redo channel 1's, not to give one per channel
    _untrained_model(d / "m1.ckpt", gaussian_psf((5, 7, 7), (1.4, 1.3, 1.3)), channels[1], seed=1)
    code, _, err = run(["deconvolve", d / "bright.zarr", "-o", d / "out2.zarr", "--method", "ssl",
                        *_each("--model", [d / "m0.ckpt", d / "m1.ckpt"]), "--psf", d / "psf0.tif", d / "psf1.tif",
                        "--device", "cpu"], capsys)
    assert code == 0 and "channel 1" in err and "train channel 1's network again" in err and "--model" in err, err
    assert "one per channel" not in err and "channel 0" not in err, err


def test_a_batch_config_takes_one_model_per_channel(two_channels):
    """A config's ``model`` list is one network per channel (resolved from the config's folder),
    as its ``psf`` list; a list whose length is not the PSFs' is refused before any file runs."""
    from deconv3d.errors import InputError
    from deconv3d.pipeline.batch import load_config, make_settings

    d, channels = two_channels
    _untrained_model(d / "m1.ckpt", gaussian_psf((5, 7, 7), (1.4, 1.3, 1.3)), channels[1], seed=1)
    (d / "cfg.toml").write_text('method = "ssl"\nmodel = ["m0.ckpt", "m1.ckpt"]\npsf = ["psf0.tif", "psf1.tif"]\n')
    settings = make_settings(load_config(d / "cfg.toml"))
    assert settings.model == (str(d / "m0.ckpt"), str(d / "m1.ckpt"))
    assert make_settings({"method": "ssl", "model": [str(d / "m0.ckpt")]}).fingerprint() == \
        make_settings({"method": "ssl", "model": str(d / "m0.ckpt")}).fingerprint()  # (records of one model match)
    with pytest.raises(InputError, match="different numbers of channels"):
        make_settings({"method": "ssl", "model": settings.model, "psf": [str(d / "psf0.tif")] * 3})


def test_a_batch_reads_one_model_once_for_every_channel_s_psf(two_channels, monkeypatch):
    """The batch's check before any file runs loaded the one model again for each channel's PSF (a network's
    checkpoint, once per PSF given); it reads it once, and still refuses the PSF it was not trained with."""
    import deconv3d.selfsup
    from deconv3d.errors import InputError
    from deconv3d.pipeline.batch import _refuse_a_model_for_another_psf, make_settings

    d, _ = two_channels
    real, loads = deconv3d.selfsup.load_checkpoint, []
    monkeypatch.setattr(deconv3d.selfsup, "load_checkpoint", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    model = str(d / "m0.ckpt")
    _refuse_a_model_for_another_psf(make_settings({"method": "ssl", "model": model, "psf": [str(d / "psf0.tif")] * 3}))
    assert loads == [model]
    loads.clear()
    with pytest.raises(InputError, match="another PSF"):
        _refuse_a_model_for_another_psf(make_settings({"method": "ssl", "model": [model, model],
                                                       "psf": [str(d / "psf0.tif"), str(d / "psf1.tif")]}))
    assert loads == [model]


@pytest.mark.parametrize("command", ["deconvolve", "batch"])
def test_model_before_the_input_takes_one_file(tmp_path, capsys, command):
    """``--method ssl --model m.ckpt INPUT`` ran, until --model took several files and swallowed
    the input ('the following arguments are required: input'); the output is the network's."""
    from deconv3d.metrics import psnr
    from deconv3d.selfsup import apply_model, load_checkpoint

    psf = gaussian_psf((5, 5, 5))
    image = blurred_beads((8, 16, 16), psf, seed=0)
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "img.tif", image, voxel_size=VOXEL)
    model = _untrained_model(tmp_path / "m.ckpt", psf, image)
    if command == "deconvolve":
        given, out = [tmp_path / "in" / "img.tif", "-o", tmp_path / "o.tif"], tmp_path / "o.tif"
    else:
        given, out = [tmp_path / "in", "-o", tmp_path / "out"], tmp_path / "out" / "img.zarr"
    code, _, err = run([command, "--method", "ssl", "--model", model, *given, "--device", "cpu"], capsys)
    assert code == 0, err
    expected = apply_model(load_checkpoint(model), image, device="cpu")
    result = read_ome_zarr(out)[0] if command == "batch" else tifffile.imread(out)
    assert psnr(expected, np.asarray(result)) >= 50


@pytest.mark.parametrize("command", ["deconvolve", "batch"])
def test_several_files_after_one_model_are_told_to_repeat_it(tmp_path, capsys, command):
    """``--model a.ckpt b.ckpt INPUT``: b.ckpt became the input and the error said only
    'unrecognized arguments'; it now names the repeated form."""
    (tmp_path / "a.ckpt").write_bytes(b"")
    (tmp_path / "b.ckpt").write_bytes(b"")
    code, _, err = run([command, "--method", "ssl", "--model", tmp_path / "a.ckpt", tmp_path / "b.ckpt",
                        tmp_path / "img.tif", "-o", tmp_path / "o.zarr"], capsys)
    assert_one_line_error(code, err, "repeat it: --model A.ckpt --model B.ckpt")
