"""Where the blocks run: local threads, a LocalCluster of worker processes, or an existing scheduler."""

from __future__ import annotations

import contextlib
import re

from deconv3d._paths import _one_line as _one_line_text
from deconv3d.errors import InputError
from deconv3d.pipeline._cluster_close import _close_at_the_end, _close_quietly, _instances, _worker_processes

__all__ = ["check_scheduler", "scheduler_client", "gpu_count", "gpu_worker_ids"]

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://[^\s/]+(:\d+)?/?$")


def check_scheduler(spec: str) -> str:
    """Validate ``threads``, ``processes`` or a scheduler address like ``tcp://HOST:PORT``."""
    if spec in ("threads", "processes") or _ADDRESS.match(spec or ""):
        if _ADDRESS.match(spec or "") and (problem := _port_problem(spec)):  # (distributed: "missing port number")
            raise InputError(problem)
        if spec != "threads":
            _import_distributed()
        return spec
    raise InputError(f"unknown scheduler {spec!r}: use threads, processes or an address like tcp://HOST:8786")


def _port_problem(address: str) -> str | None:
    """Why the scheduler ``address`` gives no port that distributed can take, as one line with the fix; None where
    it gives one. A host followed by ':' and no number (``tcp://h:``, ``tcp://h:abc``) was told to add one after
    it (``e.g. tcp://h::8786``)."""
    scheme, rest = address.split("://", 1)
    rest = rest.rstrip("/")
    host, colon, port = rest.rpartition(":")
    if not colon or rest.endswith("]"):  # (no ':', or an IPv6 host in brackets without one after it)
        host, port = rest, ""
    if port.isascii() and port.isdigit():
        return None
    said, fix = (f"gives port '{port}', not a number", "give") if port else ("gives no port", "add")
    return f"scheduler address {address} {said}: {fix} the scheduler's, e.g. {scheme}://{host}:8786 (dask's default)"


def _import_distributed():
    import importlib

    try:
        importlib.import_module("distributed")
    except ImportError as exc:
        raise InputError("--scheduler processes or an address needs dask.distributed: "
                         "pip install 'deconv3d[distributed]'") from exc


