"""The command-line contract: exit codes, one-line errors, no output left behind."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import assert_one_line_error, full_disk_probe, run
from deconv3d.io import read_image, write_tiff
from deconv3d.omezarr import open_lazy


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((12, 40, 40)).astype(np.float32) + 0.1
    grids = np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")
    psf = np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32)
    write_tiff(tmp_path / "image.tif", image, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


@pytest.mark.parametrize("method", ["rl", "rl-tv", "wiener"])
def test_deconvolve_writes_float32_tiff_with_voxel_size(data, capsys, method):
    out = data / f"out_{method}.tif"
    code, stdout, _ = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", out,
                           "--method", method, "--iterations", 3, "--device", "cpu"], capsys)
    assert code == 0, stdout
    result = read_image(out)
    assert result.data.dtype == np.float32 and result.data.shape == (12, 40, 40)
    assert result.voxel_size == pytest.approx((0.3, 0.1, 0.1))
    assert result.data.min() >= 0


@pytest.mark.parametrize("options, boundary, accelerate", [([], "bertero", True),
                                                        (["--boundary", "zero"], "zero", True),
                                                        (["--boundary", "reflect", "--no-accelerate"], "reflect", False),
                                                        (["--method", "rl-tv", "--tv-weight", 0.02], "bertero", True)])
def test_deconvolve_rl_options_reach_richardson_lucy(data, capsys, options, boundary, accelerate):
    """The written result is richardson_lucy's with the options given (accelerated by default)."""
    from deconv3d.classical import richardson_lucy
    from deconv3d.psf import normalize_psf

    out = data / "rl_options.tif"
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", out, "--iterations", 4,
                        "--device", "cpu"] + options, capsys)
    assert code == 0, err
    tv = float(options[-1]) if "--tv-weight" in options else 0.0
    expected = richardson_lucy(read_image(data / "image.tif").data, normalize_psf(read_image(data / "psf.tif").data), 4,
                               boundary=boundary, accelerate=accelerate, tv_weight=tv, voxel_size=(0.3, 0.1, 0.1),
                               device="cpu")
    np.testing.assert_allclose(read_image(out).data, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("command", ["deconvolve", "train", "psf"])
def test_an_output_folder_it_cannot_write_is_a_clean_error(data, capsys, monkeypatch, command):
    """As root every folder is writable, so the refusal of os.access is simulated."""
    import os

    locked = data / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    argv = {"deconvolve": ["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", locked / "o.tif"],
            "train": ["train", data / "image.tif", "--psf", data / "psf.tif", "-o", locked / "m.ckpt", "--steps", 1],
            "psf": ["psf", "-o", locked / "p.tif", "--model", "gaussian", "--shape", 5, 9, 9, "--voxel-size", 0.3,
                    0.1, 0.1, "--na", 1.2, "--wavelength", 0.5]}[command]
    code, _, err = run(argv + ["--device", "cpu"] * (command != "psf"), capsys)
    assert_one_line_error(code, err, "not writable")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command, name", [("deconvolve", "o.tif"), ("deconvolve", "o.zarr"), ("psf", "p.tif")])
def test_a_folder_that_takes_no_file_is_refused_before_the_run(data, capsys, command, name):
    """As root os.access passes /proc and /sys, where no file can be created: deconvolve ran its method,
    then failed to write ("cannot write /proc/o.tif ... check free disk space"), as train did (its own
    test is in tests/selfsup). The folder is tried with a file first: one line, exit 2, before any work."""
    import os

    folders = [f for f in ("/proc", "/sys") if os.path.isdir(f)]
    if not folders:
        pytest.skip("neither /proc nor /sys on this system")
    for folder in folders:
        code, _, err = _run_with_output(command, data, Path(folder) / name, capsys)
        assert_one_line_error(code, err, f"output directory is not writable: {folder}", "choose another output")
        assert not os.path.exists(Path(folder) / name)


@pytest.mark.parametrize("command, name", [("deconvolve", "o.tif"), ("deconvolve", "o.zarr"), ("train", "m.ckpt"),
                                           ("psf", "p.tif")])
def test_a_full_output_disk_is_named_as_full_not_unwritable(data, capsys, monkeypatch, command, name):
    """Found by the second review of this stop: a folder on a full disk, where the probe's file could not be made
    (ENOSPC), was called "not writable", which sent the user to its permissions."""
    full = data / "full"
    full.mkdir()
    full_disk_probe(monkeypatch, full)
    code, _, err = _run_with_output(command, data, full / name, capsys)
    assert_one_line_error(code, err, f"output directory {full} is full (creating a file there failed: No space left "
                          "on device): free space there or choose another output location")
    assert list(full.iterdir()) == []


@pytest.mark.parametrize("command, name", [("deconvolve", "o.tif"), ("train", "m.ckpt"), ("psf", "p.tif")])
def test_a_write_protected_output_is_kept_as_cp_keeps_it(data, capsys, monkeypatch, command, name):
    """cp onto a chmod 444 file fails with "Permission denied"; deconv3d replaced it by a rename (its
    folder is writable) and lost its mode. As root every file is writable, so os.access is simulated."""
    import hashlib
    import os

    target = data / name
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == target and mode & os.W_OK
                        else real(p, mode))
    argv = {"deconvolve": ["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", target],
            "train": ["train", data / "image.tif", "--psf", data / "psf.tif", "-o", target, "--steps", 1],
            "psf": ["psf", "-o", target, "--model", "gaussian", "--shape", 5, 9, 9, "--voxel-size", 0.3,
                    0.1, 0.1, "--na", 1.2, "--wavelength", 0.5]}[command]
    code, _, err = run(argv + ["--device", "cpu"] * (command != "psf"), capsys)
    assert_one_line_error(code, err, "write-protected", str(target))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(b"keep me").hexdigest()
    assert target.stat().st_mode & 0o777 == 0o444


@pytest.mark.parametrize("variable, value", [("DECONV3D_FFTW_PLANNER", "mesure"), ("DECONV3D_FFT", "fftww"),
                                             ("DECONV3D_FUSED", "nmba")])
@pytest.mark.parametrize("command", ["deconvolve", "batch", "psf"])
def test_a_wrong_environment_variable_is_refused_at_start_up(data, capsys, monkeypatch, variable, value, command):
    """Each was read only where used: DECONV3D_FFTW_PLANNER=mesure wrote a small image's output
    (no FFTW there) and failed only a batch's large files, DECONV3D_FFT=fftww failed a batch's
    files one by one (exit 3). Now every command refuses it before any work, in one line."""
    monkeypatch.setenv(variable, value)
    (data / "in").mkdir()
    write_tiff(data / "in" / "small.tif", np.ones((4, 8, 8), np.float32), voxel_size=(0.3, 0.1, 0.1))
    argv = {"deconvolve": ["deconvolve", data / "in" / "small.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                           "--iterations", 1, "--device", "cpu"],
            "batch": ["batch", data / "in", "-o", data / "out", "--psf", data / "psf.tif", "--iterations", 1],
            "psf": ["psf", "-o", data / "o.tif", "--model", "gaussian", "--shape", 5, 9, 9, "--voxel-size", 0.3,
                    0.1, 0.1, "--na", 1.2, "--wavelength", 0.5]}[command]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, f"{variable}={value!r}", "unset it")
    assert not (data / "o.tif").exists() and not (data / "out").exists()


@pytest.mark.parametrize("value", ["1s", "nan", "-1", "-inf"])
def test_a_progress_interval_that_is_no_number_of_seconds_is_refused(data, capsys, monkeypatch, value):
    """DECONV3D_PROGRESS_SECONDS=1s was taken as 30 s and nan as never, without a word."""
    from deconv3d.cli.printing import _log_interval

    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", value)
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--iterations", 1, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, f"DECONV3D_PROGRESS_SECONDS={value!r}", "0 or more")
    assert not (data / "o.tif").exists()
    for text, seconds in ((" 2.5 ", 2.5), ("0", 0.0), ("", 30.0)):
        monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", text)
        assert _log_interval() == seconds


def test_an_infinite_progress_interval_turns_the_lines_off(data, capsys, monkeypatch):
    """DECONV3D_PROGRESS_SECONDS=inf, a working way to write no progress lines, was refused (exit 2)."""
    import itertools

    from deconv3d.cli.printing import LogBar

    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "inf")
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and (data / "o.tif").exists(), err
    bar = LogBar(3, "rl")
    bar._clock = itertools.count(1e9, 1e9).__next__  # ages apart: any finite interval has passed
    bar.update()
    bar.update()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "1e8")
    bar.update()
    assert capsys.readouterr().err.startswith("rl: 3/3 it")


def test_a_time_budget_bounds_the_time_left_a_progress_line_gives(capsys, monkeypatch):
    """train --time-budget 30 with --steps 100000 logged "about 179 h left": the time left was counted to the
    steps alone. It is now at most what is left of the budget; tqdm's bar on a terminal then gives none."""
    from deconv3d.cli import printing

    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")
    now = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    for budget, said in [(None, "about 27 h 46 min left"), (30.0, "about 20 s left"), (5.0, "about 0 s left")]:
        now[0] = 100.0
        bar = printing.LogBar(10**4, "train", "step", budget)
        now[0] += 10.0  # one step in 10 s
        bar.update(1)
        assert said in capsys.readouterr().err
    monkeypatch.setattr(printing.sys.stderr, "isatty", lambda: True, raising=False)
    for budget, kept in [(30.0, printing.BUDGET_BAR_FORMAT), (None, None)]:
        with printing.make_bar(10, "train", "step", budget) as bar:
            assert bar.bar_format == kept


