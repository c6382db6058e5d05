"""The ``deconv3d`` command line: the only module that prints to the terminal or exits.

Exit status: 0 done; 2 bad input or usage, not enough memory for the run, or a full or
read-only disk (one line ``deconv3d: error: ...`` on stderr, no output file left behind); 3 a
batch in which some files failed (the others are complete); 130 interrupted (Ctrl-C), 143
terminated (SIGTERM, as a cluster scheduler sends) and 129 hung up (SIGHUP, a dropped ssh session),
with nothing partial left (``train`` writes the checkpoint of the steps it trained before the signal:
:mod:`~deconv3d.cli.stopping`); 141, silently, when standard output is a pipe whose reader has closed it
(``| head``: the files a batch finished are in its report); 1 an
unexpected internal error. ``--debug`` prints the traceback first, with the same status. The
contract is the design document's command-line section (DESIGN.md, shared with the project),
whose list of statuses (0, 2, 3, 1) the signals' 130, 143, 129 and 141 go beyond: they follow the
shell's convention of 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import traceback
import warnings

from deconv3d import __version__
from deconv3d._paths import SPACE_ERRORS, line_text, out_of_space, settle_zarr
from deconv3d.errors import OWN_MODULES, Deconv3dWarning, InputError

from . import blur, classical, pipeline, selfsup
from ._common import Terminated, check_environment
from ._signals import TERMINATING, _terminate_as_interrupt
from .arguments import Parser, add_common
from .printing import say_last, show_warning

# TERMINATING, defined in ._signals with the signal handling, stays importable from deconv3d.cli.
__all__ = ["main", "build_parser", "TERMINATING"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="deconv3d", description="Deconvolution of 3D fluorescence microscopy.")
    parser.add_argument("--version", action="version", version=f"deconv3d {__version__}")
    add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    classical.register(sub)
    blur.register(sub)
    selfsup.register(sub)
    pipeline.register(sub)
    _record_progs(parser)
    return parser


def _record_progs(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command records its own name, for usage errors the top-level parser reports."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.set_defaults(_prog=child.prog)
                _record_progs(child)


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept the contract's ``psf distill BEADS`` spelling for the ``psf-distill`` command."""
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            continue
        if arg == "psf" and i + 1 < len(argv) and argv[i + 1] == "distill":
            return argv[:i] + ["psf-distill"] + argv[i + 2:]
        break
    return argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deconv3d`` command; returns the exit status. Without ``argv`` it is the
    program (``deconv3d``, ``python -m deconv3d``), which ends when it returns: after SIGTERM or SIGHUP,
    logging then stays off (see :func:`~deconv3d.cli._signals._terminate_as_interrupt`); given ``argv``
    (called from Python), logging is as the caller had it once it returns, and the zarr reads or writes a
    failure left are waited for, not cancelled (they may be another thread's)."""
    program = argv is None
    argv = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    restore = _tolerant_output()
    try:
        args = _parse(argv)
        check_environment()
        with warnings.catch_warnings(), _terminate_as_interrupt(program):
            _warnings_as_output()
            return args.func(args)
    except InputError as exc:
        return _input_error(exc, debug)
    except (MemoryError, RuntimeError) as exc:  # numpy's MemoryError; torch's allocation failures
        return _memory_error(exc, debug)
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return _PIPE_CLOSED
        return _write_error(exc, debug)
    except Exception as exc:  # noqa: BLE001 - the contract: unexpected errors exit 1
        return _internal(exc, debug)
    finally:
        # What a failed zarr read or write left: no asyncio lines after the error's. Queued chunks are
        # cancelled only by the program, all of whose zarr work is its own; main(argv) called from Python
        # only waits, as another thread of the caller's may be writing zarr (its queued chunks were cancelled).
        settle_zarr(cancel=program)
        restore()


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line's arguments; an argument no command takes is an :class:`InputError`."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # reported here by argparse, it would point at the top-level help
        from deconv3d.cli.arguments import repeat_hint

        raise InputError(f"unrecognized arguments: {' '.join(extra)}{repeat_hint(argv)} "
                         f"(see '{getattr(args, '_prog', 'deconv3d')} --help')")
    return args


def _warnings_as_output() -> None:
    """Show the library's warnings as the command's own lines (within ``warnings.catch_warnings()``).

    They are part of the command's output, whatever PYTHONWARNINGS says ('ignore' hid them, 'error'
    failed the run or every file of a batch): its own RuntimeWarnings once per place as Python's
    default does, errors.warn's lines (Deconv3dWarning) every time."""
    warnings.showwarning = show_warning
    warnings.filterwarnings("default", module=OWN_MODULES)
    warnings.simplefilter("always", Deconv3dWarning)


def _input_error(exc: InputError, debug: bool) -> int:
    """The exit status of bad input (2), after its one line (and, with ``--debug``, the traceback first)."""
    if debug:
        traceback.print_exc()
    print(f"deconv3d: error: {line_text(str(exc))}", file=sys.stderr)
    return 2


def _memory_error(exc: BaseException, debug: bool) -> int:
    """The exit status of a MemoryError or RuntimeError: out of memory, one line (2); else an internal error."""
    out_of_memory = isinstance(exc, MemoryError) or any(
        words in str(exc) for words in ("out of memory", "can't allocate memory"))
    if not out_of_memory:
        return _internal(exc, debug)
    if debug:
        traceback.print_exc()
    from deconv3d._paths import _one_line

    print(f"deconv3d: error: not enough memory for this run ({_one_line(exc)}): use "
          "smaller sizes (batch, widths, levels, chunks) or set --memory-limit where the command has it",
          file=sys.stderr)
    return 2


def _stopped(exc: KeyboardInterrupt) -> int:
    """The last line and exit status of a command stopped by Ctrl-C, SIGTERM or SIGHUP."""
    how = f"terminated ({exc.name})" if isinstance(exc, Terminated) else "interrupted"
    # It came as the output was put in place (atomic_output), and that output stays: not a chunked run's
    # scratch folder for a TIFF, removed since.
    published = getattr(exc, "published", None)
    published = published if published is not None and os.path.lexists(published) else None
    say_last(f"deconv3d: {how} after {published} was written: the output is complete" if published else
             f"deconv3d: {how} as the command ended: what it reported stands" if getattr(exc, "ended", False)
             else f"deconv3d: {how}; no output was written")
    return exc.status if isinstance(exc, Terminated) else 130


def _write_error(exc: OSError, debug: bool) -> int:
    """The exit status of an OSError: a full, read-only or forbidden place, one line (2); else an internal error."""
    if exc.errno not in _WRITE_ERRORS and not out_of_space(exc):
        return _internal(exc, debug)
    if debug:
        traceback.print_exc()
    from deconv3d._paths import _one_line

    if out_of_space(exc):  # (named: the output, where an error said no file, see atomic_output)
        print(f"deconv3d: error: no space left on {line_text(exc.filename or 'the device')}: free disk space, "
              "then run again; nothing was written", file=sys.stderr)
        return 2
    where = f"{line_text(exc.filename)}: " if exc.filename else ""  # a file being written, or one a block reads
    print(f"deconv3d: error: {where}{exc.strerror or _one_line(exc)}: check free disk space and permissions, "
          "then run again; nothing was written", file=sys.stderr)
    return 2


#: Errors of a full, read-only or forbidden place (met while writing, mostly): one line (exit 2), not an internal error.
_WRITE_ERRORS = (*SPACE_ERRORS, errno.EROFS, errno.EACCES, errno.EPERM)


def _tolerant_output():
    """Print text the stream cannot encode as backslash escapes instead of failing: with a strict
    stdout (a UTF-8 locale other than C), a file name that is not valid UTF-8 made "wrote ..." an
    internal error, exit 1, after the output had been written; it prints as ``out\\udce9.tif``."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict":
            try:
                stream.reconfigure(errors="backslashreplace")
                changed.append(stream)
            except (AttributeError, ValueError, OSError):
                pass

    def restore() -> None:  # (main() called from Python leaves the caller's streams as they were)
        for stream in changed:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(errors="strict")

    return restore


#: The exit status of a run whose standard output was a pipe its reader closed (``| head``): that of
#: a program a SIGPIPE ended (128 + 13), as Python does not die of it.
_PIPE_CLOSED = 141


def _stdout_closed() -> bool:
    """Whether standard output is a pipe or socket whose reader has gone (``deconv3d batch ... | head``, which
    stopped at its next progress line with "internal error: BrokenPipeError", exit 1). Later writes
    go nowhere (Python's flush of stdout at exit would fail again); no line is printed, as a program
    ended by SIGPIPE prints none. False where it cannot be told (no ``select.poll``: Windows)."""
    import os
    import select
    import stat

    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False  # (a terminal that hung up polls as closed too, and wrote nothing: not ours to hide)
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        # (a pipe without a reader: POLLERR; a socket whose peer closed: POLLHUP)
        closed = any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # (a stdout without a file: a test's capture)
        return False
    if closed:
        with contextlib.suppress(OSError):
            nowhere = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(nowhere, fd)
            finally:
                os.close(nowhere)
    return closed


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
        return 1
    say_last(f"deconv3d: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
    return 1

