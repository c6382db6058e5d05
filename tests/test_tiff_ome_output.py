"""An output named ``*.ome.tif``/``*.ome.tiff`` is an OME-TIFF (OME-XML with the physical sizes in µm),
which Bio-Formats and napari's readers take by that suffix; every other TIFF name stays an ImageJ TIFF."""

import json
import re

import numpy as np
import pytest
import tifffile
import zarr
from cli_helpers import run

from deconv3d._tiff_write import ZarrPlanes
from deconv3d.io import read_image, write_tiff


def _ome_sizes(path) -> dict:
    """``{axis: (size, unit)}`` of the ``PhysicalSize*`` attributes of ``path``'s OME-XML."""
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    return {axis: (float(size), unit) for axis, size, unit in
            re.findall(r'PhysicalSize([XYZ])="([^"]+)" PhysicalSize\1Unit="([^"]+)"', xml)}


def _zarr_volume(data):
    array = zarr.zeros(data.shape, dtype="f4", chunks=(2,) + data.shape[1:])
    array[:] = data
    return ZarrPlanes(array)


@pytest.mark.parametrize("name", ["out.ome.tif", "out.OME.TIFF"])
@pytest.mark.parametrize("shape, voxel, axes, file_axes, lazy", [
    ((5, 6, 7), (0.5, 0.1, 0.2), None, "ZYX", False),
    ((5, 6, 7), (0.5, 0.1, 0.2), None, "ZYX", True),  # streamed plane by plane
    ((6, 7), (0.1, 0.2), None, "YX", False),
    ((5, 7), (0.5, 0.2), "ZX", "ZYX", False),  # a section through z: a y axis of one
    ((5, 6), (0.5, 0.1), "ZY", "ZYX", False),
])
def test_ome_named_output_is_an_ome_tiff_read_back_alike(tmp_path, name, shape, voxel, axes, file_axes, lazy):
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    path = tmp_path / name
    write_tiff(path, _zarr_volume(data) if lazy else data, voxel_size=voxel, axes=axes)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and not tif.is_imagej
        assert tif.series[0].axes == file_axes
        assert tif.series[0].dtype == np.float32
    letters = axes or "ZYX"[-len(shape):]
    sizes = _ome_sizes(path)  # (a section's axis of one has a size too: the other lateral one's)
    assert {a: sizes[a] for a in letters} == {a: (pytest.approx(v), "\u00b5m") for a, v in zip(letters, voxel)}
    image = read_image(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.voxel_size == pytest.approx(voxel)
    assert image.axes == letters


def test_ome_tiff_keeps_the_properties_as_a_map_annotation(tmp_path):
    path = tmp_path / "out.ome.tiff"
    write_tiff(path, np.ones((3, 4, 5)), voxel_size=(0.5, 0.1, 0.1),
               metadata={"method": "rl", "parameters": {"iterations": 3}, "skipped": None})
    with tifffile.TiffFile(path) as tif:
        pairs = dict(re.findall(r'<M K="([^"]+)">([^<]*)</M>', tif.ome_metadata))
    assert pairs["method"] == "rl" and "skipped" not in pairs
    assert json.loads(pairs["parameters"].replace("&quot;", '"')) == {"iterations": 3}


@pytest.mark.parametrize("name", ["out.tif", "ome.tif", "out.ome_tif.tiff", "out.ome.tif.tiff"])
def test_other_names_stay_imagej_tiffs(tmp_path, name):
    path = tmp_path / name
    write_tiff(path, np.ones((3, 4, 5)), voxel_size=(0.5, 0.1, 0.1))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and not tif.is_ome


def test_psf_and_deconvolve_write_ome_tiffs_by_name(tmp_path, capsys):
    psf = tmp_path / "psf.ome.tif"
    code, _, err = run(["psf", "-o", psf, "--model", "gaussian", "--shape", 7, 11, 11, "--voxel-size", 0.3, 0.1, 0.1,
                        "--na", 1.2, "--wavelength", 0.5], capsys)
    assert code == 0, err
    image = tmp_path / "img.tif"
    write_tiff(image, np.random.default_rng(1).random((8, 16, 16)) + 1, voxel_size=(0.3, 0.1, 0.1))
    out = tmp_path / "restored.ome.tif"
    code, _, err = run(["deconvolve", image, "--psf", psf, "-o", out, "--iterations", 2], capsys)
    assert code == 0, err
    for path, shape in ((psf, (7, 11, 11)), (out, (8, 16, 16))):
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome and tif.series[0].axes == "ZYX"
        assert _ome_sizes(path) == {"Z": (pytest.approx(0.3), "\u00b5m"), "Y": (pytest.approx(0.1), "\u00b5m"),
                                    "X": (pytest.approx(0.1), "\u00b5m")}
        written = read_image(path)
        assert written.data.shape == shape and written.voxel_size == pytest.approx((0.3, 0.1, 0.1))
