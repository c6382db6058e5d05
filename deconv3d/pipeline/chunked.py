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
returns nothing (or, asked to, a few figures of its core: its top values, its voxels at or above a
level, those of them near the volume's faces). At most ``workers`` blocks are in flight at once, so
peak memory depends on the block shape and the number of workers, never on the size of the volume;
the volume is never assembled in memory.

This module holds the block task and the local threads' runner; the dask.distributed cluster's is in
:mod:`deconv3d.pipeline.cluster_blocks`. The
blocks' geometry is in :mod:`deconv3d.pipeline.block_geometry`, the run's abandon flag in
:mod:`deconv3d.pipeline.run_flags`, and the sharing of cores and the release of memory between
blocks in :mod:`deconv3d.pipeline.threads_and_memory`, what blocks report of their cores in
:mod:`deconv3d.pipeline.block_figures`; the names of this module's ``__all__``
that live there are re-exported here.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from deconv3d.errors import Cancelled, NonFiniteValues
from deconv3d.pipeline import run_flags
from deconv3d.pipeline.block_figures import BlockFigures, FigureRequest
from deconv3d.pipeline.block_geometry import (Placement, aligned_box, block_regions, box_blocks, plan_chunks,
                                              sides_in_whole_chunks, stored_chunks, write_box_blocks)
from deconv3d.pipeline.readers import ArrayReader, DaskReader, as_reader  # noqa: F401 (re-exported)
from deconv3d.pipeline.run_flags import _ClusterFlag, _RunFlag, abandoned
from deconv3d.pipeline.threads_and_memory import _pin_threads, _share_cores, release_memory

__all__ = ["plan_chunks", "block_regions", "run_blocks", "as_reader", "ArrayReader", "DaskReader", "Cancelled",
           "ProgressCallback", "release_memory", "Placement", "abandoned", "box_blocks", "aligned_box",
           "write_box_blocks", "stored_chunks", "sides_in_whole_chunks", "BlockFigures", "FigureRequest"]

ProgressCallback = Callable[[int, int], Optional[bool]]


# ------------------------------------------------------------------ tasks ---


def _apply(fn: Callable[[np.ndarray], np.ndarray], block: np.ndarray, placement: Placement | None = None) -> np.ndarray:
    if block.size == 0:
        return np.zeros(block.shape, np.float32)
    _pin_threads()
    placed = placement is not None and getattr(fn, "placed", False)
    out = np.asarray(fn(block, placement) if placed else fn(block), dtype=np.float32)
    if out.shape != block.shape:
        raise RuntimeError(f"block function returned shape {out.shape} for a block of shape {block.shape}")
    return out


def _block_task(source, read_key: tuple, fn, placement: Placement, target_path: str, write_key: tuple,
                abandon: "_RunFlag | threading.Event | str | None" = None, threads: int = 0,
                figures: FigureRequest | None = None):
    """Read one block (plus halo) from ``source``, run ``fn`` (on ``threads`` torch threads, when
    given: :func:`_pin_threads`), write the core; return nothing, or with ``figures``, what
    :meth:`FigureRequest.measure` finds in the core's values as read (not the halo's, which
    neighbouring blocks count), at the core's place in the volume (``placement``), for the caller to add
    up over the volume (a task on a cluster's worker hands it back with its result).

    ``source`` is a reader (read ``read_key`` from it) or the block itself, already read. Once
    ``abandon`` is set (the run is being given up), the block is skipped, or its result (cut short
    where ``fn`` checks :func:`abandoned`) discarded; on a cluster it is the name of the run's
    ``distributed.Event`` (:class:`_ClusterFlag`).
    """
    from deconv3d._fftw_planning import measuring_run
    from deconv3d.classical._reuse import drop_setup

    on_cluster = isinstance(abandon, str)
    abandon = _ClusterFlag(abandon) if on_cluster else abandon  # on a cluster's worker: the run's distributed.Event
    if abandon is not None and abandon.is_set():
        return None
    block = source if isinstance(source, np.ndarray) else source.read(read_key)
    _verify_source(source, thorough=False)  # (run_chunked checks thoroughly once, before publishing)
    found = None if figures is None else _core_figures(figures, block, placement)
    run_flags._BLOCK.abandon, run_flags._BLOCK.threads = abandon, threads
    try:  # a worker's blocks of one run share FFTW's measuring budget (here: run_blocks' own)
        with measuring_run(abandon.name if on_cluster else None):
            block = np.ascontiguousarray(block, dtype=np.float32)
            out = _apply(fn, block, placement)
    except NonFiniteValues as exc:  # NaN or Inf refused: said with where one lies (looked for only now)
        raise located(exc, block, placement.start) from None
    finally:
        run_flags._BLOCK.abandon, run_flags._BLOCK.threads = None, 0
        if on_cluster:  # this task's flag is the run's there (block_run): its set-up goes with the task
            drop_setup(abandon)
    del block
    if abandon is not None and abandon.is_set():
        return None
    _write_core(target_path, write_key, out, placement)
    del out
    release_memory()
    return found


def _core_figures(figures: FigureRequest, block, placement: Placement):
    """What :meth:`FigureRequest.measure` finds in the core of ``block`` (as read), at the core's place in the volume."""
    at = (tuple(s + c.start for s, c in zip(placement.start, placement.core)), tuple(placement.shape))
    return figures.measure(np.asarray(block)[placement.core], at)


def _write_core(target_path: str, write_key: tuple, out: np.ndarray, placement: Placement) -> None:
    """Write the core of a block's result ``out`` into the output zarr at ``write_key``."""
    import zarr

    target = zarr.open_array(str(target_path), mode="r+")
    target[write_key] = out[placement.core]


def located(exc: NonFiniteValues, values: np.ndarray, start: Sequence[int]) -> NonFiniteValues:
    """The refusal of NaN or Inf values ``exc`` with ``exc``'s fix and the place in the volume of the first
    NaN or Inf of ``values`` (read from ``start``), or ``exc`` itself where ``values`` hold none. Only for
    that refusal: another (a damaged chunk met as the values were read) would have them read again, every
    chunk queued behind zarr's limit of concurrent reads, before it was said."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return exc
    first = np.unravel_index(int(np.argmax(bad)), values.shape)
    return NonFiniteValues("image", exc.fix, position=tuple(s + int(i) for s, i in zip(start, first)))


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
               skip: Sequence[tuple[slice, ...]] = (), cancel=None, figures: BlockFigures | None = None) -> int:
    """Run ``fn`` over the image ``reader[lead]`` block by block, writing into ``target[lead]``.

    Every block is one independent task: read its region plus halo (clipped at the border) from
    ``reader``, apply ``fn``, trim the halo, write the core into the zarr array at
    ``target_path``, whose chunks must be those of :func:`plan_chunks` (one writer per chunk).
    At most ``workers`` tasks (on a cluster: its threads) are in flight; a task returns nothing but,
    with ``figures``, figures of its core.

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
    figures : BlockFigures, optional
        What each written block's core holds is added to its lists (in this thread, as the block's result
        comes back: from a cluster's worker too; :class:`BlockFigures`): its top values, for
        :func:`~deconv3d._saturation.merge_top_two` to make the volume's without another pass over it, and its
        voxels at a level and near the volume's faces, for the caller to sum: each voxel counted once.

    Returns
    -------
    int
        The number of blocks written (those in ``skip`` not counted).
    """
    reader = as_reader(reader)  # a bare array would otherwise pass for a block already read
    lead = tuple(int(i) for i in lead)
    tasks, count = _block_tasks(reader.shape, lead, chunks, halo, skip)
    total = count if total is None else total
    if client is not None:
        from deconv3d.pipeline.cluster_blocks import _run_on_cluster

        return _run_on_cluster(reader, fn, str(target_path), tasks, client, progress, done, total, cancel, figures)
    return _run_in_pool(reader, fn, str(target_path), tasks, pool, workers, count, progress, done, total, cancel,
                        figures)


def _block_tasks(shape: Sequence[int], lead: tuple, chunks: Sequence[int], halo: Sequence[int], skip) -> tuple:
    """The tasks of :func:`run_blocks` over an image of ``shape`` (leading axes at ``lead``), a lazy iterable of
    ``(read key, placement, write key)``, one per block whose write region is not in ``skip``, and their number."""
    spatial = tuple(shape[len(lead):])
    sizes, depth, _ = plan_chunks(spatial, chunks, halo)
    regions = block_regions(spatial, sizes, depth)
    written = {tuple(w.start for w in write) for write in skip}
    count = math.prod(len(s) for s in sizes) - len(written)
    tasks = ((lead + read, Placement(tuple(r.start for r in read), trim, spatial), lead + write)
             for read, trim, write in regions if tuple(w.start for w in write) not in written)
    return tasks, count


def _run_in_pool(reader, fn, target_path: str, tasks: Iterable, pool: ThreadPoolExecutor | None, workers: int,
                 count: int, progress, done: int, total: int, cancel, figures: BlockFigures | None) -> int:
    """:func:`_run_threads` over the ``count`` blocks' ``tasks`` on ``pool`` (or a pool of threads of its own, shut
    down afterwards), at most ``workers`` in flight sharing the cores, with one FFTW measuring run for them all."""
    from deconv3d._fftw_planning import measuring_run

    own = pool is None
    workers = max(1, min(int(workers), count))  # fewer blocks than workers: each keeps more of the cores
    pool = pool or ThreadPoolExecutor(workers)
    try:
        with _share_cores(workers) as share, measuring_run():  # the blocks: one run for FFTW's measuring
            return _run_threads(reader, fn, target_path, tasks, pool, workers, progress, done, total, share,
                                cancel, figures)
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


def _counter(progress, done: int, total: int, figures: BlockFigures | None = None):
    """A function to call with each finished block's result: adds the figures of its core to ``figures``
    (where given and the block returned them: :meth:`BlockFigures.add`), counts, reports and raises
    :class:`Cancelled` on request."""
    state = {"count": 0}

    def finished(result=None) -> int:
        if figures is not None:
            figures.add(result)
        state["count"] += 1
        if progress is not None and progress(done + state["count"], total):
            raise Cancelled(f"cancelled after {done + state['count']} of {total} blocks")
        return state["count"]

    return finished, state


def _stop_if_cancelled(flag: _RunFlag, done: int, total: int) -> None:
    """Raise :class:`Cancelled` once the caller's ``cancel`` event is set (``done`` blocks written)."""
    if flag.cancelled():
        raise Cancelled(f"cancelled after {done} of {total} blocks")


