"""The close of a local cluster that :func:`deconv3d.pipeline.cluster.scheduler_client` started: at the end of a run
(:func:`_close_at_the_end`) and on the way out of a stopped one (:func:`_close_quietly`), each run in a thread of its
own that a Ctrl-C meanwhile cuts short (:func:`_hurry`), distributed's log lines held back as it closes."""

from __future__ import annotations

import contextlib
import logging


def _instances(kind):
    """The live clients or clusters distributed keeps (a private weak set; an empty set in a version
    without it, where a run stopped while its workers start is then closed by distributed at exit)."""
    found = getattr(kind, "_instances", None)
    return found if found is not None else set()


def _close_quietly(*closing) -> None:
    """Close clients and local clusters on the way out of a run that Ctrl-C or SIGTERM stopped:
    distributed's log lines are held back meanwhile (a busy worker killed after 4 s: a nanny's
    WARNING), its errors are not raised, and no cluster is left for distributed to close again at
    exit. Stopped while its workers started, a run printed 29-50 lines of tracebacks after its own
    line (an AssertionError at exit, "Nanny failed to start worker process"). A second Ctrl-C meanwhile
    cuts the close short as at the end of a run (:func:`_closed_in_a_thread`)."""
    from distributed.deploy.spec import SpecCluster

    def close():
        for each in closing:
            with contextlib.suppress(Exception):
                each.close()
            with contextlib.suppress(Exception):  # (one stopped before distributed set it up whole raised here)
                _instances(SpecCluster).discard(each)  # (a client: not there)

    _closed_in_a_thread(close, closing, logging.CRITICAL + 1)


def _close_at_the_end(client, cluster) -> None:
    """Close a finished run's client and local cluster without distributed's WARNINGs: a worker slower than 4 s
    to exit on a loaded machine had its nanny log "Worker process still alive after 4.0 seconds, killing" between
    the run's last lines (seen in 1-2 of 3 two-worker batches here), which tells the user nothing to do. A Ctrl-C
    meanwhile cuts the close short (:func:`_closed_in_a_thread`)."""
    def close():
        client.close()
        cluster.close()

    _closed_in_a_thread(close, (cluster,), logging.ERROR)


def _closed_in_a_thread(close, clusters, level: int) -> None:
    """Run ``close()`` (which closes ``clusters``, and maybe clients) in a thread of its own and wait for it,
    distributed's stream handlers showing only records of ``level`` or above meanwhile; what it raises is raised
    here. A Ctrl-C meanwhile ends the clusters' worker processes, gives the close :data:`_HURRIED_CLOSE` seconds
    more and is raised (:func:`_hurry`). Ctrl-C had cancelled the close where it was (distributed's ``sync``),
    which left the cluster "closing" for good: distributed's own close at exit waited for it 10 s
    (``close_clusters``' timeout) before the command ended."""
    import threading

    failed, closed = [], threading.Event()

    def closing():
        try:
            close()
        except BaseException as exc:  # (raised in the caller's thread below)
            failed.append(exc)
        finally:
            closed.set()

    with _distributed_logs_from(level):
        try:  # (not Thread.join: one that Ctrl-C cuts short marks the thread as ended, in Python 3.11)
            threading.Thread(target=closing, name="deconv3d cluster close", daemon=True).start()
            closed.wait()
        except KeyboardInterrupt:
            _hurry(closed, clusters)
            raise
    if failed:
        raise failed[0]


#: How long a cluster's close is waited for once Ctrl-C came, its worker processes ended.
_HURRIED_CLOSE = 1.0


def _hurry(closed, clusters) -> None:
    """Ctrl-C came while a thread closed ``clusters`` (``closed``: an Event it sets as it ends): end their
    worker processes (the run has finished or been stopped: nothing of theirs is wanted) and wait up to
    :data:`_HURRIED_CLOSE` s for the close, distributed's logs held back. A close that has not finished by then is
    left to end with the process, and distributed is not asked to close the clusters again at exit (also where
    one more Ctrl-C cuts this short: distributed's close at exit had waited 10 s for the cluster still closing)."""
    from distributed.deploy.spec import SpecCluster

    try:
        with _distributed_logs_from(logging.CRITICAL + 1):
            _end_processes(_worker_processes(clusters))
            closed.wait(_HURRIED_CLOSE)
    finally:
        if not closed.is_set():
            for cluster in clusters:
                _instances(SpecCluster).discard(cluster)