def _run_with_output(command, data, output, capsys):
    """Run ``command`` (deconvolve, psf or train) on the test data with ``-o output``."""
    argv = {"deconvolve": ["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", output],
            "train": ["train", data / "image.tif", "--psf", data / "psf.tif", "-o", output, "--steps", 1],
            "psf": ["psf", "-o", output, "--model", "gaussian", "--shape", 5, 9, 9, "--voxel-size", 0.3,
                    0.1, 0.1, "--na", 1.2, "--wavelength", 0.5]}[command]
    return run(argv + ["--device", "cpu"] * (command != "psf"), capsys)


@pytest.mark.parametrize("command", ["deconvolve", "psf", "train"])
def test_a_folder_given_as_output_is_named_as_a_folder(data, capsys, command):
    """-o existdir said "unsupported output format '' for existdir" (-o existdir.tif named the folder)."""
    folder = data / "existdir"
    folder.mkdir()
    code, _, err = _run_with_output(command, data, folder, capsys)
    assert_one_line_error(code, err, f"output path is a directory: {folder}", "give a file name")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["deconvolve", "psf", "train"])
def test_a_link_to_a_folder_given_as_output_is_named_as_one(data, capsys, command):
    """-o linkdir (a symbolic link to a folder) said "unsupported output format '' for linkdir"."""
    folder = data / "fulldir"
    folder.mkdir()
    (folder / "keep").write_bytes(b"x")
    link = data / "linkdir"
    link.symlink_to(folder)
    code, _, err = _run_with_output(command, data, link, capsys)
    assert_one_line_error(code, err, f"output {link} is a symbolic link to a folder", "give a file name")
    assert link.is_symlink() and [p.name for p in folder.iterdir()] == ["keep"]


