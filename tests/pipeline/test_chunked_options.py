"""The method's options reach the chunked path's output, not only its records: ``deconvolve`` in
blocks and ``batch`` (the whole volume as one block) against the in-memory richardson_lucy and
wiener with the same options and PSF. Their fingerprints and warnings were tested, their effect
was not: block callables built with bertero, no TV and balance 1e-3 whatever --boundary,
--tv-weight and --balance said, or a PSF generated without --ns and --depth, passed every
pipeline test (found by the test review)."""

import numpy as np
import pytest

from cli_helpers import run
from deconv3d.io import read_image, write_tiff
from deconv3d.metrics import psnr
from deconv3d.omezarr import read_ome_zarr

from .conftest import blurred_beads, gaussian_psf

VOXEL = (0.3, 0.1, 0.1)
RL = ["--iterations", 5, "--no-accelerate", "--device", "cpu"]  # (no acceleration: no steps measured on a block)
# 12^3 blocks with their halo against the whole-volume run: 73-88 dB here; a result of other
# options or another PSF: 18-45 dB.
SEAMS_DB = 60
OPTICS = ["--psf-model", "gibson-lanni", "--na", 1.1, "--wavelength", 0.52, "--ns", 1.45, "--depth", 12]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "img.tif", blurred_beads((12, 24, 24), gaussian_psf(), seed=0), voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=VOXEL)
    return tmp_path


def chunked_outputs(folder, capsys, options):
    """(deconvolve's output in 12^3 blocks, batch's output in one block) with ``options``."""
    psf = [] if "--psf-model" in options else ["--psf", folder / "psf.tif"]
    code, _, err = run(["deconvolve", folder / "in" / "img.tif", "-o", folder / "blocks.zarr", *psf, *options,
                        "--chunks", 12, 12, 12], capsys)
    assert code == 0, err
    code, _, err = run(["batch", folder / "in", "-o", folder / "batch", *psf, *options], capsys)
    assert code == 0, err
    return read_ome_zarr(folder / "blocks.zarr")[0], read_ome_zarr(folder / "batch" / "img.zarr")[0]


def assert_made_with(outputs, expected, others):
    """Both outputs are ``expected`` (to float rounding as one block, to the seams' error in
    blocks), and each of ``others`` (the results the options must change) is told apart."""
    blocks, whole = outputs
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    assert psnr(expected, blocks) >= SEAMS_DB
    for other in others:
        assert psnr(other, expected) < SEAMS_DB - 10 and psnr(other, blocks) < SEAMS_DB - 10


def image_and_psf(folder):
    from deconv3d.psf import normalize_psf

    return read_image(folder / "in" / "img.tif").data, normalize_psf(read_image(folder / "psf.tif").data)


@pytest.mark.parametrize("options, changed", [(["--boundary", "zero"], {"boundary": "zero"}),
                                              (["--boundary", "reflect"], {"boundary": "reflect"}),
                                              (["--method", "rl-tv", "--tv-weight", 0.01], {"tv_weight": 0.01})])
def test_boundary_and_tv_weight_reach_the_blocks(folder, capsys, options, changed):
    from deconv3d.classical import richardson_lucy

    image, psf = image_and_psf(folder)

    def rl(**kwargs):
        return richardson_lucy(image, psf, 5, accelerate=False, voxel_size=VOXEL, device="cpu", **kwargs)

    assert_made_with(chunked_outputs(folder, capsys, [*options, *RL]), rl(**changed), [rl()])


def test_balance_reaches_the_wiener_blocks(folder, capsys):
    from deconv3d.classical import wiener

    image, psf = image_and_psf(folder)
    outputs = chunked_outputs(folder, capsys, ["--method", "wiener", "--balance", 0.05, "--device", "cpu"])
    assert_made_with(outputs, wiener(image, psf, 0.05, device="cpu"), [wiener(image, psf, 1e-3, device="cpu")])


def test_the_boundary_reaches_the_wiener_blocks(folder, capsys):
    """--boundary was RL's only: with --method wiener it was ignored (with a warning) and every block was
    mirrored; zero, which Wiener takes, now reaches the blocks (and reflect, the default, stays)."""
    from deconv3d.classical import wiener

    image, psf = image_and_psf(folder)
    outputs = chunked_outputs(folder, capsys, ["--method", "wiener", "--boundary", "zero", "--device", "cpu"])
    assert_made_with(outputs, wiener(image, psf, 1e-3, boundary="zero", device="cpu"),
                     [wiener(image, psf, 1e-3, device="cpu")])


def test_the_sample_s_index_and_depth_reach_a_generated_psf(folder, capsys):
    """--ns and --depth set the spherical aberration of a Gibson-Lanni PSF: the result is
    richardson_lucy's with the PSF generate_psf gives for them, prepared as the command does."""
    from deconv3d.classical import richardson_lucy
    from deconv3d.psf import generate_psf, prepare_psf
    from deconv3d.psf.generate import generated_psf_shape

    image = read_image(folder / "in" / "img.tif").data
    shape = generated_psf_shape(image.shape, VOXEL, 1.1, 0.52)

    def rl(**optics):
        psf = generate_psf("gibson-lanni", shape, VOXEL, 1.1, 0.52, ni=1.515, **optics)
        psf = prepare_psf(psf, image.shape, psf_voxel=VOXEL, image_voxel=VOXEL)
        return richardson_lucy(image, psf, 5, accelerate=False, voxel_size=VOXEL, device="cpu")

    # either value left at its default (ns 1.33, depth 0) gives another result
    assert_made_with(chunked_outputs(folder, capsys, [*OPTICS, *RL]), rl(ns=1.45, depth=12.0),
                     [rl(depth=12.0), rl(ns=1.45)])
