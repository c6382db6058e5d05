"""Shared pieces of the command line: the contract-following parser, argument types, progress."""

from __future__ import annotations

import argparse
import contextlib
import sys
import math

from deconv3d._paths import line_text
from deconv3d._voxel import refuse_nanometres
from deconv3d.errors import PREFIX, InputError

PSF_MODELS = ("gaussian", "gibson-lanni", "vectorial")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (default: CUDA when an NVIDIA GPU is available, else the CPU), cpu or cuda"
AMP_HELP = ("mixed precision for the network, in training and inference: float16 on CUDA, bfloat16 on CPUs with "
            "AMX, where each takes about half the time or less; float32 elsewhere (default on; --no-amp: float32)")


class SpatialSizes(argparse.Action):
    """A value per spatial axis (``nargs=3``, metavar ``Z Y X``): three, or two (``Y X``) for a 2D
    image; whether the count fits the image is checked once it is read (:func:`spatial_sizes`).

    Taking three only, the command line refused the ``DY DX`` form its own hints name for 2D images.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (2, 3):
            raise argparse.ArgumentError(self, f"{self.forms()}, got {len(values)}")
        setattr(namespace, self.dest, list(values))

    def forms(self) -> str:
        return f"expected 3 values ({' '.join(self.metavar)}), or 2 ({' '.join(self.metavar[1:])}) for a 2D image"


def spatial_sizes(values, ndim: int, option: str, name, form: str = "Z Y X") -> tuple | None:
    """The last ``ndim`` of an option's ``values`` (:class:`SpatialSizes`), or None when not given;
    fewer values than the image ``name`` has axes are refused, naming the ``form`` to give."""
    if not values:
        return None
    if len(values) < ndim:
        raise InputError(f"{option} gives {len(values)} values but {name} is {ndim}D: give {option} {form}")
    return tuple(values)[-ndim:]


def _looks_like_a_file(text: str) -> bool:
    import os

    return os.path.exists(text) or text.lower().endswith((".tif", ".tiff", ".zarr", ".ckpt", ".pt", ".toml"))


def repeat_hint(given) -> str:
    """Why an argument was left over when ``--model`` was given two files (``--model a.ckpt b.ckpt
    in.tif``: b.ckpt became the input): it takes one file per occurrence."""
    given = [str(a) for a in given]
    if "--model" in given:
        after = given[given.index("--model") + 1:]
        if len(after) > 1 and not after[1].startswith("-"):
            return ": --model takes one file; for one network per channel repeat it: --model A.ckpt --model B.ckpt"
    return ""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors follow the contract: one line, exit status 2."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(args) if args is not None else []  # (a subcommand's parser gets its own part)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # a fourth value was left over ("unrecognized arguments: 0.1"), or took the input's place
            for action in self._actions:
                if isinstance(action, SpatialSizes) and self._values_after(action) > 3:
                    self.error(f"argument {'/'.join(action.option_strings)}: {action.forms()}, "
                               f"got {self._values_after(action)}")
        if not any(isinstance(action, argparse._SubParsersAction) for action in self._actions):
            namespace._given_options = self._options_given(args)  # (a command's parser; copied to the top's)
        return namespace, extras

    def _options_given(self, args) -> frozenset:
        """The destinations of the options given in ``args``, whatever their values: one given at its
        default is given too (compared with the defaults, ``--method rl --tv-weight 0.002`` drew no
        warning that rl ignores it). The arguments parsed again onto a namespace holding a marker
        instead of each default: a marker left in place is an option not given. (The marker is a
        list, which repeatable options copy before adding to it, so they replace it too.)"""

        class Unset(list):
            pass

        unset = Unset()
        start = argparse.Namespace(**{a.dest: unset for a in self._actions if a.dest is not argparse.SUPPRESS})
        probe, _ = super().parse_known_args(args, start)
        return frozenset(dest for dest, value in vars(probe).items() if value is not unset)

    def _values_after(self, action) -> int:
        """How many numbers follow the last of ``action``'s options among the given arguments."""
        given = [str(a) for a in self._given]
        at = max((i for i, a in enumerate(given) if a in action.option_strings), default=None)
        if at is None:
            return 0
        count = 0
        for text in given[at + 1:]:
            try:
                float(text)
            except ValueError:
                break
            count += 1
        return count

    def error(self, message):
        raise InputError(f"{message}{self._greedy_hint(message)} (see '{self.prog} --help')")

    def _get_nargs_pattern(self, action):
        if isinstance(action, SpatialSizes):  # up to three values, counted by the action: three stay
            return "(A?A?A?)"  # taken before a positional (``--voxel-size 0.3 0.1 0.1 in.tif``), as with nargs=3
        return super()._get_nargs_pattern(action)

    def _greedy_hint(self, message: str) -> str:
        """Why a positional is missing when a one-per-channel option took it: ``--psf psf.tif in.tif``
        reads both as PSFs."""
        given = [str(a) for a in getattr(self, "_given", [])]
        missing = message.split("arguments are required: ", 1)[1].split(", ") if "arguments are required: " in message \
            else []
        taken = message.split("value: ", 1)[1].strip("'") if message.startswith("argument --wavelength: invalid") \
            and "value: " in message else None
        if taken is not None and _looks_like_a_file(taken) and any(
                a.nargs is None and not a.option_strings for a in self._actions):  # '--wavelength 0.5 in.tif'
            return ": --wavelength takes one value per channel, up to the next option; give it after the input"
        quoted = message.rsplit("'", 2)  # the value refused, last in the message
        for action in self._actions:  # '--voxel-size 0.1 0.1 in.tif' (the Y X form) took the input as DZ DY DX
            if isinstance(action, SpatialSizes) and message.startswith(f"argument {'/'.join(action.option_strings)}:") \
                    and len(quoted) == 3 and not quoted[2] and _looks_like_a_file(quoted[1]):
                return (f": {action.option_strings[0]} takes up to 3 values, so it took {quoted[1]} too; give it "
                        "after the input")
        if not any(not name.startswith("-") for name in missing):  # only a positional can have been taken
            return ""
        for option in ("--psf", "--wavelength"):
            for at in (i for i, a in enumerate(given) if a == option):  # (each of a repeated option's occurrences)
                after = given[at + 1:]
                values = next((after[:i] for i, a in enumerate(after) if a.startswith("-") and len(a) > 1), after)
                if len(values) > 1:
                    return (f": {option} took {' '.join(values)} (it takes one value per channel, up to the next "
                            f"option); give the {option} values after the input, or end them with another option")
        return ""


