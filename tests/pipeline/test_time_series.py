"""Time series (TZYX, TCZYX) through run_chunked: axes, time step and voxel size are the input's own."""

import numpy as np
import pytest
import tifffile
import zarr

from deconv3d.errors import InputError
from deconv3d.omezarr import ZarrReader, open_lazy
from deconv3d.pipeline import run_chunked


def ome_zarr_tzyx(path, data, scale=(2.5, 0.3, 0.1, 0.1)):
    """A TZYX OME-Zarr v0.5 image written with zarr alone (not deconv3d's writer): t in seconds, z y x in µm."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    axes = [{"name": "t", "type": "time", "unit": "second"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}]}]}
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]))[...] = data
    return path


def output_metadata(path):
    ms = zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]
    return ms["axes"], ms["datasets"][0]["coordinateTransformations"][0]["scale"]


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (3, 2, 4, 8, 8)])
def test_four_and_five_d_arrays_without_axes_are_refused(tmp_path, shape):
    # read as CZYX, each time point of a TZYX series went through another channel's callable
    series = np.ones(shape, np.float32)
    fns = [lambda b: b, lambda b: b * 2, lambda b: b * 3]
    with pytest.raises(InputError, match=r"axes are unknown: pass axes='T") as error:
        run_chunked(series, fns, tmp_path / "o.zarr", voxel_size=(0.3, 0.1, 0.1))
    assert "\n" not in str(error.value) and not (tmp_path / "o.zarr").exists()
    run_chunked(series, fns[1], tmp_path / "t.zarr", axes="TZYX" if len(shape) == 4 else "TCZYX")
    axes, _ = output_metadata(tmp_path / "t.zarr")
    assert axes[0]["name"] == "t"
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "t.zarr"), path="0")[...], series * 2)


@pytest.mark.parametrize("axes, count", [("TCZYX", 3), ("TCZYX", 1), ("TZYX", 2)])
def test_block_functions_not_one_per_channel_are_refused_before_any_block(tmp_path, axes, count):
    # three callables for two channels ran the first two, and two for a one-channel series ran the
    # first on every time point, without a word; one for two channels failed only once channel 1 came
    series = np.ones((2, 2, 4, 8, 8) if axes == "TCZYX" else (2, 4, 8, 8), np.float32)
    calls = []
    fns = [lambda b, k=k: calls.append(k) or b * k for k in range(1, count + 1)]
    with pytest.raises(InputError, match=rf"^{count} block function\(s\) for an image of "
                                         rf"{2 if 'C' in axes else 1} channel\(s\): give one per channel") as error:
        run_chunked(series, fns, tmp_path / "o.zarr", axes=axes)
    assert "\n" not in str(error.value) and calls == [] and not (tmp_path / "o.zarr").exists()


def test_each_channel_runs_through_its_own_block_function(tmp_path):
    series = np.ones((2, 2, 4, 8, 8), np.float32)
    run_chunked(series, [lambda b: b * 2, lambda b: b * 3], tmp_path / "o.zarr", axes="TCZYX")
    out = zarr.open_array(str(tmp_path / "o.zarr"), path="0")[...]
    np.testing.assert_array_equal(out, series * np.array([2, 3], np.float32)[:, None, None, None])


def test_a_three_d_array_is_still_zyx_by_default(tmp_path):
    run_chunked(np.ones((3, 8, 8), np.float32), lambda b: b, tmp_path / "o.zarr")
    assert [a["name"] for a in output_metadata(tmp_path / "o.zarr")[0]] == ["z", "y", "x"]


def test_zarr_reader_of_an_ome_zarr_level_keeps_its_time_axis(tmp_path):
    data = np.random.default_rng(0).random((3, 4, 8, 8)).astype(np.float32)
    path = ome_zarr_tzyx(tmp_path / "tzyx.zarr", data)
    run_chunked(ZarrReader(path, "0"), lambda b: b * 2, tmp_path / "o.zarr")
    axes, scale = output_metadata(tmp_path / "o.zarr")
    assert [a["name"] for a in axes] == ["t", "z", "y", "x"] and axes[0].get("unit") == "second"
    assert scale[0] == 2.5
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "o.zarr"), path="0")[...], data * 2, rtol=1e-6)
    assert open_lazy(tmp_path / "o.zarr").time_axis == (2.5, "second")


@pytest.mark.parametrize("unit, kept, warned", [("frame", None, True), ("sec", "second", False),
                                                ("minute", "minute", False)])
def test_an_ome_zarr_time_unit_it_cannot_name_is_left_out_with_a_warning(tmp_path, unit, kept, warned):
    """An OME-Zarr t axis in a unit OME-Zarr does not name ('frame') was passed on to the output without a word
    (found by this stop's channels/time hunt); a TIFF's is left out with a warning. So is the zarr's now, its step
    kept; a usual spelling ('sec') takes its OME-Zarr name."""
    import json
    import warnings

    from deconv3d.pipeline.files import deconvolve_file
    from deconv3d.pipeline.settings import Settings

    path = ome_zarr_tzyx(tmp_path / "tzyx.zarr", np.random.default_rng(0).random((2, 4, 8, 8)).astype(np.float32))
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["axes"][0]["unit"] = unit
    (path / "zarr.json").write_text(json.dumps(meta))
    lazy = open_lazy(path)
    assert lazy.time_axis == (2.5, kept)
    assert (lazy.time_problem is not None) == warned and (not warned or f"'{unit}'" in lazy.time_problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deconvolve_file(path, tmp_path / "o.zarr", Settings(method="wiener", psf_model="gaussian", na=1.0,
                                                            wavelength=0.5))
    said = [str(w.message) for w in caught if "cannot name" in str(w.message)]
    assert len(said) == warned, said
    axes, scale = output_metadata(tmp_path / "o.zarr")
    assert axes[0].get("unit") == kept and scale[0] == 2.5


def test_zarr_reader_of_a_bare_four_d_array_needs_axes(tmp_path):
    zarr.open_array(str(tmp_path / "bare.zarr"), mode="w", shape=(3, 4, 8, 8), dtype="f4", zarr_format=3)[...] = 1
    with pytest.raises(InputError, match="axes are unknown"):
        run_chunked(ZarrReader(tmp_path / "bare.zarr"), lambda b: b, tmp_path / "o.zarr")
    run_chunked(ZarrReader(tmp_path / "bare.zarr"), lambda b: b, tmp_path / "o.zarr", axes="TZYX")
    assert [a["name"] for a in output_metadata(tmp_path / "o.zarr")[0]] == ["t", "z", "y", "x"]


def imagej_tiff(path, data, axes):
    """An ImageJ TIFF written with tifffile: 0.1 µm pixels, 0.3 µm z step, 2.5 s per time point."""
    tifffile.imwrite(path, data, imagej=True, resolution=(10, 10),
                     metadata={"axes": axes, "spacing": 0.3, "unit": "um", "finterval": 2.5})
    return path


@pytest.mark.parametrize("shape, axes", [((3, 4, 8, 8), "TZYX"), ((4, 8, 8), "ZYX")])
def test_a_lazy_image_keeps_its_voxel_size(tmp_path, shape, axes):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    lazy = open_lazy(imagej_tiff(tmp_path / "in.tif", data, axes))
    run_chunked(lazy, lambda b: b, tmp_path / "o.zarr")
    names, scale = output_metadata(tmp_path / "o.zarr")
    assert [a["name"] for a in names] == list(axes.lower())
    np.testing.assert_allclose(scale, ([2.5] if "T" in axes else []) + [0.3, 0.1, 0.1], rtol=1e-6)
    assert all(a.get("unit") == "micrometer" for a in names if a["type"] == "space")
    run_chunked(lazy, lambda b: b, tmp_path / "given.zarr", voxel_size=(1.0, 0.2, 0.2))  # given: it wins
    assert output_metadata(tmp_path / "given.zarr")[1][-3:] == [1.0, 0.2, 0.2]


def test_zarr_reader_of_an_ome_zarr_level_keeps_its_voxel_size(tmp_path):
    path = ome_zarr_tzyx(tmp_path / "tzyx.zarr", np.ones((2, 4, 8, 8), np.float32), scale=(2.5, 0.5, 0.2, 0.2))
    run_chunked(ZarrReader(path, "0"), lambda b: b, tmp_path / "o.zarr")
    assert output_metadata(tmp_path / "o.zarr")[1] == [2.5, 0.5, 0.2, 0.2]
    assert open_lazy(tmp_path / "o.zarr").voxel_size == (0.5, 0.2, 0.2)


@pytest.mark.parametrize("attrs", [{"multiscales": ["not a dict"]}, {"ome": "x"},
                                   {"multiscales": [{"datasets": [["0"]]}]}, {"multiscales": [{"datasets": 5}]}])
def test_zarr_reader_of_a_group_with_malformed_metadata_runs_with_given_axes(tmp_path, attrs):
    # ZarrReader.image() raised AttributeError ('str' object has no attribute 'get') on such metadata,
    # and run_chunked, which asks it for the image's axes and voxel size, crashed even with axes given
    data = np.random.default_rng(1).random((3, 4, 8, 8)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "odd.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=data.shape, chunks=(1, 4, 8, 8), dtype="f4")[...] = data
    group.attrs.update(attrs)
    reader = ZarrReader(tmp_path / "odd.zarr", "0")
    assert reader.image() is None
    run_chunked(reader, lambda b: b * 2, tmp_path / "o.zarr", axes="TZYX")
    axes, scale = output_metadata(tmp_path / "o.zarr")
    assert [a["name"] for a in axes] == ["t", "z", "y", "x"] and scale == [1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "o.zarr"), path="0")[...], data * 2, rtol=1e-6)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("inside, component", [("", "0"), ("0", ""), ("", "0/"), ("", "/0"), ("0/", "")])
def test_zarr_reader_finds_its_level_however_the_level_is_spelled(tmp_path, zarr_format, inside, component):
    # ZarrReader("image.zarr/0") and the components "0/" and "/0" found no image ("axes are unknown")
    data = np.random.default_rng(2).random((3, 4, 8, 8)).astype(np.float32)
    path = ome_zarr_tzyx(tmp_path / "tzyx.zarr", data, scale=(2.5, 0.5, 0.2, 0.2))
    if zarr_format == 2:  # the same image as OME-Zarr 0.4 (zarr v2, metadata in the group's attrs)
        group = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
        group.create_array("0", shape=data.shape, chunks=(1, 4, 8, 8), dtype="f4")[...] = data
        group.attrs["multiscales"] = [{"version": "0.4", **zarr.open_group(str(path), mode="r").attrs["ome"]
                                       ["multiscales"][0]}]
        path = tmp_path / "v2.zarr"
    reader = ZarrReader(str(path) + "/" + inside, component)
    image = reader.image()
    assert (image.axes, image.voxel_size, image.time_axis) == ("TZYX", (0.5, 0.2, 0.2), (2.5, "second"))
    run_chunked(reader, lambda b: b * 2, tmp_path / "o.zarr")
    axes, scale = output_metadata(tmp_path / "o.zarr")
    assert [a["name"] for a in axes] == ["t", "z", "y", "x"] and scale == [2.5, 0.5, 0.2, 0.2]
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "o.zarr"), path="0")[...], data * 2, rtol=1e-6)
    assert reader.identity is not None  # its metadata file found ("/0" looked for /0/zarr.json)


def test_a_voxel_size_from_the_image_is_checked_as_deconvolve_checks_it(tmp_path):
    # an ImageJ TIFF calibrated as a print (0.01 pixels per µm: 100 µm pixels) was written with scale
    # [300, 100, 100] micrometer, which deconvolve refuses as "looks like nanometres"
    data = np.ones((4, 8, 8), np.float32)
    tifffile.imwrite(tmp_path / "dpi.tif", data, imagej=True, resolution=(0.01, 0.01),
                     metadata={"axes": "ZYX", "spacing": 300, "unit": "micron"})
    lazy = open_lazy(tmp_path / "dpi.tif")
    with pytest.raises(InputError, match=r"looks like nanometres.*dpi\.tif is wrong.*voxel_size=\(dz, dy, dx\)") as error:
        run_chunked(lazy, lambda b: b, tmp_path / "o.zarr")
    assert "\n" not in str(error.value) and not (tmp_path / "o.zarr").exists()
    for given in [(0.3, 0.1, 0.1), (300.0, 100.0, 100.0)]:  # one passed explicitly is taken as it was
        run_chunked(lazy, lambda b: b, tmp_path / f"o{given[0]}.zarr", voxel_size=given)
        assert output_metadata(tmp_path / f"o{given[0]}.zarr")[1] == list(given)


def test_the_voxel_size_hint_has_the_image_s_own_axes(tmp_path):
    # a 2D image was told to pass voxel_size=(dz, dy, dx), which a 2D run then refused
    tifffile.imwrite(tmp_path / "dpi2.tif", np.ones((8, 8), np.float32), imagej=True, resolution=(0.01, 0.01),
                     metadata={"unit": "micron"})
    lazy = open_lazy(tmp_path / "dpi2.tif")
    with pytest.raises(InputError, match=r"pass voxel_size=\(dy, dx\) in µm$"):
        run_chunked(lazy, lambda b: b, tmp_path / "o.zarr")
    run_chunked(lazy, lambda b: b, tmp_path / "o.zarr", voxel_size=(0.1, 0.1))  # as the hint says
    assert output_metadata(tmp_path / "o.zarr")[1] == [0.1, 0.1]


def test_array_metadata_given_beside_a_time_axis_is_taken(tmp_path):
    # "None in (time_axis, origin, ...)" compared a NumPy origin element-wise and raised ValueError
    data = np.ones((2, 4, 8, 8), np.float32)
    run_chunked(data, lambda b: b, tmp_path / "o.zarr", axes="TZYX", time_axis=(2.0, "second"),
                origin=np.array([0.0, 1.0, 2.0]), voxel_size=np.array([0.3, 0.1, 0.1]), channels=None)
    assert output_metadata(tmp_path / "o.zarr")[1] == [2.0, 0.3, 0.1, 0.1]


def test_an_ome_zarr_level_with_an_unreadable_unit_needs_a_voxel_size(tmp_path):
    path = ome_zarr_tzyx(tmp_path / "tzyx.zarr", np.ones((2, 4, 8, 8), np.float32))
    group = zarr.open_group(str(path), mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["axes"][3]["unit"] = "furlong"
    group.attrs["ome"] = ome
    with pytest.raises(InputError, match=r"furlong.*: pass voxel_size="):
        run_chunked(ZarrReader(path, "0"), lambda b: b, tmp_path / "o.zarr")
    run_chunked(ZarrReader(path, "0"), lambda b: b, tmp_path / "o.zarr", voxel_size=(0.3, 0.1, 0.1))
    assert output_metadata(tmp_path / "o.zarr")[1] == [2.5, 0.3, 0.1, 0.1]


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (3, 2, 4, 8, 8)])
def test_write_ome_zarr_refuses_four_and_five_d_data_without_axes(tmp_path, shape):
    # written as CZYX without a word, while its docstring said the default was ZYX/YX
    from deconv3d.omezarr import write_ome_zarr

    data = np.random.default_rng(3).random(shape).astype(np.float32)
    with pytest.raises(InputError, match=r"axes are unknown: pass axes='T") as error:
        write_ome_zarr(tmp_path / "w.zarr", data)
    assert "\n" not in str(error.value) and not (tmp_path / "w.zarr").exists()
    axes = "TZYX" if len(shape) == 4 else "TCZYX"
    write_ome_zarr(tmp_path / "t.zarr", data, axes=axes)
    assert [a["name"] for a in output_metadata(tmp_path / "t.zarr")[0]] == list(axes.lower())
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "t.zarr"), path="0")[...], data)
    write_ome_zarr(tmp_path / "zyx.zarr", data[0, 0] if len(shape) == 5 else data[0])  # 3D: still ZYX
    assert [a["name"] for a in output_metadata(tmp_path / "zyx.zarr")[0]] == ["z", "y", "x"]
