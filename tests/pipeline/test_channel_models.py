"""Method ssl with a trained --model on images of several channels: every channel's PSF is checked
against the model that deconvolves that channel."""

import numpy as np
import pytest

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
    if command == "deconvolve":
        assert_one_line_error(code, err, "another PSF")
        assert not (d / "out.zarr").exists()
    else:
        assert code == 3 and "two.zarr" in err and "another PSF" in err, err
        assert not (d / "out" / "two.zarr").exists()
    # the training PSF for both channels is the model's own: accepted, and recorded per channel
    code, _, err = run(["deconvolve", d / "two.zarr", "-o", d / "same.zarr", "--method", "ssl", "--model",
                        d / "m0.ckpt", "--psf", psfs[0], psfs[0], "--device", "cpu"], capsys)
    assert code == 0, err
    parameters = read_ome_zarr(d / "same.zarr")[3]["deconv3d"]["parameters"]
    assert len(set(parameters["per_channel_psf_sha256_16"])) == 1
