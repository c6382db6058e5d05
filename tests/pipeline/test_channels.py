"""Multi-channel inputs on the chunked path: each channel and time point checked and named on its own."""

import numpy as np
import tifffile

from cli_helpers import assert_one_line_error, run
from deconv3d.io import write_tiff
from deconv3d.omezarr import write_ome_zarr

from .conftest import gaussian_psf


def _positive(shape, seed=0):
    return np.random.default_rng(seed).uniform(1, 2, shape).astype(np.float32)


def test_a_channel_with_no_positive_value_is_refused_by_name(tmp_path, capsys):
    """Found by the channel review: the check looked at the whole hyperstack, so a negated channel
    came back all zeros with exit 0 (the same channel as a file of its own was refused)."""
    image = _positive((2, 3, 4, 8, 8))
    image[1, 2] *= -1  # channel 2 at time point 1: background-subtracted, no positive voxel
    write_ome_zarr(tmp_path / "in.zarr", image, axes="TCZYX", voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "-o", tmp_path / "out.zarr", "--psf",
                        tmp_path / "psf.tif", "--iterations", 2], capsys)
    assert_one_line_error(code, err, f"channel 2 at time point 1 of {tmp_path / 'in.zarr'} has no positive values")
    assert not (tmp_path / "out.zarr").exists()


def test_the_negative_share_is_warned_about_per_channel(tmp_path):
    """A channel with many negative voxels among others with none: the share of the whole image
    (diluted by the others) named no channel. One line per channel, naming the time points where
    the share is high when not all of them are."""
    from deconv3d.pipeline.negatives import check_has_positive

    image = _positive((3, 3, 4, 8, 8))
    image[1, 1, :2] *= -1  # channel 1: half of time point 1
    image[:, 2, 0] *= -1  # channel 2: a quarter of every time point
    image[0, 0, :1] *= -1  # channel 0: a quarter of time points 0 and 2
    image[2, 0, 3:] *= -1
    found = []
    check_has_positive(image, "img", "rl", found, axes="TCZYX", channels=({"label": "DAPI"}, {}, {}))
    assert [line.split(" are negative")[0] for line in found] == [
        "deconv3d: warning: 25% of img's voxels in channel 0 (DAPI) at 2 of 3 time points",
        "deconv3d: warning: 50% of img's voxels in channel 1 at time point 1",
        "deconv3d: warning: 25% of img's voxels in channel 2"], found
    found.clear()
    check_has_positive(image, "img", "rl", found)  # without axes: the whole image, as before
    assert len(found) == 1 and "of img's voxels are negative" in found[0], found


def _counting_reads(image) -> tuple:
    """(a block reader of ``image``, the list of the keys it is read at)."""
    from deconv3d.pipeline.readers import ArrayReader

    reads = []

    class Counting(ArrayReader):
        def read(self, key):
            reads.append(key)
            return super().read(key)

    return Counting(image), reads


def test_each_channel_and_time_point_costs_one_slab_of_reading():
    """Checked per channel and time point, an ordinary image is still read once at most: a plane of
    each, then the rest of it, which this small image's sample for the negative share holds whole
    (SHARE_SAMPLE_BYTES for the whole image; a long series is sampled, as below)."""
    from deconv3d.pipeline.negatives import check_has_positive

    image = _positive((2, 3, 4, 8, 8))
    reader, reads = _counting_reads(image)
    check_has_positive(reader, "img", "rl", axes="TCZYX")
    assert sorted({(k[0].start, k[1].start) for k in reads}) == [(t, c) for t in range(2) for c in range(3)]
    assert len(reads) == 12 and sum(image[k].size for k in reads) == image.size


def test_a_long_time_series_is_sampled_within_one_budget_for_the_negative_share(monkeypatch):
    """Found by review: each time point had a negative-share sample of SHARE_SAMPLE_BYTES of its
    own, so a 60-point series was read whole before the first block (60 of 60 MiB). Each channel
    and time point is still read up to its first positive voxel (a plane here); the sample beyond
    is SHARE_SAMPLE_BYTES for the whole image, planes of time points spread over the series."""
    from deconv3d.pipeline import negatives

    plane = 4 * 16 * 16
    monkeypatch.setattr(negatives, "SHARE_SAMPLE_BYTES", 4 * plane)
    image = _positive((20, 2, 8, 16, 16))
    reader, reads = _counting_reads(image)
    negatives.check_has_positive(reader, "img", "rl", axes="TCZYX")
    assert sorted({(k[0].start, k[1].start) for k in reads if k[2].start == 0}) == [
        (t, c) for t in range(20) for c in range(2)]
    assert 4 * sum(image[k].size for k in reads) == 40 * plane + negatives.SHARE_SAMPLE_BYTES
    assert sorted((k[0].start, k[1].start) for k in reads if k[2].start > 0) == [(5, 0), (5, 1), (15, 0), (15, 1)]


