"""The memory of this process and of the machine, and memory limits as a user writes them.

It reads limits such as ``"4GB"`` or ``"512MiB"`` (:func:`parse_memory`) and writes byte counts
back the same way (:func:`format_bytes`); it measures the process's resident memory
(:func:`current_rss`) and the memory it could still allocate, the kernel's figure or less where a
control group (a container, a Slurm job) limits it (:func:`available_memory`); and it gives the
resident memory a run's blocks are budgeted on top of (:func:`planning_baseline`). The memory a
block needs is :mod:`deconv3d.pipeline.memory_model`'s; the budget built from both is
:mod:`deconv3d.pipeline.memory`'s.
"""

from __future__ import annotations

import re

from deconv3d.errors import InputError
from deconv3d.pipeline.memory_model import RESIDENT_ALLOWANCE

__all__ = ["parse_memory", "format_bytes", "current_rss", "available_memory", "planning_baseline"]


#: The number a memory limit starts with (dask's parser reads a unit alone, or nothing, as 1 of it).
_LEADING_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", re.IGNORECASE)


def parse_memory(text) -> int:
    """Bytes from ``"4GB"``, ``"512MiB"``, ``"2e9"`` (decimal GB = 1e9 bytes, GiB = 2**30), or a
    number of bytes as it is. A number comes first: ``"GB"`` or ``""`` (which dask reads as one of
    the unit) are refused, as is a limit below 1 byte (``"0.5"``, once truncated to 0)."""
    from dask.utils import parse_bytes

    number = _LEADING_NUMBER.match(str(text).strip())
    try:
        if number is None:
            raise ValueError("no number")
        value = int(parse_bytes(str(text).strip()))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"cannot read memory limit {text!r}: write it like 4GB, 512MB or 2GiB") from exc
    if float(number.group()) <= 0:
        raise InputError(f"memory limit must be positive, got {text!r}: write it like 4GB, 512MB or 2GiB")
    if value < 1:
        raise InputError(f"memory limit {text!r} is below 1 byte: write it like 4GB, 512MB or 2GiB")
    return value


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}B"


def current_rss() -> int:
    """Resident memory of this process now (Linux ``/proc``; elsewhere psutil, a dependency:
    ``resource``'s ``ru_maxrss``, the peak so far, made a batch's later files plan from an
    earlier file's peak on macOS, and Windows has no ``resource`` module); 0 if unknown."""
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:  # psutil missing or refused: plan without a baseline
            return 0


MEMINFO = "/proc/meminfo"
CGROUP_ROOT = "/sys/fs/cgroup"
#: File names of a cgroup's memory limit, usage and statistics, and the statistic counting page cache
#: the kernel can reclaim, in cgroup v2 and v1.
_CGROUP_NAMES = {"v2": ("memory.max", "memory.current", "memory.stat", "inactive_file"),
                 "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file")}


def available_memory() -> int | None:
    """Bytes this process could still allocate: the kernel's ``MemAvailable``, or less where its
    control group (a container, a Slurm job) limits it: the limit less the group's usage, not
    counting page cache the kernel reclaims (``inactive_file``: a container that had read a few
    GB of files otherwise seemed full, and small images went block by block). Without ``/proc``
    (macOS, Windows), psutil's available memory; None where nothing is known."""
    found = []
    try:
        with open(MEMINFO) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for version, folder in _cgroup_dirs():
        free = _cgroup_free(folder, *_CGROUP_NAMES[version])
        if free is not None:
            found.append(free)
    if not found:  # macOS, Windows: the system's own figure
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except Exception:
            pass
    return min(found) if found else None


def _cgroup_dirs() -> list[tuple[str, str]]:
    """(version, folder) of this process's memory cgroup and of every group above it up to the
    hierarchy's root (a Slurm job's limit sits on the job's group, the process in a step below
    it; in a container's namespace the process's group is the root)."""
    import os

    roots = {"v2": os.path.normpath(CGROUP_ROOT), "v1": os.path.normpath(os.path.join(CGROUP_ROOT, "memory"))}
    sep = os.sep
    own = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    own["v2"] = path
                elif "memory" in controllers.split(","):
                    own["v1"] = path
    except (OSError, ValueError):
        pass
    found = []
    for version, root in roots.items():
        folder = os.path.normpath(os.path.join(root, own.get(version, "/").lstrip("/")))
        if not (folder + sep).startswith(root + sep):  # a path that leaves the mount: only the root is known
            folder = root
        while True:
            found.append((version, folder))
            if folder == root:
                break
            folder = os.path.dirname(folder)
    return found


def _cgroup_free(folder: str, limit_name: str, usage_name: str, stat_name: str, cache_key: str) -> int | None:
    """A cgroup's limit less its usage without reclaimable page cache; None without a limit there."""
    import os

    try:
        with open(os.path.join(folder, limit_name)) as fh:
            text = fh.read().strip()
        if text == "max":
            return None
        limit = int(text)
        with open(os.path.join(folder, usage_name)) as fh:
            usage = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        with open(os.path.join(folder, stat_name)) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
    except (OSError, ValueError):
        pass
    return max(0, limit - max(0, usage - cache))


_FIRST_BASELINE: list = []  # the resident memory of this process when its first run was planned


def planning_baseline() -> int:
    """The resident memory a run's blocks are budgeted on top of (with :data:`RESIDENT_ALLOWANCE`).

    The memory now, less what a previous run in this process left resident, up to the allowance
    that already counts it: measured afresh, a batch's second file of the same size was refused
    (the baseline had grown by 70 MB, torch's FFT plans and allocator arenas, and the allowance
    was added on top). Growth beyond the allowance (libraries loaded since) still counts.
    """
    now = current_rss()
    if not _FIRST_BASELINE:
        _FIRST_BASELINE.append(now)
        return now
    return min(now, max(_FIRST_BASELINE[0], now - RESIDENT_ALLOWANCE))  # never above what is resident now
