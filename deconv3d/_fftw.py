"""Real FFTs at one fixed shape into fixed buffers, for the CPU Richardson-Lucy loop.

Two backends behind one small interface (:func:`real_transforms`):

* ``torch``: ``torch.fft.rfftn``/``irfftn`` with ``out=`` buffers (any device).
* ``fftw``: FFTW through pyFFTW (the optional extra ``deconv3d[fftw]``), CPU only. FFTW
  can plan a transform for one shape by timing candidate algorithms (``FFTW_MEASURE``): on the
  2-core machine of ``benchmarks/bench_rl.py`` an rfftn+irfftn pair at 80 x 280 x 280 takes
  about 27 ms against 38 ms for torch's MKL, which also copies the spectrum before every
  inverse (MKL's complex-to-real transform destroys its input). Measured plans ("wisdom")
  are kept on disk and reused by every later run on the machine, but measuring costs 1.4 s
  for that shape and 5-20 s for a 126 x 300 x 300 one, per shape: 57-81 % of a first
  20-iteration run, repaid only after 3-6 runs of the same shape. So by default (``auto``)
  a shape is measured only once it proves to recur (:data:`RECUR_IN_PROCESS`): met by an
  earlier run on this machine (the sizes met are kept next to the wisdom), or many times in
  this one; before that it gets FFTW's estimated plans at once, which keep about 90 % of the
  gain over torch (98 against 86 ms per iteration measured, 199 for torch, at 126 x 300 x
  300). A run measures no further plans once it has measured for :data:`MEASURE_BUDGET`
  seconds (the rest get estimated plans, and later runs measure them), so a rerun costs at most
  a few seconds and one plan's measuring more than the first: measuring every plan of every
  block shape at once made the second run of a chunked command cost 3.7 times the first (43
  against 11.7 s of CPU). What a run is: :func:`measuring_run`. ``DECONV3D_FFTW_PLANNER=measure``
  measures every shape at once (a benchmark).
  Small transforms stay on torch, where even that would cost more than it saves.

pyFFTW bundles FFTW, which is GPL-licensed; deconv3d itself is BSD-3 and runs without it.

Environment:

``DECONV3D_FFT``
    ``auto`` (default: FFTW for CPU transforms of at least :data:`FFTW_MIN_VOXELS` voxels
    when pyFFTW is installed), ``torch`` or ``fftw`` (any size; an error if not installed).
``DECONV3D_FFTW_PLANNER``
    ``auto`` (default: measured plans for recurring sizes, within a budget per run, else estimated
    ones), ``estimate``, ``measure`` or ``patient`` (FFTW's planner flags; the last two time
    candidates and keep the winners). ``estimate`` neither reads nor writes the wisdom and sets
    aside the plans this process holds (FFTW would reuse measured ones), so its runs give the same
    bits whatever earlier runs measured.
``DECONV3D_CACHE_DIR``
    Where the wisdom file lives (default ``$XDG_CACHE_HOME/deconv3d`` or ``~/.cache/deconv3d``).
    ``~`` is expanded in both; a relative ``XDG_CACHE_HOME`` is ignored (as the XDG specification
    says), and where the folder is still relative (or names a home folder that is not known) nothing
    is cached: a relative one was created in every working directory (``./~/dc``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import platform
import struct
import tempfile
import threading
import time
from typing import Sequence

import torch

from deconv3d._env_choice import env_choice
from deconv3d._fft_shapes import irfftn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "fftw")
FFTW_MIN_VOXELS = 1 << 19  # below this torch's FFT is a few ms and planning would not pay off
PLANNING_TIME_LIMIT = 10.0  # seconds per plan (several per run): FFTW keeps the best plan found by then
_WISDOM_MAGIC = b"deconv3d-fftw-wisdom-1\n"
_lock = threading.Lock()
_wisdom_loaded = False
_wisdom_on_disk: tuple = ()  # what the file held when loaded, or what this process last wrote


@functools.lru_cache(maxsize=None)
def fftw_available() -> bool:
    """Whether pyFFTW is installed (``pip install deconv3d[fftw]``); it is not imported here.

    Looked up once per process: the lookup searches ``sys.path`` (0.15 ms), and the memory
    planner asks once per candidate block (78 000 times, 12 s, for a 2000 x 20000 x 20000 stack).
    """
    return importlib.util.find_spec("pyfftw") is not None


def _pyfftw():
    """pyFFTW, imported on first use: its import pulls in dask and takes about 0.6 s."""
    import pyfftw

    return pyfftw


def fft_choice() -> str:
    """``DECONV3D_FFT`` (one of :data:`BACKENDS`); an InputError for another value, or for ``fftw``
    without pyFFTW. The command line checks it at start-up (with :func:`planner_choice`)."""
    return env_choice("DECONV3D_FFT", BACKENDS,
                      {"fftw": (fftw_available, "pyFFTW is not installed: pip install 'deconv3d[fftw]'")})


def backend_for(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> str:
    """``"fftw"`` or ``"torch"`` for transforms of ``shape`` on ``device``, per ``DECONV3D_FFT``."""
    choice = fft_choice()
    usable = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    if choice == "fftw":
        return "fftw" if usable else "torch"
    if choice == "torch" or not usable or not fftw_available():
        return "torch"
    return "fftw" if math.prod(shape) >= FFTW_MIN_VOXELS else "torch"


class TorchTransforms:
    """``inputs[i] -> spectrum`` (rfftn) and ``spectrum -> output`` (irfftn, normalised) with torch.

    ``inputs`` are zero-filled arrays of the FFT shape: callers write into a region of them
    and leave the margins at zero, so no zero-padded copy is made per transform.
    """

    backend = "torch"

    def __init__(self, shape: Sequence[int], n_inputs: int, device: torch.device, dtype: torch.dtype,
                 input_extents=None, output_extents=None):
        # The extents only allow work to be skipped; torch transforms everything.
        self.shape = tuple(int(s) for s in shape)
        self.dims = tuple(range(len(self.shape)))
        like = dict(device=device, dtype=dtype)
        self.inputs = [torch.zeros(self.shape, **like) for _ in range(n_inputs)]
        self.spectrum = torch.fft.rfftn(self.inputs[0])  # allocates the half spectrum
        self.output = torch.empty(self.shape, **like)
        self.scale = 1.0  # the inverse is normalised already

    def forward(self, i: int = 0) -> None:
        torch.fft.rfftn(self.inputs[i], s=self.shape, dim=self.dims, out=self.spectrum)

    def inverse(self, j: int = 0) -> None:
        irfftn(self.spectrum, self.shape, self.dims, out=self.output)


class FFTWTransforms:
    """The same interface on FFTW plans; the inverse is unnormalised (multiply by ``scale``).

    The arrays are SIMD-aligned numpy arrays viewed as torch tensors (shared memory), so the
    element-wise work between transforms stays in torch, multi-threaded, with no copies.

    Pruned transforms: ``input_extents[i]`` is the box ``[0, e)`` outside which input ``i`` is
    always zero, and ``output_extents[j]`` the box that the caller reads after ``inverse(j)``
    (the rest of ``output`` is then undefined). Where a box is smaller than the FFT shape the
    transform is taken one axis at a time, last axis first, and rows that are all zero are not
    transformed; the inverse likewise skips rows that only feed unread output. For a 64 x 256
    x 256 image in an 80 x 280 x 280 transform this does about 80% of the work of a full pair.
    """

    backend = "fftw"

    def __init__(self, shape: Sequence[int], n_inputs: int, dtype: torch.dtype, threads: int | None = None,
                 input_extents=None, output_extents=None):
        pyfftw = _pyfftw()
        self.shape = tuple(int(s) for s in shape)
        real = "float32" if dtype == torch.float32 else "float64"
        cplx = "complex64" if dtype == torch.float32 else "complex128"
        half = self.shape[:-1] + (self.shape[-1] // 2 + 1,)
        in_ext = [_extent(e, self.shape) for e in (input_extents or [None] * n_inputs)]
        out_ext = [_extent(e, self.shape) for e in (output_extents or [None])]
        if len(in_ext) != n_inputs:
            raise ValueError(f"{len(in_ext)} input extents for {n_inputs} inputs")
        real_in = [pyfftw.empty_aligned(self.shape, dtype=real) for _ in range(n_inputs)]
        spectrum = pyfftw.empty_aligned(half, dtype=cplx)
        output = pyfftw.empty_aligned(self.shape, dtype=real)
        with measuring_run(), _lock:  # a run of its own unless inside one (measuring_run)
            estimate = planner_choice() == "estimate"
            if not estimate:
                _load_wisdom(pyfftw)
            threads = max(1, int(threads or torch.get_num_threads()))
            with _wisdom_set_aside(pyfftw) if estimate else contextlib.nullcontext():
                self._forward, self._inverse = _make_plans(pyfftw, _policy(self.shape, real), threads, real_in,
                                                           spectrum, output, in_ext, out_ext)
        for a in real_in:
            a.fill(0)
        self.inputs = [torch.from_numpy(a) for a in real_in]
        self.spectrum = torch.from_numpy(spectrum)
        self.output = torch.from_numpy(output)
        self.scale = 1.0 / math.prod(self.shape)

    def forward(self, i: int = 0) -> None:
        zero, passes = self._forward[i]
        for region in zero:
            region.fill(0)
        for p in passes:
            p.execute()

    def inverse(self, j: int = 0) -> None:
        for p in self._inverse[j]:
            p.execute()


def _make_plans(pyfftw, policy: tuple, threads: int, real_in, spectrum, output, in_ext, out_ext):
    """The forward and inverse passes of :class:`FFTWTransforms`, planned per ``policy``
    (:func:`_policy`); call with the lock held. Saves the wisdom when plans were measured."""
    plan = _Planner(pyfftw, *policy, threads)
    # Planning may write into the arrays: the caller zeroes them afterwards.
    forward = [_forward_passes(plan, a, spectrum, e) for a, e in zip(real_in, in_ext)]
    inverse = [_inverse_passes(plan, spectrum, output, e) for e in out_ext]
    if policy[0] == _PLANS["estimate"]:
        return forward, inverse  # nothing measured, and the file is left out of estimate runs
    if tuple(pyfftw.export_wisdom()) != _wisdom_on_disk:  # new plans were measured: keep them for the next run
        log.info("planned FFTW transforms for %s in %.1f s", tuple(output.shape), plan.took)
        _save_wisdom(pyfftw)
    return forward, inverse


@contextlib.contextmanager
def _wisdom_set_aside(pyfftw):
    """Plan with no wisdom held, then restore it (call with :data:`_lock` held). FFTW takes a plan
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


