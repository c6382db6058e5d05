"""The cores and heap memory of the threads that compute a chunked run's blocks.

Concurrent blocks share torch's threads (:func:`_share_cores`: each worker thread of a run takes
its share, :func:`_pin_threads`, set per thread where torch's OpenMP and MKL allow it), and
overlapping runs put the process's default thread count back when the last one ends.
:func:`release_memory` hands the heap memory a finished block freed back to the OS.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

from deconv3d.pipeline import run_flags
from deconv3d.pipeline.allocator import OverlappingRuns

__all__ = ["release_memory"]


def _pin_threads() -> None:
    """Give this worker thread its run's share of the cores (:func:`_share_cores`), or the
    process's count, for its OpenMP and MKL work.

    ``torch.set_num_threads`` sets the count of the thread that calls it (and the default of
    threads started after); in another thread torch reports a count, but MKL's FFTs run on
    every core: the blocks then oversubscribed the cores, and a block computed in a worker
    thread differed in its last bits from the same block computed at that count in the main
    thread. Setting the count in the worker fixes both. The share comes with the block's task
    (``_BLOCK.threads``): read from one process-wide value, a one-worker run's blocks took the
    share of another run in progress, and left it as the default of new threads. Nothing to do
    where the block function has not imported torch.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    share = getattr(run_flags._BLOCK, "threads", 0)
    # torch gives a thread the process's count at its first use of threads, unless that has
    # happened: asked first, the count set next stays this thread's when the default changes
    own = torch.get_num_threads()
    if not share:
        torch.set_num_threads(_CORES["default"] if _SHARED_CORES.active else own)
        return
    if _set_this_thread(share):
        return
    torch.set_num_threads(share)
    if share != _CORES["default"]:  # and the default of new threads back: a GUI thread started now kept the share
        _set_default_threads(_CORES["default"])


def _set_this_thread(count: int) -> bool:
    """Set this thread's OpenMP and MKL thread counts, and nothing else, where torch's libraries
    allow it (Linux wheels: its libgomp and the MKL inside libtorch_cpu). ``torch.set_num_threads``
    also sets the count threads started later get: put back from another thread right after, a
    GUI thread that started in between kept the share for good (4 times in 30 in a test)."""
    setters = _thread_setters()
    if setters is None:
        return False
    import torch

    omp, mkl = setters
    omp(int(count))
    mkl(int(count))
    if torch.get_num_threads() == count:
        return True
    _NO_THREAD_SETTERS.append(False)  # another OpenMP runtime than the one torch asks: not again
    return False


_NO_THREAD_SETTERS: list = []  # holds False once the per-thread setters turned out to ask another runtime


def _thread_setters():
    """``(omp_set_num_threads, MKL_Set_Num_Threads_Local)`` of the libraries torch runs on, or None
    (missing: :func:`_find_thread_setters` remembers that)."""
    return None if _NO_THREAD_SETTERS else _find_thread_setters()


@functools.lru_cache(maxsize=None)
def _find_thread_setters():
    import ctypes
    import glob

    import torch

    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        gomp = ctypes.CDLL(sorted(glob.glob(os.path.join(libdir, "libgomp*.so*")))[0])
        cpu = ctypes.CDLL(os.path.join(libdir, "libtorch_cpu.so"))
        omp, mkl = gomp.omp_set_num_threads, cpu.MKL_Set_Num_Threads_Local  # (the C call: mkl_set_... takes a pointer)
    except (IndexError, OSError, AttributeError):
        return None
    omp.argtypes, mkl.argtypes = [ctypes.c_int], [ctypes.c_int]
    return omp, mkl


def _take_share(threads: int) -> None:
    """Give the blocks this worker thread runs ``threads`` torch threads (a pool's initializer)."""
    run_flags._BLOCK.threads = threads


def _set_default_threads(count: int) -> None:
    """Make ``count`` the torch thread count of threads started from now on, leaving this thread's
    own count as it is: set from a short-lived thread of its own."""
    import torch

    setter = threading.Thread(target=torch.set_num_threads, args=(count,))
    setter.start()
    setter.join()


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Block arrays of a few to some tens of MB sit below glibc's adaptive mmap threshold, so after
    a block they stay in the heap as free but resident fragments, and the next blocks, of other
    sizes, do not fit them all: without this, resident memory creeps up block after block
    (measured: +400 MB over 48 RL blocks of 64 x 149 x 185).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim():
    global _TRIM
    if _TRIM is False:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            _TRIM.argtypes, _TRIM.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _TRIM = None
    return _TRIM


_TRIM = False


@contextlib.contextmanager
def _share_cores(workers: int):
    """Give each of ``workers`` concurrent blocks its share of torch's threads.

    Every block would otherwise use all of torch's threads, and ``workers`` blocks at once
    oversubscribe the cores (on a 2-core machine two blocks of two threads each ran many
    times slower than one block after the other). The blocks' worker threads take the share
    (:func:`_pin_threads`); the calling thread keeps its own count. It used to be lowered there
    and put back by whichever overlapping run ended last, in that run's thread only: a GUI's
    background thread was left at 1 thread for good (review of process-global state).

    A count set in any thread is also the default of threads started after it: overlapping runs
    share the default the first one in found, and each worker sets it back after taking its
    share (:func:`_set_default_threads`), as the last run out does. Yields the share of each
    block (0 for one worker: the blocks keep the process's count).
    """
    if workers <= 1:
        yield 0
        return
    with _SHARED_CORES.held():
        yield max(1, _CORES["default"] // workers)


def _note_default_threads() -> None:
    import torch

    _CORES["default"] = torch.get_num_threads()


#: The default thread count the first of the runs inside _share_cores found.
_CORES = {"default": 1}
_SHARED_CORES = OverlappingRuns(first=_note_default_threads, last=lambda: _set_default_threads(_CORES["default"]))