def gpu_count(device: str | None) -> int:
    """GPUs the workers should use: all visible ones for ``cuda``/``auto`` on a CUDA machine, else 0
    (also for ``cuda:N``: a worker per GPU sees only its own GPU, as ``cuda:0``, so a run asking for
    GPU N gets plain workers that all see every GPU)."""
    if device not in ("cuda", "auto"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_worker_ids(count: int, visible: str | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each of ``count`` GPU workers: one GPU each, taken from
    ``visible`` (this process's ``CUDA_VISIBLE_DEVICES``, when set) or numbered from 0.

    >>> gpu_worker_ids(2), gpu_worker_ids(2, "3,5")
    (['0', '1'], ['3', '5'])
    """
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return [ids[i % len(ids)] for i in range(count)]


def _gpu_cluster(count: int, run: object = None):
    """A local cluster of ``count`` single-threaded worker processes, each started with one GPU visible.

    The device is chosen per process, before CUDA starts in it: ``torch.cuda.set_device`` in a worker
    plugin only sets the current device of the thread the plugin runs in, not of the threads that
    run the tasks (those start on device 0), so every worker computed on GPU 0.
    """
    import logging
    import os

    from distributed import Nanny, Scheduler, SpecCluster

    ids = gpu_worker_ids(count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    # As LocalCluster: each worker's share of the RAM (a Nanny's "auto" is RAM x threads / cores, 1/16
    # of a 16-core node for one GPU) and dask's logs at WARN.
    options = {"nthreads": 1, "host": "127.0.0.1", "memory_limit": 1 / count, "silence_logs": logging.WARN,
               **_worker_preload()}
    workers = {i: {"cls": Nanny, "options": {**options, "env": {"CUDA_VISIBLE_DEVICES": ids[i]}}}
               for i in range(count)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", **_SCHEDULER_HTTP}}
    return _marked(SpecCluster, run)(workers=workers, scheduler=scheduler, silence_logs=logging.WARN)


#: The scheduler's HTTP server (distributed's health and metrics routes; no dashboard) on a free port of the
#: loopback. ``dashboard_address=None`` turned the dashboard off but still bound distributed's default port 8787:
#: with another cluster on the machine (a second batch, or the test of another pytest-xdist process) distributed
#: warned "Port 8787 is already in use". (A bare ":0" would listen on every interface.)
_SCHEDULER_HTTP = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}


def _marked(cls, run: object):
    """``cls`` (a distributed cluster class) whose instances carry ``run`` (``_deconv3d_run``) from
    before distributed registers them: a run stopped while its cluster starts (the cluster in no
    variable yet) finds its own among distributed's clusters by it, and leaves alone the clusters and
    clients of other threads (a user's own LocalCluster's Client, made meanwhile, had been closed)."""

    class Marked(cls):
        def __init__(self, *args, **kwargs):
            self._deconv3d_run = run
            super().__init__(*args, **kwargs)

    Marked.__name__, Marked.__qualname__, Marked.__module__ = cls.__name__, cls.__qualname__, cls.__module__
    return Marked


def _worker_preload() -> dict:
    """The workers' preload options: the user's modules (dask config) and
    :mod:`deconv3d.pipeline._worker_preload`; arguments given per module (a list of lists) get an
    empty one for it (distributed refuses lists of other lengths: the workers did not start)."""
    import dask

    given = dask.config.get("distributed.worker.preload", None) or []
    argv = dask.config.get("distributed.worker.preload-argv", None) or []
    if argv and all(isinstance(a, (list, tuple)) for a in argv):
        argv = [*argv, []]
    return {"preload": [*([given] if isinstance(given, str) else given), "deconv3d.pipeline._worker_preload"],
            "preload_argv": argv}


def _forget_closed_schedulers() -> None:
    """Let a closed local cluster's scheduler be freed. distributed memoises, per handler, whether it
    takes a comm (``distributed.core._expects_comm``, an unbounded ``functools.cache`` in 2026.8), and
    the handlers are the scheduler's bound methods: every ``--scheduler processes`` run in one process
    (a notebook, a script looping over batches) kept its scheduler alive, with a log handler that copied
    every later scheduler record (+1 scheduler, ~800 objects, 0.2-0.5 MB per run). Clearing the memo is
    safe at any time: it is recomputed on the next call."""
    import distributed.core

    cache_clear = getattr(getattr(distributed.core, "_expects_comm", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()


@contextlib.contextmanager
def scheduler_client(spec: str, workers: int | None = None, gpus: int = 0):
    """Yield a ``distributed.Client`` (None for ``threads``), closed (and its cluster stopped) on exit.

    ``processes`` starts a LocalCluster of ``workers`` single-threaded worker processes on
    127.0.0.1 (no dashboard); with ``gpus`` > 0 it starts one worker per GPU instead, each
    process seeing only its own GPU (as ``cuda:0``; :func:`gpu_worker_ids`). An address connects
    to a scheduler the user started, e.g. with dask-jobqueue on SLURM (see examples/).
    """
    check_scheduler(spec)
    if spec == "threads":
        yield None
        return
    if spec == "processes":
        client, cluster = _start_local_cluster(workers, gpus)
        stopped = False
        try:
            yield client
        except KeyboardInterrupt:
            stopped = True
            _close_quietly(client, cluster)
            raise
        finally:
            if not stopped:
                _close_at_the_end(client, cluster)
            _forget_closed_schedulers()
        return
    client = _connect(spec)
    try:
        yield client
    finally:
        client.close()


def _start_local_cluster(workers: int | None, gpus: int):
    """A started LocalCluster (``processes``: ``workers`` single-threaded processes, or one per GPU) and its
    client. Ctrl-C while its workers start closes what was started of them (marked as this run's: in no
    variable yet) before it goes on."""
    from distributed import Client, LocalCluster

    run = object()  # (marks this run's cluster)

    def build():
        if gpus > 0:
            return _gpu_cluster(gpus, run)
        http = _SCHEDULER_HTTP
        return _marked(LocalCluster, run)(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                          host="127.0.0.1", dashboard_address=http["dashboard_address"],
                                          scheduler_kwargs={"dashboard": http["dashboard"]}, **_worker_preload())

    try:
        cluster = _out_of_ctrl_c_reach(build, run)
        return Client(cluster), cluster
    except KeyboardInterrupt:  # while its workers start: the cluster (or client) is in no variable yet
        ours = _clusters_of(run)
        clients = [c for c in list(_instances(Client)) if any(getattr(c, "cluster", None) is o for o in ours)]
        _close_quietly(*clients, *ours)
        _forget_closed_schedulers()
        raise


def _out_of_ctrl_c_reach(build, run: object):
    """``build()``, run in a thread that blocks SIGINT, so that the threads distributed starts from it and
    the worker processes those start are born with SIGINT blocked; the calling thread keeps Ctrl-C.

    A terminal's Ctrl-C reaches the whole process group. A worker ignores it once its preload has run
    (:mod:`deconv3d.pipeline._worker_preload`), but a worker still importing got it: Ctrl-C 5-7 s into
    a ``batch --scheduler processes`` (2 workers starting) printed 20-69 lines and 2-3 tracebacks
    ("Nanny failed to start") before the run's own line. A blocked SIGINT waits in the worker until
    its preload ignores it, which discards it. Stopped meanwhile (KeyboardInterrupt), it ends the worker
    processes of the cluster marked ``run`` (:func:`_marked`) started since, and no others: a user's own
    multiprocessing children, or another thread's cluster's workers, started meanwhile had been ended too.
    On a platform without signal masks, ``build()`` as it is.
    """
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask"):
        return build()
    import multiprocessing

    built, lock = {}, threading.Lock()

    def target():
        try:
            cluster = build()
        except BaseException as exc:  # (given back to the caller below)
            built["error"] = exc
            return
        with lock:
            built["cluster"] = cluster
            if built.get("stopped"):  # (the caller was stopped before the cluster could be found to close)
                _close_quietly(cluster)

    thread = threading.Thread(target=target, name="deconv3d cluster start", daemon=True)
    before = set(multiprocessing.active_children())
    try:  # (a Ctrl-C that came while SIGINT was blocked is raised as the block ends: the thread may be building)
        _start_with_sigint_blocked(thread)
        thread.join()  # (Ctrl-C here raises KeyboardInterrupt in this thread)
    except KeyboardInterrupt:
        with lock:
            built["stopped"] = True
        _end_starting_workers(run, before, thread)
        raise  # (the caller closes what has started of this run's cluster)
    if "error" in built:
        raise built["error"]
    return built["cluster"]


def _start_with_sigint_blocked(thread) -> None:
    """Start ``thread`` with SIGINT blocked (a thread starts with its starter's mask); the caller's mask is given
    back. multiprocessing starts its resource tracker on the first Queue and unblocks SIGINT in the starting thread
    after (distributed's IO loop, which starts the workers): it is started here first, and then left be."""
    import signal
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _end_starting_workers(run: object, before: set, building) -> None:
    """Terminate the worker processes of the cluster marked ``run`` that were not running ``before`` (a set of
    :func:`multiprocessing.active_children`): a worker still starting, deaf to Ctrl-C, held its nanny's close
    10 s. Those not started yet (or not yet made) are terminated as they start, by a thread that looks for them
    every 10 ms for up to :data:`_LATE_STARTS` s: such a worker started all the same (distributed's thread starts it),
    and its nanny's close waited for it to have started whole before ending it (7-11 s on this loaded machine, where
    a Ctrl-C came as a worker's process was made but not started). The thread stops as soon as nothing of the run
    is left: the thread ``building`` the cluster has ended, no cluster marked ``run`` is among distributed's, and
    every worker process it saw has been ended (it had polled the whole 5 s, the cluster long closed)."""
    import threading
    import time

    seen: set = set()
    ended: set = set()

    def end_started() -> None:
        seen.update(_worker_processes(_clusters_of(run)) - before)
        for process in seen - ended:
            if process.pid is not None:  # (started; not is_alive(), whose wait could reap it before distributed's)
                process.terminate()
                ended.add(process)

    def left() -> bool:  # (the build's end first: a cluster it registers meanwhile is then found)
        return building.is_alive() or bool(_clusters_of(run)) or bool(seen - ended)

    def end_as_they_start():  # (a nanny may not have made its worker's process yet either: looked for throughout)
        deadline = time.monotonic() + _LATE_STARTS
        while time.monotonic() < deadline and left():
            time.sleep(0.01)
            end_started()

    end_started()
    threading.Thread(target=end_as_they_start, name="deconv3d late worker ends", daemon=True).start()


#: How long after a Ctrl-C while its workers start a run's worker processes not started yet are ended as they start
#: (at most: :func:`_end_starting_workers` stops looking once nothing of the run is left).
_LATE_STARTS = 5.0


def _clusters_of(run: object) -> list:
    """The clusters marked ``run`` (:func:`_marked`) among distributed's."""
    from distributed.deploy.spec import SpecCluster

    return [cluster for cluster in list(_instances(SpecCluster)) if getattr(cluster, "_deconv3d_run", None) is run]


def _connect(spec: str):
    """A client of the running dask scheduler at the address ``spec``; an InputError where it cannot be reached."""
    from distributed import Client

    try:  # (without the "/" that an address may end with: distributed read "8786/" as the port, a ValueError)
        return Client(spec.rstrip("/"), timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the dask scheduler at {spec}: {exc}: is it running?") from exc
    except (TypeError, ImportError) as exc:  # tls:// without dask's TLS settings, ucx:// without UCX: an internal error
        fix = {"tls": "give the TLS certificates in dask's configuration (distributed.comm.tls)",
               "ucx": "install distributed's UCX support (ucxx), or connect over tcp://"}.get(spec.split("://")[0])
        if fix is None:  # (over tcp:// such an error is not the address's: left as the internal error it is)
            raise
        raise InputError(f"cannot connect to the dask scheduler at {spec} ({_one_line_text(exc)}): {fix}") from None
