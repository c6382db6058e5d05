"""The command line keeps intensities in the data's units: a uint16 or int16 TIFF is read at its
values (no rescaling to [0, 1], no offset), the float32 output holds them unclipped, and the
zero boundary keeps the total, in memory and chunked into OME-Zarr (review of quantitative fidelity)."""

import numpy as np
import pytest
import scipy.signal
import tifffile

from cli_helpers import run
from conftest import asymmetric_psf
from deconv3d.omezarr import read_ome_zarr, write_ome_zarr

VOXEL = ["--voxel-size", "0.3", "0.1", "0.1"]


@pytest.fixture(scope="module")
def counts():
    """Poisson counts of bright beads over a background of 5 (peak above 255, as a camera's)."""
    rng = np.random.default_rng(0)
    truth = np.full((8, 24, 24), 5.0)
    truth[tuple(rng.integers(0, n, 8) for n in truth.shape)] += 3000.0
    psf = asymmetric_psf((3, 5, 5))
    return rng.poisson(np.clip(scipy.signal.fftconvolve(truth, psf, mode="same"), 0, None)), psf


def _deconvolve(tmp_path, capsys, name, image, psf, *options):
    tifffile.imwrite(tmp_path / f"{name}.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "psf.tif", psf, photometric="minisblack")
    output = tmp_path / f"{name}_out{'.zarr' if '--chunks' in options else '.tif'}"
    code, _, err = run(["deconvolve", tmp_path / f"{name}.tif", "-o", output, "--psf", tmp_path / "psf.tif",
                        "--method", "rl", "--boundary", "zero", "--no-accelerate", "--iterations", "10", *VOXEL,
                        *options], capsys)
    assert code == 0, err
    return read_ome_zarr(output)[0] if output.suffix == ".zarr" else tifffile.imread(output)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_integer_tiffs_are_deconvolved_at_their_values_and_keep_the_total(tmp_path, capsys, counts, dtype):
    image, psf = counts
    expected = _deconvolve(tmp_path, capsys, "float", image.astype(np.float32), psf)
    result = _deconvolve(tmp_path, capsys, "int", image.astype(dtype), psf)
    assert result.dtype == np.float32 and result.max() > 1000
    np.testing.assert_array_equal(result, expected)
    assert result.sum(dtype=np.float64) == pytest.approx(image.sum(), rel=1e-6)


def test_a_chunked_run_into_ome_zarr_keeps_the_total(tmp_path, capsys, counts):
    image, psf = counts
    whole = _deconvolve(tmp_path, capsys, "whole", image.astype(np.uint16), psf)
    chunked = np.asarray(_deconvolve(tmp_path, capsys, "chunked", image.astype(np.uint16), psf,
                                     "--chunks", "8", "12", "12")).squeeze()
    assert chunked.dtype == np.float32 and chunked.shape == whole.shape
    # blocks see zeros beyond their halo, so the seams lose a little light: measured 2.5e-4 of the total
    # (and 7e-5 of the peak apart from the whole run), against 1e-7 in one piece
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=3e-4 * whole.max())
    assert chunked.sum(dtype=np.float64) == pytest.approx(image.sum(), rel=1e-3)


@pytest.mark.parametrize("axes", ["czyx", "tzyx"])
def test_channel_and_time_point_ratios_survive_a_chunked_rl_tv_run(tmp_path, capsys, counts, axes):
    """RL-TV's one volume-wide statistic (the TV term's intensity scale, the volume's peak) is each
    channel's and time point's own: a second volume four times the first (a power of two, so exact)
    comes back four times the first's result, bit for bit, and the first as it does alone."""
    image, psf = counts
    image = image.astype(np.float32)
    write_ome_zarr(tmp_path / "in.zarr", np.stack([image, 4 * image]), voxel_size=(0.3, 0.1, 0.1), axes=axes)
    tifffile.imwrite(tmp_path / "psf.tif", psf, photometric="minisblack")
    psfs = [tmp_path / "psf.tif"] * (2 if axes == "czyx" else 1)
    options = ["--method", "rl-tv", "--boundary", "zero", "--no-accelerate", "--iterations", "5",
               "--chunks", "8", "12", "12", *VOXEL]
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "-o", tmp_path / "out.zarr", "--psf", *psfs, *options],
                       capsys)
    assert code == 0, err
    first, second = read_ome_zarr(tmp_path / "out.zarr")[0].reshape(2, *image.shape)
    np.testing.assert_array_equal(second, 4 * first)
    alone = _deconvolve(tmp_path, capsys, "alone", image, psf, "--method", "rl-tv", "--iterations", "5",
                        "--chunks", "8", "12", "12")
    np.testing.assert_array_equal(np.asarray(alone).squeeze(), first)
