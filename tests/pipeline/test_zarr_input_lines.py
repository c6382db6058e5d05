"""Damaged OME-Zarr inputs: one line that names the folder once (zarr's own words repeated it) and a fix."""

import json
import os
import shutil

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from deconv3d.io import write_tiff
from deconv3d.omezarr import write_ome_zarr

from .conftest import gaussian_psf


def _no_metadata(folder):
    os.remove(folder / "zarr.json")


def _attributes_alone(folder):  # a zarr v2 group's .zattrs without its .zgroup
    (folder / ".zattrs").write_text(json.dumps(json.loads((folder / "zarr.json").read_text())["attributes"]))
    os.remove(folder / "zarr.json")


def _group_not_json(folder):
    (folder / "zarr.json").write_text("{not json")


def _level_not_json(folder):
    (folder / "0" / "zarr.json").write_text("{not json")


def _string_level(folder):
    meta = json.loads((folder / "0" / "zarr.json").read_text())
    meta.update(data_type="string", fill_value="")
    (folder / "0" / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, words", [
    (_no_metadata, ["it holds no zarr.json or .zgroup", "give an OME-Zarr image group"]),
    (_attributes_alone, ["it holds no zarr.json or .zgroup", "give an OME-Zarr image group"]),
    (_group_not_json, ["metadata is not valid JSON", "line 1 column 2", "give an OME-Zarr image group"]),
    (_level_not_json, ["level '0'", "metadata is not valid JSON", "export the image again"]),
    (_string_level, ["level '0'", "export the image again"]),
])
@pytest.mark.parametrize("output", ["out.zarr", "out.tif"])
def test_a_damaged_zarr_input_is_named_once_with_a_fix(tmp_path, monkeypatch, capsys, damage, words, output):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    write_ome_zarr(tmp_path / "in.zarr", np.ones((8, 16, 16), np.float32), voxel_size=(0.3, 0.1, 0.1))
    damage(tmp_path / "in.zarr")
    code, _, err = run(["deconvolve", "in.zarr", "-o", output, "--psf", "psf.tif"], capsys)
    assert_one_line_error(code, err, *words)
    assert err.count("in.zarr") == 1, err
    assert not (tmp_path / output).exists()
    shutil.rmtree(tmp_path / "in.zarr")
    assert sorted(os.listdir(tmp_path)) == ["psf.tif"]  # nothing else left behind
