"""A TIFF output of an image of several channels and/or time points: an ImageJ hyperstack (TZCYX)
holding what the OME-Zarr output of the same run holds, with its voxel size and time step."""

import numpy as np
import pytest
import tifffile

from cli_helpers import run
from deconv3d._tiff_hyperstack import write_hyperstack
from deconv3d.io import write_tiff
from deconv3d.omezarr import open_lazy, read_ome_zarr
from deconv3d.pipeline import run_chunked

from .conftest import gaussian_psf

VOXEL = (0.3, 0.1, 0.1)


def _hyperstack_input(path, axes: str, shape, finterval=None, tunit="min"):
    """A seeded ImageJ hyperstack of deconv3d's ``axes`` (TCZYX order), written in ImageJ's order."""
    data = np.random.default_rng(7).uniform(1, 50, shape).astype(np.float32)
    imagej_axes = "".join(a for a in "TZCYX" if a in axes)
    stored = data.transpose([axes.index(a) for a in imagej_axes])
    metadata = {"axes": imagej_axes, "unit": "um", **({"spacing": VOXEL[0]} if "Z" in axes else {}),
                **({"finterval": finterval, "tunit": tunit} if finterval else {})}
    tifffile.imwrite(path, stored, imagej=True, resolution=(1 / VOXEL[2], 1 / VOXEL[1]), metadata=metadata)
    return data


# (shape, time step, options): in blocks (--chunks) or, as given with no option, whole
CASES = {"CZYX": ((2, 6, 12, 12), None, ()), "TZYX": ((3, 6, 12, 12), 2.5, ()),
         "TCZYX": ((2, 3, 6, 12, 12), 4.0, ("--chunks", 3, 6, 6)), "CYX": ((2, 12, 12), None, ())}


@pytest.mark.parametrize("axes", list(CASES))
def test_a_tif_output_is_a_hyperstack_equal_to_the_zarr_output(tmp_path, capsys, axes):
    shape, finterval, options = CASES[axes]
    spatial = "".join(a for a in axes if a in "ZYX")
    _hyperstack_input(tmp_path / "in.tif", axes, shape, finterval)
    psf = gaussian_psf((3, 5, 5))[(1,) if spatial == "YX" else ()]
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=VOXEL[-len(spatial):])
    for suffix in (".tif", ".zarr"):
        code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / f"out{suffix}", "--psf",
                            tmp_path / "psf.tif", "--iterations", 3, *options], capsys)
        assert code == 0 and "warning" not in err, err
    expected, _, zarr_axes, _ = read_ome_zarr(tmp_path / "out.zarr")
    assert zarr_axes == axes
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        series, imagej = tif.series[0], tif.imagej_metadata
        imagej_axes = "".join(a for a in "TZCYX" if a in axes)
        assert series.axes == imagej_axes and tif.is_imagej and series.dtype == np.float32
        stored = series.asarray()
        assert tif.pages[0].tags["XResolution"].value == pytest.approx((10, 1), rel=1e-6)
        assert imagej["unit"] == "um" and imagej.get("spacing") == (VOXEL[0] if "Z" in axes else None)
        assert imagej.get("finterval") == finterval and imagej["Properties"]["method"] == "rl"
        assert "execution" in imagej["Properties"] and "input_sha256" in imagej["Properties"]
        # several channels open as a composite (a grey stack of planes was shown), in ImageJ's own colours
        assert imagej["mode"] == ("composite" if "C" in axes else "grayscale") and "LUTs" not in imagej
    as_zarr = stored.transpose([imagej_axes.index(a) for a in axes])  # each (t, c) stack
    np.testing.assert_allclose(as_zarr, expected, rtol=1e-6, atol=0)
    lazy = open_lazy(tmp_path / "out.tif")  # the input of another run
    assert lazy.axes == axes and lazy.voxel_size == pytest.approx(VOXEL[-len(spatial):])
    assert lazy.time_axis == ((finterval, "minute") if finterval else None)
    np.testing.assert_array_equal(np.asarray(lazy.data), as_zarr)


CHANNELS = ({"label": "DAPI", "color": "0000FF"}, {"label": "GFP", "color": "00FF00"})


