"""Block readers: where :func:`deconv3d.pipeline.chunked.run_blocks` reads each block from.

A reader has ``shape``, ``ndim``, ``dtype``, ``remote`` and ``read(key)``, which returns the
region ``key`` as a C-contiguous float32 numpy array. ``remote`` readers (the path-based ones
of :mod:`deconv3d.omezarr`) are opened again by each dask.distributed worker; the others are
read on the client and the block is sent with its task.
"""

from __future__ import annotations

import itertools
import math

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
        self.chunks = array.chunks  # (dask's block sizes along each axis: storage_unit takes the first)

    def read(self, key) -> np.ndarray:
        block = self.array[key].compute(scheduler="sync")
        return np.array(block, dtype=np.float32, order="C")

    __getitem__ = read


def as_reader(data):
    """A block reader for ``data``: one already (it has ``read``), a :class:`~deconv3d.omezarr.LazyImage`
    (its file's reader, else its dask array), a dask array, or an array."""
    from deconv3d.omezarr import LazyImage

    if isinstance(data, LazyImage):
        data = data.reader if data.reader is not None else data.data
    if hasattr(data, "read") and hasattr(data, "shape"):
        return data
    import dask.array as da

    if isinstance(data, da.Array):
        return DaskReader(data)
    return ArrayReader(data)


def storage_unit(reader) -> tuple[int, ...]:
    """The region of ``reader`` that one read decodes at least: a zarr array's or a dask array's
    chunk (its ``chunks``), else one plane (a TIFF page; all of a 1D reader)."""
    shape = tuple(reader.shape)
    chunks = getattr(reader, "chunks", None)
    if chunks is None:
        return (1,) * (len(shape) - 2) + shape[-2:]
    # a dask array's chunks are each axis's block sizes: the first (irregular ones are not aligned to)
    sizes = [c[0] if isinstance(c, tuple) and c else c for c in chunks]
    return tuple(max(1, min(int(c), n)) for c, n in zip(sizes, shape))


def storage_boxes(shape, unit, budget: int, fixed: tuple[int, ...] = ()) -> list[tuple[slice, ...]]:
    """Boxes tiling ``shape`` in C order, each of whole storage ``unit`` s (:func:`storage_unit`),
    grown along the first axis the unit does not span (not one of ``fixed``) to at most ``budget``
    bytes of float32 (a unit larger than that stays one unit): a pass over them decodes every
    chunk once."""
    box = [min(u, n) for u, n in zip(unit, shape)]
    grow = next((i for i, (b, n) in enumerate(zip(box, shape)) if b < n and i not in fixed), None)
    if grow is not None:
        box[grow] = min(shape[grow], box[grow] * max(1, budget // (4 * math.prod(box))))
    return [tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, box, shape))
            for start in itertools.product(*(range(0, n, b) for n, b in zip(shape, box)))]


class _View:
    """The spatial image at one (t, c) index of a reader: ``view[slices]`` reads just that region."""

    def __init__(self, reader, lead: tuple):
        self.reader, self.lead = reader, tuple(int(i) for i in lead)
        self.shape = tuple(reader.shape[len(self.lead):])
        self.chunks = storage_unit(reader)[len(self.lead):]
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.reader.read(self.lead + key)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[tuple(slice(None) for _ in self.shape)], dtype=dtype)
