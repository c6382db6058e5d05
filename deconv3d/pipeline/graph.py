"""The blocks of :func:`deconv3d.pipeline.chunked.run_blocks` as a lazy dask graph.

:func:`blockwise` builds the ``dask.array.map_overlap`` graph of a per-block callable (to compose
with other dask code) and :func:`store_blocks` computes it into a zarr array block by block, on
local threads or a dask.distributed cluster. :func:`~deconv3d.pipeline.chunked.run_blocks` does
the same without a graph over the input and holds less memory on large inputs.
"""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from deconv3d.pipeline.block_geometry import Placement, axis_regions, plan_chunks
from deconv3d.pipeline.chunked import Cancelled, ProgressCallback, _apply
from deconv3d.pipeline.threads_and_memory import _share_cores, _take_share

__all__ = ["blockwise", "store_blocks"]


def _as_block_function(fn: Callable[[np.ndarray], np.ndarray], ndim: int, chunks, depth):
    """Wrap ``fn`` to drop leading singleton (t, c) axes and to check what comes back; a callable
    that asks for its :class:`~deconv3d.pipeline.block_geometry.Placement` gets it (``chunks`` and
    ``depth``: the plan's core block sizes and halo per axis)."""
    shape = tuple(sum(c) for c in chunks[-ndim:])
    regions = [axis_regions(n, sizes, h) for n, sizes, h in zip(shape, chunks[-ndim:], depth[-ndim:])]
    graph = f"deconv3d-graph-{uuid.uuid4().hex}"  # its blocks share FFTW's measuring budget (measuring_run)

    def run(block: np.ndarray, block_info=None) -> np.ndarray:
        from deconv3d._fftw_planning import measuring_run

        if block.size == 0:
            return np.zeros(block.shape, np.float32)
        spatial = np.ascontiguousarray(block.reshape(block.shape[block.ndim - ndim:]), dtype=np.float32)
        placement = None
        if block_info is not None:
            found = [axis[i] for axis, i in zip(regions, block_info[0]["chunk-location"][-ndim:])]
            placement = Placement(tuple(read.start for read, _, _ in found), tuple(trim for _, trim, _ in found), shape)
        with measuring_run(graph):
            return _apply(fn, spatial, placement).reshape(block.shape)

    return run


def blockwise(data, fn: Callable[[np.ndarray], np.ndarray], *, chunks: Sequence[int], halo: Sequence[int],
              spatial_ndim: int | None = None):
    """Lazily apply ``fn`` over ``data`` in overlapping blocks; returns (dask array, zarr chunk shape).

    The same blocks as :func:`run_blocks`, as a ``dask.array.map_overlap`` graph (handy to
    compose with other dask code; :func:`run_blocks` holds less memory on large inputs).

    Parameters
    ----------
    data : dask.array.Array
        The input (any chunking; it is rechunked to the plan).
    fn : callable
        ``fn(block) -> block`` on float32 numpy arrays of the spatial shape.
    chunks, halo : sequence of int
        Core block shape and halo per axis of ``data`` (leading t/c axes should have chunk 1, halo 0).
    spatial_ndim : int, optional
        How many trailing axes ``fn`` sees (default: all).
    """
    import dask.array as da

    spatial_ndim = spatial_ndim or data.ndim
    dask_chunks, depth, zarr_chunks = plan_chunks(data.shape, chunks, halo)
    data = data.astype(np.float32).rechunk(dask_chunks)
    func = _as_block_function(fn, spatial_ndim, dask_chunks, depth)
    out = da.map_overlap(func, data, depth=dict(enumerate(depth)), boundary="none", trim=True,
                         dtype=np.float32, meta=np.empty((0,) * data.ndim, np.float32))
    return out, zarr_chunks


def _write_block(block: np.ndarray, array_path: str, offset: tuple, block_info=None) -> np.ndarray:
    import zarr

    location = block_info[0]["array-location"]
    target = zarr.open_array(array_path, mode="r+")
    target[tuple(offset) + tuple(slice(a, b) for a, b in location)] = block
    return np.ones((1,) * block.ndim, np.int8)


def _write_graph(result, array_path: str, offset: tuple = ()):
    return result.map_blocks(_write_block, str(array_path), tuple(int(i) for i in offset), dtype=np.int8,
                             chunks=tuple((1,) * len(c) for c in result.chunks),
                             meta=np.empty((0,) * result.ndim, np.int8))


def store_blocks(result, array_path, *, offset: Sequence[int] = (), client=None, workers: int = 1,
                 progress: ProgressCallback | None = None) -> int:
    """Compute the dask array ``result`` block by block, writing each into the zarr array at ``array_path``.

    For a graph built with :func:`blockwise`; :func:`run_blocks` does the same without a graph.

    Parameters
    ----------
    result : dask.array.Array
        Its block boundaries must coincide with chunk boundaries of the target array.
    array_path : str or os.PathLike
        An existing zarr array with ``result``'s shape, or with leading axes indexed by ``offset``
        (``result`` then fills ``target[offset]``).
    client : distributed.Client, optional
        Run on this dask.distributed cluster; else on a local pool of ``workers`` threads.
    progress : callable, optional
        ``progress(done, total)`` after each written block; returning True cancels
        (:class:`Cancelled` is raised once running blocks have finished).

    Returns
    -------
    int
        The number of blocks written.
    """
    written = _write_graph(result, array_path, tuple(offset))
    total = math.prod(len(c) for c in written.chunks)
    if client is not None:
        return _store_distributed(written, client, total, progress)
    return _store_threads(written, max(1, int(workers)), total, progress)


def _store_threads(written, workers: int, total: int, progress) -> int:
    import dask
    from dask.callbacks import Callback

    counter = {"done": 0}

    class _Blocks(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(key, tuple) and key[0] == written.name:
                counter["done"] += 1
                if progress is not None and progress(counter["done"], total):
                    raise Cancelled(f"cancelled after {counter['done']} of {total} blocks")

    with _Blocks(), _share_cores(workers) as share:
        pool = ThreadPoolExecutor(workers, initializer=_take_share, initargs=(share,))  # (its threads are this run's)
        try:
            dask.compute(written, scheduler="threads", pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return counter["done"]


def _store_distributed(written, client, total: int, progress) -> int:
    from distributed import as_completed

    futures = client.compute(list(written.to_delayed().ravel()))
    done = 0
    try:
        for future in as_completed(futures):
            future.result()  # re-raises a block's failure here
            done += 1
            if progress is not None and progress(done, total):
                raise Cancelled(f"cancelled after {done} of {total} blocks")
    except BaseException:
        client.cancel(futures)
        raise
    return done
