"""A batch over a folder holding a bioformats2raw folder of several images (series 0/, 1/, ... under a root whose
attributes say ``bioformats2raw.layout``): each series is an input of its own, named in its lines as the
folder's path joined with the series (in/cells.zarr/1) and written to FOLDER_SERIES (cells_1.zarr). The folder
failed with "give one, e.g. in/cells.zarr/0", which a batch cannot act on."""

import json

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr, write_ome_zarr

from .conftest import gaussian_psf

SCALE = [{"type": "scale", "scale": [0.3, 0.1, 0.1]}]


def _bioformats2raw(path, count: int, seed: int = 0) -> list:
    """A bioformats2raw folder (zarr v2, OME-Zarr v0.4, with its OME/METADATA.ome.xml) of ``count`` series, each
    an image (8, 16, 16) of its own values (from ``seed`` on); returns them."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    (path / "OME").mkdir()
    (path / "OME" / "METADATA.ome.xml").write_text("<OME/>")
    images = []
    for i in range(count):
        images.append(np.random.default_rng(seed + i).uniform(1, 2, (8, 16, 16)).astype(np.float32))
        series = root.create_group(str(i))
        series.create_array("0", data=images[-1], chunks=(4, 16, 16))
        axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
        series.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                        "datasets": [{"path": "0", "coordinateTransformations": SCALE}]}]
    return images


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "in").mkdir()
    return tmp_path


def test_each_series_of_a_bioformats2raw_folder_is_an_input_of_its_own(folder, capsys):
    """Two folders of two series (whose series share their names, 0 and 1), one of a single series (read through
    it, as before) and a pyramid image (whose levels 0 and 1 are no series): each series is deconvolved as
    ``deconvolve FOLDER/SERIES`` deconvolves it, and a second run skips every one (each has its own record)."""
    cells, other = _bioformats2raw(folder / "in" / "cells.zarr", 2), _bioformats2raw(folder / "in" / "other.zarr", 2, 2)
    _bioformats2raw(folder / "in" / "single.zarr", 1)
    write_ome_zarr(folder / "in" / "pyr.zarr", cells[0], voxel_size=(0.3, 0.1, 0.1), pyramid_levels=1)
    options = ["--psf", "psf.tif", "--iterations", 2]
    code, out, err = run(["batch", "in", "-o", "out", *options], capsys)
    assert code == 0, err
    names = ["cells.zarr/0", "cells.zarr/1", "other.zarr/0", "other.zarr/1", "pyr.zarr", "single.zarr"]
    assert [line.split()[-1] for line in out.splitlines()[:-1]] == [f"in/{name}" for name in names]
    assert sorted(p.name for p in (folder / "out").glob("*.zarr")) == ["cells_0.zarr", "cells_1.zarr", "other_0.zarr",
                                                                       "other_1.zarr", "pyr.zarr", "single.zarr"]
    rows = json.loads((folder / "out" / "batch_report.json").read_text())["files"]
    outputs = {row["output"].rsplit("/", 1)[-1] for row in rows if row["file"].endswith("other.zarr/1")}
    assert outputs == {"other_1.zarr"}
    code, _, err = run(["deconvolve", "in/cells.zarr/1", "-o", "one.zarr", *options], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_ome_zarr(folder / "out" / "cells_1.zarr")[0], read_ome_zarr("one.zarr")[0])
    assert not np.array_equal(read_ome_zarr(folder / "out" / "cells_0.zarr")[0], read_ome_zarr("one.zarr")[0])
    assert not np.array_equal(cells[1], other[1])
    code, out, err = run(["batch", "in", "-o", "out", *options], capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("batch: 0 done, 6 skipped, 0 failed")


def test_a_series_output_that_another_input_would_write_is_refused_up_front(folder, capsys):
    """cells.zarr/0 writes cells_0.zarr, the output of cells_0.tif too: the clash is refused before any file, in
    the line that names clashing inputs."""
    _bioformats2raw(folder / "in" / "cells.zarr", 2)
    write_tiff(folder / "in" / "cells_0.tif", np.ones((8, 16, 16), np.float32), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif"], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == ("deconv3d: error: cells.zarr/0 and cells_0.tif would both write cells_0.zarr: rename one "
                           "or narrow --pattern")
    assert not (folder / "out").exists()


def test_the_first_series_of_two_folders_can_be_written_at_once(folder):
    """Two runs into one output folder each hold a lock per input: the earlier versions' lock, named by
    the input, was ``0.lock`` for every folder's first series, so a run writing cells.zarr/0 made another
    skip other.zarr/0 as busy (found by the review of the series change)."""
    from deconv3d.pipeline.batch import RECORD_DIR
    from deconv3d.pipeline.locks import claim

    _bioformats2raw(folder / "in" / "cells.zarr", 2)
    _bioformats2raw(folder / "in" / "other.zarr", 2, 2)
    records = folder / "out" / RECORD_DIR
    records.mkdir(parents=True)
    with claim(records, folder / "out" / "cells_0.zarr", folder / "in" / "cells.zarr" / "0") as mine:
        with claim(records, folder / "out" / "other_0.zarr", folder / "in" / "other.zarr" / "0") as theirs:
            assert (mine, theirs) == (True, True)


@pytest.mark.parametrize("series", [2, 0])
def test_an_image_given_as_the_batch_folder_is_named_with_the_folder_to_give(folder, capsys, series):
    """A bioformats2raw folder, or an OME-Zarr image, given as the batch's input folder: no pattern finds an input
    inside it, and the batch said "check --pattern". It now says what the input is and which folder to give."""
    if series:
        _bioformats2raw(folder / "in" / "cells.zarr", series)
    else:
        write_ome_zarr(folder / "in" / "cells.zarr", np.ones((8, 16, 16), np.float32), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", "in/cells.zarr", "-o", "out", "--psf", "psf.tif"], capsys)
    what = "a bioformats2raw folder of 2 images" if series else "an image (zarr), not a folder of images"
    assert_one_line_error(code, err, f"input in/cells.zarr is {what}", str((folder / "in").resolve()),
                          "--pattern 'cells.zarr'")
    assert not (folder / "out").exists()


def test_the_batch_folder_given_as_dot_inside_an_image_is_told_the_image_s_name(folder, capsys, monkeypatch):
    """Given as "." (the batch run inside the image's folder), the image was told to take itself with
    "--pattern ''": the name is the resolved folder's."""
    write_ome_zarr(folder / "in" / "cells.zarr", np.ones((8, 16, 16), np.float32), voxel_size=(0.3, 0.1, 0.1))
    monkeypatch.chdir(folder / "in" / "cells.zarr")
    code, _, err = run(["batch", ".", "-o", str(folder / "out"), "--psf", str(folder / "psf.tif")], capsys)
    assert_one_line_error(code, err, "input . is an image (zarr)", str((folder / "in").resolve()),
                          "--pattern 'cells.zarr'")
    assert not (folder / "out").exists()
