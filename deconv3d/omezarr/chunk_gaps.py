"""NaN or Inf values that an OME-Zarr image holds only because some of its chunks were never stored: zarr reads
a missing chunk as the array's ``fill_value``, so the NaN refusal's usual fix (replace the values) would miss a
write or a copy that did not finish."""

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
        reader = open_lazy(path).reader
        array = reader._open() if isinstance(reader, ZarrReader) else None
        fill = None if array is None else array.fill_value
        if fill is None or np.isfinite(np.asarray(fill, dtype=np.float64)).all():
            return None
        stored, total = array.nchunks_initialized, array.nchunks
        if stored < total and position and _stored_around(reader, array, position):
            return None
    except Exception:  # noqa: BLE001 - only a better message is lost: the refusal stands as it was
        return None
    if stored >= total:
        return None
    fill = float(np.asarray(fill, dtype=np.float64))
    return (f"{total - stored} of the {total} chunks of its array {reader.component!r} are not stored, and zarr reads "
            f"them as the array's fill_value {'NaN' if np.isnan(fill) else fill} (a write or copy that did not "
            "finish, or a region all NaN, which zarr does not store): write or copy the image again in full, or "
            "replace its NaN values (e.g. with 0) and save it again")


def _stored_around(reader, array, position: tuple) -> bool:
    """Whether the stored objects (chunks, or shards) of the zarr ``array`` (read by ``reader``, from a local
    folder) that hold the spatial ``position`` (its last axes) at every index of the axes before it are all there."""
    import itertools

    grid = array.shards or array.chunks
    lead = array.ndim - len(position)
    spans = [range(-(-n // g)) for n, g in zip(array.shape[:lead], grid[:lead])]
    at = tuple(int(i) // g for i, g in zip(position, grid[lead:]))
    folder = os.path.join(reader.path, reader.component)
    return all(os.path.isfile(os.path.join(folder, array.metadata.encode_chunk_key((*index, *at))))
               for index in itertools.product(*spans))
