"""``blur train --dist`` and ``--skip`` train what they say: the network the command writes is the
one the library's train gives with that latent distance of the explicit loss, or with the
encoder features of every scale interpolated (AEConfig.skip_interp), and not the default one.
Either option ignored passed every latent test (found by the test review)."""

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error, run, tiff_properties
from deconv3d.io import read_image, write_tiff
from deconv3d.latent.checkpoint import load_checkpoint

from .test_cli_blur import TINY, write_stacks


def library_weights(paths, dist="mse", skip=False) -> dict:
    """The weights deconv3d.latent.train gives for the stacks at ``paths`` with the command's
    other settings (TINY, float32, the command's validation every min(100, steps) steps)."""
    from deconv3d.latent.model import AEConfig
    from deconv3d.latent.train import LatentTrainConfig, train

    stacks = np.stack([read_image(p).data for p in paths])
    config = LatentTrainConfig(dist=dist, steps=3, batch=2, val_every=3, amp=False)
    result = train(stacks, np.arange(3.0), config, AEConfig(widths=(4, 8), crop=16, skip_interp=skip), device="cpu")
    return result.model.state_dict()


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.allclose(a[k].numpy(), b[k].numpy(),
                                                                                   rtol=1e-5, atol=1e-7) for k in a)


@pytest.mark.parametrize("flags, changed", [(["--dist", "l1"], {"dist": "l1"}), (["--skip"], {"skip": True})])
def test_dist_and_skip_change_the_network_trained_as_the_library_does(tmp_path, make_stacks, capsys, flags,
                                                                      changed):
    paths = write_stacks(tmp_path, make_stacks)
    out = tmp_path / "ae.ckpt"
    code, _, err = run(["blur", "train", *paths, "-o", out, *flags, *TINY, "--no-amp"], capsys)
    assert code == 0, err
    trained = load_checkpoint(out)
    assert trained.config.variant == "explicit"  # (the default; --dist sets its latent term)
    assert trained.config.dist == changed.get("dist", "mse")
    assert trained.ae_config.skip_interp is changed.get("skip", False)
    written = trained.model.state_dict()
    assert same_weights(written, library_weights(paths, **changed))
    assert not same_weights(written, library_weights(paths))


def test_focus_that_levels_contradict_is_overridden_with_a_warning(tmp_path, make_stacks, capsys):
    """--levels orders the planes itself, so a --focus that names the other end used to be ignored
    without a word (--focus first --levels 0 1 2): it is still overridden, as --help says, with a
    warning naming the plane --levels puts in focus; a --focus that --levels agrees with is quiet.
    The training data follow --levels: the model matches the one trained with --levels alone."""
    stacks = write_stacks(tmp_path, make_stacks)
    weights = {}
    for name, options, warned in (("levels", ["--levels", "0", "1", "2"], None),
                                  ("contradicted", ["--focus", "first", "--levels", "0", "1", "2"], "plane 2 of 0 to 2"),
                                  ("reversed", ["--focus", "last", "--levels", "2", "1", "0"], "plane 0 of 0 to 2"),
                                  ("agreed", ["--focus", "first", "--levels", "2", "1", "0"], None),
                                  ("focus", ["--focus", "first"], None)):
        out = tmp_path / f"{name}.ckpt"
        code, _, err = run(["blur", "train", *stacks, "-o", out, *TINY, *options], capsys)
        assert code == 0, err
        lines = [line for line in err.splitlines() if "warning" in line]
        if warned is None:
            assert lines == [], err
        else:
            assert len(lines) == 1 and lines[0].startswith("deconv3d: warning: --focus "), err
            assert "is ignored where --levels is given" in lines[0] and warned in lines[0], err
        weights[name] = load_checkpoint(out).model.state_dict()
    for a, b in (("levels", "contradicted"), ("reversed", "agreed"), ("agreed", "focus")):
        assert same_weights(weights[a], weights[b]), (a, b)
    assert not same_weights(weights["levels"], weights["agreed"])  # the planes' order matters to training
    with pytest.raises(SystemExit):
        run(["blur", "train", "--help"], capsys)
    assert "--levels orders the planes itself and overrides it" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("variant, options, named", [
    ("baseline", ["--dist", "l1", "--latent-weight", "5", "--latent-norm", "none"],
     "--dist, --latent-weight and --latent-norm shape the explicit loss's latent term, which the baseline loss lacks"),
    ("implicit", ["--dist", "mse"], "--dist shapes the explicit loss's latent term, which the implicit loss lacks")])