def test_wavelengths_beside_a_psf_file_set_no_channel_count(tmp_path, capsys):
    """Found by the channel review: wavelengths that --psf makes unused still counted one PSF per
    channel, so a config's two wavelengths with --psf on the command line failed every
    single-channel file ("has 1 channel(s) but 2 PSFs were given"), and so did deconvolve's own."""
    from deconv3d.cli import build_parser
    from deconv3d.cli.pipeline import settings_from_args
    from deconv3d.pipeline.settings import channel_count

    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "one.tif", _positive((4, 8, 8)), voxel_size=(0.3, 0.1, 0.1))
    config = {"psf_model": "gaussian", "na": 1.2, "wavelength": (0.45, 0.65), "ni": 1.4}
    args = build_parser().parse_args(["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--psf",
                                      str(tmp_path / "psf.tif")])
    settings = settings_from_args(args, config)  # the config's optics go with its psf-model
    assert (settings.psf_model, settings.na, settings.wavelength, settings.ni) == (None, None, None, 1.515)
    assert channel_count(settings) == 1
    for output in ("o.zarr", "o.tif"):
        code, _, err = run(["deconvolve", tmp_path / "one.tif", "-o", tmp_path / output, "--psf", tmp_path / "psf.tif",
                            "--wavelength", 0.5, 0.6, "--iterations", 2], capsys)
        assert code == 0 and "--wavelength describes the microscope for --psf-model" in err, err


def test_ome_tiff_channel_names_and_colours_reach_the_output(tmp_path, capsys):
    """Found by the channel review: an OME-TIFF's Channel names were dropped (only an OME-Zarr
    input's omero channels were kept), so viewers showed the output's channels unnamed and grey.
    OME's Color is a signed RGBA integer: -16776961 is 0xFF0000FF, opaque red."""
    import tifffile

    from deconv3d.omezarr import open_lazy, read_ome_zarr

    image = _positive((2, 4, 8, 8))
    metadata = {"axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.3,
                "Channel": {"Name": ["DAPI", "GFP"], "Color": [-16776961, 16711935]}}
    tifffile.imwrite(tmp_path / "two.ome.tif", image, ome=True, metadata=metadata)
    assert open_lazy(tmp_path / "two.ome.tif").channels == ({"label": "DAPI", "color": "FF0000"},
                                                             {"label": "GFP", "color": "00FF00"})
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "two.ome.tif", "-o", tmp_path / "out.zarr", "--psf",
                        tmp_path / "psf.tif", "--iterations", 2], capsys)
    assert code == 0, err
    channels = read_ome_zarr(tmp_path / "out.zarr")[3]["ome"]["omero"]["channels"]
    assert [(c["label"], c["color"]) for c in channels] == [("DAPI", "FF0000"), ("GFP", "00FF00")]
    # and a refusal names the channel by its name too
    tifffile.imwrite(tmp_path / "neg.ome.tif", image * np.array([1, -1])[:, None, None, None], ome=True,
                     metadata=metadata)
    code, _, err = run(["deconvolve", tmp_path / "neg.ome.tif", "-o", tmp_path / "neg.zarr", "--psf",
                        tmp_path / "psf.tif"], capsys)
    assert_one_line_error(code, err, f"channel 1 (GFP) of {tmp_path / 'neg.ome.tif'} has no positive values")
    # An ImageJ hyperstack records no channel names: none, as before.
    tifffile.imwrite(tmp_path / "ij.tif", image.transpose(1, 0, 2, 3), imagej=True, metadata={"axes": "ZCYX"})
    assert open_lazy(tmp_path / "ij.tif").channels is None


def test_each_per_channel_psf_file_is_checked_for_a_voxel_size(tmp_path, capsys):
    """Found by the channel review: only the first of --psf A B was checked, so a second PSF without
    a voxel size was taken as sampled like the image without the warning the first would get."""
    write_ome_zarr(tmp_path / "two.zarr", _positive((2, 4, 8, 8)), axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "a.tif", gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "b.tif", gaussian_psf((3, 3, 3)))
    code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / "out.zarr", "--psf", tmp_path / "a.tif",
                        tmp_path / "b.tif", "--iterations", 2], capsys)
    assert code == 0 and f"the PSF file {tmp_path / 'b.tif'} carries no voxel size" in err, err
    assert "a.tif carries" not in err


def test_the_first_per_channel_psf_with_a_voxel_size_settles_an_uncalibrated_image_s(tmp_path, capsys):
    """Found by review: on an image without a voxel size, --psf B A (B without one) left it
    without one, skipped A's check and drew prepare_psf's Python wording (image_voxel=None);
    --psf A B took A's. Either order now takes A's and says B is taken as sampled like it."""
    from deconv3d.omezarr import read_ome_zarr

    write_ome_zarr(tmp_path / "two.zarr", _positive((2, 4, 8, 8)), axes="CZYX")
    write_tiff(tmp_path / "a.tif", gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "b.tif", gaussian_psf((3, 3, 3)))
    for order in (("b.tif", "a.tif"), ("a.tif", "b.tif")):
        out = tmp_path / f"{order[0]}.zarr"
        code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", out, "--psf", *(tmp_path / n for n in order),
                            "--iterations", 2], capsys)
        assert code == 0 and read_ome_zarr(out)[1] == (0.3, 0.1, 0.1), err
        assert "two.zarr carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1)" in err, err
        assert f"the PSF file {tmp_path / 'b.tif'} carries no voxel size" in err and "image_voxel" not in err, err