class _Planner:
    """Makes the FFTW plans of one transform: with ``flags``, or where they are None (or measuring
    is ``budgeted`` and the run has spent :data:`MEASURE_BUDGET`) with the measured plan that
    the wisdom holds, else an estimated one. The budget is checked plan by plan (a pruned pass
    each: 8 for RL's workspace), each measured to its end once begun (see MEASURE_BUDGET)."""

    def __init__(self, pyfftw, flags, budgeted: bool, threads: int):
        self.pyfftw, self.flags, self.budgeted, self.threads = pyfftw, flags, budgeted, threads
        self.took = 0.0  # seconds spent measuring

    def __call__(self, source, target, axes, direction="FFTW_FORWARD", destroy=False):
        global _measured_s
        make = functools.partial(self.pyfftw.FFTW, source, target, axes=axes, direction=direction,
                                 threads=self.threads, planning_timelimit=PLANNING_TIME_LIMIT)
        extra = ("FFTW_DESTROY_INPUT",) if destroy else ()
        flags = None if self.budgeted and _measured_s >= MEASURE_BUDGET else self.flags
        if flags is None:
            try:
                return make(flags=("FFTW_MEASURE", "FFTW_WISDOM_ONLY") + extra)
            except RuntimeError:  # no measured plan kept for this one
                return make(flags=("FFTW_ESTIMATE",) + extra)
        start = _clock()
        try:
            return make(flags=flags + extra)
        finally:
            if flags != _PLANS["estimate"]:  # (a plan measured already costs microseconds: it is in the wisdom)
                took = _clock() - start
                self.took += took
                _measured_s += took


