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
import logging
import os
import signal
import sys
import threading
import traceback
import warnings

from deconv3d import __version__
from deconv3d._paths import SPACE_ERRORS, defer_signal, line_text, out_of_space, settle_zarr
from deconv3d.errors import OWN_MODULES, Deconv3dWarning, InputError

from . import blur, classical, pipeline, selfsup
from ._common import Terminated, check_environment
from .arguments import Parser, add_common
from .printing import say_last, show_warning


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
    logging then stays off (see :func:`_terminate_as_interrupt`); given ``argv`` (called from Python),
    logging is as the caller had it once it returns, and the zarr reads or writes a failure left are waited
    for, not cancelled (they may be another thread's)."""
    program = argv is None
    argv = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    restore = _tolerant_output()
    try:
        args = _parse(argv)
        check_environment()
        with warnings.catch_warnings(), _terminate_as_interrupt(program):
            warnings.showwarning = show_warning  # the library's warnings as the CLI's own lines
            # The library's warnings are part of the command's output, whatever PYTHONWARNINGS says
            # ('ignore' hid them, 'error' failed the run or every file of a batch): its own RuntimeWarnings
            # once per place as Python's default does, errors.warn's lines (Deconv3dWarning) every time.
            warnings.filterwarnings("default", module=OWN_MODULES)
            warnings.simplefilter("always", Deconv3dWarning)
            return args.func(args)
    except InputError as exc:
        if debug:  # the traceback, then the same line and status as without --debug
            traceback.print_exc()
        print(f"deconv3d: error: {line_text(str(exc))}", file=sys.stderr)
        return 2
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


#: The signals that end a command as Ctrl-C does, clean-up included: a cluster scheduler's SIGTERM, and
#: the SIGHUP of a dropped ssh session (which exited 129 with no message, temporaries and no report left).
TERMINATING = ("SIGTERM", "SIGHUP")


@contextlib.contextmanager
def _terminate_as_interrupt(program: bool = False):
    """While a command runs, SIGTERM and SIGHUP raise :class:`Terminated` naming the signal (in the
    main thread only, where Python runs signal handlers), and turn logging off for the clean-up; one
    ignored by whoever started us (SIGHUP under nohup) stays ignored. More of them while a Terminated
    is being handled (its clean-up: the except and finally blocks and context managers' exits it runs)
    are let pass, and one that comes while an output is put in place is raised once it is there
    (:func:`~deconv3d._paths.signals_deferred`), as is Ctrl-C's SIGINT (under Python's handler or a
    caller's, which then runs). One that Python could not raise, raised in a C library's callback into Python (llvmlite's while numba compiles, a finalizer's, a gc callback's:
    printed as "Exception ignored ..." and dropped), is sent again once the hook that reports it has
    returned, or raised as the command ends where that has not happened yet (its ``ended``: the command
    had finished). The previous handlers, and logging as it was, are restored afterwards (main called from
    Python had left the caller's logging off), also where a signal comes as the command ends (it is raised
    once they are, as is one sent again), except logging for the ``program``, which is ending: a
    stopped local cluster's child processes exit meanwhile, and distributed's thread watching them
    logged a WARNING after the run's last line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        # The first one's clean-up runs: a second signal (a scheduler's SIGTERM to every process of the job, a
        # SIGHUP after it) cut its waits short, and a block still writing made the removed temporary output
        # again. Only while it runs: ignoring every later signal once one had been raised, a Terminated that a
        # C callback dropped left the run deaf to SIGTERM and SIGHUP (it finished, exit 0, its output written).
        # (A Terminated of this command's, being handled: not a caller's, within whose except block main(argv) ran,
        # which left the whole run deaf to SIGTERM and SIGHUP.)
        if (stopped and _handling(Terminated)) or any(f.f_code is swallowed.__code__ for f in _stack(frame)):
            return  # (within the hook: the dropped one is sent again, and ends the run)
        if ending:  # (as the command ends: raised once the handlers are back; one sent again is still pending, and
            arrived[:] = arrived or [signum]  # raised so, but a new one, a user's kill, came only here and was lost)
            return
        if defer_signal(signum):
            return  # an output is being put in place: raised once it is (signals_deferred)
        # The process is asked to end: what its clean-up stops (a dask cluster's nannies, its event loop, a
        # worker still starting) logs nothing (29-50 lines of tracebacks came after the run's own line).
        stopped.append(signum)
        pending.clear()  # (one dropped before: this one ends the run)
        logging.disable(logging.CRITICAL)
        raise Terminated(signum)

    def interrupted(signum, frame):
        if not defer_signal(signum):  # (an output being put in place: Ctrl-C there removed it and the earlier one)
            interrupt_before(signum, frame)

    def swallowed(unraisable):
        if not isinstance(unraisable.exc_value, Terminated) or not _send_again(unraisable.exc_value.signum,
                                                                               sys._getframe(), lock, active,
                                                                               pending):
            hook_before(unraisable)

    before, disabled, stopped = {}, logging.root.manager.disable, []
    active, lock = [True], threading.Lock()  # (the command runs; sending a signal again and ending, one at a time)
    ending = []  # (the command's end has begun: its handlers are being put back)
    arrived = []  # (the first signal that came as the command ended)
    pending = []  # (a dropped signal, not yet sent again)
    _install_terminating(handler, before)
    interrupt_before = signal.getsignal(signal.SIGINT)
    if callable(interrupt_before):  # Python's (KeyboardInterrupt) or a caller's: run once an output is in place
        before[signal.SIGINT] = signal.signal(signal.SIGINT, interrupted)
    hook_before, sys.unraisablehook = sys.unraisablehook, swallowed
    failed = []  # (the type of what the command raised; not sys.exception(), which in here is also the caller's
    try:  # exception being handled where main(argv) is called within an except block)
        yield
    except BaseException as exc:
        failed.append(type(exc))  # (the type only: the exception itself would hold its frames in a cycle)
        raise
    finally:
        try:  # (the handlers are put back whatever cuts this short: a signal sent again raised at the lock
            ending.append(True)  # left them in place, and the next SIGTERM raised Terminated in a run long over)
            with lock:
                active.clear()  # (nothing is sent again from now on; one sent, its handler not yet run, is let pass)
                dropped = pending[:1]
        finally:
            _put_back(before, swallowed, hook_before, disabled if stopped and not program else None)
        _raise_late(dropped or arrived, failed)


def _install_terminating(handler, before: dict) -> None:
    """Make ``handler`` the handler of each of the :data:`TERMINATING` signals this platform has and whoever started
    us did not ignore (SIGHUP under nohup stays ignored), recording the handler each had in ``before``."""
    for name in TERMINATING:
        signum = getattr(signal, name, None)  # (Windows has no SIGHUP)
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
            before[signum] = signal.signal(signum, handler)


def _put_back(before: dict, swallowed, hook_before, disabled) -> None:
    """Restore what :func:`_terminate_as_interrupt` replaced: the unraisable hook (where ``swallowed`` is still the
    hook), the signals' handlers in ``before``, and logging's level of ``disabled`` where not None (after the
    clean-up, which ran in the block)."""
    if sys.unraisablehook is swallowed:
        sys.unraisablehook = hook_before
    for signum, handler_before in before.items():
        signal.signal(signum, handler_before)
    if disabled is not None:
        logging.disable(disabled)


def _raise_late(late_signals: list, failed: list) -> None:
    """A signal dropped as the command ended, not sent again in time, or one that came as it ended (the first of
    ``late_signals``): the command had ended with exit 0 and no word of it. It ends the run here, unless one
    already does (``failed``: the type of what the command raised, if it raised): raised as a Terminated whose
    ``ended`` says whether the command had finished (what it wrote stands)."""
    if late_signals and not (failed and issubclass(failed[0], KeyboardInterrupt)):
        late = Terminated(late_signals[0])
        late.ended = not failed  # (the command had finished: what it wrote stands)
        raise late


def _handling(kind) -> bool:
    """Whether an exception of ``kind`` is being handled in this thread (an except or finally block, a context
    manager's exit, run because of it), or is the context of one raised and handled meanwhile."""
    exc, seen = sys.exception(), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def _stack(frame):
    """``frame`` and the frames that called it, the caller's last."""
    while frame is not None:
        yield frame
        frame = frame.f_back


def _send_again(signum: int, hook, lock, active, pending) -> bool:
    """Send ``signum`` to the main thread again, as soon as the frame ``hook`` (the unraisable hook that was
    given the Terminated a C callback dropped, running in the main thread) has returned: raised inside the
    hook, it would be dropped again. Nothing is sent once the command is over (``active`` emptied under
    ``lock``); meanwhile ``pending`` holds it, for the command's end to raise it there. False where no
    thread can be started (the interpreter is ending). Sent as a signal to the main
    thread, which wakes it from a wait (``_thread.interrupt_main`` only flagged it: a main thread in an
    untimed ``Event.wait()`` stopped when the wait ended, 5 s late; still so where there is no ``pthread_kill``)."""
    import _thread
    import time

    main = threading.main_thread().ident

    def later():
        for _ in range(5000):  # (the hook returns at once; at most 5 s)
            if not any(f is hook for f in _stack(sys._current_frames().get(main))):
                break
            time.sleep(0.001)
        with lock:
            if active and pending:  # (kept until the handler raises it: the command's end may come first)
                if hasattr(signal, "pthread_kill"):  # (the signal itself: handled by the handler in place)
                    signal.pthread_kill(main, signum)
                else:  # (Windows)
                    _thread.interrupt_main(signum)

    try:
        pending[:] = [signum]
        threading.Thread(target=later, name="deconv3d-signal-again", daemon=True).start()
    except RuntimeError:
        pending.clear()
        return False
    return True


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