def test_a_hyperstack_keeps_the_channel_names_colours_and_display_ranges(tmp_path, capsys):
    """Found by the Fiji review: the .zarr output kept the input's channel names and colours, the
    TIFF hyperstack of the same run was grey and unnamed. Fiji's Labels (one per plane), LUTs (black
    to the colour) and display Ranges (each channel's range, as the .zarr output's windows); and the
    time axis's start, which was dropped, beside its step and unit."""
    data = np.random.default_rng(3).uniform(1, 50, (3, 2, 5, 8, 8)).astype(np.float32)
    run_chunked(data, lambda b: b, tmp_path / "in.zarr", axes="TCZYX", voxel_size=VOXEL,
                time_axis=(2.0, "minute", 5.0), channels=CHANNELS)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=VOXEL)
    for suffix in (".tif", ".zarr"):
        code, _, err = run(["deconvolve", tmp_path / "in.zarr", "-o", tmp_path / f"out{suffix}", "--psf",
                            tmp_path / "psf.tif", "--iterations", 2], capsys)
        assert code == 0, err
    windows = [c["window"] for c in read_ome_zarr(tmp_path / "out.zarr")[3]["ome"]["omero"]["channels"]]
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        imagej, stored = tif.imagej_metadata, tif.series[0].asarray()  # (TZCYX)
    assert imagej["mode"] == "composite" and imagej["Labels"] == ["DAPI", "GFP"] * 3 * 5  # (channel fastest)
    assert [lut.tolist() for lut in imagej["LUTs"]] == [[[0] * 256, [0] * 256, list(range(256))],
                                                        [[0] * 256, list(range(256)), [0] * 256]]
    ranges = [v for c in range(2) for v in (stored[:, :, c].min(), stored[:, :, c].max())]
    assert list(imagej["Ranges"]) == ranges == [v for w in windows for v in (w["start"], w["end"])]
    assert (imagej["finterval"], imagej["tunit"], imagej["Properties"]["time_origin"]) == (2.0, "min", "5.0")
    assert imagej["unit"] == "um" and imagej["spacing"] == VOXEL[0]
    assert open_lazy(tmp_path / "out.tif").time_axis == open_lazy(tmp_path / "out.zarr").time_axis == (2.0, "minute",
                                                                                                     5.0)


def _ramp(rgb):
    return np.rint(np.outer(rgb, np.arange(256)) / 255).astype(np.uint8)


def test_an_imagej_hyperstack_s_channel_names_and_colours_are_read_and_written_back(tmp_path, capsys):
    """A composite saved from Fiji (per-plane Labels, a LUT per channel) lost its names and colours:
    only an OME-TIFF's or OME-Zarr's were read. Labels that vary within a channel (slice labels)
    and a LUT that is no ramp from black to one colour (Fire) are not taken as names or colours."""
    data = np.random.default_rng(5).uniform(1, 50, (3, 2, 4, 8, 8)).astype(np.float32)  # TCZYX
    metadata = {"axes": "TZCYX", "unit": "um", "spacing": VOXEL[0], "finterval": 2.0, "tunit": "sec",
                "Labels": ["DAPI", "GFP"] * 12, "LUTs": [_ramp((0, 0, 255)), _ramp((255, 0, 255))]}
    tifffile.imwrite(tmp_path / "in.tif", data.transpose(0, 2, 1, 3, 4), imagej=True,
                     resolution=(1 / VOXEL[2], 1 / VOXEL[1]), metadata=metadata)
    assert open_lazy(tmp_path / "in.tif").channels == ({"label": "DAPI", "color": "0000FF"},
                                                        {"label": "GFP", "color": "FF00FF"})
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=VOXEL)
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2], capsys)
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        imagej = tif.imagej_metadata
    assert imagej["Labels"] == metadata["Labels"] and imagej["mode"] == "composite"
    assert [lut.tolist() for lut in imagej["LUTs"]] == [lut.tolist() for lut in metadata["LUTs"]]
    fire = _ramp((255, 255, 255))
    fire[1, :128] = 0
    metadata.update(Labels=[f"z{i // 2}:{'DAPI' if i % 2 == 0 else 'GFP'}" for i in range(24)],
                    LUTs=[fire, _ramp((0, 255, 0))])
    tifffile.imwrite(tmp_path / "slices.tif", data.transpose(0, 2, 1, 3, 4), imagej=True, metadata=metadata)
    assert open_lazy(tmp_path / "slices.tif").channels == ({}, {"color": "00FF00"})


def test_a_time_series_of_one_channel_keeps_its_name_and_lut_in_color_mode(tmp_path, capsys):
    """A TZYX ImageJ input whose one channel has a name and a Green LUT: its output was written in
    ImageJ's grayscale mode, which shows the channel grey whatever its LUT; ``color`` mode shows it
    through that LUT, and its name and colour are read back."""
    data = np.random.default_rng(9).uniform(1, 50, (3, 4, 8, 8)).astype(np.float32)  # TZYX
    metadata = {"axes": "TZYX", "unit": "um", "spacing": VOXEL[0], "finterval": 2.0, "tunit": "sec",
                "mode": "color", "Labels": ["GFP"] * 12, "LUTs": [_ramp((0, 255, 0))]}
    tifffile.imwrite(tmp_path / "in.tif", data, imagej=True, resolution=(1 / VOXEL[2], 1 / VOXEL[1]),
                     metadata=metadata)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=VOXEL)
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2], capsys)
    assert code == 0 and "warning" not in err, err
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        imagej, axes = tif.imagej_metadata, tif.series[0].axes
    assert axes == "TZYX" and imagej["mode"] == "color" and imagej["Labels"] == ["GFP"] * 12
    assert np.asarray(imagej["LUTs"]).reshape(3, 256).tolist() == _ramp((0, 255, 0)).tolist()
    assert open_lazy(tmp_path / "out.tif").channels == ({"label": "GFP", "color": "00FF00"},)


