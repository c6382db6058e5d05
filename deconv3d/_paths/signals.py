"""The section that keeps a termination signal from cutting the publishing of an output in two
(:func:`signals_deferred`, :func:`publishing`): a handler that asks :func:`defer_signal` records
its signal, which is raised again as the outermost section ends. The depth and the deferred signal
are kept here, once (:data:`_DEFERRED`)."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def signals_deferred():
    """A section of the main thread that a termination must not cut in two: publishing an output, where an
    earlier one is moved aside and the new one renamed into its place (a SIGTERM between the two renames
    removed both). A signal handler that asks :func:`defer_signal` (the command line's, for SIGTERM and
    SIGHUP) records its signal there instead of raising, and the signal is raised again, once, as the
    outermost section ends. Elsewhere, and in other threads (Python runs handlers in the main thread
    only), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        signum = None if _DEFERRED["depth"] else _DEFERRED.pop("signum", None)
        if signum is not None:
            signal.raise_signal(signum)  # (its handler runs now, in this thread)


@contextlib.contextmanager
def publishing(path):
    """:func:`signals_deferred` around putting the finished output ``path`` in place (its rename): a signal
    deferred meanwhile is raised as the section ends, and once the block has completed its exception carries
    ``published`` (``path``), so that the command line says the output was written (it had said that none
    was, the new output in place)."""
    done = False
    try:
        with signals_deferred():
            yield
            done = True
    except BaseException as exc:
        if done:
            exc.published = str(path)
        raise


def defer_signal(signum: int) -> bool:
    """For a signal handler: inside :func:`signals_deferred`, record ``signum`` (the first one), to be raised
    again as the section ends, and return True; elsewhere False."""
    if not _DEFERRED["depth"]:
        return False
    _DEFERRED.setdefault("signum", signum)
    return True


#: How deep the main thread is in :func:`signals_deferred` sections, and the signal deferred meanwhile.
_DEFERRED: dict = {"depth": 0}
