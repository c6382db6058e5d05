"""What the command line prints on stderr while it runs: progress bars (:func:`make_bar`: tqdm's
on a terminal, a :class:`LogBar`'s plain lines in a log, every ``DECONV3D_PROGRESS_SECONDS``),
an RL callback feeding one (:func:`progress`), a large file's hash with one (:func:`hashed`), and
the command line's own lines: warnings (:func:`show_warning`, :func:`print_warnings`), any line
(:func:`say`; :func:`say_long_step` for a large image's step with no count) and a stopped run's last line
(:func:`say_last`)."""

from __future__ import annotations

import contextlib
import math
import sys

from deconv3d._paths import line_text
from deconv3d.errors import PREFIX, InputError

#: Seconds between the progress lines written when stderr is not a terminal (a cluster job's log);
#: the environment variable ``DECONV3D_PROGRESS_SECONDS`` sets another.
LOG_INTERVAL = 30.0


#: tqdm's bar without its time left, for a run that a time budget may end first (tqdm's default, less
#: ``<{remaining}``).
BUDGET_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def make_bar(total=None, desc: str = "", unit: str = "it", budget: float | None = None):
    """A progress bar on stderr: tqdm's on a terminal; elsewhere (a log file, a cluster job's
    output) a :class:`LogBar`, whose plain lines tell how far a long run is (tqdm hides itself
    there, so a run of hours logged nothing until it ended). ``budget`` (seconds from now: a
    ``--time-budget`` that may end the run before ``total``) bounds the time left a log's line
    gives; tqdm's bar then gives none (counted to ``total``, it said hours for a run of a minute)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False,
                    **({"bar_format": BUDGET_BAR_FORMAT} if budget is not None else {}))
    return LogBar(total, desc, unit, budget)


class LogBar:
    """Progress for a log: a line ``desc: n/total unit (p%), elapsed, about t left`` on stderr at
    most every :data:`LOG_INTERVAL` seconds, and a last one at the end of a run that wrote any
    (short runs write none). The part of tqdm's interface the commands use."""

    def __init__(self, total=None, desc: str = "", unit: str = "it", budget: float | None = None):
        import time

        self._clock = time.monotonic
        self.total, self.desc, self.unit, self.n, self._postfix = total, desc, unit, 0, ""
        self._start = self._last = self._clock()
        self._ends_by = None if budget is None else self._start + budget  # (a time budget's end)
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
            left = elapsed * (self.total - self.n) / self.n
            if self._ends_by is not None:
                left = max(min(left, self._ends_by - now), 0.0)
            text += f", about {_duration(left)} left"
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


#: Inputs larger than this (bytes) get a progress bar (:func:`make_bar`) while they are hashed:
#: a whole second read of the file, which on a stack of gigabytes took long enough to look stuck.
HASH_PROGRESS_BYTES = 256 * 2**20


def hashed(path, desc: str) -> str:
    """:func:`~deconv3d.omezarr.file_sha256` of ``path``, with a bar in megabytes (:func:`megabyte_bar`,
    described ``desc``) where it is larger than :data:`HASH_PROGRESS_BYTES`; the same hash either way."""
    from deconv3d.omezarr import file_sha256

    with megabyte_bar(desc, HASH_PROGRESS_BYTES) as shown:
        return file_sha256(path, progress=shown)


@contextlib.contextmanager
def megabyte_bar(desc: str, least: int = 0):
    """A ``report(done, total)`` callback in bytes, shown as a bar in megabytes (:func:`make_bar`, described
    ``desc``) from its first report of a total larger than ``least``, and filled at the end of the ``with``
    (not after an error: the bar closes as make_bar's do, and a LogBar writes no last line then)."""
    bar = None
    with contextlib.ExitStack() as bars:

        def report(done: int, total: int) -> None:
            nonlocal bar
            if bar is None and total > least:
                bar = bars.enter_context(make_bar(math.ceil(total / 1e6), desc, "MB"))
            if bar is not None:
                bar.update(min(done // 10**6, bar.total) - bar.n)

        yield report
        if bar is not None:
            bar.update(bar.total - bar.n)


#: Images larger than this (bytes) get a line saying what runs on them where a step has no count to show
#: (:func:`say_long_step`): Wiener on 200 x 512 x 512 voxels (200 MB) took 6-7 s here, with nothing on stderr.
LONG_STEP_BYTES = 128 * 2**20


def say_long_step(nbytes: int, line: str) -> None:
    """:func:`say` ``line`` where the data it is about is larger than :data:`LONG_STEP_BYTES`."""
    if nbytes > LONG_STEP_BYTES:
        say(line)


def progress(total: int | None, desc: str, budget: float | None = None):
    """A progress bar on stderr (:func:`make_bar`, ``budget`` as it takes it) and an RL callback feeding
    it (which reads no estimate: RL on data of extreme intensities hands it no scaled copy per iteration)."""
    from deconv3d.classical.rl import _ignores_estimate

    bar = make_bar(total, desc, "it", budget)

    @_ignores_estimate
    def callback(iteration, _estimate):
        bar.update(iteration - bar.n)

    return bar, callback


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


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural but for one: ``counted(1, "step")`` is "1 step" (a line read "1 steps")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
