"""Voxel sizes a file half records or records in the wrong unit (review as a Fiji user): the known
axes are kept, the missing ones come from the PSF with a warning, and nanometres given as
micrometres are refused instead of deconvolving with a one-voxel PSF (an unchanged image, exit 0)."""

import numpy as np
import pytest
import tifffile

from cli_helpers import assert_one_line_error, run
from deconv3d.errors import InputError
from deconv3d.io import read_image, write_tiff
from deconv3d.psf import resample_psf


def gaussian_3d(shape, sigma):
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    g = np.exp(-0.5 * sum((x / s) ** 2 for x, s in zip(grids, sigma)))
    return (g / g.sum()).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.poisson(100, (12, 40, 40)).astype(np.uint16)
    grids = np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij")
    psf = np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32)
    # OME-TIFF with pixel sizes but no z step (PhysicalSizeZ absent)
    tifffile.imwrite(tmp_path / "noz.ome.tif", stack, metadata={"axes": "ZYX", "PhysicalSizeX": 0.1,
                                                               "PhysicalSizeY": 0.1})
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ij_nm.tif", stack, imagej=True, resolution=(0.01, 0.01),  # 300/100 nm as µm
                     metadata={"spacing": 300, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ij_nm_label.tif", stack, imagej=True, resolution=(10, 10),  # µm labelled nm
                     metadata={"spacing": 0.3, "unit": "nm", "axes": "ZYX"})
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.25, 0.05, 0.05))
    tifffile.imwrite(tmp_path / "psf_bare.tif", psf)
    return tmp_path


def test_a_file_with_pixel_sizes_but_no_z_step_keeps_them(files):
    image = read_image(files / "noz.ome.tif")
    assert image.voxel_size is None and image.partial_voxel[0] is None
    assert image.partial_voxel[1:] == pytest.approx((0.1, 0.1))
    assert read_image(files / "ij.tif").partial_voxel is None  # complete: nothing partial