def test_latent_term_options_without_the_explicit_loss_are_refused(tmp_path, make_stacks, capsys, variant, options,
                                                                   named):
    """Found by the options review: '--variant baseline --dist l1 --latent-weight 5 --latent-norm
    none' trained exactly the plain baseline (only the explicit loss has a latent term) but recorded
    the three in the checkpoint, while '--variant baseline --residual' is refused. They are refused
    alike, given at any value (the implicit loss lacks the term too), and nothing is written."""
    from cli_helpers import assert_one_line_error

    out = tmp_path / "ae.ckpt"
    code, _, err = run(["blur", "train", *write_stacks(tmp_path, make_stacks), "-o", out, "--variant", variant,
                        *options, *TINY], capsys)
    assert_one_line_error(code, err, named, "use --variant explicit")
    assert not out.exists()


def test_a_run_the_time_budget_stopped_is_reproduced_by_stop_after(tmp_path, make_stacks, capsys, monkeypatch):
    """A run that --time-budget stopped after K of N steps could not be rerun from its record: the
    cosine schedule spans --steps (and the validation interval follows it), so --steps K trains
    another network. --steps N --stop-after K runs the same K steps of the N-step schedule, and the
    command says so when a budget stops it. (A clock that ticks per reading makes the budget's K fixed.)"""
    import importlib
    from types import SimpleNamespace

    import deconv3d._training_stop

    ticks = iter(range(10**6))
    clock = SimpleNamespace(perf_counter=lambda: 0.01 * next(ticks))
    monkeypatch.setattr(deconv3d._training_stop, "time", clock)
    monkeypatch.setattr(importlib.import_module("deconv3d.latent.train"), "time", clock)
    paths = write_stacks(tmp_path, make_stacks)
    options = ["--widths", "4", "8", "--crop", "16", "--batch", "2", "--device", "cpu", "--no-amp"]
    runs = {}

    def train(name, *flags):
        code, out, err = run(["blur", "train", *paths, "-o", tmp_path / f"{name}.ckpt", *flags, *options], capsys)
        assert code == 0, err
        runs[name] = load_checkpoint(tmp_path / f"{name}.ckpt")
        return out

    import deconv3d.cli.blur_train as blur_cli

    budgets, real_progress = [], blur_cli.progress
    monkeypatch.setattr(blur_cli, "progress", lambda *a: budgets.append(a[2:]) or real_progress(*a))
    out = train("budget", "--steps", "40", "--time-budget", "0.15")
    assert budgets == [(0.15,)]  # (the bar's time left is at most the budget's)
    k = runs["budget"].run["train_steps"]
    assert runs["budget"].run["stopped"] == "time_budget" and 1 < k < 40
    assert f"--steps 40 --stop-after {k} reproduces it" in out
    train("stop", "--steps", "40", "--stop-after", k)
    train("short", "--steps", k)
    assert runs["stop"].run == {**runs["stop"].run, "train_steps": k, "stopped": "stop_after"}
    assert runs["stop"].config.stop_after == k and runs["budget"].config.stop_after is None  # recorded
    weights = {name: trained.model.state_dict() for name, trained in runs.items()}
    assert all(torch.equal(weights["budget"][n], weights["stop"][n]) for n in weights["budget"])
    assert not all(torch.equal(weights["budget"][n], weights["short"][n]) for n in weights["budget"])


def test_stop_after_beyond_the_steps_is_refused(tmp_path, make_stacks, capsys):
    paths = write_stacks(tmp_path, make_stacks)
    code, _, err = run(["blur", "train", *paths, "-o", tmp_path / "ae.ckpt", *TINY, "--stop-after", "4"], capsys)
    assert_one_line_error(code, err, "--stop-after 4", "--steps 3")
    assert not (tmp_path / "ae.ckpt").exists()


@pytest.mark.parametrize("levels", [["1e8", "100000001", "100000002"], ["0", "1e-300", "2e-300"]])
def test_levels_that_float32_cannot_tell_apart_give_a_checkpoint_that_loads(tmp_path, make_stacks, capsys, levels):
    """Levels were kept in float32, which made these equal: the model was written, then refused as a
    damaged checkpoint by every later synth or deblur."""
    paths = write_stacks(tmp_path, make_stacks)
    out = tmp_path / "ae.ckpt"
    code, _, err = run(["blur", "train", *paths, "-o", out, *TINY, "--levels", *levels], capsys)
    assert code == 0, err
    assert load_checkpoint(out).levels.tolist() == [float(v) for v in levels]


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_levels_that_are_not_finite_are_refused_by_the_option(tmp_path, make_stacks, capsys, bad):
    paths = write_stacks(tmp_path, make_stacks)
    code, _, err = run(["blur", "train", *paths, "-o", tmp_path / "ae.ckpt", *TINY, "--levels", "0", "1", bad],
                       capsys)
    assert_one_line_error(code, err, "--levels", "finite", bad)
    assert not (tmp_path / "ae.ckpt").exists()


