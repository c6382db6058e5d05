"""A LocalCluster of 2 worker processes on 127.0.0.1 writes the same output as local threads.

From an in-memory array (blocks sent along with their tasks) and from an OME-Zarr file (every
worker opens it by path and reads its blocks itself).
"""

import gc
import os
import re
import weakref

import numpy as np
import pytest

from deconv3d._saturation import clipped_at_faces, zero_boundary_warning
from deconv3d.io import write_tiff
from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr
from deconv3d.pipeline import RichardsonLucyBlock, run_chunked
from deconv3d.pipeline.cluster import check_scheduler, scheduler_client

pytest.importorskip("distributed", reason="dask.distributed is not installed")


def test_localcluster_equals_threads_and_its_workers_leave_ctrl_c_to_the_run(tmp_path, volume, psf3d, monkeypatch):
    """Also with paths relative to a folder the workers were not started in (a cluster's workers
    run where the cluster put them: relative paths had failed every block).

    Found by the pipeline review: Ctrl-C at a terminal reaches the whole process group, and each
    worker printed its own KeyboardInterrupt traceback and the nanny's complaints (67 lines with
    4 tracebacks) before the run's one line. Workers start with SIGINT ignored; the run keeps its own.
    (Checked on this test's cluster: a cluster of its own took 5-13 s to start and close.)

    The top values of the blocks' cores come back from the workers with their results: a clipped
    volume draws the threads' clip warning, from an array and from a file the workers read; so do their
    counts of the voxels at or above a saturation level given (plain RL: no pass over the volume counts them),
    and with the zero boundary, of those within the PSF's reach of the volume's faces."""
    import signal

    fn = RichardsonLucyBlock(psf3d, iterations=3)
    run_chunked(volume, fn, tmp_path / "threads.zarr", chunks=(12, 24, 24), workers=2)
    clipped = np.minimum(volume, np.percentile(volume, 99.5)).astype(np.float32)
    write_ome_zarr(tmp_path / "clipped.zarr", clipped, chunks=(5, 16, 16))
    clip_lines = [_clip_lines(run_chunked, clipped, fn, tmp_path / "clipped-threads.zarr", chunks=(12, 24, 24),
                              workers=2)]
    assert len(clip_lines[0]) == 1, clip_lines
    write_ome_zarr(tmp_path / "in.zarr", volume, chunks=(5, 16, 16))
    write_tiff(tmp_path / "in.tif", volume)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored (this
    # test then failed): start from Python's own handler, and give the inherited one back after.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT)
        with scheduler_client("processes", workers=2) as client:
            monkeypatch.chdir(tmp_path)
            assert len(client.scheduler_info()["workers"]) == 2
            assert client.scheduler.address.startswith("tcp://127.0.0.1:")
            assert set(client.run(_ctrl_c_disposition).values()) == {"ignored"}
            assert signal.getsignal(signal.SIGINT) is before
            run_chunked(volume, fn, "procs.zarr", chunks=(12, 24, 24), client=client)
            run_chunked(open_lazy("in.zarr"), fn, "file.zarr", chunks=(12, 24, 24), client=client)
            run_chunked(open_lazy("in.tif"), fn, "tiff.zarr", chunks=(12, 24, 24), client=client)
            for source, out in ((clipped, "clipped-procs.zarr"), (open_lazy("clipped.zarr"), "clipped-file.zarr")):
                clip_lines.append(_clip_lines(run_chunked, source, fn, out, chunks=(12, 24, 24), client=client))
            level = float(np.percentile(clipped, 97))
            counted = run_chunked(open_lazy("clipped.zarr"), RichardsonLucyBlock(psf3d, iterations=1, saturation=level),
                                  "level.zarr", chunks=(12, 24, 24), client=client).decided
            near = run_chunked(open_lazy("clipped.zarr"), RichardsonLucyBlock(psf3d, iterations=1, boundary="zero",
                                                                              saturation=level),
                               "zero.zarr", chunks=(12, 24, 24), client=client, warn_clips=False).clip_warnings
            scheduler = weakref.ref(client.cluster.scheduler)
        assert _ctrl_c_disposition() == "handled"
        # Found by the resource review: distributed's memo of handlers kept every closed run's scheduler
        # alive, with a log handler copying every later scheduler record.
        del client
        gc.collect()
        assert scheduler() is None
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert clip_lines == clip_lines[:1] * 3, clip_lines
    assert counted == {"saturation_level": level, "saturated_voxels": int(np.count_nonzero(clipped >= level))}, counted
    faces = clipped_at_faces(clipped >= level, psf3d.shape)  # (and those within the PSF's reach of the faces)
    assert faces > 0 and near == (zero_boundary_warning(faces),), near
    threads = read_ome_zarr(tmp_path / "threads.zarr")[0]
    for name in ("procs", "file", "tiff"):
        out = read_ome_zarr(tmp_path / f"{name}.zarr")[0]
        np.testing.assert_allclose(out, threads, rtol=1e-5, atol=1e-6 * float(threads.max()), err_msg=name)


def _clip_lines(call, *args, **kwargs) -> list[str]:
    """The clip warnings ``call(*args, **kwargs)`` issues."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(*args, **kwargs)
    return [str(w.message) for w in caught if "voxels sit at" in str(w.message)]


def _ctrl_c_disposition():
    import signal

    return "ignored" if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else "handled"


def test_a_local_worker_logs_nothing_once_it_closes():
    """Found by the cluster review: a run stopped by SIGTERM while a block ran printed its workers'
    WARNINGs (the block's task "ended with CancelledError", a "dangling stream") around its own line."""
    import asyncio
    import logging
    import signal

    from deconv3d.pipeline._worker_preload import dask_setup

    class Worker:
        logs = None

        async def close(self, reason=None):
            self.logs = logging.getLogger("distributed.worker.state_machine").isEnabledFor(logging.WARNING)
            return reason

    worker, inherited = Worker(), signal.getsignal(signal.SIGINT)
    try:
        dask_setup(worker)
        assert logging.getLogger("distributed.worker").isEnabledFor(logging.WARNING)  # while it works
        assert asyncio.run(worker.close(reason="stop")) == "stop" and worker.logs is False
    finally:
        signal.signal(signal.SIGINT, inherited)
        logging.disable(logging.NOTSET)


class _Closing:
    """A client or local cluster as distributed's behave when a run is stopped while the workers start:
    their close logs a nanny's WARNING and fails (an AssertionError on a worker in Status.init)."""

    closed = 0

    def close(self, timeout=None):
        import logging

        _Closing.closed += 1
        self.was_closed = True
        logging.getLogger("distributed.nanny").warning("Worker process still alive after 4.0 seconds, killing")
        raise AssertionError("Status.init")


class _Cluster(_Closing):
    starting = staticmethod(lambda: None)  # what happens while the workers start

    def __init__(self, *args, **kwargs):
        from distributed.deploy.spec import SpecCluster

        SpecCluster._instances.add(self)  # (as SpecCluster.__init__: distributed closes these again at exit)
        self.starting()


class _Client(_Closing):
    _instances = weakref.WeakSet()

    def __init__(self, cluster):
        self.cluster = cluster
        self._instances.add(self)


def _stopped_while_starting():
    raise KeyboardInterrupt  # Ctrl-C, or the CLI's SIGTERM, while the workers start


@pytest.mark.parametrize("when", ["starting", "running"])
def test_a_cluster_stopped_by_ctrl_c_or_sigterm_closes_quietly(monkeypatch, when):
    """Found by the cluster review: SIGTERM while the workers started printed distributed's AssertionError
    at exit (the cluster closed again then) and its tracebacks, and mid-work a nanny's WARNING, after the
    run's own line."""
    import io
    import logging

    import distributed
    from distributed.deploy.spec import SpecCluster, close_clusters

    if when == "starting":
        monkeypatch.setattr(_Cluster, "starting", staticmethod(_stopped_while_starting))
    monkeypatch.setattr(distributed, "LocalCluster", _Cluster)
    monkeypatch.setattr(distributed, "Client", _Client)
    monkeypatch.setattr(_Closing, "closed", 0)
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logging.getLogger("distributed").addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
            raise KeyboardInterrupt
        assert logged.getvalue() == "" and _Closing.closed == (1 if when == "starting" else 2)  # (the client too)
        assert not any(isinstance(c, _Cluster) for c in SpecCluster._instances)
        close_clusters()  # distributed's own at exit: nothing left to close again
        assert _Closing.closed == (1 if when == "starting" else 2)
        logging.getLogger("distributed.nanny").warning("after")  # (the log's level as it was)
        assert logged.getvalue() == "after\n"
    finally:
        logging.getLogger("distributed").removeHandler(handler)


def test_a_finished_run_closes_its_cluster_without_distributed_s_warnings(monkeypatch):
    """A worker slower than 4 s to exit on a loaded machine had its nanny log "Worker process still alive
    after 4.0 seconds, killing" between a finished batch's last lines. Errors still show, and the log's
    level is given back."""
    import io
    import logging

    import distributed

    class Told(_Closing):
        def close(self):
            logging.getLogger("distributed.nanny").warning("Worker process still alive after 4.0 seconds, killing")
            logging.getLogger("distributed.nanny").error("a real failure")

    monkeypatch.setattr(distributed, "LocalCluster", type("Cluster", (Told, _Cluster), {}))
    monkeypatch.setattr(distributed, "Client", type("Client", (Told, _Client), {}))
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logging.getLogger("distributed").addHandler(handler)
    try:
        with scheduler_client("processes", workers=1):
            pass
        assert logged.getvalue() == "a real failure\n" * 2  # (the client's close, the cluster's)
        logging.getLogger("distributed.nanny").warning("after")
        assert logged.getvalue().endswith("after\n")
    finally:
        logging.getLogger("distributed").removeHandler(handler)


def test_ctrl_c_as_the_cluster_s_thread_starts_closes_the_cluster_it_builds(monkeypatch):
    """Found by the review of this stop's diff: a Ctrl-C that came while SIGINT was blocked to start the thread
    that builds the cluster was raised as the block ended, before the wait for the thread that handles it: the
    cluster, not yet registered, was not found to close, and the thread went on to start it and kept it."""
    import signal
    import time

    import distributed

    made = []

    class Slow(_Cluster):
        def __init__(self, *args, **kwargs):
            time.sleep(0.5)  # (set-up before distributed registers the cluster)
            super().__init__(*args, **kwargs)
            made.append(self)

        def close(self, timeout=None):
            self.was_closed = True

    real = signal.pthread_sigmask

    def ctrl_c_while_blocked(how, mask):
        if how == signal.SIG_SETMASK:
            signal.raise_signal(signal.SIGINT)  # (pending until the mask is given back)
        return real(how, mask)

    monkeypatch.setattr(distributed, "LocalCluster", Slow)
    monkeypatch.setattr(distributed, "Client", _Client)
    monkeypatch.setattr(signal, "pthread_sigmask", ctrl_c_while_blocked)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
            pass
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 10
    while not (made and getattr(made[0], "was_closed", False)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made and getattr(made[0], "was_closed", False)


def test_a_finished_run_gives_distributed_s_log_level_back(monkeypatch):
    """Found by the review of this stop's diff: the quiet close set distributed's log handlers to ERROR around
    the cluster's close, which gives them back the level the cluster found (a cluster silences them to WARNING
    while it runs); the quiet close then put back WARNING, and distributed's INFO lines stayed hidden."""
    import contextlib
    import io
    import logging

    import distributed
    from distributed.utils import silence_logging_cmgr

    class Silencing(_Cluster):  # (as SpecCluster's silence_logs: from its start to its close)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.silenced = contextlib.ExitStack()
            self.silenced.enter_context(silence_logging_cmgr(logging.WARNING))

        def close(self, timeout=None):
            self.silenced.close()

    class Closing(_Client):
        def close(self, timeout=None):
            pass

    monkeypatch.setattr(distributed, "LocalCluster", Silencing)
    monkeypatch.setattr(distributed, "Client", Closing)
    handler = logging.StreamHandler(io.StringIO())
    handler.setLevel(logging.INFO)
    logging.getLogger("distributed").addHandler(handler)
    try:
        with scheduler_client("processes", workers=1):
            assert handler.level == logging.WARNING
        assert handler.level == logging.INFO and not handler.filters
        # a run stopped by Ctrl-C closes quietly the same way (it put WARNING back too)
        with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
            assert handler.level == logging.WARNING
            raise KeyboardInterrupt
        assert handler.level == logging.INFO and not handler.filters
    finally:
        logging.getLogger("distributed").removeHandler(handler)


def test_a_run_stopped_while_its_cluster_starts_leaves_other_threads_clients_open(monkeypatch):
    """Found by the review of the quiet shutdown: a run stopped while its cluster started closed every
    client and cluster made meanwhile, a user's own Client (on a LocalCluster of another thread) too."""
    import threading

    import distributed
    from distributed.deploy.spec import SpecCluster

    class UsersCluster(_Cluster):
        starting = staticmethod(lambda: None)

    made = {}

    def users_thread():  # the user's own work, in another thread of the same process
        made["cluster"] = UsersCluster()
        made["client"] = _Client(made["cluster"])

    def starting():  # ours, stopped while its workers start, once the user's client exists
        thread = threading.Thread(target=users_thread)
        thread.start()
        thread.join()
        raise KeyboardInterrupt

    monkeypatch.setattr(_Cluster, "starting", staticmethod(starting))
    monkeypatch.setattr(distributed, "LocalCluster", _Cluster)
    monkeypatch.setattr(distributed, "Client", _Client)
    monkeypatch.setattr(_Closing, "closed", 0)
    try:
        with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
            pass
        # ours closed and dropped from distributed's clusters, nothing else
        left = [c for c in SpecCluster._instances if isinstance(c, _Cluster)]
        assert _Closing.closed == 1 and left == [made["cluster"]]
        assert not hasattr(made["client"], "was_closed") and not hasattr(made["cluster"], "was_closed")
    finally:
        SpecCluster._instances.discard(made.get("cluster"))


@pytest.mark.parametrize("argv", [[["--tag", "mine"]], ["--tag", "flat"], []])
def test_the_workers_preload_keeps_the_users_own(argv):
    """A user's preload arguments given per module (a list of lists) did not match the longer list of
    modules, and the workers failed to start (diff review): ours gets an empty list of its own."""
    import dask

    from deconv3d.pipeline.cluster import _worker_preload

    with dask.config.set({"distributed.worker.preload": ["userpre"], "distributed.worker.preload-argv": argv}):
        options = _worker_preload()
    assert options["preload"] == ["userpre", "deconv3d.pipeline._worker_preload"]
    assert options["preload_argv"] == ([*argv, []] if argv and isinstance(argv[0], list) else argv)


def test_ctrl_c_reaching_a_worker_before_its_preload_runs_leaves_it_be(tmp_path, capfd):
    """Found while testing Ctrl-C at a terminal: it reaches the whole process group, and a worker
    still importing (before the preload that ignores SIGINT runs) got a KeyboardInterrupt; Ctrl-C 5-7 s
    into a ``batch --scheduler processes`` printed 20-69 lines and 2-3 tracebacks. Workers are now
    born with SIGINT blocked, and the run's own thread keeps it. A user's preload, which runs before
    ours, stands in for the terminal: it sends its worker SIGINT."""
    import signal

    import dask

    (tmp_path / "ctrl_c_now.py").write_text(
        "import os, signal, time\n"
        "def dask_setup(worker):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)  # (a signal not blocked is handled by now)\n")
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in the run test above)
    try:
        with dask.config.set({"distributed.worker.preload": [str(tmp_path / "ctrl_c_now.py")]}):
            with scheduler_client("processes", workers=1) as client:
                assert len(client.scheduler_info()["workers"]) == 1
                assert set(client.run(_ctrl_c_disposition).values()) == {"ignored"}
                # ignored, and no longer blocked: what the worker runs inherits the usual mask
                assert list(client.run(signal.pthread_sigmask, signal.SIG_BLOCK, []).values()) == [set()]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()  # (this thread's mask as it was)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_ctrl_c_while_a_worker_starts_stops_that_worker(tmp_path):
    """A worker born deaf to Ctrl-C (above) ran on after the run's Ctrl-C until it had started, and the
    run waited for it to close it: 10-16 s on a loaded machine. The run now ends the worker processes of
    its cluster that are still starting. A user's preload stands in for a slow start."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    (tmp_path / "slow_start.py").write_text(
        "import os, pathlib, time\n"
        "def dask_setup(worker):\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        f"    pathlib.Path({str(finished)!r}).write_text('')\n")
    _ctrl_c_once_a_worker_starts(tmp_path / "slow_start.py", started)
    pid = int(started.read_text())
    with pytest.raises(ProcessLookupError):  # (ended and reaped)
        os.kill(pid, 0)
    assert not finished.exists()


def test_ctrl_c_before_a_worker_s_process_starts_ends_it_as_it_starts(tmp_path):
    """A worker whose process was made but not started at the Ctrl-C was not ended: distributed's thread started it
    all the same, and its nanny's close waited for it to have started whole (its preloads run) before ending it,
    7-11 s on a loaded machine. It is now ended as it starts, before its preloads run."""
    import signal
    import threading
    import time

    import dask
    from distributed.deploy.spec import SpecCluster

    started = tmp_path / "started"
    (tmp_path / "mark_start.py").write_text(
        "import pathlib\n"
        "def dask_setup(worker):\n"
        f"    pathlib.Path({str(started)!r}).write_text('')\n")

    def ctrl_c_once_a_process_is_made():
        while True:
            for cluster in list(SpecCluster._instances):
                for nanny in list(getattr(cluster, "_created", ())):
                    process = getattr(getattr(nanny, "process", None), "process", None)
                    if getattr(process, "_process", None) is not None and process._process.pid is None:
                        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                        return
            time.sleep(0.0005)

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_a_process_is_made, daemon=True).start()
        with dask.config.set({"distributed.worker.preload": [str(tmp_path / "mark_start.py")]}):
            with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
                pass
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert not started.exists()


def test_ctrl_c_while_a_worker_starts_leaves_other_processes_be(tmp_path):
    """Found by the review of this stop's diff: stopped while its workers started, the run ended every
    multiprocessing child this process had started since it began building its cluster, a user's own (or
    another thread's cluster's workers) too. It now ends its own cluster's workers only."""
    import multiprocessing
    import time

    started = tmp_path / "started"
    (tmp_path / "slow_start.py").write_text(
        "import pathlib, time\n"
        "def dask_setup(worker):\n"
        f"    pathlib.Path({str(started)!r}).write_text('')\n"
        "    time.sleep(60)\n")
    users = []

    def users_child():  # (the user's own, started while the run's cluster starts)
        users.append(multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True))
        users[0].start()

    try:
        _ctrl_c_once_a_worker_starts(tmp_path / "slow_start.py", started, meanwhile=users_child)
        users[0].join(timeout=1)
        assert users[0].is_alive(), f"the user's process was ended (exit code {users[0].exitcode})"
    finally:
        for process in users:
            process.kill()
            process.join()


