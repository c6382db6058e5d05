"""Every output says where its PSF came from: the file (path and SHA-256) or the model and the
microscope parameters it was generated from. Before, a generated PSF was recorded only as the
prepared array's summary, and a chunked run's TIFF lost the PSF's shape."""

import hashlib
import json
from pathlib import Path

import pytest
import tifffile

from cli_helpers import run
from deconv3d.io import write_tiff

from .conftest import blurred_beads, gaussian_psf

OPTICS = ["--psf-model", "gibson-lanni", "--na", "1.1", "--wavelength", "0.52", "--ni", "1.4", "--ns", "1.36",
          "--depth", "2.5"]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    psf = gaussian_psf()
    write_tiff(tmp_path / "img.tif", blurred_beads((16, 32, 32), psf, seed=1), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _psf_record(output: Path) -> tuple[dict, list]:
    """(source, shape) of the PSF as an output records them."""
    if output.suffix == ".zarr":
        psf = json.loads((output / "zarr.json").read_text())["attributes"]["deconv3d"]["psf"]
        return psf["source"], psf["shape"]
    with tifffile.TiffFile(output) as tif:
        properties = tif.imagej_metadata["Properties"]
    import ast

    return ast.literal_eval(properties["psf_source"]), ast.literal_eval(properties["psf_shape"])


@pytest.mark.parametrize("output, extra", [("out.tif", []), ("out.zarr", []), ("chunked.tif", ["--chunks", "8", "16", "16"])])
def test_a_generated_psf_is_recorded_with_its_microscope_parameters(folder, capsys, output, extra):
    code, _, err = run(["deconvolve", "img.tif", "-o", output, *OPTICS, "--iterations", "2", *extra], capsys)
    assert code == 0, err
    source, shape = _psf_record(folder / output)
    assert source == {"model": "gibson-lanni", "na": 1.1, "wavelength": 0.52, "ni": 1.4, "ns": 1.36, "depth": 2.5}
    assert len(shape) == 3 and all(n > 1 for n in shape)


@pytest.mark.parametrize("output, extra", [("out.tif", []), ("out.zarr", []), ("chunked.tif", ["--chunks", "8", "16", "16"])])
def test_a_psf_file_is_recorded_by_path_and_hash(folder, capsys, output, extra):
    code, _, err = run(["deconvolve", "img.tif", "-o", output, "--psf", "psf.tif", "--iterations", "2", *extra], capsys)
    assert code == 0, err
    source, shape = _psf_record(folder / output)
    assert source == {"files": ["psf.tif"], "sha256": [hashlib.sha256((folder / "psf.tif").read_bytes()).hexdigest()]}
    assert shape == [7, 7, 7]


def test_batch_records_the_generated_psf_s_parameters(folder, capsys):
    (folder / "in").mkdir()
    (folder / "img.tif").rename(folder / "in" / "img.tif")
    code, _, err = run(["batch", "in", "-o", "res", *OPTICS, "--iterations", "2"], capsys)
    assert code == 0, err
    source, _ = _psf_record(folder / "res" / "img.zarr")
    assert source["model"] == "gibson-lanni" and source["wavelength"] == 0.52 and source["depth"] == 2.5
