"""What outputs record for a rerun. Every output says where its PSF came from: the file (path and
SHA-256) or the model and the microscope parameters it was generated from (before, a generated
PSF was recorded only as the prepared array's summary, and a chunked run's TIFF lost the PSF's
shape); how the run was executed and in what environment; a network trained in the run, its
whole recipe (found by the reproducibility review: the seed, patch, batch, learning rate and
network size were missing, so a rebuilt command gave another result)."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from cli_helpers import run, tiff_properties
from deconv3d.io import write_tiff

from .conftest import blurred_beads, gaussian_psf

OPTICS = ["--psf-model", "gibson-lanni", "--na", "1.1", "--wavelength", "0.52", "--ni", "1.4", "--ns", "1.36",
          "--depth", "2.5"]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    psf = gaussian_psf()
    write_tiff(tmp_path / "img.tif", blurred_beads((16, 32, 32), psf, seed=1), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _psf_record(output: Path) -> tuple[dict, list]:
    """(source, shape) of the PSF as an output records them."""
    if output.suffix == ".zarr":
        psf = json.loads((output / "zarr.json").read_text())["attributes"]["deconv3d"]["psf"]
        return psf["source"], psf["shape"]
    properties = tiff_properties(output)
    return properties["psf_source"], properties["psf_shape"]


@pytest.mark.parametrize("output, extra", [("out.tif", []), ("out.zarr", []), ("chunked.tif", ["--chunks", "8", "16", "16"])])
def test_a_generated_psf_is_recorded_with_its_microscope_parameters(folder, capsys, output, extra):
    code, _, err = run(["deconvolve", "img.tif", "-o", output, *OPTICS, "--iterations", "2", *extra], capsys)
    assert code == 0, err
    source, shape = _psf_record(folder / output)
    assert source == {"model": "gibson-lanni", "na": 1.1, "wavelength": 0.52, "ni": 1.4, "ns": 1.36, "depth": 2.5}
    assert len(shape) == 3 and all(n > 1 for n in shape)


@pytest.mark.parametrize("output, extra", [("out.tif", []), ("out.zarr", []), ("chunked.tif", ["--chunks", "8", "16", "16"])])
def test_a_psf_file_is_recorded_by_path_and_hash(folder, capsys, output, extra):
    code, _, err = run(["deconvolve", "img.tif", "-o", output, "--psf", "psf.tif", "--iterations", "2", *extra], capsys)
    assert code == 0, err
    source, shape = _psf_record(folder / output)
    assert source == {"files": [os.path.join(os.getcwd(), "psf.tif")],  # absolute: the working directory is not recorded
                      "sha256": [hashlib.sha256((folder / "psf.tif").read_bytes()).hexdigest()]}
    assert shape == [7, 7, 7]


def test_a_path_through_a_link_names_the_file_used(folder, capsys):
    """``--psf link/../psf.tif``, with ``link`` a symbolic link to ``elsewhere/deep``, reads
    ``elsewhere/psf.tif``; the record named ``psf.tif`` beside the link, another file, for it had
    dropped ``link/..`` as text (reproducibility review). ``..`` is kept as given."""
    (folder / "elsewhere" / "deep").mkdir(parents=True)
    write_tiff(folder / "elsewhere" / "psf.tif", gaussian_psf(sigma=(1.5, 1.2, 1.2)), voxel_size=(0.3, 0.1, 0.1))
    os.symlink(folder / "elsewhere" / "deep", folder / "link")
    code, _, err = run(["deconvolve", "img.tif", "-o", "out.tif", "--psf", "link/../psf.tif", "--iterations", "1"],
                       capsys)
    assert code == 0, err
    source, _ = _psf_record(folder / "out.tif")
    assert source["files"] == [os.path.join(os.getcwd(), "link", "..", "psf.tif")]
    assert hashlib.sha256(Path(source["files"][0]).read_bytes()).hexdigest() == source["sha256"][0]


@pytest.mark.parametrize("output_format", ["zarr", "tif"])
def test_a_batch_records_its_files_by_absolute_path(folder, capsys, output_format):
    """``batch raw -o out --psf psf.tif`` recorded input "raw/img.tif" and PSF "psf.tif", relative to a working
    directory no record holds, while its report named the input by its absolute path (reproducibility review)."""
    (folder / "raw").mkdir()
    (folder / "img.tif").rename(folder / "raw" / "img.tif")
    code, _, err = run(["batch", "raw", "-o", "out", "--psf", "psf.tif", "--iterations", "2",
                        "--output-format", output_format], capsys)
    assert code == 0, err
    here = os.getcwd()
    report = json.loads((folder / "out" / "batch_report.json").read_text())["files"]
    if output_format == "zarr":
        record = json.loads((folder / "out" / "img.zarr" / "zarr.json").read_text())["attributes"]["deconv3d"]
        recorded = record["input"]["path"]
    else:
        recorded = tiff_properties(folder / "out" / "img.tif")["input"]
    assert recorded == report[0]["file"] == os.path.join(here, "raw", "img.tif")
    assert _psf_record(folder / "out" / f"img.{output_format}")[0]["files"] == [os.path.join(here, "psf.tif")]


def test_batch_records_the_generated_psf_s_parameters(folder, capsys):
    (folder / "in").mkdir()
    (folder / "img.tif").rename(folder / "in" / "img.tif")
    code, _, err = run(["batch", "in", "-o", "res", *OPTICS, "--iterations", "2"], capsys)
    assert code == 0, err
    source, _ = _psf_record(folder / "res" / "img.zarr")
    assert source["model"] == "gibson-lanni" and source["wavelength"] == 0.52 and source["depth"] == 2.5




def test_outputs_record_the_input_hash_environment_and_how_the_run_was_split(folder, capsys):
    """The memory limit (which sets the blocks, and with accelerated RL the box its steps are
    measured on) was missing, and so were the device, threads and FFT backend; a TIFF output had no
    input hash or time."""
    digest = hashlib.sha256((folder / "img.tif").read_bytes()).hexdigest()
    for output, extra in (("mem.tif", []), ("lim.zarr", ["--memory-limit", "3GB"])):
        code, _, err = run(["deconvolve", "img.tif", "-o", output, "--psf", "psf.tif", "--iterations", "2",
                            "--device", "cpu", *extra], capsys)
        assert code == 0, err
    tiff = tiff_properties(folder / "mem.tif")
    assert tiff["input_sha256"] == digest and tiff["created"].startswith("20") and "model_sha256" not in tiff
    record = json.loads((folder / "lim.zarr" / "zarr.json").read_text())["attributes"]["deconv3d"]
    assert record["input"]["sha256"] == digest
    assert record["execution"]["memory_limit"] == "3GB" and record["execution"]["workers"] == 1
    for environment in (tiff["environment"], record["environment"]):
        assert environment["device"] == "cpu" and environment["threads"] >= 1
        assert environment["fft"].split()[0] in ("torch", "fftw") and environment["torch"]


def test_a_network_trained_in_memory_records_its_whole_recipe(folder, capsys):
    code, _, err = run(["deconvolve", "img.tif", "-o", "ssl.tif", "--psf", "psf.tif", "--method", "ssl",
                        "--train-steps", "2", "--seed", "7", "--patch", "16", "--batch", "1", "--base-channels", "4",
                        "--unet-depth", "2", "--no-residual", "--warm-start", "0"], capsys)
    assert code == 0, err
    params = tiff_properties(folder / "ssl.tif")["parameters"]
    assert params["train_steps"] == 2 and params["warm_start"] == 0
    assert params["training"]["seed"] == 7 and params["training"]["patch"] == 16 and params["training"]["batch"] == 1
    assert params["unet"]["base_channels"] == 4 and params["unet"]["depth"] == 2


def _backends_used(monkeypatch) -> set:
    """Filled, as a run goes, with the backends its Richardson-Lucy loops chose (deconv3d._fftw)."""
    from deconv3d.classical import _iterate

    used, real = set(), _iterate.real_transforms

    def recording(*args, **kwargs):
        transforms = real(*args, **kwargs)
        used.add("fftw" if type(transforms).__name__.startswith("FFTW") else "torch")
        return transforms

    monkeypatch.setattr(_iterate, "real_transforms", recording)
    return used


def _recorded_environment(folder, output, extra, capsys) -> dict:
    """The environment the record of ``deconvolve img.tif -o OUTPUT`` (2 RL iterations, or ``extra``) holds."""
    code, _, err = run(["deconvolve", "img.tif", "-o", output, "--psf", "psf.tif", "--iterations", "2",
                        "--device", "cpu", *extra], capsys)
    assert code == 0, err
    if output.endswith(".zarr"):
        return json.loads((folder / output / "zarr.json").read_text())["attributes"]["deconv3d"]["environment"]
    return tiff_properties(folder / output)["environment"]


SSL = ["--method", "ssl", "--train-steps", "1", "--patch", "16", "--batch", "1", "--base-channels", "4",
       "--unet-depth", "2"]


@pytest.mark.parametrize("min_voxels", [None, 1])
@pytest.mark.parametrize("output, extra", [("rl.tif", []), ("rl.zarr", ["--chunks", "8", "16", "16"]),
                                           ("rl-chunked.tif", ["--chunks", "8", "16", "16"]),
                                           ("wiener.tif", ["--method", "wiener"]), ("ssl.tif", SSL)])
def test_the_environment_names_the_fft_backend_the_run_used(folder, capsys, monkeypatch, min_voxels, output, extra):
    """FFTW installed, every record said "fftw (auto)", though images under FFTW_MIN_VOXELS, Wiener and
    the network itself use torch's FFT (reproducibility review). The record now names the backend chosen
    for the run's transforms: those of its Richardson-Lucy loops (a residual network's reference too)."""
    from deconv3d import _fftw

    monkeypatch.delenv("DECONV3D_FFT", raising=False)
    if min_voxels is None:  # as where pyFFTW is installed, with these images below its threshold
        monkeypatch.setattr(_fftw, "fftw_available", lambda: True)
    elif not _fftw.fftw_available():
        pytest.skip("pyFFTW not installed (extra 'fftw')")
    else:
        monkeypatch.setattr(_fftw, "FFTW_MIN_VOXELS", min_voxels)
    used = _backends_used(monkeypatch)
    environment = _recorded_environment(folder, output, extra, capsys)
    assert used == (set() if "wiener" in output else {"torch"} if min_voxels is None else {"fftw"})
    assert environment["fft"] == " and ".join(sorted(used) or ["torch"]) + " (auto)"
    assert ("fftw_planner" in environment) == ("fftw" in used)


@pytest.mark.parametrize("fused, min_voxels", [("auto", 1), ("auto", None), ("torch", 1)])
@pytest.mark.parametrize("output, extra", [("rl.tif", []), ("rl.zarr", ["--chunks", "8", "16", "16"]),
                                           ("wiener.tif", ["--method", "wiener"])])
def test_the_environment_names_the_element_wise_passes_the_run_used(folder, capsys, monkeypatch, fused, min_voxels,
                                                                    output, extra):
    """Numba's fused passes and torch's round differently (rl-20 outputs 1.2e-5 of the maximum apart),
    but the records of the two runs were the same: the record now names the passes Richardson-Lucy's
    loops ran (``fused``, with numba's version where they were numba's); a run without them has none.
    These images are below FUSED_MIN_VOXELS (``min_voxels`` None): torch's passes, under auto too."""
    from deconv3d import _rl_ops
    from deconv3d.classical import _iterate

    if min_voxels is not None:
        monkeypatch.setattr(_rl_ops, "FUSED_MIN_VOXELS", min_voxels)
    used, real = set(), _iterate.ops_for
    monkeypatch.setattr(_iterate, "ops_for", lambda *a: used.add(real(*a).__name__) or real(*a))
    monkeypatch.setenv("DECONV3D_FUSED", fused)
    environment = _recorded_environment(folder, output, extra, capsys)
    if "wiener" in output:
        assert used == set() and "fused" not in environment and "numba" not in environment
        return
    numba = fused == "auto" and _rl_ops.numba_available() and min_voxels is not None
    assert used == {"FusedOps" if numba else "TorchOps"}
    assert environment["fused"] == ("numba" if numba else "torch") + (" (auto)" if fused == "auto" else "")
    if numba:
        import numba as nb

        assert environment["numba"] == nb.__version__
    else:
        assert "numba" not in environment


