"""Run a per-block callable over an image with a halo and write the result to zarr, block by block.

The callable knows nothing about chunks: it takes a float32 numpy block and returns an array of
the same shape (one whose ``placed`` attribute is true is also told where the block lies: a
:class:`Placement`). Each block is handed to it with ``halo`` extra voxels of real neighbouring data
on every side that has a neighbour; at the outer border of the volume the read region is just
clipped (no padding), so the callable's own boundary handling (e.g. the Bertero-Boccacci boundary
of Richardson-Lucy) treats that border exactly as in a whole-volume run. This is what
``dask.array.map_overlap`` with ``boundary="none"`` computes (:func:`deconv3d.pipeline.graph.blockwise`
builds that lazy graph), but :func:`run_blocks` does it without a graph over the input: every block is one
self-contained task that reads exactly its own region plus halo straight from the source
(:mod:`deconv3d.pipeline.readers`, or the path-based readers of :mod:`deconv3d.omezarr`),
runs the callable, trims the halo and writes the core into the output zarr chunk(s) it owns, and
returns nothing. At most ``workers`` blocks are in flight at once, so peak memory depends on the
block shape and the number of workers, never on the size of the volume; the volume is never
assembled in memory.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from deconv3d.errors import Cancelled, InputError
from deconv3d.pipeline.allocator import OverlappingRuns
from deconv3d.pipeline.readers import ArrayReader, DaskReader, as_reader  # noqa: F401 (re-exported)

__all__ = ["plan_chunks", "block_regions", "run_blocks", "as_reader", "ArrayReader", "DaskReader", "Cancelled",
           "ProgressCallback", "release_memory", "Placement", "abandoned", "box_blocks", "aligned_box",
           "write_box_blocks", "stored_chunks", "sides_in_whole_chunks"]

ProgressCallback = Callable[[int, int], Optional[bool]]


@dataclass(frozen=True)
class Placement:
    """Where a block lies, for a block callable whose ``placed`` attribute is true: it is then
    called as ``fn(block, placement)``.

    ``start``: the block's first voxel in the volume (per spatial axis); ``core``: the core's
    slices inside the block (the rest is halo, to be trimmed); ``shape``: the volume's spatial
    shape. Where ``core`` reaches the block's edge, that edge is the volume's border (halos are
    clipped only there).
    """

    start: tuple
    core: tuple
    shape: tuple


def plan_chunks(shape: Sequence[int], chunks: Sequence[int], halo: Sequence[int]):
    """Block sizes and per-axis halo of a run, and the zarr chunks the blocks align with.

    Per axis: a chunk covering the whole axis needs no halo; a chunk smaller than the halo is
    enlarged to it (as ``map_overlap`` needs ``depth <= chunk``); a last remainder shorter than the
    halo is merged into the block before it, so the block boundaries stay a subset of the regular
    zarr chunk boundaries (every zarr chunk has exactly one writer).

    Returns
    -------
    dask_chunks : tuple of tuple of int
        The core block sizes along every axis.
    halo : tuple of int
    zarr_chunks : tuple of int
    """
    if not (len(shape) == len(chunks) == len(halo)):
        raise InputError(f"chunks {tuple(chunks)} and halo {tuple(halo)} need one value per axis of {tuple(shape)}")
    dask_chunks, halos, zarr_chunks = [], [], []
    for n, c, h in zip(shape, chunks, halo):
        c = min(max(int(c), 1), n)
        h = max(int(h), 0)
        if c >= n:
            dask_chunks.append((n,))
            halos.append(0)
            zarr_chunks.append(n)
            continue
        c = max(c, min(h, n))
        full, rest = divmod(n, c)
        sizes = [c] * full
        if rest and rest < h:
            sizes[-1] += rest
        elif rest:
            sizes.append(rest)
        h = min(h, min(sizes))
        dask_chunks.append(tuple(sizes))
        halos.append(h if len(sizes) > 1 else 0)
        zarr_chunks.append(c)
    return tuple(dask_chunks), tuple(halos), tuple(zarr_chunks)


def stored_chunks(shape: Sequence[int], block_chunks: Sequence[int], cap: Sequence[int]) -> tuple[int, ...]:
    """The zarr chunks of an output whose blocks are those of a plan (``block_chunks``: the zarr
    chunks :func:`plan_chunks` returns), no side longer than ``cap`` (per axis; e.g.
    :data:`deconv3d.omezarr.writing.CHUNK_CAP`): the largest divisor of each block side up to the
    cap, so that every block still writes whole chunks and each chunk has one writer. Along an
    axis that one block spans, the cap itself (the last, shorter chunk is that block's too).
    Block sides from :func:`sides_in_whole_chunks` have a divisor near the cap."""
    out = []
    for n, c, k in zip(shape, block_chunks, cap):
        c, k = int(c), max(1, int(k))
        out.append(c if c <= k else k if c >= n else next(d for d in range(k, 0, -1) if c % d == 0))
    return tuple(out)


def sides_in_whole_chunks(chunks: Sequence[int], shape: Sequence[int], cap: Sequence[int],
                          multiple: int = 1, halo: Sequence[int] | None = None) -> tuple[int, ...]:
    """``chunks`` (core block sides), each first enlarged to its ``halo`` as :func:`plan_chunks`
    does, with each side longer than its ``cap`` but shorter than its axis cut down to the nearest
    whole number of equal chunk sides of at most the cap (each a multiple of ``multiple``, a
    network's pooling grid, where that fits): a block side of 683 (a 2048 axis in three) has no
    divisor up to 512 but 1, and would have stored chunks 1 voxel wide (:func:`stored_chunks`); cut
    to 682 it has 341. A side that cutting down would leave shorter than its halo is rounded up to
    whole chunks instead: 40 planes enlarged to a halo of 67 stored chunks of 1 plane; 68 has 34."""
    out = []
    for c, n, k, h in zip(chunks, shape, cap, halo if halo is not None else (0,) * len(chunks)):
        c, k, m, h = int(c), max(1, int(k)), max(1, int(multiple)), max(0, int(h))
        c = max(c, min(h, n)) if c < n else c
        path = [c]  # (once more gives the same: a plan made of these sides is planned again as it is;
        while (side := _whole_chunk_side(c, n, k, m, h)) != c:  # 272 gave 240, which gave 256)
            if side in path:  # a cap that is not a multiple of m can cycle (9, 12, 9): its largest side,
                c = max(path[path.index(side):])  # whichever side of the cycle it entered by
                break
            if len(path) > n:  # (sides lie in 1..n: more that all differ is a broken step, which hung the run)
                raise RuntimeError(f"sides_in_whole_chunks: a side along an axis of {n} (cap {k}, grid {m}, halo {h}) "
                                   f"did not settle in {len(path)} steps ({path[:4]} ...): an internal error")
            path.append(side)
            c = side
        out.append(c)
    return tuple(out)


def _whole_chunk_side(c: int, n: int, k: int, m: int, h: int) -> int:
    """One step of :func:`sides_in_whole_chunks` on one axis (``c`` already at least the halo
    ``h``): a side that cutting down into ``ceil(c / k)`` chunks of a multiple of ``m`` keeps at
    least ``h`` is cut down, else rounded up, never past the axis ``n``. The sides are bounded
    (up to ``n``), so repeating the step ends in a side it keeps or in a cycle."""
    if c <= k or c >= n:
        return c
    parts = -(-c // k)
    down = min(c, parts * max(m, c // parts // m * m))
    per = -(-c // parts)  # (c / parts rounded up, then to a multiple of m)
    up = parts * (-(-per // m) * m)
    return min(n, down if down >= h else up)


def block_regions(shape: Sequence[int], block_sizes: Sequence[Sequence[int]], halo: Sequence[int]):
    """Yield ``(read, trim, write)`` slices of every block of a plan (see :func:`plan_chunks`).

    ``read`` is the block's core plus ``halo`` on each side, clipped at the volume border (no
    padding); ``trim`` selects the core inside what was read; ``write`` is the core's place in
    the volume.

    Blocks come grouped by the shape they read (per axis, the most common length first), so that
    a method's set-up for one shape serves the blocks that follow (RL's OTF and Bertero weight,
    Wiener's OTF: :mod:`deconv3d.classical._reuse`); row by row, 8 blocks of a 96 x 384 x 384 volume in three
    shapes changed shape at 6 of 7 steps. Each block writes its own chunks, so the order changes
    nothing else.
    """
    per_axis = [_by_length(axis_regions(n, sizes, h)) for n, sizes, h in zip(shape, block_sizes, halo)]
    for groups in _product(per_axis):
        for combo in _product(groups):
            yield tuple(c[0] for c in combo), tuple(c[1] for c in combo), tuple(c[2] for c in combo)


def _by_length(regions: list) -> list[list]:
    """One axis's ``regions`` (:func:`axis_regions`) in groups of one read length, the largest first."""
    groups: dict = {}
    for region in regions:
        groups.setdefault(region[0].stop - region[0].start, []).append(region)
    return sorted(groups.values(), key=len, reverse=True)


def axis_regions(n: int, sizes: Sequence[int], halo: int) -> list[tuple[slice, slice, slice]]:
    """``(read, trim, write)`` of every block along one axis of length ``n`` (see :func:`block_regions`)."""
    regions, start = [], 0
    for size in sizes:
        lo, hi = max(0, start - halo), min(int(n), start + size + halo)
        regions.append((slice(lo, hi), slice(start - lo, start - lo + size), slice(start, start + size)))
        start += size
    return regions


def box_blocks(shape: Sequence[int], block_sizes: Sequence[Sequence[int]], halo: Sequence[int],
               box: Sequence[slice]) -> list[tuple[slice, ...]]:
    """The ``write`` regions (see :func:`block_regions`) of the blocks whose cores lie inside
    ``box`` and at least ``halo`` from each face of it that is inside the volume: where a run of
    the method on the box agrees with the blocks' runs as closely as blocks agree at their seams."""
    per_axis = []
    for n, sizes, h, b in zip(shape, block_sizes, halo, box):
        lo = b.start if b.start == 0 else b.start + h
        hi = b.stop if b.stop == n else b.stop - h
        per_axis.append([w for _, _, w in axis_regions(n, sizes, h) if w.start >= lo and w.stop <= hi])
    return list(_product(per_axis))


def aligned_box(shape: Sequence[int], block_sizes: Sequence[Sequence[int]], halo: Sequence[int],
                box_shape: Sequence[int]) -> tuple[slice, ...]:
    """A box of ``box_shape`` at most one block from the centre on every axis (the steps measured
    on it stand for the volume: a box at a corner of a large stack may hold background alone),
    placed there to hold as many whole blocks as it can (:func:`box_blocks`), nearest the centre
    among those."""
    box = []
    for n, sizes, h, b in zip(shape, block_sizes, halo, box_shape):
        b = min(int(b), int(n))
        centre = (n - b) // 2
        starts = {centre, 0, n - b} | {min(max(w.start - h, 0), n - b) for _, _, w in axis_regions(n, sizes, h)}
        held = lambda s: len(box_blocks((n,), (sizes,), (h,), (slice(s, s + b),)))
        start = min(sorted(s for s in starts if abs(s - centre) <= max(sizes)),
                    key=lambda s: (-held(s), abs(s - centre)))
        box.append(slice(start, start + b))
    return tuple(box)


def write_box_blocks(output: np.ndarray, box: Sequence[slice], regions: Sequence[tuple[slice, ...]],
                     target_path, lead: Sequence[int] = ()) -> None:
    """Write the ``regions`` (:func:`box_blocks`) of ``output``, the method's result on ``box``,
    into the zarr array at ``target_path`` (at index ``lead`` of its leading axes)."""
    import zarr

    target = zarr.open_array(str(target_path), mode="r+")
    lead = tuple(int(i) for i in lead)
    for write in regions:
        inside = tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(write, box))
        target[lead + tuple(write)] = output[inside]