def _ctrl_c_once_a_worker_starts(preload, started, meanwhile=lambda: None) -> None:
    """Start a one-worker local cluster with the user's ``preload`` (a file, run before ours, that makes ``started``
    and then takes its time), and once ``started`` exists call ``meanwhile()`` and send this thread Ctrl-C: the
    start ends in a KeyboardInterrupt."""
    import signal
    import threading
    import time

    import dask

    def ctrl_c_once_started():
        while not started.exists():
            time.sleep(0.05)
        meanwhile()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_started, daemon=True).start()
        with dask.config.set({"distributed.worker.preload": [str(preload)]}):
            with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
                pass
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("run", ["finished", "stopped"])
def test_ctrl_c_while_a_run_closes_its_cluster_ends_the_workers_and_leaves_nothing_to_close_at_exit(tmp_path, run):
    """Ctrl-C while a finished run's cluster closed cancelled the close where it was (distributed's ``sync``): the
    cluster stayed "closing", its workers ran on, and distributed's close at exit waited for it 10 s before
    ``batch --scheduler processes`` ended. The run now ends the workers and leaves no cluster unclosed for that
    close; so does a second Ctrl-C while a stopped run's cluster closes (which went the old way, cancelled where it
    was). A user's preload whose teardown takes its time stands in for a worker slow to close."""
    import signal
    import threading
    import time

    import dask
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster

    closing = tmp_path / "closing"
    (tmp_path / "slow_close.py").write_text(
        "import os, pathlib, time\n"
        "def dask_teardown(worker):\n"
        f"    pathlib.Path({str(closing)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(60)\n")

    def ctrl_c_once_closing():
        while not closing.exists():
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with dask.config.set({"distributed.worker.preload": [str(tmp_path / "slow_close.py")]}):
            with pytest.raises(KeyboardInterrupt):
                with scheduler_client("processes", workers=1):
                    threading.Thread(target=ctrl_c_once_closing, daemon=True).start()
                    if run == "stopped":
                        raise KeyboardInterrupt  # (the first Ctrl-C: the run stops, and its cluster closes)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert not [c for c in SpecCluster._instances if c.status != Status.closed]  # (distributed's close at exit)
    pid = int(closing.read_text())
    for _ in range(100):  # (reaped by distributed's thread that watches it)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_one_more_ctrl_c_while_a_close_is_hurried_still_leaves_nothing_to_close_at_exit(monkeypatch):
    """Found by the review of this stop's diff: a Ctrl-C while the close cut short by the first one ended the
    workers or gave the close its last second left the cluster, still closing, among distributed's clusters,
    whose close at exit waited for it 10 s."""
    import signal
    import threading
    import time

    from distributed.deploy.spec import SpecCluster

    import deconv3d.pipeline._cluster_close as closing

    cluster, release = _Cluster(), threading.Event()

    def slow_close():  # (Ctrl-C comes as the close runs, which then takes its time)
        time.sleep(0.2)  # (the close's thread started and waited for)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        release.wait(30)

    def ctrl_c_again(processes):
        raise KeyboardInterrupt  # (while the worker processes are ended)

    monkeypatch.setattr(closing, "_end_processes", ctrl_c_again)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            closing._closed_in_a_thread(slow_close, (cluster,), 0)
        assert cluster not in SpecCluster._instances
    finally:
        signal.signal(signal.SIGINT, inherited)
        release.set()
        SpecCluster._instances.discard(cluster)


