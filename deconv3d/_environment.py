"""What besides the parameters sets a run's last bits: the device, threads, FFT backend and
versions it ran with, for the provenance of outputs and of the checkpoints of trained networks
(which the numeric core writes, so this lives beside it rather than in the pipeline)."""

from __future__ import annotations

import os

import numpy as np


def run_environment(device="cpu") -> dict:
    """What besides the parameters sets a run's last bits, for its provenance: the device it ran on,
    torch's thread count, the FFT backend asked for (``DECONV3D_FFT``; FFTW where installed) and
    FFTW's planner (its timed plans change float32 rounding from run to run; ``estimate`` or
    ``DECONV3D_FFT=torch`` reproduce bit for bit), and the versions of Python, numpy and torch."""
    import platform

    import torch

    from deconv3d._fftw import fftw_available
    from deconv3d.fft import resolve_device

    fft = os.environ.get("DECONV3D_FFT", "auto").strip().lower() or "auto"
    device = resolve_device(device)
    if device.type == "cuda":
        fft = "torch (cuFFT)"  # FFTW is for the CPU only
    record = {"device": str(device), "threads": torch.get_num_threads(),
              "fft": fft if fft != "auto" else ("fftw" if fftw_available() else "torch") + " (auto)",
              "python": platform.python_version(), "numpy": np.__version__,
              "torch": str(torch.__version__)}  # (a str subclass, which a safe checkpoint load refuses)
    if "fftw" in record["fft"]:
        record["fftw_planner"] = os.environ.get("DECONV3D_FFTW_PLANNER", "auto").strip().lower() or "auto"
    return record


def training_environment(run: dict | None, model) -> dict:
    """The environment a checkpoint's network trained in: the one its run record already holds (a
    loaded network saved again), else this process's with the device of the network's weights
    (saved where it trained). Threads and the FFT backend change the weights' last bits."""
    if run and isinstance(run.get("environment"), dict):
        return run["environment"]
    return run_environment(next((p.device for p in model.parameters()), "cpu"))