def _end_processes(processes, grace: float = 0.5) -> None:
    """Terminate the multiprocessing ``processes`` that have started and not ended, and kill those that have not
    ended ``grace`` seconds later. An end is told by the process's sentinel, not by ``is_alive()``, whose wait
    could reap a worker before distributed's thread that joins it (which then logs "exit status was already
    read")."""
    from multiprocessing.connection import wait

    def running(started):
        ended = set(wait([process.sentinel for process in started], timeout=0))
        return [process for process in started if process.sentinel not in ended]

    alive = running([process for process in processes if process.pid is not None])
    for process in alive:
        process.terminate()
    wait([process.sentinel for process in alive], timeout=grace)
    for process in running(alive):
        process.kill()


@contextlib.contextmanager
def _distributed_logs_from(level: int):
    """Within this context distributed's stream handlers show only records of ``level`` or above; above CRITICAL
    (the close of a run that Ctrl-C or SIGTERM stopped, or cut short) asyncio's reports of distributed's tasks
    whose exception nobody retrieved are held back too (:func:`_distributed_task_unretrieved`).

    They are filtered, not set to that level (distributed's ``silence_logging_cmgr``): a cluster's close gives
    the handlers back the level it found (a cluster silences them to WARNING while it runs), and a level set
    around it and given back afterwards left them at WARNING after the run (distributed's INFO lines hidden
    from then on)."""
    handlers = [h for h in logging.getLogger("distributed").handlers if isinstance(h, logging.StreamHandler)]

    def at_level(record) -> bool:
        return record.levelno >= level

    for handler in handlers:
        handler.addFilter(at_level)
    asyncio_logger = logging.getLogger("asyncio") if level > logging.CRITICAL else None
    if asyncio_logger is not None:
        asyncio_logger.addFilter(_distributed_task_unretrieved)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(at_level)
        if asyncio_logger is not None:
            asyncio_logger.removeFilter(_distributed_task_unretrieved)


def _distributed_task_unretrieved(record) -> bool:
    """A filter of asyncio's logger: False for its "Task/Future exception was never retrieved" record where the
    exception's traceback begins in distributed's code (the task's coroutine is distributed's). Ctrl-C during a
    batch's scatter left the scheduler's handler of it to fail as the stopped run's workers went (a KeyError), and
    asyncio printed its 15-line traceback before the run's own line. asyncio's logger is not distributed's: its
    handlers' filters did not hold it back."""
    import os
    import traceback

    if not str(record.msg).startswith(("Task exception was never retrieved", "Future exception was never retrieved")):
        return True
    frames = list(traceback.walk_tb(record.exc_info[2])) if record.exc_info and record.exc_info[2] else []
    return not (frames and _in_distributed(os.path.abspath(frames[0][0].f_code.co_filename)))


def _in_distributed(filename: str) -> bool:
    """Whether ``filename`` (absolute) is a module of the distributed package."""
    import os

    import distributed

    return filename.startswith(os.path.dirname(os.path.abspath(distributed.__file__)) + os.sep)


def _worker_processes(clusters) -> set:
    """The multiprocessing processes of the workers of ``clusters``, started or starting: those of the nannies each
    has created (distributed's private ``_created``, a nanny's ``process.process._process``; none where a version
    lacks them, or for a client, and the run then waits for its workers)."""
    found = set()
    for cluster in clusters:
        for nanny in list(getattr(cluster, "_created", ())):
            process = getattr(getattr(getattr(nanny, "process", None), "process", None), "_process", None)
            if process is not None:
                found.add(process)
    return found