def _extent(e, shape) -> tuple[int, ...]:
    if e is None:
        return tuple(shape)
    e = tuple(int(v) for v in e)
    if len(e) != len(shape) or not all(0 < v <= s for v, s in zip(e, shape)):
        raise ValueError(f"extent {e} does not fit in the transform shape {tuple(shape)}")
    return e


def _pruned_axes(e, shape) -> int:
    """The first axis ``k`` from which every axis but the last is whole: axes ``k..`` go in one plan."""
    k = len(shape) - 1
    while k > 0 and e[k - 1] == shape[k - 1]:
        k -= 1
    return k


def _forward_passes(plan, real, spectrum, e):
    """(spectrum regions to zero, plans) for an rfftn of ``real``, which is zero outside ``[0, e)``."""
    n = len(e)
    k = _pruned_axes(e, spectrum.shape)
    lead = tuple(slice(0, v) for v in e[:k])
    passes = [plan(real[lead], spectrum[lead], axes=tuple(range(k, n)))]
    zero = []
    for j in range(k - 1, -1, -1):
        before = tuple(slice(0, v) for v in e[:j])
        zero.append(spectrum[before + (slice(e[j], None),)])  # never written by the passes above
        view = spectrum[before]
        passes.append(plan(view, view, axes=(j,)))
    return [z for z in zero if z.size], passes


