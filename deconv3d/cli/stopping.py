"""A training that the first Ctrl-C (SIGINT), SIGTERM or SIGHUP stops after its current step
(:class:`StopRequest`), so that ``deconv3d train`` keeps the steps already trained, as PyTorch
Lightning and CAREamics do. The signal after it stops the command at once, as without it."""

from __future__ import annotations

import contextlib
import signal
import threading

from ._common import Terminated

#: The signals a request to stop comes by: Ctrl-C's, and those the command line ends on as it does
#: (:data:`deconv3d.cli.TERMINATING`), where this platform has them.
STOPPING = ("SIGINT", "SIGTERM", "SIGHUP")


class StopRequest:
    """The first of the :data:`STOPPING` signals that comes once :meth:`arm` has been called: recorded in
    :attr:`signum` instead of ending the command, whose handlers are put back at once, so that the next
    one ends it as usual (no output written, or the output complete: the checkpoint is written
    atomically). A signal that whoever started us ignored (SIGINT in a background job, SIGHUP under
    nohup) stays ignored; outside the main thread (``main(argv)`` called from another thread), where
    Python runs no signal handler, nothing is armed."""

    def __init__(self):
        self.signum: int | None = None
        self._before: dict = {}
        self._armed = False

    def arm(self) -> None:
        """Handle the next stopping signal (once: after one came, or after :meth:`disarm`, nothing is armed again)."""
        if self._armed or self.signum is not None or threading.current_thread() is not threading.main_thread():
            return
        self._armed = True
        for name in STOPPING:
            signum = getattr(signal, name, None)  # (Windows has no SIGHUP)
            if signum is not None and callable(signal.getsignal(signum)):  # (the command line's, or Python's)
                self._before[signum] = signal.signal(signum, self._asked)
        if self.signum is not None:  # one came while they were installed: those installed after it are put back
            self.disarm()  # (left in place, they had swallowed the second signal, which is to stop at once)

    def _asked(self, signum, frame) -> None:
        self.signum = signum
        self.disarm()

    def disarm(self) -> None:
        """Put back the handlers :meth:`arm` replaced; nothing is armed again."""
        self._armed = True
        before, self._before = self._before, {}
        for signum, handler in before.items():
            signal.signal(signum, handler)

    @property
    def asked(self) -> bool:
        """Whether a stopping signal came (training then stops after its current step)."""
        return self.signum is not None

    def how(self) -> str:
        """The signal in the command line's words (:func:`deconv3d.cli._stopped`'s): ``interrupted``
        for Ctrl-C, ``terminated (SIGTERM)`` or ``terminated (SIGHUP)``."""
        return "interrupted" if self.signum == signal.SIGINT else f"terminated ({Terminated(self.signum).name})"

    def reason(self) -> str:
        """Why training stopped, for the checkpoint's record: ``interrupted (SIGINT)``, ``terminated (SIGTERM)``
        or ``terminated (SIGHUP)``."""
        return "interrupted (SIGINT)" if self.signum == signal.SIGINT else self.how()

    def status(self) -> int:
        """The exit status the command line gives the signal: 130 for Ctrl-C, 128 + its number for the others."""
        return 130 if self.signum == signal.SIGINT else Terminated(self.signum).status


@contextlib.contextmanager
def stop_request():
    """A :class:`StopRequest`, disarmed (its handlers put back) however the block ends."""
    request = StopRequest()
    try:
        yield request
    finally:
        request.disarm()
