"""SIGTERM and SIGHUP end a command as Ctrl-C does: :func:`_terminate_as_interrupt`, in which
:func:`deconv3d.cli.main` runs each command, and the handlers it puts in place (:class:`_Signals`)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

from deconv3d._paths import defer_signal

from ._common import Terminated

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
    caller's, which then runs). One that Python could not raise (a Ctrl-C too), raised in a C library's callback into Python (llvmlite's while numba compiles, a finalizer's, a gc callback's:
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
    signals = _Signals()
    signals.install()
    failed = []  # (the type of what the command raised; not sys.exception(), which in here is also the caller's
    try:  # exception being handled where main(argv) is called within an except block)
        yield
    except BaseException as exc:
        failed.append(type(exc))  # (the type only: the exception itself would hold its frames in a cycle)
        raise
    finally:
        try:  # (the handlers are put back whatever cuts this short: a signal sent again raised at the lock
            dropped = signals.end()  # left them in place, and the next SIGTERM raised Terminated in a run long over)
        finally:
            _put_back(signals.before, signals.swallowed, signals.hook_before,
                      signals.disabled if signals.stopped and not program else None)
        _raise_late(dropped or signals.arrived, failed)


class _Signals:
    """The handlers :func:`_terminate_as_interrupt` puts in place for one command, the state they share, and
    what they replaced (``before``: the signals' handlers; ``hook_before``, ``interrupt_before``, ``disabled``:
    the unraisable hook, SIGINT's handler and logging's level). Each handler is a bound method made once, so
    that the one installed is the one :func:`_put_back` finds."""

    def __init__(self):
        self.before, self.disabled, self.stopped = {}, logging.root.manager.disable, []
        # (the command runs; sending a signal again and ending, one at a time)
        self.active, self.lock = [True], threading.Lock()
        self.ending = []  # (the command's end has begun: its handlers are being put back)
        self.arrived = []  # (the first signal that came as the command ended)
        self.pending = []  # (a dropped signal, not yet sent again)
        self.handler, self.interrupted, self.swallowed = self._terminating, self._interrupted, self._swallowed

    def install(self) -> None:
        """Put the handlers in place: SIGTERM's and SIGHUP's, SIGINT's where Python's or a caller's is, the hook."""
        _install_terminating(self.handler, self.before)
        self.interrupt_before = signal.getsignal(signal.SIGINT)
        # Python's (KeyboardInterrupt) or a caller's: run once an output is in place
        if callable(self.interrupt_before):
            self.before[signal.SIGINT] = signal.signal(signal.SIGINT, self.interrupted)
        self.hook_before, sys.unraisablehook = sys.unraisablehook, self.swallowed

    def end(self) -> list:
        """Begin the command's end: nothing is sent again from now on (one sent, its handler not yet run, is let
        pass). Returns the dropped signal not yet sent again, in a list (empty where none)."""
        self.ending.append(True)
        with self.lock:
            self.active.clear()
            return self.pending[:1]

    def _terminating(self, signum, frame):
        # The first one's clean-up runs: a second signal (a scheduler's SIGTERM to every process of the job, a
        # SIGHUP after it) cut its waits short, and a block still writing made the removed temporary output
        # again. Only while it runs: ignoring every later signal once one had been raised, a Terminated that a
        # C callback dropped left the run deaf to SIGTERM and SIGHUP (it finished, exit 0, its output written).
        # (A Terminated of this command's, being handled: not a caller's, within whose except block main(argv) ran,
        # which left the whole run deaf to SIGTERM and SIGHUP.)
        if (self.stopped and _handling(Terminated)) or _hook_frame(frame) is not None:
            return  # (within the hook: the dropped one is sent again, and ends the run)
        # (As the command ends: raised once the handlers are back; one sent again is still pending, and raised so,
        # but a new one, a user's kill, came only here and was lost.)
        if self.ending:
            self.arrived[:] = self.arrived or [signum]
            return
        if defer_signal(signum):
            return  # an output is being put in place: raised once it is (signals_deferred)
        # The process is asked to end: what its clean-up stops (a dask cluster's nannies, its event loop, a
        # worker still starting) logs nothing (29-50 lines of tracebacks came after the run's own line).
        self.stopped.append(signum)
        self.pending.clear()  # (one dropped before: this one ends the run)
        logging.disable(logging.CRITICAL)
        raise Terminated(signum)

    def _interrupted(self, signum, frame):
        hook = _hook_frame(frame)
        if hook is not None:  # (raised in the hook it would be dropped too: sent again once the hook has returned)
            _send_again(signum, hook, self.lock, self.active, self.pending)
        elif not defer_signal(signum):  # (an output being put in place: Ctrl-C there removed it and the earlier one)
            self.pending.clear()  # (one dropped before: this one ends the run)
            self.interrupt_before(signum, frame)

    def _swallowed(self, unraisable):
        signum = _signal_of(unraisable.exc_value, unraisable.exc_traceback)
        if signum is None or not _send_again(signum, sys._getframe(), self.lock, self.active, self.pending):
            self.hook_before(unraisable)


def _signal_of(exc, tb) -> int | None:
    """The signal whose handler raised ``exc`` (its traceback ``tb``), where a handler of :class:`_Signals` did: a
    :class:`Terminated`'s, or SIGINT for a KeyboardInterrupt raised through :meth:`_Signals._interrupted` (Ctrl-C);
    None for any other exception. A Ctrl-C raised in a finalizer (a ``__del__``, a weakref or gc callback) of the
    main thread was printed as "Exception ignored in ..." and dropped, and the run went on to the end with exit 0
    (seen once in a ``batch --scheduler processes`` stopped 6 s in)."""
    import traceback

    if isinstance(exc, Terminated):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt) and any(
            frame.f_code is _Signals._interrupted.__code__ for frame, _ in traceback.walk_tb(tb)):
        return signal.SIGINT
    return None


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
    already does (``failed``: the type of what the command raised, if it raised): raised as a Terminated (a
    KeyboardInterrupt for Ctrl-C's SIGINT) whose ``ended`` says whether the command had finished (what it wrote
    stands)."""
    if late_signals and not (failed and issubclass(failed[0], KeyboardInterrupt)):
        late = KeyboardInterrupt() if late_signals[0] == signal.SIGINT else Terminated(late_signals[0])
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


def _hook_frame(frame):
    """The frame of :meth:`_Signals._swallowed` (the unraisable hook) among ``frame`` and its callers: a signal
    handled within the hook; None where there is none."""
    return next((f for f in _stack(frame) if f.f_code is _Signals._swallowed.__code__), None)


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