def test_channel_entries_that_do_not_match_the_channels_are_refused_before_writing(tmp_path):
    from deconv3d.errors import InputError

    with pytest.raises(InputError, match=r"1 channel entries for an image of 2 channels: give one per channel$"):
        write_hyperstack(tmp_path / "h.tif", np.ones((2, 3, 4, 4), np.float32), "CZYX", VOXEL, channels=CHANNELS[:1])
    assert list(tmp_path.iterdir()) == []


def test_a_batch_writes_a_hyperstack_for_output_format_tif(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    data = _hyperstack_input(tmp_path / "in" / "tc.tif", "TCZYX", (2, 2, 6, 12, 12), 4.0)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 5, 5)), voxel_size=VOXEL)
    code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2, "--output-format", "tif"], capsys)
    assert code == 0, err
    lazy = open_lazy(tmp_path / "out" / "tc.tif")
    assert lazy.axes == "TCZYX" and lazy.data.shape == data.shape and lazy.time_axis == (4.0, "minute")


def test_the_hyperstack_is_read_in_slabs_in_imagej_plane_order(tmp_path):
    """Every time point is read a slab of z-planes (of every channel) at a time, never whole."""
    data = np.arange(2 * 3 * 5 * 4 * 4, dtype=np.float32).reshape(2, 3, 5, 4, 4)

    class Recorded:
        shape, dtype, reads = data.shape, data.dtype, []

        def __getitem__(self, key):
            self.reads.append(data[key].nbytes)
            return data[key]

    source = Recorded()
    write_hyperstack(tmp_path / "h.tif", source, "TCZYX", VOXEL, time_axis=(1.5, "second"), slab_bytes=2 * 3 * 64)
    assert max(source.reads) == 2 * 3 * 64  # two planes of the three channels
    with tifffile.TiffFile(tmp_path / "h.tif") as tif:
        assert tif.series[0].axes == "TZCYX" and tif.imagej_metadata["finterval"] == 1.5
        np.testing.assert_array_equal(tif.series[0].asarray(), data.transpose(0, 2, 1, 3, 4))


def test_one_psf_per_channel_of_a_tiff_hyperstack_gives_a_tif_output(tmp_path, capsys):
    """--psf A B on a TIFF hyperstack: with a .tif output as with a .zarr one (it asked for .zarr)."""
    _hyperstack_input(tmp_path / "in.tif", "CZYX", (2, 6, 12, 12))
    write_tiff(tmp_path / "a.tif", gaussian_psf((3, 5, 5), (0.6, 0.8, 0.8)), voxel_size=VOXEL)
    write_tiff(tmp_path / "b.tif", gaussian_psf((3, 5, 5), (1.0, 1.5, 1.5)), voxel_size=VOXEL)
    for suffix in (".tif", ".zarr"):
        code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / f"out{suffix}", "--psf",
                            tmp_path / "a.tif", tmp_path / "b.tif", "--iterations", 2], capsys)
        assert code == 0, err
    expected = read_ome_zarr(tmp_path / "out.zarr")[0]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif").transpose(1, 0, 2, 3), expected, rtol=1e-6)


@pytest.mark.parametrize("time_axis, expected, properties", [
    ((2.0, None), {}, {"time_step": "2.0"}), ((2.0, "picosecond"), {"finterval": 2.0, "tunit": "picosecond"}, {}),
    ((2.0, "hour", 5.0), {"finterval": 2.0, "tunit": "hr"}, {"time_origin": "5.0"}),
    ((2.0, None, -1.5), {}, {"time_step": "2.0", "time_origin": "-1.5"})])
def test_a_time_step_is_written_with_its_unit_or_as_a_property(tmp_path, time_axis, expected, properties):
    """ImageJ reads a finterval without tunit as seconds: a step of 2 in a unit it has no name for (a
    TIFF's 'ps') was written as 2 s. One with no unit is kept as the property time_step (it was
    dropped), as is a start ImageJ has no key for (time_origin); another unit keeps its name. All
    are read back (a picosecond without its unit, which deconv3d reads in no TIFF)."""
    write_hyperstack(tmp_path / "h.tif", np.ones((2, 3, 4, 4), np.float32), "TZYX", VOXEL, time_axis=time_axis)
    with tifffile.TiffFile(tmp_path / "h.tif") as tif:
        written = {k: v for k, v in tif.imagej_metadata.items() if k in ("finterval", "tunit")}
        kept = {k: v for k, v in tif.imagej_metadata.get("Properties", {}).items() if k.startswith("time_")}
    assert written == expected and kept == properties
    assert open_lazy(tmp_path / "h.tif").time_axis == (time_axis if time_axis[1] != "picosecond" else (2.0, None))


