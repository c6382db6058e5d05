"""Crash-safe outputs: everything is written under a temporary name and renamed when complete.

A run that is cancelled, fails or is killed leaves at most a hidden ``.NAME.<id>.tmp`` entry
next to the target, which no reader (and no batch rerun) takes for a finished output;
:func:`remove_stale_temporaries` sweeps such leftovers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
import shutil
from pathlib import Path

from deconv3d.errors import InputError
from deconv3d._paths import host_tag, temporary_name

__all__ = ["atomic_output", "temporary_name", "remove_stale_temporaries"]

_TMP_SUFFIX = ".tmp"


_ON_WINDOWS = os.name == "nt"

#: Seconds after its last change that a temporary written from another machine counts as abandoned.
OTHER_HOST_STALE_AGE = 2 * 24 * 3600


def _writer_alive(entry: Path) -> bool:
    """Whether another process that is still running writes ``entry`` (named by :func:`temporary_name`,
    possibly a temporary of a temporary, whose last part names the writer). A temporary from
    another machine (a job on another node of a cluster, writing into the same shared folder) is
    taken as live until it has not changed for :data:`OTHER_HOST_STALE_AGE`: its process cannot
    be asked from here, and removing it broke that job's write."""
    match = re.search(r"\.(?:([A-Za-z0-9-]+)@)?(\d+)-[0-9a-f]{8}" + re.escape(_TMP_SUFFIX) + "$", entry.name)
    if match is None:  # an older name without the process: stale
        return False
    if match.group(1) is not None and match.group(1) != host_tag():
        return _changed_since(entry, time.time() - OTHER_HOST_STALE_AGE)
    pid = int(match.group(2))
    return pid != os.getpid() and _process_exists(pid)


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine; when that cannot be told, True (its
    temporary is then left alone). On Windows ``os.kill(pid, 0)`` is no check: signal 0 is
    CTRL_C_EVENT there, which interrupts the processes of a console, and a dead pid raises
    ``OSError``, which ended a batch in an internal error; psutil asks the system instead."""
    if _ON_WINDOWS:
        try:
            import psutil

            return bool(psutil.pid_exists(pid))
        except Exception:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; anything else: unknown
        return True
    return True


def _changed_since(entry: Path, moment: float) -> bool:
    """Whether ``entry`` or anything under it changed after ``moment`` (stops at the first that did):
    a zarr folder's own time changes only when its top-level entries do, not as chunks are written."""
    stack = [str(entry)]
    while stack:
        path = stack.pop()
        try:
            if os.lstat(path).st_mtime > moment:
                return True
            if os.path.isdir(path) and not os.path.islink(path):
                stack.extend(os.path.join(path, name) for name in os.listdir(path))
        except OSError:  # removed meanwhile
            continue
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path to write ``path`` (a file or a directory) under; publish it on success.

    On leaving the block normally the temporary entry is renamed onto ``path`` (an existing
    output is replaced only then); on any exception, KeyboardInterrupt included, it is removed.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory not found: {parent}: create it first or choose another output path")
    tmp = temporary_name(path)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _publish(tmp: Path, path: Path) -> None:
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to {tmp}")
    if path.is_dir() and not path.is_symlink():
        # os.replace cannot replace a non-empty directory: move the old one aside first.
        old = temporary_name(path)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def remove_stale_temporaries(path) -> list[Path]:
    """Delete leftovers of interrupted writes of ``path``; returns what was removed.

    A temporary that a process still running on this machine is writing is left alone.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    # a name like img[1].zarr is not a pattern; a TIFF output's scratch OME-Zarr is written under
    # a temporary name of its own temporary name (two leading dots)
    found = [q for dots in (".", "..") for q in parent.glob(f"{dots}{glob.escape(path.name)}.*{_TMP_SUFFIX}")] \
        if parent.is_dir() else []
    stale = []
    for entry in sorted(set(found)):
        if not _writer_alive(entry):
            try:
                _remove(entry)
            except OSError:  # held open (Windows), or no permission: left for a later sweep, not the run's end
                continue
            stale.append(entry)
    return stale
