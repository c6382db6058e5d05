"""``deconv3d blur train|synth|deblur``: exit codes, output shapes, one-line errors, nothing left behind."""

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cli_helpers import run, assert_one_line_error, tiff_properties
from deconv3d.cli import main
from deconv3d.errors import InputError
from deconv3d.io import read_image, write_tiff
from deconv3d.latent.checkpoint import FORMAT, load_checkpoint
from deconv3d.latent.ops import FormWarning
from deconv3d.omezarr.reading import open_lazy

TINY = ["--widths", "4", "8", "--crop", "16", "--steps", "3", "--batch", "2", "--device", "cpu"]


def write_stacks(folder, make_stacks, n=2, size=16):
    paths = []
    for i, stack in enumerate(make_stacks(n_images=n, size=size, seed=7)):
        paths.append(folder / f"stack{i}_{size}.tif")
        write_tiff(paths[-1], 100 * stack + 10, voxel_size=(0.5, 0.1, 0.1))
    return paths


@pytest.fixture
def planes(tmp_path, make_stacks):
    stack = make_stacks(n_images=1, size=16, seed=3)[0]
    paths = {}
    for name, plane in (("far", stack[0]), ("mid", stack[1]), ("near", stack[2])):
        paths[name] = tmp_path / f"{name}.tif"
        write_tiff(paths[name], 50 * plane, voxel_size=(0.1, 0.1))
    write_tiff(tmp_path / "big.tif", np.ones((20, 20)) + np.eye(20))
    write_tiff(tmp_path / "small.tif", np.ones((8, 8)) + np.eye(8))
    write_tiff(tmp_path / "small2.tif", np.ones((8, 8)) + np.eye(8)[::-1])
    write_tiff(tmp_path / "stack.tif", stack)
    return tmp_path, paths


@pytest.fixture
def model(tmp_path, make_stacks, capsys):
    stacks = write_stacks(tmp_path, make_stacks)
    out = tmp_path / "ae.ckpt"
    code, _, err = run(["blur", "train", *stacks, "-o", out, *TINY], capsys)
    assert code == 0, err
    return out


PAPER = ["--no-residual", "--latent-weight", "0.5", "--latent-norm", "none"]


@pytest.mark.parametrize("variant, extra, residual", [("baseline", [], False), ("implicit", [], True),
                                                      ("explicit", [], True), ("explicit", PAPER, False),
                                                      ("implicit", ["--no-residual"], False)])
def test_train_writes_a_checkpoint(tmp_path, make_stacks, capsys, variant, extra, residual):
    stacks = write_stacks(tmp_path, make_stacks)
    out = tmp_path / f"{variant}.ckpt"
    code, stdout, err = run(["blur", "train", *stacks, "-o", out, "--variant", variant, "--seed", "2", *extra, *TINY],
                            capsys)
    assert code == 0, err
    trained = load_checkpoint(out)
    assert trained.config.variant == variant and trained.config.steps == 3 and trained.config.seed == 2
    assert trained.config.residual == residual  # by default the residual form, except for baseline
    assert trained.config.latent_weight == (0.5 if extra == PAPER else 0.01)
    assert trained.config.latent_norm == ("none" if extra == PAPER else "endpoints")
    assert trained.ae_config.widths == (4, 8) and trained.ae_config.crop == 16
    assert trained.levels.tolist() == [0.0, 1.0, 2.0] and trained.best_score is not None
    assert "wrote" in stdout


@pytest.mark.parametrize("flag, amp", [([], True), (["--no-amp"], False)])
def test_train_records_the_mixed_precision_setting_and_what_ran(tmp_path, make_stacks, capsys, flag, amp):
    stacks = write_stacks(tmp_path, make_stacks)
    out = tmp_path / "m.ckpt"
    code, stdout, err = run(["blur", "train", *stacks, "-o", out, *flag, *TINY], capsys)
    assert code == 0, err
    trained = load_checkpoint(out)
    assert trained.config.amp is amp and trained.run["train_steps"] == 3
    ran = trained.run["precision"]
    assert ran == "float32" if not amp else ran in ("float32", "bfloat16")  # bfloat16 where the CPU has AMX
    assert f"(completed), {ran}" in stdout