def _product(axes):
    import itertools

    return itertools.product(*axes)


# ------------------------------------------------------------------ tasks ---


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

    Always False outside :func:`run_blocks`' tasks (in-memory runs, dask graphs). On a cluster's
    workers it asks the scheduler, at most once every :data:`CLUSTER_POLL` seconds.
    """
    event = getattr(_BLOCK, "abandon", None)
    return event is not None and event.is_set()


def block_run():
    """The run whose block this thread computes: an object that lives as long as the run (one
    :func:`run_blocks` call in this process; on a cluster's workers, the block's task), or None
    outside run_blocks' tasks. A block callable may keep what it set up for one block for the
    next blocks of its run, for this object (RL's and Wiener's OTF: :mod:`deconv3d.classical._reuse`): the run
    drops it when it ends, failed or cancelled too."""
    return getattr(_BLOCK, "abandon", None)


def _apply(fn: Callable[[np.ndarray], np.ndarray], block: np.ndarray, placement: Placement | None = None) -> np.ndarray:
    if block.size == 0:
        return np.zeros(block.shape, np.float32)
    _pin_threads()
    placed = placement is not None and getattr(fn, "placed", False)
    out = np.asarray(fn(block, placement) if placed else fn(block), dtype=np.float32)
    if out.shape != block.shape:
        raise RuntimeError(f"block function returned shape {out.shape} for a block of shape {block.shape}")
    return out


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
    share = getattr(_BLOCK, "threads", 0)
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
    _BLOCK.threads = threads


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


def _block_task(source, read_key: tuple, fn, placement: Placement, target_path: str, write_key: tuple,
                abandon: "_RunFlag | threading.Event | str | None" = None, threads: int = 0) -> None:
    """Read one block (plus halo) from ``source``, run ``fn`` (on ``threads`` torch threads, when
    given: :func:`_pin_threads`), write the core; return nothing.

    ``source`` is a reader (read ``read_key`` from it) or the block itself, already read. Once
    ``abandon`` is set (the run is being given up), the block is skipped, or its result (cut short
    where ``fn`` checks :func:`abandoned`) discarded; on a cluster it is the name of the run's
    ``distributed.Event`` (:class:`_ClusterFlag`).
    """
    import zarr

    from deconv3d._fftw_planning import measuring_run
    from deconv3d.classical._reuse import drop_setup

    on_cluster = isinstance(abandon, str)
    if on_cluster:  # on a cluster's worker: the name of the run's distributed.Event
        abandon = _ClusterFlag(abandon)
    if abandon is not None and abandon.is_set():
        return None
    block = source if isinstance(source, np.ndarray) else source.read(read_key)
    _verify_source(source, thorough=False)  # (run_chunked checks thoroughly once, before publishing)
    _BLOCK.abandon, _BLOCK.threads = abandon, threads
    try:  # a worker's blocks of one run share FFTW's measuring budget (here: run_blocks' own)
        with measuring_run(abandon.name if on_cluster else None):
            out = _apply(fn, np.ascontiguousarray(block, dtype=np.float32), placement)
    finally:
        _BLOCK.abandon, _BLOCK.threads = None, 0
        if on_cluster:  # this task's flag is the run's there (block_run): its set-up goes with the task
            drop_setup(abandon)
    del block
    if abandon is not None and abandon.is_set():
        return None
    target = zarr.open_array(str(target_path), mode="r+")
    target[write_key] = out[placement.core]
    del out
    release_memory()
    return None


def _verify_source(source, thorough: bool = True) -> None:
    """Refuse a block read from a file that changed since the run opened it (a reader's ``verify``;
    ``thorough`` asks it for its costlier checks, once per run)."""
    verify = getattr(source, "verify", None)
    if verify is None or isinstance(source, np.ndarray):
        return
    import inspect

    try:
        takes_thorough = "thorough" in inspect.signature(verify).parameters
    except (TypeError, ValueError):
        takes_thorough = False
    if takes_thorough:
        verify(thorough=thorough)
    else:  # a reader of one's own, whose verify takes no argument
        verify()


def run_blocks(reader, fn, target_path, *, chunks: Sequence[int], halo: Sequence[int], lead: Sequence[int] = (),
               client=None, workers: int = 1, progress: ProgressCallback | None = None, done: int = 0,
               total: int | None = None, pool: ThreadPoolExecutor | None = None,
               skip: Sequence[tuple[slice, ...]] = (), cancel=None) -> int:
    """Run ``fn`` over the image ``reader[lead]`` block by block, writing into ``target[lead]``.

    Every block is one independent task: read its region plus halo (clipped at the border) from
    ``reader``, apply ``fn``, trim the halo, write the core into the zarr array at
    ``target_path``, whose chunks must be those of :func:`plan_chunks` (one writer per chunk).
    At most ``workers`` tasks (on a cluster: its threads) are in flight; a task returns nothing.

    Parameters
    ----------
    reader : block reader or array
        Anything :func:`~deconv3d.pipeline.readers.as_reader` takes; ``lead`` indexes its
        leading (t, c) axes.
    client : distributed.Client, optional
        Run on this dask.distributed cluster; else on ``pool`` (or a new pool of ``workers`` threads).
    progress : callable, optional
        ``progress(done + k, total)`` after the k-th written block; returning True cancels
        (:class:`Cancelled` is raised once running blocks have stopped: at their next check of
        :func:`abandoned`, or when they finish).
    cancel : threading.Event, optional
        Set from another thread to cancel: running blocks stop at their next check of
        :func:`abandoned` (an RL iteration, a network's tile) and :class:`Cancelled` is raised.
    skip : sequence of tuple of slice
        The ``write`` regions of blocks already written (:func:`write_box_blocks`): not run.

    Returns
    -------
    int
        The number of blocks written (those in ``skip`` not counted).
    """
    reader = as_reader(reader)  # a bare array would otherwise pass for a block already read
    lead = tuple(int(i) for i in lead)
    spatial = tuple(reader.shape[len(lead):])
    sizes, depth, _ = plan_chunks(spatial, chunks, halo)
    regions = block_regions(spatial, sizes, depth)
    written = {tuple(w.start for w in write) for write in skip}
    count = math.prod(len(s) for s in sizes) - len(written)
    total = count if total is None else total
    tasks = ((lead + read, Placement(tuple(r.start for r in read), trim, spatial), lead + write)
             for read, trim, write in regions if tuple(w.start for w in write) not in written)
    if client is not None:
        try:
            return _run_distributed(reader, fn, str(target_path), tasks, client, progress, done, total, cancel)
        except Exception as exc:
            if getattr(client, "status", "running") == "running":
                raise
            # else the error is whatever call failed first ("'NoneType' object has no attribute 'ncores'")
            address = getattr(client, "_start_arg", None) or "its address"
            raise RuntimeError(f"lost the dask scheduler at {address}: is it still running? Start it again and "
                               "rerun") from exc
    from deconv3d._fftw_planning import measuring_run

    own = pool is None
    workers = max(1, min(int(workers), count))  # fewer blocks than workers: each keeps more of the cores
    pool = pool or ThreadPoolExecutor(workers)
    try:
        with _share_cores(workers) as share, measuring_run():  # the blocks: one run for FFTW's measuring
            return _run_threads(reader, fn, str(target_path), tasks, pool, workers, progress, done, total, share,
                                cancel)
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


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


def _counter(progress, done: int, total: int):
    """A function to call per finished block: counts, reports and raises :class:`Cancelled` on request."""
    state = {"count": 0}

    def finished() -> int:
        state["count"] += 1
        if progress is not None and progress(done + state["count"], total):
            raise Cancelled(f"cancelled after {done + state['count']} of {total} blocks")
        return state["count"]

    return finished, state


def _stop_if_cancelled(flag: _RunFlag, done: int, total: int) -> None:
    """Raise :class:`Cancelled` once the caller's ``cancel`` event is set (``done`` blocks written)."""
    if flag.cancelled():
        raise Cancelled(f"cancelled after {done} of {total} blocks")


def _run_threads(reader, fn, target_path: str, tasks: Iterable, pool, workers: int, progress, done: int,
                 total: int, threads: int = 0, cancel=None) -> int:
    from deconv3d.classical._reuse import drop_setup

    finished, state = _counter(progress, done, total)
    futures: set = set()
    abandon = _RunFlag(cancel)  # the blocks see a cancel at once, and this loop within half a second

    def settle(at_most: int) -> None:
        _stop_if_cancelled(abandon, done + state["count"], total)
        while len(futures) > at_most:
            # with a timeout: on Windows before Python 3.14 an untimed lock wait ignores Ctrl-C
            ready = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED).done
            _stop_if_cancelled(abandon, done + state["count"], total)  # (a block the cancel cut short wrote nothing)
            for future in ready:
                futures.discard(future)
                future.result()  # a block's failure is raised here
                finished()

    try:
        for read, placement, write in tasks:
            settle(workers - 1)
            futures.add(pool.submit(_block_task, reader, read, fn, placement, target_path, write, abandon, threads))
        settle(0)
    except BaseException:
        abandon.set()  # running blocks stop at their next check of abandoned() and write nothing
        for future in futures:
            future.cancel()
        wait(futures)  # before the output is removed
        raise
    finally:  # no block runs now: the set-up they kept (block_run) goes, not when the collector finds the run
        drop_setup(abandon)
    return state["count"]


