"""Malformed OME-Zarr ``multiscales`` metadata, written by hand into a tiny image deconv3d wrote: each
is refused in one line naming the file and key (by the lazy and the eager reader and by ``deconvolve``,
with exit status 2), or read as its intent is where that is unambiguous. Before, many raised a raw
AttributeError, KeyError or TypeError (an internal error, exit 1), and some were read wrongly in silence:
axes ``"zyx"`` as a string, a ``coordinateTransformations`` object or an unknown transformation skipped
(a voxel size of 1 µm), an empty axes list read as z, y, x."""

import json

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from deconv3d.errors import InputError
from deconv3d.io import write_tiff
from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr

DATA = np.random.default_rng(7).random((4, 8, 8)).astype(np.float32)
VOXEL = (0.3, 0.1, 0.1)


def _ms(attrs):
    return attrs["ome"]["multiscales"][0]


def _set(where, key, value):
    return lambda attrs: where(attrs).__setitem__(key, value)


def _level(attrs):
    return _ms(attrs)["datasets"][0]


def _scale(*values):
    return _set(_level, "coordinateTransformations", [{"type": "scale", "scale": list(values)}])


def _to_04_layout(attrs):  # OME-Zarr 0.4's place, at the top of the attributes, in a zarr v3 group
    attrs["multiscales"] = [{"version": "0.4", **_ms(attrs)}]
    del attrs["ome"]


MALFORMED = {  # case: (edit of the attributes, words of the key the error names)
    "multiscales not a list": (lambda a: a["ome"].__setitem__("multiscales", _ms(a)), "ome.multiscales is {"),
    "multiscales empty": (_set(lambda a: a["ome"], "multiscales", []), "ome.multiscales is []"),
    "multiscales of a non-object": (_set(lambda a: a["ome"], "multiscales", ["x"]), 'ome.multiscales is ["x"]'),
    "ome not an object": (_set(lambda a: a, "ome", "x"), 'ome is "x"'),
    "datasets missing": (lambda a: _ms(a).pop("datasets"), "ome.multiscales[0].datasets is missing"),
    "datasets empty": (_set(_ms, "datasets", []), "ome.multiscales[0].datasets is []"),
    "datasets not a list": (_set(_ms, "datasets", "0"), 'ome.multiscales[0].datasets is "0"'),
    "level not an object": (_set(_ms, "datasets", ["0"]), 'ome.multiscales[0].datasets[0] is "0"'),
    "level without a path": (lambda a: _level(a).pop("path"), "datasets[0].path is missing"),
    "path not a string": (_set(_level, "path", 0), "datasets[0].path is 0,"),
    "path of no array": (_set(_level, "path", "5"), 'datasets[0].path is "5"'),
    "axes not a list": (_set(_ms, "axes", "zyx"), 'ome.multiscales[0].axes is "zyx", not a list of 3 axes'),
    "axes empty": (_set(_ms, "axes", []), "ome.multiscales[0].axes is [], not a list of 3 axes"),
    "axes without names": (_set(_ms, "axes", [{"type": "space"}] * 3), "ome.multiscales[0].axes[0].name is missing"),
    "axis of a number": (_set(_ms, "axes", [1, "y", "x"]), "ome.multiscales[0].axes[0] is 1,"),
    "axes fewer than dimensions": (_set(_ms, "axes", [{"name": "y"}, {"name": "x"}]), "axes is [{"),
    "axis of an unknown type": (_set(_ms, "axes", [{"name": a, "type": "spaace"} for a in "zyx"]),
                                "axis 'z' has type 'spaace'"),
    "transformations not a list": (_set(_level, "coordinateTransformations", {"type": "scale", "scale": [1] * 3}),
                                   "datasets[0].coordinateTransformations is {"),
    "transformation without a type": (_set(_level, "coordinateTransformations", [{"scale": list(VOXEL)}]),
                                      "datasets[0].coordinateTransformations[0] is {"),
    "transformation of an unknown type": (_set(_level, "coordinateTransformations", [
        {"type": "Scale", "scale": list(VOXEL)}]), 'coordinateTransformations[0] is {"type": "Scale"'),
    "multiscale transformations not a list": (_set(_ms, "coordinateTransformations", "x"),
                                              'ome.multiscales[0].coordinateTransformations is "x"'),
    "scale of the wrong length": (_scale(0.1, 0.1), "level '0' has scale [0.1, 0.1], not 3 positive numbers"),
    "scale not numbers": (_scale("a", 0.1, 0.1), "has scale ['a', 0.1, 0.1], not 3 positive"),
    "scale a string": (_set(_level, "coordinateTransformations", [{"type": "scale", "scale": "111"}]),
                       "has scale '111', not 3 positive"),
    "scale of booleans": (_scale(True, True, True), "has scale [True, True, True], not 3 positive"),
    "scale zero": (_scale(0, 0.1, 0.1), "has scale [0, 0.1, 0.1], not 3 positive"),
    "scale negative": (_scale(-0.3, 0.1, 0.1), "has scale [-0.3, 0.1, 0.1], not 3 positive"),
}

