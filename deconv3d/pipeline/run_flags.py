"""The abandon flag of a chunked run, and what the thread computing a block knows of its run.

A run is abandoned when it is interrupted, fails in a block, or is cancelled (by its progress
callback or the caller's ``cancel`` event): :class:`_RunFlag` is that flag in this process,
:class:`_ClusterFlag` on a dask.distributed worker (a named ``distributed.Event``, polled every
:data:`CLUSTER_POLL` seconds). ``_BLOCK`` holds, per worker thread, the flag of the run whose
block the thread computes and its share of the cores; a block callable asks :func:`abandoned`
whether to stop early and :func:`block_run` for an object that lives as long as its run.
:mod:`deconv3d.pipeline.chunked` sets them around each block.
"""

from __future__ import annotations

import threading

__all__ = ["CLUSTER_POLL", "cancel_requested", "abandoned", "block_run"]


_BLOCK = threading.local()  # the abandon event of the run whose block this worker thread is computing

#: Seconds between a cluster task's questions to the scheduler whether its run was abandoned.
CLUSTER_POLL = 1.0


class _ClusterFlag:
    """A run's abandon flag on a dask.distributed cluster: a named ``distributed.Event`` that the
    client sets, read by a block's task (each read asks the scheduler: at most every
    :data:`CLUSTER_POLL` seconds). Cancelling a cluster's futures does not stop running tasks:
    without it a cancelled run's blocks ran on to their end, holding the workers."""

    def __init__(self, name: str):
        self.name, self._set, self._next = name, False, 0.0

    def is_set(self) -> bool:
        import time

        if not self._set and time.monotonic() >= self._next:
            from distributed import Event

            try:
                self._set = Event(self.name).is_set()
            except Exception:  # noqa: BLE001 - no scheduler to ask (gone): go on as before
                self._set = False
            self._next = time.monotonic() + CLUSTER_POLL
        return self._set


def cancel_requested(cancel) -> bool:
    """Whether a caller's ``cancel`` event (None, or anything with ``is_set()``) is set."""
    return cancel is not None and bool(cancel.is_set())


class _RunFlag:
    """A run's abandon flag in this process: set when the run is given up (interrupted, failed in a
    block, cancelled by its progress callback), or by the caller's ``cancel`` event (any object
    with ``is_set()``, e.g. a ``threading.Event``), which another thread may set at any time."""

    def __init__(self, cancel=None):
        self._own, self._cancel = threading.Event(), cancel

    def set(self) -> None:
        self._own.set()

    def cancelled(self) -> bool:
        """Whether the caller's ``cancel`` event is set."""
        return cancel_requested(self._cancel)

    def is_set(self) -> bool:
        return self._own.is_set() or self.cancelled()


def abandoned() -> bool:
    """Whether the run of the block this thread computes has been abandoned (interrupted, cancelled
    by its progress callback or its ``cancel`` event, or failed in another block). A block
    callable's long loop may check it to stop early (RL per iteration, the network per tile): its
    result is then discarded, and the run ends without waiting for the rest of the block.

    Always False outside :func:`~deconv3d.pipeline.chunked.run_blocks`' tasks (in-memory runs, dask
    graphs). On a cluster's workers it asks the scheduler, at most once every :data:`CLUSTER_POLL`
    seconds.
    """
    event = getattr(_BLOCK, "abandon", None)
    return event is not None and event.is_set()


def block_run():
    """The run whose block this thread computes: an object that lives as long as the run (one
    :func:`~deconv3d.pipeline.chunked.run_blocks` call in this process; on a cluster's workers, the
    block's task), or None outside run_blocks' tasks. A block callable may keep what it set up for one block for the
    next blocks of its run, for this object (RL's and Wiener's OTF: :mod:`deconv3d.classical._reuse`): the run
    drops it when it ends, failed or cancelled too."""
    return getattr(_BLOCK, "abandon", None)
