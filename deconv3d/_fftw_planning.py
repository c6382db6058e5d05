"""How FFTW's plans are made for :class:`deconv3d._fftw.FFTWTransforms`: the planner setting
(``DECONV3D_FFTW_PLANNER``, :func:`planner_choice`), the ``auto`` policy that measures a transform
size only once it recurs (:func:`plan_policy`), the measuring budget of a run (:data:`MEASURE_BUDGET`,
:func:`measuring_run`), and the pruned passes (one axis at a time, skipping rows that are all zero
or never read) that a transform's forward and inverse plans are made of (:func:`make_plans`). The
wisdom those plans are kept in, and the sizes met before, are read and written by
:mod:`deconv3d._fftw_wisdom`; :mod:`deconv3d._fftw` describes the whole backend."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time

from deconv3d import _fftw_wisdom
from deconv3d._env_choice import env_choice

log = logging.getLogger("deconv3d._fftw")  # the backend's one logger, as before _fftw.py was split

PLANNING_TIME_LIMIT = 10.0  # seconds per plan (several per run): FFTW keeps the best plan found by then


def make_plans(pyfftw, policy: tuple, threads: int, real_in, spectrum, output, in_ext, out_ext):
    """The forward and inverse passes of :class:`~deconv3d._fftw.FFTWTransforms`, planned per ``policy``
    (:func:`plan_policy`); call with the wisdom lock held. Saves the wisdom when plans were measured."""
    plan = _Planner(pyfftw, *policy, threads)
    # Planning may write into the arrays: the caller zeroes them afterwards.
    forward = [_forward_passes(plan, a, spectrum, e) for a, e in zip(real_in, in_ext)]
    inverse = [_inverse_passes(plan, spectrum, output, e) for e in out_ext]
    if policy[0] == _PLANS["estimate"]:
        return forward, inverse  # nothing measured, and the file is left out of estimate runs
    # New plans were measured: keep them for the next run.
    if tuple(pyfftw.export_wisdom()) != _fftw_wisdom._wisdom_on_disk:
        log.info("planned FFTW transforms for %s in %.1f s", tuple(output.shape), plan.took)
        _fftw_wisdom.save_wisdom(pyfftw)
    return forward, inverse


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


#: The FFTW flags of each ``DECONV3D_FFTW_PLANNER`` setting; ``auto`` picks them per size (:func:`plan_policy`).
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


def plan_policy(shape, real: str) -> tuple:
    """How to plan a transform of ``shape`` (call with the wisdom lock held): the FFTW flags (None:
    the measured plans kept for it, else estimated ones) and whether measuring is held to
    :data:`MEASURE_BUDGET`."""
    effort = planner_choice()
    if effort != "auto":
        return _PLANS[effort], False
    key = "x".join(str(n) for n in shape) + ":" + real
    _met[key] = _met.get(key, 0) + 1
    if key not in _fftw_wisdom._met_before and key not in _fftw_wisdom._remembered:
        _fftw_wisdom.remember_size(key)
    if math.prod(shape) > MEASURE_MAX_VOXELS:  # kept measured plans are still used (WISDOM_ONLY)
        return None, False
    if _met[key] >= RECUR_IN_PROCESS:
        return _PLANS["measure"], False  # repaid within this run
    if key in _fftw_wisdom._met_before:
        return _PLANS["measure"], True  # quick where the measured plans are kept already
    return None, False


def planner_choice() -> str:
    """``DECONV3D_FFTW_PLANNER`` (a key of :data:`_PLANS`); an InputError for another value. Checked
    only where FFTW plans a transform, so the command line checks it at start-up too."""
    return env_choice("DECONV3D_FFTW_PLANNER", _PLANS)
