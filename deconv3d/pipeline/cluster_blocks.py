"""The block runner on a dask.distributed cluster (:func:`deconv3d.pipeline.chunked.run_blocks` with a client):
the blocks are submitted as tasks, at most one per cluster thread in flight (two where the workers read the
source themselves), the block function and a path-based reader sent to the workers once, and a failure, a
cancel or a lost scheduler said in one line."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from typing import Iterable

from deconv3d.pipeline import chunked, run_flags
from deconv3d.pipeline.block_figures import BlockFigures
from deconv3d.pipeline.run_flags import _RunFlag


def _run_on_cluster(reader, fn, target_path: str, tasks: Iterable, client, progress, done: int, total: int, cancel,
                    figures: BlockFigures | None) -> int:
    """:func:`_run_distributed`, whose failure once the scheduler is gone is a RuntimeError that says so."""
    try:
        return _run_distributed(reader, fn, target_path, tasks, client, progress, done, total, cancel, figures)
    except Exception as exc:
        if getattr(client, "status", "running") == "running":
            raise
        # else the error is whatever call failed first ("'NoneType' object has no attribute 'ncores'")
        address = getattr(client, "_start_arg", None) or "its address"
        raise RuntimeError(f"lost the dask scheduler at {address}: is it still running? Start it again and "
                           "rerun") from exc


def _run_distributed(reader, fn, target_path: str, tasks: Iterable, client, progress, done: int, total: int,
                     cancel=None, figures: BlockFigures | None = None) -> int:
    import uuid

    from distributed import Event
    from distributed import wait as dwait

    # chunked's block task and helpers, looked up as the run starts (as when they were chunked's own code): a
    # test's replacement of chunked._block_task reaches a cluster's run as it reaches the threads'
    finished, state = chunked._counter(progress, done, total, figures)
    request = None if figures is None else figures.request()  # (it alone travels with the tasks)
    remote, limit = _in_flight_limit(client, reader)
    refs = _scatter_shared(client, fn, reader if remote else None)
    futures: set = set()
    abandon = Event(f"deconv3d-abandon-{uuid.uuid4().hex}", client=client)
    asked = _RunFlag(cancel)  # the caller's cancel, passed on to the workers' blocks through ``abandon``

    def settle(at_most: int) -> None:
        _settle_distributed(futures, at_most, dwait, None if cancel is None else 0.5, finished,
                            lambda: chunked._stop_if_cancelled(asked, done + state["count"], total))

    try:
        for read, placement, write in tasks:
            settle(limit - 1)
            source = refs[1] if remote else reader.read(read)
            chunked._track(futures, client.submit, chunked._block_task, source, read, refs[0], placement,
                           target_path, write, abandon.name, figures=request, pure=False)
            del source
        settle(0)
    except BaseException:
        _abandon_distributed(abandon, client, futures)
        raise
    finally:
        client.cancel(refs)
    return state["count"]


def _in_flight_limit(client, reader) -> tuple:
    """(whether every worker reads the source itself, how many blocks a cluster run keeps in flight): one
    per thread of the cluster, twice that where the workers read; blocks read here travel with their task."""
    threads = max(1, sum(client.nthreads().values()))
    remote = bool(getattr(reader, "remote", False))
    return remote, 2 * threads if remote else threads  # blocks read here travel with their task: hold fewer


def _abandon_distributed(abandon, client, futures: set) -> None:
    """Give up a cluster run: set its ``abandon`` event, cancel its ``futures``, clear the event later."""
    abandon.set()  # running blocks stop at their next check of abandoned(); the others are cancelled
    client.cancel(list(futures))
    _clear_later(abandon, 3 * run_flags.CLUSTER_POLL)  # once they have read it: a set event stays on the scheduler


def _scatter_shared(client, fn, reader=None) -> list:
    """Send the block function ``fn`` to the workers once, not with every task, and a path-based ``reader``
    (given where every worker opens the source itself) too: their futures, ``fn``'s first.

    Scattered data is lost with the workers that hold it: where a cluster's only worker died (killed at its
    memory limit, say), the blocks left were cancelled although its nanny restarted it. On this process's own
    cluster of restarted workers (``--scheduler processes``: :func:`_restarts_its_workers`) they are the
    results of tasks instead, which the scheduler computes again on the restarted worker, and the blocks
    that were running are retried there, as on a cluster of two, where the other worker holds them. Elsewhere
    they are scattered to every worker: where none of them is restarted, the run fails in one line
    (:func:`_dropped_by_the_cluster`) rather than wait for a worker."""
    shared = [fn] if reader is None else [fn, reader]
    if not _restarts_its_workers(client):
        return [client.scatter(value, broadcast=True, hash=False) for value in shared]
    import dask

    # (sent once as the task's argument, as scatter sends it: a network's weights over 10 MB drew
    # distributed's "Sending large graph" warning, whose advice is to scatter)
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1 TiB"}):
        return [client.submit(_shared, value, pure=False) for value in shared]


def _shared(value):
    """A task's result that is ``value`` (:func:`_scatter_shared`)."""
    return value


