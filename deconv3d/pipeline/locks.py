"""Advisory locks that let several batch runs work into one output folder at once.

A cluster user may launch the same ``deconv3d batch IN -o OUT`` as N array tasks, or relaunch a
batch while the first still runs. Without coordination every run computed every file, reports
overwrote each other (a failure could vanish from the last one written) and a run with other
settings could leave a folder of mixed outputs. The locks here are ``flock`` locks on small files
in the batch's record folder: the system drops them when their process ends, however it ends,
so a killed run leaves no lock behind (and Linux maps them onto NFS's locks across nodes).
Where locks are not available (Windows, a filesystem mounted without them) runs go on without
coordination, as before.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from deconv3d.errors import InputError

#: The reason of a file another live run is processing (its row in that run's report says how it went).
BUSY = "in progress in another run"
#: The reason of a file another run finished while this one ran (its row says how long it took).
DONE_ELSEWHERE = "finished by another run"
#: Rows with these reasons defer to the row another run writes for the same file.
DEFERRING = (BUSY, DONE_ELSEWHERE)
#: Seconds a run keeps testing another settings' lock before it takes it as held (other runs
#: starting take it for a moment to test it too).
TEST_PATIENCE = 1.0


@contextlib.contextmanager
def file_lock(path, *, shared: bool = False, wait: bool = False):
    """Hold a lock on ``path`` (created when missing) for the ``with`` block.

    Yields True while this process holds it, False when another holds it (and ``wait`` is False),
    None when this system or filesystem has no locks. ``shared`` locks coexist with each other.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield None
        return
    try:
        handle = open(path, "a+")  # readable too: NFS maps flock onto POSIX locks, whose shared kind needs it
    except OSError:
        yield None
        return
    with handle:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle.fileno(), mode)
            held = True
        except BlockingIOError:
            held = False
        except OSError:  # ENOLCK, EINVAL: a filesystem without locks
            held = None
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def settings_guard(record_dir: Path, fingerprint: str):
    """While a batch runs, hold a shared lock named by its settings' fingerprint; refuse to start
    while another live run with other settings holds its own (runs with the same settings share
    the folder, each taking the files no other holds: :func:`claim`)."""
    record_dir = Path(record_dir)
    own = record_dir / f"settings-{fingerprint}.runlock"  # (output and input locks end in .zarr.lock, .tif.lock)
    with file_lock(own, shared=True, wait=True) as held:  # (waits out a starting run testing it)
        if held:
            for other in sorted(record_dir.glob("*.runlock")):
                if other != own and _held_by_a_run(other):
                    raise InputError(f"another batch with other settings (memory limit, chunks and device "
                                     f"included: they decide which outputs a rerun keeps) is writing into "
                                     f"{record_dir.parent}: give the same options, wait for it to finish, or give "
                                     "another output folder")
        yield


def _held_by_a_run(path: Path) -> bool:
    """Whether a live run holds its settings lock ``path``: it cannot be taken for
    :data:`TEST_PATIENCE` seconds (a run starting up and testing it holds it only for a moment)."""
    import time

    deadline = time.monotonic() + TEST_PATIENCE
    while True:
        with file_lock(path) as free:
            if free is not False:
                return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.02)


@contextlib.contextmanager
def claim(record_dir: Path, output: Path, input_path: Path):
    """A lock on the writing of ``output`` from ``input_path`` (see :func:`file_lock`: False while
    another live run writes it). Named by the output, case-folded as the batch compares outputs:
    named by the input, two runs of inputs that write one output (day1/img0.tif and day3/img0.tiff)
    both wrote it. The lock named by the input, which earlier versions took, is held too (taken
    second): a run of either version skips the file the other is processing (a cluster job array
    whose environment was upgraded midway processed it twice). A series of a bioformats2raw folder of
    several, which earlier versions did not take, names it as its completion record does
    (``cells.zarr_0.lock``): by the input's name alone every folder's first series took ``0.lock``."""
    from deconv3d.pipeline.batch_inputs import record_name

    own, legacy = _output_lock(record_dir, output), Path(record_dir) / f"{record_name(Path(input_path))}.lock"
    with file_lock(own) as held:
        if held is not True or _same_file_of(own, legacy):
            yield held
            return
        with file_lock(legacy) as also:  # (None, no lock there: the output's is held)
            yield also is not False


def _output_lock(record_dir: Path, output: Path) -> Path:
    return Path(record_dir) / f"{Path(output).name.casefold()}.lock"


def note_writer(record_dir: Path, output: Path, record_name: str) -> None:
    """Note in ``output``'s lock file, under its :func:`claim`, the name of the completion record of
    the input about to write it, once: :func:`noted_writers` then finds the records that name an
    output, another run's written meanwhile included, without listing the whole record folder for
    every file (10,000 records: 16.5 ms a file). Not noted where the lock file cannot be written."""
    entry = os.fsencode(record_name) + b"\0"  # (no file name holds a NUL; any other byte may be in one)
    path = _output_lock(record_dir, output)
    try:
        with open(path, "a+b") as handle:
            handle.seek(0)
            if b"\0" + entry not in b"\0" + handle.read():
                handle.write(entry)
    except OSError:
        pass


def noted_writers(record_dir: Path, output: Path) -> list[str]:
    """The names of the completion records :func:`note_writer` noted for ``output``."""
    try:
        noted = _output_lock(record_dir, output).read_bytes().split(b"\0")
    except OSError:
        return []
    return [os.fsdecode(name) for name in noted if name.endswith(b".json") and b"/" not in name]


def _same_file_of(own: Path, legacy: Path) -> bool:
    """Whether lock ``legacy`` is the existing ``own`` (img0.tif's output img0.tif, or a name differing
    in case only on a disk that ignores case): locked again through another handle, it would show as
    held by another run."""
    try:
        return legacy.name == own.name or (legacy.exists() and own.samefile(legacy))
    except OSError:
        return False


def report_lock(record_dir: Path):
    """The lock a run holds while it merges its rows into the folder's report (waits its turn)."""
    return file_lock(Path(record_dir) / "report.lock", wait=True)
