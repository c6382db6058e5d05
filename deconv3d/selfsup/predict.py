"""Tiled inference of a fully convolutional network over a whole 2D or 3D volume.

A volume too large for one forward pass is cut into overlapping tiles. Every tile is
fed to the network with ``context`` extra voxels on each side (taken from the volume,
or mirrored across the volume border) and padded further to a multiple of the
network's ``divisor``; the context is cropped away and the tile cores are blended with
a linear ramp across their overlap, so that no seam shows.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from deconv3d._arrays import is_whole
from deconv3d._tensors import resolve_device
from deconv3d._torch_common import precision_name
from deconv3d.errors import Cancelled, InputError
from deconv3d.selfsup.network_runner import _ModelRunner
from deconv3d.selfsup.unet import ResUNet
from deconv3d.selfsup.tiling import (VOXEL_BUDGET, _axis_tiles, _gather_window, _per_axis, _plan_window,
                                     _resolve_overlap, _resolve_region, _resolve_tile_shape, _tile_weight, _Window,
                                     default_tile_shape, volume_phase)

__all__ = ["predict_tiled", "volume_phase", "default_tile_shape", "inference_precision", "VOXEL_BUDGET",
           "ProgressCallback", "Cancelled"]

ProgressCallback = Callable[[int, int], Optional[bool]]


def predict_tiled(
    model: torch.nn.Module,
    image,
    *,
    mean: float,
    std: float,
    divisor: int,
    tile_shape: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    tta: bool = False,
    device="auto",
    batch_size: int = 1,
    callback: ProgressCallback | None = None,
    context: int = 0,
    amp: bool = False,
    signed: bool = False,
    region: Sequence[slice] | None = None,
    phase: Sequence[int] | None = None,
) -> np.ndarray:
    """Run a fully convolutional network over a whole volume, tile by tile.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(N, 1, *spatial)`` to ``(N, 1, *spatial)`` for spatial sizes that are
        multiples of ``divisor``. It is left as it is: a model in training mode or on another
        device runs as an eval-mode copy on ``device`` (a :class:`ResUNet` on the CPU always
        runs as a copy with its batch norms folded into its convolutions, channels-last).
    image : ndarray or torch.Tensor
        2D ``(y, x)`` or 3D ``(z, y, x)`` intensities.
    mean, std : float
        Normalisation of the training data: the network sees ``(image - mean) / std``
        and its output ``out`` becomes ``out * std + mean``.
    divisor : int
        Every window fed to the network is padded to a multiple of this per axis
        (``UNetConfig.divisor``).
    tile_shape : int or sequence of int, optional
        Core size of a tile per axis (an int means a cube); clamped to the volume.
        Default: the whole volume when it fits :data:`VOXEL_BUDGET`, else the largest
        cubic-ish tile that does (see :func:`default_tile_shape`).
    overlap : int or sequence of int, optional
        Minimum overlap of neighbouring tile cores per axis, below the tile size.
        Default: a quarter of the tile.
    tta : bool
        Average the network over the 8 rotations/flips of the xy plane (last two
        axes), each transform undone on the output.
    device : {"auto", "cpu", "cuda"} or torch.device
    batch_size : int
        Tiles per forward pass.
    callback : callable, optional
        ``callback(done, total)`` after every batch (every tile for ``batch_size=1``);
        returning ``True`` cancels: :class:`Cancelled` is raised and nothing is returned.
    context : int
        Extra voxels of context on every side of each tile, cropped from the output;
        make it at least the network's receptive-field radius for seamless tiling.
        At the volume border the context is the volume mirrored (reflect padding).
    amp : bool
        Mixed precision (:func:`~deconv3d._torch_common.amp_dtype`, :func:`inference_precision`):
        float16 autocast on CUDA, bfloat16 on a CPU with AMX, float32 elsewhere; the output is
        float32 either way, and a :class:`ResUNet` computes its last layer in float32
        (:func:`~deconv3d._torch_common.at_own_precision`). A tile whose reduced-precision pass
        is not finite (a float16 overflow) is recomputed in float32, as are the tiles after it
        (with a RuntimeWarning).
    signed : bool
        The network outputs a signed correction in standardised units (a residual network):
        its output becomes ``out * std``, without the mean, and is not clamped. Otherwise
        the prediction ``out * std + mean`` is clamped to be non-negative.
    region : sequence of slice, optional
        Predict only this box (one slice per axis, steps of 1); the rest of the image serves
        as context and comes back as 0. A block of a larger volume, read with a halo of real
        neighbouring data, passes its core here: the halo then is the context on those sides
        and is not mirrored and fed to the network a second time.
    phase : sequence of int, optional
        Position, per axis and modulo ``divisor``, of the pooling grid the windows start on.
        Default: that of one pass over this image (see ``Notes``). A block of a larger volume
        passes the whole volume's grid, shifted to the block, so that its result is the whole
        volume's (see :func:`volume_phase`).

    Returns
    -------
    ndarray
        float32 prediction with the image's shape (0 outside ``region``).

    Notes
    -----
    The output is ``sum_t w_t f(x_t) / sum_t w_t`` over tiles ``t``. The weight ``w_t``
    is separable; along an axis it is 1 except over an overlap of length ``L`` with a
    neighbouring tile, where it rises linearly as ``(i + 1) / (L + 1)``, so it is never
    zero and two overlapping tiles cross-fade. With ``context`` at least the receptive
    field radius, the result equals one pass over the reflect-padded volume.

    Examples
    --------
    >>> import numpy as np, torch
    >>> net = torch.nn.Conv3d(1, 1, 3, padding=1)
    >>> vol = np.random.default_rng(0).random((12, 40, 40)).astype(np.float32)
    >>> out = predict_tiled(net, vol, mean=0.5, std=0.3, divisor=4, tile_shape=16,
    ...                     context=2, device="cpu")
    >>> out.shape, out.dtype
    ((12, 40, 40), dtype('float32'))
    """
    volume = _as_volume(image)
    dev = resolve_device(device)
    _check_options(mean, std, divisor, batch_size, context)
    _check_divisor(model, divisor)
    box = _resolve_region(region, volume.shape)
    tiles, window = _plan_tiles(volume.shape, box, tile_shape, overlap, divisor, context, phase, dev)
    run = _ModelRunner(model, dev, float(mean), float(std), tta, amp, 0.0 if signed else float(mean))
    with run:
        core = _blend_tiles(run, volume, box, tiles, window, batch_size, callback)
    if not signed:
        core.clamp_(min=0)
    return _placed(core, volume.shape, box)


def _plan_tiles(shape, box, tile_shape, overlap, divisor: int, context: int, phase, device) -> tuple:
    """:func:`predict_tiled`'s tiles of the region ``box`` of a volume of ``shape`` (each a tuple of
    slices, their cores) and the :class:`_Window` that every tile is fed to the network in."""
    sides = tuple(b.stop - b.start for b in box)
    tiles_shape = _resolve_tile_shape(tile_shape, sides, divisor, device)
    overlaps = _resolve_overlap(overlap, tiles_shape, sides)
    axes = [_axis_tiles(n, t, o, b.start) for n, t, o, b in zip(sides, tiles_shape, overlaps, box)]
    if phase is None:
        phase = volume_phase(shape, divisor, context)
    window = _plan_window(axes, _per_axis(phase, len(shape), "phase"), divisor, context)
    return list(itertools.product(*axes)), window


def _placed(core: torch.Tensor, shape, box) -> np.ndarray:
    """The prediction ``core`` of the region ``box`` in an array of the volume's ``shape`` (0 elsewhere)."""
    if core.shape == shape:
        return core.numpy()
    out = np.zeros(shape, np.float32)
    out[box] = core.numpy()
    return out


