"""The choice of the element-wise passes of the Richardson-Lucy loop: fused with numba on the CPU
(:class:`deconv3d._rl_fused_ops.FusedOps`, the optional ``numba`` extra) or torch operations
(:class:`deconv3d._rl_torch_ops.TorchOps`); the module notes of :mod:`deconv3d._rl_fused_ops` give
what each pass does and the measured gains.

:func:`ops_for` picks the implementation: the fused one for float32 CPU tensors when numba
is installed and loads, torch everywhere else (CUDA, float64, no numba) and, under ``auto``, for
loops whose FFTs have fewer than :data:`FUSED_MIN_VOXELS` voxels, which then do not import numba:
loading the kernels costs 0.7-2.4 s per process, and there the fused loops gain nothing (10
iterations without acceleration on 16 x 32 x 32, FFT 20 x 36 x 36, with 2 threads, best of 30:
8.2-8.3 ms against torch's 7.2-7.7 ms; FFTs of 0.1-0.2M voxels ran as fast either way; from
0.36M voxels on the fused loops won, 134 against 151 ms with 1 thread at 680 400, and 262
against 774 ms for 20 iterations at 32 x 128 x 128 in the review). Environment:

``DECONV3D_FUSED``
    ``auto`` (default), ``torch`` (never fuse) or ``numba`` (fuse at every size; an error if numba
    is missing).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from typing import Sequence

import torch

from deconv3d._env_choice import env_choice
from deconv3d._rl_fused_ops import FusedOps, _kernels
from deconv3d._rl_torch_ops import TorchOps
from deconv3d.errors import InputError

CHOICES = ("auto", "torch", "numba")
FUSED_MIN_VOXELS = 1 << 17  # under DECONV3D_FUSED=auto, smaller loops run torch's passes (see the module notes)


def numba_available() -> bool:
    """Whether numba is installed (``pip install deconv3d[numba]``); it is not imported here."""
    return importlib.util.find_spec("numba") is not None


def ops_for(device: torch.device, dtype: torch.dtype, shape: Sequence[int] | None = None):
    """:class:`FusedOps` or :class:`TorchOps` for tensors on ``device``/``dtype`` (``DECONV3D_FUSED``)
    in a loop whose FFTs have ``shape`` (None: of any size).

    Under ``auto`` an installed numba that fails to import (a broken install, or an llvmlite
    that does not match it) gives a warning, once, and the torch passes.
    """
    choice = fused_choice()
    if not _fusable(choice, device, dtype, shape):
        return TorchOps
    failure = _numba_import_error()
    if failure is None:
        return FusedOps
    if choice == "numba":
        raise InputError(f"DECONV3D_FUSED=numba but numba fails to import ({failure}): "
                         "reinstall it (pip install --force-reinstall numba llvmlite) or unset DECONV3D_FUSED")
    _warn_fallback(failure)
    return TorchOps


def fused_planned(device: torch.device, dtype: torch.dtype, shape: Sequence[int] | None = None) -> bool:
    """Whether :func:`ops_for` picks :class:`FusedOps`, asked without importing numba (the memory
    planner's question): an installed numba counts as one that loads unless an earlier
    :func:`ops_for` found that it fails to."""
    if not _fusable(fused_choice(), device, dtype, shape):
        return False
    return _numba_import_error.cache_info().currsize == 0 or _numba_import_error() is None


def _fusable(choice: str, device: torch.device, dtype: torch.dtype, shape: Sequence[int] | None) -> bool:
    """Whether the fused passes are wanted and installed (numba is not imported here)."""
    usable = device.type == "cpu" and dtype == torch.float32
    if choice == "torch" or not usable or not numba_available():
        return False
    return choice == "numba" or shape is None or math.prod(shape) >= FUSED_MIN_VOXELS


def fused_choice() -> str:
    """``DECONV3D_FUSED`` (one of :data:`CHOICES`); an InputError for another value, or for ``numba``
    without numba (the command line checks it at start-up)."""
    return env_choice("DECONV3D_FUSED", CHOICES,
                      {"numba": (numba_available, "numba is not installed: pip install 'deconv3d[numba]'")})


@functools.lru_cache(maxsize=None)
def _numba_import_error() -> str | None:
    """Why ``import numba`` fails, in one line; None when it works."""
    try:
        importlib.import_module("numba")
    except Exception as exc:  # a broken install may raise more than ImportError at import
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


@functools.lru_cache(maxsize=None)
def _warn_fallback(failure: str) -> None:
    warnings.warn(f"numba is installed but fails to import ({failure}); Richardson-Lucy runs its "
                  "element-wise passes in torch (slower on the CPU). Reinstall numba and llvmlite, "
                  "or set DECONV3D_FUSED=torch to silence this.", RuntimeWarning, stacklevel=3)


def preload(device: torch.device, dtype: torch.dtype, shape: Sequence[int] | None = None) -> None:
    """Load (compile or read from the cache) the passes :func:`ops_for` picks for ``device``/``dtype``
    and FFTs of ``shape`` (None: of any size; the pipeline passes the largest its blocks can have).

    The numba kernels hold about 110 MB once loaded; the pipeline loads them before it measures
    the memory baseline its blocks must fit beside. On a GPU it starts CUDA instead, whose context
    and libraries take host memory too (typically some hundreds of MB) from the first tensor on.
    """
    if device.type == "cuda":
        torch.empty(1, device=device)
    if ops_for(device, dtype, shape) is FusedOps:
        _kernels()

