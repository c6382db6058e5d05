"""What besides the parameters sets a run's last bits: the device, threads, FFT backend, fused
element-wise passes and versions it ran with, for the provenance of outputs and of the checkpoints of trained networks
(which the numeric core writes, so this lives beside it rather than in the pipeline)."""

from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence

import numpy as np

from deconv3d._env_choice import env_value


def run_environment(device="cpu", fft_shapes: Optional[Iterable[Sequence[int]]] = ()) -> dict:
    """What besides the parameters sets a run's last bits, for its provenance: the device it ran on,
    torch's thread count, the FFT backend its transforms used (:func:`fft_record`; none for
    ``fft_shapes=None``, a run without FFTs), the backend of its Richardson-Lucy loops' element-wise
    passes (:func:`fused_record`; none for a run without such loops, whose ``fft_shapes`` are
    empty), and the versions of Python, numpy and torch. Records written before ``fused`` was
    recorded lack it and ``numba`` (which backend such a run used is not known)."""
    import platform

    import torch

    from deconv3d._tensors import resolve_device

    device = resolve_device(device)
    record = {"device": str(device), "threads": torch.get_num_threads(),
              "python": platform.python_version(), "numpy": np.__version__,
              "torch": str(torch.__version__)}  # (a str subclass, which a safe checkpoint load refuses)
    return record if fft_shapes is None else {**record, **transforms_record(device, fft_shapes)}


#: The keys of :func:`transforms_record` (a chunked run's blocks replace those of its whole-volume plan).
TRANSFORMS_KEYS = ("fft", "fftw_planner", "fused", "numba")


def transforms_record(device, fft_shapes: Iterable[Sequence[int]] = ()) -> dict:
    """The FFT backend (:func:`fft_record`) and element-wise passes (:func:`fused_record`) of a run
    whose Richardson-Lucy transforms had ``fft_shapes``."""
    shapes = list(fft_shapes)
    return {**fft_record(device, shapes), **fused_record(device, shapes)}


def fused_record(device, fft_shapes: Iterable[Sequence[int]] = ()) -> dict:
    """The backend of the element-wise passes of a run's Richardson-Lucy loops (``fused``), which
    :func:`deconv3d._rl_ops.ops_for` picks: ``numba`` (its kernels, with numba's version as
    ``numba``) or ``torch``; ``(auto)`` follows one chosen by ``DECONV3D_FUSED=auto`` (numba where it
    is installed and loads, for float32 on the CPU and FFTs of ``FUSED_MIN_VOXELS`` or more: a run
    whose loops had both sizes records ``numba and torch``). The two round differently: 20 accelerated
    iterations were 1.2e-5 of the maximum apart, with records that were the same. Empty for a run
    without Richardson-Lucy loops (no ``fft_shapes``: Wiener, a network without a reference)."""
    import importlib

    import torch

    from deconv3d._rl_fused_ops import FusedOps
    from deconv3d._rl_ops import ops_for
    from deconv3d._tensors import resolve_device

    fft_shapes = list(fft_shapes)
    if not fft_shapes:
        return {}
    device = resolve_device(device)
    used = sorted({"numba" if ops_for(device, torch.float32, shape) is FusedOps else "torch" for shape in fft_shapes})
    record = {"fused": " and ".join(used) + (" (auto)" if env_value("DECONV3D_FUSED") == "auto" else "")}
    if "numba" in used:
        record["numba"] = str(importlib.import_module("numba").__version__)  # (imported already by ops_for)
    return record


def fft_record(device, fft_shapes: Iterable[Sequence[int]] = ()) -> dict:
    """The FFT backend of a run's transforms, as its provenance records it (``fft``): the one
    :func:`deconv3d._fftw.backend_for` chooses for each of ``fft_shapes``, the shapes of the
    Richardson-Lucy loops' transforms (:func:`deconv3d.classical._problem.rl_fft_shape`), which
    alone may go through FFTW; every other transform (Wiener's, the network's, a loop's setup) is
    torch's, so a run without such shapes records ``torch``. ``(auto)`` follows a backend chosen by
    ``DECONV3D_FFT=auto`` (FFTW where installed, for transforms of ``FFTW_MIN_VOXELS`` or more: it
    recorded FFTW for runs too small for it). With FFTW, its planner (``fftw_planner``): its timed
    plans change float32 rounding from run to run; ``estimate`` or ``DECONV3D_FFT=torch`` reproduce
    bit for bit."""
    import torch

    from deconv3d._fftw import backend_for
    from deconv3d._tensors import resolve_device

    device = resolve_device(device)
    if device.type == "cuda":
        return {"fft": "torch (cuFFT)"}  # FFTW is for the CPU only
    asked = env_value("DECONV3D_FFT")
    used = sorted({backend_for(shape, device, torch.float32) for shape in fft_shapes} or {"torch"})
    record = {"fft": " and ".join(used) + (" (auto)" if asked == "auto" else "")}
    if "fftw" in used:
        record["fftw_planner"] = env_value("DECONV3D_FFTW_PLANNER")
    return record


def timestamp() -> str:
    """The local time as records hold it (ISO 8601 with the UTC offset)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def saving_record(**given) -> dict:
    """What a checkpoint adds to its network's run record when saved: the deconv3d version and the
    time of saving, and the ``given`` entries that are known (what it was trained on: files by path
    and SHA-256). Not the environment: the training records its own (:func:`run_environment`, in
    its result), which the run record keeps; this process's would be another machine's, threads or
    FFT backend for a loaded network saved again, so a file that never recorded one keeps none."""
    from deconv3d import __version__

    record = {"deconv3d_version": __version__, "saved": timestamp()}
    return {**record, **{k: v for k, v in given.items() if v is not None}}
