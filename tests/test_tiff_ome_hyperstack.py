"""A hyperstack (several channels and/or time points) written to a name ``*.ome.tif``/``*.ome.tiff`` is an
OME-TIFF (TZCYX, OME's DimensionOrder XYCZT) with its physical sizes, channel names and colours, time step
and the run's properties as one MapAnnotation, streamed as the ImageJ hyperstack is; other names stay ImageJ."""

import json
import re

import numpy as np
import pytest
import tifffile
import zarr

from cli_helpers import run
from deconv3d._tiff_hyperstack import write_hyperstack
from deconv3d._tiff_write import ZarrPlanes
from deconv3d.errors import InputError
from deconv3d.io import write_tiff
from deconv3d.omezarr import open_lazy

VOXEL = (0.5, 0.1, 0.2)
CHANNELS = [{"label": "GFP", "color": "00FF00", "window": {"start": 0, "end": 1}}, {"label": "RFP", "color": "FF0000"}]


def _ome(path) -> tuple:
    """``(Pixels attributes, [Channel attributes], {MapAnnotation key: value})`` of ``path``'s OME-XML."""
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and not tif.is_imagej
        xml = tif.ome_metadata
    pixels = dict(re.findall(r'(\w+)="([^"]*)"', re.search(r"<Pixels ([^>]*)>", xml).group(1)))
    channels = [dict(re.findall(r'(\w+)="([^"]*)"', attrs)) for attrs in re.findall(r"<Channel ([^>]*)>", xml)]
    pairs = {k: v.replace("&quot;", '"') for k, v in re.findall(r'<M K="([^"]+)">([^<]*)</M>', xml)}
    return pixels, channels, pairs


