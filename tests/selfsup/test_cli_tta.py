"""``--tta`` reaches the network's inference, in memory (``deconvolve --method ssl --model``) and in
a batch's blocks: the outputs are apply_model's with test-time augmentation. It was checked in the
recorded parameters only: inference run with tta=False passed (found by the test review)."""

import numpy as np
import pytest

from cli_helpers import run
from deconv3d.io import read_image, write_tiff
from deconv3d.metrics import psnr
from deconv3d.omezarr import read_ome_zarr

# A 2D network (8 passes of a 3D one took seconds on a busy machine) trained without the residual
# form: its output is all network, and its rotations and flips differ (17 dB apart); a residual
# network trained 2 steps is near the identity (93 dB).
TINY = ["--steps", 2, "--patch", 8, "--batch", 1, "--base-channels", 4, "--unet-depth", 2, "--no-residual",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, model path, loaded model, image): a tiny network trained on the plane ``in/img.tif``."""
    import torch

    from deconv3d.cli import main
    from deconv3d.selfsup import load_checkpoint

    folder = tmp_path_factory.mktemp("tta")
    (folder / "in").mkdir()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32) + 0.1
    write_tiff(folder / "in" / "img.tif", image, voxel_size=(0.1, 0.1))
    grids = np.meshgrid(*[np.arange(-1, 2)] * 2, indexing="ij")
    write_tiff(folder / "psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), voxel_size=(0.1, 0.1))
    before = torch.get_num_threads()  # module scope: set up before the per-test one-thread fixture
    torch.set_num_threads(1)
    try:
        code = main([str(a) for a in ["train", folder / "in" / "img.tif", "--psf", folder / "psf.tif", "-o",
                                      folder / "m.ckpt", *TINY]])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return folder, folder / "m.ckpt", load_checkpoint(folder / "m.ckpt"), read_image(folder / "in" / "img.tif").data


def inferences(trained):
    """apply_model's results {tta: result} with and without test-time augmentation, told apart."""
    from deconv3d.selfsup import apply_model

    _, _, network, image = trained
    results = {tta: apply_model(network, image, device="cpu", tta=tta) for tta in (False, True)}
    assert psnr(results[True], results[False]) < 30
    return results


def test_deconvolve_with_a_model_applies_tta_as_asked(trained, capsys):
    folder, model, _, _ = trained
    expected = inferences(trained)
    for tta in (False, True):
        out = folder / f"deconvolve-{tta}.tif"
        code, _, err = run(["deconvolve", folder / "in" / "img.tif", "-o", out, "--method", "ssl", "--model", model,
                            "--device", "cpu", *["--tta"] * tta], capsys)
        assert code == 0, err
        np.testing.assert_array_equal(read_image(out).data, expected[tta])


def test_batch_blocks_apply_tta_as_asked(trained, capsys):
    folder, model, _, _ = trained
    expected = inferences(trained)
    for flag, tta in (("--no-tta", False), ("--tta", True)):
        out = folder / f"batch{flag}"
        code, _, err = run(["batch", folder / "in", "-o", out, "--method", "ssl", "--model", model, "--device",
                            "cpu", "--chunks", 1, 16, 16, flag], capsys)  # 4 blocks
        assert code == 0, err
        data = read_ome_zarr(out / "img.zarr")[0]
        assert psnr(expected[tta], data) >= 50 and psnr(expected[not tta], data) < 30