def test_a_time_step_in_a_unit_deconv3d_cannot_name_is_not_written_as_seconds(tmp_path, capsys):
    _hyperstack_input(tmp_path / "in.tif", "TZYX", (2, 6, 12, 12), 2.0, tunit="ps")  # (as Fiji saves any text)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 5, 5)), voxel_size=VOXEL)
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2], capsys)
    assert code == 0 and "'ps'" in err, err
    assert open_lazy(tmp_path / "out.tif").time_axis == (2.0, None)  # (it said 2 seconds; then nothing)


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, 130), (OSError(28, "No space left on device"), 2)])
def test_a_copy_stopped_midway_leaves_no_tif_and_no_scratch(tmp_path, monkeypatch, capsys, raised, status):
    """Ctrl-C or a full disk while the hyperstack is copied from the scratch OME-Zarr, after its first
    time point: neither a partial .tif nor its temporary file nor the scratch folder stays behind."""
    from deconv3d import _tiff_hyperstack

    _hyperstack_input(tmp_path / "in.tif", "TCZYX", (2, 2, 6, 12, 12), 4.0)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 5, 5)), voxel_size=VOXEL)
    slab, reads = _tiff_hyperstack._TimePoint.slab, []

    def stopped_at_the_second(self, start, stop):
        reads.append(start)
        if len(reads) == 2:
            raise raised
        return slab(self, start, stop)

    monkeypatch.setattr(_tiff_hyperstack._TimePoint, "slab", stopped_at_the_second)
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2], capsys)
    assert code == status and len(reads) == 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "psf.tif"]


@pytest.mark.parametrize("axes, shape", [("TCZYX", (2, 5, 3, 4, 4)), ("CYX", (5, 4, 4)), ("CZX", (5, 3, 4))])
@pytest.mark.parametrize("pages", [0.25, 1, 2, 3])
def test_a_budget_below_one_z_plane_of_every_channel_reads_a_few_channels_at_a_time(tmp_path, axes, shape, pages):
    """The smallest read was one z-plane of every channel, over the run's slab_bytes where there are many
    channels of large planes: under it, the writer reads as many channels of one z-plane as the budget
    holds (one page at least, here ``pages`` pages' worth), and writes the same file as a whole read."""
    data = np.random.default_rng(3).uniform(1, 50, shape).astype(np.float32)
    page = 4 * shape[-1] * (shape[-2] if axes.endswith("YX") else 1)

    class Recorded:
        shape, dtype, reads = data.shape, data.dtype, []

        def __getitem__(self, key):
            self.reads.append(data[key].nbytes)
            return data[key]

    source, voxel = Recorded(), VOXEL if axes.endswith("ZYX") else VOXEL[1:]
    write_hyperstack(tmp_path / "whole.tif", data, axes, voxel)
    write_hyperstack(tmp_path / "h.tif", source, axes, voxel, slab_bytes=int(pages * page))
    assert max(source.reads) == max(int(pages) * page, page)
    assert (tmp_path / "h.tif").read_bytes() == (tmp_path / "whole.tif").read_bytes()


@pytest.mark.parametrize("axes, shape", [("TCZYX", (2, 3, 6, 12, 12)), ("ZYX", (6, 12, 12))])
def test_the_copy_into_the_tif_reports_every_voxel_read_once(tmp_path, axes, shape):
    """deconvolve_file's ``writing(done, total)`` follows the copy of the result into a .tif output (a GB took
    about 8 s after the last block, with nothing shown): rising counts that end at every voxel of the result,
    read once, as a hyperstack and as a plain stack; the file is as without the callback."""
    from deconv3d.pipeline.batch import Settings
    from deconv3d.pipeline.files import deconvolve_file

    _hyperstack_input(tmp_path / "in.tif", axes, shape, 2.0 if "T" in axes else None)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 5, 5)), voxel_size=VOXEL)
    settings = Settings(psf=str(tmp_path / "psf.tif"), iterations=2, device="cpu")
    reports = []
    deconvolve_file(tmp_path / "in.tif", tmp_path / "a.tif", settings, writing=lambda *r: reports.append(r),
                    checksum=False)
    deconvolve_file(tmp_path / "in.tif", tmp_path / "b.tif", settings, checksum=False)
    total = int(np.prod(shape))
    assert reports and reports[-1] == (total, total) and {t for _, t in reports} == {total}
    assert all(a < b for (a, _), (b, _) in zip(reports, reports[1:]))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))