def _as_volume(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    volume = np.ascontiguousarray(image, dtype=np.float32)
    if volume.ndim not in (2, 3) or volume.size == 0:
        raise InputError(f"prediction needs a non-empty 2D or 3D image, got shape {volume.shape}: pass one channel and one time point")
    return volume


def _check_options(mean, std, divisor, batch_size, context) -> None:
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise InputError(f"normalisation needs a finite mean and a positive std, got mean={mean}, std={std}: use the values stored with the model")
    if not all(is_whole(n, 1) for n in (divisor, batch_size)):
        raise InputError(f"divisor and batch_size must be positive integers, got {divisor!r} and {batch_size!r}")
    if not is_whole(context, 0):
        raise InputError(f"context must be a non-negative whole number of voxels, got {context!r}")


def _check_divisor(model, divisor: int) -> None:
    """Refuse a ``divisor`` that is not a multiple of a :class:`ResUNet`'s own (its windows would not fit it)."""
    own = model.config.divisor if isinstance(model, ResUNet) else 1
    if divisor % own:
        raise InputError(f"divisor {divisor} is not a multiple of the network's {own} (2**depth): pass "
                         f"divisor={own} (UNetConfig.divisor)")


def _blend_tiles(run, volume, box, tiles, window: _Window, batch_size: int, callback) -> torch.Tensor:
    """The blended prediction of the region ``box`` (a tensor of its shape)."""
    shape = tuple(b.stop - b.start for b in box)
    out = torch.zeros(shape)
    weight_sum = torch.zeros(shape)
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first : first + batch_size]
        windows = np.stack([_gather_window(volume, tile, window) for tile in batch])
        pred = run(torch.from_numpy(windows)[:, None])[:, 0]
        for tile, window_pred in zip(batch, pred):
            tile_pred = window_pred[window.core(tile)].cpu()  # only the core leaves the device
            region = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(tile, box))
            weight = _tile_weight(tile)
            out[region] += tile_pred * weight
            weight_sum[region] += weight
        done = first + len(batch)
        if callback is not None and callback(done, len(tiles)):
            raise Cancelled(f"prediction cancelled after {done} of {len(tiles)} tiles")
    return out / weight_sum


def inference_precision(amp: bool, device) -> str:
    """The dtype :func:`predict_tiled` with ``amp`` runs the network in on ``device``, for records:
    "bfloat16" on a CPU with AMX, "float16" on CUDA, else "float32" (a tile that is not finite in
    reduced precision then falls back to float32, with a warning)."""
    return precision_name(amp, resolve_device(device))