def _left_unretrieved(coroutine_function) -> None:
    """Run a task of ``coroutine_function`` (which raises) to its end and drop it, its exception never retrieved:
    asyncio logs "Task exception was never retrieved" as the task is freed."""
    import asyncio
    import gc

    async def main():
        task = asyncio.ensure_future(coroutine_function())
        while not task.done():
            await asyncio.sleep(0)
        del task
        gc.collect()

    asyncio.run(main())


def _a_distributed_coroutine_function():
    """A coroutine function that raises, whose code is a module of distributed's (as the scheduler's handler of a
    scatter, which failed with a KeyError as a stopped run's workers went)."""
    import distributed

    namespace: dict = {}
    exec(compile("async def _handle_comm():\n    raise KeyError('tcp://127.0.0.1:1')\n",
                 os.path.join(os.path.dirname(distributed.__file__), "core.py"), "exec"), namespace)
    return namespace["_handle_comm"]


def test_a_stopped_run_s_close_holds_back_asyncio_s_reports_of_distributed_s_failed_tasks(monkeypatch):
    """Ctrl-C during a batch's scatter left the scheduler's handler of it to fail as the stopped run's workers went
    (a KeyError), and asyncio's logger (not distributed's: its filter did not hold it back) printed "Task exception
    was never retrieved" and a 15-line traceback before the run's own line. Held back while the stopped run's
    cluster closes; a user's own task's report then, and distributed's after the run or in a finished run's close,
    still show."""
    import logging

    import distributed

    handle_comm = _a_distributed_coroutine_function()

    async def users_own():
        raise ValueError("the user's")

    class Failing(_Cluster):
        def close(self, timeout=None):
            _left_unretrieved(handle_comm)
            _left_unretrieved(users_own)

    class Reported(logging.Handler):
        def emit(self, record):
            reported.append(record.getMessage())

    reported, handler = [], Reported()
    monkeypatch.setattr(distributed, "LocalCluster", Failing)
    monkeypatch.setattr(distributed, "Client", _Client)
    logging.getLogger("asyncio").addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt), scheduler_client("processes", workers=1):
            raise KeyboardInterrupt
        assert len(reported) == 1 and "Task exception was never retrieved" in reported[0]
        assert "users_own" in reported[0]
        _left_unretrieved(handle_comm)  # (after the run: shown)
        assert len(reported) == 2 and "_handle_comm" in reported[1]
        monkeypatch.setattr(distributed, "Client", type("Client", (_Client,), {"close": lambda self: None}))
        with scheduler_client("processes", workers=1):  # (a finished run's close: both shown)
            pass
        assert len(reported) == 4 and "_handle_comm" in reported[2] and "users_own" in reported[3]
    finally:
        logging.getLogger("asyncio").removeHandler(handler)


