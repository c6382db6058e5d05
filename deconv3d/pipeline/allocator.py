"""How glibc's allocator returns the memory of freed arrays to the system during a run.

Under a memory limit the block-sized arrays of a chunked run must be unmapped when freed, or heap
fragments pile up block after block past the memory model: :func:`return_large_allocations` fixes
glibc's mmap threshold for that, and :func:`large_allocations_returned` holds it only while runs
are in progress (overlapping runs share it through :class:`OverlappingRuns`), then settles the
threshold where glibc's adaptive one would end up.
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["return_large_allocations", "large_allocations_returned", "OverlappingRuns", "MMAP_THRESHOLD",
           "SETTLED_MMAP_THRESHOLD"]

MMAP_THRESHOLD = 8 << 20
#: glibc's ceiling for its adaptive mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX):
#: where a process that has freed large arrays ends up on its own.
SETTLED_MMAP_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def return_large_allocations(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes or more with their own mmap (process-wide).

    glibc raises its mmap threshold adaptively up to 32 MB, after which the block-sized arrays
    of a chunked run (a few to some tens of MB each) come from the heap, where they leave free
    but resident fragments that later blocks of other sizes do not fill: resident memory then
    creeps up block after block, far past the model (measured, RL 20 iterations on blocks of
    64 x 149 x 185, 512 MB limit: 807 MB peak against 498 MB predicted). With a fixed threshold
    every large array is unmapped when freed, so the peak follows what the blocks hold. The cost
    is page faults on fresh arrays (measured: about as much system time as the adaptive default at
    8 MiB; +30 % wall time at 4 MiB, +40 % at 1 MiB). :func:`large_allocations_returned` scopes
    it to a run. Returns whether it took effect (False off glibc).
    """
    return _mallopt(_M_MMAP_THRESHOLD, threshold)


def _mallopt(parameter: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(parameter, int(value)))
    except (OSError, AttributeError):
        return False


class OverlappingRuns:
    """A process-wide setting that overlapping runs (a GUI's background calls) hold together:
    ``first()`` is called as the first of them starts and ``last()`` as the last one ends,
    whichever thread that is, both under one lock; ``active`` counts the runs inside."""

    def __init__(self, first, last):
        self.first, self.last = first, last
        self.active, self._lock = 0, threading.Lock()

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            if self.active == 0:
                self.first()
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
                if self.active == 0:
                    self.last()


def _settle_allocations() -> None:
    _mallopt(_M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
    _mallopt(_M_TRIM_THRESHOLD, 2 * SETTLED_MMAP_THRESHOLD)


_ALLOCATIONS = OverlappingRuns(first=return_large_allocations, last=_settle_allocations)


@contextlib.contextmanager
def large_allocations_returned(enabled: bool = True):
    """:func:`return_large_allocations` while the ``with`` block (a run under a memory limit) runs.

    Left in place, the fixed 8 MiB threshold made every later array of 8-32 MiB in the process a
    fresh mmap: numpy on 12 MiB arrays ran 2.1-4.7 times slower after one run (review of
    process-global state, as a napari session would call it). glibc's adaptive threshold cannot be
    switched back on, so when the last overlapping run ends the threshold is set where the
    adaptive one settles in a process that has freed large arrays (32 MiB, trimming above twice that).
    """
    if not enabled:
        yield
        return
    with _ALLOCATIONS.held():
        yield