READ = {  # case: (edit, (axes, voxel size, origin) as read)
    "axes as names (0.3)": (_set(_ms, "axes", ["z", "y", "x"]), ("ZYX", VOXEL, None)),
    "axes missing (0.1, 0.2: ZYX for 3D)": (lambda a: _ms(a).pop("axes"), ("ZYX", VOXEL, None)),
    "version missing": (lambda a: a["ome"].pop("version"), ("ZYX", VOXEL, None)),
    "0.4 layout": (_to_04_layout, ("ZYX", VOXEL, None)),
    # no scale: no voxel size, whatever the units say (it was read as 1 micrometre)
    "transformations missing": (lambda a: _level(a).pop("coordinateTransformations"), ("ZYX", None, None)),
    "transformations empty": (_set(_level, "coordinateTransformations", []), ("ZYX", None, None)),
    "translation only": (_set(_level, "coordinateTransformations", [
        {"type": "translation", "translation": [1.0, 2.0, 3.0]}]), ("ZYX", None, (1.0, 2.0, 3.0))),
}


def _edited(tmp_path, edit):
    """A 3D OME-Zarr v0.5 image written by deconv3d, its zarr.json attributes edited by ``edit``."""
    path = tmp_path / "m.zarr"
    write_ome_zarr(path, DATA, voxel_size=VOXEL)
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_multiscales_are_refused_in_one_line_naming_the_key(tmp_path, case, capsys):
    edit, words = MALFORMED[case]
    path = _edited(tmp_path, edit)
    for read in (open_lazy, read_ome_zarr):
        with pytest.raises(InputError) as caught:
            read(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and words in message, message
    write_tiff(tmp_path / "psf.tif", np.full((3, 3, 3), 1 / 27, np.float32), voxel_size=VOXEL)
    code, _, err = run(["deconvolve", path, "-o", tmp_path / "out.zarr", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2], capsys)
    assert_one_line_error(code, err, words)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("case", READ)
def test_metadata_whose_intent_is_plain_is_read_as_meant(tmp_path, case):
    edit, (axes, voxel, origin) = READ[case]
    path = _edited(tmp_path, edit)
    lazy = open_lazy(path)
    assert (lazy.axes, lazy.origin) == (axes, origin)
    assert lazy.voxel_size == (None if voxel is None else pytest.approx(voxel))
    np.testing.assert_array_equal(lazy.data.compute(), DATA)
    data, eager_voxel, eager_axes, _ = read_ome_zarr(path)
    np.testing.assert_array_equal(data, DATA)
    assert (eager_axes, eager_voxel) == (axes, lazy.voxel_size)


@pytest.mark.parametrize("shape, axes", [((4, 6), "YX"), ((3, 4, 6), "ZYX"), ((1, 2, 3, 4, 6), "TCZYX"),
                                         ((2, 3, 4, 6), None)])
def test_without_axes_an_array_is_read_only_where_its_dimensions_say_which(tmp_path, shape, axes):
    """OME-Zarr 0.1 and 0.2 had no axes (5D, TCZYX); a 4D array without them was read as CZYX,
    a time series' t taken for channels."""
    import zarr

    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=data, chunks=shape)
    group.attrs["multiscales"] = [{"version": "0.2", "datasets": [{"path": "0"}]}]
    if axes is None:
        with pytest.raises(InputError, match=r"a\.zarr/\.zattrs: multiscales\[0\]\.axes is missing, where it "
                                             r"should be a list of 4 axes"):
            open_lazy(tmp_path / "a.zarr")
        return
    lazy = open_lazy(tmp_path / "a.zarr")
    assert lazy.axes == axes and lazy.voxel_size is None
    np.testing.assert_array_equal(lazy.data.compute(), data)


def test_numeric_strings_in_a_scale_are_read_as_numbers_a_string_or_booleans_refused():
    """_level_transform's docstring said a scale or translation must be a list of numbers, yet one of
    numeric strings (["2", "0.5", "0.5"]) is read, as its numbers; the string "111" in place of the
    list, or true in it, is refused by name rather than read as a scale."""
    from deconv3d.omezarr.ngff_metadata import _level_transform

    def multiscale(scale, translation=(0, 0, 0)):
        return {"datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": list(translation)}]}]}

    scale, origin = _level_transform(multiscale(["2", "0.5", "0.5"], ["1", "0", "-0.25"]), 0, 3)
    assert scale == [2.0, 0.5, 0.5] and origin == [1.0, 0.0, -0.25]
    for bad in ("111", [True, 1, 1]):
        with pytest.raises(InputError, match="not 3 positive numbers"):
            _level_transform(multiscale(bad), 0, 3)