def _restarts_its_workers(client) -> bool:
    """Whether ``client``'s cluster is this process's own and each of its workers runs under a nanny, which
    starts it again where it dies (a LocalCluster of processes: ``--scheduler processes``)."""
    if getattr(client, "cluster", None) is None:
        return False
    workers = client.scheduler_info().get("workers", {})
    return bool(workers) and all(info.get("nanny") for info in workers.values())


def _settle_distributed(futures: set, at_most: int, wait, timeout, finished, check) -> None:
    """Wait until at most ``at_most`` of the distributed ``futures`` are left, each finished one's failure raised,
    its result (a block's top values, or None) handed to ``finished(result)`` and released. ``check()`` raises
    where the run is cancelled: before, and after each wait of up to ``timeout`` seconds (None: until one
    finishes) with distributed's ``wait``."""
    check()
    while len(futures) > at_most:
        try:
            ready = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:  # none finished: look at the cancel event again
            ready = None
        except CancelledError as exc:  # (distributed's wait raises it where one it waited on was cancelled)
            raise _dropped_by_the_cluster(exc) from None
        check()
        for future in ready.done if ready else ():
            futures.discard(future)
            result = _block_result(future)  # a block's failure is raised here
            future.release()
            finished(result)


def _block_result(future):
    """The ``future``'s result, its block's failure raised; where every worker that ran the block died running it
    (distributed's KilledWorker, after its allowed failures: a block that needs more memory than a worker has,
    say), a one-line RuntimeError that names the fix, not distributed's line that names a task and a log. Where
    they died on the task that gives them the block function or reader (:func:`_scatter_shared`), the block's
    KilledWorker names that task: said as such, without smaller ``--chunks``, which does not shrink it."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as exc:
        if exc.task != future.key:
            raise RuntimeError("the dask cluster's workers died taking in the run's block function, each time it was "
                               "sent (killed at their memory limit, say: see their logs): rerun with more memory per "
                               "worker") from None
        raise RuntimeError("the dask cluster's workers died running a block, each time it was tried (killed at their "
                           "memory limit, say: see their logs): rerun with more memory per worker or smaller "
                           "--chunks") from None


def _dropped_by_the_cluster(exc: CancelledError) -> RuntimeError:
    """The one-line error of block tasks that the cluster cancelled (``exc``, distributed's
    ``FuturesCancelledError``; the run cancels its own only once it gives up). Where
    the only workers holding what the run scattered (the block function, a path-based reader) died, e.g. killed at
    their memory limit, the blocks that needed it were cancelled, and the error was distributed's, of five lines
    that a batch's line for the file joined: "1 Future cancelled: Reasons: 1 Future cancelled for reason: lost
    dependencies. Message: None Future: ['_block_task-...']". A client that lost its scheduler cancels every
    future ("scheduler-connection-lost"): said as that, not as workers that died."""
    groups = getattr(exc, "error_groups", None) or [exc]
    reasons = ", ".join(sorted({str(getattr(g, "reason", None) or "no reason given") for g in groups}))
    if "scheduler-connection-lost" in reasons:  # (the client cancels every future: no worker need have died)
        return RuntimeError(f"the dask cluster cancelled a block ({reasons}): the connection to its scheduler was "
                            "lost during the run: check that the scheduler is running and reachable, and rerun")
    return RuntimeError(f"the dask cluster cancelled a block ({reasons}): it had lost what the run sent its workers, "
                        "as when they die (killed at their memory limit, say: see their logs) or the cluster is "
                        "restarted: rerun, with more memory per worker or smaller --chunks")


def _clear_later(event, seconds: float) -> None:
    """Clear (and so remove from the scheduler) a distributed ``event`` after ``seconds``, in a
    daemon thread; nothing happens if the client is gone by then."""
    def clear():
        try:
            event.clear()
        except Exception:  # noqa: BLE001 - the client closed meanwhile: its scheduler is gone too, or keeps one flag
            pass

    timer = threading.Timer(seconds, clear)
    timer.daemon = True
    timer.start()
