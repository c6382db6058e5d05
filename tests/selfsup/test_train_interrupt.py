"""`deconv3d train` stopped by Ctrl-C, SIGTERM or SIGHUP: the first signal during the training steps
ends training after its current step and keeps the steps trained (the checkpoint is written, the exit
status is the signal's); a second one, or one before the first step, stops at once with nothing written."""

import contextlib
import importlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run, tiff_properties
from deconv3d.io import write_tiff
from deconv3d.selfsup import load_checkpoint
from pipeline.conftest import gaussian_psf

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--patch", 8, "--batch", 1, "--base-channels", 4, "--unet-depth", 2, "--device", "cpu"]
NO_SEARCH = ["--no-residual", "--warm-start", 0, "--anchor", 0]  # (steps from the start: no RL reference to search)
STEPS = 5000  # (far more than any test waits for)
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@pytest.fixture
def data(tmp_path):
    """A tiny seeded 3D image and a 3 x 3 x 3 Gaussian PSF, in ``tmp_path``."""
    image = np.random.default_rng(0).random((12, 24, 24)).astype(np.float32) + 0.1
    for name, array in (("image.tif", image), ("psf.tif", gaussian_psf((3, 3, 3), (1, 1, 1)))):
        write_tiff(tmp_path / name, array, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


@pytest.fixture
def ctrl_c():
    """Ctrl-C raising KeyboardInterrupt here, as in a terminal (a suite started in the background inherits
    SIGINT ignored, which the command line leaves ignored); the handlers as they were afterwards."""
    before = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.default_int_handler),
                                                  (signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL))}
    yield before
    for signum, handler in before.items():
        signal.signal(signum, handler)


def _leftovers(folder: Path) -> list[str]:
    """Hidden entries: the temporaries of an unfinished write."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _train_argv(data, *options, steps=STEPS):
    return ["train", data / "image.tif", "--psf", data / "psf.tif", "-o", data / "m.ckpt", "--steps", steps,
            *TINY, *options]


#: ``python -m deconv3d`` as from a terminal: Ctrl-C's KeyboardInterrupt even where this suite inherited SIGINT ignored.
MAIN = textwrap.dedent("""
    import runpy, signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runpy.run_module("deconv3d", run_name="__main__")