def test_train_on_one_stack_validates_on_tiles(tmp_path, make_stacks, capsys):
    stack = write_stacks(tmp_path, make_stacks, n=1, size=32)
    out = tmp_path / "one.ckpt"
    code, _, err = run(["blur", "train", *stack, "-o", out, "--levels", "4", "0", "2", *TINY], capsys)
    assert code == 0, err
    trained = load_checkpoint(out)
    assert trained.best_score is not None and trained.plane_shape == (32, 32)  # the planes, not the tiles
    assert trained.levels.tolist() == [0.0, 2.0, 4.0]


def test_synth_writes_one_plane_per_level(planes, model, capsys):
    folder, p = planes
    out = folder / "synth.tif"
    code, _, err = run(["blur", "synth", "--model", model, p["far"], p["near"], "--levels", 4, "-o", out,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    # The levels are ImageJ frames (TYX), not slices: written as slices without a spacing, Fiji and
    # read_image took them for z planes 1 µm apart (read_image gave voxel size (1.0, 0.1, 0.1)).
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TYX" and tif.imagej_metadata["frames"] == 4
        assert "slices" not in tif.imagej_metadata and "spacing" not in tif.imagej_metadata
        assert "finterval" not in tif.imagej_metadata  # no time step either: they are levels
        properties = tif.imagej_metadata["Properties"]
        data = tif.asarray()
    assert data.shape == (4, 16, 16) and data.dtype == np.float32 and np.isfinite(data).all()
    image = open_lazy(out)
    assert image.axes == "TYX" and image.voxel_size == pytest.approx((0.1, 0.1))  # the planes' pixel size
    with pytest.raises(InputError, match="time axis"):  # not silently a z stack
        read_image(out)
    assert properties["first_axis"].startswith("blur level, not z")
    assert json.loads(properties["fractions"]) == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-6)
    with pytest.raises(SystemExit):
        main(["blur", "synth", "--help"])
    assert "blur levels along ImageJ's time axis (frames), not z" in " ".join(capsys.readouterr().out.split())


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_outputs_and_checkpoints_record_their_inputs_for_a_rerun(planes, make_stacks, capsys, monkeypatch):
    """synth and deblur recorded their planes by the names given alone (no SHA-256, no model path, no
    environment), and blur train's checkpoints neither their stacks, the deconv3d version nor the time
    of saving, which deconvolve's outputs and deconv3d train's checkpoints record (reproducibility review)."""
    from deconv3d import __version__

    folder, _ = planes
    monkeypatch.chdir(folder)  # (names relative to it: recorded absolute)
    here = os.getcwd()
    stacks = [p.name for p in write_stacks(folder, make_stacks)]
    code, _, err = run(["blur", "train", *stacks, "-o", "ae.ckpt", *TINY], capsys)
    assert code == 0, err
    record = load_checkpoint("ae.ckpt").run
    assert record["training_stacks"] == [{"path": os.path.join(here, s), "sha256": _sha256(s)} for s in stacks]
    assert record["deconv3d_version"] == __version__ and record["saved"].startswith("20")
    for command, given, extra in (("synth", {"far": "far.tif", "near": "near.tif"}, ["--levels", 2]),
                                  ("deblur", {"far": "far.tif", "level": "mid.tif"}, ["--alpha", 0.5])):
        code, _, err = run(["blur", command, "--model", "ae.ckpt", *given.values(), *extra, "-o", f"{command}.tif",
                            "--device", "cpu"], capsys)
        assert code == 0, err
        properties = tiff_properties(f"{command}.tif")
        for role, name in given.items():
            assert properties[role] == os.path.join(here, name) and properties[f"{role}_sha256"] == _sha256(name)
        assert properties["model"] == os.path.join(here, "ae.ckpt") and properties["created"].startswith("20")
        # the whole SHA-256, as deconvolve records a model's (they kept its first 16 digits alone)
        assert properties["model_sha256"] == _sha256("ae.ckpt") and "model_sha256_16" not in properties
        environment = properties["environment"]
        assert environment["device"] == "cpu" and environment["threads"] >= 1 and "fft" not in environment


def test_synth_residual_keeps_the_end_planes(planes, model, capsys):
    folder, p = planes
    out = folder / "res.tif"
    code, _, err = run(["blur", "synth", "--model", model, p["far"], p["near"], "--levels", 3, "--residual",
                        "-o", out, "--device", "cpu"], capsys)
    assert code == 0, err
    data = tifffile.imread(out)  # (levels as frames: read_image refuses a time axis)
    far, near = read_image(p["far"]).data, read_image(p["near"]).data
    np.testing.assert_allclose(data[0], far, atol=1e-4 * np.abs(far).max())
    np.testing.assert_allclose(data[-1], near, atol=1e-4 * np.abs(near).max())


def test_synth_and_deblur_default_to_the_form_the_model_was_trained_in(planes, model, tmp_path, make_stacks,
                                                                      capsys):
    from deconv3d.latent.ops import deblur, synthesize_blur

    folder, p = planes
    far, near, mid = (read_image(p[k]).data for k in ("far", "near", "mid"))
    paper_model = tmp_path / "paper.ckpt"  # the model fixture's: explicit, default (residual) form
    code, _, err = run(["blur", "train", *write_stacks(tmp_path, make_stacks), "-o", paper_model, "--no-residual",
                        *TINY], capsys)
    assert code == 0, err
    for ckpt, trained_residual in ((model, True), (paper_model, False)):
        trained = load_checkpoint(ckpt)
        assert trained.config.residual is trained_residual
        for i, (flag, residual) in enumerate((([], trained_residual), (["--residual"], True),
                                              (["--no-residual"], False))):
            synth, sharp = folder / f"s_{ckpt.stem}_{i}.tif", folder / f"d_{ckpt.stem}_{i}.tif"
            other = residual != trained_residual  # a form the model was not trained in: said, once per command
            code, _, err = run(["blur", "synth", "--model", ckpt, p["far"], p["near"], "--levels", 3, *flag,
                                "-o", synth, "--device", "cpu"], capsys)
            assert code == 0 and err.count("not trained for") == other, err
            code, _, err = run(["blur", "deblur", "--model", ckpt, p["far"], p["mid"], "--alpha", 0.5, *flag,
                                "-o", sharp, "--device", "cpu"], capsys)
            assert code == 0 and err.count("not trained for") == other, err
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FormWarning)
                expected = synthesize_blur(trained.model, far, near, [0.0, 0.5, 1.0], residual=residual)
                expected_sharp = deblur(trained.model, far, mid, 0.5, residual=residual)
            np.testing.assert_allclose(tifffile.imread(synth), expected, rtol=1e-5,
                                       atol=1e-5 * np.abs(expected).max())
            expected = expected_sharp
            np.testing.assert_allclose(read_image(sharp).data, expected, rtol=1e-5,
                                       atol=1e-5 * np.abs(expected).max())