def _track(futures: set, submit, *args, **kwargs) -> None:
    """Submit a block task and add its future to ``futures``, a SIGTERM, SIGHUP or Ctrl-C meanwhile raised only
    once it is there (:func:`~deconv3d._paths.signals_deferred`). Raised inside the submission, after the task had
    been queued (a busy machine: the main thread still starting the pool's worker, whose block had already begun),
    the future was lost, and so was the worker, to the pool's shutdown: the clean-up waited for neither, and
    removed the temporary output while that block went on to write into it, which made it again (a batch's
    hidden ``.img.zarr....tmp`` left behind, one run in tens under load)."""
    from deconv3d._paths import signals_deferred

    with signals_deferred():
        futures.add(submit(*args, **kwargs))


def _run_threads(reader, fn, target_path: str, tasks: Iterable, pool, workers: int, progress, done: int,
                 total: int, threads: int = 0, cancel=None, figures: BlockFigures | None = None) -> int:
    from deconv3d.classical._reuse import drop_setup

    finished, state = _counter(progress, done, total, figures)
    request = None if figures is None else figures.request()
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
                finished(future.result())  # a block's failure is raised here

    try:
        for read, placement, write in tasks:
            settle(workers - 1)
            _track(futures, pool.submit, _block_task, reader, read, fn, placement, target_path, write, abandon, threads,
                   request)
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
