"""A batch's ssl lines about a file say "the image" (the file is named before them) from the text the code that
words them gives (InputError.without_file, Deconv3dWarning.without_file): the intensities warning of a given
network, and the refusals to train on a file (several channels, over --memory-limit, a loss that diverged),
with a single deconvolve's lines naming the file as before. The folder's name has spaces and brackets."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from cli_helpers import run
from deconv3d.io import write_tiff

FOLDER = "d a(t)+[1]"
VOXEL = (0.3, 0.1, 0.1)
TINY = ["--patch", 8, "--batch", 1, "--base-channels", 4, "--unet-depth", 2, "--device", "cpu"]
SCALE = "are far from those the network was trained on"
CHANNELS = ("has axes CZYX of shape (2, 12, 24, 24): training on the image takes one channel and time point; train "
            "one network per channel with 'deconv3d train' on one time point of that channel saved as a TIFF, then "
            "give them with --model, one per channel in channel order (each serves every time point)")
MEMORY = ("holds it in memory (27.6kB as float32), too much for --memory-limit 100KB: train on a crop with 'deconv3d "
          "train', then pass --model")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """In tmp_path: the training image, its PSF and FOLDER with a.tif (as the training image), bright.tif (x 1000)
    and two_ch.tif (two channels)."""
    monkeypatch.chdir(tmp_path)
    image = np.random.default_rng(0).random((12, 24, 24)).astype(np.float32) + 0.1
    write_tiff("train.tif", image, voxel_size=VOXEL)
    grids = np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij")
    write_tiff("psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), voxel_size=VOXEL)
    os.mkdir(FOLDER)
    write_tiff(f"{FOLDER}/a.tif", image, voxel_size=VOXEL)
    write_tiff(f"{FOLDER}/bright.tif", image * 1000, voxel_size=VOXEL)
    tifffile.imwrite(f"{FOLDER}/two_ch.tif", np.stack([image, image], axis=1), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "um"})
    return tmp_path


def _rows(out) -> dict:
    return {os.path.basename(row["file"]): row for row in json.loads(open(f"{out}/batch_report.json").read())["files"]}


def test_a_batch_lists_the_intensities_warning_of_a_given_network_as_of_the_image(folder, capsys):
    assert run(["train", "train.tif", "--psf", "psf.tif", "-o", "m.ckpt", "--steps", 1] + TINY, capsys)[0] == 0
    code, _, err = run(["batch", FOLDER, "-o", "OUT", "--method", "ssl", "--model", "m.ckpt", "--device", "cpu",
                        "--pattern", "[ab]*.tif"], capsys)
    rows = _rows("OUT")
    assert code == 0 and rows["a.tif"]["warnings"] == [], err
    listed = rows["bright.tif"]["warnings"]
    assert len(listed) == 1 and listed[0].startswith("the image's intensities (mean ") and SCALE in listed[0], listed
    printed = [line for line in err.splitlines() if SCALE in line]
    assert printed == [f"deconv3d: warning: {FOLDER}/bright.tif{listed[0].removeprefix('the image')}"], err


def test_a_batch_s_refusals_to_train_on_a_file_are_said_of_the_image(folder, capsys):
    code, out, err = run(["batch", FOLDER, "-o", "OUT", "--method", "ssl", "--psf", "psf.tif", "--train-steps", 1,
                          "--device", "cpu", "--memory-limit", "100KB"], capsys)
    reasons = {"two_ch.tif": f"the image {CHANNELS}", "a.tif": f"training on the image {MEMORY}"}
    assert code == 3, err
    for name, reason in reasons.items():
        assert f"failed  {FOLDER}/{name}: {reason}" in out, out
        assert _rows("OUT")[name]["reason"] == reason
    code, _, err = run(["deconvolve", f"{FOLDER}/two_ch.tif", "-o", "two.zarr", "--method", "ssl", "--psf", "psf.tif",
                        "--train-steps", 1, "--device", "cpu"], capsys)
    assert code == 2 and err == f"deconv3d: error: {FOLDER}/two_ch.tif {CHANNELS}\n", err


def test_training_that_diverged_is_refused_of_the_image_too(folder, monkeypatch):
    from deconv3d.errors import InputError
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import batch_file_run, file_networks

    monkeypatch.setattr("deconv3d.selfsup.train", lambda *args, **kwargs: SimpleNamespace(reason="non-finite loss",
                                                                                           steps_done=3))
    settings = SimpleNamespace(train_steps=1, seed=0, amp=False, run_device="cpu")
    with pytest.raises(InputError) as refused:
        file_networks.train_on_image(open_lazy(f"{FOLDER}/a.tif"), np.ones((3, 3, 3), np.float32), VOXEL, settings)
    said = "diverged at step 3 (non-finite loss): check the PSF"
    assert str(refused.value) == f"training on {FOLDER}/a.tif {said}"
    assert batch_file_run._reason(refused.value, f"{FOLDER}/a.tif") == f"training on the image {said}"