def test_the_late_worker_ends_stop_once_nothing_of_the_run_is_left(monkeypatch):
    """The thread that ends a run's workers as they start, after a Ctrl-C while they started, looked for them for
    its whole 5 s, the run's cluster long closed and gone: a library caller's process kept it past the run. It now
    stops once the cluster's build has ended and no cluster of the run is among distributed's."""
    import threading

    from distributed.deploy.spec import SpecCluster

    from deconv3d.pipeline import cluster as clusters

    monkeypatch.setattr(clusters, "_LATE_STARTS", 600.0)  # (ended by its deadline: fails below)
    built = threading.Thread(target=int)
    built.start()
    built.join()
    run, others = object(), set(threading.enumerate())
    cluster = _Cluster()
    cluster._deconv3d_run = run
    try:
        clusters._end_starting_workers(run, set(), built)
        late = [t for t in set(threading.enumerate()) - others if t.name == "deconv3d late worker ends"]
        assert len(late) == 1
        late[0].join(0.3)
        assert late[0].is_alive()  # (the run's cluster is still among distributed's)
    finally:
        SpecCluster._instances.discard(cluster)
    late[0].join(60)
    assert not late[0].is_alive()


def test_the_hurried_close_leaves_an_ended_worker_s_exit_status_to_the_thread_that_joins_it():
    """Found by the review of this stop's diff: the hurried close told a worker process that had ended by
    ``is_alive()``, whose wait reaped it before distributed's thread that joins it (which then logs "exit status
    was already read"), as 5725177 found of the late worker ends."""
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    from deconv3d.pipeline._cluster_close import _end_processes

    process = multiprocessing.get_context("spawn").Process(target=int)
    process.start()
    assert wait([process.sentinel], timeout=60)
    for _ in range(200):  # (ended: a zombie, its exit status not read)
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.01)
    _end_processes({process})
    assert os.waitpid(process.pid, 0) == (process.pid, 0)  # (its exit status still there to be read)


