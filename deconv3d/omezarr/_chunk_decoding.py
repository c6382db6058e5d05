"""The one refusal of a zarr input's chunk whose bytes do not decode (:func:`refusing_damaged_chunks`).

A codec meeting damaged bytes raises what its library raises: ``zlib.error``, ``EOFError`` (gzip cut
short), ``gzip.BadGzipFile`` and bz2's "Invalid data stream" (both ``OSError``), ``lzma.LZMAError``,
blosc's, lz4's and zstd's ``RuntimeError``, the sharding index checksum's or a wrong-sized chunk's
``ValueError``. Read through :class:`~deconv3d.omezarr.ZarrReader` some were called damaged, the
``OSError`` ones an image moved or deleted, and the others escaped as they were; through the dask
array (``read_ome_zarr``, a whole-image read) all came out as they were. Here every exception raised
while zarr's codec pipeline reads a chunk, but for those the store raised fetching its bytes (the
store's own refusals, and any other error there) and ``MemoryError``, becomes one
:class:`~deconv3d.errors.InputError` naming the chunk file, its array and the fix, on every path that
reads the array; so does an ``OSError`` fetching a chunk's bytes (:class:`_Fetching`: an I/O error, a
disk gone), said as a chunk that cannot be read, not as damage. Imported only where a zarr array is
opened (it imports zarr).
"""

from __future__ import annotations

import dataclasses

from zarr.core.codec_pipeline import BatchedCodecPipeline

from deconv3d._paths import _one_line
from deconv3d.errors import InputError
from deconv3d.omezarr.chunk_store import _refusal, _unreadable


def refusing_damaged_chunks(array):
    """``array`` (a :class:`zarr.Array`), its chunks from now on read through
    :class:`_RefusingPipeline`. An array whose codec pipeline is not zarr's usual
    :class:`~zarr.core.codec_pipeline.BatchedCodecPipeline` (another set in zarr's configuration)
    is returned unchanged."""
    inner = array._async_array
    pipeline = inner.codec_pipeline
    if type(pipeline) is BatchedCodecPipeline:
        fields = {f.name: getattr(pipeline, f.name) for f in dataclasses.fields(pipeline)}
        object.__setattr__(inner, "codec_pipeline", _RefusingPipeline(**fields))  # (a frozen dataclass)
    return array


class _RefusingPipeline(BatchedCodecPipeline):
    """zarr's codec pipeline, whose reads raise the refusal of a damaged chunk (:func:`_damaged`) where
    decoding a chunk failed. zarr reads a batch of ``batch_size`` chunks at a time (1 unless configured
    otherwise); a batch of several that failed is read again in halves to find the chunk to name (the
    error path only)."""

    async def read_batch(self, batch_info, out, drop_axes=()):
        batch_info = list(batch_info)
        fetching: list[BaseException] = []  # what the store raised: not a decoding's failure
        try:
            await super().read_batch([(_Fetching(getter, fetching), *rest) for getter, *rest in batch_info], out,
                                     drop_axes)
        except Exception as exc:
            if isinstance(exc, (InputError, MemoryError)) or any(exc is e for e in fetching):
                raise
            raise _damaged(await self._failing_chunk(batch_info, out, drop_axes), exc) from exc

    async def _failing_chunk(self, batch_info, out, drop_axes):
        """The byte getter (store path) of a chunk of ``batch_info`` whose read fails on its own, found by
        halving (the last chunk, where none does)."""
        while len(batch_info) > 1:
            half = batch_info[:len(batch_info) // 2]
            try:
                await super().read_batch(half, out, drop_axes)
                batch_info = batch_info[len(half):]
            except Exception:
                batch_info = half
        return batch_info[0][0]


class _Fetching:
    """A chunk's byte getter (its :class:`~zarr.storage.StorePath`) that notes, in ``failures``, what its
    store raises, so that the pipeline tells a file that cannot be fetched from bytes that do not decode. An
    ``OSError`` fetching the chunk (an I/O error, a disk gone) is raised as :func:`~deconv3d.omezarr.chunk_store._unreadable`'s one line, on
    every path that reads the array (the dask array's too, where it came out as the bare ``OSError``)."""

    def __init__(self, getter, failures: list):
        self.getter, self.failures = getter, failures

    async def get(self, *args, **kwargs):
        try:
            return await self.getter.get(*args, **kwargs)
        except OSError as exc:
            refusal = _unreadable(self.getter.store.root, self.getter.path, exc)
            self.failures.append(refusal)
            raise refusal from exc
        except BaseException as exc:
            self.failures.append(exc)
            raise


def _damaged(getter, exc: BaseException) -> InputError:
    """The refusal of the chunk ``getter`` reads (a store path: its store's root and its key), whose bytes
    did not decode, raising ``exc``."""
    problem = f"is damaged: its bytes do not decode ({_one_line(exc)})"
    return _refusal(getter.store.root, getter.path, problem)