class _Recorded:
    """An array whose reads are recorded (their bytes): the writer must never read it whole."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        self.reads.append(self.data[key].nbytes)
        return self.data[key]


# axes: (shape, time axis, channel entries)
CASES = {"CZYX": ((2, 4, 5, 6), None, CHANNELS), "TZYX": ((3, 4, 5, 6), (2.5, "minute"), None),
         "TCZYX": ((2, 2, 4, 5, 6), (1.5, "second"), CHANNELS), "TYX": ((3, 5, 6), (40.0, "millisecond"), None)}


@pytest.mark.parametrize("name", ["h.ome.tif", "h.OME.TIFF"])
@pytest.mark.parametrize("axes", list(CASES))
def test_an_ome_named_hyperstack_is_an_ome_tiff_read_back_alike(tmp_path, name, axes):
    shape, time_axis, channels = CASES[axes]
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    source, voxel = _Recorded(data), VOXEL if "Z" in axes else VOXEL[1:]
    slab = 4 * shape[-2] * shape[-1] * (2 if "C" in axes else 1) * 2  # two z-planes of every channel
    write_hyperstack(tmp_path / name, source, axes, voxel, {"method": "rl", "parameters": {"iterations": 3}},
                     time_axis=time_axis, channels=channels, slab_bytes=slab)
    assert max(source.reads) <= slab < data.nbytes  # streamed in slabs, never whole
    order = "".join(a for a in "TZCYX" if a in axes)
    with tifffile.TiffFile(tmp_path / name) as tif:
        assert tif.series[0].axes == order and tif.series[0].dtype == np.float32
        np.testing.assert_array_equal(tif.series[0].asarray(), data.transpose([axes.index(a) for a in order]))
    pixels, written_channels, pairs = _ome(tmp_path / name)
    assert pixels["DimensionOrder"] == "XYCZT"
    for axis, size in zip("ZYX"[-len(voxel):], voxel):
        assert (float(pixels[f"PhysicalSize{axis}"]), pixels[f"PhysicalSize{axis}Unit"]) == (size, "\u00b5m")
    assert "PhysicalSizeZ" in pixels or "Z" not in axes
    if time_axis:
        symbol = {"second": "s", "minute": "min", "millisecond": "ms"}[time_axis[1]]
        assert (float(pixels["TimeIncrement"]), pixels["TimeIncrementUnit"]) == (time_axis[0], symbol)
    if channels:  # OME's Color: RGBA as a signed 32-bit integer
        assert written_channels == [{"ID": f"Channel:0:{c}", "SamplesPerPixel": "1", "Name": name, "Color": color}
                                    for c, (name, color) in enumerate([("GFP", "16711935"), ("RFP", "-16776961")])]
    assert pairs["method"] == "rl" and json.loads(pairs["parameters"]) == {"iterations": 3}
    lazy = open_lazy(tmp_path / name)
    assert lazy.axes == axes and lazy.data.shape == shape and lazy.voxel_size == pytest.approx(voxel)
    np.testing.assert_array_equal(np.asarray(lazy.data), data)
    assert lazy.time_axis == time_axis
    assert lazy.channels == (None if not channels else
                             ({"label": "GFP", "color": "00FF00"}, {"label": "RFP", "color": "FF0000"}))


@pytest.mark.parametrize("time_axis, increment, properties", [
    ((2.0, None), None, {"time_step": 2.0}), ((2.0, "decasecond"), None, {"time_step": 2.0, "time_unit": "decasecond"}),
    ((2.0, "hour", 5.0), ("2.0", "h"), {"time_origin": 5.0}),
    ((2.0, None, -1.5), None, {"time_step": 2.0, "time_origin": -1.5})])
def test_an_ome_hyperstack_keeps_a_step_without_an_ome_unit_and_a_start_as_properties(
        tmp_path, time_axis, increment, properties):
    """OME-XML's TimeIncrementUnit defaults to seconds and has no start: a step without a unit (or in one
    OME has no symbol for) is not written as a TimeIncrement, but as the properties the ImageJ path writes."""
    write_hyperstack(tmp_path / "h.ome.tif", np.ones((2, 3, 4, 4), np.float32), "TZYX", VOXEL,
                     {"method": "rl"}, time_axis=time_axis)
    pixels, _, pairs = _ome(tmp_path / "h.ome.tif")
    assert (pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit")) == (increment or (None, None))
    assert {k: json.loads(v) for k, v in pairs.items() if k.startswith("time_") and k != "time_unit"} == \
        {k: v for k, v in properties.items() if k != "time_unit"}
    assert pairs.get("time_unit") == properties.get("time_unit")
    # read back as the ImageJ path's are: the step, its unit where deconv3d can name it, the start
    imagej = tmp_path / "h.tif"
    write_hyperstack(imagej, np.ones((2, 3, 4, 4), np.float32), "TZYX", VOXEL, {"method": "rl"}, time_axis=time_axis)
    lazy, expected = open_lazy(tmp_path / "h.ome.tif"), open_lazy(imagej)
    assert lazy.time_axis == expected.time_axis == (time_axis if time_axis[1] != "decasecond" else (2.0, None))


def test_channel_entries_that_do_not_match_are_refused_before_an_ome_tiff_is_written(tmp_path):
    with pytest.raises(InputError, match=r"1 channel entries for an image of 2 channels: give one per channel$"):
        write_hyperstack(tmp_path / "h.ome.tif", np.ones((2, 3, 4, 4), np.float32), "CZYX", VOXEL,
                         channels=CHANNELS[:1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["h.tif", "ome.tif", "h.ome.tif.tiff"])
def test_other_names_stay_imagej_hyperstacks(tmp_path, name):
    write_hyperstack(tmp_path / name, np.ones((2, 3, 4, 4), np.float32), "CZYX", VOXEL, channels=CHANNELS)
    with tifffile.TiffFile(tmp_path / name) as tif:
        assert tif.is_imagej and not tif.is_ome and tif.imagej_metadata["Labels"] == ["GFP", "RFP"] * 3


@pytest.mark.parametrize("name", ["out.ome.tif", "out.OME.TIFF"])
@pytest.mark.parametrize("axes, shape, time_axis", [("CZYX", (2, 6, 12, 12), None),
                                                    ("TCZYX", (2, 2, 6, 12, 12), (4.0, "minute"))])
def test_deconvolve_of_a_two_channel_image_to_an_ome_name_writes_an_ome_tiff(tmp_path, capsys, name, axes, shape,
                                                                             time_axis):
    data = np.random.default_rng(7).uniform(1, 50, shape).astype(np.float32)
    write_hyperstack(tmp_path / "in.tif", data, axes, VOXEL, time_axis=time_axis, channels=CHANNELS)
    psf = np.exp(-np.sum(np.square(np.mgrid[-1:2, -2:3, -2:3]), axis=0) / 2.0)
    write_tiff(tmp_path / "psf.tif", psf / psf.sum(), voxel_size=VOXEL)
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / name,
                        "--iterations", 2], capsys)
    assert code == 0 and "warning" not in err, err
    pixels, channels, pairs = _ome(tmp_path / name)
    assert [c.get("Name") for c in channels] == ["GFP", "RFP"] and pairs["method"] == "rl"
    assert "input_sha256" in pairs and "execution" in pairs
    with tifffile.TiffFile(tmp_path / name) as tif:
        assert tif.series[0].axes == "".join(a for a in "TZCYX" if a in axes)
    lazy = open_lazy(tmp_path / name)
    assert lazy.axes == axes and lazy.data.shape == shape and lazy.voxel_size == pytest.approx(VOXEL)
    assert lazy.time_axis == time_axis and [c["label"] for c in lazy.channels] == ["GFP", "RFP"]
    assert np.isfinite(np.asarray(lazy.data)).all()


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("width", [3, 4])
def test_an_ome_tiff_whose_x_axis_is_3_or_4_long_is_grey_not_rgb(tmp_path, width, lazy):
    """write_tiff (and write_hyperstack) refused such a stack: tifffile took its x axis for RGB(A) samples."""
    data = np.random.default_rng(2).random((5, 6, width), dtype=np.float32)
    array = zarr.zeros(data.shape, dtype="f4", chunks=(2, 6, width))
    array[:] = data
    write_tiff(tmp_path / "s.ome.tif", ZarrPlanes(array) if lazy else data, voxel_size=VOXEL)
    with tifffile.TiffFile(tmp_path / "s.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
