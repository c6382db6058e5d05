"""FFTW's wisdom file: where it lives (one per CPU model, under ``DECONV3D_CACHE_DIR``: see
:mod:`deconv3d._fftw`), its format, reading it once per process (:func:`load_wisdom`) and saving
new plans merged with what other processes saved meanwhile, atomically and under a file lock
(:func:`save_wisdom`); the file of transform sizes met on this machine beside it
(:func:`remember_size`), which tells the ``auto`` planner (:mod:`deconv3d._fftw_planning`) which
sizes recur; setting the wisdom aside for ``estimate`` runs (:func:`wisdom_set_aside`); and
:data:`wisdom_lock`, which guards the wisdom pyFFTW holds in this process."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import struct
import tempfile
import threading
import time
from typing import Sequence

log = logging.getLogger("deconv3d._fftw")  # the backend's one logger, as before _fftw.py was split

_WISDOM_MAGIC = b"deconv3d-fftw-wisdom-1\n"
wisdom_lock = threading.Lock()
_wisdom_loaded = False
_wisdom_on_disk: tuple = ()  # what the file held when loaded, or what this process last wrote
_met_before: frozenset = frozenset()  # sizes that earlier processes met (read with the wisdom)
_remembered: set = set()  # sizes this process has added to the file


@contextlib.contextmanager
def wisdom_set_aside(pyfftw):
    """Plan with no wisdom held, then restore it (call with :data:`wisdom_lock` held). FFTW takes a plan
    from the wisdom it holds whatever the flags, ``FFTW_ESTIMATE`` included: ``estimate`` runs
    reused the plans measured by earlier runs (the file, or this process's), so an estimate run
    after default-planner runs differed from one before them by 2.3e-5 of the maximum. Wisdom
    imported again is exported in another order: where it was what the file holds, the file's
    marker takes that order, or the next run would save an unchanged file as if it had measured."""
    global _wisdom_on_disk
    held = pyfftw.export_wisdom()
    pyfftw.forget_wisdom()
    try:
        yield
    finally:
        pyfftw.forget_wisdom()
        pyfftw.import_wisdom(held)
        if tuple(held) == _wisdom_on_disk:
            _wisdom_on_disk = tuple(pyfftw.export_wisdom())


def _sizes_path() -> str | None:
    path = wisdom_path()
    return None if path is None else path[:-len(".bin")] + "-sizes.txt"


def remember_size(key: str) -> None:
    """Add ``key`` to the file of transform sizes met on this machine (best effort).

    One short line appended with ``O_APPEND``, which concurrent processes cannot interleave or
    overwrite (read, merge and replace lost 138 of 240 sizes to six processes at once); a size
    already in the file, or added twice by processes at once, is read once.
    """
    _remembered.add(key)
    path = _sizes_path()
    if path is None:
        return
    try:
        if key in _read_sizes(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{key}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.info("could not record an FFT size in %s: %s", path, exc)


def _read_sizes(path: str | None) -> list:
    if path is None:
        return []
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()][:100_000]
    except (OSError, UnicodeDecodeError):
        return []


def wisdom_path() -> str | None:
    """The wisdom file for this CPU model (plans measured on one CPU may be slow on another); None
    where no absolute cache folder can be told (see ``DECONV3D_CACHE_DIR`` in :mod:`deconv3d._fftw`)."""
    base = os.path.expanduser(os.environ.get("DECONV3D_CACHE_DIR") or "")
    if not base:
        cache = os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "")
        if not os.path.isabs(cache):
            cache = os.path.join(os.path.expanduser("~"), ".cache")  # "~" itself where no home is known
        base = os.path.join(cache, "deconv3d")
    if not os.path.isabs(base):
        return None
    cpu = _cpu_name().replace(" ", "_")
    safe = "".join(c for c in cpu if c.isalnum() or c in "_-.")[:60] or "cpu"
    return os.path.join(base, f"fftw-wisdom-{platform.machine()}-{safe}.bin")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_wisdom(pyfftw) -> None:
    """Import the wisdom file once per process; a missing or damaged file is ignored."""
    global _wisdom_loaded, _wisdom_on_disk, _met_before
    if _wisdom_loaded:
        return
    _wisdom_loaded = True
    _wisdom_on_disk = ()
    _met_before = frozenset(_read_sizes(_sizes_path()))
    parts = _read_wisdom(wisdom_path())
    if parts is not None:
        pyfftw.import_wisdom(parts)
        _wisdom_on_disk = tuple(pyfftw.export_wisdom())


def _read_wisdom(path: str | None):
    """The wisdom strings the file at ``path`` holds; None where it is missing, unreadable or foreign."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return _unpack(f.read())
    except OSError:
        return None


def save_wisdom(pyfftw) -> None:
    """Write the wisdom this process holds, with the plans the file holds now (saved by other
    processes since it was read) added to it, atomically; an unwritable cache is skipped. The
    read, merge and replace hold a lock on a file beside it (:func:`_locked`): two runs that saved
    at once each wrote only their own, and the second kept none of the first's 93 plans. Call with
    :data:`wisdom_lock` held (the merge goes through this process's wisdom)."""
    global _wisdom_on_disk
    path = wisdom_path()
    if path is None:
        return
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _locked(path + ".lock"):
            parts = _read_wisdom(path)
            if parts is not None:
                pyfftw.import_wisdom(parts)  # FFTW adds what it imports to what it holds
            wisdom = tuple(pyfftw.export_wisdom())
            fd, tmp = tempfile.mkstemp(prefix=".fftw-wisdom-", dir=os.path.dirname(path))
            with os.fdopen(fd, "wb") as f:
                f.write(_pack(wisdom))
            os.replace(tmp, path)
        _wisdom_on_disk = wisdom
    except OSError as exc:
        log.info("could not save FFTW wisdom to %s: %s", path, exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


#: Seconds :func:`_locked` waits for another process's lock before going on without it.
_LOCK_WAIT = 1.0


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive ``flock`` on the file ``path`` (created if missing) while inside. Where none can
    be had (Windows has no fcntl; some network file systems refuse locks), or another process
    holds it past :data:`_LOCK_WAIT` seconds, the block runs unlocked: a blocking wait held this
    process's :data:`wisdom_lock` (every transform waiting) for as long as the other held the file."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        fd = None
    try:
        deadline = time.monotonic() + _LOCK_WAIT
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # held by another
                if time.monotonic() >= deadline:
                    log.info("%s is held by another process; saving FFTW wisdom without it", path)
                    break
                time.sleep(0.05)
            except OSError:
                break
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _pack(parts: Sequence[bytes]) -> bytes:
    return _WISDOM_MAGIC + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def _unpack(blob: bytes):
    """The three wisdom strings (double, single, long double), or None for a foreign file."""
    if not blob.startswith(_WISDOM_MAGIC):
        return None
    parts, pos = [], len(_WISDOM_MAGIC)
    for _ in range(3):
        if pos + 8 > len(blob):
            return None
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        if pos + n > len(blob):
            return None
        parts.append(blob[pos:pos + n])
        pos += n
    return tuple(parts) if pos == len(blob) else None
