"""Block geometry of a chunked run: how a volume is cut into blocks and where each block lies.

:func:`plan_chunks` turns the chunks asked for and a method's halo into block sizes whose
boundaries are zarr chunk boundaries (every chunk has one writer); :func:`stored_chunks` and
:func:`sides_in_whole_chunks` choose the stored chunks and the block sides that fill them;
:func:`block_regions` and :func:`axis_regions` give every block's read, trim and write slices
(:class:`Placement` tells a block callable where its block lies); :func:`box_blocks`,
:func:`aligned_box` and :func:`write_box_blocks` handle the box on which a method runs whole,
whose inner blocks are written from that run. Nothing here reads or runs a block:
:mod:`deconv3d.pipeline.chunked` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from deconv3d.errors import InputError

__all__ = ["Placement", "plan_chunks", "stored_chunks", "sides_in_whole_chunks", "block_regions", "axis_regions",
           "box_blocks", "aligned_box", "write_box_blocks"]


@dataclass(frozen=True)
class Placement:
    """Where a block lies, for a block callable whose ``placed`` attribute is true: it is then
    called as ``fn(block, placement)``.

    ``start``: the block's first voxel in the volume (per spatial axis); ``core``: the core's
    slices inside the block (the rest is halo, to be trimmed); ``shape``: the volume's spatial
    shape. Where ``core`` reaches the block's edge, that edge is the volume's border (halos are
    clipped only there).
    """

    start: tuple
    core: tuple
    shape: tuple


def plan_chunks(shape: Sequence[int], chunks: Sequence[int], halo: Sequence[int]):
    """Block sizes and per-axis halo of a run, and the zarr chunks the blocks align with.

    Per axis: a chunk covering the whole axis needs no halo; a chunk smaller than the halo is
    enlarged to it (as ``map_overlap`` needs ``depth <= chunk``); a last remainder shorter than the
    halo is merged into the block before it, so the block boundaries stay a subset of the regular
    zarr chunk boundaries (every zarr chunk has exactly one writer).

    Returns
    -------
    dask_chunks : tuple of tuple of int
        The core block sizes along every axis.
    halo : tuple of int
    zarr_chunks : tuple of int
    """
    if not (len(shape) == len(chunks) == len(halo)):
        raise InputError(f"chunks {tuple(chunks)} and halo {tuple(halo)} need one value per axis of {tuple(shape)}")
    dask_chunks, halos, zarr_chunks = [], [], []
    for n, c, h in zip(shape, chunks, halo):
        c = min(max(int(c), 1), n)
        h = max(int(h), 0)
        if c >= n:
            dask_chunks.append((n,))
            halos.append(0)
            zarr_chunks.append(n)
            continue
        c = max(c, min(h, n))
        full, rest = divmod(n, c)
        sizes = [c] * full
        if rest and rest < h:
            sizes[-1] += rest
        elif rest:
            sizes.append(rest)
        h = min(h, min(sizes))
        dask_chunks.append(tuple(sizes))
        halos.append(h if len(sizes) > 1 else 0)
        zarr_chunks.append(c)
    return tuple(dask_chunks), tuple(halos), tuple(zarr_chunks)


def stored_chunks(shape: Sequence[int], block_chunks: Sequence[int], cap: Sequence[int]) -> tuple[int, ...]:
    """The zarr chunks of an output whose blocks are those of a plan (``block_chunks``: the zarr
    chunks :func:`plan_chunks` returns), no side longer than ``cap`` (per axis; e.g.
    :data:`deconv3d.omezarr.writing.CHUNK_CAP`): the largest divisor of each block side up to the
    cap, so that every block still writes whole chunks and each chunk has one writer. Along an
    axis that one block spans, the cap itself (the last, shorter chunk is that block's too).
    Block sides from :func:`sides_in_whole_chunks` have a divisor near the cap."""
    out = []
    for n, c, k in zip(shape, block_chunks, cap):
        c, k = int(c), max(1, int(k))
        out.append(c if c <= k else k if c >= n else next(d for d in range(k, 0, -1) if c % d == 0))
    return tuple(out)


def sides_in_whole_chunks(chunks: Sequence[int], shape: Sequence[int], cap: Sequence[int],
                          multiple: int = 1, halo: Sequence[int] | None = None) -> tuple[int, ...]:
    """``chunks`` (core block sides), each first enlarged to its ``halo`` as :func:`plan_chunks`
    does, with each side longer than its ``cap`` but shorter than its axis cut down to the nearest
    whole number of equal chunk sides of at most the cap (each a multiple of ``multiple``, a
    network's pooling grid, where that fits): a block side of 683 (a 2048 axis in three) has no
    divisor up to 512 but 1, and would have stored chunks 1 voxel wide (:func:`stored_chunks`); cut
    to 682 it has 341. A side that cutting down would leave shorter than its halo is rounded up to
    whole chunks instead: 40 planes enlarged to a halo of 67 stored chunks of 1 plane; 68 has 34."""
    out = []
    for c, n, k, h in zip(chunks, shape, cap, halo if halo is not None else (0,) * len(chunks)):
        c, k, m, h = int(c), max(1, int(k)), max(1, int(multiple)), max(0, int(h))
        c = max(c, min(h, n)) if c < n else c
        path = [c]  # (once more gives the same: a plan made of these sides is planned again as it is;
        while (side := _whole_chunk_side(c, n, k, m, h)) != c:  # 272 gave 240, which gave 256)
            if side in path:  # a cap that is not a multiple of m can cycle (9, 12, 9): its largest side,
                c = max(path[path.index(side):])  # whichever side of the cycle it entered by
                break
            if len(path) > n:  # (sides lie in 1..n: more that all differ is a broken step, which hung the run)
                raise RuntimeError(f"sides_in_whole_chunks: a side along an axis of {n} (cap {k}, grid {m}, halo {h}) "
                                   f"did not settle in {len(path)} steps ({path[:4]} ...): an internal error")
            path.append(side)
            c = side
        out.append(c)
    return tuple(out)


def _whole_chunk_side(c: int, n: int, k: int, m: int, h: int) -> int:
    """One step of :func:`sides_in_whole_chunks` on one axis (``c`` already at least the halo
    ``h``): a side that cutting down into ``ceil(c / k)`` chunks of a multiple of ``m`` keeps at
    least ``h`` is cut down, else rounded up, never past the axis ``n``. The sides are bounded
    (up to ``n``), so repeating the step ends in a side it keeps or in a cycle."""
    if c <= k or c >= n:
        return c
    parts = -(-c // k)
    down = min(c, parts * max(m, c // parts // m * m))
    per = -(-c // parts)  # (c / parts rounded up, then to a multiple of m)
    up = parts * (-(-per // m) * m)
    return min(n, down if down >= h else up)


def block_regions(shape: Sequence[int], block_sizes: Sequence[Sequence[int]], halo: Sequence[int]):
    """Yield ``(read, trim, write)`` slices of every block of a plan (see :func:`plan_chunks`).

    ``read`` is the block's core plus ``halo`` on each side, clipped at the volume border (no
    padding); ``trim`` selects the core inside what was read; ``write`` is the core's place in
    the volume.

    Blocks come grouped by the shape they read (per axis, the most common length first), so that
    a method's set-up for one shape serves the blocks that follow (RL's OTF and Bertero weight,
    Wiener's OTF: :mod:`deconv3d.classical._reuse`); row by row, 8 blocks of a 96 x 384 x 384 volume in three
    shapes changed shape at 6 of 7 steps. Each block writes its own chunks, so the order changes
    nothing else.
    """
    per_axis = [_by_length(axis_regions(n, sizes, h)) for n, sizes, h in zip(shape, block_sizes, halo)]
    for groups in _product(per_axis):
        for combo in _product(groups):
            yield tuple(c[0] for c in combo), tuple(c[1] for c in combo), tuple(c[2] for c in combo)


def _by_length(regions: list) -> list[list]:
    """One axis's ``regions`` (:func:`axis_regions`) in groups of one read length, the largest first."""
    groups: dict = {}
    for region in regions:
        groups.setdefault(region[0].stop - region[0].start, []).append(region)
    return sorted(groups.values(), key=len, reverse=True)


def axis_regions(n: int, sizes: Sequence[int], halo: int) -> list[tuple[slice, slice, slice]]:
    """``(read, trim, write)`` of every block along one axis of length ``n`` (see :func:`block_regions`)."""
    regions, start = [], 0
    for size in sizes:
        lo, hi = max(0, start - halo), min(int(n), start + size + halo)
        regions.append((slice(lo, hi), slice(start - lo, start - lo + size), slice(start, start + size)))
        start += size
    return regions


def box_blocks(shape: Sequence[int], block_sizes: Sequence[Sequence[int]], halo: Sequence[int],
               box: Sequence[slice]) -> list[tuple[slice, ...]]:
    """The ``write`` regions (see :func:`block_regions`) of the blocks whose cores lie inside
    ``box`` and at least ``halo`` from each face of it that is inside the volume: where a run of
    the method on the box agrees with the blocks' runs as closely as blocks agree at their seams."""
    per_axis = []
    for n, sizes, h, b in zip(shape, block_sizes, halo, box):
        lo = b.start if b.start == 0 else b.start + h
        hi = b.stop if b.stop == n else b.stop - h
        per_axis.append([w for _, _, w in axis_regions(n, sizes, h) if w.start >= lo and w.stop <= hi])
    return list(_product(per_axis))


def aligned_box(shape: Sequence[int], block_sizes: Sequence[Sequence[int]], halo: Sequence[int],
                box_shape: Sequence[int]) -> tuple[slice, ...]:
    """A box of ``box_shape`` at most one block from the centre on every axis (the steps measured
    on it stand for the volume: a box at a corner of a large stack may hold background alone),
    placed there to hold as many whole blocks as it can (:func:`box_blocks`), nearest the centre
    among those."""
    box = []
    for n, sizes, h, b in zip(shape, block_sizes, halo, box_shape):
        b = min(int(b), int(n))
        centre = (n - b) // 2
        starts = {centre, 0, n - b} | {min(max(w.start - h, 0), n - b) for _, _, w in axis_regions(n, sizes, h)}
        held = lambda s: len(box_blocks((n,), (sizes,), (h,), (slice(s, s + b),)))
        start = min(sorted(s for s in starts if abs(s - centre) <= max(sizes)),
                    key=lambda s: (-held(s), abs(s - centre)))
        box.append(slice(start, start + b))
    return tuple(box)


def write_box_blocks(output: np.ndarray, box: Sequence[slice], regions: Sequence[tuple[slice, ...]],
                     target_path, lead: Sequence[int] = ()) -> None:
    """Write the ``regions`` (:func:`box_blocks`) of ``output``, the method's result on ``box``,
    into the zarr array at ``target_path`` (at index ``lead`` of its leading axes)."""
    import zarr

    target = zarr.open_array(str(target_path), mode="r+")
    lead = tuple(int(i) for i in lead)
    for write in regions:
        inside = tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(write, box))
        target[lead + tuple(write)] = output[inside]


def _product(axes):
    import itertools

    return itertools.product(*axes)
