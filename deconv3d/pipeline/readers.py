"""Block readers: where :func:`deconv3d.pipeline.chunked.run_blocks` reads each block from.

A reader has ``shape``, ``ndim``, ``dtype``, ``remote`` and ``read(key)``, which returns the
region ``key`` as a C-contiguous float32 numpy array. ``remote`` readers (the path-based ones
of :mod:`deconv3d.omezarr`) are opened again by each dask.distributed worker; the others are
read on the client and the block is sent with its task.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from pathlib import Path

import numpy as np

from deconv3d._arrays import as_numpy, refuse_complex

__all__ = ["ArrayReader", "DaskReader", "as_reader", "chunk_cache_budget", "chunks_cached", "CHUNK_CACHE_BYTES"]


class ArrayReader:
    """Blocks of an in-memory array (numpy or array-like); ``read(key)`` returns a float32 copy.

    It is not ``remote``: on a dask.distributed cluster each block is read here and sent along
    with its task, rather than the whole array with every task.
    """

    remote = False

    def __init__(self, array):
        self.array = as_numpy(array)  # (a tensor that requires grad too, as richardson_lucy takes it)
        refuse_complex(self.array, "the image")  # (blocks read as float32: cast with only a ComplexWarning)
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
        refuse_complex(array, "the image")  # (by its dtype: nothing computed)
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


def source_files(data) -> list:
    """The files (or zarr folders) on this machine that ``data`` reads from: a
    :class:`~deconv3d.omezarr.LazyImage`'s, a file reader's (a ZarrReader's store, a TiffReader's file,
    or the reader a view reads), a local zarr array's folder (its store's folder joined with its
    path in the store; the OME-Zarr image's where it is a level of one, :func:`_image_folder`), and the TIFF files and local zarr arrays a dask array is read from (those
    :func:`~deconv3d.omezarr.open_lazy` and ``dask.array.from_zarr`` give); none for data in memory
    (an array-like whose ``__dask_graph__()`` is None, as an xarray.DataArray not backed by dask).
    An output must not replace them (:func:`~deconv3d._paths.refuse_input_overlap`)."""
    from deconv3d.omezarr import LazyImage
    from deconv3d.omezarr.reading import ZarrReader
    from deconv3d.omezarr.tiff_reading import TiffReader

    if isinstance(data, LazyImage):
        return [data.path]
    data = data.reader if isinstance(data, _View) else data  # (a view of one time point or channel)
    if isinstance(data, (ZarrReader, TiffReader)):  # (only these: a zarr array's path is its key in the store)
        return [data.path if isinstance(data, ZarrReader) else data.source.path]
    data = data.array if isinstance(data, DaskReader) else data
    if (own := _read_file(data)) is not None:  # a zarr array given itself
        return [own]
    graph = getattr(data, "__dask_graph__", None)
    graph = graph() if callable(graph) else None  # (None: not backed by dask)
    return [p for value in _stored_values(graph) if (p := _read_file(value)) is not None]


def close_sources(reader) -> None:
    """Close the TIFF files that ``reader`` (:func:`as_reader`'s, or a view of one) holds open, once a
    run is done with them: a TiffReader's, or those a dask array reads (a later read opens them again).
    Kept open, a long session held handles to files it was done with (a deleted TIFF's disk space
    freed only once they went)."""
    from deconv3d.omezarr.tiff_reading import TiffReader, _TiffArray

    reader = reader.reader if isinstance(reader, _View) else reader
    if isinstance(reader, TiffReader):
        reader.close()
    elif isinstance(reader, DaskReader):
        graph = getattr(reader.array, "__dask_graph__", None)
        for value in _stored_values(graph() if callable(graph) else None):
            if isinstance(value, _TiffArray):
                value.close()


def _stored_values(graph):
    """The values a dask graph holds (the arrays it reads, constants and tasks), without making a
    task of each chunk: a Blockwise layer's constant arguments, a materialized layer's values (a
    plain dict graph's too), and any other kind of layer's tasks, made."""
    if graph is None:
        return
    layers = getattr(graph, "layers", None)
    if layers is None:
        yield from dict(graph).values()
        return
    from dask.blockwise import Blockwise
    from dask.highlevelgraph import MaterializedLayer

    for layer in layers.values():
        if isinstance(layer, Blockwise):  # (inline_array=True puts the array there)
            yield from (value for value, index in layer.indices if index is None)
        elif isinstance(layer, MaterializedLayer):  # (from_zarr's and from_array's 'original-' array)
            yield from layer.mapping.values()
        else:
            yield from dict(layer).values()


def _read_file(value):
    """The file a value in a dask graph reads, where it is a TIFF opened by deconv3d, or the folder on
    this machine's disks of a zarr array it reads: its store's folder joined with its path there."""
    from deconv3d.omezarr.tiff_reading import _TiffArray

    if isinstance(value, _TiffArray):
        return value.path
    store_path = getattr(value, "store_path", None)  # a zarr v3 array
    store = getattr(store_path, "store", None)
    root = getattr(store, "root", None)  # (LocalStore)
    fs = getattr(store, "fs", None)  # (FsspecStore: local where its protocol says "file")
    if root is None and "file" in _protocols(fs):
        root = getattr(store, "path", None)
    return None if root is None else _image_folder(Path(root), str(getattr(store_path, "path", "") or ""))


def _image_folder(root: Path, key: str) -> Path:
    """The folder an input read from the local zarr array ``key`` of the store at ``root`` is: the
    OME-Zarr image it is a level of (the nearest group above it with ``multiscales``, or the
    bioformats2raw folder that holds that image as a series), as :func:`~deconv3d.omezarr.open_lazy`
    names the image: ``dask.array.from_zarr("src.zarr", component="0")`` let an output be written
    inside src.zarr, which the same image opened by open_lazy refused. The folders above the store's
    root are looked at too, up to the filesystem's root (only their zarr metadata files are read): a
    level opened by its own folder (``da.from_zarr("src.zarr/0")``) is a store of its own. Else the
    array's own folder (an output beside it in the store, a results.zarr in the project, leaves it be)."""
    parts = [part for part in key.split("/") if part]
    groups = [Path(root, *parts[:depth]) for depth in range(len(parts) - 1, -1, -1)]  # (as the store names them)
    inside = len(groups)
    real = Path(os.path.realpath(root))  # (a level reached through a link: its image lies above where the link
    if real != Path(os.path.abspath(root)):  # leads, looked at first: an image holding the link is not its image)
        groups += [real, *real.parents]
    groups += Path(os.path.abspath(root)).parents
    for i, group in enumerate(groups):
        outside = i >= inside  # (a folder above the store: any file may be there, only a small regular one is read)
        if "multiscales" in _group_attributes(group, outside):
            above = groups[i + 1] if i + 1 < len(groups) else group.parent
            if group.name.isdigit() and "bioformats2raw.layout" in _group_attributes(above, True):
                return above
            return group
    return Path(root, key)


#: The largest metadata file read in a folder above a zarr store (a group's zarr.json is a few kB; an 80 MB
#: file there took 5.7 s and 600 MB to parse before any work).
_OUTSIDE_METADATA_BYTES = 1 << 20


def _group_attributes(folder: Path, outside: bool = False) -> dict:
    """The attributes of the zarr group in ``folder`` (v3's ``zarr.json``, v2's ``.zattrs``), those under
    ``ome`` (OME-Zarr 0.5) merged in; empty where there is none or it cannot be read. Only a regular file is
    read (a named pipe there blocked the run), and ``outside`` a store only one of at most
    :data:`_OUTSIDE_METADATA_BYTES`."""
    import json
    import stat

    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        try:
            info = os.stat(folder / name)
            if not stat.S_ISREG(info.st_mode) or (outside and info.st_size > _OUTSIDE_METADATA_BYTES):
                continue
            meta = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = meta.get(key) if key is not None and isinstance(meta, dict) else meta
        if not isinstance(attrs, dict):
            return {}
        return {**attrs, **attrs["ome"]} if isinstance(attrs.get("ome"), dict) else attrs
    return {}


def _protocols(fs) -> tuple:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


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


#: Bytes of decoded input chunks a run without a memory limit keeps (:func:`chunk_cache_budget`).
CHUNK_CACHE_BYTES = 256 * 2**20


def chunk_cache_budget(reader, lead: int, block, memory_limit=None, predicted: int | None = None,
                       readers: int = 1) -> int:
    """Bytes of decoded chunks the blocks of a run may keep (a reader with ``cache_chunks``:
    :class:`~deconv3d.omezarr.ZarrReader`), so that a chunk that several blocks touch is not decoded
    by each: at most all the chunks of one index of the ``lead`` axes, each then decoded once
    whatever order the blocks run in. Under ``memory_limit``, what the plan leaves of it (the
    ``predicted`` peak counts the blocks; the cache is added to it, and so is what the ``readers``
    threads reading at once hold beside it: :func:`chunk_reads_spare`); without one,
    :data:`CHUNK_CACHE_BYTES`. None (0) where that would not hold the chunks of one ``block``
    (its largest, halo included; a run of one block reads every chunk once): every read would then
    decode, and assembling a block from its chunks costs more than reading it whole (1.3-1.6x).

    The blocks are not made smaller to make room: on a 96 x 384 x 384 image of one-plane chunks
    under an 800 MB limit (RL, 20 iterations), setting its 57 MB aside first cut the decodes from
    1016 to 248 but took 15-16 blocks instead of 10, and 6-22 % more CPU."""
    if not hasattr(reader, "cache_chunks") or tuple(block) == tuple(reader.shape[lead:]) or \
            (memory_limit is not None and predicted is None):
        return 0
    from deconv3d.pipeline.system_memory import parse_memory

    room = CHUNK_CACHE_BYTES if memory_limit is None else \
        parse_memory(memory_limit) - predicted - chunk_reads_spare(reader, lead, readers)
    budget = min(int(room), reader.stored_bytes(lead))
    return budget if budget >= reader.stored_bytes(lead, block) else 0


def chunk_reads_spare(reader, lead: int, readers: int) -> int:
    """Bytes that ``readers`` threads reading through a reader's chunk cache at once may hold beside
    its budget (:func:`~deconv3d.omezarr.chunkcache.read_spare` of one of its chunks)."""
    from deconv3d.omezarr.chunkcache import read_spare

    return int(readers) * read_spare(reader.stored_bytes(lead, (1,) * (len(reader.shape) - lead)))


@contextlib.contextmanager
def chunks_cached(reader, budget: int, now: bool = True):
    """Let ``reader`` keep ``budget`` bytes of decoded chunks (:func:`chunk_cache_budget`) while the
    ``with`` block runs, from its start (``now``) or once the function it yields is called; they are
    dropped at its end (they would stay with the image: a GUI's layer, say)."""
    started = []

    def start() -> None:
        if not started and budget > 0 and hasattr(reader, "cache_chunks"):
            reader.cache_chunks(budget)
            started.append(True)

    if now:
        start()
    try:
        yield start
    finally:
        if started:
            reader.cache_chunks(0)


class _View:
    """The spatial image at one (t, c) index of a reader: ``view[slices]`` reads just that region.

    ``where`` names that index in a warning (``"channel 1 (RFP) at time point 0"``, ``""`` for an
    image without such axes); ``said`` is a set the run shares between its views, so that a warning
    about the image is given once per channel (``channel``), not again for each of its time points.
    Where ``keep`` is a key (a tuple of slices), a read of exactly that region is kept as ``kept``:
    the values of a measuring box, which the run then counts for the blocks written from it."""

    keep: tuple | None = None
    kept: np.ndarray | None = None

    def __init__(self, reader, lead: tuple, where: str = "", channel=None, said: set | None = None):
        self.reader, self.lead = reader, tuple(int(i) for i in lead)
        self.where, self.channel, self.said = where, channel, said
        self.shape = tuple(reader.shape[len(self.lead):])
        self.chunks = storage_unit(reader)[len(self.lead):]
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        values = self.reader.read(self.lead + key)
        if self.keep is not None and all(isinstance(k, slice) for k in key) and key == tuple(self.keep):
            self.kept = values
        return values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[tuple(slice(None) for _ in self.shape)], dtype=dtype)
