"""Block readers: where :func:`deconv3d.pipeline.chunked.run_blocks` reads each block from.

A reader has ``shape``, ``ndim``, ``dtype``, ``remote`` and ``read(key)``, which returns the
region ``key`` as a C-contiguous float32 numpy array. ``remote`` readers (the path-based ones
of :mod:`deconv3d.omezarr`) are opened again by each dask.distributed worker; the others are
read on the client and the block is sent with its task.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ArrayReader", "DaskReader", "as_reader"]


class ArrayReader:
    """Blocks of an in-memory array (numpy or array-like); ``read(key)`` returns a float32 copy.

    It is not ``remote``: on a dask.distributed cluster each block is read here and sent along
    with its task, rather than the whole array with every task.
    """

    remote = False

    def __init__(self, array):
        self.array = np.asarray(array)
        self.shape, self.ndim, self.dtype = self.array.shape, self.array.ndim, np.dtype(np.float32)

    def read(self, key) -> np.ndarray:
        return np.array(self.array[key], dtype=np.float32, order="C")

    __getitem__ = read


class DaskReader:
    """Blocks of a dask array: only the input chunks that a block's region touches are computed.

    Not ``remote`` (a graph may embed big arrays): on a cluster blocks are read here.
    """

    remote = False

    def __init__(self, array):
        self.array = array
        self.shape, self.ndim, self.dtype = tuple(array.shape), array.ndim, np.dtype(np.float32)

    def read(self, key) -> np.ndarray:
        block = self.array[key].compute(scheduler="sync")
        return np.array(block, dtype=np.float32, order="C")

    __getitem__ = read


def as_reader(data):
    """A block reader for ``data``: one already (it has ``read``), a dask array, or an array."""
    if hasattr(data, "read") and hasattr(data, "shape"):
        return data
    import dask.array as da

    if isinstance(data, da.Array):
        return DaskReader(data)
    return ArrayReader(data)


class _View:
    """The spatial image at one (t, c) index of a reader: ``view[slices]`` reads just that region."""

    def __init__(self, reader, lead: tuple):
        self.reader, self.lead = reader, tuple(int(i) for i in lead)
        self.shape = tuple(reader.shape[len(self.lead):])
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.reader.read(self.lead + key)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[tuple(slice(None) for _ in self.shape)], dtype=dtype)
