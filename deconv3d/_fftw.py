"""Real FFTs at one fixed shape into fixed buffers, for the CPU Richardson-Lucy loop.

Two backends behind one small interface (:func:`real_transforms`):

* ``torch``: ``torch.fft.rfftn``/``irfftn`` with ``out=`` buffers (any device).
* ``fftw``: FFTW through pyFFTW (the optional extra ``deconv3d[fftw]``), CPU only. FFTW
  plans a transform for one shape by timing candidate algorithms (``FFTW_MEASURE``): on the
  2-core machine of ``benchmarks/bench_rl.py`` an rfftn+irfftn pair at 80 x 280 x 280 takes
  about 27 ms against 38 ms for torch's MKL, which also copies the spectrum before every
  inverse (MKL's complex-to-real transform destroys its input). Planning costs about 1.4 s
  for that shape, once: the plans ("wisdom") are kept on disk and reused by every later run
  on the machine. Small transforms stay on torch, where planning would cost more than it saves.

pyFFTW bundles FFTW, which is GPL-licensed; deconv3d itself is BSD-3 and runs without it.

Environment:

``DECONV3D_FFT``
    ``auto`` (default: FFTW for CPU transforms of at least :data:`FFTW_MIN_VOXELS` voxels
    when pyFFTW is installed), ``torch`` or ``fftw`` (any size; an error if not installed).
``DECONV3D_CACHE_DIR``
    Where the wisdom file lives (default ``$XDG_CACHE_HOME/deconv3d`` or ``~/.cache/deconv3d``).
"""

from __future__ import annotations

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

from deconv3d.errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "fftw")
FFTW_MIN_VOXELS = 1 << 19  # below this torch's FFT is a few ms and planning would not pay off
PLANNING_TIME_LIMIT = 30.0  # seconds per plan: FFTW keeps the best plan found by then
_WISDOM_MAGIC = b"deconv3d-fftw-wisdom-1\n"
_lock = threading.Lock()
_wisdom_loaded = False


def fftw_available() -> bool:
    """Whether pyFFTW is installed (``pip install deconv3d[fftw]``); it is not imported here."""
    return importlib.util.find_spec("pyfftw") is not None


def _pyfftw():
    """pyFFTW, imported on first use: its import pulls in dask and takes about 0.6 s."""
    import pyfftw

    return pyfftw


