"""A bounded cache of a zarr array's decoded chunks, for the blocks of one chunked run.

Every block of a chunked run reads its region plus halo straight from the input
(:mod:`deconv3d.pipeline.chunked`), and zarr decodes every chunk such a region touches, whole: a
chunk that several blocks share (a halo, or a chunk wider than a block) was decoded by each of
them. On a 96 x 384 x 384 uint16 image in blocks of 48 x 128 x 128 (halo 20), one-plane zstd
chunks were decoded 1300 times for 96 chunks (about 10 % of a 5-iteration RL run's CPU), and two
64-plane chunks 39 times.

:class:`ChunkCache` assembles a region from the chunks it touches, decoding only those it does not
hold (in boxes of those alone: a box around them all decoded the held ones inside it again), and
keeps the most recently used ones, in the file's own dtype, up to a byte budget that the run's
memory plan counts (:func:`deconv3d.pipeline.readers.chunk_cache_budget`). Each decoded chunk is
kept as read, or cut from a box of small ones of at most :data:`READ_BYTES`: decoding all the
missing chunks into one box and copying them out held them twice (a run under --memory-limit
980MB peaked at 1153 MiB). A budget
that holds all of an image's chunks decodes each once whatever order the blocks run in; a smaller
one serves the blocks that follow one another over the same chunks.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading

import numpy as np

__all__ = ["ChunkCache", "READ_BYTES", "read_spare", "stored_bytes"]


#: Most bytes one call to zarr decodes into a box that is then cut into several chunks for the cache,
#: which a read holds beside the chunks it keeps (a chunk larger than that is read alone and kept as
#: read). Chunks of 16^3 uint16 read one call each took 3.7 times as long as one call for all 256 of
#: a 64 x 128 x 128 region (32^3: 2 times); in boxes of 256 KiB to 16 MiB, as long as that one call.
READ_BYTES = 2**20


class ChunkCache:
    """Decoded chunks of one zarr array, least recently used dropped first beyond ``budget`` bytes.

    Shared by the threads of a run: a chunk that one thread is decoding is waited for by the
    others that need it (two blocks that start together read the same chunks), not decoded again.
    A read copies each chunk into the region as it gets it: it holds no more than one box of
    :data:`READ_BYTES` (or one chunk) beside the chunks the cache keeps, even where other threads
    drop the region's other chunks meanwhile.
    """

    def __init__(self, budget: int):
        self.budget, self.held = int(budget), 0
        self._chunks: collections.OrderedDict = collections.OrderedDict()
        self._pending: dict = {}  # chunk index: the Event its decoding thread sets when done
        self._lock = threading.Lock()

    def read(self, array, key) -> np.ndarray | None:
        """``array[key]`` assembled from its chunks, in the array's dtype; None where ``key`` is not
        one int or unit-step slice per axis, or selects nothing (the caller reads it directly)."""
        region = _region(key, array.shape)
        if region is None:
            return None
        starts, stops, squeeze = region
        chunks = tuple(int(c) for c in array.chunks)
        out = np.empty([b - a for a, b in zip(starts, stops)], dtype=array.dtype)

        def put(index, chunk) -> None:
            first = [i * c for i, c in zip(index, chunks)]
            inside = [(max(a, f), min(b, f + n)) for a, b, f, n in zip(starts, stops, first, chunk.shape)]
            out[tuple(slice(lo - a, hi - a) for (lo, hi), a in zip(inside, starts))] = \
                chunk[tuple(slice(lo - f, hi - f) for (lo, hi), f in zip(inside, first))]

        self._fill(array, chunks, itertools.product(
            *(range(a // c, -(-b // c)) for a, b, c in zip(starts, stops, chunks))), put)
        return out[squeeze]

    def _fill(self, array, chunks: tuple, indices, put) -> None:
        """``put(index, chunk)`` for the chunks at ``indices``: those missing are decoded here first
        (boxes of missing chunks only: a chunk held is not decoded again), then the others are taken
        from the cache as they are needed, once the thread decoding them is done."""
        mine, later = {}, []  # chunk index: the Event this thread sets; (index, Event to wait for or None)
        with self._lock:
            for index in indices:
                if index in self._chunks:
                    self._chunks.move_to_end(index)
                    later.append((index, None))
                elif index in self._pending:
                    later.append((index, self._pending[index]))
                else:
                    mine[index] = self._pending[index] = threading.Event()
        try:
            most = max(1, READ_BYTES // (math.prod(chunks) * np.dtype(array.dtype).itemsize))
            for box in _boxes(list(mine), most):
                self._decode(array, box, chunks, put)
                self._release({index: mine[index] for index in box})
        finally:  # (a failing decode: its waiters find no chunk, decode it themselves and fail too)
            self._release(mine)
        for index, done in later:
            if done is not None:
                done.wait()
            with self._lock:
                chunk = self._chunks.get(index)
            if chunk is None:  # not kept (over the budget, dropped since, or its reading failed): read it here
                self._decode(array, [index], chunks, put)
            else:
                put(index, chunk)

    def _decode(self, array, box: list, chunks: tuple, put) -> None:
        """``put`` the chunks of ``box`` (the indices of a box of chunks), read in one call (zarr
        decodes a region's chunks together), and keep them within the budget: one chunk as read,
        several as copies (a view would keep the whole box)."""
        low = [min(i[d] for i in box) * c for d, c in enumerate(chunks)]
        high = [min((max(i[d] for i in box) + 1) * c, n) for d, (c, n) in enumerate(zip(chunks, array.shape))]
        whole = np.asarray(array[tuple(slice(lo, hi) for lo, hi in zip(low, high))])
        kept = {}
        for index in box:
            piece = whole[tuple(slice(i * c - lo, (i + 1) * c - lo) for i, c, lo in zip(index, chunks, low))]
            put(index, piece)
            if piece.nbytes <= self.budget:
                kept[index] = piece if len(box) == 1 else piece.copy()
        with self._lock:
            for index, chunk in kept.items():
                old = self._chunks.pop(index, None)
                self.held += chunk.nbytes - (0 if old is None else old.nbytes)
                self._chunks[index] = chunk
            while self.held > self.budget:
                self.held -= self._chunks.popitem(last=False)[1].nbytes

    def _release(self, claimed: dict) -> None:
        """Wake the threads waiting for the chunks this thread ``claimed`` (index: its Event), once."""
        with self._lock:
            for index, done in claimed.items():
                if self._pending.get(index) is done:
                    del self._pending[index]
                    done.set()

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self.held = 0


def read_spare(chunk_bytes: int) -> int:
    """Bytes one thread's read may hold beside a full cache's budget, for chunks of ``chunk_bytes``:
    a box of :data:`READ_BYTES` and the copies cut from it, or a chunk read alone and the buffer
    zarr decodes it into, before the least recently used chunks make room (the plan counts it)."""
    return 2 * max(READ_BYTES, int(chunk_bytes))


def stored_bytes(chunks, shape, itemsize: int, lead: int = 0, region=None) -> int:
    """Bytes of the decoded chunks (of ``chunks`` on an array of ``shape``) that hold one index of
    the first ``lead`` axes (a channel at a time point): all of its image, or at most those that a
    ``region`` of that spatial shape touches wherever it lies."""
    sizes = []
    for i, (c, n) in enumerate(zip(chunks, shape)):
        if i < lead:
            sizes.append(min(c, n))
        elif region is None:
            sizes.append(n)
        else:  # r voxels span at most ceil((r - 1) / c) + 1 chunks
            sizes.append(min(n, (-(-(region[i - lead] - 1) // c) + 1) * c))
    return math.prod(sizes) * int(itemsize)


def _boxes(indices: list, most: int) -> list[list]:
    """``indices`` (of chunks, distinct) in boxes that hold only them, of at most ``most`` chunks each:
    halves along the axis they span most chunks of, until a half fills its bounding box."""
    if not indices:
        return []
    low = [min(i[d] for i in indices) for d in range(len(indices[0]))]
    span = [max(i[d] for i in indices) + 1 - lo for d, lo in enumerate(low)]
    if len(indices) == math.prod(span) and len(indices) <= most:
        return [indices]
    axis = span.index(max(span))
    middle = low[axis] + span[axis] // 2
    return _boxes([i for i in indices if i[axis] < middle], most) + \
        _boxes([i for i in indices if i[axis] >= middle], most)


def _region(key, shape) -> tuple[list, list, tuple] | None:
    """``(starts, stops, squeeze)`` of ``key`` on an array of ``shape``: the box it selects and the
    index that drops the axes an int selected; None where it is another kind of selection or empty."""
    key = key if isinstance(key, tuple) else (key,)
    if len(key) > len(shape):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    starts, stops, squeeze = [], [], []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and -n <= k < n:
            k = int(k) % n
            starts.append(k), stops.append(k + 1), squeeze.append(0)
        elif isinstance(k, slice) and k.step in (None, 1):
            a, b, _ = k.indices(n)
            starts.append(a), stops.append(max(a, b)), squeeze.append(slice(None))
        else:
            return None
    if any(a >= b for a, b in zip(starts, stops)):
        return None
    return starts, stops, tuple(squeeze)
