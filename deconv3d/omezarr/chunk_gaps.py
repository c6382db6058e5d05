"""NaN or Inf values that an OME-Zarr image holds only because some of its chunks were never stored: zarr reads
a missing chunk as the array's ``fill_value``, so the NaN refusal's usual fix (replace the values) would miss a
write or a copy that did not finish. In a sharded array (zarr v3's sharding codec) a chunk is missing where its
shard's file is, or where that file's index gives the chunk no place (zarr writes no chunk of fill values
into a shard either): only the indexes are read, never the chunks."""

from __future__ import annotations

import os

import numpy as np

from deconv3d.omezarr.reading import ZarrReader, open_lazy


def unstored_chunks_fix(path, position: tuple = ()) -> str | None:
    """The fix for NaN or Inf values in the OME-Zarr image at ``path`` that come from chunks never stored: where the
    array the image is read from has a NaN or Inf ``fill_value`` and lacks some of its chunks (a write or a copy
    that did not finish), which zarr reads as that value. None where it does not (or cannot be read), and where
    ``position`` (the spatial index of the value met, as :class:`~deconv3d.errors.NonFiniteValues` keeps it) lies
    in stored chunks only (at each time point and channel): that value is in the file."""
    try:
        reader = open_lazy(path, omero_warning=False).reader  # (its run warned of the image already)
        array = reader._open() if isinstance(reader, ZarrReader) else None
        fill = None if array is None else array.fill_value
        if fill is None or np.isfinite(np.asarray(fill, dtype=np.float64)).all():
            return None
        stored, total, in_stored = _stored_chunks(reader, array, position)
    except Exception:  # noqa: BLE001 - only a better message is lost: the refusal stands as it was
        return None
    if stored >= total or in_stored:
        return None
    fill = float(np.asarray(fill, dtype=np.float64))
    return (f"{total - stored} of the {total} chunks of its array {reader.component!r} are not stored, and zarr reads "
            f"them as the array's fill_value {'NaN' if np.isnan(fill) else fill} (a write or copy that did not "
            "finish, or a region all NaN, which zarr does not store): write or copy the image again in full, or "
            "replace its NaN values (e.g. with 0) and save it again")


def _stored_chunks(reader, array, position: tuple) -> tuple[int, int, bool]:
    """``(stored, total, in_stored)``: how many of the zarr ``array``'s chunks are stored, of how many, and
    whether the chunks that hold the spatial ``position`` (its last axes; False where it is ``()``) are stored at
    every index of the axes before it. A sharded array's chunks are counted from its shards' indexes
    (:func:`_sharded_chunks_stored`), not as whole shards (zarr's ``nchunks_initialized``)."""
    lead = array.ndim - len(position)
    at = tuple(int(i) // c for i, c in zip(position, array.chunks[lead:]))
    if array.shards is None:
        stored, total = array.nchunks_initialized, array.nchunks
        return stored, total, bool(position) and stored < total and _stored_around(reader, array, at)
    present = _sharded_chunks_stored(array)
    return int(present.sum()), present.size, bool(position) and bool(present[(Ellipsis, *at)].all())


def _stored_around(reader, array, at: tuple) -> bool:
    """Whether the chunk files of the unsharded zarr ``array`` (read by ``reader``, from a local folder) at the
    chunk index ``at`` of its last axes are all there, at every index of the axes before them."""
    import itertools

    lead = array.ndim - len(at)
    spans = [range(-(-n // c)) for n, c in zip(array.shape[:lead], array.chunks[:lead])]
    folder = os.path.join(reader.path, reader.component)
    return all(os.path.isfile(os.path.join(folder, array.metadata.encode_chunk_key((*index, *at))))
               for index in itertools.product(*spans))


def _sharded_chunks_stored(array) -> np.ndarray:
    """Which chunks of the sharded zarr ``array`` are stored, a bool per chunk of its chunk grid: those whose
    shard file is there and whose entry in that shard's index is not empty (zarr's ``2**64 - 1``, which it
    reads as the fill value). Each shard's index alone is read (its last bytes, or its first where the codec's
    ``index_location`` is ``start``, decoded by the codec's index codecs: its checksum is checked), all at
    once; the chunks of a shard that reach past the array's edge, never written, are not counted."""
    import asyncio

    from zarr.core.sync import sync

    codec = array.metadata.codecs[0]  # (the sharding codec: zarr gives ``shards`` only where it is the only one)
    per_shard = tuple(s // c for s, c in zip(array.shards, array.chunks))
    shards = list(np.ndindex(*(-(-n // s) for n, s in zip(array.shape, array.shards))))

    async def indexes():
        return await asyncio.gather(*(codec._load_shard_index_maybe(
            array.store_path / array.metadata.encode_chunk_key(shard), per_shard) for shard in shards))

    present = np.zeros(tuple(-(-n // s) * p for n, s, p in zip(array.shape, array.shards, per_shard)), dtype=bool)
    for shard, index in zip(shards, sync(indexes())):
        if index is not None:
            present[tuple(slice(i * p, (i + 1) * p) for i, p in zip(shard, per_shard))] = index.get_full_chunk_map()
    return present[tuple(slice(0, -(-n // c)) for n, c in zip(array.shape, array.chunks))]
