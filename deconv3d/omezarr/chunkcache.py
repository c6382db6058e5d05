"""A bounded cache of a zarr array's decoded chunks, for the blocks of one chunked run.

Every block of a chunked run reads its region plus halo straight from the input
(:mod:`deconv3d.pipeline.chunked`), and zarr decodes every chunk such a region touches, whole: a
chunk that several blocks share (a halo, or a chunk wider than a block) was decoded by each of
them. On a 96 x 384 x 384 uint16 image in blocks of 48 x 128 x 128 (halo 20), one-plane zstd
chunks were decoded 1300 times for 96 chunks (about 10 % of a 5-iteration RL run's CPU), and two
64-plane chunks 39 times.

:class:`ChunkCache` assembles a region from the chunks it touches, decoding only those it does not
hold, and keeps the most recently used ones, in the file's own dtype, up to a byte budget that
the run's memory plan counts (:func:`deconv3d.pipeline.readers.chunk_cache_budget`). A budget
that holds all of an image's chunks decodes each once whatever order the blocks run in; a smaller
one serves the blocks that follow one another over the same chunks.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading

import numpy as np

__all__ = ["ChunkCache", "stored_bytes"]


class ChunkCache:
    """Decoded chunks of one zarr array, least recently used dropped first beyond ``budget`` bytes.

    Shared by the threads of a run: a chunk that one thread is decoding is waited for by the
    others that need it (two blocks that start together read the same chunks), not decoded again.
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
        found = self._gather(array, chunks, itertools.product(
            *(range(a // c, -(-b // c)) for a, b, c in zip(starts, stops, chunks))))
        out = np.empty([b - a for a, b in zip(starts, stops)], dtype=array.dtype)
        for index, chunk in found.items():
            first = [i * c for i, c in zip(index, chunks)]
            inside = [(max(a, f), min(b, f + n)) for a, b, f, n in zip(starts, stops, first, chunk.shape)]
            out[tuple(slice(lo - a, hi - a) for (lo, hi), a in zip(inside, starts))] = \
                chunk[tuple(slice(lo - f, hi - f) for (lo, hi), f in zip(inside, first))]
        return out[squeeze]

    def _gather(self, array, chunks: tuple, indices) -> dict:
        """The chunks at ``indices``: held, decoded here, or waited for where another thread decodes them."""
        found, mine, theirs = {}, [], {}
        with self._lock:
            for index in indices:
                if index in self._chunks:
                    found[index] = self._chunks[index]
                    self._chunks.move_to_end(index)
                elif index in self._pending:
                    theirs[index] = self._pending[index]
                else:
                    mine.append(index)
                    self._pending[index] = threading.Event()
        if mine:
            found.update(self._decode(array, mine, chunks))
        for index, done in theirs.items():
            done.wait()
            with self._lock:
                chunk = self._chunks.get(index)
            # not kept (over the budget, dropped since, or its reading failed): read it here
            found[index] = chunk if chunk is not None else self._decode(array, [index], chunks, claimed=False)[index]
        return found

    def _decode(self, array, missing: list, chunks: tuple, claimed: bool = True) -> dict:
        """The ``missing`` chunks, read in one call (zarr decodes a region's chunks together: one
        call per chunk took 1.8-3 times as long for chunks of 32^3 to 16^3), kept within budget;
        those this thread ``claimed`` are then released to the threads waiting for them."""
        try:
            low = [min(i[d] for i in missing) * c for d, c in enumerate(chunks)]
            high = [min((max(i[d] for i in missing) + 1) * c, n) for d, (c, n) in enumerate(zip(chunks, array.shape))]
            box = np.asarray(array[tuple(slice(lo, hi) for lo, hi in zip(low, high))])
            pieces = {index: box[tuple(slice(i * c - lo, (i + 1) * c - lo) for i, c, lo in zip(index, chunks, low))]
                      for index in missing}
            kept = {index: piece if len(pieces) == 1 else piece.copy()  # (a view would keep the whole box)
                    for index, piece in pieces.items() if piece.nbytes <= self.budget}
            with self._lock:
                for index, chunk in kept.items():
                    old = self._chunks.pop(index, None)
                    self.held += chunk.nbytes - (0 if old is None else old.nbytes)
                    self._chunks[index] = chunk
                while self.held > self.budget:
                    self.held -= self._chunks.popitem(last=False)[1].nbytes
            return pieces
        finally:
            with self._lock:
                for index in missing if claimed else ():
                    self._pending.pop(index).set()

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self.held = 0


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