@pytest.mark.parametrize("boundary", ["bertero", "zero", "reflect"])
@pytest.mark.parametrize("extra", [[], ["--no-accelerate"]])
def test_a_chunked_run_records_the_transforms_its_blocks_run(folder, capsys, monkeypatch, boundary, extra):
    """The shapes whose backend a chunked run records (its blocks', cut at the volume's faces, and the
    box its acceleration steps are measured on) are those its Richardson-Lucy loops transform."""
    from deconv3d.classical import _iterate
    from deconv3d.pipeline import records

    ran, predicted = set(), []
    real_transforms, real_environment = _iterate.real_transforms, records.run_fft_environment
    monkeypatch.setattr(_iterate, "real_transforms", lambda shape, *a, **k: ran.add(tuple(shape)) or
                        real_transforms(shape, *a, **k))
    monkeypatch.setattr(records, "run_fft_environment", lambda env, shapes: predicted.extend(shapes) or
                        real_environment(env, shapes))
    monkeypatch.setattr("deconv3d.pipeline.run.run_fft_environment", records.run_fft_environment)
    code, _, err = run(["deconvolve", "img.tif", "-o", "c.zarr", "--psf", "psf.tif", "--iterations", "2",
                        "--boundary", boundary, "--chunks", "8", "12", "20", *extra], capsys)
    assert code == 0, err
    assert len(ran) > 1 and ran == set(predicted)