""")


def _signalled_while_training(data, signum) -> tuple[int, list[str], int]:
    """Start ``deconv3d train`` in a process of its own, send ``signum`` once its progress lines show a
    training step, and return its exit status, its stderr lines and the last step it had reported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DECONV3D_PROGRESS_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    argv = [str(a) for a in _train_argv(data, *NO_SEARCH)]
    process = subprocess.Popen([sys.executable, "-c", MAIN, *argv], cwd=data, env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines, seen = [], 0
    watchdog = threading.Timer(120, process.kill)  # (a run that never reports a step fails, not hangs)
    watchdog.start()
    try:
        for line in process.stderr:  # (read as it comes: the signal is sent once a step is reported)
            lines.append(line.rstrip("\n"))
            step = re.match(rf"train: (\d+)/{STEPS} step", line)
            if step and int(step.group(1)) >= 2:
                seen = int(step.group(1))
                process.send_signal(signum)
                break
        lines += process.communicate(timeout=120)[1].splitlines()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, lines, seen


@pytest.mark.parametrize("signum, how", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_steps_writes_the_steps_trained(data, signum, how):
    """The first Ctrl-C or SIGTERM (a Slurm job at its time limit) after the first step: training ends after
    the step it came in, the checkpoint of the steps done is written and loads, and the exit status is
    the signal's, so that ``deconv3d train ... && deconv3d deconvolve ...`` does not go on."""
    code, lines, seen = _signalled_while_training(data, signum)
    assert seen and code == STATUS[signum], lines
    last = re.fullmatch(rf"deconv3d: {re.escape(how)} at step (\d+) of {STEPS}: wrote (.*) with the (\d+) steps "
                        "trained", lines[-1])
    assert last and last.group(1) == last.group(3) and last.group(2) == str(data / "m.ckpt"), lines
    assert not any("Traceback" in line or "warning" in line for line in lines), lines
    steps = int(last.group(1))
    assert seen <= steps < STEPS
    trained = load_checkpoint(data / "m.ckpt")
    assert trained.run["train_steps"] == steps and trained.config.steps == STEPS
    assert trained.run["stopped"] == ("interrupted (SIGINT)" if signum == signal.SIGINT else how)
    assert _leftovers(data) == []


def _signals_at_step(monkeypatch, signals: dict):
    """Raise, in the run's main thread, each of ``signals[step]`` as training step ``step`` runs."""
    from deconv3d.selfsup import steps

    one_step, done = steps._train_step, []

    def signalled(*args, **kwargs):
        done.append(True)
        for signum in signals.get(len(done), ()):
            signal.raise_signal(signum)
        return one_step(*args, **kwargs)

    monkeypatch.setattr(steps, "_train_step", signalled)
    return done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_the_signal_stops_after_its_step_and_the_handlers_are_put_back(data, capsys, monkeypatch, ctrl_c, signum):
    """In process: the signal in step 3 ends training after step 3, a SIGHUP (a dropped ssh session) as
    SIGTERM does; the command line's handlers are the caller's again afterwards, and the model deconvolves."""
    done = _signals_at_step(monkeypatch, {3: [signum]})
    code, out, err = run(_train_argv(data, *NO_SEARCH), capsys)
    how = "interrupted" if signum == signal.SIGINT else "terminated (SIGHUP)"
    assert code == STATUS[signum] and out == "" and len(done) == 3, err
    model = data / "m.ckpt"
    assert err.splitlines()[-1] == f"deconv3d: {how} at step 3 of {STEPS}: wrote {model} with the 3 steps trained"
    assert load_checkpoint(data / "m.ckpt").run["train_steps"] == 3 and _leftovers(data) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL == signal.getsignal(signal.SIGTERM)
    # the model is used as any other, its output recording how far it was trained and why it stopped
    code, _, err = run(["deconvolve", data / "image.tif", "-o", data / "out.tif", "--method", "ssl", "--model",
                        data / "m.ckpt", "--device", "cpu"], capsys)
    recorded = tiff_properties(data / "out.tif")["parameters"]
    assert code == 0 and err == "", err
    assert (recorded["train_steps"], recorded["training"]["steps"]) == (3, STEPS)
    assert recorded["stopped"] == ("interrupted (SIGINT)" if signum == signal.SIGINT else how)


def test_a_signal_as_the_first_steps_line_shows_keeps_that_step(data, capsys, monkeypatch, ctrl_c):
    """A Ctrl-C the moment step 1's progress line is written (what a user, or a script that waits for
    that line, reacts to) ends training after step 1 with its checkpoint: the handlers are armed before
    the line is written. Armed after it, the signal stopped the run at once with nothing written."""
    from deconv3d.cli import selfsup as cli_selfsup
    from deconv3d.cli.printing import LogBar

    class SignalOnFirstStep(LogBar):
        def update(self, n=1):
            super().update(n)
            if self.unit == "step" and self.n == 1:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli_selfsup, "make_bar", SignalOnFirstStep)
    code, _, err = run(_train_argv(data, *NO_SEARCH), capsys)
    model = data / "m.ckpt"
    assert code == 130, err
    assert err.splitlines()[-1] == f"deconv3d: interrupted at step 1 of {STEPS}: wrote {model} with the 1 step trained"
    assert load_checkpoint(model).run["train_steps"] == 1 and _leftovers(data) == []


def test_a_second_signal_while_the_step_ends_stops_at_once(data, capsys, monkeypatch, ctrl_c):
    """A second Ctrl-C before the step the first came in has ended: stopped there, as without the first."""
    done = _signals_at_step(monkeypatch, {2: [signal.SIGINT, signal.SIGINT]})
    code, _, err = run(_train_argv(data, *NO_SEARCH), capsys)
    assert code == 130 and len(done) == 2, err
    assert err.splitlines()[-1] == "deconv3d: interrupted; no output was written"
    assert not (data / "m.ckpt").exists() and _leftovers(data) == []


@pytest.mark.parametrize("where, first", [("write", True), ("rename", True), ("write", False)],
                         ids=["write", "rename", "write-after-completed"])
def test_a_second_signal_while_the_checkpoint_is_written_leaves_it_whole_or_none(data, capsys, monkeypatch, ctrl_c,
                                                                                 where, first):
    """A second Ctrl-C while the checkpoint's bytes are written stops at once, its temporary removed; one as it
    is renamed into place comes once it is there, and the file is complete. The first one, after a training
    that ran all its steps, lets the checkpoint be written whole (found by review: it stopped the command at
    once and lost the training, also in the seconds the input's hash took after it)."""
    from deconv3d import _torch_common

    _signals_at_step(monkeypatch, {2: [signal.SIGINT]} if first else {})
    create, publishing = _torch_common.create_temporary, _torch_common.publishing

    def created(*args):
        made = create(*args)
        signal.raise_signal(signal.SIGINT)
        return made

    @contextlib.contextmanager
    def renamed(path):
        with publishing(path):
            signal.raise_signal(signal.SIGINT)
            yield

    if where == "write":
        monkeypatch.setattr(_torch_common, "create_temporary", created)
    else:
        monkeypatch.setattr(_torch_common, "publishing", renamed)
    code, _, err = run(_train_argv(data, *NO_SEARCH, steps=STEPS if first else 2), capsys)
    assert code == 130 and _leftovers(data) == [], err
    if not first:
        assert err.splitlines()[-1] == f"deconv3d: interrupted at step 2 of 2: wrote {data / 'm.ckpt'} with the 2 steps trained"
        assert load_checkpoint(data / "m.ckpt").run["train_steps"] == 2
    elif where == "write":
        assert err.splitlines()[-1] == "deconv3d: interrupted; no output was written"
        assert not (data / "m.ckpt").exists()
    else:
        model = data / "m.ckpt"
        assert err.splitlines()[-1] == f"deconv3d: interrupted after {model} was written: the output is complete"
        assert load_checkpoint(data / "m.ckpt").run["train_steps"] == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_rl_reference_is_searched_writes_nothing(data, capsys, monkeypatch, ctrl_c, signum):
    """Before the first step (the search for the RL reference's iteration count, seconds long): stopped at
    once, as before, with nothing written."""
    reference_module = importlib.import_module("deconv3d.selfsup.rl_reference")  # (where train() finds it)
    search, calls = reference_module.chosen_reference, []

    def searching(*args, callback=None, **kwargs):
        def signalled(*progress):
            calls.append(progress)
            asked = callback(*progress)  # (the search's first iteration, reported)
            signal.raise_signal(signum)
            return asked

        return search(*args, callback=signalled, **kwargs)

    monkeypatch.setattr(reference_module, "chosen_reference", searching)
    code, _, err = run(_train_argv(data), capsys)
    how = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert code == STATUS[signum] and len(calls) == 1, err
    assert err.splitlines()[-1] == f"deconv3d: {how}; no output was written"
    assert not (data / "m.ckpt").exists() and _leftovers(data) == []


def test_a_signal_while_the_handlers_are_armed_leaves_none_armed_for_the_next(monkeypatch, ctrl_c):
    """A Ctrl-C between arming SIGINT and SIGTERM: the handlers armed after it had stayed armed, and the
    next SIGTERM (a Slurm job's, or a user's kill) was recorded instead of ending the run at once."""
    from deconv3d.cli import stopping

    ends = {signum: (lambda signum, frame: None) for signum in (signal.SIGTERM, signal.SIGHUP)}
    for signum, handler in ends.items():
        signal.signal(signum, handler)  # (the command line's: callable, so armed; the fixture puts back SIG_DFL)
    real = signal.getsignal

    def getsignal(signum):
        if signum == signal.SIGTERM:  # (SIGINT's handler is armed by now)
            signal.raise_signal(signal.SIGINT)
        return real(signum)

    monkeypatch.setattr(signal, "getsignal", getsignal)
    with stopping.stop_request() as stop:
        stop.arm()
        monkeypatch.setattr(signal, "getsignal", real)
        assert stop.how() == "interrupted"
        assert real(signal.SIGINT) is signal.default_int_handler
        assert all(real(signum) is handler for signum, handler in ends.items())


def test_a_signal_after_the_last_step_keeps_the_training_s_own_reason(data, capsys, monkeypatch, ctrl_c):
    """A Ctrl-C after the last step (as the network is made ready to save): the checkpoint said training
    was interrupted, though it had run all its steps; it is written as completed, and the run still ends
    with Ctrl-C's status."""
    training = importlib.import_module("deconv3d.selfsup.train")
    environment = training.run_environment

    def signalled(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return environment(*args, **kwargs)

    monkeypatch.setattr(training, "run_environment", signalled)
    code, _, err = run(_train_argv(data, *NO_SEARCH, steps=2), capsys)
    assert code == 130, err
    assert err.splitlines()[-1] == f"deconv3d: interrupted at step 2 of 2: wrote {data / 'm.ckpt'} with the 2 steps trained"
    assert load_checkpoint(data / "m.ckpt").run["stopped"] == "completed"