def _run_distributed(reader, fn, target_path: str, tasks: Iterable, client, progress, done: int, total: int,
                     cancel=None) -> int:
    import uuid

    from distributed import Event
    from distributed import wait as dwait

    finished, state = _counter(progress, done, total)
    threads = max(1, sum(client.nthreads().values()))
    remote = bool(getattr(reader, "remote", False))
    limit = 2 * threads if remote else threads  # blocks read here travel with their task: hold fewer
    refs = [client.scatter(fn, broadcast=True, hash=False)]  # sent once, not with every task
    if remote:  # a path-based reader: every worker opens the source itself
        refs.append(client.scatter(reader, broadcast=True, hash=False))
    futures: set = set()
    abandon = Event(f"deconv3d-abandon-{uuid.uuid4().hex}", client=client)
    asked = _RunFlag(cancel)  # the caller's cancel, passed on to the workers' blocks through ``abandon``

    def settle(at_most: int) -> None:
        _stop_if_cancelled(asked, done + state["count"], total)
        while len(futures) > at_most:
            try:
                ready = dwait(list(futures), timeout=None if cancel is None else 0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished: look at the cancel event again
                ready = None
            _stop_if_cancelled(asked, done + state["count"], total)
            for future in ready.done if ready else ():
                futures.discard(future)
                future.result()  # a block's failure is raised here
                future.release()
                finished()

    try:
        for read, placement, write in tasks:
            settle(limit - 1)
            source = refs[1] if remote else reader.read(read)
            futures.add(client.submit(_block_task, source, read, refs[0], placement, target_path, write, abandon.name,
                                      pure=False))
            del source
        settle(0)
    except BaseException:
        abandon.set()  # running blocks stop at their next check of abandoned(); the others are cancelled
        client.cancel(list(futures))
        _clear_later(abandon, 3 * CLUSTER_POLL)  # once they have read it: a set event stays on the scheduler
        raise
    finally:
        client.cancel(refs)
    return state["count"]


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


# ---------------------------------------------------------- dask graph API ---
