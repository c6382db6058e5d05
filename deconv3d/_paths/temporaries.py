"""The temporary names outputs are written under until they are complete (:func:`temporary_name`:
``.NAME.<host>@<pid>-<id>.tmp``, naming the machine and the process writing it, :func:`host_tag`),
the creation of such a temporary with the permissions and group of the output it will replace
(:func:`create_temporary`, :func:`keep_mode`), and the sweep of what killed runs left under such
names (:func:`remove_stale_temporaries`, :func:`remove_stale_temporaries_in`), which spares a
temporary that a live writer still writes (:func:`_writer_alive`). Free of heavy imports, so that
every command can sweep before it writes."""

from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import threading
import time
import uuid
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that marks itself as unfinished, and names the machine and the
    process writing it (``.NAME.<host>@<pid>-<id>.tmp``;
    :func:`deconv3d.pipeline.output.remove_stale_temporaries` sweeps them)."""
    return path.with_name(f".{path.name}.{host_tag()}@{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def keep_mode(path: Path, tmp: Path) -> None:
    """Give ``tmp``, the temporary of an output that will replace the existing ``path``, that output's
    permission bits (``rwx`` for owner, group and others) and its group, as ``cp`` onto a file keeps
    them: a ``chmod 600`` result replaced by a rerun came back 0644 (readable by all), a zarr folder
    at 0750 as 0755 (the umask's). Called as ``tmp`` is created (:func:`create_temporary`, which makes
    it no wider than this), so that a private result is never readable by others while it is
    rewritten. Setuid, setgid and sticky bits are not copied
    (``tmp`` keeps its own: a folder's setgid inherited from its parent). The group is kept where this
    user may give it (one of its groups); where it cannot be and the output was someone else's,
    ``tmp`` is given the umask's mode: the old mode on this user's group (``0660``) would lock the
    previous owner out of the result. A new output keeps the umask's mode; a link at ``path`` (which
    the rename replaces, never its target) gives none, nor a file to a folder or a folder to a file
    (a file's 0644 would make a folder that cannot be entered, nor removed). For a zarr folder this is
    the folder's own mode, which decides who may reach its files."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) != os.path.isdir(tmp):
            return
        own = os.lstat(tmp)
        if own.st_gid != st.st_gid:
            try:
                os.chown(tmp, -1, st.st_gid)
            except OSError:  # not one of this user's groups
                if st.st_uid != own.st_uid:  # the umask's mode (create_temporary made it narrower)
                    os.chmod(tmp, (stat.S_IMODE(own.st_mode) & ~0o777) | (_NEW_MODE[stat.S_ISDIR(own.st_mode)]
                                                                           & ~_umask()))
                    return
            own = os.lstat(tmp)
        os.chmod(tmp, (stat.S_IMODE(own.st_mode) & ~0o777) | (st.st_mode & 0o777))
    except OSError:  # no output there (yet), or one removed meanwhile
        pass


#: The mode a new file (False) or folder (True) is made with, less the umask's bits.
_NEW_MODE = {False: 0o666, True: 0o777}


def create_temporary(path: Path, tmp: Path, folder: bool = False, like: Path | None = None) -> int | None:
    """Create ``tmp``, the temporary of the output ``path`` (:func:`temporary_name`), a ``folder`` or a
    file, which is returned open for writing (a descriptor, for :func:`open`), with the permissions it
    will have (:func:`keep_mode`). It was made with the umask's mode and narrowed right after: under a
    permissive umask (``0o000``) a ``chmod 600`` output's temporary was 0666 for that moment, and a
    file opened then stays readable to whoever opened it. It is now made with the output's
    mode, which the umask can only narrow: :func:`keep_mode`'s ``chmod`` that follows gives back
    what the umask took away (never more than the output's mode), and the group. Until the group is
    the output's, the temporary's group bits go to the folder's group, so they are made no wider than
    the output gives others (0640 is made 0600, then given its group and 0640). A new output is made
    with the umask's mode, as before. ``like``: the output whose mode a ``folder`` is made no wider
    than instead of ``path``'s, where it holds what becomes that file (a chunked TIFF's scratch
    zarr): a file's mode with ``x`` where ``r`` is set (0600 makes 0700), group bits as others'."""
    mode = _NEW_MODE[folder]
    try:
        st = os.lstat(path if like is None else like)
    except OSError:  # a new output (or one that cannot be looked at: refused before)
        st = None
    if st is not None and like is not None and folder and stat.S_ISREG(st.st_mode):
        kept = st.st_mode & 0o777
        kept |= (kept & 0o444) >> 2  # (a folder holding a file's data: entered by whom may read the file)
        mode &= kept & (0o707 | (kept & 0o007) << 3)
    elif st is not None and not stat.S_ISLNK(st.st_mode) and stat.S_ISDIR(st.st_mode) == folder:  # (as keep_mode)
        kept = st.st_mode & 0o777
        mode &= kept & (0o707 | (kept & 0o007) << 3)
    if folder:
        os.mkdir(tmp, mode)
        keep_mode(path, tmp)
        return None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        keep_mode(path, tmp)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Held while :func:`_umask` sets the umask and puts it back: two threads doing so at once read each
#: other's 0o077 and one left it set for the process.
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """This process's umask, read where the system tells it (Linux), else set and put back at once
    (under :data:`_UMASK_LOCK`; not kept between calls, as the user may change it)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # (what another thread creates meanwhile is private, not open to all)
        os.umask(mask)
    return mask


def host_tag() -> str:
    """This machine's name as a file-name part (letters, digits and '-'): jobs on several cluster
    nodes writing into one shared folder must not take each other's temporaries for leftovers.
    On Linux it also names the process-id namespace: containers on one host (Docker with the
    host's network, Apptainer --containall) share its name while their process ids overlap (each
    run was process 1, and each removed the other's temporary as its own leftover)."""
    import socket

    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    namespace = _pid_namespace()
    return f"{host}-ns{namespace}" if namespace else host


def _pid_namespace() -> str:
    """The inode number of this process's pid namespace ('' where unknown: not Linux)."""
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except (OSError, AttributeError):
        return ""


_TMP_SUFFIX = ".tmp"
#: The writer's part of a name :func:`temporary_name` gives: ``.<host>@<pid>-<id>.tmp`` (the host,
#: missing in names of older versions, and the process as groups).
_WRITER = r"\.(?:([A-Za-z0-9-]+)@)?(\d+)-[0-9a-f]{8}" + re.escape(_TMP_SUFFIX)

_ON_WINDOWS = os.name == "nt"

#: Seconds after its last change that a temporary written from another machine counts as abandoned.
OTHER_HOST_STALE_AGE = 2 * 24 * 3600


def _writer_alive(entry: Path) -> bool:
    """Whether another process that is still running writes ``entry`` (named by :func:`temporary_name`,
    possibly a temporary of a temporary, whose last part names the writer). A temporary from
    another machine (a job on another node of a cluster, writing into the same shared folder) is
    taken as live until it has not changed for :data:`OTHER_HOST_STALE_AGE`: its process cannot
    be asked from here, and removing it broke that job's write."""
    match = re.search(_WRITER + "$", entry.name)
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
    return _remove_stale(found)


def remove_stale_temporaries_in(folder, names) -> list[Path]:
    """Delete the leftovers of interrupted writes of the outputs ``names`` in ``folder``, listing
    it once (a batch sweeping each output's own listed the folder per file: 6.3 s over 2000
    files, growing with their square). Only names deconv3d writes (``.NAME.<host>@<pid>-<id>.tmp``,
    or a temporary of one) are touched: any other hidden ``.tmp`` entry is left alone."""
    names = set(names)
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(_TMP_SUFFIX)]
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is not None and match.group(1) in names:
            found.append(Path(entry.path))
    return _remove_stale(found)


#: ``.NAME.<host>@<pid>-<id>.tmp`` (:func:`temporary_name`), or a temporary of one (two dots, two tags).
_TEMPORARY = re.compile(r"^\.\.?(.+?)(?:" + _WRITER + "){1,2}$")  # group 1: the output's name


def _remove_stale(found) -> list[Path]:
    stale = []
    for entry in sorted(set(found)):
        if not _writer_alive(entry):
            try:
                _remove(entry)
            except OSError:  # held open (Windows), or no permission: left for a later sweep, not the run's end
                continue
            stale.append(entry)
    return stale
