"""``deconvolve --iterations auto``: the count chosen from held-out voxels, recorded in the output."""

import json

import numpy as np
import pytest
import tifffile

from cli_helpers import run
from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.io import read_image, write_tiff
from deconv3d.pipeline.auto_iterations import AUTO_MAX_ITERATIONS
from deconv3d.synthetic import add_noise, blur, phantom


@pytest.fixture
def data(tmp_path):
    truth = phantom((12, 32, 32), seed=1)
    grids = np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s**2) for g, s in zip(grids, (1.5, 1.0, 1.0)))).astype(np.float32)
    psf /= psf.sum()
    image = add_noise(blur(truth, psf), photons=100, seed=2).astype(np.float32)
    write_tiff(tmp_path / "image.tif", image, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path, image, psf


@pytest.mark.parametrize("method", ["rl", "rl-tv"])
def test_auto_iterations_runs_plain_rl_for_the_chosen_count(data, capsys, method):
    d, image, psf = data
    out = d / f"auto_{method}.tif"
    code, stdout, err = run(["deconvolve", d / "image.tif", "--psf", d / "psf.tif", "-o", out, "--method", method,
                             "--iterations", "auto", "--device", "cpu"], capsys)
    assert code == 0, err
    tv = 0.002 if method == "rl-tv" else 0.0
    expected = choose_iterations(image, psf, AUTO_MAX_ITERATIONS, tv_weight=tv, voxel_size=(0.3, 0.1, 0.1),
                                 device="cpu").iterations
    assert f"chose {expected} iterations" in stdout
    result = read_image(out)
    reference = richardson_lucy(image, psf, expected, tv_weight=tv, voxel_size=(0.3, 0.1, 0.1), device="cpu")
    np.testing.assert_allclose(result.data, reference, rtol=1e-5, atol=1e-6 * float(reference.max()))
    with tifffile.TiffFile(out) as tif:
        params = json.loads(tif.imagej_metadata["Properties"]["parameters"])
    assert params["iterations"] == expected and params["accelerate"] is False
    assert "held-out" in params["iterations_chosen_by"]


def test_a_chunked_run_chooses_the_count_an_in_memory_run_chooses(data, capsys):
    """A chunked run (a .zarr output) chose nothing: --iterations auto was refused there. On a volume under
    AUTO_CROP_VOXELS it chooses on the whole volume, the count the in-memory run chooses, with its output."""
    from deconv3d.omezarr import read_ome_zarr

    d, _, _ = data
    lines = {}
    for name in ("memory.tif", "chunked.zarr"):
        code, stdout, err = run(["deconvolve", d / "image.tif", "--psf", d / "psf.tif", "-o", d / name,
                                 "--iterations", "auto", "--device", "cpu"], capsys)
        assert code == 0, err
        lines[name] = next(line for line in stdout.splitlines() if line.startswith("chose"))
    assert lines["chunked.zarr"] == lines["memory.tif"][:-1] + ", on the whole volume)", lines
    np.testing.assert_allclose(np.asarray(read_ome_zarr(d / "chunked.zarr")[0]), read_image(d / "memory.tif").data,
                               rtol=1e-5, atol=1e-6)


def test_auto_iterations_with_a_method_that_ignores_it_is_warned_about_on_chunked_runs_too(data, capsys):
    """Found by the options review: --iterations auto with --method wiener was refused on chunked
    runs (.zarr output or --chunks) as needing the whole image in memory, while to a .tif it was
    warned about as ignored and ran. The refusal is RL's: Wiener gets the in-memory warning and the
    output of the same run without --iterations."""
    from deconv3d.omezarr import read_ome_zarr

    d, _, _ = data
    base = ["deconvolve", d / "image.tif", "--psf", d / "psf.tif", "--method", "wiener", "--device", "cpu"]
    outputs = {}
    for name, extra in (("plain.zarr", []), ("auto.zarr", ["--iterations", "auto"]),
                        ("chunks.tif", ["--iterations", "auto", "--chunks", 6, 32, 32]), ("memory.tif", [])):
        code, _, err = run([*base, "-o", d / name, *extra], capsys)
        assert code == 0, err
        warned = [line for line in err.splitlines() if "--iterations" in line]  # (the image has negative noise)
        assert warned == (["deconv3d: warning: --iterations does not apply to --method wiener; ignored"] if extra
                          else []), err
        outputs[name] = np.asarray(read_ome_zarr(d / name)[0]) if name.endswith(".zarr") else tifffile.imread(d / name)
    np.testing.assert_array_equal(outputs["auto.zarr"], outputs["plain.zarr"])
    np.testing.assert_allclose(outputs["chunks.tif"], outputs["memory.tif"], rtol=1e-4, atol=1e-6)


def test_iterations_must_be_a_count_or_auto(data, capsys):
    d, _, _ = data
    code, _, err = run(["deconvolve", d / "image.tif", "--psf", d / "psf.tif", "-o", d / "o.tif",
                        "--iterations", "many"], capsys)
    assert code == 2 and "--iterations" in err
    assert not (d / "o.tif").exists()


def test_auto_iterations_says_when_it_stopped_at_its_cap(data, capsys, monkeypatch):
    """A noise-free stack keeps improving: the CLI says the cap was reached instead of calling it a minimum."""
    from deconv3d.cli import iteration_choice

    d, image, psf = data
    monkeypatch.setattr(iteration_choice, "AUTO_MAX_ITERATIONS", 3)
    write_tiff(d / "clean.tif", blur(phantom((12, 32, 32), seed=1), psf) * 100, voxel_size=(0.3, 0.1, 0.1))
    code, stdout, err = run(["deconvolve", d / "clean.tif", "--psf", d / "psf.tif", "-o", d / "clean_out.tif",
                             "--iterations", "auto", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "chose 3 iterations, the most --iterations auto tries" in stdout and "--iterations N" in stdout


@pytest.mark.parametrize("route", ["in memory", "chunked", "batch"])
def test_each_route_searches_up_to_the_cap_and_names_it_when_it_stops_there(data, capsys, monkeypatch, route):
    """--iterations auto tried at most 100 iterations, where the truth-picked count lay past 200 (Gibson-Lanni PSF,
    1000 photons up) and 0.93-2.6 dB were lost: the search gets AUTO_MAX_ITERATIONS on every route (in memory,
    chunked on a crop, each file of a batch), its bar counts to it, and a count stopped there is said and recorded
    as at that cap. (The search is stubbed: a case whose error still falls at the cap would be slow.)"""
    import deconv3d.classical
    from deconv3d.classical import IterationChoice
    from deconv3d.cli import iteration_choice
    from deconv3d.omezarr import read_ome_zarr

    assert AUTO_MAX_ITERATIONS >= 200 and iteration_choice.AUTO_MAX_ITERATIONS == AUTO_MAX_ITERATIONS
    d, _, _ = data
    searched, bars = [], []

    def search(image, psf, max_iterations, **kwargs):
        searched.append(max_iterations)
        return IterationChoice(max_iterations, (1.0,) * max_iterations, 0.05, "max_iterations")

    def progress(total, description):
        bars.append((total, description))
        return real_progress(total, description)

    real_progress = iteration_choice.progress
    monkeypatch.setattr(deconv3d.classical, "choose_iterations", search)
    monkeypatch.setattr(iteration_choice, "progress", progress)
    (d / "in").mkdir()
    write_tiff(d / "in" / "image.tif", read_image(d / "image.tif").data, voxel_size=(0.3, 0.1, 0.1))
    argv = {"in memory": ["deconvolve", d / "image.tif", "-o", d / "out.tif"],
            "chunked": ["deconvolve", d / "image.tif", "-o", d / "out.zarr"],
            "batch": ["batch", d / "in", "-o", d / "out"]}[route]
    code, stdout, err = run([*argv, "--psf", d / "psf.tif", "--iterations", "auto", "--device", "cpu"], capsys)
    assert code == 0, err
    # the cap named in the bar's description, not its total, which would count the time left to the cap
    assert searched == [AUTO_MAX_ITERATIONS] and bars == [(None, f"choosing iterations (at most {AUTO_MAX_ITERATIONS})")]
    assert f"chose {AUTO_MAX_ITERATIONS} iterations" in stdout and "the most --iterations auto tries" in stdout, stdout
    if route == "in memory":
        with tifffile.TiffFile(d / "out.tif") as tif:
            params = json.loads(tif.imagej_metadata["Properties"]["parameters"])
    else:
        attrs = read_ome_zarr(d / ("out.zarr" if route == "chunked" else "out/image.zarr"))[3]
        params = attrs["deconv3d"]["parameters"]
    assert params["iterations"] == AUTO_MAX_ITERATIONS
    assert f"stopped at the cap of {AUTO_MAX_ITERATIONS} with the error still falling" in params["iterations_chosen_by"]
