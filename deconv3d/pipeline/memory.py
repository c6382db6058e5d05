"""Memory model of chunked execution and the choice of the largest chunk shape that fits a budget.

Peak resident memory of a run is modelled as ::

    peak = baseline + workers * block_bytes(core + 2 * halo)

``baseline`` is the process before any block runs (Python, torch, dask: measured at run time),
and ``block_bytes`` is what one block needs while its method runs. The blocks of an OME-Zarr input
may keep decoded chunks for one another, which the chunks are not chosen to make room for: the
cache takes what the blocks leave under the limit and is added to the predicted peak, with what
the blocks' reads hold beside it while they decode (:func:`deconv3d.pipeline.readers.chunk_cache_budget`). For the classical methods it
is the arrays that coexist at the method's peak (float32 = 4 bytes, complex64 half spectra = 8
bytes per element), times :data:`ARRAY_SAFETY`, plus :data:`BLOCK_OVERHEAD`:

Richardson-Lucy, Bertero boundary (:mod:`deconv3d.classical`), with ``F`` the voxels of the FFT
shape ``fast_shape(block + psf - 1)``, ``S`` the half-spectrum elements (about ``F / 2``) and
``B`` the block's voxels. The peak is in the loop, where the problem and the workspace coexist:

* real arrays of FFT shape: ``1 / H^T 1``, the workspace's two zero-margined FFT inputs (the
  estimate ``u`` lives in the first, ``y / H u`` is written into the second) and its output: 4 F;
  torch's transforms (:class:`deconv3d._fftw.TorchTransforms`, where pyFFTW is missing or the FFT
  is small) compute an inverse into a fresh array before copying it to the output: 1 F more.
  Biggs-Andrews adds ``x``, ``x_prev`` and numba's one step vector, 3 F (torch's passes: two step
  vectors and a scratch, 5 F; a replayed schedule keeps one step vector fewer, counted as the
  adaptive run that measures it); TV adds ``ndim`` gradients, the norm and the divergence:
  (ndim + 2) F;
* half spectra: the problem's OTF, the workspace spectrum, the conjugate OTF and, with FFTW, the
  OTF scaled by FFTW's normalisation (torch instead copies the spectrum that its inverse
  destroys): 4 S complex;
* block-sized arrays: the block read from the source and its clamped copy: 2 B. (``y / H u`` is
  written into the workspace's second input, and the returned crop is allocated once the
  workspace is gone. A block whose peak lies beyond ``2**±32`` runs divided by a power of two:
  that scaled copy is dropped before the loop, and the block's callback, which reads no
  estimate, gets no scaled copy of it per iteration, so such a block holds no more.)

The set-up of ``1 / H^T 1`` and of the OTF holds less, and is freed before the workspace exists.
Between blocks the last block's OTF and ``1 / H^T 1`` stay for a next block of its shape
(:mod:`deconv3d.classical._reuse`): 1 F real and 1 S complex, less than that block held, dropped
by a block of another shape before it builds its own, and during a block of that shape its own
(counted above). So they add to no block's count.
The zero and periodic boundaries need smaller FFTs, so the Bertero count bounds them. The
reflect boundary runs the Bertero model on the block mirrored by the PSF half-size: ``F`` from
``block + 2 (psf - 1)``, and its data arrays are that mirrored block's size.

Wiener: the padded block (``F`` from ``block + 2 * psf``), the OTF, the quotient spectrum, the
copy of it that the inverse FFT destroys and the inverse's output (the result is a view of it):
2 F real + 3 S complex, and the block, 1 B. Between blocks the last block's OTF stays for a next
block of its FFT shape (:mod:`deconv3d.classical._reuse`, as RL's set-up): 1 S complex, less than
that block held, dropped by a block of another shape before it builds its own, and during a block
of that shape its own OTF (counted above). So it adds to no block's count, as RL's does not.

Measured (``benchmarks/bench_block_memory.py``: peak RSS growth of one block in a fresh process
after the pipeline's set-up, 2 torch threads, PSF 15^3 and 31^3, blocks 32 x 128^2 to 96 x 384^2
and 64 x 512^2, FFTW and numba, torch's FFTs, torch's passes): these arrays plus 17-19 MB for
blocks whose arrays are above the mmap threshold (each is its own mapping: no allocator slack
in proportion), up to 45 MB for smaller ones (torch's first-call tables and code, arrays below the
threshold kept in the heap). With the factor and the overhead: 0.77-0.96 of ``block_bytes``
(0.52-1.03 down to 16 x 64 x 64 blocks, the excess within :data:`RESIDENT_ALLOWANCE`). The old
count (5 F real, 9 S complex, 4 B, Wiener's 2 S real more, all times 1.25) measured 0.42-0.83
(up to 1.9 on the smallest blocks). End to end (``run_chunked`` on 64 x 512^2, 20 iterations,
limits of 0.6-1.5 GB) the peak came to 0.87-0.93 of the limit with one worker and 0.80-0.88 with
two, against 0.67-0.75 with the old count.

Network inference: inputs and outputs of a tile (4 B) plus activations: in the UNet the widest
level holds ``base_channels`` channels at full resolution and every level below it half as
many voxels per channel, so with the skip tensors kept for the decoder the peak is about
``(3 + 4/3) * base_channels * B`` floats (``B`` the padded window), plus the weights; times
:data:`SAFETY`.

The model holds for one block in a fresh heap; that it also holds after hundreds of blocks needs
the allocator to give freed arrays back (:func:`return_large_allocations`, and ``malloc_trim``
after every block in :mod:`deconv3d.pipeline.chunked`): otherwise heap fragments pile up block
after block. End to end (``benchmarks/bench_pipeline.py``, CLI, RL 20 iterations, two torch
threads, ``--memory-limit 512MB``, with the old count): peak 476 MB for a 0.25 GiB volume and
477 MB for 1 GiB.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from dataclasses import dataclass
from typing import Sequence

from deconv3d.errors import InputError

__all__ = ["MemoryModel", "choose_chunks", "round_chunks", "parse_memory", "current_rss", "planning_baseline",
           "format_bytes", "SAFETY", "ARRAY_SAFETY", "BLOCK_OVERHEAD",
           "RESIDENT_ALLOWANCE",
           "return_large_allocations", "large_allocations_returned", "MMAP_THRESHOLD"]

SAFETY = 1.25  # the network's count (derived from the layers, not from the arrays one by one)
# The classical counts are the arrays that coexist at the peak: measured, one block holds them plus
# a constant (17-45 MB: torch's first-call tables and code, arrays below the mmap threshold kept in
# the heap), not a share of them. A few % for FFTW's plans and the allocator's pages.
ARRAY_SAFETY = 1.05
BLOCK_OVERHEAD = 40 * 10**6
# Memory that stays resident once the first block has run (torch's per-thread FFT plans and
# scratch, allocator arenas): ~50 MB measured with two torch threads on a 256 MiB volume, where
# the model without it fell 4-7 % short of the measured peak. Added once to every prediction.
RESIDENT_ALLOWANCE = 64 * 2**20
_F32, _C64 = 4, 8


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


#: Share of the available memory a run may take when it chose its blocks itself (no limit given).
AVAILABLE_SHARE = 0.8


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


def limit_for_available(model: "MemoryModel", shape: Sequence[int], baseline: int, held: int = 0,
                        processes: int = 1) -> int | None:
    """A memory limit for a run given none, or None when the whole ``shape`` fits in what is
    available (:func:`available_memory`) with ``held`` bytes more (an in-memory run's image and
    result): the memory now (``baseline``) plus :data:`AVAILABLE_SHARE` of what is available, or,
    for ``processes`` worker processes that run blocks at once (``--scheduler processes``: a whole
    volume runs in one of them), that share less the program's own memory of all of them but one
    (each loads its libraries, taken as ``baseline``: a LocalCluster worker grew from 329 to 517 MB
    after the free memory was measured, 120 MB per worker over the share), split equally among
    them. Without it a volume larger than the memory ran as one block until the kernel killed
    the process, with no message."""
    available = available_memory()
    if available is None:
        return None
    whole = model.peak_bytes(shape, (0,) * len(shape), shape, workers=1, baseline=baseline) + held
    share, processes = int(AVAILABLE_SHARE * available), max(1, int(processes))
    if whole <= baseline + share:
        return None
    return baseline + (share - (processes - 1) * baseline) // processes  # (= (share + baseline) / processes)


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


def _rl_backends(shape: Sequence[int]) -> tuple[bool, bool]:
    """Whether the CPU Richardson-Lucy loop on ``shape`` (before rounding to a fast FFT size)
    transforms with FFTW (:func:`deconv3d._fftw.backend_for`) and runs numba's fused passes
    (:func:`deconv3d._rl_ops.fused_planned`, which asks without importing numba)."""
    import torch

    from deconv3d._fft_shapes import fast_shape
    from deconv3d._fftw import backend_for
    from deconv3d._rl_ops import fused_planned

    cpu, fft = torch.device("cpu"), fast_shape(shape)
    return backend_for(fft, cpu, torch.float32) == "fftw", fused_planned(cpu, torch.float32, fft)


def _fft_sizes(shape: Sequence[int]) -> tuple[int, int]:
    from deconv3d._fft_shapes import fast_shape

    fft = fast_shape(shape)
    half = math.prod(fft[:-1]) * (fft[-1] // 2 + 1)
    return math.prod(fft), half


@dataclass(frozen=True)
class MemoryModel:
    """Bytes one block needs for a method (see the module notes for the counts).

    Parameters
    ----------
    method : {"rl", "rl-tv", "wiener", "ssl"}
    psf_shape : tuple of int
    accelerate : bool
        Biggs-Andrews buffers (rl, rl-tv).
    base_channels : int
        UNet width (ssl).
    weights_bytes : int
        Size of the network's parameters (ssl).
    context : int
        Voxels of context around each tile of the region the network predicts (ssl:
        :meth:`~deconv3d.pipeline.methods.NetworkBlock.reach`): the core's tiles, grown by that
        much on every side (taken from the halo, or mirrored at the volume border).
    boundary : str
        RL boundary (rl, rl-tv): ``"reflect"`` mirrors the block before the Bertero model.
    """

    method: str
    psf_shape: tuple
    accelerate: bool = False
    base_channels: int = 16
    weights_bytes: int = 0
    boundary: str = "bertero"
    context: int = 0

    def block_bytes(self, block_shape: Sequence[int], core_shape: Sequence[int] | None = None) -> int:
        """Bytes for one block of ``block_shape`` (core and halo) whose core is ``core_shape``
        (default: the whole block, which has no halo)."""
        block = math.prod(block_shape)
        if self.method in ("rl", "rl-tv"):
            if self.boundary == "reflect":
                block_shape = [n + k - 1 for n, k in zip(block_shape, self.psf_shape)]
                block = math.prod(block_shape)
            fft = [n + k - 1 for n, k in zip(block_shape, self.psf_shape)]
            full, half = _fft_sizes(fft)
            fftw, fused = _rl_backends(fft)
            reals = 4 + (not fftw) + (3 if fused else 5) * bool(self.accelerate)
            reals += (len(block_shape) + 2) * (self.method == "rl-tv")
            total = reals * full * _F32 + 4 * half * _C64 + 2 * block * _F32
            return int(ARRAY_SAFETY * total + BLOCK_OVERHEAD)
        if self.method == "wiener":
            full, half = _fft_sizes([n + 2 * k for n, k in zip(block_shape, self.psf_shape)])
            total = 2 * full * _F32 + 3 * half * _C64 + block * _F32
            return int(ARRAY_SAFETY * total + BLOCK_OVERHEAD)
        if self.method == "ssl":
            # The activations scale with the window the network sees: a tile of the core (all of
            # it when it fits predict_tiled's budget) plus the context on every side. Counted on
            # the block alone, a 2 GB limit was exceeded 2.85 times (context 56 around 88-voxel
            # cores, when the network also mirrored context around the whole block).
            # Per window voxel and channel: 4 full-resolution activations, and the coarser levels'
            # sum(r**l), r = 2 / 2**ndim (channels double as each level halves every axis): 4/3 in
            # 3D, 2 in 2D. Measured with base 16 and context 56 (predict_tiled's peak RSS growth
            # against this count with SAFETY): 16x128x128 0.86, 1536^2 0.80, 1024^2 0.84-0.87, 512^2 0.96-1.02
            # (0.77 with RESIDENT_ALLOWANCE); with 3 + 4/3 in both, 1.02 (3D) and 1.09-1.30 (2D).
            ratio = 2 / 2 ** len(block_shape)
            per_channel = 4 + 1 / (1 - ratio)
            window = _network_window(block_shape if core_shape is None else core_shape, self.context)
            total = 4 * block * _F32 + per_channel * self.base_channels * window * _F32 + self.weights_bytes
        else:
            raise InputError(f"no memory model for method {self.method!r}")
        return int(SAFETY * total)

    def peak_bytes(self, chunks: Sequence[int], halo: Sequence[int], shape: Sequence[int], *,
                   workers: int = 1, baseline: int = 0) -> int:
        """Predicted peak: ``baseline + RESIDENT_ALLOWANCE + workers * block_bytes(largest block)``."""
        from deconv3d.pipeline.chunked import plan_chunks

        core = tuple(max(c) for c in plan_chunks(shape, chunks, halo)[0])
        block = self.block_bytes(largest_block(shape, chunks, halo), core)
        return int(baseline + RESIDENT_ALLOWANCE + workers * block)


def _network_window(core_shape: Sequence[int], context: int) -> int:
    """Voxels of the largest window :func:`deconv3d.selfsup.predict.predict_tiled` feeds the network
    for a block's core: its default tile (the core, or a part of it) plus ``context`` on every side."""
    from deconv3d.selfsup.predict import default_tile_shape

    tile = default_tile_shape(core_shape, 1)
    return math.prod(min(n, t) + 2 * int(context) for n, t in zip(core_shape, tile))