def _inverse_passes(plan, spectrum, output, e):
    """Plans for an irfftn into ``output`` that is exact inside ``[0, e)``; destroys ``spectrum``."""
    n = len(e)
    k = _pruned_axes(e, spectrum.shape)
    passes = []
    for j in range(k):
        view = spectrum[tuple(slice(0, v) for v in e[:j])]
        passes.append(plan(view, view, axes=(j,), direction="FFTW_BACKWARD"))
    lead = tuple(slice(0, v) for v in e[:k])
    passes.append(plan(spectrum[lead], output[lead], axes=tuple(range(k, n)), direction="FFTW_BACKWARD",
                       destroy=True))
    return passes


def real_transforms(shape: Sequence[int], n_inputs: int, device: torch.device, dtype: torch.dtype,
                    input_extents=None, output_extents=None):
    """:class:`FFTWTransforms` or :class:`TorchTransforms` for ``shape``, per :func:`backend_for`.

    ``input_extents``/``output_extents``: see :class:`FFTWTransforms` (torch ignores them).
    """
    if backend_for(shape, device, dtype) == "fftw":
        return FFTWTransforms(shape, n_inputs, dtype, input_extents=input_extents,
                              output_extents=output_extents)
    return TorchTransforms(shape, n_inputs, device, dtype, input_extents, output_extents)


#: The FFTW flags of each ``DECONV3D_FFTW_PLANNER`` setting; ``auto`` picks them per size (:func:`_policy`).
_PLANS = {"auto": None, "estimate": ("FFTW_ESTIMATE",), "measure": ("FFTW_MEASURE",), "patient": ("FFTW_PATIENT",)}


#: ``auto`` plans a transform size thoroughly (``FFTW_MEASURE``) once it has proved to recur: met
#: by an earlier process on this machine, or this many times in this one (the blocks of a large
#: volume). Measuring costs about as much as 25-75 block runs save at 12 % per iteration.
RECUR_IN_PROCESS = 50
#: ``auto`` never measures transforms larger than this: measuring grows faster than the gain (the
#: second rl-tv run on a 30 x 1024 x 1024 stack, 44 x 1056 x 1056 transforms, spent 235 s of 255
#: measuring, to save about 12 % of 2 s per iteration).
MEASURE_MAX_VOXELS = 1 << 24
#: Seconds of measuring after which a run (:func:`measuring_run`) measures no further plans for
#: sizes that earlier processes met: those get the measured plans kept in the wisdom, else estimated
#: ones, and later runs measure them. Without it the second run of a chunked command measured every
#: plan of its 4 transform sizes: 43 s of CPU against 11.7 s for the first, 31 s of it measuring.
#: Checked plan by plan (RL's transforms have 8, each measured to its end once begun: cut short by a
#: smaller :data:`PLANNING_TIME_LIMIT`, a plan is kept in a form ``FFTW_WISDOM_ONLY`` does not find),
#: so a run goes over it by one plan at most. On a loaded 2-core machine the runs after the first of a
#: 96 x 384 x 384 command in 9 blocks (4 transform sizes, 8 plans each) then cost 12-20 s of CPU
#: against 10 s for the first, measuring a few plans each, where the second had cost 40 s. Sizes
#: recurring within this process (:data:`RECUR_IN_PROCESS`) repay measuring in the run itself, and
#: ``DECONV3D_FFTW_PLANNER=measure`` measures everything: neither is held to it.
MEASURE_BUDGET = 3.0
_measured_s = 0.0  # seconds the current run has spent planning with FFTW_MEASURE
_runs = {"open": 0, "key": None}  # the runs open in this process, and the key of the first to open
_runs_lock = threading.Lock()
_clock = time.perf_counter
_met: dict = {}  # transform sizes met in this process, and how often
_met_before: frozenset = frozenset()  # sizes that earlier processes met (read with the wisdom)
_remembered: set = set()  # sizes this process has added to the file