def check_output(output, inputs=(), **kwargs) -> None:
    """:func:`deconv3d.io.check_output_path`, then remove what killed runs left of this output on
    this machine: hidden temporaries as large as the output, which only chunked runs swept before
    (a killed in-memory run to .tif left its own for good)."""
    from deconv3d._paths import check_output_path, remove_stale_temporaries

    check_output_path(output, inputs, **kwargs)
    remove_stale_temporaries(output)


def check_environment() -> None:
    """Refuse a wrong ``DECONV3D_*`` setting before any work, by the parsers that read each where it
    is used: the same one-line error (exit 2) for every command and image size. Read only there, a
    mistyped ``DECONV3D_FFTW_PLANNER`` was ignored for images too small for FFTW and failed only a
    batch's large files, and a wrong ``DECONV3D_FFT`` failed every file of a batch one by one (exit 3).
    (``DECONV3D_CACHE_DIR`` takes any value: one that cannot be used caches nothing.)"""
    from deconv3d._fftw import fft_choice
    from deconv3d._fftw_planning import planner_choice
    from deconv3d._rl_ops import fused_choice

    fft_choice()
    planner_choice()
    fused_choice()
    _log_interval()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's cancel or time limit) or SIGHUP (a dropped ssh session), raised
    in the main thread as Ctrl-C is: the same clean-up runs (temporaries removed, a batch report
    written). ``signum``: the signal; :attr:`name` names it, :attr:`status` is the exit status, 128 + it."""

    def __init__(self, signum: int = 15):  # (SIGTERM)
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        return 128 + self.signum


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # argparse would print "invalid positive_int value"
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_optics(p: argparse.ArgumentParser, required: bool, per_channel: bool = False) -> None:
    """The microscope's options; ``per_channel``: ``--wavelength`` takes one value per channel, and
    a repeated ``--wavelength`` adds to them (as ``--psf``), where a second one used to replace the first."""
    g = p.add_argument_group("microscope (for generated PSFs)")
    g.add_argument("--na", type=positive_float, required=required, help="numerical aperture of the objective")
    if per_channel:
        g.add_argument("--wavelength", type=positive_float, nargs="+", action="extend", metavar="UM",
                       required=required, help="emission wavelength in µm, or one per channel of a multi-channel "
                       "input (--wavelength 0.5 0.6, or repeated: --wavelength 0.5 --wavelength 0.6)")
    else:
        g.add_argument("--wavelength", type=positive_float, required=required, help="emission wavelength in µm")
    g.add_argument("--ni", type=positive_float, default=1.515, help="immersion refractive index (default 1.515, oil)")
    g.add_argument("--ns", type=positive_float, default=1.33, help="sample refractive index (default 1.33, water; "
                   "gibson-lanni and vectorial only)")
    g.add_argument("--depth", type=float, default=0.0, help="depth below the coverslip in µm (default 0); the "
                   "PSF's z index runs from the coverslip into the sample")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


#: Seconds between the progress lines written when stderr is not a terminal (a cluster job's log);
#: the environment variable ``DECONV3D_PROGRESS_SECONDS`` sets another.
LOG_INTERVAL = 30.0


def make_bar(total=None, desc: str = "", unit: str = "it"):
    """A progress bar on stderr: tqdm's on a terminal; elsewhere (a log file, a cluster job's
    output) a :class:`LogBar`, whose plain lines tell how far a long run is (tqdm hides itself
    there, so a run of hours logged nothing until it ended)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    return LogBar(total, desc, unit)


