"""TIFF outputs beyond 4 GB: written as ImageJ writes such stacks, one IFD followed by every plane
contiguous (tifffile's ``truncate``), not BigTIFF, which ImageJ hyperstacks cannot be. The 4 GB
threshold is lowered here so that a few hundred bytes take that route (a real 4.6 GB output takes a minute)."""

import numpy as np
import pytest
import tifffile

from deconv3d import _tiff_write
from deconv3d._tiff_hyperstack import write_hyperstack
from deconv3d.io import read_image, write_tiff
from deconv3d.omezarr import open_lazy

VOXEL = (0.3, 0.1, 0.2)


@pytest.fixture
def small_limit(monkeypatch):
    """Files above 256 bytes count as beyond 4 GB."""
    monkeypatch.setattr(_tiff_write, "_CLASSIC_TIFF_BYTES", 256)


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "zarr"])
def test_a_stack_beyond_the_limit_is_one_ifd_then_its_planes(tmp_path, small_limit, lazy):
    import zarr

    data = np.random.default_rng(3).random((5, 6, 7)).astype(np.float32)
    source = data
    if lazy:  # (the chunked route's copy: streamed from zarr)
        source = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, chunks=(2, 6, 7), dtype="float32")
        source[:] = data
    write_tiff(tmp_path / "big.tif", source, voxel_size=VOXEL, metadata={"method": "wiener"})
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert not tif.is_bigtiff and tif.is_imagej and len(tif.pages) == 1
        assert tif.imagej_metadata["images"] == 5 and tif.imagej_metadata["spacing"] == pytest.approx(0.3)
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
    back = read_image(tmp_path / "big.tif")
    np.testing.assert_array_equal(back.data, data)
    assert back.voxel_size == pytest.approx(VOXEL) and back.axes == "ZYX"
    lazy_back = open_lazy(tmp_path / "big.tif")  # (what a chunked run reads)
    np.testing.assert_array_equal(np.asarray(lazy_back.data), data)
    assert lazy_back.voxel_size == pytest.approx(VOXEL)


def test_a_stack_within_the_limit_keeps_one_ifd_per_plane(tmp_path):
    data = np.ones((5, 6, 7), np.float32)
    write_tiff(tmp_path / "small.tif", data, voxel_size=VOXEL)
    with tifffile.TiffFile(tmp_path / "small.tif") as tif:
        assert len(tif.pages) == 5


def test_a_hyperstack_beyond_the_limit_keeps_channels_time_and_voxel_size(tmp_path, small_limit):
    data = np.random.default_rng(4).random((2, 2, 3, 4, 5)).astype(np.float32)  # TCZYX
    channels = [{"label": "DAPI", "color": "0000FF", "window": {"start": 0.0, "end": 1.0}},
                {"label": "GFP", "color": "00FF00", "window": {"start": 0.0, "end": 0.5}}]
    write_hyperstack(tmp_path / "big.tif", data, "TCZYX", VOXEL, time_axis=(2.5, "second"), channels=channels)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        md = tif.imagej_metadata
        assert len(tif.pages) == 1 and tif.series[0].axes == "TZCYX"
        assert (md["images"], md["finterval"], md["tunit"], md["mode"]) == (12, 2.5, "sec", "composite")
        assert md["Labels"] == ["DAPI", "GFP"] * 6 and md["Ranges"] == (0.0, 1.0, 0.0, 0.5)
        assert [lut[:, 255].tolist() for lut in md["LUTs"]] == [[0, 0, 255], [0, 255, 0]]
        np.testing.assert_array_equal(tif.series[0].asarray(), data.transpose(0, 2, 1, 3, 4))
    back = open_lazy(tmp_path / "big.tif")
    assert back.axes == "TCZYX" and back.voxel_size == pytest.approx(VOXEL)
    assert back.time_axis[:2] == (2.5, "second")
    assert [c["label"] for c in back.channels] == ["DAPI", "GFP"]
    np.testing.assert_array_equal(np.asarray(back.data), data)