def test_a_cluster_run_runs_chunked_s_block_task_as_it_is_when_the_run_starts(monkeypatch, tmp_path, psf3d):
    """Found by the review of this stop's diff: once the cluster's runner moved to cluster_blocks.py, it ran the
    block task it had imported, and a replacement of chunked._block_task (as test_batch_resume's slow task)
    reached the threads' runs only (a worker process ran the task that the module it imported holds)."""
    import importlib

    from distributed import Client, LocalCluster

    from deconv3d.pipeline import chunked

    def replaced(*args, **kwargs):
        raise RuntimeError("chunked's block task as it is now")

    importlib.import_module("deconv3d.pipeline.cluster_blocks")  # (as after an earlier cluster run)
    monkeypatch.setattr(chunked, "_block_task", replaced)
    # (worker processes: one in this process unpickles the task as chunked._block_task, whatever that is now)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with pytest.raises(RuntimeError, match="as it is now"):
            run_chunked(np.ones((4, 8, 8), np.float32), RichardsonLucyBlock(psf3d, iterations=1),
                        tmp_path / "out.zarr", chunks=(4, 8, 8), client=client)


def test_gpu_count_gives_workers_per_gpu_only_for_cuda_and_auto(monkeypatch):
    """A worker per GPU sees its GPU as cuda:0, so cuda:N runs on plain workers instead."""
    import torch

    from deconv3d.pipeline.cluster import gpu_count

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [gpu_count(d) for d in ("cuda", "auto", "cuda:1", "cpu", None)] == [2, 2, 0, 0, 0]


