"""Crash-safe outputs: everything is written under a temporary name and renamed when complete.

A run that is cancelled, fails or is killed leaves at most a hidden ``.NAME.<id>.tmp`` entry
next to the target, which no reader (and no batch rerun) takes for a finished output;
:func:`remove_stale_temporaries` sweeps such leftovers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from deconv3d.errors import InputError
from deconv3d._paths import (_remove, check_name_length, create_temporary, keep_mode, out_of_space, publishing,
                             refuse_output_link, refuse_unnamable, refuse_unreplaceable, remove_stale_temporaries,
                             settle_zarr, temporary_name)

__all__ = ["atomic_output", "temporary_name", "remove_stale_temporaries"]

#: Folder outputs (absolute paths) whose temporary is made no wider than another output: see :func:`made_like`.
_LIKE: dict[str, Path] = {}


@contextlib.contextmanager
def made_like(path, like):
    """While in the block, the folder output ``path`` (a chunked TIFF's scratch zarr) has its temporary made
    no wider than the file ``like`` it becomes, where that exists (:func:`~deconv3d._paths.create_temporary`):
    it was made with the umask's mode (0755), and held the whole result of a ``chmod 600`` TIFF. What zarr
    writes inside it takes the umask's mode, behind that folder."""
    key = os.path.abspath(path)
    _LIKE[key] = Path(like)
    try:
        yield
    finally:
        _LIKE.pop(key, None)


@contextlib.contextmanager
def atomic_output(path, folder: bool = False):
    """Yield a temporary path to write ``path`` (a file or a directory) under; publish it on success.

    On leaving the block normally the temporary entry is renamed onto ``path`` (an existing
    output is replaced only then); on any exception, KeyboardInterrupt included, it is removed.
    A full disk's error that names no file (zarr's writes, a file object's ``write``) is given
    ``path`` as its ``filename``, so that the message says where the space ran out.
    A folder at ``path`` that may not be replaced (:func:`~deconv3d._paths.replaceable_folder`)
    is refused here, before any work, and again when publishing (it may appear meanwhile).
    ``folder``: the output is a directory (a zarr image), which cannot replace a file or a symbolic
    link at ``path``: those are refused here too, not once the work is done. The temporary folder is
    then yielded made (empty), with the permissions of the output it replaces, from its creation
    (:func:`~deconv3d._paths.create_temporary`), so that nothing written into it is readable meanwhile by
    whom the output did not let read it.
    Publishing is not cut in two by the command line's SIGTERM or SIGHUP
    (:func:`~deconv3d._paths.publishing`): one that comes meanwhile is raised once the output
    is in place, and its exception carries the output's path as ``published``. An earlier output it
    replaces is deleted after that section (also where the deferred signal is raised; a signal
    during the deletion stops the run at once, and what is left of it is a stale temporary, swept by
    the next run).
    """
    path = Path(path)
    _check_output_path(path, folder)
    tmp = temporary_name(path)
    published, old = False, None
    try:
        if folder:  # made here with the mode of the output it replaces, before any file goes in: a private
            create_temporary(path, tmp, folder=True,  # output's chunks were readable by all while it was rewritten
                             like=_LIKE.get(os.path.abspath(path)))  # (or the file's it becomes: made_like)
        yield tmp
        # (a SIGTERM between _publish's two renames removed the earlier output and this one; one just after
        # them exited saying that no output was written)
        with publishing(path):
            old = _publish(tmp, path)
            published = True
        # The earlier output, moved aside, is deleted outside the section: a signal meanwhile is raised at once
        # (it waited for the whole deletion, 2 s for 30,000 chunk files), and what is left of it is swept as a
        # stale temporary by the next run.
        if old is not None:
            old, deleting = None, old
            _remove(deleting)
    except BaseException as exc:
        if published:  # the signal deferred meanwhile, raised now: the output is complete
            exc.published = str(path)
            if old is not None:  # (the signal deferred as it was put aside: not left beside it, twice the disk space;
                _remove(old)     # one during its deletion is not made to wait for the rest of it)
            raise
        _discard(tmp, path, exc)
        raise


def _check_output_path(path: Path, folder: bool) -> None:
    """The refusals of :func:`atomic_output` before any work: a name that cannot be made, a missing folder,
    a link or a file where a ``folder`` output goes, a folder that may not be replaced, a name too long."""
    refuse_unnamable(path)  # (looking at it raised "File name too long": write_ome_zarr's raw OSError)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory not found: {parent}: create it first or choose another output path")
    if folder:  # (os.replace cannot put a folder in its place, and the link is not followed)
        refuse_output_link(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"output {path} is a file: give a new .zarr folder name")
    if path.is_dir() and not path.is_symlink():
        refuse_unreplaceable(path, f"output path {path} is a directory that is not a zarr image deconv3d wrote "
                             "(another tool's, or written through the Python API before deconv3d marked its "
                             "outputs): move it away or choose another output name; its files are left as they are")
    check_name_length(path)  # (one that fits but whose temporary names do not: a raw OSError from the writer)


def _discard(tmp: Path, path: Path, exc: BaseException) -> None:
    """Remove the temporary output ``tmp`` of a failed write to ``path`` once a failed zarr write's other chunks
    are no longer being written into it, and name ``path`` in a full disk's ``exc`` that names no file."""
    try:
        # a failed zarr write's other chunks, still being written: not into the removed folder (a slow
        # disk's writes may take seconds; main's own call afterwards waits only 3 s, and not for these)
        settle_zarr(timeout=30.0)
    finally:
        _remove(tmp)
    if out_of_space(exc) and exc.filename is None:
        exc.filename = str(path)


def _publish(tmp: Path, path: Path, attempts: int = 20) -> Path | None:
    """Rename ``tmp`` onto ``path``. A directory in the way, a previous zarr output, is moved aside
    first (``os.replace`` cannot replace a non-empty one; any other folder is refused, not
    deleted), and returned for the caller to delete (None where there was none); when another process publishes the same output in that gap (its directory appears,
    or the one to move aside is already gone) the steps are retried, so that the last to publish
    wins instead of failing with ENOTEMPTY or ENOENT. ``tmp`` takes the mode of what it replaces
    (:func:`~deconv3d._paths.keep_mode`)."""
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to {tmp}")
    for attempt in range(attempts):
        old = None
        try:
            keep_mode(path, tmp)
            if path.is_dir() and not path.is_symlink():
                # (checked before the run too; it may have appeared since)
                refuse_unreplaceable(path, f"output path {path} is a directory that is not a zarr image deconv3d "
                                     "wrote (it appeared during the run?): move it away or choose another output "
                                     "name; its files are left as they are")
                old = temporary_name(path)
                os.replace(path, old)
            os.replace(tmp, path)
            old, aside = None, old
            return aside
        except OSError as exc:
            if attempt == attempts - 1 or not _raced(exc) or not tmp.exists():
                raise
        finally:
            if old is not None:  # (not published)
                _remove(old)


def _raced(exc: OSError) -> bool:
    """An error another process's publishing of the same output can cause in :func:`_publish`."""
    import errno

    return exc.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR)
