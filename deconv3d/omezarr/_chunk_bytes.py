"""The zarr store deconv3d opens its zarr inputs with (:class:`WholeChunkStore`): a
:class:`~deconv3d.omezarr.chunk_store.CheckedLocalStore` that also refuses a chunk file holding fewer
bytes than zarr asked of it.

zarr's sharding codec reads a shard file that is empty (0 bytes) as a shard of missing chunks when it
reads the shard whole: the fill value (zeros), so a block covering a whole shard of a damaged sharded
image read as zeros without an error. A range zarr asks for (a shard's index, a chunk inside a shard)
that the file ends before is refused likewise. No chunk of a zarr array encodes to 0 bytes, so an empty
chunk file is damage; a chunk with no file at all is still the fill value. The check costs nothing more
than the read: it looks at the length of the bytes read. Imported only where a zarr array is opened (it
imports zarr).
"""

from __future__ import annotations

from zarr.abc.store import RangeByteRequest, SuffixByteRequest

from deconv3d.omezarr.chunk_store import _METADATA, CheckedLocalStore, _refusal


class WholeChunkStore(CheckedLocalStore):
    """A :class:`~deconv3d.omezarr.chunk_store.CheckedLocalStore` whose reads of a chunk key raise
    :class:`~deconv3d.errors.InputError` (one line naming the array folder and the chunk key) where the
    file is there but empty, or ends before the byte range asked of it."""

    async def get(self, key, prototype=None, byte_range=None):
        return _whole(self.root, key, byte_range, await super().get(key, prototype, byte_range))

    def get_sync(self, key, *, prototype=None, byte_range=None):
        return _whole(self.root, key, byte_range, super().get_sync(key, prototype=prototype, byte_range=byte_range))


def _whole(root, key: str, byte_range, buffer):
    """``buffer``, the bytes read of ``key`` (None: no file, the fill value), where they are all that was
    asked; else the refusal of the chunk."""
    if buffer is None or key.rsplit("/", 1)[-1] in _METADATA:
        return buffer
    size = len(buffer)
    if isinstance(byte_range, RangeByteRequest):
        wanted = byte_range.end - byte_range.start
    elif isinstance(byte_range, SuffixByteRequest):
        wanted = byte_range.suffix
    else:  # the whole file, or from an offset on: any byte at all
        wanted = 1
    if size >= wanted:
        return buffer
    problem = ("is empty (0 bytes)" if byte_range is None else
               f"ends before the {wanted} bytes zarr asked of it (it gave {size}): the file is cut short")
    raise _refusal(root, key, problem)