@contextlib.contextmanager
def measuring_run(key: str | None = None):
    """One run, as :data:`MEASURE_BUDGET` counts them: within, FFTW's measuring shares one budget.

    It starts afresh when a run opens with none open in the process, unless it names the ``key``
    of the run before: a run's blocks on a cluster's worker, which open one each, share one (the
    key names the run: one :func:`~deconv3d.pipeline.chunked.run_blocks` call, a time point and
    channel). Runs opened inside another (a chunked run's blocks and measuring box), or while
    another is open (two runs in a GUI's threads), share its budget. What opens one: any
    Richardson-Lucy call (its transforms), :func:`deconv3d.pipeline.run_chunked` (so each input of
    ``deconvolve_file`` or a batch) and :func:`~deconv3d.pipeline.chunked.run_blocks`, and a
    :func:`~deconv3d.pipeline.graph.blockwise` graph's blocks (keyed). The budget used to be the
    process's: in a notebook, or on a persistent dask worker, the runs after the first few never
    measured again."""
    global _measured_s
    with _runs_lock:
        if _runs["open"] == 0:
            if key is None or key != _runs["key"]:
                _measured_s = 0.0
            _runs["key"] = key
        _runs["open"] += 1
    try:
        yield
    finally:
        with _runs_lock:
            _runs["open"] -= 1


def _policy(shape, real: str) -> tuple:
    """How to plan a transform of ``shape`` (call with the lock held): the FFTW flags (None: the
    measured plans kept for it, else estimated ones) and whether measuring is held to
    :data:`MEASURE_BUDGET`."""
    effort = planner_choice()
    if effort != "auto":
        return _PLANS[effort], False
    key = "x".join(str(n) for n in shape) + ":" + real
    _met[key] = _met.get(key, 0) + 1
    if key not in _met_before and key not in _remembered:
        _remember_size(key)
    if math.prod(shape) > MEASURE_MAX_VOXELS:  # kept measured plans are still used (WISDOM_ONLY)
        return None, False
    if _met[key] >= RECUR_IN_PROCESS:
        return _PLANS["measure"], False  # repaid within this run
    if key in _met_before:
        return _PLANS["measure"], True  # quick where the measured plans are kept already
    return None, False


def _sizes_path() -> str | None:
    path = wisdom_path()
    return None if path is None else path[:-len(".bin")] + "-sizes.txt"


def _remember_size(key: str) -> None:
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


def planner_choice() -> str:
    """``DECONV3D_FFTW_PLANNER`` (a key of :data:`_PLANS`); an InputError for another value. Checked
    only where FFTW plans a transform, so the command line checks it at start-up too."""
    return env_choice("DECONV3D_FFTW_PLANNER", _PLANS)


def wisdom_path() -> str | None:
    """The wisdom file for this CPU model (plans measured on one CPU may be slow on another); None
    where no absolute cache folder can be told (see the module's ``DECONV3D_CACHE_DIR``)."""
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


def _load_wisdom(pyfftw) -> None:
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


def _save_wisdom(pyfftw) -> None:
    """Write the wisdom this process holds, with the plans the file holds now (saved by other
    processes since it was read) added to it, atomically; an unwritable cache is skipped. The
    read, merge and replace hold a lock on a file beside it (:func:`_locked`): two runs that saved
    at once each wrote only their own, and the second kept none of the first's 93 plans. Call with
    :data:`_lock` held (the merge goes through this process's wisdom)."""
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
    process's :data:`_lock` (every transform waiting) for as long as the other held the file."""
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