def largest_block(shape, chunks, halo) -> tuple[int, ...]:
    """Largest block (core plus halo on both sides) of the plan :func:`plan_chunks` makes."""
    from deconv3d.pipeline.chunked import plan_chunks

    dask_chunks, depth, _ = plan_chunks(shape, chunks, halo)
    return tuple(min(n, max(c) + 2 * h) for n, c, h in zip(shape, dask_chunks, depth))


def _round_up(size: int, n: int, multiple: int) -> int:
    return min(n, -(-int(size) // multiple) * multiple)


def round_chunks(chunks: Sequence[int], shape: Sequence[int], multiple: int = 1) -> tuple[int, ...]:
    """Each chunk side rounded up to a multiple of ``multiple`` (or to the whole axis)."""
    return tuple(_round_up(c, n, max(1, int(multiple))) for c, n in zip(chunks, shape))


def _candidates(n: int, low: int, multiple: int = 1) -> list[int]:
    """Chunk sizes along an axis: the ceil(n / m) splits for m = 1, 2, ... down to ``low``.

    With ``multiple`` > 1 every size is rounded up to a multiple of it (or to ``n``).
    """
    sizes = {n}
    m = 2
    while True:
        size = _round_up(math.ceil(n / m), n, multiple)
        if size < low:
            break
        sizes.add(size)
        m += 1 if m < 16 else max(1, m // 8)
    return sorted(sizes)


def choose_chunks(shape: Sequence[int], memory_limit: int, model: MemoryModel, halo: Sequence[int], *,
                  workers: int = 1, baseline: int = 0, min_chunk: int = 8, multiple: int = 1,
                  automatic: bool = False, cap: Sequence[int] | None = None, processes: int = 1) -> tuple[int, ...]:
    """The chunk shape that fits ``memory_limit`` with the least total work.

    Among candidate chunk shapes (even splits of every axis, no side below ``min_chunk`` or the
    halo) whose predicted peak fits, it returns the one that minimises the summed FFT volume of
    all blocks, i.e. the largest blocks with the least halo overhead. With ``multiple`` > 1
    (a network's ``2**depth``) every side is a multiple of it or the whole axis. With a ``cap``
    (the stored chunks' largest sides) each candidate is first taken as the run will take it, in
    whole stored chunks (:func:`~deconv3d.pipeline.chunked.sides_in_whole_chunks`), so that the
    peak is predicted for the blocks that run: a side rounded up to whole chunks after the choice
    went over the limit without a word.

    Raises
    ------
    InputError
        If not even the smallest candidate fits; the message says what its block needs, how much
        of that is the program's own (``baseline`` and :data:`RESIDENT_ALLOWANCE`), and suggests a
        limit that would fit it, or for an ``automatic`` limit (:func:`limit_for_available`, each of
        ``processes`` worker processes given an equal share of the free memory, less the program's
        own memory of the others) says that too little memory is free and about how much more to free.
    """
    from deconv3d.pipeline.chunked import plan_chunks, sides_in_whole_chunks

    shape = tuple(int(n) for n in shape)
    multiple = max(1, int(multiple))
    lows = [_round_up(max(min_chunk, h + 1), n, multiple) for n, h in zip(shape, halo)]
    # plan_chunks works axis by axis, so each axis's candidates are planned once here, not once
    # per combination (260 000 combinations for a 2000 x 20000 x 20000 stack): per candidate,
    # (chunk, largest core, largest block as peak_bytes counts it, blocks, padded core side).
    axes = []
    for axis, (n, low, h) in enumerate(zip(shape, lows, halo)):
        options, sides = [], _candidates(n, low, multiple)
        if cap is not None:  # (as the run stores them: one axis's rule does not depend on the others)
            sides = sorted({sides_in_whole_chunks((c,), (n,), (cap[axis],), multiple, (h,))[0] for c in sides})
        for c in sides:
            (sizes,), (depth,), _ = plan_chunks((n,), (c,), (h,))
            options.append((c, max(sizes), min(n, max(sizes) + 2 * depth), len(sizes), max(sizes) + 2 * depth))
        axes.append(options)
    fixed = baseline + RESIDENT_ALLOWANCE
    best, best_cost, smallest, least = None, math.inf, math.inf, tuple(lows)
    for combo in _product(axes):
        chunks, core, block, counts, padded = zip(*combo)
        peak = int(fixed + workers * model.block_bytes(block, core))  # = model.peak_bytes(chunks, ...)
        if peak < smallest:  # (the block named in the message: its sides as the run would take them)
            smallest, least = peak, chunks
        if peak > memory_limit:
            continue
        work = math.prod(counts) * math.prod(padded)
        if work < best_cost:
            best, best_cost = chunks, work
    if best is None:  # what the smallest block needs, and a limit that holds it (with the halo it runs with:
        # none along an axis it spans whole)
        depth = plan_chunks(shape, tuple(least), tuple(halo))[1]
        needs = (f"the smallest block {tuple(least)} with halo {tuple(depth)} needs about {format_bytes(smallest)}, "
                 f"{format_bytes(fixed)} of it the program's own (Python, torch and their libraries)")
        enough = math.ceil(smallest * 1.1)
    if best is None and automatic:  # the limit is AVAILABLE_SHARE of the free memory, or a worker's share of that
        who = "the run" if processes <= 1 else f"each of its {processes} worker processes"
        shared = "" if processes <= 1 else ", less the program's own in the others, shared among them"
        more = (enough - memory_limit) / AVAILABLE_SHARE * max(1, processes)
        # (each of N processes may use (share + baseline) / N: the count whose share holds the block)
        fit = memory_limit * processes // enough if processes > 1 else 0
        fewer = f", run {fit} worker process{'es' if fit > 1 else ''} (--workers {fit})" if fit >= 1 else ""
        raise InputError(f"not enough free memory: {needs}, and {who} may use {format_bytes(memory_limit)} "
                         f"({AVAILABLE_SHARE:.0%} of what is available{shared}): free about {format_bytes(more)} "
                         f"more (close other programs){fewer} or run it on a machine with more")
    if best is None:
        raise InputError(f"memory limit {format_bytes(memory_limit)} is too small: {needs}: use --memory-limit "
                         f"{format_bytes(enough)} or more" + (" or fewer --workers" if workers > 1 else ""))
    return tuple(best)


def _product(axes):
    import itertools

    return itertools.product(*axes)