def test_synth_extrapolates_and_pads_odd_sizes(planes, model, capsys):
    folder, p = planes
    out = folder / "ext.tif"
    near = folder / "big_near.tif"  # (one file given as both planes is refused)
    write_tiff(near, np.ones((20, 20)) + np.eye(20)[::-1])
    code, _, err = run(["blur", "synth", "--model", model, folder / "big.tif", near, "--levels", 3,
                        "--range", "-0.5", "1.5", "-o", out, "--device", "cpu"], capsys)
    assert code == 0, err
    assert tifffile.imread(out).shape == (3, 20, 20)


def test_deblur_writes_a_plane_with_the_pixel_size(planes, model, capsys):
    folder, p = planes
    out = folder / "sharp.tif"
    code, _, err = run(["blur", "deblur", "--model", model, p["far"], p["mid"], "--alpha", 0.5, "-o", out,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    image = read_image(out)
    assert image.data.shape == (16, 16) and image.voxel_size == pytest.approx((0.1, 0.1))


def test_deblur_residual_matches_the_library(planes, model, capsys):
    from deconv3d.latent.ops import deblur

    folder, p = planes
    out = folder / "sharp_res.tif"
    code, _, err = run(["blur", "deblur", "--model", model, p["far"], p["mid"], "--alpha", 0.5, "--residual",
                        "-o", out, "--device", "cpu"], capsys)
    assert code == 0, err
    far, mid = read_image(p["far"]).data, read_image(p["mid"]).data
    trained = load_checkpoint(model)
    expected = deblur(trained.model, far, mid, 0.5, residual=True)
    np.testing.assert_allclose(read_image(out).data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    with pytest.warns(FormWarning, match="trained in the residual form"):
        assert np.abs(expected - deblur(trained.model, far, mid, 0.5, residual=False)).max() > 0


def test_train_errors(tmp_path, make_stacks, planes, capsys):
    folder, p = planes
    stacks = write_stacks(tmp_path, make_stacks)
    other = write_stacks(tmp_path, make_stacks, n=1, size=32)
    out = tmp_path / "bad.ckpt"
    cases = [
        ([p["far"], stacks[0]], [], "plane"),  # a single plane where a stack is needed
        ([stacks[0], other[0]], [], "shape"),  # stacks of different shapes
        (stacks, ["--levels", "0", "1"], "levels"),
        (stacks, ["--crop", "10"], "crop"),
        (stacks, ["--crop", "32"], "crop"),
        (stacks, ["--variant", "other"], "variant"),
        (stacks, ["--val-fraction", "1"], "--val-fraction"),
        (stacks, ["--val-fraction", "nan"], "--val-fraction"),
        (stacks, ["--val-fraction", "-0.5"], "--val-fraction"),
        (stacks, ["--variant", "baseline", "--residual"], "baseline"),
        (stacks, ["--latent-weight", "-1"], "--latent-weight"),  # (named as an option, before torch loads)
        (stacks, ["--latent-weight", "nan"], "--latent-weight"),
        (stacks, ["--levels", "0", "1", "1"], "twice"),
    ]
    # Stacks the loss cannot learn from, and stacks of two samplings.
    good = read_image(stacks[0]).data
    flat, repeated = good.copy(), good.copy()
    flat[2] = 7.0
    repeated[2] = repeated[0]
    for name, data, voxel in (("flat", flat, (0.5, 0.1, 0.1)), ("repeat", repeated, (0.5, 0.1, 0.1)),
                              ("coarse", good, (0.5, 0.2, 0.2))):
        write_tiff(tmp_path / f"{name}.tif", data, voxel_size=voxel)
    # named by file and by the file's own plane number, also when --focus first reverses the order
    cases += [([stacks[0], tmp_path / "flat.tif"], ["--focus", "first"], ("flat.tif has a plane that is constant",
                                                                        "plane 2,")),
              ([tmp_path / "repeat.tif"], [], ("repeat.tif repeats a plane", "plane 2,")),
              ([stacks[0], tmp_path / "coarse.tif"], [], "pixel size"),
              (stacks, ["--seed", "-1"], "seed"), (stacks, ["--seed", str(2**64)], "seed")]  # was exit 1
    for inputs, options, words in cases:
        code, _, err = run(["blur", "train", *inputs, "-o", out, *TINY, *options], capsys)
        assert_one_line_error(code, err, *([words] if isinstance(words, str) else words))
        assert not out.exists()
    code, _, err = run(["blur", "train", *stacks, "-o", tmp_path / "model.tif", *TINY], capsys)
    assert_one_line_error(code, err, ".ckpt")
    assert not (tmp_path / "model.tif").exists()


def test_synth_and_deblur_errors(planes, model, capsys):
    folder, p = planes
    out = folder / "out.tif"
    base = ["--model", model]
    cases = [
        (["synth", *base, p["far"], folder / "big.tif", "--levels", 3], "shape"),  # planes of different shapes
        (["synth", *base, p["far"], "--levels", 3], "near"),  # a single plane where two are needed
        (["synth", *base, folder / "stack.tif", p["near"], "--levels", 3], "single"),  # a stack, not a plane
        (["synth", *base, p["far"], p["near"], "--levels", 1], "levels"),
        (["synth", *base, p["far"], p["near"], "--levels", 3, "--range", 0, "inf"], "--range"),
        (["synth", *base, p["far"], p["near"], "--levels", 3, "--range", "nan", 1], "--range"),
        (["synth", *base, folder / "small.tif", folder / "small2.tif", "--levels", 3], "another size"),
        (["deblur", *base, p["far"], p["mid"], "--alpha", 1.0], "alpha"),
        (["deblur", *base, p["far"], p["mid"], "--alpha", 0], "alpha"),
        (["deblur", *base, p["far"], p["mid"], "--alpha", -0.5], "alpha"),
        # 1 / (1 - alpha) past blur synth's limit of 11: 0.9999 wrote a plane of negative mean (review)
        (["deblur", *base, p["far"], p["mid"], "--alpha", 0.9999], "extrapolates 1e+04-fold, past the 11"),
        (["deblur", *base, p["far"], p["mid"]], "alpha"),
        (["deblur", *base, p["far"], folder / "big.tif", "--alpha", 0.5], "shape"),
        (["deblur", *base, folder / "small.tif", folder / "small2.tif", "--alpha", 0.5], "another size"),
        (["deblur", "--model", folder / "missing.ckpt", p["far"], p["mid"], "--alpha", 0.5], "does not exist"),
        (["synth", *base, p["far"], folder / "coarse.tif", "--levels", 3], "pixel size"),  # two samplings
        (["deblur", *base, folder / "coarse.tif", folder / "coarse2.tif", "--alpha", 0.5], "trained on planes of"),
        (["synth", *base, p["far"], p["near"], "--levels", 3, "--range", 0, 1e39], "--range"),
        (["synth", *base, p["far"], p["near"], "--levels", 10**11], "to 1000"),  # asked for 745 GiB
    ]
    write_tiff(folder / "coarse.tif", read_image(p["near"]).data, voxel_size=(0.2, 0.2))
    write_tiff(folder / "coarse2.tif", read_image(p["mid"]).data, voxel_size=(0.2, 0.2))
    for argv, word in cases:
        code, _, err = run(["blur", *argv, "-o", out, "--device", "cpu"], capsys)
        assert_one_line_error(code, err, word)
        assert not out.exists(), argv


def test_a_missing_gpu_is_not_a_damaged_checkpoint(planes, model, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    folder, p = planes
    for argv in (["synth", "--model", model, p["far"], p["near"], "--levels", 3],
                 ["deblur", "--model", model, p["far"], p["mid"], "--alpha", 0.5]):
        code, _, err = run(["blur", *argv, "-o", folder / "out.tif", "--device", "cuda"], capsys)
        assert_one_line_error(code, err, "no CUDA GPU")
        assert "damaged" not in err and "retrain" not in err


def test_crafted_model_file_is_refused(planes, capsys):
    import os
    import shlex

    folder, p = planes
    marker = folder / "PWNED"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    evil = folder / "evil.ckpt"
    torch.save({"format": FORMAT, "state_dict": Payload()}, evil)
    out = folder / "out.tif"
    code, _, err = run(["blur", "deblur", "--model", evil, p["far"], p["mid"], "--alpha", 0.5, "-o", out], capsys)
    assert_one_line_error(code, err, "not a safe")
    assert not marker.exists() and not out.exists()


def test_model_for_another_size_in_the_file_is_refused(planes, model, capsys):
    folder, p = planes
    data = torch.load(model, weights_only=True)
    data["model"]["widths"] = [8, 16]
    torch.save(data, model)
    out = folder / "out.tif"
    code, _, err = run(["blur", "synth", "--model", model, p["far"], p["near"], "--levels", 2, "-o", out], capsys)
    assert_one_line_error(code, err, "another size")
    assert not out.exists()


@pytest.mark.parametrize("command", [["blur"], ["blur", "train"], ["blur", "synth"], ["blur", "deblur"]])
def test_every_blur_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_cli_choices_and_defaults_follow_the_library():
    """The CLI keeps its own copies (it parses before importing torch): they must not drift."""
    from deconv3d.cli import blur, build_parser
    from deconv3d.latent import losses
    from deconv3d.latent.train import LatentTrainConfig

    assert blur.VARIANTS == losses.VARIANTS and blur.DISTANCES == losses.DISTANCES
    assert blur.LATENT_NORMS == losses.LATENT_NORMS
    args = build_parser().parse_args(["blur", "train", "s.tif", "-o", "m.ckpt"])
    defaults = LatentTrainConfig()
    assert (args.variant, args.dist, args.latent_weight, args.latent_norm) == (
        defaults.variant, defaults.dist, defaults.latent_weight, defaults.latent_norm)


def test_checkpoint_keeps_the_planes_shape_and_pixel_size(tmp_path, make_stacks, capsys):
    """One stack is tiled for validation; the checkpoint still records its planes' shape. Planes
    without a pixel size take the model's, with a warning."""
    stack = write_stacks(tmp_path, make_stacks, n=1, size=32)
    out = tmp_path / "one.ckpt"
    code, _, err = run(["blur", "train", *stack, "-o", out, *TINY], capsys)
    assert code == 0, err
    trained = load_checkpoint(out)
    assert trained.plane_shape == (32, 32) and trained.pixel_size == pytest.approx((0.1, 0.1))
    planes = read_image(stack[0]).data
    write_tiff(tmp_path / "far.tif", planes[0])
    write_tiff(tmp_path / "near.tif", planes[-1])
    code, _, err = run(["blur", "synth", "--model", out, tmp_path / "far.tif", tmp_path / "near.tif", "--levels", 3,
                        "-o", tmp_path / "levels.tif", "--device", "cpu"], capsys)
    assert code == 0 and "assuming the model's (0.1, 0.1)" in err, err
    assert open_lazy(tmp_path / "levels.tif").voxel_size == pytest.approx((0.1, 0.1))


def test_a_checkpoint_with_non_finite_weights_is_damaged(planes, model, capsys):
    folder, p = planes
    data = torch.load(model, weights_only=True)
    name = next(iter(data["state_dict"]))
    data["state_dict"][name] = torch.full_like(data["state_dict"][name], float("nan"))
    torch.save(data, folder / "nan.ckpt")
    code, _, err = run(["blur", "synth", "--model", folder / "nan.ckpt", p["far"], p["near"], "--levels", 3,
                        "-o", folder / "out.tif", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "damaged", "non-finite")
    assert not (folder / "out.tif").exists()


def test_one_stack_with_empty_background_tiles_still_trains(tmp_path, make_stacks, capsys):
    """A single stack is tiled for validation; a tile of plain background (constant planes) was
    reported as "stack 3 has a constant plane" and stopped the run. Such tiles are left out."""
    stack = 100 * make_stacks(n_images=1, size=32, seed=5)[0] + 10
    stack[:, 16:, 16:] = 10.0  # one quadrant of background in every plane
    write_tiff(tmp_path / "one.tif", stack, voxel_size=(0.5, 0.1, 0.1))
    code, _, err = run(["blur", "train", tmp_path / "one.tif", "-o", tmp_path / "ae.ckpt", *TINY], capsys)
    assert code == 0, err
    assert (tmp_path / "ae.ckpt").is_file()


def test_a_diverged_training_is_an_error_and_writes_nothing(tmp_path, make_stacks, capsys):
    """--lr 1e9 overflows the BatchNorm statistics while the loss stays finite: the run used to
    finish "completed" with a validation PSNR of nan dB and save a file that blur synth then
    refused as damaged."""
    stacks = write_stacks(tmp_path, make_stacks)
    out = tmp_path / "diverged.ckpt"
    code, _, err = run(["blur", "train", *stacks, "-o", out, *TINY, "--lr", "1e9"], capsys)
    assert_one_line_error(code, err, "diverged", "--lr")
    assert sorted(tmp_path.iterdir()) == sorted(stacks)  # no checkpoint, no temporary file


def test_the_hint_for_planes_smaller_than_the_model_is_a_command_that_runs(tmp_path, model, make_stacks, capsys):
    """A model trained on 16-pixel crops (widths 4 8) refuses 12x12 planes and hints at training one
    for them; the hint used to be '--crop 12' alone, which 'blur train' with its default widths
    refuses (a crop must be a multiple of 2**4 = 16). Following the hint now trains a model that
    then synthesises from those planes."""
    import re
    import shlex

    small = write_stacks(tmp_path, make_stacks, size=12)
    stack = read_image(small[0]).data
    write_tiff(tmp_path / "far12.tif", stack[0], voxel_size=(0.1, 0.1))
    write_tiff(tmp_path / "near12.tif", stack[-1], voxel_size=(0.1, 0.1))
    planes = [tmp_path / "far12.tif", tmp_path / "near12.tif"]
    code, _, err = run(["blur", "synth", "--model", model, *planes, "--levels", 3, "-o", tmp_path / "out.tif"], capsys)
    assert_one_line_error(code, err, "another size", "(deconv3d blur train)")
    hinted = shlex.split(re.search(r"with (--crop .*) \(deconv3d blur train\)", err)[1])
    code, _, err = run(["blur", "train", *small, "-o", tmp_path / "ae12.ckpt", *hinted, "--steps", "3", "--batch", "2",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert hinted == ["--crop", "12", "--widths", "4", "8"]  # the largest crop these planes allow at the model's depth
    code, _, err = run(["blur", "synth", "--model", tmp_path / "ae12.ckpt", *planes, "--levels", 3,
                        "-o", tmp_path / "out.tif"], capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "out.tif").shape == (3, 12, 12)


def test_blur_commands_hash_large_inputs_with_a_bar(planes, make_stacks, tmp_path, capsys, monkeypatch):
    """`blur train`, `synth` and `deblur` hashed their stacks, planes and model with no bar, while `train` and
    `deconvolve` show one for a file larger than HASH_PROGRESS_BYTES (a second whole read of each file)."""
    from deconv3d.cli import printing

    monkeypatch.setattr(printing, "HASH_PROGRESS_BYTES", 0)
    monkeypatch.setenv("DECONV3D_PROGRESS_SECONDS", "0")  # a line at every report
    folder, p = planes
    stacks = write_stacks(tmp_path, make_stacks)
    model = tmp_path / "ae.ckpt"
    commands = {"train": ["blur", "train", *stacks, "-o", model, *TINY],
                "synth": ["blur", "synth", "--model", model, p["far"], p["near"], "--levels", 3, "-o",
                          folder / "s.tif", "--device", "cpu"],
                "deblur": ["blur", "deblur", "--model", model, p["far"], p["mid"], "--alpha", 0.5, "-o",
                           folder / "d.tif", "--device", "cpu"]}
    for command, argv in commands.items():
        code, _, err = run(argv, capsys)
        assert code == 0, err
        hashing = [line for line in err.splitlines() if line.startswith(f"blur {command}: hashing ")]
        files = stacks if command == "train" else [p["far"], p["near" if command == "synth" else "mid"], model]
        assert [line.split(": ")[1] for line in hashing if "(100%)" in line] == [f"hashing {f}" for f in files], err


@pytest.mark.parametrize("where", ["missing folder", "under a file"])
def test_blur_train_names_a_missing_or_bad_stack_before_an_unwritable_output(make_stacks, tmp_path, capsys, where):
    """The input's problems come first (as deconvolve's and train's): an output in a folder that does not exist,
    or under a file, was named before a missing stack, or a stack with a constant plane (as root too)."""
    (tmp_path / "file").write_bytes(b"")
    output = tmp_path / ("nowhere" if where == "missing folder" else "file") / "m.ckpt"
    stacks = write_stacks(tmp_path, make_stacks)
    code, _, err = run(["blur", "train", stacks[0], tmp_path / "gone.tif", "-o", output, *TINY], capsys)
    assert_one_line_error(code, err, f"input file not found: {tmp_path / 'gone.tif'}")
    flat = np.stack([tifffile.imread(stacks[1])[0]] * 2 + [np.ones((16, 16), np.float32)])
    tifffile.imwrite(tmp_path / "flat.tif", flat.astype(np.float32), photometric="minisblack")
    code, _, err = run(["blur", "train", stacks[0], tmp_path / "flat.tif", "-o", output, *TINY], capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'flat.tif'} ")
    assert "output" not in err, err
    code, _, err = run(["blur", "train", *stacks, "-o", output, *TINY], capsys)  # good stacks: the output's turn
    assert_one_line_error(code, err, f"output directory not found: {output.parent}")


@pytest.mark.parametrize("name", ["levels.tif", "levels.ome.tif"])
def test_blur_train_names_a_synth_output_for_what_it_is(planes, model, make_stacks, tmp_path, capsys, name):
    """A 'blur synth' output (levels written as frames) given to 'blur train' was refused as time data ('has a
    time axis ... multi-channel/time data are not supported'); it now says the file holds synthesised levels,
    an OME-TIFF one too (its record in the MapAnnotation, not ImageJ's properties). Other refused files keep
    their own line."""
    folder, p = planes
    levels = folder / name
    code, _, err = run(["blur", "synth", "--model", model, p["far"], p["near"], "--levels", 4, "-o", levels,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    stacks = write_stacks(tmp_path, make_stacks)
    code, _, err = run(["blur", "train", stacks[0], levels, "-o", tmp_path / "x.ckpt", *TINY], capsys)
    assert code == 2 and err.strip() == (f"deconv3d: error: {levels} holds blur levels that 'blur synth' made, not "
                                         "a through-focus stack: train on recorded stacks (their planes ordered by "
                                         "blur)"), err
    tifffile.imwrite(folder / "frames.tif", np.ones((4, 16, 16), np.float32), imagej=True, metadata={"axes": "TYX"})
    code, _, err = run(["blur", "train", stacks[0], folder / "frames.tif", "-o", tmp_path / "x.ckpt", *TINY], capsys)
    assert code == 2 and "time axis" in err, err
    assert not (tmp_path / "x.ckpt").exists()


def test_one_file_given_as_both_planes_is_refused(planes, model, capsys, monkeypatch):
    """'blur synth far.tif far.tif' (or ./far.tif, or a symlink to it) paired the plane with itself, and
    'blur deblur far.tif far.tif' too, without a word; the line names both arguments, and nothing is written
    (the model is not even loaded)."""
    import deconv3d.latent.checkpoint as checkpoint

    folder, p = planes
    (folder / "link.tif").symlink_to(p["far"])
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: pytest.fail("loaded the model"))
    out = folder / "out.tif"
    for again in (p["far"], folder / "." / "far.tif", folder / "link.tif"):
        for command, role, rest in (("synth", "NEAR", ["--levels", 3]), ("deblur", "LEVEL", ["--alpha", 0.5])):
            code, _, err = run(["blur", command, "--model", model, p["far"], again, *rest, "-o", out], capsys)
            assert_one_line_error(code, err, f"FAR {p['far']} and {role} {again} are the same file",
                                  "give two planes")
            assert not out.exists()