def test_the_missing_z_step_comes_from_the_psf_and_the_pixel_sizes_stay(files, capsys):
    out = files / "o.tif"
    code, _, err = run(["deconvolve", files / "noz.ome.tif", "--psf", files / "psf.tif", "-o", out,
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "records no z voxel size; assuming the PSF's for it: 0.25 0.1 0.1 µm" in err
    assert read_image(out).voxel_size == pytest.approx((0.25, 0.1, 0.1))  # was the PSF's 0.05 µm pixels


def test_no_z_step_and_an_uncalibrated_psf_says_what_to_pass(files, capsys):
    code, _, err = run(["deconvolve", files / "noz.ome.tif", "--psf", files / "psf_bare.tif", "-o",
                        files / "o.tif", "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "pass --voxel-size DZ 0.1 0.1" in err, err
    code, _, err = run(["deconvolve", files / "noz.ome.tif", "--psf-model", "gaussian", "--na", 1.2,
                        "--wavelength", 0.5, "-o", files / "g.tif", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "records no z size", "--voxel-size DZ 0.1 0.1")
    assert not (files / "g.tif").exists()


def test_an_uncalibrated_psf_with_a_calibrated_image_is_named(files, capsys):
    code, _, err = run(["deconvolve", files / "ij.tif", "--psf", files / "psf_bare.tif", "-o", files / "o.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "psf_bare.tif carries no voxel size; taking it as sampled like the image (0.3 0.1 0.1" in err
    code, _, err = run(["deconvolve", files / "ij.tif", "--psf", files / "psf.tif", "-o", files / "p.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "warning" not in err, err


def test_a_psfs_pixel_size_without_a_z_step_is_kept(files, capsys):
    """Found by the review of file metadata: a PSF file with 0.05 µm pixels and no z step was taken
    as sampled like the image throughout (0.1 µm pixels: twice too wide), under a warning that it
    carried no voxel size. Its pixel size is kept and the image's z step completes it: the result
    equals that of the same PSF calibrated (0.3, 0.05, 0.05), in memory and chunk by chunk."""
    from deconv3d.omezarr import read_ome_zarr

    psf = tifffile.imread(files / "psf.tif")
    tifffile.imwrite(files / "psf_noz.tif", psf, resolution=(20, 20), resolutionunit="MICROMETER")
    write_tiff(files / "psf_full.tif", psf, voxel_size=(0.3, 0.05, 0.05))
    results = {}
    for name in ("psf_noz", "psf_full"):
        for out, extra in ((files / f"o_{name}.tif", []), (files / f"o_{name}.zarr", ["--chunks", 12, 24, 24])):
            code, _, err = run(["deconvolve", files / "ij.tif", "--psf", files / f"{name}.tif", "-o", out,
                                "--iterations", 2, "--device", "cpu", *extra], capsys)
            assert code == 0 and ("records no z voxel size; taking the image's for it (0.3 0.05 0.05 µm)" in err) == (
                name == "psf_noz"), err
            results[out.name] = read_image(out).data if out.suffix == ".tif" else read_ome_zarr(out)[0]
    for suffix in (".tif", ".zarr"):
        np.testing.assert_array_equal(results["o_psf_noz" + suffix], results["o_psf_full" + suffix])
    sampled_like_the_image = files / "bare.tif"
    assert run(["deconvolve", files / "ij.tif", "--psf", files / "psf_bare.tif", "-o", sampled_like_the_image,
                "--iterations", 2, "--device", "cpu"], capsys)[0] == 0
    assert np.abs(read_image(sampled_like_the_image).data - results["o_psf_noz.tif"]).max() > 1


def test_a_psf_of_another_dimensionality_is_one_line_even_when_both_are_calibrated(files, capsys):
    """Found by the review of unusual data: a 3D stack with a one-plane PSF file (what 'psf --shape 1 31
    31' writes), both calibrated, crashed in the voxel-size check (TypeError, exit 1) that 60ddb92
    added, before the dimensionality was checked; so did a 2D image with a 3D PSF, and train."""
    write_tiff(files / "psf2d.tif", gaussian_3d((1, 9, 9), (1, 1.5, 1.5))[0], voxel_size=(0.1, 0.1))
    write_tiff(files / "plane.tif", tifffile.imread(files / "ij.tif")[0], voxel_size=(0.1, 0.1))
    for command in (["deconvolve", files / "ij.tif", "--psf", files / "psf2d.tif", "-o", files / "o.tif"],
                    ["deconvolve", files / "plane.tif", "--psf", files / "psf.tif", "-o", files / "o.tif"],
                    ["train", files / "plane.tif", "--psf", files / "psf.tif", "-o", files / "m.ckpt"]):
        code, _, err = run(command + ["--device", "cpu"], capsys)
        assert_one_line_error(code, err, "PSF", "image")
    assert not (files / "o.tif").exists() and not (files / "m.ckpt").exists()


def test_no_voxel_size_anywhere_is_said(files, capsys):
    """Found by the docs review: an image and a PSF without voxel sizes ran silently and wrote an
    output without one, where a partly calibrated image is warned about."""
    tifffile.imwrite(files / "bare.tif", tifffile.imread(files / "ij.tif"))
    out = files / "o.tif"
    code, _, err = run(["deconvolve", files / "bare.tif", "--psf", files / "psf_bare.tif", "-o", out,
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "bare.tif nor the PSF file" in err and "neither" in err and "--voxel-size DZ DY DX" in err, err
    assert read_image(out).voxel_size is None


def test_prepare_psf_says_when_only_the_psfs_voxel_size_is_given():
    """The README's recipe on an image without a (full) voxel size: the PSF went unresampled, silently."""
    from deconv3d.psf import prepare_psf

    psf = gaussian_3d((9, 15, 15), (2.0, 2.0, 2.0))
    with pytest.warns(RuntimeWarning, match=r"image_voxel=None\), so the PSF, sampled at 0.2 0.05 0.05 µm"):
        unresampled = prepare_psf(psf, (16, 64, 64), psf_voxel=(0.2, 0.05, 0.05), image_voxel=None)
    assert unresampled.shape[1] > prepare_psf(psf, (16, 64, 64), (0.2, 0.05, 0.05), (0.2, 0.1, 0.1)).shape[1]


@pytest.mark.parametrize("name, extra, words", [
    ("ij.tif", ["--voxel-size", 300, 100, 100], ["looks like nanometres", "--voxel-size in micrometres"]),
    ("ij_nm.tif", [], ["300 100 100 µm looks like nanometres", "Image > Properties"]),
    ("ij_nm_label.tif", [], ["changes scale", "both voxel sizes are in micrometres"]),
])
def test_voxel_sizes_in_the_wrong_unit_are_refused(files, capsys, name, extra, words):
    before = (files / name).read_bytes()
    out = files / "o.tif"
    code, _, err = run(["deconvolve", files / name, "--psf", files / "psf.tif", "-o", out, "--iterations", 2,
                        "--device", "cpu"] + extra, capsys)
    assert_one_line_error(code, err, *words)
    assert not out.exists() and (files / name).read_bytes() == before


def test_a_nanometre_voxel_size_in_a_batch_config_is_refused(files, capsys):
    (files / "in").mkdir()
    (files / "in" / "a.tif").write_bytes((files / "ij.tif").read_bytes())
    code, _, err = run(["batch", files / "in", "-o", files / "out", "--psf", files / "psf.tif", "--iterations", 1,
                        "--voxel-size", 300, 100, 100], capsys)
    assert code != 0 and "looks like nanometres" in err, err


def test_resampling_refuses_a_single_voxel_or_a_giant_psf():
    psf = np.ones((5, 9, 9)) / 405
    for src, dst, fold in [((0.3, 0.1, 0.1), (300, 100, 100), "1000 1000 1000"),
                           ((300, 100, 100), (0.3, 0.1, 0.1), "0.001 0.001 0.001"),
                           ((0.3, 0.1, 0.1), (0.3, 100, 100), "1 1000 1000")]:  # (5, 1, 1): z kept
        with pytest.raises(InputError, match=f"changes scale {fold}-fold: check that both voxel sizes are in µm"
                                             .replace("µm", "micrometres")):
            resample_psf(psf, src, dst)
    with pytest.raises(InputError, match=r"would be \(3001, 1201, 1201\) voxels"):
        resample_psf(np.ones((61, 121, 121)) / 61 / 121**2, (1.0, 1.0, 1.0), (0.02, 0.1, 0.1))  # 50x, 10x finer
    # A low-magnification image (6.5 µm camera at 4x): a fine PSF one pixel wide laterally, as before
    assert resample_psf(gaussian_3d((41, 15, 15), (4, 1.5, 1.5)), (0.5, 0.1, 0.1), (4, 1.625, 1.625)).shape[1:] == (1, 1)


def test_resampling_shows_a_missing_voxel_size_as_given():
    """Found by review: resample_psf(psf, None, v) said "PSF voxel size () must be ...", a value no one gave."""
    psf = np.ones((5, 9, 9)) / 405
    with pytest.raises(InputError, match=r"^PSF voxel size None must be 3 positive finite numbers"):
        resample_psf(psf, None, (0.3, 0.1, 0.1))
    with pytest.raises(InputError, match=r"^image voxel size None must be 3 positive finite numbers"):
        resample_psf(psf, 0.1, None)


@pytest.mark.parametrize("name, write", [
    ("partial.tif", lambda p, a: tifffile.imwrite(p, a, resolution=(72 / 2.54,) * 2, resolutionunit="CENTIMETER",
                                                  metadata={"axes": "ZYX"})),  # a 72 dpi export
    ("partial.ome.tif", lambda p, a: tifffile.imwrite(p, a, metadata={"axes": "ZYX", "PhysicalSizeX": 100,
                                                                      "PhysicalSizeY": 100})),
])
def test_implausible_pixel_sizes_without_a_z_step_are_refused_too(files, capsys, name, write):
    """The partial calibration's known sizes go through the same check: a 72 dpi export (353 µm
    pixels) ran with a PSF of (7, 1, 1) voxels, exit 0, in the diff review."""
    path = files / name
    write(path, np.random.default_rng(0).poisson(100, (12, 40, 40)).astype(np.uint16))
    assert read_image(path).partial_voxel is not None
    code, _, err = run(["deconvolve", path, "--psf", files / "psf.tif", "-o", files / "o.tif", "--iterations", 2,
                        "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "looks like nanometres (or a print resolution in dpi)")
    assert not (files / "o.tif").exists()
    code, _, err = run(["batch", files, "-o", files / "out", "--psf", files / "psf.tif", "--iterations", 1,
                        "--pattern", "partial*"], capsys)
    assert code == 3 and "print resolution" in err, err


def test_a_2d_image_with_a_generated_psf_is_told_to_give_a_psf_file(files, capsys):
    write_tiff(files / "plane.tif", np.ones((32, 32), np.float32), voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", files / "plane.tif", "--psf-model", "gaussian", "--na", 1.2,
                        "--wavelength", 0.5, "-o", files / "o.tif"], capsys)
    assert_one_line_error(code, err, "for a 2D image give a --psf file", "--shape 63 63 --voxel-size DY DX")


@pytest.mark.parametrize("unit, factor", [("micrometers", 1.0), ("nanometres", 1e-3), ("millimeter", 1e3),
                                          ("meters", 1e6), ("inches", 25400.0)])
def test_unit_names_fiji_users_type_are_read(tmp_path, unit, factor):
    metadata = {"spacing": 0.3 / factor, "unit": unit, "axes": "ZYX"}
    tifffile.imwrite(tmp_path / "a.tif", np.ones((3, 6, 7), np.float32), imagej=True,
                     resolution=(1 / (0.1 / factor),) * 2, metadata=metadata)
    assert read_image(tmp_path / "a.tif").voxel_size == pytest.approx((0.3, 0.1, 0.1))


def test_a_unit_that_cannot_be_converted_is_named_not_taken_for_no_calibration(files, capsys):
    # It was read as an uncalibrated file: the PSF's voxel size was assumed and the run went on.
    stack = np.random.default_rng(1).poisson(100, (12, 40, 40)).astype(np.uint16)
    tifffile.imwrite(files / "odd.tif", stack, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.3, "unit": "furlong", "axes": "ZYX"})
    image = read_image(files / "odd.tif")
    assert image.voxel_size is None and image.partial_voxel is None and "'furlong'" in image.voxel_problem
    before, out = (files / "odd.tif").read_bytes(), files / "o.tif"
    common = ["--psf", files / "psf.tif", "-o", out, "--iterations", 1, "--device", "cpu"]
    code, _, err = run(["deconvolve", files / "odd.tif"] + common, capsys)
    assert_one_line_error(code, err, "'furlong', a unit deconv3d cannot convert to µm", "--voxel-size")
    assert not out.exists() and (files / "odd.tif").read_bytes() == before
    code, _, err = run(["deconvolve", files / "odd.tif", "--voxel-size", 0.3, 0.1, 0.1] + common, capsys)
    assert code == 0 and read_image(out).voxel_size == pytest.approx((0.3, 0.1, 0.1)), err


@pytest.mark.parametrize("unit, expected", [("pixel", None), ("reference frame", None), ("furlong", "'furlong'")])
def test_ome_tiff_pixel_units_are_uncalibrated_and_unknown_ones_named(tmp_path, unit, expected):
    metadata = {"axes": "ZYX", **{f"PhysicalSize{a}": 1.0 for a in "ZYX"},
                **{f"PhysicalSize{a}Unit": unit for a in "ZYX"}}
    tifffile.imwrite(tmp_path / "a.ome.tif", np.ones((3, 6, 7), np.float32), ome=True, metadata=metadata)
    image = read_image(tmp_path / "a.ome.tif")
    assert image.voxel_size is None
    assert image.voxel_problem is None if expected is None else expected in image.voxel_problem


def test_an_ome_zarr_unit_that_cannot_be_converted_is_named(tmp_path):
    from deconv3d.omezarr import open_lazy, write_ome_zarr

    write_ome_zarr(tmp_path / "a.zarr", np.ones((3, 6, 7), np.float32), voxel_size=(0.3, 0.1, 0.1))
    attrs = tmp_path / "a.zarr" / "zarr.json"
    text = attrs.read_text()
    assert text.count('"micrometer"') == 3
    attrs.write_text(text.replace('"micrometer"', '"millimeter"'))
    assert open_lazy(tmp_path / "a.zarr").voxel_size == pytest.approx((300, 100, 100))
    attrs.write_text(text.replace('"micrometer"', '"furlong"'))
    lazy = open_lazy(tmp_path / "a.zarr")
    assert lazy.voxel_size is None and "'furlong'" in lazy.voxel_problem


@pytest.mark.parametrize("output, extra", [("o.tif", []), ("o.zarr", ["--chunks", 6, 20, 20])])
def test_an_image_without_a_voxel_size_hears_of_it_before_the_rl_tv_weight(files, capsys, output, extra):
    """Found by review: --tv-weight 0.2 on an image without a voxel size was refused as too large
    "for its 3D isotropic voxels"; lowered, the next error said --psf-model needs the voxel size.
    That comes first now; beside a PSF file without one either, the limit says it took none as
    isotropic (in memory and chunked alike)."""
    tifffile.imwrite(files / "bare.tif", np.random.default_rng(0).poisson(100, (12, 40, 40)).astype(np.uint16))
    rl_tv = ["deconvolve", files / "bare.tif", "-o", files / output, "--method", "rl-tv", "--tv-weight", 0.2,
             "--iterations", 2, *extra]
    code, _, err = run([*rl_tv, "--psf-model", "gaussian", "--na", 1.2, "--wavelength", 0.5], capsys)
    assert_one_line_error(code, err, "--psf-model needs the image's voxel size", "--voxel-size")
    code, _, err = run([*rl_tv, "--psf", files / "psf_bare.tif"], capsys)
    assert_one_line_error(code, err, f"--tv-weight 0.2 is too large for {files / 'bare.tif'}",
                          "no voxel size (taken as isotropic)")
    assert not (files / output).exists()


# 2D images: --voxel-size and --chunks take Y X (the form the voxel-size hints name), three values
# as before (the last two used), and refuse too few values for a 3D image in one line.

@pytest.fixture
def planes(tmp_path):
    rng = np.random.default_rng(1)
    plane = rng.poisson(50, (24, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", plane)
    tifffile.imwrite(tmp_path / "x_only.ome.tif", plane, metadata={"axes": "YX", "PhysicalSizeX": 0.1})
    grids = np.meshgrid(*[np.arange(-3, 4)] * 2, indexing="ij")
    tifffile.imwrite(tmp_path / "psf_bare.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32))
    return tmp_path


def pixel_sizes(path) -> tuple:
    """(dy, dx) in µm from the TIFF resolution tags (pixels per µm), read with tifffile."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        return tuple(tags[name].value[1] / tags[name].value[0] for name in ("YResolution", "XResolution"))


@pytest.mark.parametrize("name, hint, given", [("plain.tif", "pass --voxel-size DY DX", ["0.2", "0.1"]),
                                               ("x_only.ome.tif", "pass --voxel-size DY 0.1", ["0.2", "0.1"])])
def test_a_2d_image_takes_the_voxel_size_form_its_warning_names(planes, capsys, name, hint, given):
    common = ["deconvolve", planes / name, "--psf", planes / "psf_bare.tif", "--iterations", 1, "--device", "cpu"]
    code, _, err = run([*common, "-o", planes / "hinted.tif"], capsys)
    assert code == 0 and hint in err, err
    code, _, err = run([*common, "-o", planes / "given.tif", "--voxel-size", *given], capsys)
    assert code == 0, err
    assert pixel_sizes(planes / "given.tif") == pytest.approx((0.2, 0.1))
    np.testing.assert_array_equal(tifffile.imread(planes / "given.tif"), tifffile.imread(planes / "hinted.tif"))


def test_a_2d_image_takes_two_chunk_sides_as_it_takes_the_last_two_of_three(planes, capsys):
    common = ["deconvolve", planes / "plain.tif", "--psf", planes / "psf_bare.tif", "--iterations", 2,
              "--device", "cpu", "--voxel-size", 0.1, 0.1]
    code, out, err = run([*common, "-o", planes / "two.tif", "--chunks", 12, 16], capsys)
    assert code == 0 and "4 block(s)" in out, err
    code, _, err = run([*common, "-o", planes / "three.tif", "--chunks", 1, 12, 16], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(planes / "two.tif"), tifffile.imread(planes / "three.tif"))


@pytest.mark.parametrize("command, output", [("deconvolve", "o.tif"), ("deconvolve", "o.zarr"), ("train", "o.ckpt")])
def test_two_voxel_sizes_for_a_3d_image_are_refused_in_one_line(files, capsys, command, output):
    code, _, err = run([command, files / "ij.tif", "--psf", files / "psf.tif", "-o", files / output,
                        "--voxel-size", 0.1, 0.1, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "2 values", "is 3D", "DZ DY DX")
    assert not (files / output).exists()


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_two_chunk_sides_for_a_3d_image_are_refused_in_one_line(files, capsys, output):
    """``--chunks Y X`` (a 2D image's form) on a 3D image is refused by the file's pipeline, naming
    the image and the form to give, before any block or temporary is written; a later check in the
    block planner only said "--chunks (12, 12) needs 3 positive values"."""
    before = {p.name: p.read_bytes() for p in files.iterdir()}
    code, _, err = run(["deconvolve", files / "ij.tif", "--psf", files / "psf.tif", "-o", files / output,
                        "--chunks", 12, 12, "--iterations", 1, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "chunks (12, 12) give 2 sides", "ij.tif is 3D", "give Z Y X")
    assert {p.name: p.read_bytes() for p in files.iterdir()} == before  # no output, no temporary, inputs kept


@pytest.mark.parametrize("values", [[0.1], [], [0.1] * 4])
def test_a_voxel_size_count_other_than_two_or_three_is_a_usage_error(planes, capsys, values):
    """Four values said only "unrecognized arguments: 0.1", before the input too ("... plain.tif")."""
    given = ["--voxel-size", *values]
    files = [planes / "plain.tif", "-o", planes / "o.tif", "--psf", planes / "psf_bare.tif"]
    for argv in [files + given] + [given + files] * (len(values) > 3):
        code, _, err = run(["deconvolve", *argv], capsys)
        assert_one_line_error(code, err, "expected 3 values (DZ DY DX), or 2 (DY DX) for a 2D image",
                              f"got {len(values)}")
    assert not (planes / "o.tif").exists()


@pytest.mark.parametrize("values", [["-1e0", 0.1, 0.1], [0.3, "-inf", 0.1], [0.3, 0.1, "-NaN"], ["-Infinity", 0.1]])
def test_a_negative_voxel_size_is_refused_as_a_value_not_taken_for_an_option(planes, capsys, values):
    """argparse took '-inf' and '-nan' (which float reads) for options, so '--voxel-size 0.3 -inf 0.1' said
    "expected 3 values ..., got 1" instead of refusing the value (found by the review of this stop's diff)."""
    code, _, err = run(["deconvolve", planes / "plain.tif", "-o", planes / "o.tif", "--psf", planes / "psf_bare.tif",
                        "--voxel-size", *values], capsys)
    given = next(v for v in values if isinstance(v, str))
    assert_one_line_error(code, err, "--voxel-size", "must be a positive finite number", f"got {given}")
    assert not (planes / "o.tif").exists()


@pytest.mark.parametrize("option, values", [("--voxel-size", [0.1, 0.1]), ("--chunks", [12, 16])])
def test_two_values_before_the_input_are_told_to_follow_it(planes, capsys, option, values):
    """'--voxel-size 0.1 0.1 in.tif' said only "invalid positive_float value: 'in.tif'"."""
    code, _, err = run(["deconvolve", option, *values, planes / "plain.tif", "--psf", planes / "psf_bare.tif",
                        "-o", planes / "o.tif"], capsys)
    assert_one_line_error(code, err, f"{option} takes up to 3 values, so it took {planes / 'plain.tif'} too",
                          "give it after the input")


def test_three_voxel_sizes_before_the_input_leave_it_the_input(files, capsys):
    code, _, err = run(["deconvolve", "--voxel-size", 0.3, 0.1, 0.1, files / "noz.ome.tif", "--psf",
                        files / "psf.tif", "-o", files / "o.tif", "--iterations", 1, "--device", "cpu"], capsys)
    assert code == 0, err
    assert read_image(files / "o.tif").voxel_size == pytest.approx((0.3, 0.1, 0.1))
