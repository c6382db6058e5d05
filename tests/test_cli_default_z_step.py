"""An ImageJ stack that records no z step: ImageJ's default (1 in its unit) is taken, as Fiji takes
it, and every command that reads the stack says so (found by review: a stack written without its z
step got a 1 µm one silently, and a PSF sampled at 0.3 µm was resampled to 1 µm planes for it)."""

import numpy as np
import pytest
import tifffile

from cli_helpers import run
from deconv3d.io import read_image, write_tiff
from deconv3d.omezarr.reading import open_lazy

WARNING = ("deconv3d: warning: {name} records no z step, so ImageJ's default is taken, as Fiji takes it: 1 µm "
           "(the voxel size the run and its output take); pass --voxel-size DZ DY DX if its planes are not 1 µm "
           "apart")


@pytest.fixture
def files(tmp_path):
    stack = np.random.default_rng(0).poisson(100, (8, 24, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "noz.tif", stack, imagej=True, resolution=(10, 10), metadata={"unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "noz_nounit.tif", stack, imagej=True, resolution=(10, 10), metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "one_plane.tif", stack[:1], imagej=True, resolution=(10, 10),
                     metadata={"unit": "um", "axes": "ZYX"})
    grids = np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")
    write_tiff(tmp_path / "psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32),
               voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


@pytest.mark.parametrize("name, assumed, voxel", [("noz.tif", True, (1.0, 0.1, 0.1)),
                                                  ("noz_nounit.tif", True, (1.0, 0.1, 0.1)),
                                                  ("z.tif", False, (0.3, 0.1, 0.1)),
                                                  ("one_plane.tif", False, (0.1, 0.1))])
def test_readers_mark_imagej_s_default_z_step(files, name, assumed, voxel):
    image, lazy = read_image(files / name), open_lazy(files / name)
    assert image.z_step_assumed is lazy.z_step_assumed is assumed
    assert image.voxel_size == pytest.approx(voxel) and lazy.voxel_size == pytest.approx(voxel)
    assert type(image.voxel_size[0]) is float  # (the mark stays in the reader)


def _warnings(err):
    return [line for line in err.splitlines() if "warning" in line]


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_deconvolve_says_the_z_step_was_assumed_once(files, capsys, output):
    code, _, err = run(["deconvolve", files / "noz.tif", "-o", files / output, "--psf", files / "psf.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    assert _warnings(err) == [WARNING.format(name=files / "noz.tif")], err
    assert read_image(files / "out.tif").voxel_size == pytest.approx((1.0, 0.1, 0.1)) if output == "out.tif" else True


@pytest.mark.parametrize("argv", [["noz.tif", "--voxel-size", 0.3, 0.1, 0.1], ["z.tif"], ["one_plane.tif"]])
def test_no_warning_where_the_z_step_is_given_or_recorded_or_has_no_planes(files, capsys, argv):
    psf = files / ("psf.tif" if argv[0] != "one_plane.tif" else "psf2d.tif")
    if argv[0] == "one_plane.tif":
        write_tiff(psf, np.full((3, 3), 1 / 9, np.float32), voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", files / argv[0], *argv[1:], "-o", files / "out.tif", "--psf", psf,
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and _warnings(err) == [], err


def test_batch_and_distill_say_it_too(files, capsys):
    (files / "in").mkdir()
    (files / "noz.tif").rename(files / "in" / "noz.tif")
    code, _, err = run(["batch", files / "in", "-o", files / "out", "--psf", files / "psf.tif", "--iterations", 2,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert sum("records no z step" in line for line in err.splitlines()) == 1, err
    grids = np.meshgrid(*[np.arange(n) for n in (15, 48, 48)], indexing="ij")
    beads = sum(np.exp(-((grids[0] - 7) ** 2 / 4 + (grids[1] - cy) ** 2 + (grids[2] - cx) ** 2) / 2)
                for cy, cx in ((12, 12), (12, 34), (34, 22)))
    beads = np.random.default_rng(1).poisson(1000 * beads + 10).astype(np.float32)
    tifffile.imwrite(files / "beads.tif", beads, imagej=True, resolution=(10, 10), metadata={"unit": "um", "axes": "ZYX"})
    code, _, err = run(["psf", "distill", files / "beads.tif", "-o", files / "bead_psf.tif", "--size", 5, 5, 5], capsys)
    assert code == 0, err
    assert WARNING.format(name=files / "beads.tif") in err.splitlines(), err


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_a_psf_file_without_a_z_step_is_warned_about(files, capsys, output):
    grids = np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")
    tifffile.imwrite(files / "psf_noz.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), imagej=True,
                     resolution=(10, 10), metadata={"unit": "um", "axes": "ZYX"})
    stack = np.random.default_rng(2).poisson(100, (16, 24, 24)).astype(np.uint16)
    tifffile.imwrite(files / "z05.tif", stack, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    code, _, err = run(["deconvolve", files / "z05.tif", "-o", files / output, "--psf", files / "psf_noz.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    assert _warnings(err) == [
        f"deconv3d: warning: the PSF file {files / 'psf_noz.tif'} records no z step, so ImageJ's default is taken, as "
        "Fiji takes it: 1 µm (the PSF is resampled from it to the image's planes); record its z step in the file "
        "(Fiji: Image > Properties) if its planes are not 1 µm apart"], err


@pytest.mark.parametrize("output, psf", [("out.tif", ["--psf", "psf.tif"]), ("out.zarr", ["--psf", "psf.tif"]),
                                         ("out.tif", ["--psf-model", "gaussian", "--na", 1.2, "--wavelength", 0.5])])
def test_a_stack_in_nanometres_without_a_z_step_is_refused(files, capsys, output, psf):
    """ImageJ's default in nm is a 1 nm z step: a measured PSF resampled to it was refused as not in
    micrometres, without the warning that the step was assumed, and --psf-model ran on it."""
    stack = np.random.default_rng(3).poisson(100, (8, 24, 24)).astype(np.uint16)
    tifffile.imwrite(files / "nm.tif", stack, imagej=True, resolution=(0.01, 0.01), metadata={"unit": "nm", "axes": "ZYX"})
    argv = ["deconvolve", files / "nm.tif", "-o", files / output, *[files / a if a == "psf.tif" else a for a in psf],
            "--iterations", 2, "--device", "cpu"]
    code, _, err = run(argv, capsys)
    name = files / "nm.tif"  # (as given, in memory and chunked alike)
    assert code == 2 and err.splitlines() == [
        f"deconv3d: error: {name} records no z step, and ImageJ's default, 1 in its unit, is 0.001 µm, closer than a "
        "light microscope takes its planes: pass --voxel-size DZ DY DX (in µm), or record the z step in the file "
        "(Fiji: Image > Properties)"], err
    code, _, err = run([*argv, "--voxel-size", 0.3, 0.1, 0.1], capsys)
    assert code == 0 and _warnings(err) == [], err


def _psf_without_z_step(path, unit="um", resolution=10, **options):
    grids = np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")
    metadata = {"axes": "ZYX", **({"unit": unit} if unit else {})}
    tifffile.imwrite(path, np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), imagej=True,
                     resolution=(resolution, resolution), metadata=metadata, **options)


def test_a_refusal_after_the_psf_s_warning_says_only_its_error(files, capsys):
    """The PSF file's warning waits, as the image's do, for the input's checks: it came before a refusal
    (alone, the image's held back) and before the image's warnings."""
    _psf_without_z_step(files / "psf_noz.tif")
    argv = ["deconvolve", files / "noz.tif", "-o", files / "out.tif", "--psf", files / "psf_noz.tif", "--device", "cpu"]
    code, _, err = run([*argv, "--method", "rl-tv", "--tv-weight", 10], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--tv-weight 10 is too large" in err, err
    code, _, err = run([*argv, "--iterations", 2], capsys)
    assert code == 0 and [line.split(" records")[0] for line in _warnings(err)] == [
        f"deconv3d: warning: {files / 'noz.tif'}", f"deconv3d: warning: the PSF file {files / 'psf_noz.tif'}"], err


def test_a_chunked_run_collects_the_psf_s_warning_with_its_others(files, capsys):
    """The chunked run printed the PSF file's warning at once, where the PSF was read: before the image's
    (in memory: after) and before a refusal of the memory limit, which then did not say only its error.
    It is collected with the run's other warnings now, as in memory."""
    _psf_without_z_step(files / "psf_noz.tif")
    argv = ["deconvolve", files / "noz.tif", "--psf", files / "psf_noz.tif", "--iterations", 2, "--device", "cpu"]
    said = []
    for output in ("out.tif", "out.zarr"):
        code, _, err = run([*argv, "-o", files / output], capsys)
        assert code == 0, err
        said.append([line.split(" records")[0].split()[-1].rsplit("/", 1)[-1] for line in _warnings(err)])
    assert said[0] == said[1] == ["noz.tif", "psf_noz.tif"], said
    code, _, err = run([*argv, "-o", files / "small.zarr", "--memory-limit", "1MB"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "memory limit 1MB is too small" in err, err


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
@pytest.mark.parametrize("unit, resolution, options, z, how", [
    ("nm", 0.01, {}, "0.001", "closer than"),
    (None, 1e5, {"resolutionunit": "CENTIMETER"}, "10000", "farther apart than")])  # (was "looks like nanometres")
def test_a_psf_file_in_nanometres_or_centimetres_without_a_z_step_is_refused(files, capsys, output, unit, resolution,
                                                                              options, z, how):
    _psf_without_z_step(files / "psf_odd.tif", unit=unit, resolution=resolution, **options)
    code, _, err = run(["deconvolve", files / "z.tif", "-o", files / output, "--psf", files / "psf_odd.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 2 and err.splitlines() == [
        f"deconv3d: error: the PSF file {files / 'psf_odd.tif'} records no z step, and ImageJ's default, 1 in its unit, "
        f"is {z} µm, {how} a light microscope takes its planes: record its z step in the file (Fiji: Image > "
        "Properties)"], err
    assert not (files / output).exists()


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_a_stack_in_centimetres_without_a_z_step_is_told_the_z_step_is_missing(files, capsys, output):
    """Found by review: an ImageJ file whose resolution is per centimetre, with no unit and no spacing,
    got ImageJ's default z step of 1 cm and was refused as "looks like nanometres: the file's unit is
    wrong", though its pixel sizes (0.1 µm) were right and only the z step was missing."""
    stack = np.random.default_rng(3).poisson(100, (8, 24, 24)).astype(np.uint16)
    tifffile.imwrite(files / "cm.tif", stack, imagej=True, resolution=(1e5, 1e5), resolutionunit="CENTIMETER",
                     metadata={"axes": "ZYX"})
    assert read_image(files / "cm.tif").voxel_size == pytest.approx((1e4, 0.1, 0.1))
    code, _, err = run(["deconvolve", files / "cm.tif", "-o", files / output, "--psf", files / "psf.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "records no z step" in err and "10000 µm, farther apart than" in err and "--voxel-size" in err, err
    assert not (files / output).exists()
    code, _, err = run(["deconvolve", files / "cm.tif", "--voxel-size", 0.3, 0.1, 0.1, "-o", files / output, "--psf",
                        files / "psf.tif", "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "warning" not in err, err