def test_an_output_folder_that_is_not_writable_is_refused_before_training(tmp_path, make_stacks, capsys,
                                                                          monkeypatch):
    """(os.access is patched: the tests may run as root, who can write anywhere.)"""
    import os
    import sys

    latent_train = sys.modules["deconv3d.latent.train"]  # (the package's ``train`` is the function)

    paths = write_stacks(tmp_path, make_stacks)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == os.fspath(locked)
                        else real_access(p, mode, **kw))
    monkeypatch.setattr(latent_train, "train", lambda *a, **k: pytest.fail("trained before refusing the output"))
    code, _, err = run(["blur", "train", *paths, "-o", locked / "ae.ckpt", *TINY], capsys)
    assert_one_line_error(code, err, "not writable", str(locked))
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("size, widths, crop, hinted", [
    (18, ["4", "8"], "18", ["--crop", "16"]),  # was "give crop 16 or 20": 20 > 18
    (6, ["4", "8", "16"], "4", ["--crop", "4", "--widths", "4", "8"]),  # was "give crop 8, or fewer widths"
])
def test_a_crop_the_network_cannot_take_is_told_one_the_planes_hold(tmp_path, make_stacks, capsys, size, widths,
                                                                    crop, hinted):
    """AEConfig's refusal named the multiples of 2**len(widths) on both sides of --crop, whatever the planes'
    size: following it on 18x18 planes ('--crop 20') or 6x6 ones ('--crop 8') was refused in turn as larger
    than the planes. The hint now names only crops the planes hold, and following it trains."""
    import shlex

    stacks = write_stacks(tmp_path, make_stacks, size=size)
    common = [*stacks, "-o", tmp_path / "ae.ckpt", "--steps", "2", "--batch", "2", "--device", "cpu"]
    code, _, err = run(["blur", "train", *common, "--widths", *widths, "--crop", crop], capsys)
    assert_one_line_error(code, err, "multiple of")
    assert err.strip().endswith(f" {shlex.join(hinted)}"), err  # the crops it names: those the planes hold
    code, _, err = run(["blur", "train", *common, "--widths", *widths, *hinted], capsys)  # (the hint's widths last)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "ae.ckpt").ae_config.crop == int(hinted[1])


def test_a_stack_given_twice_is_refused(tmp_path, make_stacks, capsys):
    """'blur train a.tif ./a.tif' (or a.tif twice, or a symlink to it) trained on both, and the split could
    hold one copy out to validate on what the other trained on; nothing is written."""
    stacks = write_stacks(tmp_path, make_stacks)
    (tmp_path / "link.tif").symlink_to(stacks[0])
    for again in (tmp_path / "." / stacks[0].name, tmp_path / "link.tif", stacks[0]):
        code, _, err = run(["blur", "train", *stacks, again, "-o", tmp_path / "ae.ckpt", *TINY], capsys)
        assert_one_line_error(code, err, f"{again} is given twice (also as {stacks[0]})", "give each stack once")
    from deconv3d.cli import main

    same = str(stacks[0])  # one str object twice, as a script calling main may pass it
    code = main(["blur", "train", same, same, "-o", str(tmp_path / "ae.ckpt"), *map(str, TINY)])
    assert_one_line_error(code, capsys.readouterr().err, "is given twice")
    assert not (tmp_path / "ae.ckpt").exists()


@pytest.mark.parametrize("shape, side", [((3, 1, 9), "high"), ((3, 9, 2), None), ((3, 1, 1), "high and wide"),
                                         ((3, 2, 1), "high or wide")])
def test_a_stack_of_lines_is_not_called_one_plane(tmp_path, capsys, shape, side):
    """A stack of 3 planes 1 pixel high reads as a 2D (3, 9) image once its length-1 axis is dropped, and
    was refused as holding '1 plane(s)'. One of planes 1 pixel wide (tifffile writes it as one page under a
    header of 3 images) was called "truncated or corrupt", by blur train and as FAR of synth and deblur."""
    import tifffile

    path = tmp_path / "lines.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random(shape).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    code, _, err = run(["blur", "train", path, "-o", tmp_path / "ae.ckpt", "--steps", "2", "--crop", "2",
                        "--widths", "4", "--device", "cpu"], capsys)
    if side is None:  # (planes 2 pixels a side are planes)
        assert code == 0, err
        return
    assert_one_line_error(code, err, f"holds 3 planes only 1 pixel {side}", "at least 2 pixels a side")
    if shape[-1] == 1:
        import shutil

        other = shutil.copy(path, tmp_path / "other.tif")
        for command, rest in (("synth", ["--levels", "3"]), ("deblur", ["--alpha", "0.5"])):
            code, _, err = run(["blur", command, "--model", tmp_path / "ae.ckpt", path, other, *rest, "-o",
                                tmp_path / "out.tif"], capsys)
            assert_one_line_error(code, err, f"{path} holds 3 planes only 1 pixel {side}", "give FAR as a single")
            assert "truncated" not in err