class LogBar:
    """Progress for a log: a line ``desc: n/total unit (p%), elapsed, about t left`` on stderr at
    most every :data:`LOG_INTERVAL` seconds, and a last one at the end of a run that wrote any
    (short runs write none). The part of tqdm's interface the commands use."""

    def __init__(self, total=None, desc: str = "", unit: str = "it"):
        import time

        self._clock = time.monotonic
        self.total, self.desc, self.unit, self.n, self._postfix = total, desc, unit, 0, ""
        self._start = self._last = self._clock()
        self._wrote, self._said = False, None  # (the count the last line gave)

    def update(self, k=1) -> None:
        self.n += k
        if self._clock() - self._last >= _log_interval():
            self._line()

    def _line(self, end: bool = False) -> None:
        now = self._clock()
        elapsed = now - self._start
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        text = f"{self.desc}: {done}, {_duration(elapsed)}"
        if not end and self.total and 0 < self.n < self.total:
            text += f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        print(text + (f" [{self._postfix}]" if self._postfix else ""), file=sys.stderr, flush=True)
        self._last, self._wrote, self._said = now, True, self.n

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def reset(self, total=None) -> None:
        self.n, self.total, self._start = 0, total, self._clock()
        self._last, self._said = self._start, None  # the next line one interval on, with a rate to go by

    def clear(self) -> None:
        pass

    def close(self) -> None:
        if self._wrote and (not self.total or self.n >= self.total) and self._said != self.n:
            self._line(end=True)
        self._wrote = False

    def __enter__(self):
        return self

    def __exit__(self, kind, *_exc) -> None:
        if kind is not None:
            self._wrote = False  # an error or Ctrl-C says its own line
        self.close()


def _log_interval() -> float:
    """``DECONV3D_PROGRESS_SECONDS`` (:data:`LOG_INTERVAL` where unset); a value that is not a
    number of seconds, 0 or more, is an InputError, which :func:`check_environment` raises at
    start-up: "1s" or "nan" were taken silently as 30 s or as never. ``inf`` is never: no lines."""
    import os

    text = os.environ.get("DECONV3D_PROGRESS_SECONDS", "").strip()
    if not text:
        return LOG_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # (nan is not; inf is, and turns the lines off)
        raise InputError(f"DECONV3D_PROGRESS_SECONDS={text!r} is not a number of seconds (0 or more, e.g. 30, or inf): "
                         "fix it or unset it")
    return value


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def progress(total: int, desc: str):
    """A progress bar on stderr (:func:`make_bar`) and an RL callback feeding it (which reads no
    estimate: RL on data of extreme intensities hands it no scaled copy per iteration)."""
    from deconv3d.classical.rl import _ignores_estimate

    bar = make_bar(total, desc, "it")

    @_ignores_estimate
    def callback(iteration, _estimate):
        bar.update(iteration - bar.n)

    return bar, callback


