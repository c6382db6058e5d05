"""Geometry of tiled inference (:func:`deconv3d.selfsup.predict.predict_tiled`): the tiles along
each axis and their overlaps, the windows fed to the network around each tile core (on one
pooling grid, with mirrored context at the volume border), and the linear ramps that blend the
tile cores across their overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from deconv3d._arrays import is_whole
from deconv3d._tensors import resolve_device
from deconv3d.errors import InputError

# Largest tile core (voxels) run in one forward pass by default, keyed by (on CUDA, ndim).
VOXEL_BUDGET = {(False, 2): 2**22, (False, 3): 2**21, (True, 2): 2**24, (True, 3): 2**23}


@dataclass(frozen=True)
class _AxisTile:
    """One tile along one axis: its core ``[start, stop)`` and the overlaps with its neighbours."""

    start: int
    stop: int
    ramp_before: int
    ramp_after: int


@dataclass(frozen=True)
class _Window:
    """The windows fed to the network around each tile core.

    Every window starts on one pooling grid, that of a single pass over the whole volume
    (``phase``, modulo ``divisor``), at least ``context`` voxels before its core, and all have
    the same ``size`` (a multiple of the divisor). A strided network gives the same output for
    a shifted input only when the shift is a multiple of its divisor, so tiles starting off
    that grid would each compute on their own grid and disagree where they overlap.
    """

    size: tuple[int, ...]
    phase: tuple[int, ...]
    context: int
    divisor: int

    def start(self, tile: Sequence[_AxisTile]) -> tuple[int, ...]:
        return tuple(_grid_start(t.start - self.context, p, self.divisor) for t, p in zip(tile, self.phase))

    def core(self, tile: Sequence[_AxisTile]) -> tuple[slice, ...]:
        return tuple(slice(t.start - w, t.stop - w) for t, w in zip(tile, self.start(tile)))


def volume_phase(shape: Sequence[int], divisor: int, context: int) -> tuple[int, ...]:
    """The pooling grid of one pass over a whole image of ``shape``: ``context`` mirrored on
    each side, plus half the rounding to a multiple of ``divisor`` before it (see
    :func:`predict_tiled`'s ``phase``). A block read from ``start`` in that image has the grid
    ``volume_phase(...)[i] - start[i]``."""
    return tuple(-(int(context) + (-(int(n) + 2 * int(context)) % int(divisor)) // 2) for n in shape)


def default_tile_shape(shape: Sequence[int], divisor: int, device="cpu") -> tuple[int, ...]:
    """Whole volume if it fits :data:`VOXEL_BUDGET`, else a cubic-ish tile that does.

    Short axes are kept whole and the budget left over is spread over the others; tile
    sides are multiples of ``divisor`` (at least ``divisor``) unless they span an axis.

    Examples
    --------
    >>> default_tile_shape((10, 1024, 1024), 8)
    (10, 456, 456)
    """
    shape = tuple(int(n) for n in shape)
    budget = VOXEL_BUDGET[(resolve_device(device).type == "cuda", len(shape))]
    if math.prod(shape) <= budget:
        return shape
    tile = [0] * len(shape)
    remaining = float(budget)
    for i, axis in enumerate(np.argsort(shape, kind="stable")):
        side = int(remaining ** (1.0 / (len(shape) - i)) + 1e-6)
        side = max(divisor, side // divisor * divisor)
        tile[axis] = min(shape[axis], side)
        remaining /= tile[axis]
    return tuple(tile)


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    values = (value,) * ndim if np.isscalar(value) else tuple(value)
    if len(values) != ndim:
        raise InputError(f"{name} {tuple(values)} has {len(values)} axes but the image has {ndim}: give one value per axis or a single int")
    if not all(is_whole(v) for v in values):  # (2.5 ran as 2)
        raise InputError(f"{name} must be whole numbers of voxels, got {value!r}: give an int, or one per axis")
    return tuple(int(v) for v in values)


def _resolve_region(region, shape) -> tuple[slice, ...]:
    if region is None:
        return tuple(slice(0, n) for n in shape)
    box = tuple(region)
    if len(box) != len(shape) or not all(isinstance(b, slice) for b in box):
        raise InputError(f"region {box} needs one slice per axis of the image {tuple(shape)}")
    box = tuple(slice(*b.indices(n)[:2]) if b.step in (None, 1) else b for b, n in zip(box, shape))
    if any(b.step not in (None, 1) or b.stop <= b.start for b in box):
        raise InputError(f"region {tuple(region)} must be a non-empty box with steps of 1 inside the image {tuple(shape)}")
    return box


def _resolve_tile_shape(tile_shape, shape, divisor, dev) -> tuple[int, ...]:
    if tile_shape is None:
        return default_tile_shape(shape, divisor, dev)
    tiles = _per_axis(tile_shape, len(shape), "tile_shape")
    if min(tiles) < 1:
        raise InputError(f"tile_shape must be positive, got {tiles}: pass a size per axis such as 64")
    return tuple(min(t, n) for t, n in zip(tiles, shape))


def _resolve_overlap(overlap, tiles, shape) -> tuple[int, ...]:
    if overlap is None:
        return tuple(t // 4 if t < n else 0 for t, n in zip(tiles, shape))
    overlaps = _per_axis(overlap, len(shape), "overlap")
    for o, t, n in zip(overlaps, tiles, shape):
        if o < 0 or (t < n and o >= t):
            raise InputError(f"overlap {overlaps} must be non-negative and smaller than the tile {tiles}: lower the overlap or enlarge the tiles")
    return overlaps


def _axis_tiles(n: int, tile: int, overlap: int, offset: int = 0) -> list[_AxisTile]:
    """Evenly spread tiles of size ``tile`` covering ``[offset, offset + n)`` that overlap by at least ``overlap``."""
    if tile >= n:
        return [_AxisTile(offset, offset + n, 0, 0)]
    count = math.ceil((n - tile) / (tile - overlap)) + 1
    starts = np.round(np.linspace(0, n - tile, count)).astype(int).tolist()
    tiles = []
    for i, start in enumerate(starts):
        before = starts[i - 1] + tile - start if i > 0 else 0
        after = start + tile - starts[i + 1] if i + 1 < count else 0
        tiles.append(_AxisTile(offset + start, offset + start + tile, before, after))
    return tiles


def _plan_window(axes: Sequence[Sequence[_AxisTile]], phase, divisor: int, context: int) -> _Window:
    """Windows on the grid ``phase``: with :func:`volume_phase`'s grid, one tile over the whole
    volume is one pass over it."""
    phase = tuple(int(p) % divisor for p in phase)
    size = []
    for tiles, p in zip(axes, phase):
        reach = max(t.stop + context - _grid_start(t.start - context, p, divisor) for t in tiles)
        size.append(-(-reach // divisor) * divisor)
    return _Window(tuple(size), phase, context, divisor)


def _grid_start(at_most: int, phase: int, divisor: int) -> int:
    """The largest position ``<= at_most`` that is ``phase`` modulo ``divisor``."""
    return at_most - (at_most - phase) % divisor


def _reflect_indices(lo: int, hi: int, n: int) -> np.ndarray:
    """Indices ``lo..hi-1`` mirrored into ``[0, n)`` (reflect padding, edge not repeated)."""
    idx = np.arange(lo, hi)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _gather_window(volume: np.ndarray, tile: Sequence[_AxisTile], window: _Window) -> np.ndarray:
    index = [_reflect_indices(w, w + size, n) for w, size, n in zip(window.start(tile), window.size, volume.shape)]
    return volume[np.ix_(*index)]


def _ramp(t: _AxisTile) -> torch.Tensor:
    w = torch.ones(t.stop - t.start)
    if t.ramp_before:
        w[: t.ramp_before] = torch.arange(1, t.ramp_before + 1) / (t.ramp_before + 1)
    if t.ramp_after:
        down = torch.arange(t.ramp_after, 0, -1) / (t.ramp_after + 1)
        w[-t.ramp_after :] = torch.minimum(w[-t.ramp_after :], down)
    return w


def _tile_weight(tile: Sequence[_AxisTile]) -> torch.Tensor:
    weight = _ramp(tile[0])
    for t in tile[1:]:
        weight = weight[..., None] * _ramp(t)
    return weight
