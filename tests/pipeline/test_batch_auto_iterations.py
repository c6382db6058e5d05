"""``batch --iterations auto`` (and a config's ``iterations = "auto"``): each file's RL count chosen on
that file (deconvolve's chunked choice, one count per channel), its output plain RL for that count, its
record holding the count; the completion records still match on a rerun; other methods ignore it."""

import json

import numpy as np
import pytest
from cli_helpers import run

from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr
from deconv3d.pipeline.auto_iterations import AUTO_MAX_ITERATIONS
from deconv3d.psf import prepare_psf

from .conftest import blurred_beads, gaussian_psf

VOXEL = (0.3, 0.1, 0.1)
SHAPE = (12, 32, 32)


def _images():
    """``a`` (bright) and ``b`` (dim, so noisier)."""
    dim = np.random.default_rng(2).poisson(blurred_beads(SHAPE, gaussian_psf(), seed=3) / 20).astype(np.float32)
    return {"a": blurred_beads(SHAPE, gaussian_psf(), seed=1) * 4, "b": dim}


@pytest.fixture
def folder(tmp_path):
    """``in/a.tif`` and ``in/b.tif`` (:func:`_images`), and ``psf.tif``."""
    (tmp_path / "in").mkdir()
    for name, image in _images().items():
        write_tiff(tmp_path / "in" / f"{name}.tif", image, voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=VOXEL)
    return tmp_path


def _statuses(out):
    return [r["status"] for r in json.loads((out / "batch_report.json").read_text())["files"]]


def _check_auto_outputs(folder, out, stdout):
    """Each output is plain RL for choose_iterations' count on its file (the whole volume: it is small),
    recorded with how it was chosen, and each file's 'chose' line comes before its own '[N/2]' line."""
    psf = prepare_psf(gaussian_psf(), SHAPE, psf_voxel=VOXEL, image_voxel=VOXEL)
    counts = {}
    for name, image in _images().items():
        choice = choose_iterations(image, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu")
        counts[name] = choice.iterations
        result, _, _, attrs = read_ome_zarr(out / f"{name}.zarr")
        parameters = attrs["deconv3d"]["parameters"]
        assert parameters["iterations"] == choice.iterations and parameters["accelerate"] is False
        assert parameters["iterations_chosen_by"] == "held-out prediction (5% of voxels, on the whole volume)"
        expected = richardson_lucy(image, psf, choice.iterations, accelerate=False, voxel_size=VOXEL, device="cpu")
        np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    assert counts["a"] != counts["b"]  # (else one count chosen for both would pass)
    lines = [line for line in stdout.splitlines() if line.startswith(("chose", "["))]
    in_dir = folder / "in"
    assert [line.split(" (")[0] for line in lines] == [
        f"chose {counts['a']} iterations for {in_dir / 'a.tif'}", f"[1/2] done    {in_dir / 'a.tif'}",
        f"chose {counts['b']} iterations for {in_dir / 'b.tif'}", f"[2/2] done    {in_dir / 'b.tif'}"], stdout


def test_each_file_of_a_batch_gets_its_own_count_and_a_rerun_skips_them(folder, capsys):
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--iterations", "auto",
            "--device", "cpu"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    _check_auto_outputs(folder, out, stdout)
    code, stdout, err = run(argv, capsys)  # the completion records hold "auto": both files are finished
    assert code == 0, err
    assert _statuses(out) == ["skipped", "skipped"] and "chose" not in stdout
    code, _, err = run(argv[:-4] + ["--iterations", "20", "--device", "cpu"], capsys)  # another setting: redone
    assert code == 0, err
    assert _statuses(out) == ["done", "done"]


def test_a_config_s_iterations_auto_works_as_the_option_does(folder, capsys):
    (folder / "cfg.toml").write_text('psf = "psf.tif"\niterations = "Auto"\ndevice = "cpu"\n')
    code, stdout, err = run(["batch", folder / "in", "-o", folder / "out", "--config", folder / "cfg.toml"], capsys)
    assert code == 0, err
    _check_auto_outputs(folder, folder / "out", stdout)


def test_a_wiener_batch_ignores_iterations_auto_with_a_warning(folder, capsys):
    """As deconvolve ignores --iterations auto for wiener: the warning, and the outputs and completion
    records of a wiener batch without it (a rerun without it skips both files)."""
    base = ["batch", folder / "in", "--psf", folder / "psf.tif", "--method", "wiener", "--device", "cpu"]
    code, stdout, err = run(base + ["-o", folder / "auto", "--iterations", "auto"], capsys)
    assert code == 0, err
    assert "--iterations does not apply to --method wiener; ignored" in err and "chose" not in stdout
    code, _, err = run(base + ["-o", folder / "plain"], capsys)
    assert code == 0, err
    for name in ("a", "b"):
        auto, plain = (read_ome_zarr(folder / f / f"{name}.zarr") for f in ("auto", "plain"))
        np.testing.assert_array_equal(np.asarray(auto[0]), np.asarray(plain[0]))
        assert auto[3]["deconv3d"]["parameters"] == plain[3]["deconv3d"]["parameters"]
    code, _, err = run(base + ["-o", folder / "auto"], capsys)
    assert code == 0, err
    assert _statuses(folder / "auto") == ["skipped", "skipped"]


def test_deconvolve_file_refuses_auto_without_a_chooser(folder):
    """The Python API: Settings(iterations="auto") needs deconvolve_file's iterations_chooser for RL; without one
    it is a one-line error before any output, not a failure inside the blocks."""
    from deconv3d.errors import InputError
    from deconv3d.pipeline.files import deconvolve_file
    from deconv3d.pipeline.settings import make_settings

    settings = make_settings({"psf": str(folder / "psf.tif"), "iterations": "auto", "device": "cpu"})
    with pytest.raises(InputError, match='iterations "auto" needs an iterations_chooser'):
        deconvolve_file(folder / "in" / "a.tif", folder / "a.zarr", settings)
    assert not (folder / "a.zarr").exists()


def test_a_rerun_with_or_without_no_accelerate_skips_an_auto_batch(folder, capsys):
    """--iterations auto runs its chosen counts without acceleration, so --no-accelerate changes nothing:
    a batch finished with one is skipped by the other (it was redone: the settings hash held accelerate)."""
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--iterations", "auto", "--device", "cpu"]
    code, _, err = run([*argv, "--no-accelerate"], capsys)
    assert code == 0, err
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert _statuses(out) == ["skipped", "skipped"] and "chose" not in stdout