def test_per_channel_psfs_are_each_summarised(tmp_path, capsys):
    """With ``--psf A B`` the record's PSF block described A alone (B only as a fingerprint among
    the parameters); it now lists every channel's summary, its own keys still channel 0's."""
    import numpy as np

    from deconv3d.omezarr import read_ome_zarr, write_ome_zarr

    psfs = [gaussian_psf((5, 5, 5), (1.0, 0.8, 0.8)), gaussian_psf((5, 7, 7), (1.4, 1.3, 1.3))]
    write_ome_zarr(tmp_path / "two.zarr", np.stack([blurred_beads((8, 16, 16), p, seed=c) for c, p in enumerate(psfs)]),
                   axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    for c, p in enumerate(psfs):
        write_tiff(tmp_path / f"psf{c}.tif", p, voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / "out.zarr", "--method", "wiener",
                        "--psf", tmp_path / "psf0.tif", tmp_path / "psf1.tif"], capsys)
    assert code == 0, err
    record = read_ome_zarr(tmp_path / "out.zarr")[3]["deconv3d"]
    summaries = record["psf"]["per_channel"]
    assert len(summaries) == 2
    for summary, psf in zip(summaries, psfs):
        assert summary["shape"] == list(psf.shape) and summary["sum"] == pytest.approx(1.0, rel=1e-5)
        assert summary["peak_index"] == [n // 2 for n in psf.shape]
        widths = []
        for axis in range(3):  # the square root of the second central moment along each axis
            profile = psf.sum(axis=tuple(a for a in range(3) if a != axis)).astype(np.float64)
            x = np.arange(profile.size)
            widths.append(np.sqrt((profile * (x - (profile * x).sum()) ** 2).sum()))
        assert summary["rms_width_voxels"] == pytest.approx(widths, abs=1e-4)
    assert [s["sha256_16"] for s in summaries] == record["parameters"]["per_channel_psf_sha256_16"]
    assert {k: v for k, v in record["psf"].items() if k not in ("per_channel", "source")} == summaries[0]


@pytest.mark.parametrize("method", ["rl", "ssl"])
def test_an_in_memory_run_records_the_files_it_read_not_those_there_at_its_end(folder, capsys, monkeypatch, method):
    """The input, model and PSF files were hashed after the deconvolution: one replaced meanwhile
    (a new training writing the model, a copy over the input) was recorded in place of the one
    the run read (found by the review of concurrent runs)."""
    import shutil

    import numpy as np

    import deconv3d.classical
    import deconv3d.selfsup
    from deconv3d.io import read_image

    from .test_channel_models import _untrained_model

    psf, image = gaussian_psf(), read_image(folder / "img.tif").data
    _untrained_model(folder / "m.ckpt", psf, image, seed=0)
    _untrained_model(folder / "other.ckpt", psf, image, seed=1)
    write_tiff(folder / "other.tif", np.flip(image, 1).copy(), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(folder / "other_psf.tif", gaussian_psf(sigma=(1.5, 1.2, 1.2)), voxel_size=(0.3, 0.1, 0.1))
    read = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("img.tif", "psf.tif", "m.ckpt")}

    def replacing_files_after(compute):
        def run_it(*args, **kwargs):
            result = compute(*args, **kwargs)
            for name, other in (("img.tif", "other.tif"), ("psf.tif", "other_psf.tif"), ("m.ckpt", "other.ckpt")):
                shutil.copy(folder / other, folder / name)
            return result
        return run_it

    monkeypatch.setattr(deconv3d.classical, "richardson_lucy", replacing_files_after(deconv3d.classical.richardson_lucy))
    # (the network's output is not what is checked: the image itself stands for it, in a fraction of the time)
    monkeypatch.setattr(deconv3d.selfsup, "apply_model", replacing_files_after(lambda trained, data, **kwargs: data))
    given = ["--psf", "psf.tif", "--iterations", "2"] if method == "rl" else ["--model", "m.ckpt"]
    code, _, err = run(["deconvolve", "img.tif", "-o", "out.tif", "--method", method, *given, "--device", "cpu"], capsys)
    assert code == 0, err
    recorded = tiff_properties(folder / "out.tif")
    assert recorded["input_sha256"] == read["img.tif"] != hashlib.sha256((folder / "img.tif").read_bytes()).hexdigest()
    if method == "rl":
        assert recorded["psf_source"]["sha256"] == [read["psf.tif"]]
    else:
        assert recorded["model_sha256"] == read["m.ckpt"]


@pytest.mark.parametrize("extra", [[], ["--chunks", "8", "16", "16"]], ids=["whole", "chunked"])
def test_a_tiff_output_records_the_psf_summary_an_ome_zarr_output_records(folder, capsys, extra):
    """Found by the README review: the README says every output records the PSF as used (shape, sum,
    peak, RMS width, fingerprint), but a TIFF's properties kept only its shape, fingerprint and source."""
    summaries = []
    for output in ("out.zarr", "out.tif"):
        code, _, err = run(["deconvolve", "img.tif", "-o", output, "--psf", "psf.tif", "--iterations", "2", *extra],
                           capsys)
        assert code == 0, err
        if output.endswith(".zarr"):
            summaries.append(json.loads((folder / output / "zarr.json").read_text())["attributes"]["deconv3d"]["psf"])
        else:
            properties = tiff_properties(folder / output)
            summaries.append(properties["psf"])
            assert (properties["psf_shape"], properties["psf_sha256_16"]) == (summaries[1]["shape"],
                                                                              summaries[1]["sha256_16"])
    assert summaries[1] == summaries[0] and {"sum", "peak_index", "rms_width_voxels"} <= set(summaries[1])


def test_a_batch_progress_line_of_a_name_with_a_newline_stays_one_line(folder, capsys):
    """Found by a review: the batch's per-file line printed a file name with a newline as two lines."""
    (folder / "raw").mkdir()
    os.replace(folder / "img.tif", folder / "raw" / "a\nb.tif")
    code, out, err = run(["batch", "raw", "-o", "out", "--psf", "psf.tif", "--iterations", "1"], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("[1/1]")]
    assert len(lines) == 1 and lines[0].endswith("a\\nb.tif"), out


@pytest.mark.parametrize("amx", [True, False])
def test_a_batch_ssl_output_records_the_precision_its_network_ran_in(folder, capsys, monkeypatch, amx):
    """A chunked ssl batch's output names the precision its network's inference ran in (bfloat16 where amp is on
    and the CPU has AMX, float32 with --no-amp or without AMX: amp alone does not say which), as the
    precision the run's predictions asked for. (A mutation audit found that dropping it from the ssl block's
    parameters went unnoticed by these tests.)"""
    import torch

    from deconv3d import _torch_common
    from deconv3d.io import read_image
    from deconv3d.omezarr import read_ome_zarr
    from deconv3d.selfsup import network_runner

    from .test_channel_models import _untrained_model

    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: amx)
    ran = []  # the autocast dtype each of the run's networks was given (None: float32)
    real = network_runner.amp_dtype
    monkeypatch.setattr(network_runner, "amp_dtype", lambda amp, device: ran.append(real(amp, device)) or ran[-1])
    _untrained_model(folder / "m.ckpt", gaussian_psf(), read_image(folder / "img.tif").data)
    for extra, precision in (([], "bfloat16" if amx else "float32"), (["--no-amp"], "float32")):
        out, ran[:] = folder / f"out{len(extra)}", []
        code, _, err = run(["batch", folder, "-o", out, "--method", "ssl", "--model", "m.ckpt", "--pattern", "img.tif",
                            "--chunks", "8", "16", "16", "--device", "cpu", *extra], capsys)
        assert code == 0, err
        params = read_ome_zarr(out / "img.zarr")[3]["deconv3d"]["parameters"]
        assert params["inference_precision"] == precision
        assert ran and {_torch_common.dtype_name(d or torch.float32) for d in ran} == {precision}
