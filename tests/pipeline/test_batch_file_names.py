"""A batch names each input alike in every line about it: its per-file line, the reason and the
warnings in that line and in the report, and the failures listed at the end all name it as the
input folder given joined with its path in that folder (in/sub/a.tif). The reasons named it by its
bare name (a.tif has no positive values), by the path given, or by none, as each check of the library
happened to; the PSF files are named as given on the command line."""

import json
import os

import numpy as np
import pytest
import tifffile

from cli_helpers import run
from deconv3d.io import write_tiff

from .conftest import blurred_beads, gaussian_psf

NEGATIVE = "{} has no positive values, so rl would return only zeros: add the subtracted offset back"
#: (the fix as a single run's in memory gives it: "the file's unit is wrong: fix it (Fiji: Image > Properties) ...")
NANOMETRES = ("voxel size 300 100 100 µm looks like nanometres (or a print resolution in dpi): the unit of {} is "
              "wrong: fix it (Fiji: Image > Properties) or pass --voxel-size DZ DY DX in µm")
DIMENSIONS = ("PSF {} is 3D but {} is 2D: a 2D image needs a 2D PSF: the in-focus plane of a 3D one, or a plane "
              "made by 'deconv3d psf --shape 63 63 --voxel-size DY DX ...'")
CHANNELS = "{} has 1 channel(s) but 2 PSFs were given: give one PSF (or wavelength) per channel, or one for all"
#: How a batch's reason names the image: its line names the file before it.
IMAGE = "the image"
NO_VOXEL = "{} carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1) µm (pass --voxel-size to set it)"