def voxel_size_of(args, image):
    """``--voxel-size`` (its last ``ndim`` values: :func:`spatial_sizes`) when given, else the file's;
    a voxel size the file records but that is not positive is refused rather than dropped."""
    problem = getattr(image, "voxel_problem", None)
    if problem and not args.voxel_size:
        raise InputError(f"{problem}: pass --voxel-size DZ DY DX (in µm)")
    name = getattr(args, "input", None) or getattr(args, "beads", "the image")
    voxel = spatial_sizes(args.voxel_size, image.data.ndim, "--voxel-size", name, "DZ DY DX") or image.voxel_size
    fix = ("give --voxel-size in micrometres" if args.voxel_size else
           "the file's unit is wrong: fix it (Fiji: Image > Properties) or pass --voxel-size in µm")
    if voxel is None:
        if not args.voxel_size:  # the sizes a file records for some axes only
            refuse_nanometres(getattr(image, "partial_voxel", None), fix)
        return None
    voxel = tuple(voxel)[-image.data.ndim:]
    if min(voxel) <= 0:
        raise InputError(f"voxel size {voxel} must be positive: pass --voxel-size DZ DY DX")
    refuse_nanometres(voxel, fix)
    return voxel


def load_psf(args, image, voxel, fit_image: bool = True):
    """``--psf`` or ``--psf-model``, prepared for ``image``; ``fit_image=False`` allows a PSF larger than it."""
    from deconv3d.io import psf_voxel_size, read_psf
    from deconv3d.psf import generate_psf, prepare_psf
    from deconv3d.psf.generate import generated_psf_shape

    if args.psf:
        psf = read_psf(args.psf)
        return prepare_psf(psf.data, image.data.shape, psf_voxel=psf_voxel_size(psf, voxel), image_voxel=voxel,
                           fit_image=fit_image)
    if args.na is None or args.wavelength is None:
        raise InputError("--psf-model needs --na and --wavelength: add them, or give a measured --psf file")
    if image.data.ndim != 3:
        raise InputError("--psf-model generates 3D PSFs: for a 2D image give a --psf file, e.g. one plane made by "
                         "'deconv3d psf --shape 1 31 31 ...'")
    if voxel is None or len(voxel) != 3:
        from deconv3d.io import _sizes

        partial = getattr(image, "partial_voxel", None)
        partial = partial if partial is not None and len(partial) == 3 else (None,) * 3
        missing = "/".join(a for a, v in zip("zyx", partial) if v is None)
        raise InputError(f"--psf-model needs the image's voxel size, and the image records no {missing} size: "
                         f"pass --voxel-size {_sizes(partial)}")
    shape = generated_psf_shape(image.data.shape, voxel, args.na, args.wavelength)
    psf = generate_psf(args.psf_model, shape, voxel, args.na, args.wavelength, ni=args.ni, ns=args.ns,
                       depth=args.depth)
    return prepare_psf(psf, image.data.shape, psf_voxel=voxel, image_voxel=voxel)


def print_warnings(lines: list) -> None:
    """Print, once, warnings collected while the input was checked (then the list is empty)."""
    for line in lines:
        say(line)
    lines.clear()


def warning_text(message) -> str:
    """A library warning in the command line's words: its ``command_line`` where it names keyword
    arguments (:class:`~deconv3d.errors.OptionWarning`), else itself."""
    return str(getattr(message, "command_line", message))


def show_warning(message, category=None, filename=None, lineno=None, file=None, line=None) -> None:
    """Print a library warning (or a line of text) as the command line's own ``deconv3d: warning:``
    line; :func:`warnings.showwarning`'s signature, which ``main`` installs it as."""
    say(f"{PREFIX}{warning_text(message)}")


def say(line: str) -> None:
    """Print ``line`` on stderr; on a terminal through tqdm, which clears a live progress bar first
    and draws it again below (printed into it, a warning began mid-line: "predict: 0tile [00:00,
    ?tile/s]deconv3d: warning: ..."). Control characters in it are escaped (:func:`line_text`): a
    newline in a file name split the line."""
    line = line_text(line)
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def say_last(line: str) -> None:
    """Print ``line`` on stderr as a stopped or failed run's last line, lost where the terminal is
    gone (the SIGHUP of a dropped ssh session: EIO; a closed pipe: EPIPE): the exit status stays the
    run's (the OSError had made a SIGHUP's 129 an internal error whose own line failed too, exit 1
    with tracebacks)."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def check_negative(data, source, method: str, warnings: list) -> None:
    """Background-subtracted data: Richardson-Lucy counts negative voxels as 0, and the network's
    output (and its Richardson-Lucy reference) is non-negative too. An image with no positive
    value but negative ones would come back all zeros and is refused; many negative voxels get a
    warning."""
    import numpy as np

    from deconv3d.errors import refuse_no_positive, warn_negative_share

    if not float(np.max(data)) > 0 and float(np.min(data)) < 0:  # all zero stays allowed: zeros come back
        refuse_no_positive(source, method)
    warn_negative_share(float(np.mean(data < 0)), source, method, warnings)