def test_deconvolve_with_generated_psf(data, capsys):
    out = data / "gen.tif"
    code, _, err = run(["deconvolve", data / "image.tif", "--psf-model", "gaussian", "--na", 1.2,
                        "--wavelength", 0.5, "--ni", 1.33, "-o", out, "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    assert out.exists()


def test_psf_out_of_memory_names_the_shape_its_memory_and_a_smaller_shape(data, capsys, monkeypatch):
    """Found by the review of this stop's psf changes: below the grid limit psfmodels may still run out of
    memory (40-115 bytes a voxel); its MemoryError (std::bad_alloc through pybind11) ended in the generic
    "use smaller sizes (batch, widths, levels, chunks) or set --memory-limit". 'psf' names the shape, the
    memory estimated and a smaller --shape; 'deconvolve --psf-model', whose shape the command chose, names
    the voxel size and a --psf file instead, over the limit too. No file either way."""
    import deconv3d.psf.generate as generate

    def out_of_memory(*args, **kwargs):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(generate, "_make_psf", out_of_memory)
    out = data / "generated.tif"
    code, _, err = run(["psf", "-o", out, "--model", "gibson-lanni", "--shape", 9, 15, 15, "--voxel-size", 0.2, 0.1,
                        0.1, "--na", 1.0, "--wavelength", 0.6], capsys)
    assert_one_line_error(code, err, "not enough memory to compute a PSF of shape 9 x 15 x 15", "GB",
                          "give a smaller --shape")
    assert not out.exists()
    deconvolve = ["deconvolve", data / "image.tif", "--psf-model", "gaussian", "--na", 1.2, "--wavelength", 0.5,
                  "-o", data / "o.tif", "--iterations", 2, "--device", "cpu"]
    code, _, err = run(deconvolve, capsys)
    assert_one_line_error(code, err, "not enough memory to compute a PSF of shape", "GB", "--voxel-size", "--psf")
    assert "smaller shape" not in err and not (data / "o.tif").exists()
    monkeypatch.undo()
    monkeypatch.setattr(generate, "MAX_GENERATED_VOXELS", 100)
    code, _, err = run(deconvolve, capsys)
    assert_one_line_error(code, err, "more than the 100 deconv3d computes", "took that shape from the image", "--voxel-size", "--psf")
    assert "smaller shape" not in err and not (data / "o.tif").exists()


def test_psf_command(tmp_path, capsys):
    out = tmp_path / "psf.tif"
    code, _, err = run(["psf", "-o", out, "--model", "gaussian", "--shape", 9, 15, 15, "--voxel-size", 0.2, 0.1, 0.1,
                        "--na", 1.0, "--wavelength", 0.6], capsys)
    assert code == 0, err
    psf = read_image(out)
    assert psf.data.shape == (9, 15, 15) and psf.voxel_size == pytest.approx((0.2, 0.1, 0.1))
    assert psf.data.sum() == pytest.approx(1.0, rel=1e-4)


def test_a_sample_index_the_gaussian_model_ignores_is_warned_about(data, capsys):
    """Found by the options review: '--psf-model gaussian --ns 1.45' (and 'psf --model gaussian
    --ns 1.45') ran the plain Gaussian without a word; psfmodels' Gaussian has no sample index
    (checked here). A refusal broke batches finished before it, so --ns given with the gaussian
    model is warned about, at any value, and the PSF is the one without it; --ns with a model that
    reads it draws no warning."""
    import psfmodels

    gaussian = [psfmodels.make_psf(np.arange(-1.0, 1.1, 0.5), 15, dxy=0.1, NA=1.2, wvl=0.5, ns=ns, ni=1.515, ni0=1.515,
                                   model="gaussian") for ns in (1.33, 1.45)]
    np.testing.assert_array_equal(*gaussian)  # what the refusal rests on
    out = data / "g.tif"
    psf = ["psf", "-o", out, "--shape", 5, 15, 15, "--voxel-size", 0.2, 0.1, 0.1, "--na", 1.2, "--wavelength", 0.5]
    deconvolve = ["deconvolve", data / "image.tif", "-o", data / "o.tif", "--psf-model", "gaussian", "--na", 1.2,
                  "--wavelength", 0.5, "--iterations", 1, "--device", "cpu"]
    warning = ("deconv3d: warning: --ns is not used by the gaussian PSF model, which has no sample refractive "
               "index; ignored")
    written = []
    for argv in ([*psf, "--model", "gaussian", "--ns", 1.45], [*psf, "--model", "gaussian", "--ns", 1.33],
                 [*deconvolve, "--ns", 1.45], [*psf, "--model", "gaussian"],
                 [*psf, "--model", "gibson-lanni", "--ns", 1.45]):
        code, _, err = run(argv, capsys)
        assert code == 0 and [line for line in err.splitlines() if "warning" in line] == (
            [warning] if "--ns" in argv and "gaussian" in argv else []), err
        written.append(read_image(out).data)
    np.testing.assert_array_equal(written[0], written[3])  # ns 1.45 and none given: the same PSF


def bad_cases(d):
    rng = np.random.default_rng(1)
    nan = rng.random((8, 20, 20)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    def save(name, array):
        tifffile.imwrite(d / name, array, photometric="minisblack")

    save("nan.tif", nan)
    save("line.tif", np.ones((1, 30), np.float32))  # squeezes to 1D
    save("zero_psf.tif", np.zeros((3, 3, 3), np.float32))
    save("neg_psf.tif", -np.ones((3, 3, 3), np.float32))
    save("nan_psf.tif", np.full((3, 3, 3), np.nan, np.float32))
    save("big_psf.tif", np.ones((31, 61, 61), np.float32))
    (d / "text.tif").write_text("not an image")
    (d / "afile").write_text("x")
    tifffile.imwrite(d / "neg_spacing.tif", rng.random((8, 20, 20)).astype(np.float32), imagej=True,
                     resolution=(10, 10), metadata={"axes": "ZYX", "unit": "um", "spacing": -0.3})
    tifffile.imwrite(d / "whole.tif", rng.random((8, 40, 40)).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    (d / "cut.tif").write_bytes((d / "whole.tif").read_bytes()[:20000])
    (d / "whole.tif").unlink()
    tifffile.imwrite(d / "rgb.tif", (rng.random((20, 20, 3)) * 255).astype(np.uint8), photometric="rgb")
    tifffile.imwrite(d / "palette.tif", (rng.random((8, 20, 20)) * 255).astype(np.uint8), photometric="palette",
                     colormap=(rng.random((3, 256)) * 65535).astype(np.uint16))
    # finite, but RL's result is not (data whose sums overflow float32 deconvolve: RL runs them scaled)
    save("huge.tif", (rng.random((8, 20, 20)) * 3.4e38).astype(np.float32))
    tifffile.imwrite(d / "hyper.tif", rng.random((2, 6, 2, 20, 20)).astype(np.float32), imagej=True,
                     metadata={"axes": "TZCYX"})
    tifffile.imwrite(d / "psf_zero_spacing.tif", np.ones((3, 5, 5), np.float32), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.0})  # was used unresampled, silently
    with tifffile.TiffWriter(d / "fields.ome.tif", ome=True) as tif:
        tif.write(rng.random((20, 20)).astype(np.float32))
        tif.write(rng.random((20, 20)).astype(np.float32))
    base = ["deconvolve", d / "image.tif", "--psf", d / "psf.tif", "--device", "cpu", "--iterations", 1]
    return {
        "missing input": (["deconvolve", d / "nope.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"], "not found"),
        "not an image": (["deconvolve", d / "text.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"], "text.tif"),
        "1D data": (["deconvolve", d / "line.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"], "1D"),
        "NaN image": (["deconvolve", d / "nan.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"], "NaN"),
        "NaN PSF": (base[:2] + ["--psf", d / "nan_psf.tif", "-o", d / "o.tif"], "NaN"),
        "zero PSF": (base[:2] + ["--psf", d / "zero_psf.tif", "-o", d / "o.tif"], "zero"),
        "negative PSF": (base[:2] + ["--psf", d / "neg_psf.tif", "-o", d / "o.tif"], "negative"),
        "PSF too big": (base[:2] + ["--psf", d / "big_psf.tif", "-o", d / "o.tif"], "larger than the image"),
        "voxel size": (base + ["--voxel-size", 0, 0.1, 0.1, "-o", d / "o.tif"], "positive"),
        "output is input": (base + ["-o", d / "image.tif"], "input"),
        "no such dir": (base + ["-o", d / "missing" / "o.tif"], "missing"),
        "parent is a file": (base + ["-o", d / "afile" / "o.tif"], "afile"),
        "unknown method": (base + ["-o", d / "o.tif", "--method", "magic"], "magic"),
        "missing optics": (["deconvolve", d / "image.tif", "--psf-model", "vectorial", "-o", d / "o.tif"], "--na"),
        "voxel size in file": (["deconvolve", d / "neg_spacing.tif"] + base[2:] + ["-o", d / "o.tif"], "--voxel-size"),
        "truncated file": (["deconvolve", d / "cut.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"], "truncated"),
        "RGB image": (["deconvolve", d / "rgb.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"], "RGB"),
        "palette image": (["deconvolve", d / "palette.tif", "--psf", d / "psf.tif", "-o", d / "o.tif"],
                          "palette.tif is an indexed-colour (palette) TIFF"),
        "palette PSF": (base[:2] + ["--psf", d / "palette.tif", "-o", d / "o.tif"],
                        f"PSF {d / 'palette.tif'} is an indexed-colour (palette) TIFF"),
        "infinite balance": (base + ["-o", d / "o.tif", "--method", "wiener", "--balance", "inf"], "finite"),
        "voxel size in file, zarr": (["deconvolve", d / "neg_spacing.tif"] + base[2:] + ["-o", d / "o.zarr"],
                                     "--voxel-size"),
        "overflowing values": (["deconvolve", d / "huge.tif"] + base[2:-1] + [5, "--voxel-size", 0.3, 0.1, 0.1,
                                                                              "-o", d / "o.tif"], "rescale"),
        "several fields": (["deconvolve", d / "fields.ome.tif"] + base[2:] + ["-o", d / "o.tif"], "separate images"),
        "voxel size in PSF file": (base[:2] + ["--psf", d / "psf_zero_spacing.tif", "-o", d / "o.tif"],
                                   "PSF"),
        "three PSFs": (["deconvolve", d / "hyper.tif", "--psf", d / "psf.tif", d / "psf.tif", d / "psf.tif", "-o",
                        d / "o.tif"], "has 2 channel(s) but 3 PSFs were given"),
    }


BAD_CASES = ["missing input", "not an image", "1D data", "NaN image", "NaN PSF", "zero PSF", "negative PSF",
             "PSF too big", "voxel size", "output is input", "no such dir", "parent is a file", "unknown method",
             "missing optics", "voxel size in file", "truncated file", "RGB image", "palette image", "palette PSF",
             "infinite balance",
             "voxel size in file, zarr", "overflowing values", "several fields", "voxel size in PSF file",
             "three PSFs"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_no_output(data, capsys, case):
    argv, word = bad_cases(data)[case]
    before = sorted(p.name for p in data.rglob("*"))
    snapshot = {p: p.read_bytes() for p in data.glob("*.tif")}
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, word)
    assert sorted(p.name for p in data.rglob("*")) == before, "no file may be created"
    assert all(p.read_bytes() == b for p, b in snapshot.items()), "inputs must not change"


def test_cuda_request_without_gpu_is_a_clean_error(data, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "cuda")
    assert not (data / "o.tif").exists()


def test_every_command_has_help():
    for command in [[], ["psf"], ["psf", "distill"], ["deconvolve"], ["demo"]]:
        proc = subprocess.run([sys.executable, "-m", "deconv3d.cli", *command, "--help"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout


def test_python_dash_m_deconv3d_is_the_cli():
    proc = subprocess.run([sys.executable, "-m", "deconv3d", "deconvolve", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "usage: deconv3d deconvolve" in proc.stdout, proc.stderr


def test_pyramid_levels_for_a_tiff_output_are_named_as_ignored(data, capsys):
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "p.tif",
                        "--iterations", 1, "--pyramid-levels", 2, "--device", "cpu"], capsys)
    assert code == 0 and "--pyramid-levels adds down-sampled levels to a .zarr output" in err and "ignored" in err
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", f"{data / 'p.zarr'}/",
                        "--iterations", 1, "--pyramid-levels", 1, "--device", "cpu"], capsys)
    assert code == 0 and "--pyramid-levels" not in err and (data / "p.zarr" / "1").is_dir()


def test_an_option_the_method_ignores_is_named_when_given_at_its_default(data, capsys):
    """Found by the options review: the options a method ignores were found by comparing their
    values with the defaults, so '--method rl --tv-weight 0.002' and '--method wiener --iterations
    20 --tv-weight 0.002' (the defaults) said nothing. Given is given, abbreviated too; the
    values used and recorded stay those of the run without them."""
    from cli_helpers import tiff_properties

    base = ["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "--device", "cpu"]
    for method, extra, named in (
            ("rl", ["--iterations", 2, "--tv-weight", 0.002, "--ns", 1.33],
             ["--tv-weight does not apply to --method rl", "--ns describes the microscope for --psf-model"]),
            ("wiener", ["--iterations", 20, "--tv-w", 0.002], ["--iterations and --tv-weight do not apply"])):
        outputs = []
        for name, options in (("plain", extra[:2] if method == "rl" else []), ("given", extra)):
            outputs.append(data / f"{method}_{name}.tif")
            code, _, err = run([*base, "-o", outputs[-1], "--method", method, *options], capsys)
            assert code == 0, err
            lines = [line for line in err.splitlines() if "warning" in line]
            expected = named if name == "given" else []
            assert [line.startswith(f"deconv3d: warning: {n}") for n, line in zip(expected, lines)] == \
                [True] * len(lines) and len(lines) == len(expected), (method, options, err)
        plain, given = (tiff_properties(out) for out in outputs)
        assert given["parameters"] == plain["parameters"], (plain, given)
        np.testing.assert_array_equal(tifffile.imread(outputs[1]), tifffile.imread(outputs[0]))


def test_debug_shows_the_traceback_and_keeps_the_exit_status(data, capsys, monkeypatch):
    """--debug printed the traceback by re-raising, so bad input exited 1 instead of 2."""
    import deconv3d.classical

    code, _, err = run(["deconvolve", data / "missing.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--debug"], capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("deconv3d: error:")
    monkeypatch.setattr(deconv3d.classical, "richardson_lucy", lambda *a, **k: 1 / 0)
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--device", "cpu", "--debug"], capsys)
    assert code == 1 and "ZeroDivisionError" in err and "Traceback" in err
    assert not (data / "o.tif").exists()


def test_unexpected_error_exits_1(data, capsys, monkeypatch):
    import deconv3d.classical

    monkeypatch.setattr(deconv3d.classical, "richardson_lucy", lambda *a, **k: 1 / 0)
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--device", "cpu"], capsys)
    assert code == 1 and "internal error" in err and "Traceback" not in err
    assert not (data / "o.tif").exists()


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 745. GiB for an array"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 8 GB")])
def test_running_out_of_memory_is_one_line_not_an_internal_error(data, capsys, monkeypatch, error):
    import deconv3d.classical

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(deconv3d.classical, "richardson_lucy", fail)
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "not enough memory", "smaller sizes")
    assert not (data / "o.tif").exists()


def test_voxel_size_flag_overrides_a_bad_one_in_the_file(data, capsys):
    tifffile.imwrite(data / "neg.tif", np.ones((8, 20, 20), np.float32), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": -0.3})
    out = data / "out.tif"
    code, _, err = run(["deconvolve", data / "neg.tif", "--psf", data / "psf.tif", "--iterations", 1,
                        "--voxel-size", 0.3, 0.1, 0.1, "--device", "cpu", "-o", out], capsys)
    assert code == 0, err
    assert read_image(out).voxel_size == pytest.approx((0.3, 0.1, 0.1))


def test_fiji_stack_without_spacing_keeps_its_calibration(data, capsys):
    """Fiji leaves ``spacing`` out when the z step is 1: the output keeps (1, 0.1, 0.1), not nothing."""
    tifffile.imwrite(data / "fiji.tif", np.ones((8, 20, 20), np.float32), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "unit": "micron"})
    out = data / "out.tif"
    code, _, err = run(["deconvolve", data / "fiji.tif", "--psf", data / "psf.tif", "--iterations", 1,
                        "--device", "cpu", "-o", out], capsys)
    assert code == 0, err
    assert read_image(out).voxel_size == pytest.approx((1.0, 0.1, 0.1))


def test_an_uncalibrated_image_takes_the_psfs_voxel_size_and_says_so(data, capsys):
    """The PSF was used at its own sampling, silently: with a PSF sampled twice as finely as the
    image the result was wrong (correlation with the truth 0.81 against 0.98)."""
    rng = np.random.default_rng(2)
    tifffile.imwrite(data / "bare.tif", rng.random((12, 40, 40)).astype(np.float32) + 0.1)  # no calibration
    grids = np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij")
    write_tiff(data / "fine_psf.tif", np.exp(-sum(g**2 for g in grids) / 8).astype(np.float32),
               voxel_size=(0.15, 0.05, 0.05))
    common = ["--psf", data / "fine_psf.tif", "--iterations", 3, "--device", "cpu"]
    code, _, err = run(["deconvolve", data / "bare.tif", "-o", data / "assumed.tif"] + common, capsys)
    assert code == 0 and "bare.tif carries no voxel size; assuming the PSF's (0.15, 0.05, 0.05) µm" in err, err
    code, _, err = run(["deconvolve", data / "bare.tif", "-o", data / "given.tif", "--voxel-size", 0.15, 0.05, 0.05]
                       + common, capsys)
    assert code == 0 and "warning" not in err, err
    assumed, given = read_image(data / "assumed.tif"), read_image(data / "given.tif")
    np.testing.assert_array_equal(assumed.data, given.data)
    assert assumed.voxel_size == pytest.approx((0.15, 0.05, 0.05))
    code, _, err = run(["deconvolve", data / "bare.tif", "-o", data / "chunked.zarr", "--chunks", 6, 20, 20] + common,
                       capsys)
    assert code == 0 and "assuming the PSF's" in err, err
    # A refused run says only its error, not the warning first, in memory, chunked and for training.
    write_tiff(data / "big_psf.tif", np.ones((13, 9, 9), np.float32), voxel_size=(0.15, 0.05, 0.05))
    for argv in (["deconvolve", data / "bare.tif", "-o", data / "x.tif"],
                 ["deconvolve", data / "bare.tif", "-o", data / "x.zarr"],
                 ["train", data / "bare.tif", "-o", data / "x.ckpt", "--steps", 1]):
        code, _, err = run(argv + ["--psf", data / "big_psf.tif"], capsys)
        assert_one_line_error(code, err, "larger than the image")
    tifffile.imwrite(data / "flat.tif", np.full((12, 40, 40), 3.0, np.float32))  # refused by training itself
    code, _, err = run(["train", data / "flat.tif", "-o", data / "x.ckpt", "--steps", 1, "--psf",
                        data / "fine_psf.tif"], capsys)
    assert_one_line_error(code, err, "constant")


def test_an_image_too_narrow_for_any_psf_is_told_so_not_to_make_a_psf_that_cannot_be_made(tmp_path, capsys):
    """An image of 2 voxels along y or x was told to make a PSF with 'deconv3d psf --shape 1 1', which that
    command refuses (a Y or X side of 1). The line now says the image is too small, in memory and chunked,
    in 2D and 3D; nothing is written."""
    rng = np.random.default_rng(5)
    tifffile.imwrite(tmp_path / "tiny.tif", rng.random((2, 2)).astype(np.float32))
    tifffile.imwrite(tmp_path / "strip.tif", rng.random((9, 2, 40)).astype(np.float32))
    tifffile.imwrite(tmp_path / "p2.tif", rng.random((3, 3)).astype(np.float32))
    tifffile.imwrite(tmp_path / "p3.tif", rng.random((5, 5, 5)).astype(np.float32))
    cases = (("tiny.tif", "p2.tif", "(3, 3) is larger than the image {image} (2, 2) along y, x", "2 along y, 2 along x"),
             ("strip.tif", "p3.tif", "(5, 5, 5) is larger than the image {image} (9, 2, 40) along y", "2 along y"))
    for image, psf, larger, narrow in cases:
        expected = (f"deconv3d: error: PSF {tmp_path / psf} {larger.format(image=tmp_path / image)} (in the image's "
                    f"voxels): the image is too small to deconvolve ({narrow}): image a larger field")
        for output in ("x.tif", "x.zarr"):
            chunks = ["--chunks", *([1, 2, 2] if image == "strip.tif" else [2, 2])] if output.endswith(".zarr") else []
            code, _, err = run(["deconvolve", tmp_path / image, "-o", tmp_path / output, "--psf", tmp_path / psf,
                                "--device", "cpu", *chunks], capsys)
            assert_one_line_error(code, err)
            assert err.strip() == expected, (image, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.tif", "p3.tif", "strip.tif", "tiny.tif"]


def test_an_image_2_voxels_wide_is_too_small_where_only_its_z_is_outgrown(tmp_path, capsys):
    """A PSF of 7 x 2 x 5 on an image of 5 x 2 x 40 (larger along z only, as wide as the image along y) was
    told to make 'deconv3d psf --shape 5 1 5', which that command refuses: the image's 2 voxels along y are
    too small however wide the PSF is there."""
    psf = np.ones((7, 2, 5), np.float32)  # (light to every face: not cropped to a smaller PSF)
    psf[3, :, 2] = 5
    write_tiff(tmp_path / "p.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    tifffile.imwrite(tmp_path / "strip.tif", np.random.default_rng(5).random((5, 2, 40)).astype(np.float32))
    code, _, err = run(["deconvolve", tmp_path / "strip.tif", "-o", tmp_path / "x.tif", "--psf", tmp_path / "p.tif",
                        "--voxel-size", 0.3, 0.1, 0.1, "--device", "cpu"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("deconv3d: error: ")]  # (after the PSF faces' warning)
    assert code == 2 and len(errors) == 1, err
    assert errors[0].endswith("along z (in the image's voxels): the image is too small to deconvolve (2 along y): "
                              "image a larger field"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif", "strip.tif"]


def test_a_psf_with_more_planes_than_the_stack_is_refused_naming_both_files(tmp_path, capsys):
    """Every route (in memory, chunked, training, a batch's row) names the PSF file and the image file
    with their shapes, and says what fits: a 2-plane stack needs a thicker stack or 2D planes, and a
    5-plane one a PSF of at most 5 planes. Nothing is written."""
    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "thin.tif", rng.random((2, 40, 40)).astype(np.float32) + 0.1,
               voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "five.tif", rng.random((5, 40, 40)).astype(np.float32) + 0.1, voxel_size=(0.3, 0.1, 0.1))
    grids = np.meshgrid(np.arange(-15, 16), *[np.arange(-4, 5)] * 2, indexing="ij")
    write_tiff(tmp_path / "tall_psf.tif", np.exp(-sum(g**2 for g in grids) / 8).astype(np.float32),
               voxel_size=(0.3, 0.1, 0.1))
    thin, psf = tmp_path / "in" / "thin.tif", tmp_path / "tall_psf.tif"
    expected = (f"PSF {psf} (31, 9, 9) is larger than the image {thin} (2, 40, 40) along z (in the image's voxels): "
                "2 z-planes are too few for a 3D PSF: image a thicker stack, or deconvolve each plane as a 2D image "
                "with a 2D PSF")
    common = ["--psf", psf, "--device", "cpu"]
    for argv in (["deconvolve", thin, "-o", tmp_path / "x.tif", "--iterations", 1],
                 ["deconvolve", thin, "-o", tmp_path / "x.zarr", "--chunks", 2, 20, 20],
                 ["deconvolve", thin, "-o", tmp_path / "x.tif", "--method", "ssl", "--train-steps", 1],
                 ["train", thin, "-o", tmp_path / "x.ckpt", "--steps", 1]):
        code, _, err = run(argv + common, capsys)
        assert_one_line_error(code, err)
        assert err.strip() == f"deconv3d: error: {expected}", argv
    code, out, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out"] + common, capsys)
    # (a batch's line names the file before the reason, which then says "the image")
    said_of_the_image = expected.replace(f"the image {thin} (2, 40, 40)", "the image (2, 40, 40)")
    assert code == 3 and f"failed  {thin}: {said_of_the_image}" in out + err, out + err
    code, _, err = run(["deconvolve", tmp_path / "five.tif", "-o", tmp_path / "x.tif"] + common, capsys)
    assert_one_line_error(code, err, f"{psf} (31, 9, 9)", f"{tmp_path / 'five.tif'} (5, 40, 40)",
                          "'deconv3d psf --shape 5 9 9 --voxel-size ...'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["five.tif", "in", "out", "tall_psf.tif"]
    assert not list((tmp_path / "out").glob("thin*"))


def test_a_2d_image_takes_the_last_two_voxel_sizes_given_before_the_file(tmp_path, capsys):
    """Options with three values also come before the file names (a "+" count swallowed them)."""
    rng = np.random.default_rng(3)
    tifffile.imwrite(tmp_path / "plane.tif", rng.random((30, 30)).astype(np.float32) + 0.1)
    grids = np.meshgrid(*[np.arange(-2, 3)] * 2, indexing="ij")
    write_tiff(tmp_path / "psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", "--voxel-size", 1, 0.1, 0.1, tmp_path / "plane.tif", "-o", tmp_path / "out.tif",
                        "--psf", tmp_path / "psf.tif", "--iterations", 2], capsys)
    assert code == 0 and "warning" not in err, err
    assert read_image(tmp_path / "out.tif").voxel_size == pytest.approx((0.1, 0.1))


@pytest.mark.parametrize("axes, shape", [("CYX", (3, 16, 16)), ("TYX", (6, 16, 16))])
def test_frames_or_channels_without_z_and_a_3d_psf_are_pointed_to_relabelling(data, capsys, axes, shape):
    """Frames or channels without a z axis are often slices that Fiji labelled as frames."""
    path = data / f"{axes}.tif"
    tifffile.imwrite(path, np.ones(shape, np.float32), imagej=True, metadata={"axes": axes})
    code, _, err = run(["deconvolve", path, "--psf", data / "psf.tif", "-o", data / "o.tif"], capsys)
    assert_one_line_error(code, err, f"has axes {axes}", "relabel them as slices")
    assert not (data / "o.tif").exists()


@pytest.mark.parametrize("axes, count, interval, warned", [
    ("TYX", 6, None, "6 frames and no frame interval"), ("TYX", 6, 2.0, None),
    ("CYX", 12, None, "12 channels and no channel names"), ("CYX", 3, None, None)])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_planes_that_may_be_z_slices_with_a_2d_psf_draw_a_relabel_hint(tmp_path, capsys, axes, count, interval,
                                                                        warned, suffix):
    """Frames without a frame interval (or many unnamed channels) deconvolved plane by plane with a 2D
    PSF ran without a word; a time-lapse that records its interval, or a few channels, still does."""
    rng = np.random.default_rng(5)
    metadata = {"axes": axes, **({"finterval": interval} if interval else {})}
    tifffile.imwrite(tmp_path / "stack.tif", rng.random((count, 16, 16)).astype(np.float32) + 0.1, imagej=True,
                     metadata=metadata)
    grids = np.meshgrid(*[np.arange(-2, 3)] * 2, indexing="ij")
    write_tiff(tmp_path / "psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "stack.tif", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / f"out{suffix}", "--iterations", 1, "--voxel-size", 0.1, 0.1], capsys)
    assert code == 0 and (tmp_path / f"out{suffix}").exists(), err
    if warned is None:
        assert "warning" not in err, err
    else:
        kind = "frames" if axes == "TYX" else "channels"
        assert err.splitlines() == [
            f"deconv3d: warning: {tmp_path / 'stack.tif'} has axes {axes}, {warned}: each plane is deconvolved as a 2D "
            f"image; if its "
            f"{kind} are z-slices, relabel them as slices: Fiji's Image > Properties, and give a 3D PSF"], err


def test_many_channels_with_colours_but_no_names_still_draw_the_relabel_hint(tmp_path, capsys):
    """A grey lookup table per channel is read as the colour FFFFFF: a stack of 12 channels that
    records such LUTs and no labels was taken as named channels and deconvolved plane by plane
    without a word."""
    grey = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    tifffile.imwrite(tmp_path / "stack.tif", np.random.default_rng(5).random((12, 16, 16)).astype(np.float32) + 0.1,
                     imagej=True, metadata={"axes": "CYX", "mode": "grayscale", "LUTs": [grey] * 12})
    grids = np.meshgrid(*[np.arange(-2, 3)] * 2, indexing="ij")
    write_tiff(tmp_path / "psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "stack.tif", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / "out.zarr", "--iterations", 1, "--voxel-size", 0.1, 0.1], capsys)
    assert code == 0 and "stack.tif has axes CYX, 12 channels and no channel names" in err, err


MARKERS = ["DAPI", "CD45", "PanCK", "Ki67", "SMA", "Vimentin", "CD68", "FoxP3", "PD-L1", "Ecad", "Collagen", "HLA-DR"]
ROUNDS = [f"R{i} {m}" for i, m in enumerate(["DAPI", "PanCK", "SMA", "Vimentin", "Ecad", "Collagen", "GFAP", "Actin",
                                               "Tubulin", "Lamin", "Desmin", "Keratin"], 1)]


@pytest.mark.parametrize("labels, names", [
    ([f"z{i:03d}" for i in range(1, 13)], None),  # slice labels: the hint
    ([f"img_{i:04d}.tif" for i in range(7, 19)], None),  # an image sequence's file names
    (MARKERS, MARKERS),  # a multiplexed stack's marker names
    (ROUNDS, ROUNDS),  # numbered, but not one text
    ([f"{w}nm" for w in range(500, 620, 10)], [f"{w}nm" for w in range(500, 620, 10)]),  # a spectral stack
    ([f"z{i:03d}" for i in range(12, 0, -1)], None),  # slice labels counting down: the hint
    ([f"Ch{i}" for i in range(1, 13)], [f"Ch{i}" for i in range(1, 13)]),  # numbered channel names
])
def test_numbered_per_plane_labels_of_many_channels_are_slice_labels_not_names(tmp_path, capsys, labels, names):
    """A CYX stack of 12 planes labelled z001, z002, ... (Fiji's slice labels) had them read as its
    channels' names, which silenced the hint that its channels may be z-slices. Labels that are not
    one text with a number counting up by one are still names, and silence it."""
    tifffile.imwrite(tmp_path / "stack.tif", np.random.default_rng(5).random((12, 16, 16)).astype(np.float32) + 0.1,
                     imagej=True, metadata={"axes": "CYX", "Labels": labels})
    channels = open_lazy(tmp_path / "stack.tif").channels
    assert [c.get("label") for c in channels or [{}] * 12] == (names or [None] * 12)
    grids = np.meshgrid(*[np.arange(-2, 3)] * 2, indexing="ij")
    write_tiff(tmp_path / "psf.tif", np.exp(-sum(g**2 for g in grids) / 2).astype(np.float32), voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "stack.tif", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / "out.zarr", "--iterations", 1, "--voxel-size", 0.1, 0.1], capsys)
    assert code == 0 and ("stack.tif has axes CYX, 12 channels and no channel names" in err) == (names is None), err


@pytest.mark.parametrize("labels, names", [
    ([f"z{i:03d}" for i in range(1, 24, 2)], False),  # every other slice
    ([f"slice {i}" for i in (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15)], False),  # slices with gaps
    ([f"t{i}" for i in range(12, 0, -1)], False),  # time points, counting down
    ([f"img_{i:04d}.tif" for i in range(1, 24, 2)], False),  # Image Sequence, every other file
    ([f"z:{i}/12 - cells" for i in range(1, 13)], False),  # Bio-Formats' position labels
    ([f"c:{i}/12 - cells" for i in range(1, 13)], False),  # positions, not names
    ([f"{i}" for i in range(12, 0, -1)], False),  # bare numbers counting down
    ([f"C{i:02d}" for i in range(1, 13)], True),  # numbered channel names
    ([f"Channel {i}" for i in range(1, 13)], True),
    ([f"ch{i}" for i in range(1, 24, 2)], True),
    ([f"w{i}" for i in range(1, 13)], True),  # MetaMorph's wavelength numbers
    ([f"Wavelength {i}" for i in range(1, 13)], True),
    ([f"{w}nm" for w in range(610, 490, -10)], True),  # wavelengths, counting down
    ([f"{w}nm" for w in (500, 510, 530, 520, 540, 550, 560, 570, 580, 590, 600, 610)], True),  # up and down
    ([f"z{i}" for i in (1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11)], True),  # a number repeated
    ([f"{w}/10 nm" for w in range(500, 620, 10)], True),  # emission bands: centre/width, not a position
    ([f"ET{w}/50" for w in range(400, 760, 30)], True),  # filter names
])
def test_slice_numbering_of_many_channels_is_told_from_channel_names(tmp_path, labels, names):
    """Numbered labels that count down or skip (z010, z009, ...; z001, z003, ...) were read as the
    names of a 12-channel stack's channels, and Ch1 ... Ch12 were read as slice labels: a slice word
    (z, t, slice), a file name or a position out of a total makes labels slice labels however they
    step; a channel word (C, Ch, Channel) keeps them names; no word, labels that step by one."""
    tifffile.imwrite(tmp_path / "stack.tif", np.ones((12, 8, 8), np.float32), imagej=True,
                     metadata={"axes": "CYX", "Labels": labels})
    channels = open_lazy(tmp_path / "stack.tif").channels
    assert [c.get("label") for c in channels or [{}] * 12] == (labels if names else [None] * 12)


def test_a_few_channels_keep_their_names_whatever_their_labels(tmp_path):
    """GFP and RFP are names; so are two or four numbered labels (Ch1, Ch2): only a stack of more
    channels than fluorescence images have (MANY_CHANNELS) has its numbered labels taken as slices."""
    from deconv3d.pipeline.axis_hints import MANY_CHANNELS

    for labels in (["GFP", "RFP"], ["Ch1", "Ch2", "Ch3", "Ch4"], [f"z{i}" for i in range(1, MANY_CHANNELS + 1)]):
        path = tmp_path / f"{len(labels)}.tif"
        tifffile.imwrite(path, np.ones((len(labels), 8, 8), np.float32), imagej=True,
                         metadata={"axes": "CYX", "Labels": labels})
        assert [c.get("label") for c in open_lazy(path).channels] == labels


def test_an_image_with_many_negative_voxels_is_warned_about(data, capsys):
    """Background-subtracted data: RL clipped them to 0 without a word, and so did Wiener, whose
    clipped output's mean came out 50x the data's (user-journey review)."""
    image = read_image(data / "image.tif").data - 0.5  # about 40 % below zero
    write_tiff(data / "offset.tif", image, voxel_size=(0.3, 0.1, 0.1))
    for method, how in (("rl", "Richardson-Lucy counts them as 0"), ("wiener", "Wiener's output is clipped at 0")):
        code, _, err = run(["deconvolve", data / "offset.tif", "--psf", data / "psf.tif", "-o", data / f"{method}.tif",
                            "--method", method, "--iterations", 2, "--device", "cpu"], capsys)
        assert code == 0 and "voxels are negative (a subtracted offset?)" in err and how in err, err
        assert err.rstrip().endswith("add the subtracted offset back"), err
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "plain.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "negative" not in err
    write_tiff(data / "zero.tif", np.zeros((12, 40, 40), np.float32), voxel_size=(0.3, 0.1, 0.1))  # an empty tile
    code, _, err = run(["deconvolve", data / "zero.tif", "--psf", data / "psf.tif", "-o", data / "zero_rl.tif",
                        "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and not read_image(data / "zero_rl.tif").data.any(), err


@pytest.mark.parametrize("value", ["2.5", "ten"])
def test_a_count_that_is_not_a_whole_number_says_so(data, capsys, value):
    """argparse printed "invalid _iterations value" (the converter's name)."""
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif",
                        "--iterations", value], capsys)
    assert_one_line_error(code, err, f"must be a positive whole number or auto, got '{value}'")


@pytest.mark.parametrize("args, said", [
    (["train", "in.tif", "-o", "n.ckpt", "--seed", "-1e0"], "--seed: must be 0 or more, got -1 (given as '-1e0')"),
    (["blur", "train", "a.tif", "-o", "m.ckpt", "--seed", "-1"], "--seed: must be 0 or more, got -1"),
    (["deconvolve", "in.tif", "-o", "o.tif", "--seed", "-0.5"], "--seed: must be a whole number, got '-0.5': pass "
                                                                "e.g. 0"),
    (["train", "in.tif", "-o", "n.ckpt", "--seed", "3.0"], "--seed: must be a whole number in digits alone, got "
                                                           "'3.0': pass 3"),
    (["train", "in.tif", "-o", "n.ckpt", "--seed", "1.5"], "--seed: must be a whole number, got '1.5': pass e.g. 1 "
                                                           "or 2"),
    (["batch", "in", "-o", "out", "--seed", "-1e0"], "--seed: must be 0 or more, got -1 (given as '-1e0')"),
    (["batch", "in", "-o", "out", "--seed", "-0.5"], "--seed: must be a whole number, got '-0.5': pass e.g. 0"),
    (["deconvolve", "in.tif", "-o", "o.zarr", "--pyramid-levels", "inf"], "--pyramid-levels: must be a whole "
                                                                          "number, got 'inf': pass one in digits"),
    (["blur", "train", "a.tif", "-o", "m.ckpt", "--seed", "2.5"], "--seed: must be a whole number, got '2.5': pass "
                                                                  "e.g. 2 or 3"),
])
def test_a_whole_number_option_given_a_decimal_or_an_exponent_says_what_to_pass(capsys, args, said):
    """``--seed -1e0`` (a negative number to the parser, :data:`~deconv3d.cli.arguments.NEGATIVE_NUMBER`)
    met argparse's "invalid int value: '-1e0'", or "invalid _non_negative_int value" (the converter's name);
    a seed is 0 or more on every command (train's "pass -1" led to the settings' refusal of -1)."""
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, f"argument {said}")


@pytest.mark.parametrize("command", [["train", "in.tif", "-o", "n.ckpt"], ["batch", "in", "-o", "out"]])
def test_a_whole_number_option_given_a_word_keeps_argparse_s_line(capsys, command):
    """(batch's --seed said "invalid _non_negative_int value", its converter's name.)"""
    code, _, err = run([*command, "--seed", "abc"], capsys)
    assert_one_line_error(code, err, "argument --seed: invalid int value: 'abc'")


@pytest.mark.parametrize("command", [
    ["deconvolve", "image.tif", "--psf", "psf.tif", "--iterations", "2", "-o", "out.tif"],
    ["psf", "--model", "gaussian", "--shape", "5", "9", "9", "--voxel-size", "0.2", "0.1", "0.1", "--na", "1.2",
     "--wavelength", "0.5", "-o", "out.tif"],
])
def test_a_command_removes_what_a_killed_run_left_of_its_output(data, capsys, monkeypatch, command):
    """Only chunked runs swept hidden temporaries: a killed in-memory run to .tif left its own,
    as large as the output, after any number of successful reruns (found by the review of
    concurrent runs)."""
    from deconv3d._paths import host_tag

    monkeypatch.chdir(data)
    left = data / f".out.tif.{host_tag()}@999999999-0123abcd.tmp"  # a process that no longer runs
    left.write_bytes(b"partial")
    code, _, err = run(command, capsys)
    assert code == 0, err
    assert not left.exists() and (data / "out.tif").is_file()


def test_a_psf_option_before_the_input_says_why_the_input_is_missing(tmp_path, capsys):
    """--psf takes one file per channel, up to the next option: 'deconvolve --psf psf.tif in.tif'
    reads both as PSFs. The error says so instead of only "required: input"."""

    code, _, err = run(["deconvolve", "--psf", "psf.tif", "in.tif", "-o", "out.tif"], capsys)
    assert_one_line_error(code, err, "required: input", "--psf took psf.tif in.tif", "after the input")
    code, _, err = run(["deconvolve", "in.tif", "--psf", "psf.tif"], capsys)
    assert_one_line_error(code, err, "required: -o/--output")
    assert "took" not in err
    code, _, err = run(["deconvolve", "in.tif", "--psf", "a.tif", "b.tif"], capsys)  # the input is first already
    assert_one_line_error(code, err, "required: -o/--output")
    assert "took" not in err
    code, _, err = run(["deconvolve", "--wavelength", 0.5, "in.tif", "-o", "o.tif"], capsys)
    assert_one_line_error(code, err, "--wavelength takes one value per channel", "after the input")
    for argv in (["deconvolve", "in.tif", "-o", "o.tif", "--wavelength", "0.5um"],  # a bad value, no input taken
                 ["psf", "-o", "p.tif", "--wavelength", "p.tif"]):  # a command with no input
        code, _, err = run(argv, capsys)
        assert code == 2 and "invalid" in err and "takes one value per channel" not in err, err


def test_a_log_gets_plain_progress_lines_and_a_short_run_none(tmp_path, capsys, monkeypatch):
    """tqdm hides its bar when stderr is not a terminal, so a cluster job's log showed nothing for
    the hours a run took. There, a line every DECONV3D_PROGRESS_SECONDS (30 by default; 0 here)
    tells how far it is, and one at the end; a run shorter than the interval writes none."""
    psf = np.ones((3, 3, 3), np.float32) / 27
    write_tiff(tmp_path / "in.tif", np.random.default_rng(0).random((8, 16, 16)).astype(np.float32) + 1,
               voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    argv = ["deconvolve", tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--psf", tmp_path / "psf.tif",
            "--iterations", 3]
    code, _, err = run(argv, capsys)
    assert code == 0 and err == "", err
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")
    code, _, err = run(argv, capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["rl: 1/3 it (33%)", "rl: 2/3 it (67%)", "rl: 3/3 it (100%)"], err
    assert "left" in lines[0] and "left" not in lines[-1]  # (the last count said once, not again at the end)
    argv[3] = tmp_path / "out.zarr"  # the chunked path's bar counts blocks
    code, _, err = run(argv + ["--chunks", 4, 16, 16], capsys)
    assert code == 0, err
    assert re.search(r"^rl: (\d+)/\1 block \(100%\), ", err, re.M), err
    from deconv3d.cli.printing import LogBar

    bar = LogBar(None, "ssl", "block")
    clock = iter([100.0, 101.0, 101.0, 102.0, 102.0])  # reset 100 s after the bar was made (a training first)
    bar._clock, bar._start = (lambda: next(clock)), 0.0
    bar.reset(total=4)
    bar.update(1)  # one second after the reset: the interval is 0 here
    bar.update(1)
    said = capsys.readouterr().err.splitlines()
    assert said == ["ssl: 1/4 block (25%), 1 s, about 3 s left", "ssl: 2/4 block (50%), 2 s, about 2 s left"], said
    from deconv3d.cli.pipeline import _bar

    bar, callback = _bar("ssl", "block")  # made before a network trains: its clock starts at the plan
    bar._start = -1000.0
    callback(0, 4)
    assert bar.total == 4 and bar._start != -1000.0


def test_a_warning_during_a_live_bar_on_a_terminal_starts_its_own_line(monkeypatch):
    """Printed into a live bar, a warning began mid-line ("predict: 0tile [00:00, ?tile/s]deconv3d:
    warning: ..."): it goes through tqdm, which clears the bar first and draws it again below."""
    import io

    from deconv3d.cli import printing

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = printing.make_bar(None, "predict", "tile")
    bar.update(1)
    bar.refresh()
    printing.say("deconv3d: warning: look")
    bar.close()
    text = stderr.getvalue()
    assert "predict" in text and "deconv3d: warning: look\n" in text
    before = text[:text.index("deconv3d: warning: look")]
    assert "predict" in before and before[-1] in "\r\n", repr(text)  # the bar cleared: a line of its own


def test_main_called_from_python_leaves_the_caller_s_streams_as_they_were(monkeypatch):
    """main() switches a strict stdout/stderr to backslash escapes for its own output (a file name
    that is not UTF-8), and switches them back when it returns."""
    import io

    from deconv3d.cli import main

    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict") for _ in range(2)]
    monkeypatch.setattr(sys, "stdout", streams[0])
    monkeypatch.setattr(sys, "stderr", streams[1])
    seen = []
    monkeypatch.setattr("deconv3d.cli.build_parser", lambda: seen.append(sys.stdout.errors) or 1 / 0)
    assert main(["deconvolve"]) == 1  # (an internal error: the parser stand-in fails)
    assert seen == ["backslashreplace"] and [s.errors for s in streams] == ["strict", "strict"]


@pytest.mark.parametrize("name, choices, missing", [
    ("DECONV3D_FFT", "auto, torch, fftw", ("fftw", "pyFFTW is not installed")),
    ("DECONV3D_FUSED", "auto, torch, numba", ("numba", "numba is not installed")),
    ("DECONV3D_FFTW_PLANNER", "auto, estimate, measure, patient", None),
])
def test_each_choice_variable_names_its_choices_and_what_a_choice_needs(monkeypatch, name, choices, missing):
    """The three DECONV3D_* choice variables share one reader: blank means auto, case and spaces
    do not matter, another value names the choices, a choice needing a missing package says so."""
    from deconv3d import _fftw, _fftw_planning, _rl_ops
    from deconv3d.errors import InputError

    read = {"DECONV3D_FFT": _fftw.fft_choice, "DECONV3D_FUSED": _rl_ops.fused_choice,
            "DECONV3D_FFTW_PLANNER": _fftw_planning.planner_choice}[name]
    monkeypatch.setenv(name, "  ")
    assert read() == "auto"
    monkeypatch.setenv(name, " Torch " if name != "DECONV3D_FFTW_PLANNER" else " Estimate ")
    assert read() == ("torch" if name != "DECONV3D_FFTW_PLANNER" else "estimate")
    monkeypatch.setenv(name, "fast")
    with pytest.raises(InputError, match=f"^{name}='fast' is not one of {choices}: unset it or pick one$"):
        read()
    if missing:
        choice, why = missing
        monkeypatch.setenv(name, choice)
        monkeypatch.setattr(_fftw if choice == "fftw" else _rl_ops, f"{choice}_available", lambda: False)
        with pytest.raises(InputError, match=f"^{name}={choice} but {why}: pip install"):
            read()


@pytest.mark.parametrize("how", ["-c", "stdin", "-m", "exec"])
def test_a_library_warning_reaches_main_code_however_python_ran_it(how, tmp_path):
    """Code run as __main__ by ``python -c``, ``python -`` or ``python -m``, or compiled under a file
    name by such code: the warning used to fail with "ImportError: '__main__' is not a built-in
    module" / "loader for runme cannot handle __main__" (the warning machinery asked __main__'s
    loader for the line) instead of warning."""
    code = "from deconv3d.errors import warn; warn('deconv3d: warning: look out'); print('went on')"
    (tmp_path / "runme.py").write_text(code + "\n")
    args, stdin, where = {
        "-c": (["-c", code], None, "<string>"),
        "stdin": (["-"], code, "<stdin>"),
        "-m": (["-m", "runme"], None, str(tmp_path / "runme.py")),
        "exec": (["-c", "exec(compile(open('runme.py').read(), 'runme.py', 'exec'))"], None, "runme.py"),
    }[how]
    done = subprocess.run([sys.executable] + args, input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "went on\n"
    assert done.stderr.startswith(f"{where}:1: Deconv3dWarning: look out\n"), done.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_only_a_pipe_or_socket_without_reader_counts_as_a_closed_output(monkeypatch):
    """Found by the review of the closed-pipe exit: a terminal that hung up polls as closed too, so a
    BrokenPipeError from elsewhere (a dask socket) ended as a silent 141 instead of an internal error.
    A pipe whose reader has gone counts, and is then pointed at the null device without a descriptor
    left open."""
    from deconv3d.cli import _stdout_closed

    class Output:
        def __init__(self, fd):
            self.fd = fd

        def fileno(self):
            return self.fd

    master, slave = os.openpty()
    os.close(master)  # the terminal hung up
    read, write = os.pipe()
    os.close(read)  # the reader is gone
    try:
        monkeypatch.setattr(sys, "stdout", Output(slave))
        assert _stdout_closed() is False
        monkeypatch.setattr(sys, "stdout", Output(write))
        before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        assert _stdout_closed() is True
        assert before is None or len(os.listdir("/proc/self/fd")) == before
        assert os.write(write, b"x") == 1  # the null device now
    finally:
        os.close(slave)
        os.close(write)


def test_control_characters_in_names_keep_each_line_one(data, capsys):
    """A newline in a file name split the error, the warning and the "wrote ..." line in two: it is
    shown as \\n (printable non-ASCII stays as it is)."""
    code, _, err = run(["deconvolve", data / "a\nb.tif", "-o", data / "o.tif", "--psf", data / "psf.tif"], capsys)
    assert_one_line_error(code, err, "input file not found", "a\\nb.tif")
    image = read_image(data / "image.tif").data
    write_tiff(data / "x\ny.tif", image)  # (no voxel size: a warning that names it)
    out = data / "µm\rü.tif"
    code, out_text, err = run(["deconvolve", data / "x\ny.tif", "-o", out, "--psf", data / "psf.tif",
                               "--iterations", 2], capsys)
    assert code == 0 and out.is_file(), err
    assert out_text.splitlines() == [out_text.rstrip("\n")] and out_text.startswith(f"wrote {data}/µm\\rü.tif: ")
    assert [line.startswith("deconv3d: warning: ") and "x\\ny.tif" in line for line in err.splitlines()] == [True]


def test_every_character_that_ends_a_line_is_escaped_in_one_line_output():
    """Found by a review: besides C0's, DEL, the C1 controls (NEL, U+0085) and Unicode's line and paragraph
    separators (U+2028, U+2029) went through, and Python's splitlines and some log viewers end a line there."""
    from deconv3d._paths import line_text

    for name, shown in (("a\x85b", "a\\x85b"), ("a\u2028b", "a\\u2028b"), ("a\u2029b", "a\\u2029b"),
                        ("a\x7fb", "a\\x7fb"), ("a\tb", "a\\x09b"), ("a\nb", "a\\nb")):
        assert line_text(name) == shown and len(line_text(name).splitlines()) == 1
    assert line_text("µm ü C:\\new\\x.tif") == "µm ü C:\\new\\x.tif"  # printable text and backslashes kept


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_a_psf_of_other_dimensions_is_refused_naming_both_files_and_how_to_make_one_that_fits(data, capsys, output):
    """A single-plane stack (1 x Y x X) is 2D: with a 3D PSF, an in-memory run said 'PSF is 3D but image
    is 2D: use a PSF with the same number of dimensions', naming neither file nor how to get a 2D PSF;
    the chunked run named the files. Both now say the same, and so for a 3D image and a 2D PSF."""
    plane = np.ones((1, 40, 40), np.uint16) * 100
    tifffile.imwrite(data / "plane.tif", plane, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    write_tiff(data / "psf2d.tif", np.ones((3, 3), np.float32), voxel_size=(0.1, 0.1))
    for image, psf, words in [("plane.tif", "psf.tif", ["psf.tif is 3D", "plane.tif is 2D",
                                                        "--shape 63 63 --voxel-size DY DX"]),
                              ("image.tif", "psf2d.tif", ["psf2d.tif is 2D", "image.tif is 3D", "a 3D PSF"])]:
        code, _, err = run(["deconvolve", data / image, "-o", data / output, "--psf", data / psf], capsys)
        assert_one_line_error(code, err, *words)
        assert not (data / output).exists()


def test_train_refuses_a_psf_of_other_dimensions_as_deconvolve_does(data, capsys):
    """'deconv3d train' with a 2D image and a 3D PSF said 'PSF is 3D but image is 2D: use a PSF with the
    same number of dimensions as the image', naming neither file nor how to get a 2D PSF."""
    plane = np.ones((1, 40, 40), np.uint16) * 100
    tifffile.imwrite(data / "plane.tif", plane, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    code, _, err = run(["train", data / "plane.tif", "--psf", data / "psf.tif", "-o", data / "m.ckpt"], capsys)
    assert_one_line_error(code, err, "psf.tif is 3D", "plane.tif is 2D", "--shape 63 63 --voxel-size DY DX")
    assert "warning" not in err and not (data / "m.ckpt").exists()


def test_psf_takes_y_x_for_a_2d_image_s_psf_the_plane_of_best_focus(data, capsys):
    """'deconv3d psf --shape 31 31 --voxel-size 0.065 0.065' was refused ('expected 3 arguments'): a 2D
    image's PSF needed a z step that no plane uses. Two values give the plane of best focus, as
    generate_psf does for a 2D shape, written 2D with its pixel size; counts that differ are refused."""
    from deconv3d.psf import generate_psf

    optics = ["--model", "gibson-lanni", "--na", 1.2, "--wavelength", 0.52, "--ni", 1.33]
    code, _, err = run(["psf", "-o", data / "p2.tif", "--shape", 15, 15, "--voxel-size", 0.065, 0.065, *optics], capsys)
    assert code == 0, err
    written = read_image(data / "p2.tif")
    expected = generate_psf("gibson-lanni", (15, 15), (0.065, 0.065), 1.2, 0.52, ni=1.33)
    assert written.axes == "YX" and written.voxel_size == pytest.approx((0.065, 0.065))
    np.testing.assert_allclose(written.data, expected, rtol=1e-6, atol=1e-9)
    code, _, err = run(["psf", "-o", data / "p3.tif", "--shape", 15, 15, "--voxel-size", 0.3, 0.1, 0.1, *optics],
                       capsys)
    assert_one_line_error(code, err, "--shape gives 2 values and --voxel-size 3")
    assert not (data / "p3.tif").exists()


@pytest.mark.parametrize("shape", [(9, 1, 15), (1, 1, 1), (15, 1)])
def test_psf_refuses_a_y_or_x_side_of_1_that_deconvolve_could_not_read_back(data, capsys, shape):
    """'deconv3d psf --shape 9 1 15' wrote a file that deconvolve read back as a 2D PSF (its axis of length 1
    dropped) and refused for a 3D image; '--shape 1 1 1' and '15 1' wrote PSFs it refused as 0D and 1D."""
    voxel = (0.3, 0.1, 0.1)[-len(shape):]
    argv = ["psf", "-o", data / "p1.tif", "--model", "gaussian", "--shape", *shape, "--voxel-size", *voxel,
            "--na", 1.2, "--wavelength", 0.5]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "has a Y or X side of 1", "at least 2")
    assert not (data / "p1.tif").exists()


def test_psf_of_one_plane_prints_the_2d_psf_it_reads_back_as(data, capsys):
    """'deconv3d psf --shape 1 31 31' printed "PSF (1, 31, 31), voxel (0.5, 0.1, 0.1)", but the file reads
    back as a 2D PSF (31, 31) at (0.1, 0.1) (the reader drops an axis of one), which deconvolve takes for 2D
    images and refuses for 3D ones: the line says what the file reads back as."""
    argv = ["psf", "-o", data / "p1.tif", "--model", "gaussian", "--shape", 1, 15, 15, "--voxel-size", 0.5, 0.1, 0.1,
            "--na", 1.2, "--wavelength", 0.5]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    written = read_image(data / "p1.tif")
    assert written.data.shape == (15, 15) and written.voxel_size == pytest.approx((0.1, 0.1))
    assert "PSF (15, 15), voxel (0.1, 0.1) µm (one plane: it reads back as a 2D PSF, for 2D images)" in out, out


@pytest.mark.parametrize("threshold", [10**5, 10**5 - 1])
def test_a_large_file_is_hashed_with_a_bar_and_the_same_hash(tmp_path, capsys, monkeypatch, threshold):
    """`train` and `deconvolve` hash their input, a second whole read that left the command silent on a
    stack of gigabytes: a file larger than HASH_PROGRESS_BYTES gets a bar (here a log's lines), one
    not larger none, and the hash is file_sha256's (a file's bytes; a folder's names and bytes)."""
    import hashlib

    from deconv3d.cli import printing
    from deconv3d.omezarr import file_sha256

    monkeypatch.setattr(printing, "HASH_PROGRESS_BYTES", threshold)
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    (tmp_path / "big").mkdir()
    content = np.random.default_rng(0).bytes(10**5)
    (tmp_path / "big" / "a.bin").write_bytes(content[:60000])
    (tmp_path / "big" / "b.bin").write_bytes(content[60000:])
    (tmp_path / "one.bin").write_bytes(content)
    for path in (tmp_path / "one.bin", tmp_path / "big"):
        assert printing.hashed(path, "hashing") == file_sha256(path)
        lines = capsys.readouterr().err.splitlines()
        assert bool(lines) == (threshold < 10**5), lines
        assert all(line.startswith("hashing: ") and " MB (" in line for line in lines), lines
        if lines:
            assert lines[-1].startswith("hashing: 1/1 MB (100%)"), lines
    assert printing.hashed(tmp_path / "one.bin", "") == hashlib.sha256(content).hexdigest()


def test_deconvolve_shows_its_hashing_of_a_large_input(data, capsys, monkeypatch):
    """`deconvolve` of an image read whole hashes its input through printing.hashed (a bar above the threshold)."""
    import hashlib

    from cli_helpers import tiff_properties
    from deconv3d.cli import printing

    monkeypatch.setattr(printing, "HASH_PROGRESS_BYTES", 0)
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    out = data / "o.tif"
    code, _, err = run(["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", out, "--method", "wiener",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert err.splitlines()[0].startswith("deconvolve: hashing the input: "), err
    assert tiff_properties(out)["input_sha256"] == hashlib.sha256((data / "image.tif").read_bytes()).hexdigest()


def test_wiener_in_memory_says_what_it_runs_on_a_large_image(data, capsys, monkeypatch):
    """Wiener on an image read whole has no count for a bar: on 200 x 512 x 512 voxels it was 6-7 s with
    nothing on stderr. Above printing.LONG_STEP_BYTES a line says what runs; below it, none."""
    from deconv3d.cli import printing

    argv = ["deconvolve", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "o.tif", "--method", "wiener",
            "--device", "cpu"]
    code, _, err = run(argv, capsys)
    assert code == 0 and err == "", err
    monkeypatch.setattr(printing, "LONG_STEP_BYTES", 0)
    (data / "o.tif").unlink()
    code, _, err = run(argv, capsys)
    assert code == 0 and err == "wiener: deconvolving (12, 40, 40) in one pass\n", err


def test_chunked_deconvolve_shows_its_hashing_after_the_checks(data, capsys, monkeypatch):
    """The chunked `deconvolve` hashed its input with no bar (a stack of 100 GB: a minute or more of
    silence before the first block): above the threshold its hashing has a bar, after the input's
    checks (the warning they collect is printed after it, then the blocks' bar), the record holds
    hashlib's SHA-256, and an input the checks refuse is not hashed."""
    import hashlib
    import json

    from deconv3d.cli import printing

    monkeypatch.setattr(printing, "HASH_PROGRESS_BYTES", 0)
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    tifffile.imwrite(data / "bare.tif", np.random.default_rng(1).random((12, 40, 40)).astype(np.float32) + 0.1)
    common = ["--psf", data / "psf.tif", "--method", "wiener", "--device", "cpu", "--chunks", 6, 40, 40]
    code, _, err = run(["deconvolve", data / "bare.tif", "-o", data / "o.zarr"] + common, capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("deconvolve: hashing the input: "), err
    said = [i for i, line in enumerate(lines) if "assuming the PSF's" in line]
    blocks = [i for i, line in enumerate(lines) if line.startswith("wiener: ") and " block" in line]
    hashing = [i for i, line in enumerate(lines) if line.startswith("deconvolve: hashing the input: ")]
    assert len(said) == 1 and blocks and max(hashing) < said[0] < min(blocks), err
    record = json.loads((data / "o.zarr" / "zarr.json").read_text())["attributes"]["deconv3d"]
    assert record["input"]["sha256"] == hashlib.sha256((data / "bare.tif").read_bytes()).hexdigest()
    write_tiff(data / "big_psf.tif", np.ones((13, 9, 9), np.float32), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", data / "image.tif", "-o", data / "x.zarr", "--psf", data / "big_psf.tif",
                        "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "larger than the image")  # (no hashing line before it)


def test_batch_shows_the_blocks_of_each_file(data, capsys, monkeypatch):
    """A batch ran each file with no bar: a large file was minutes of silence until its '[N/TOTAL]' line.
    Each file's blocks now have a bar (here a log's lines) naming the method and the file, one file after the other."""
    import shutil

    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    (data / "in").mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(data / "image.tif", data / "in" / name)
    code, out, err = run(["batch", data / "in", "-o", data / "out", "--psf", data / "psf.tif", "--method", "rl",
                          "--iterations", 2, "--device", "cpu"], capsys)
    assert code == 0 and "2 done" in out, err
    lines = err.splitlines()
    for name in ("a.tif", "b.tif"):
        shown = f"rl {data / 'in' / name}: "
        assert re.search(rf"^{re.escape(shown)}(\d+)/\1 block \(100%\), ", err, re.M), err
    last_of_a = max(i for i, line in enumerate(lines) if line.startswith(f"rl {data / 'in' / 'a.tif'}: "))
    assert all(i > last_of_a for i, line in enumerate(lines) if line.startswith(f"rl {data / 'in' / 'b.tif'}: ")), err


def test_a_tif_output_of_the_chunked_route_shows_its_copy(data, capsys, monkeypatch):
    """A .tif output of the chunked route is copied from a scratch OME-Zarr after the last block, about 8 s
    per GB with the blocks' bar at its end and nothing new: the copy now has its own bar (here a log's lines)
    in MB, after the blocks', in deconvolve and in a batch; a .zarr output, written by the blocks, has none."""
    import shutil

    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    common = ["--psf", data / "psf.tif", "--method", "rl", "--iterations", 2, "--device", "cpu"]
    for output in ("o.tif", "o.zarr"):
        code, _, err = run(["deconvolve", data / "image.tif", "-o", data / output, "--chunks", 4, 20, 20, *common],
                           capsys)
        assert code == 0, err
        lines = err.splitlines()
        copying = [i for i, line in enumerate(lines) if line.startswith(f"writing {data / output}: ")]
        assert bool(copying) == output.endswith(".tif"), err
        if copying:
            assert re.match(r"writing .*: (\d+)/\1 MB \(100%\), ", lines[copying[-1]]), err
            assert min(copying) > max(i for i, line in enumerate(lines) if line.startswith("rl: ")), err
    (data / "in").mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(data / "image.tif", data / "in" / name)
    code, out, err = run(["batch", data / "in", "-o", data / "out", "--output-format", "tif", *common], capsys)
    assert code == 0 and "2 done" in out, err
    for name in ("a.tif", "b.tif"):
        assert re.search(rf"^writing {re.escape(str(data / 'out' / name))}: (\d+)/\1 MB \(100%\), ", err, re.M), err


def test_batch_shows_its_hashing_of_a_large_file(data, capsys, monkeypatch):
    """A batch hashes each file for its completion record before running it: above the threshold
    with a bar naming the file (a file of 100 GB was a minute or more of silence), the same hash."""
    import hashlib
    import json
    import shutil

    from deconv3d.cli import printing

    monkeypatch.setattr(printing, "HASH_PROGRESS_BYTES", 0)
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    (data / "in").mkdir()
    shutil.copy(data / "image.tif", data / "in" / "a.tif")
    code, _, err = run(["batch", data / "in", "-o", data / "out", "--psf", data / "psf.tif", "--method", "wiener",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    shown = f"batch: hashing {data / 'in' / 'a.tif'}: "
    hashing = [line for line in err.splitlines() if not line.startswith("wiener ")]  # (then the file's blocks' bar)
    assert hashing and all(line.startswith(shown) for line in hashing), err
    assert f"{shown}1/1 MB (100%)" in err, err
    digest = hashlib.sha256((data / "in" / "a.tif").read_bytes()).hexdigest()
    assert json.loads((data / "out" / ".deconv3d-batch" / "a.tif.json").read_text())["input_sha256"] == digest
    record = json.loads((data / "out" / "a.zarr" / "zarr.json").read_text())["attributes"]["deconv3d"]
    assert record["input"]["sha256"] == digest


def test_counted_says_one_step_not_one_steps():
    """A training's last line read 'wrote m.ckpt: 1 steps (completed)' and an interrupted one 'with the 1 steps
    trained' (self-supervised bug hunt)."""
    from deconv3d.cli.printing import counted

    assert [counted(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
