"""``deconvolve --iterations auto`` on the chunked route: each channel's count chosen by held-out prediction on
a centred crop of its first time point, its blocks run as plain RL for that count, the counts recorded."""

import json

import numpy as np
import pytest
import tifffile
from cli_helpers import assert_one_line_error, run

from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr
from deconv3d.pipeline import run_chunked
from deconv3d.pipeline.auto_iterations import AUTO_MAX_ITERATIONS
from deconv3d.psf import prepare_psf

from .conftest import blurred_beads, gaussian_psf

VOXEL = (0.3, 0.1, 0.1)


def _ramp(rgb):
    return np.rint(np.outer(rgb, np.arange(256)) / 255).astype(np.uint8)


def _psf(tmp_path, shape):
    """The PSF file, and the PSF as the run prepares it for an image of ``shape``."""
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=VOXEL)
    return prepare_psf(gaussian_psf(), shape, psf_voxel=VOXEL, image_voxel=VOXEL)


def _parameters(path):
    with tifffile.TiffFile(path) as tif:
        return json.loads(tif.imagej_metadata["Properties"]["parameters"])


def test_each_channel_of_a_hyperstack_gets_its_own_count(tmp_path, capsys):
    """A 2-channel ImageJ hyperstack, one channel bright and one dim (noisier): the counts are
    choose_iterations' on each channel (the whole volume: under AUTO_CROP_VOXELS), each channel's output
    is plain RL for its count, and the record holds both."""
    shape = (12, 32, 32)
    bright = blurred_beads(shape, gaussian_psf(), seed=1) * 4
    dim = np.random.default_rng(2).poisson(blurred_beads(shape, gaussian_psf(), seed=3) / 20).astype(np.float32)
    metadata = {"axes": "ZCYX", "unit": "um", "spacing": VOXEL[0], "Labels": ["GFP", "RFP"] * shape[0],
                "LUTs": [_ramp((0, 255, 0)), _ramp((255, 0, 0))]}
    tifffile.imwrite(tmp_path / "in.tif", np.stack([bright, dim], 1), imagej=True,
                     resolution=(1 / VOXEL[2], 1 / VOXEL[1]), metadata=metadata)
    psf = _psf(tmp_path, shape)
    code, out, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.tif", "--iterations", "auto", "--device", "cpu"], capsys)
    assert code == 0, err
    choices = [choose_iterations(c, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu") for c in (bright, dim)]
    counts = [choice.iterations for choice in choices]
    assert counts[0] != counts[1]  # (else a count chosen once for both would pass)
    assert [line for line in out.splitlines() if line.startswith("chose")] == [
        f"chose {choice.iterations} iterations for channel {c} ({name}) (held-out prediction error lowest there, "
        f"{len(choice.risk)} tried, on the whole volume)"
        for c, (choice, name) in enumerate(zip(choices, ("GFP", "RFP")))]
    result = tifffile.imread(tmp_path / "out.tif")  # (ZCYX)
    for c, (channel, count) in enumerate(zip((bright, dim), counts)):
        expected = richardson_lucy(channel, psf, count, accelerate=False, voxel_size=VOXEL, device="cpu")
        np.testing.assert_allclose(result[:, c], expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    parameters = _parameters(tmp_path / "out.tif")
    assert parameters["iterations"] == counts and parameters["accelerate"] is False
    assert parameters["iterations_chosen_by"] == "held-out prediction (5% of voxels, on the whole volume)"


def test_a_volume_larger_than_the_crop_is_chosen_on_its_centred_crop(tmp_path, capsys, monkeypatch):
    """A .zarr input over AUTO_CROP_VOXELS: the count is choose_iterations' on the centred box of about
    that many voxels, in the volume's proportions but never under twice the PSF (7 voxels) per axis: z
    takes its floor, 14, and y and x share the rest."""
    from deconv3d.pipeline import auto_iterations

    monkeypatch.setattr(auto_iterations, "AUTO_CROP_VOXELS", 9000)
    shape = (16, 48, 48)
    image = blurred_beads(shape, gaussian_psf(), seed=4)
    run_chunked(image, lambda b: b, tmp_path / "in.zarr", axes="ZYX", voxel_size=VOXEL)
    psf = _psf(tmp_path, shape)
    code, out, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.zarr", "--iterations", "auto", "--device", "cpu"], capsys)
    assert code == 0, err
    crop = image[1:15, 11:36, 11:36]  # 14 x 25 x 25, centred
    count = choose_iterations(crop, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu").iterations
    assert count != choose_iterations(image, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu").iterations
    assert f"chose {count} iterations (" in out and "on a centred 14 x 25 x 25 crop)" in out, out
    result, _, _, attrs = read_ome_zarr(tmp_path / "out.zarr")
    parameters = attrs["deconv3d"]["parameters"]
    assert parameters["iterations"] == count and parameters["accelerate"] is False
    assert parameters["iterations_chosen_by"] == "held-out prediction (5% of voxels, on a centred 14 x 25 x 25 crop)"
    expected = richardson_lucy(image, psf, count, accelerate=False, voxel_size=VOXEL, device="cpu")
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-5, atol=1e-5 * float(expected.max()))


@pytest.mark.parametrize("saturation", ["level", "auto"])
def test_saturated_voxels_are_fitted_as_clipped_while_choosing(tmp_path, capsys, saturation):
    """--saturation LEVEL (or auto, which finds the plateau at that level on the crop) with --iterations auto
    on a chunked run: the count is choose_iterations' with the voxels at or above the level flagged clipped
    (on these counts clipped at their 97th percentile, another count than with none flagged)."""
    shape = (12, 32, 32)
    counts = np.random.default_rng(5).poisson(blurred_beads(shape, gaussian_psf(), seed=6) * 0.3) / 0.3
    level = float(np.percentile(counts, 97))
    image = np.minimum(counts, level).astype(np.float32)
    write_tiff(tmp_path / "in.tif", image, voxel_size=VOXEL)
    psf = _psf(tmp_path, shape)
    code, out, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.zarr", "--iterations", "auto", "--device", "cpu", "--saturation",
                          level if saturation == "level" else "auto"], capsys)
    assert code == 0, err
    count = choose_iterations(image, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu",
                              clipped=image >= level).iterations
    assert count != choose_iterations(image, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu").iterations
    assert f"chose {count} iterations (" in out and "tried, the saturated voxels fitted as clipped, on the whole" in out
    parameters = read_ome_zarr(tmp_path / "out.zarr")[3]["deconv3d"]["parameters"]
    assert parameters["iterations"] == count and parameters["accelerate"] is False
    assert parameters["iterations_chosen_by"] == ("held-out prediction (5% of voxels, the saturated voxels fitted as "
                                                  "clipped, on the whole volume)")


def test_each_channel_is_chosen_on_a_crop_of_its_first_time_point_read_alone(tmp_path, monkeypatch):
    """chosen_settings on a time-lapse of two channels: each channel's crop is its first time point's centred
    box (z at its floor of twice the PSF, y and x sharing the rest of the voxels), read alone from the file
    (not the whole volume); each channel's settings get its count, acceleration off."""
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import auto_iterations, readers
    from deconv3d.pipeline.settings import Settings

    data = np.random.default_rng(8).uniform(1, 50, (3, 2, 8, 20, 20)).astype(np.float32)
    run_chunked(data, lambda b: b, tmp_path / "in.zarr", axes="TCZYX", voxel_size=VOXEL)
    monkeypatch.setattr(auto_iterations, "AUTO_CROP_VOXELS", 8 * 16 * 16)
    _psf(tmp_path, (8, 20, 20))
    keys, seen, plain = [], [], readers.as_reader

    class Spy:
        def __init__(self, reader):
            self.reader, self.shape = reader, reader.shape

        def read(self, key):
            keys.append(key)
            return self.reader.read(key)

    monkeypatch.setattr(readers, "as_reader", lambda data: Spy(plain(data)))

    def chooser(crop, psf, params, voxel, device, clipped, where, note):
        seen.append((crop, where, note, clipped))
        return {"iterations": 3 + len(seen), "accelerate": False, "iterations_chosen_by": f"test{note}"}

    runs, record = auto_iterations.chosen_settings(open_lazy(tmp_path / "in.zarr"), [gaussian_psf()], VOXEL,
                                                   Settings(psf=str(tmp_path / "psf.tif"), device="cpu"), chooser)
    box = (slice(0, 8), slice(2, 18), slice(2, 18))
    assert keys == [(slice(0, 1), slice(c, c + 1), *box) for c in range(2)]
    for c, (crop, where, note, clipped) in enumerate(seen):
        np.testing.assert_array_equal(crop, data[(0, c, *box)])
        assert (where, note, clipped) == (f"channel {c}", ", on a centred 8 x 16 x 16 crop of the first time point",
                                          None)
    assert [(r.iterations, r.accelerate) for r in runs] == [(4, False), (5, False)]
    assert record == {"iterations": [4, 5], "accelerate": False,
                      "iterations_chosen_by": "test, on a centred 8 x 16 x 16 crop of the first time point"}


def test_the_crop_is_held_to_the_memory_limit(tmp_path, capsys, monkeypatch):
    """Under --memory-limit the crop shrinks (halving its voxels) until the search fits what the limit
    leaves, as the memory model counts an RL block of its shape plus CHOICE_OVERHEAD: without a limit the
    16 x 48 x 48 volume is chosen on whole; with one that nothing above the floors fits (the overhead made
    huge here), on the centred box of twice the PSF per axis."""
    from deconv3d.pipeline import auto_iterations
    from deconv3d.pipeline import system_memory
    from deconv3d.pipeline.memory_model import MemoryModel

    shape = (16, 48, 48)
    image = blurred_beads(shape, gaussian_psf(), seed=4)
    write_tiff(tmp_path / "in.tif", image, voxel_size=VOXEL)
    psf = _psf(tmp_path, shape)
    argv = ["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "--iterations", "auto", "--device", "cpu",
            "--memory-limit", "8GB"]
    code, out, err = run([*argv, "-o", tmp_path / "whole.zarr"], capsys)
    assert code == 0 and "on the whole volume)" in out, out + err
    monkeypatch.setattr(auto_iterations, "CHOICE_OVERHEAD", 8 * 10**9)
    code, out, err = run([*argv, "-o", tmp_path / "held.zarr"], capsys)
    assert code == 0, err
    count = choose_iterations(image[1:15, 17:31, 17:31], psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL,
                              device="cpu").iterations
    assert f"chose {count} iterations (" in out and "on a centred 14 x 14 x 14 crop)" in out, out
    monkeypatch.undo()
    monkeypatch.setattr(system_memory, "planning_baseline", lambda: 0)  # (the process's memory: it varies)
    big, psf_shape = (64, 2048, 2048), (15, 31, 31)  # (no limit: the most; each limit: the most that fits)
    assert auto_iterations.crop_voxels(big, psf_shape, "rl", None) == auto_iterations.AUTO_CROP_VOXELS
    model = MemoryModel("rl", psf_shape, accelerate=False)
    need = [model.block_bytes([s.stop - s.start for s in auto_iterations.crop_box(big, psf_shape, v)])
            + auto_iterations.CHOICE_OVERHEAD for v in (2**24, 2**23, 2**22)]
    for limit, voxels in ((need[0], 2**24), (need[0] - 1, 2**23), (need[1] - 1, 2**22)):
        assert auto_iterations.crop_voxels(big, psf_shape, "rl", limit) == voxels


def test_a_memory_limit_no_block_fits_is_refused_before_choosing(tmp_path, capsys):
    """--memory-limit too small for any RL block: refused (one line, no output) before --iterations auto
    spends its search on the crop, not once the blocks are planned after it."""
    write_tiff(tmp_path / "in.tif", blurred_beads((12, 32, 32), gaussian_psf(), seed=1), voxel_size=VOXEL)
    _psf(tmp_path, (12, 32, 32))
    code, out, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.zarr", "--iterations", "auto", "--device", "cpu", "--memory-limit", "20MB"],
                         capsys)
    assert_one_line_error(code, err, "memory limit 20MB is too small", "--memory-limit")
    assert "chose" not in out and not (tmp_path / "out.zarr").exists()


def test_a_channel_flagged_throughout_is_refused_as_the_run_refuses_it(tmp_path, capsys):
    """--saturation at or under every voxel of a channel (its whole first time point is the crop): the
    run's own one-line refusal naming that channel, before the search (not choose_iterations' 'too few
    held out' error), and no output."""
    shape = (12, 32, 32)
    beads = blurred_beads(shape, gaussian_psf(), seed=1)
    metadata = {"axes": "ZCYX", "unit": "um", "spacing": VOXEL[0]}
    tifffile.imwrite(tmp_path / "in.tif", np.stack([beads, beads + 1000], 1), imagej=True,
                     resolution=(1 / VOXEL[2], 1 / VOXEL[1]), metadata=metadata)
    _psf(tmp_path, shape)
    code, out, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.tif", "--iterations", "auto", "--device", "cpu", "--saturation", 1000],
                         capsys)
    assert_one_line_error(code, err, "every voxel of channel 1 is at or above --saturation 1000: give a higher level")
    assert "for channel 1" not in out and not (tmp_path / "out.tif").exists()


def test_a_channel_dark_at_its_first_time_point_is_refused(tmp_path, capsys):
    """A time-lapse whose channel 1 is all zeros at time point 0 (beads later): its crop holds nothing to
    choose by (the search settled on 1 iteration for all its time points, saying nothing): a one-line error
    naming the channel and the fix, and no output."""
    beads = np.stack([blurred_beads((12, 32, 32), gaussian_psf(), seed=s) for s in (1, 2)])
    data = np.stack([beads, beads], 1)  # T C Z Y X
    data[0, 1] = 0
    run_chunked(data, lambda b: b, tmp_path / "in.zarr", axes="TCZYX", voxel_size=VOXEL)
    _psf(tmp_path, (12, 32, 32))
    code, out, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.zarr", "--iterations", "auto", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--iterations auto has nothing to choose the count by for channel 1",
                          "the whole volume of the first time point holds no voxel above 0", "--iterations N")
    assert "for channel 1" not in out and not (tmp_path / "out.zarr").exists()


def test_a_crop_flagged_throughout_in_a_larger_volume_is_refused_naming_the_crop(tmp_path, capsys, monkeypatch):
    """--saturation at or under every voxel of the centred crop, but not of the volume (a crop smaller than
    it): a one-line refusal naming the crop and the level (not choose_iterations' 'too few held out'
    error, which named neither), exit 2, and no output."""
    from deconv3d.pipeline import auto_iterations

    monkeypatch.setattr(auto_iterations, "AUTO_CROP_VOXELS", 9000)  # (a centred 14 x 25 x 25 crop)
    image = blurred_beads((16, 48, 48), gaussian_psf(), seed=4)
    image[:, 10:38, 10:38] = 5000
    write_tiff(tmp_path / "in.tif", image, voxel_size=VOXEL)
    _psf(tmp_path, image.shape)
    code, out, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "out.zarr", "--iterations", "auto", "--device", "cpu", "--saturation", 5000],
                         capsys)
    assert_one_line_error(code, err, "--iterations auto has nothing to choose the count by",
                          "every voxel of a centred 14 x 25 x 25 crop", "at or above --saturation 5000",
                          "--iterations N", "a higher --saturation level")
    assert "chose" not in out and not (tmp_path / "out.zarr").exists()