def _imagej(path, data, axes, spacing=None, pixel=0.1):
    """An ImageJ TIFF with ``axes``, pixels ``pixel`` µm wide and, where given, a z step ``spacing``."""
    metadata = {"axes": axes, "unit": "um", **({"spacing": spacing} if spacing is not None else {})}
    tifffile.imwrite(path, data, imagej=True, metadata=metadata, resolution=(1 / pixel, 1 / pixel))


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """in/sub/: an all-negative image, one calibrated in nanometres as µm, a 2D one, one without a
    voxel size, one that deconvolves; the PSF (psfs/psf.tif) beside the folder. The working folder:
    ``tmp_path``."""
    psf = gaussian_psf((5, 5, 5))
    good = blurred_beads((8, 16, 16), psf)
    sub = tmp_path / "in" / "sub"
    sub.mkdir(parents=True)
    (tmp_path / "psfs").mkdir()
    write_tiff(tmp_path / "psfs" / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    _imagej(sub / "neg.tif", -good - 1, "ZYX", spacing=0.3)
    _imagej(sub / "nm.tif", good, "ZYX", spacing=300, pixel=100)
    _imagej(sub / "twod.tif", good[0], "YX")
    tifffile.imwrite(sub / "novox.tif", good)
    _imagej(sub / "ok.tif", good, "ZYX", spacing=0.3)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _reasons(out):
    return {os.path.basename(r["file"]): r["reason"] for r in json.loads((out / "batch_report.json").read_text())
            ["files"]}


def test_every_line_of_a_batch_names_a_file_as_its_per_file_line_does(inputs, capsys):
    """Before: '[1/5] failed  in/sub/neg.tif: neg.tif has no positive values ...', '... the unit of
    nm.tif is wrong ...', 'PSF psf.tif is 3D but twod.tif is 2D ...' (the PSF given as psfs/psf.tif),
    and the warning 'novox.tif carries no voxel size ...', which names no folder at all."""
    shown = {name: os.path.join("in", "sub", f"{name}.tif") for name in ("neg", "nm", "novox", "ok", "twod")}
    psf = os.path.join("psfs", "psf.tif")
    code, out, err = run(["batch", "in", "-o", "out", "--psf", psf, "--pattern", "*/*.tif", "--iterations", 1],
                         capsys)
    # (each reason said of "the image": the line names the file before it)
    failures = {"neg": NEGATIVE.format(IMAGE), "nm": NANOMETRES.format(IMAGE), "twod": DIMENSIONS.format(psf, IMAGE)}
    assert code == 3, err
    assert out.splitlines()[:5] == [
        f"[1/5] failed  {shown['neg']}: {failures['neg']}",
        f"[2/5] failed  {shown['nm']}: {failures['nm']}",
        f"[3/5] done    {shown['novox']}",
        f"[4/5] done    {shown['ok']}",
        f"[5/5] failed  {shown['twod']}: {failures['twod']}"], out
    lines = err.splitlines()
    assert lines[0] == f"deconv3d: warning: {NO_VOXEL.format(shown['novox'])}", err
    assert lines[1:4] == [f"deconv3d: failed: {shown[name]}: {failures[name]}" for name in ("neg", "nm", "twod")], err
    assert _reasons(inputs / "out") == {**{f"{name}.tif": text for name, text in failures.items()},
                                        "novox.tif": "", "ok.tif": ""}
    rows = json.loads((inputs / "out" / "batch_report.json").read_text())["files"]
    # (the warning printed names the file as its line does; the row, which names it, says "the image")
    assert [r["warnings"] for r in rows if r["file"].endswith("novox.tif")] == [[NO_VOXEL.format(IMAGE)]]


def test_a_channel_count_that_does_not_match_the_psfs_names_the_file_as_its_line_does(inputs, capsys):
    """Before: '[1/1] failed  in/sub/ok.tif: ok.tif has 1 channel(s) but 2 PSFs were given ...'."""
    shown, psf = os.path.join("in", "sub", "ok.tif"), os.path.join("psfs", "psf.tif")
    code, out, err = run(["batch", "in", "-o", "out", "--psf", psf, psf, "--pattern", "*/ok.tif"], capsys)
    assert code == 3 and out.splitlines()[0] == f"[1/1] failed  {shown}: {CHANNELS.format(IMAGE)}", out
    assert err.splitlines()[-1] == f"deconv3d: failed: {shown}: {CHANNELS.format(IMAGE)}", err


def test_a_batch_of_the_working_folder_names_its_files_as_the_library_does(inputs, capsys, monkeypatch):
    """The input folder '.': the per-file line named ./sub/neg.tif, the library's reason sub/neg.tif
    (the path the batch found and ran it as)."""
    monkeypatch.chdir(inputs / "in")
    shown = os.path.join("sub", "neg.tif")
    code, out, err = run(["batch", ".", "-o", inputs / "out", "--psf", inputs / "psfs" / "psf.tif", "--pattern",
                          "*/neg.tif"], capsys)
    assert code == 3 and out.splitlines()[0] == f"[1/1] failed  {shown}: {NEGATIVE.format(IMAGE)}", out
    assert err.splitlines()[-1] == f"deconv3d: failed: {shown}: {NEGATIVE.format(IMAGE)}", err


def test_an_absolute_input_folder_names_its_files_absolutely_throughout(inputs, capsys):
    """The folder given as an absolute path: the line names the file by it (its reason says "the image")."""
    shown = str(inputs / "in" / "sub" / "nm.tif")
    code, out, _ = run(["batch", inputs / "in", "-o", inputs / "out", "--psf", inputs / "psfs" / "psf.tif",
                        "--pattern", "*/nm.tif"], capsys)
    assert code == 3 and out.splitlines()[0] == f"[1/1] failed  {shown}: {NANOMETRES.format(IMAGE)}", out


def test_deconvolve_names_its_input_as_given_in_memory_and_chunked_alike(inputs, capsys):
    """One file out of a batch: in memory the run named in/sub/neg.tif as given, chunked (a .zarr
    output) as neg.tif; both name it as given now."""
    shown = os.path.join("in", "sub", "neg.tif")
    for output, extra in (("neg.tif", []), ("neg.zarr", ["--chunks", 4, 8, 8])):
        code, _, err = run(["deconvolve", shown, "-o", output, "--psf", os.path.join("psfs", "psf.tif"), *extra],
                           capsys)
        assert code == 2 and err == f"deconv3d: error: {NEGATIVE.format(shown)}\n", (output, err)
        assert not (inputs / output).exists()
    assert np.all(tifffile.imread(inputs / shown) < 0)  # (the input untouched)


def test_a_unit_in_nanometres_is_given_the_same_fix_in_a_batch_as_in_a_single_run(inputs, capsys):
    """A batch's reason (and a chunked run's line, worded at the same place) said only "fix it or pass
    --voxel-size DZ DY DX in µm", where an in-memory run's line says how to fix the unit in Fiji."""
    shown, psf = os.path.join("in", "sub", "nm.tif"), os.path.join("psfs", "psf.tif")
    fix = "fix it (Fiji: Image > Properties) or pass --voxel-size"
    code, _, err = run(["deconvolve", shown, "-o", "nm.tif", "--psf", psf], capsys)
    assert code == 2 and err == ("deconv3d: error: voxel size 300 100 100 µm looks like nanometres (or a print "
                                 f"resolution in dpi): the file's unit is wrong: {fix} DZ DY DX in µm\n"), err
    code, _, err = run(["deconvolve", shown, "-o", "nm.zarr", "--psf", psf, "--chunks", 4, 8, 8], capsys)
    assert code == 2 and err == f"deconv3d: error: {NANOMETRES.format(shown)}\n", err
    code, out, _ = run(["batch", "in", "-o", "out", "--psf", psf, "--pattern", "*/nm.tif"], capsys)
    assert code == 3 and out.splitlines()[0] == f"[1/1] failed  {shown}: {NANOMETRES.format(IMAGE)}", out
    assert f"the unit of the image is wrong: {fix} DZ DY DX in µm" in out
    assert not (inputs / "nm.tif").exists() and not (inputs / "nm.zarr").exists()


def test_a_2d_image_in_nanometres_is_told_to_pass_two_voxel_sizes_in_a_batch_and_a_single_run(inputs, capsys):
    """The fix said "--voxel-size DZ DY DX" in a batch (three values, for a 2D image) and a bare
    "--voxel-size" in a single run: both now name the 2D image's two sizes."""
    (inputs / "flat").mkdir()
    _imagej(inputs / "flat" / "nm2d.tif", blurred_beads((8, 16, 16), gaussian_psf((5, 5, 5)))[4], "YX", pixel=100)
    write_tiff(inputs / "psfs" / "psf2d.tif", gaussian_psf((5, 5, 5))[2], voxel_size=(0.1, 0.1))
    shown, psf = os.path.join("flat", "nm2d.tif"), os.path.join("psfs", "psf2d.tif")
    fix = "fix it (Fiji: Image > Properties) or pass --voxel-size DY DX in µm"
    code, _, err = run(["deconvolve", shown, "-o", "nm2d.tif", "--psf", psf], capsys)
    assert code == 2 and err == ("deconv3d: error: voxel size 100 100 µm looks like nanometres (or a print "
                                 f"resolution in dpi): the file's unit is wrong: {fix}\n"), err
    code, out, _ = run(["batch", "flat", "-o", "out", "--psf", psf], capsys)
    assert code == 3 and out.splitlines()[0] == (f"[1/1] failed  {shown}: voxel size 100 100 µm looks like "
                                                 "nanometres (or a print resolution in dpi): the unit of the image is "
                                                 f"wrong: {fix}"), out
    assert not (inputs / "nm2d.tif").exists() and not (inputs / "out" / "nm2d.tif").exists()