@pytest.mark.parametrize("command, words", [
    (["train", "--levels", "0", "1", "2", "{stack}", "-o", "{out}.ckpt"], ["give the files before this option"]),
    (["train", "{stack}", "-o", "{out}.ckpt", "--val-fraction", "x"], ["--val-fraction", "'x'"]),
    (["deblur", "--model", "m.ckpt", "far.tif", "level.tif", "--alpha", "half", "-o", "{out}.tif"], ["'half'"]),
    (["synth", "--model", "m.ckpt", "far.tif", "near.tif", "--levels", "3", "--range", "0", "1x", "-o", "{out}.tif"],
     ["--range", "'1x'"]),
])
def test_a_word_where_a_number_goes_is_refused_in_the_options_words(tmp_path, make_stacks, capsys, command, words):
    """argparse named the type function of blur.py: "argument --levels: invalid _finite value: 'a.tif'",
    where --levels had taken the stack given after it."""
    stack = write_stacks(tmp_path, make_stacks, n=1)[0]
    argv = [a.format(stack=stack, out=tmp_path / "out") for a in command]
    code, _, err = run(["blur", *argv], capsys)
    assert_one_line_error(code, err, "must be a number, got", *words)
    assert "_finite" not in err and "invalid" not in err and "_fraction" not in err
    assert sorted(tmp_path.iterdir()) == [stack]


def test_a_mistyped_number_is_not_called_a_file_name(tmp_path, make_stacks, capsys):
    """'--val-fraction 0.1x' was told it was a file name, from the '.1x' after its dot (found by the review of
    this stop's diff)."""
    stack = write_stacks(tmp_path, make_stacks, n=1)[0]
    code, _, err = run(["blur", "train", stack, "-o", tmp_path / "ae.ckpt", "--val-fraction", "0.1x"], capsys)
    assert_one_line_error(code, err, "must be a number, got '0.1x'")
    assert "file name" not in err


def test_negative_numbers_in_scientific_notation_are_values_not_options(tmp_path, make_stacks, capsys):
    """argparse took '-4e0' and '-1.5e-1' for options (its own pattern knows '-4' and '-0.5' only): '--levels
    -4e0 -2e0 0' met "expected at least one argument" and '--range -1.5e-1 1' "expected 2 arguments". They are
    values now, in every blur command; an unknown option ('-x') is still refused as one."""
    stacks = write_stacks(tmp_path, make_stacks)
    model = tmp_path / "ae.ckpt"
    code, _, err = run(["blur", "train", *stacks, "-o", model, *TINY, "--levels", "-4e0", "-2E+0", "0"], capsys)
    assert code == 0, err
    assert load_checkpoint(model).levels.tolist() == [-4.0, -2.0, 0.0]
    stack = read_image(stacks[0]).data
    for name, plane in (("far", stack[0]), ("near", stack[2])):
        write_tiff(tmp_path / f"{name}.tif", plane, voxel_size=(0.1, 0.1))
    pair = ["--model", model, tmp_path / "far.tif", tmp_path / "near.tif"]
    out = tmp_path / "levels.tif"
    code, _, err = run(["blur", "synth", *pair, "--levels", "3", "--range", "-1.5e-1", "1", "-o", out,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert tiff_properties(out)["fractions"] == [-0.15, 0.425, 1.0]
    for argv, words in ((["synth", *pair, "--levels", "-3e0"], ["--levels", "positive", "'-3e0'"]),
                        (["deblur", *pair, "--alpha", "-5e-1"], ["--alpha", "between 0 and 1", "-5e-1"]),
                        (["synth", *pair, "--levels", "3", "-x"], ["unrecognized arguments: -x"])):
        code, _, err = run(["blur", *argv, "-o", tmp_path / "bad.tif", "--device", "cpu"], capsys)
        assert_one_line_error(code, err, *words)
        assert "expected" not in err
        assert not (tmp_path / "bad.tif").exists()