def test_gpu_workers_each_see_their_own_device(capfd):
    """One worker process per GPU, started with only that GPU visible: the threads that run the
    tasks see it too (a worker plugin's torch.cuda.set_device reached only the plugin's own thread,
    and registering that plugin failed). Checked through tasks, without a GPU."""
    import os

    from deconv3d.pipeline.cluster import gpu_count, gpu_worker_ids

    assert gpu_count("cpu") == 0
    assert gpu_worker_ids(3) == ["0", "1", "2"] and gpu_worker_ids(2, "4, 6") == ["4", "6"]
    with scheduler_client("processes", workers=5, gpus=2) as client:
        info = client.scheduler_info()["workers"]
        addresses = sorted(info)
        seen = [client.submit(lambda _: os.environ.get("CUDA_VISIBLE_DEVICES"), a, workers=[a], pure=False).result()
                for a in addresses]
    assert len(addresses) == 2 and sorted(seen) == ["0", "1"]
    # Each worker's memory share as a LocalCluster's (all the RAM for one GPU), not a Nanny's default
    # RAM x threads / cores (1/16 of a 16-core node); and dask's INFO logs stay quiet.
    from distributed.system import MEMORY_LIMIT

    with scheduler_client("processes", gpus=1) as client:
        (one,) = client.scheduler_info()["workers"].values()
    assert one["memory_limit"] >= 0.9 * MEMORY_LIMIT and all(w["memory_limit"] >= 0.45 * MEMORY_LIMIT
                                                             for w in info.values())
    assert "INFO" not in capfd.readouterr().err


def test_a_processes_cluster_leaves_port_8787_to_others():
    """dashboard_address=None turned the dashboard off but still started the scheduler's HTTP server on
    distributed's default port 8787: with another cluster on the machine (a second batch, or this suite's
    other pytest-xdist process) distributed warned "Port 8787 is already in use". The scheduler now takes
    a free port of the loopback, with and without GPU workers."""
    import warnings

    for gpus in (0, 1):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Port .* is already in use")
            with scheduler_client("processes", workers=1, gpus=gpus) as client:
                server = client.cluster.scheduler.http_server
                assert server.port != 8787 and server.address == "127.0.0.1", (server.address, server.port)


