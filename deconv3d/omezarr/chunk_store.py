"""The local zarr store deconv3d reads its zarr inputs through (:class:`CheckedLocalStore`): zarr's
:class:`~zarr.storage.LocalStore`, whose chunk reads refuse a chunk that is there but is not a
readable file instead of reading it as missing.

zarr's LocalStore reads a chunk key whose path is a folder, a broken symbolic link, or lies under a
file (``c/0`` a file where ``c/0/0/0`` is looked for) as a missing chunk: the fill value (zeros), so
a run deconvolved zeros there and exited 0. A chunk file that is not there at all is still the fill
value (a sparse array writes no file for a chunk of fill values). The check costs one ``stat`` per
chunk read (more only where the file is missing), and none when the array is opened: an array may
have millions of chunks.

Its reads also refuse a chunk file holding fewer bytes than zarr asked of it (:func:`_whole`). zarr's
sharding codec reads a shard file that is empty (0 bytes) as a shard of missing chunks when it reads
the shard whole: the fill value (zeros), so a block covering a whole shard of a damaged sharded image
read as zeros without an error. A range zarr asks for (a shard's index, a chunk inside a shard) that
the file ends before is refused likewise. No chunk of a zarr array encodes to 0 bytes, so an empty
chunk file is damage; a chunk with no file at all is still the fill value. That check costs nothing
more than the read: it looks at the length of the bytes read. Imported only where a zarr array is
opened (it imports zarr).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.storage import LocalStore

from deconv3d._paths import _one_line
from deconv3d.errors import InputError

#: Keys of a zarr store that are metadata, not chunks: read as zarr reads them.
_METADATA = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


class CheckedLocalStore(LocalStore):
    """A :class:`~zarr.storage.LocalStore` whose reads of a chunk key raise
    :class:`~deconv3d.errors.InputError` (one line naming the array folder and the chunk key) where
    the key's path exists but is not a readable regular file: a folder, a broken symbolic link, a
    named pipe or other special file (reading one waited for ever), a path under a file, or a file
    that cannot be opened (permissions); and where the file is there but empty, or ends before the
    byte range asked of it (:func:`_whole`). Where nothing is at the path, the chunk is missing, as
    LocalStore reads it (the fill value)."""

    async def get(self, key, prototype=None, byte_range=None):
        self._check_chunk(key)
        try:
            buffer = await super().get(key, prototype, byte_range)
        except PermissionError as exc:
            raise _unreadable(self.root, key, exc) from exc
        return _whole(self.root, key, byte_range, buffer)

    def get_sync(self, key, *, prototype=None, byte_range=None):
        self._check_chunk(key)
        try:
            buffer = super().get_sync(key, prototype=prototype, byte_range=byte_range)
        except PermissionError as exc:
            raise _unreadable(self.root, key, exc) from exc
        return _whole(self.root, key, byte_range, buffer)

    def _check_chunk(self, key: str) -> None:
        """Refuse the chunk ``key`` where its path is there but is no regular file (see the class)."""
        if key.rsplit("/", 1)[-1] in _METADATA:
            return
        path = os.path.join(self.root, key)
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(path):
                raise _refusal(self.root, key, "is a symbolic link to nothing") from None
            self._check_folders_above(key)
            return  # a missing chunk: the fill value
        except OSError as exc:
            raise _unreadable(self.root, key, exc) from exc
        if stat.S_ISDIR(mode):
            raise _refusal(self.root, key, "is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise _refusal(self.root, key, "is not a regular file (a named pipe, socket or device)")

    def _check_folders_above(self, key: str) -> None:
        """Refuse a chunk key whose nearest existing folder above it (in the store) is not a folder:
        a file or a broken link there, which LocalStore also read as a missing chunk."""
        parts = key.split("/")[:-1]
        while parts:
            above = os.path.join(self.root, *parts)
            if os.path.lexists(above):
                if not os.path.isdir(above):
                    raise _refusal(self.root, key, "lies under {}, which is not a folder", len(parts))
                return
            parts.pop()


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


#: What to do about an input that cannot be read during a run (not a damaged one).
UNREADABLE_FIX = "check that the image is still there and readable (it was moved, deleted or unmounted during the run?)"


def _unreadable(root, key: str, exc: OSError) -> InputError:
    """The refusal of the chunk ``key`` of the store at ``root`` whose file could not be read (``exc``: no
    permission, an I/O error, a disk gone), on every path that reads it."""
    return _refusal(root, key, "cannot be read", fix=f": {exc.strerror or _one_line(exc)}: {UNREADABLE_FIX}")


#: What :func:`_refusal` says after the problem of a chunk by default: a chunk file there but not read whole.
CHUNK_FILE_FIX = (", so it cannot be read (a chunk with no file at all would read as the array's fill value): "
                  "restore the chunk file or re-export the image")


def _refusal(root, key: str, problem: str, above: int = 0, fix: str = CHUNK_FILE_FIX) -> InputError:
    """The one-line error for the chunk ``key`` of the store at ``root``: it names the array's folder
    (the nearest folder above the chunk with zarr metadata) and the chunk's key within it. ``problem``
    says what is wrong; with ``above``, its ``{}`` is given the first ``above`` parts of ``key``, a
    folder above the chunk, as the array names it (without, ``problem`` is taken as it is: an error's
    text in it may hold braces). ``fix`` follows it."""
    parts = key.split("/")
    depth = next((d for d in range(len(parts) - 1, -1, -1)
                  if any(Path(root, *parts[:d], name).is_file() for name in ("zarr.json", ".zarray"))), 0)
    array, chunk = Path(root, *parts[:depth]), "/".join(parts[depth:])
    if above:
        problem = problem.format("/".join(parts[depth:above]))
    return InputError(f"chunk {chunk} of the zarr array {array} {problem}{fix}")