def backend_for(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> str:
    """``"fftw"`` or ``"torch"`` for transforms of ``shape`` on ``device``, per ``DECONV3D_FFT``."""
    choice = os.environ.get("DECONV3D_FFT", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise InputError(f"DECONV3D_FFT={choice!r} is not one of {', '.join(BACKENDS)}: unset it or pick one")
    usable = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    if choice == "fftw":
        if not fftw_available():
            raise InputError("DECONV3D_FFT=fftw but pyFFTW is not installed: pip install 'deconv3d[fftw]'")
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

    def __init__(self, shape: Sequence[int], n_inputs: int, device: torch.device, dtype: torch.dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dims = tuple(range(len(self.shape)))
        like = dict(device=device, dtype=dtype)
        self.inputs = [torch.zeros(self.shape, **like) for _ in range(n_inputs)]
        self.spectrum = torch.fft.rfftn(self.inputs[0])  # allocates the half spectrum
        self.output = torch.empty(self.shape, **like)
        self.scale = 1.0  # the inverse is normalised already

    def forward(self, i: int = 0) -> None:
        torch.fft.rfftn(self.inputs[i], s=self.shape, dim=self.dims, out=self.spectrum)

    def inverse(self) -> None:
        torch.fft.irfftn(self.spectrum, s=self.shape, dim=self.dims, out=self.output)


class FFTWTransforms:
    """The same interface on FFTW plans; the inverse is unnormalised (multiply by ``scale``).

    The arrays are SIMD-aligned numpy arrays viewed as torch tensors (shared memory), so the
    element-wise work between transforms stays in torch, multi-threaded, with no copies.
    """

    backend = "fftw"

    def __init__(self, shape: Sequence[int], n_inputs: int, dtype: torch.dtype, threads: int | None = None):
        pyfftw = _pyfftw()
        self.shape = tuple(int(s) for s in shape)
        real = "float32" if dtype == torch.float32 else "float64"
        cplx = "complex64" if dtype == torch.float32 else "complex128"
        half = self.shape[:-1] + (self.shape[-1] // 2 + 1,)
        threads = max(1, int(threads or torch.get_num_threads()))
        axes = tuple(range(len(self.shape)))
        real_in = [pyfftw.empty_aligned(self.shape, dtype=real) for _ in range(n_inputs)]
        spectrum = pyfftw.empty_aligned(half, dtype=cplx)
        output = pyfftw.empty_aligned(self.shape, dtype=real)
        flags = (_planner(),)
        with _lock:
            _load_wisdom(pyfftw)
            start = time.perf_counter()
            # Planning may write into the arrays: they are zeroed afterwards.
            self._forward = [pyfftw.FFTW(a, spectrum, axes=axes, threads=threads, flags=flags,
                                         planning_timelimit=PLANNING_TIME_LIMIT) for a in real_in]
            self._inverse = pyfftw.FFTW(spectrum, output, axes=axes, direction="FFTW_BACKWARD",
                                        threads=threads, flags=flags + ("FFTW_DESTROY_INPUT",),
                                        planning_timelimit=PLANNING_TIME_LIMIT)
            took = time.perf_counter() - start
            if took > 0.05:  # new plans were measured: keep them for the next run
                log.info("planned FFTW transforms for %s in %.1f s", self.shape, took)
                _save_wisdom(pyfftw)
        for a in real_in:
            a.fill(0)
        self.inputs = [torch.from_numpy(a) for a in real_in]
        self.spectrum = torch.from_numpy(spectrum)
        self.output = torch.from_numpy(output)
        self.scale = 1.0 / math.prod(self.shape)

    def forward(self, i: int = 0) -> None:
        self._forward[i].execute()

    def inverse(self) -> None:
        self._inverse.execute()


def real_transforms(shape: Sequence[int], n_inputs: int, device: torch.device, dtype: torch.dtype):
    """:class:`FFTWTransforms` or :class:`TorchTransforms` for ``shape``, per :func:`backend_for`."""
    if backend_for(shape, device, dtype) == "fftw":
        return FFTWTransforms(shape, n_inputs, dtype)
    return TorchTransforms(shape, n_inputs, device, dtype)


def _planner() -> str:
    effort = os.environ.get("DECONV3D_FFTW_PLANNER", "measure").strip().lower()
    flag = {"estimate": "FFTW_ESTIMATE", "measure": "FFTW_MEASURE", "patient": "FFTW_PATIENT"}.get(effort)
    if flag is None:
        raise InputError(f"DECONV3D_FFTW_PLANNER={effort!r} is not estimate, measure or patient: unset it")
    return flag


def wisdom_path() -> str:
    """The wisdom file for this CPU model (plans measured on one CPU may be slow on another)."""
    base = os.environ.get("DECONV3D_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "deconv3d")
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
    global _wisdom_loaded
    if _wisdom_loaded:
        return
    _wisdom_loaded = True
    try:
        with open(wisdom_path(), "rb") as f:
            blob = f.read()
    except OSError:
        return
    parts = _unpack(blob)
    if parts is not None:
        pyfftw.import_wisdom(parts)


def _save_wisdom(pyfftw) -> None:
    """Write all wisdom this process holds, atomically; an unwritable cache is skipped."""
    path = wisdom_path()
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fftw-wisdom-", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            f.write(_pack(pyfftw.export_wisdom()))
        os.replace(tmp, path)
    except OSError as exc:
        log.info("could not save FFTW wisdom to %s: %s", path, exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


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
