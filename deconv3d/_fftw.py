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
  a shape is measured only once it proves to recur
  (:data:`~deconv3d._fftw_planning.RECUR_IN_PROCESS`): met by an earlier run on this machine
  (the sizes met are kept next to the wisdom), or many times in this one; before that it gets
  FFTW's estimated plans at once, which keep about 90 % of the gain over torch (98 against 86
  ms per iteration measured, 199 for torch, at 126 x 300 x 300). A run measures no further
  plans once it has measured for :data:`~deconv3d._fftw_planning.MEASURE_BUDGET` seconds (the
  rest get estimated plans, and later runs measure them), so a rerun costs at most a few
  seconds and one plan's measuring more than the first: measuring every plan of every block
  shape at once made the second run of a chunked command cost 3.7 times the first (43 against
  11.7 s of CPU). What a run is: :func:`~deconv3d._fftw_planning.measuring_run`.
  ``DECONV3D_FFTW_PLANNER=measure`` measures every shape at once (a benchmark).
  Small transforms stay on torch, where even that would cost more than it saves.

This module chooses the backend and holds the two transform classes; FFTW's plans are made by
:mod:`deconv3d._fftw_planning`, and the wisdom file is kept by :mod:`deconv3d._fftw_wisdom`.

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
import math
from typing import Sequence

import torch

from deconv3d._env_choice import env_choice
from deconv3d._fft_shapes import irfftn
from deconv3d._fftw_planning import make_plans, measuring_run, plan_policy, planner_choice
from deconv3d._fftw_wisdom import load_wisdom, wisdom_lock, wisdom_set_aside

BACKENDS = ("auto", "torch", "fftw")
FFTW_MIN_VOXELS = 1 << 19  # below this torch's FFT is a few ms and planning would not pay off


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
        with measuring_run(), wisdom_lock:  # a run of its own unless inside one (measuring_run)
            estimate = planner_choice() == "estimate"
            if not estimate:
                load_wisdom(pyfftw)
            threads = max(1, int(threads or torch.get_num_threads()))
            with wisdom_set_aside(pyfftw) if estimate else contextlib.nullcontext():
                self._forward, self._inverse = make_plans(pyfftw, plan_policy(self.shape, real), threads, real_in,
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



def _extent(e, shape) -> tuple[int, ...]:
    if e is None:
        return tuple(shape)
    e = tuple(int(v) for v in e)
    if len(e) != len(shape) or not all(0 < v <= s for v, s in zip(e, shape)):
        raise ValueError(f"extent {e} does not fit in the transform shape {tuple(shape)}")
    return e


def real_transforms(shape: Sequence[int], n_inputs: int, device: torch.device, dtype: torch.dtype,
                    input_extents=None, output_extents=None):
    """:class:`FFTWTransforms` or :class:`TorchTransforms` for ``shape``, per :func:`backend_for`.

    ``input_extents``/``output_extents``: see :class:`FFTWTransforms` (torch ignores them).
    """
    if backend_for(shape, device, dtype) == "fftw":
        return FFTWTransforms(shape, n_inputs, dtype, input_extents=input_extents,
                              output_extents=output_extents)
    return TorchTransforms(shape, n_inputs, device, dtype, input_extents, output_extents)
