"""Tests for deconv3d.io: TIFF reading/writing with voxel sizes and input errors."""

import os

import numpy as np
import pytest
import tifffile

from deconv3d import io
from deconv3d.errors import InputError
from deconv3d.io import check_output_path, read_image, write_tiff


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize(
    "shape, voxel, axes",
    [((6, 7, 8), (0.3, 0.1, 0.12), "ZYX"), ((7, 8), (0.065, 0.07), "YX")],
)
def test_round_trip_keeps_data_and_voxel_size(tmp_path, rng, shape, voxel, axes):
    data = rng.random(shape, dtype=np.float32)
    path = tmp_path / "out.tif"
    write_tiff(path, data, voxel_size=voxel, metadata={"method": "rl"})
    image = read_image(path)
    assert image.data.dtype == np.float32
    np.testing.assert_array_equal(image.data, data)
    assert image.voxel_size == pytest.approx(voxel, rel=1e-6)
    assert image.axes == axes


def test_written_tiff_is_imagej_hyperstack(tmp_path, rng):
    path = tmp_path / "out.tif"
    write_tiff(path, rng.random((5, 6, 7), dtype=np.float32), voxel_size=(0.5, 0.2, 0.2))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.5)
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.series[0].axes == "ZYX"
        assert tif.pages[0].resolution == pytest.approx((5.0, 5.0))


def test_write_without_voxel_size_reads_none(tmp_path, rng):
    path = tmp_path / "out.tiff"
    write_tiff(path, rng.random((5, 6, 7), dtype=np.float32))
    assert read_image(path).voxel_size is None


@pytest.mark.parametrize(
    "unit, scale, spacing, expected",
    [("um", 1 / 0.065, 0.2, (0.2, 0.065, 0.065)), ("nm", 1 / 65.0, 200.0, (0.2, 0.065, 0.065)),
     ("micron", 1 / 0.1, 0.3, (0.3, 0.1, 0.1)), (None, 1 / 0.1, 0.3, (0.3, 0.1, 0.1))],
)
def test_reads_imagej_tiff_voxel_size(tmp_path, rng, unit, scale, spacing, expected):
    path = tmp_path / "ij.tif"
    metadata = {"axes": "ZYX", "spacing": spacing}
    if unit is not None:
        metadata["unit"] = unit
    data = rng.random((5, 6, 7), dtype=np.float32)
    tifffile.imwrite(path, data, imagej=True, resolution=(scale, scale), metadata=metadata)
    image = read_image(path)
    assert image.voxel_size == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(image.data, data)


def test_reads_ome_tiff_voxel_size_and_squeezes(tmp_path, rng):
    path = tmp_path / "img.ome.tif"
    data = rng.random((1, 5, 6, 7), dtype=np.float32)
    metadata = {"axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.12,
                "PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm"}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    image = read_image(path)
    assert image.axes == "ZYX"
    assert image.data.shape == (5, 6, 7)
    assert image.voxel_size == pytest.approx((0.5, 0.12, 0.1))


def test_plain_tiff_has_no_voxel_size(tmp_path, rng):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, rng.random((5, 6, 7), dtype=np.float32))
    image = read_image(path)
    assert image.voxel_size is None and image.axes == "ZYX"


def test_integer_data_converts_to_float32(tmp_path):
    path = tmp_path / "int.tif"
    data = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7) * 100
    tifffile.imwrite(path, data)
    image = read_image(path)
    assert image.data.dtype == np.float32
    np.testing.assert_array_equal(image.data, data.astype(np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="input file not found"):
        read_image(tmp_path / "missing.tif")


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("this is not an image")
    with pytest.raises(InputError, match="cannot read .* as a TIFF image"):
        read_image(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="supported formats"):
        read_image(path)


def test_1d_data(tmp_path):
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.ones((1, 1, 9), dtype=np.float32))
    with pytest.raises(InputError, match="1D"):
        read_image(path)


def test_nan_values(tmp_path, rng):
    path = tmp_path / "nan.tif"
    data = rng.random((5, 6, 7), dtype=np.float32)
    data[2, 3, 4] = np.nan
    tifffile.imwrite(path, data)
    with pytest.raises(InputError, match="NaN or Inf"):
        read_image(path)


@pytest.mark.parametrize("axes, shape", [("ZCYX", (5, 2, 6, 7)), ("CYX", (2, 6, 7)), ("TYX", (5, 6, 7))])
def test_multichannel_or_time_rejected(tmp_path, axes, shape):
    path = tmp_path / "multi.tif"
    tifffile.imwrite(path, np.ones(shape, dtype=np.float32), imagej=True, metadata={"axes": axes})
    with pytest.raises(InputError, match="multi-channel/time"):
        read_image(path)


def test_output_directory_missing(tmp_path, rng):
    target = tmp_path / "no_such_dir" / "out.tif"
    with pytest.raises(InputError, match="output directory not found"):
        write_tiff(target, rng.random((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match="output directory not found"):
        check_output_path(target, [])


def test_output_equals_input(tmp_path, rng):
    path = tmp_path / "img.tif"
    write_tiff(path, rng.random((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match="output path equals the input"):
        check_output_path(path, [path])
    with pytest.raises(InputError, match="output path equals the input"):
        check_output_path(tmp_path / "." / "img.tif", str(path))
    check_output_path(tmp_path / "other.tif", [path])


def test_output_unsupported_suffix(tmp_path):
    with pytest.raises(InputError, match="supported formats"):
        check_output_path(tmp_path / "out.png", [])


def test_failed_write_leaves_no_file(tmp_path, rng, monkeypatch):
    def broken_imwrite(fh, *args, **kwargs):
        fh.write(b"partial")
        raise RuntimeError("disk exploded")

    monkeypatch.setattr(io.tifffile, "imwrite", broken_imwrite)
    with pytest.raises(RuntimeError, match="disk exploded"):
        write_tiff(tmp_path / "out.tif", rng.random((4, 5), dtype=np.float32))
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_existing_output(tmp_path, rng, monkeypatch):
    path = tmp_path / "out.tif"
    original = rng.random((4, 5), dtype=np.float32)
    write_tiff(path, original)

    def broken_imwrite(fh, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(io.tifffile, "imwrite", broken_imwrite)
    with pytest.raises(InputError, match="cannot write"):
        write_tiff(path, np.zeros((4, 5), dtype=np.float32))
    assert os.listdir(tmp_path) == ["out.tif"]
    np.testing.assert_array_equal(read_image(path).data, original)


def test_write_tiff_streams_a_lazy_volume_in_slabs(tmp_path, monkeypatch):
    """A zarr (or dask) volume is written page by page, read in slabs, with the same result."""
    import zarr

    data = np.random.default_rng(0).random((7, 10, 12)).astype(np.float32)
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, chunks=(3, 5, 6), dtype="float32")
    arr[:] = data
    reads = []
    original = io._pages

    def counting(volume):
        class Spy:
            shape, dtype = volume.shape, volume.dtype

            def __getitem__(self, key):
                reads.append(key)
                return volume[key]
        return original(Spy())

    monkeypatch.setattr(io, "_SLAB_BYTES", 2 * 10 * 12 * 4)  # two planes per slab
    monkeypatch.setattr(io, "_pages", counting)
    write_tiff(tmp_path / "out.tif", arr, voxel_size=(0.5, 0.2, 0.1))
    back = read_image(tmp_path / "out.tif")
    np.testing.assert_array_equal(back.data, data)
    assert back.voxel_size == pytest.approx((0.5, 0.2, 0.1))
    assert reads == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