@pytest.mark.cuda
def test_processes_scheduler_starts_one_worker_per_gpu():
    import torch

    from deconv3d.pipeline.cluster import gpu_worker_ids

    count = torch.cuda.device_count()

    def device_of_a_task(_):
        import os

        import torch

        x = torch.ones(1, device="cuda")
        return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), x.device.index

    with scheduler_client("processes", workers=5, gpus=count) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        seen = [client.submit(device_of_a_task, a, workers=[a], pure=False).result() for a in addresses]
    expected = gpu_worker_ids(count, __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
    assert len(seen) == count and sorted(s[0] for s in seen) == sorted(expected)
    assert all(s[1:] == (1, 0) for s in seen)


def test_a_failed_cluster_run_stops_its_running_blocks(tmp_path):
    """Cancelling a cluster's futures does not stop running tasks: after one block failed (or a
    Ctrl-C), the other blocks ran on to their end, holding the workers. They now stop at their
    next check of ``abandoned()``, as local threads do."""
    import time

    from distributed import Client, LocalCluster

    from deconv3d.pipeline.run_flags import CLUSTER_POLL

    started, ended = tmp_path / "slow-block-started", tmp_path / "how-the-slow-block-ended"

    class FailOrWait:  # (defined here: sent to the worker by value)
        def __call__(self, block):
            import time

            from deconv3d.pipeline import chunked

            if block.max() == 0:  # fails once the other block runs
                deadline = time.monotonic() + 60
                while not started.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                raise ValueError("this block fails")
            started.write_text("")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not chunked.abandoned():
                time.sleep(0.05)
            ended.write_text("abandoned" if chunked.abandoned() else "ran to its end")
            return block

    volume = np.ones((4, 8, 16), np.float32)
    volume[..., :8] = 0  # the first block (x < 8) fails; the second waits
    # one worker process with two threads: both blocks run at once
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with pytest.raises(ValueError, match="this block fails"):
            run_chunked(volume, FailOrWait(), tmp_path / "out.zarr", chunks=(4, 8, 8), halo=(0, 0, 0), client=client)
        deadline = time.monotonic() + 30 + 2 * CLUSTER_POLL
        while not ended.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

        def abandon_events(dask_scheduler):
            return [name for name in dask_scheduler.extensions["events"]._events if name.startswith("deconv3d")]

        deadline = time.monotonic() + 10 * CLUSTER_POLL  # the flag is cleared once the blocks have read it
        while client.run_on_scheduler(abandon_events) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.run_on_scheduler(abandon_events) == []  # a long-lived cluster keeps none per failed run
    assert ended.read_text() == "abandoned"
    assert not (tmp_path / "out.zarr").exists()


def test_an_address_ending_in_a_slash_reaches_its_scheduler(monkeypatch):
    """--scheduler tcp://HOST:PORT/ passed the check of the address, then distributed read "8786/" as the port:
    "internal error: ValueError: invalid literal for int() with base 10: '8786/'"."""
    import distributed

    reached = []

    class Client:
        def __init__(self, address, timeout=None):
            reached.append(address)

        def close(self):
            pass

    monkeypatch.setattr(distributed, "Client", Client)
    with scheduler_client("tcp://127.0.0.1:8786/"):
        pass
    assert reached == ["tcp://127.0.0.1:8786"]


@pytest.mark.parametrize("address, said", [
    ("tcp://h:", "gives no port: add the scheduler's, e.g. tcp://h:8786"),
    ("tcp://h:abc/", "gives port 'abc', not a number: give the scheduler's, e.g. tcp://h:8786"),
    ("tls://[::1]", "gives no port: add the scheduler's, e.g. tls://[::1]:8786")])
def test_a_scheduler_address_without_a_port_number_is_told_where_to_put_one(address, said):
    """Found by the second review of this stop: 'tcp://h:' was told "e.g. tcp://h::8786", and 'tcp://h:abc'
    that it gave no port, with "e.g. tcp://h:abc:8786"."""
    from deconv3d.errors import InputError

    with pytest.raises(InputError, match=rf"^scheduler address {re.escape(address)} {re.escape(said)} "):
        check_scheduler(address)
    assert check_scheduler("tcp://[::1]:8786/") == "tcp://[::1]:8786/"


@pytest.mark.parametrize("scheme, fix", [("tls", "give the TLS certificates in dask's configuration"),
                                         ("ucx", "install distributed's UCX support")])
def test_a_scheduler_address_distributed_cannot_connect_to_is_one_line(monkeypatch, scheme, fix):
    """tls:// without dask's TLS settings and ucx:// without UCX ended in distributed's TypeError, an internal
    error (found by the parallel/distributed hunt). Here the Client raises what distributed raised there."""
    import distributed

    from deconv3d.errors import InputError

    def client(address, timeout=None):
        raise TypeError("TLS expects a `ssl_context` argument of type ssl.SSLContext")

    monkeypatch.setattr(distributed, "Client", client)
    with pytest.raises(InputError, match=rf"cannot connect to the dask scheduler at {scheme}://h:8786 \(TLS expects "
                                         rf".*\): {fix}"):
        with scheduler_client(f"{scheme}://h:8786"):
            pass
    with pytest.raises(TypeError):  # over tcp:// such an error is a program's, not the address's: not reworded
        with scheduler_client("tcp://h:8786"):
            pass


def test_blocks_whose_worker_died_are_named_in_one_line(tmp_path, volume, psf3d):
    """Found by the parallel/distributed hunt: a cluster whose only worker died mid-run (killed at its memory
    limit) lost the block function the run had scattered to it, and the blocks still to run were cancelled: the
    error was distributed's five lines, "1 Future cancelled: Reasons: 1 Future cancelled for reason: lost
    dependencies. Message: None Future: ['_block_task-...']", which named neither cause nor fix. (Here the worker
    is removed from the scheduler after the first block, as its death removes it.)"""
    import logging

    from distributed import Client, LocalCluster
    from distributed.utils import silence_logging_cmgr

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        address = next(iter(client.scheduler_info()["workers"]))

        async def remove(dask_scheduler):
            await dask_scheduler.remove_worker(address, stimulus_id="died", close=False)

        def progress(done, total):
            if done == 1:
                client.run_on_scheduler(remove)

        with silence_logging_cmgr(logging.CRITICAL + 1), pytest.raises(RuntimeError) as caught:  # ("lost data")
            run_chunked(volume, RichardsonLucyBlock(psf3d, iterations=2), tmp_path / "out.zarr", chunks=(12, 24, 24),
                        client=client, progress=progress)
    assert str(caught.value).startswith("the dask cluster cancelled a block (lost dependencies): it had lost what the "
                                        "run sent its workers, as when they die"), caught.value
    assert "\n" not in str(caught.value) and "smaller --chunks" in str(caught.value)
    assert os.listdir(tmp_path) == []  # no output, no temporary


def test_blocks_cancelled_as_the_scheduler_connection_dropped_are_not_blamed_on_memory():
    """Found by the second review of this stop: where the client loses its scheduler it cancels every future
    ("scheduler-connection-lost", distributed's Client._reconnect). Where the client was running again when the
    error reached run_blocks (reconnected to a scheduler at the same address), the run was told its workers had
    died, "with more memory per worker or smaller --chunks". Here distributed's wait raises what it raises then
    (not reproduced with a real scheduler)."""
    from distributed.client import CancelledFuturesGroup, FutureCancelledError, FuturesCancelledError

    from deconv3d.pipeline.cluster_blocks import _settle_distributed

    def wait(futures, timeout=None, return_when=None):
        lost = FutureCancelledError("_block_task-1", "scheduler-connection-lost", "Client lost the connection")
        raise FuturesCancelledError([CancelledFuturesGroup([lost], "scheduler-connection-lost")])

    with pytest.raises(RuntimeError) as caught:
        _settle_distributed({object()}, 0, wait, None, lambda result: None, lambda: None)
    assert str(caught.value) == ("the dask cluster cancelled a block (scheduler-connection-lost): the connection to "
                                 "its scheduler was lost during the run: check that the scheduler is running and "
                                 "reachable, and rerun")


def test_a_lost_scheduler_is_named(tmp_path, volume, psf3d):
    """A client whose scheduler went away fails with that reason, not with the first call it broke
    ("'NoneType' object has no attribute 'ncores'" was a batch's only word on it)."""
    from deconv3d.pipeline.chunked import run_blocks

    class Lost:
        status, _start_arg = "closing", "tcp://127.0.0.1:8786"

        def nthreads(self):
            raise AttributeError("'NoneType' object has no attribute 'ncores'")

    with pytest.raises(RuntimeError, match=r"lost the dask scheduler at tcp://127\.0\.0\.1:8786: is it still running"):
        run_blocks(volume, RichardsonLucyBlock(psf3d, iterations=2), tmp_path / "t.zarr", chunks=(12, 24, 24),
                   halo=(2, 2, 2), client=Lost())
    Lost.status = "running"  # a live cluster's own errors pass through as they are
    with pytest.raises(AttributeError, match="ncores"):
        run_blocks(volume, RichardsonLucyBlock(psf3d, iterations=2), tmp_path / "t.zarr", chunks=(12, 24, 24),
                   halo=(2, 2, 2), client=Lost())


def test_local_worker_processes_each_get_a_share_of_the_free_memory(monkeypatch):
    """Found by the out-of-core review: ``batch --scheduler processes`` never went block by block on
    its own (a whole volume predicted at 552 MB ran whole with 456 MB allowed) while ``threads``
    split it. Each worker process of a LocalCluster now gets an equal share of the free memory, less
    the program's own memory of the others (one worker: all of it, as threads); a cluster at an
    address, whose workers' memory is not seen here, is left to the user's limit as before."""
    import warnings

    from distributed import Client, LocalCluster

    from deconv3d.pipeline import MemoryModel
    from deconv3d.pipeline import memory as memory_module
    from deconv3d.pipeline import planning

    from .conftest import gaussian_psf

    psf, shape, baseline = gaussian_psf(), (64, 512, 512), 300 * 10**6
    model = MemoryModel("rl", psf.shape, accelerate=False)
    block = RichardsonLucyBlock(psf, 2, accelerate=False)
    monkeypatch.setattr(planning, "planning_baseline", lambda: baseline)
    need = model.peak_bytes(shape, (0, 0, 0), shape, baseline=baseline) - baseline  # the whole volume's
    free = int(need * 0.9 / memory_module.AVAILABLE_SHARE)  # 90 % of what the whole volume needs
    monkeypatch.setattr(memory_module, "available_memory", lambda: free)
    share = int(memory_module.AVAILABLE_SHARE * free)

    def plan(client):
        with pytest.warns(RuntimeWarning, match="would need more memory than is available"):
            return planning.RunPlan.make(shape, [block], None, None, None, model, 1, client)

    threads = plan(None)
    assert threads.memory_limit == baseline + share and threads.blocks > 1
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        assert planning._processes_here(client) == 2
        two = plan(client)
    assert two.memory_limit == baseline + (share - baseline) // 2  # each worker's half of the 80 % less its own
    assert two.predicted <= two.memory_limit and two.blocks > threads.blocks

    class AddressClient:  # Client("tcp://...") has no cluster object: its workers may be anywhere
        cluster = None

        def nthreads(self):
            return {"tcp://a:1": 1, "tcp://b:1": 1}

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elsewhere = planning.RunPlan.make(shape, [block], None, None, None, model, 1, AddressClient())
    assert elsewhere.memory_limit is None and elsewhere.blocks == 1


def test_a_one_worker_cluster_retries_the_blocks_of_a_worker_that_died(tmp_path, capsys, monkeypatch):
    """``batch --scheduler processes --workers 1`` whose worker died (here: killed by its first block) failed the
    file, "the dask cluster cancelled a block": the block function the run had scattered died with the worker,
    and the one its nanny restarted lacked it. Retried on the restarted worker, as on a cluster of two, where the
    other worker holds it: the output is the threads' bit for bit."""
    import dataclasses
    import signal

    from cli_helpers import run

    from deconv3d.pipeline import batch
    from deconv3d.pipeline.methods import WienerBlock

    from .conftest import blurred_beads, gaussian_psf

    psf = gaussian_psf((5, 5, 5))
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "img.tif", blurred_beads((16, 48, 48), psf), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    killed = tmp_path / "killed"

    class KilledOnce(WienerBlock):  # (defined here: sent to the worker by value)
        def __call__(self, block, placement=None):
            if not killed.exists():  # the first block to run kills its worker, once
                killed.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(block, placement)

    real = batch.build_block_fn

    def killing(*args, **kwargs):
        block, *rest = real(*args, **kwargs)
        return (KilledOnce(**{f.name: getattr(block, f.name) for f in dataclasses.fields(block)}), *rest)

    monkeypatch.setattr(batch, "build_block_fn", killing)
    argv = ["batch", tmp_path / "in", "-o", tmp_path / "procs", "--psf", tmp_path / "psf.tif", "--method", "wiener",
            "--chunks", 8, 24, 24, "--device", "cpu"]
    code, _, err = run([*argv, "--scheduler", "processes", "--workers", 1], capsys)
    assert code == 0, err
    assert killed.exists() and int(killed.read_text()) != os.getpid()  # (a worker process died)
    argv[3] = tmp_path / "threads"
    code, _, err = run(argv, capsys)  # (no worker killed: the file exists)
    assert code == 0, err
    procs, threads = (read_ome_zarr(tmp_path / name / "img.zarr")[0] for name in ("procs", "threads"))
    assert np.array_equal(procs, threads)


def test_a_block_whose_workers_all_die_running_it_is_said_in_one_line(tmp_path):
    """A block that kills every worker that runs it (as one over a worker's memory limit) ended a run with
    distributed's KilledWorker line, which names a task and the workers' logs but no fix (a one-worker cluster
    said the block was cancelled, until its restarted worker retried the block)."""
    import signal

    class Kills:  # (defined here: sent to the worker by value)
        def __call__(self, block):
            os.kill(os.getpid(), signal.SIGKILL)

    assert _dying_run_error(tmp_path, Kills()) == ("the dask cluster's workers died running a block, each time it was "
                                                   "tried (killed at their memory limit, say: see their logs): rerun "
                                                   "with more memory per worker or smaller --chunks")


def _dying_run_error(tmp_path, fn) -> str:
    """The RuntimeError's line of a run of ``fn`` on a one-worker processes cluster that allows one failure;
    nothing is written."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with pytest.raises(RuntimeError) as caught:
            run_chunked(np.ones((4, 8, 8), np.float32), fn, tmp_path / "out.zarr", chunks=(4, 8, 8),
                        halo=(0, 0, 0), client=client)
    assert not (tmp_path / "out.zarr").exists()
    return str(caught.value)


def test_workers_that_die_taking_in_the_block_function_are_not_told_to_use_smaller_chunks(tmp_path):
    """Found by the review of this stop's diff: on a processes cluster the block function is a task's result
    (8e70384); workers that died taking it in (here: killed as they unpickle it) ended the run with the line of a
    block that dies running, whose fix, smaller --chunks, does not shrink the function."""
    import signal

    here = os.getpid()

    def arrive():  # (run where the function is unpickled: by the scheduler here, and by the worker)
        if os.getpid() != here:
            os.kill(os.getpid(), signal.SIGKILL)
        return Arrives()

    class Arrives:  # (defined here: sent to the worker by value)
        def __reduce__(self):
            return arrive, ()

        def __call__(self, block):
            return block

    assert _dying_run_error(tmp_path, Arrives()) == ("the dask cluster's workers died taking in the run's block "
                                                     "function, each time it was sent (killed at their memory limit, "
                                                     "say: see their logs): rerun with more memory per worker")