def test_the_first_refusal_of_per_channel_psfs_is_the_real_problem(tmp_path, capsys):
    """Found by the channel review: --psf A B with a TIFF output on a single-channel image said
    to write .zarr, which then failed for the channel count; and a batch's TIFF output of a
    multi-channel file said "write .zarr" without naming the option that does it."""
    write_tiff(tmp_path / "one.tif", _positive((4, 8, 8)), voxel_size=(0.3, 0.1, 0.1))
    for name in ("a.tif", "b.tif"):
        write_tiff(tmp_path / name, gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    # two wavelengths were refused as "2 PSFs were given", with a .tif and a .zarr output alike
    for source, given in ((["--psf", tmp_path / "a.tif", tmp_path / "b.tif"], "2 PSFs were given: give one PSF"),
                          (["--psf-model", "gaussian", "--na", 1.2, "--wavelength", 0.5, 0.6],
                           "2 wavelengths were given: give one --wavelength per channel")):
        for output in ("o.tif", "o.zarr"):
            code, _, err = run(["deconvolve", tmp_path / "one.tif", "-o", tmp_path / output, *source], capsys)
            assert_one_line_error(code, err, f"one.tif has 1 channel(s) but {given}")
            assert not (tmp_path / output).exists()
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_ome_zarr(inputs / "two.zarr", _positive((2, 4, 8, 8)), axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", inputs, "-o", tmp_path / "out", "--psf", tmp_path / "a.tif", "--output-format", "tif"],
                       capsys)
    assert code == 0 and tifffile.imread(tmp_path / "out" / "two.tif").shape == (4, 2, 8, 8), err  # (ZCYX)


def test_a_repeated_psf_or_wavelength_adds_one_per_channel(tmp_path, capsys):
    """Found by the options review: a repeated --psf or --wavelength kept only its last value, so
    '--psf a.tif --psf b.tif' on a two-channel image ran b.tif on both channels and recorded only
    it, and '--wavelength 0.5 --wavelength 0.6' recorded 0.6 for both. Repeated, they extend the
    list as '--psf a.tif b.tif' does (and as a repeated --model does); the count checks apply."""
    from deconv3d.cli import build_parser
    from deconv3d.omezarr import read_ome_zarr

    write_ome_zarr(tmp_path / "two.zarr", _positive((2, 4, 8, 8)), axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_tiff(a, gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(b, gaussian_psf((3, 5, 5), (0.5, 1.5, 1.5)), voxel_size=(0.3, 0.1, 0.1))
    results = {}
    for form, psfs in (("list", ["--psf", a, b]), ("repeated", ["--psf", a, "--psf", b])):
        code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / f"{form}.zarr", *psfs,
                            "--iterations", 2], capsys)
        assert code == 0, err
        data, _, _, attrs = read_ome_zarr(tmp_path / f"{form}.zarr")
        assert attrs["deconv3d"]["psf"]["source"]["files"] == [str(a), str(b)], attrs["deconv3d"]["psf"]
        results[form] = np.asarray(data)
    np.testing.assert_array_equal(results["repeated"], results["list"])
    code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / "three.zarr", "--psf", a, "--psf", b,
                        "--psf", a], capsys)
    assert_one_line_error(code, err, "two.zarr has 2 channel(s) but 3 PSFs were given")
    code, _, err = run(["deconvolve", "--psf", a, "--psf", b, tmp_path / "two.zarr", "-o", tmp_path / "o.zarr"], capsys)
    assert_one_line_error(code, err, f"--psf took {b} {tmp_path / 'two.zarr'}")  # the last one took the input
    for command in (["deconvolve", "in.tif", "-o", "o.zarr"], ["batch", "in", "-o", "out"]):
        args = build_parser().parse_args([*command, "--psf-model", "gaussian", "--wavelength", "0.5",
                                          "--wavelength", "0.6", "0.7"])
        assert args.wavelength == [0.5, 0.6, 0.7], (command, args.wavelength)
    code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / "w.zarr", "--psf-model", "gaussian",
                        "--na", 1.2, "--wavelength", 0.5, "--wavelength", 0.6, "--iterations", 2], capsys)
    assert code == 0, err
    assert read_ome_zarr(tmp_path / "w.zarr")[3]["deconv3d"]["psf"]["source"]["wavelength"] == [0.5, 0.6]
