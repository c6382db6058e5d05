"""A batch's failure lines name the input before the reason: a refusal that names the input file gives the
batch its reason said of "the image" (InputError.without_file), so the name is not repeated; a single
deconvolve's line is as it was."""

import copy
import json
import pickle

import numpy as np
import pytest

from cli_helpers import run
from deconv3d.errors import InputError, naming_image
from deconv3d.io import write_tiff
from .conftest import gaussian_psf

VOXEL = (0.3, 0.1, 0.1)
PLANE_FIX = "a 2D image needs a 2D PSF: the in-focus plane of a 3D one, or a plane made by 'deconv3d psf --shape 63 63 " \
    "--voxel-size DY DX ...'"
THIN_FIX = "2 z-planes are too few for a 3D PSF: image a thicker stack, or deconvolve each plane as a 2D image with a 2D PSF"
NEGATIVE = "has no positive values, so rl would return only zeros: add the subtracted offset back"
REASONS = {  # each file's reason in the batch's lines
    "a.tif": f"PSF psf.tif (9, 5, 5) is larger than the image (2, 24, 24) along z (in the image's voxels): {THIN_FIX}",
    "b.tif": f"PSF psf.tif is 3D but the image is 2D: {PLANE_FIX}",
    "c.tif": f"the image {NEGATIVE}",
}
DECONVOLVE = {  # each file's line from a single deconvolve
    "a.tif": f"PSF psf.tif (9, 5, 5) is larger than the image IN/a.tif (2, 24, 24) along z (in the image's voxels): "
             f"{THIN_FIX}",
    "b.tif": f"PSF psf.tif is 3D but IN/b.tif is 2D: {PLANE_FIX}",
    "c.tif": f"IN/c.tif {NEGATIVE}",
}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((9, 5, 5)), voxel_size=VOXEL)
    (tmp_path / "IN").mkdir()
    volume = np.random.default_rng(0).uniform(1, 2, (8, 24, 24)).astype(np.float32)
    write_tiff(tmp_path / "IN" / "a.tif", volume[:2], voxel_size=VOXEL)  # 2 planes: thinner than the PSF
    write_tiff(tmp_path / "IN" / "b.tif", volume[0], voxel_size=VOXEL[1:])  # 2D, a 3D PSF
    write_tiff(tmp_path / "IN" / "c.tif", -volume, voxel_size=VOXEL)  # no positive value
    return tmp_path


def test_a_batchs_lines_and_report_name_the_input_once(folder, capsys):
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif"], capsys)
    assert code == 3, err
    failed = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert failed == [f"failed  IN/{name}: {reason}" for name, reason in REASONS.items()]
    assert [line for line in err.splitlines() if line.startswith("deconv3d: failed: ")] == [
        f"deconv3d: failed: IN/{name}: {reason}" for name, reason in REASONS.items()]
    rows = json.loads((folder / "OUT" / "batch_report.json").read_text())["files"]
    assert {row["file"]: row["reason"] for row in rows} == {
        str(folder / "IN" / name): reason for name, reason in REASONS.items()}


@pytest.mark.parametrize("name", sorted(DECONVOLVE))
def test_a_single_deconvolve_still_names_the_input(folder, capsys, name):
    code, _, err = run(["deconvolve", f"IN/{name}", "-o", "out.zarr", "--psf", "psf.tif"], capsys)
    assert code == 2
    assert err == f"deconv3d: error: {DECONVOLVE[name]}\n"
    assert not (folder / "out.zarr").exists()


def test_the_refusal_keeps_its_line_without_the_file_through_pickling():
    """A file's refusal crosses processes (the processes scheduler, dask.distributed) with without_file."""
    refusal = naming_image(lambda image: f"{image} is 2D: give a 2D PSF", "IN/b.tif")
    assert (str(refusal), refusal.without_file) == ("IN/b.tif is 2D: give a 2D PSF", "the image is 2D: give a 2D PSF")
    for again in (pickle.loads(pickle.dumps(refusal)), copy.copy(refusal)):
        assert type(again) is InputError
        assert (str(again), again.without_file) == (str(refusal), refusal.without_file)
    plain = pickle.loads(pickle.dumps(InputError("bad")))
    assert (str(plain), plain.without_file) == ("bad", None)
