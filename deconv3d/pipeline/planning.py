"""How :func:`~deconv3d.pipeline.run_chunked` plans a run: its core chunks, halo, predicted peak memory and
memory limit, and the blocks it cuts the volume into.

:func:`spatial_plan` turns the chunks and halo asked for (or the largest chunks that fit a memory
limit under a :class:`~deconv3d.pipeline.memory_model.MemoryModel`, or the whole volume where it fits
the free memory) into the core block shape a run uses, checked against the limit; :class:`RunPlan`
holds that plan with the blocks' dask and zarr chunks, the input chunk cache and the provenance's
record of how the run goes. Also here: the box a block callable's ``prepare`` measures its common
settings on (:func:`measuring_box_shape`), and how many threads and processes of a cluster share a
budget. The run itself is :mod:`~deconv3d.pipeline.run`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

from deconv3d.errors import InputError, warn
from deconv3d.pipeline.block_geometry import (aligned_box, axis_regions, box_blocks, plan_chunks,
                                              sides_in_whole_chunks)
from deconv3d.pipeline.memory import choose_chunks, limit_for_available, round_chunks
from deconv3d.pipeline.memory_model import RESIDENT_ALLOWANCE, MemoryModel
from deconv3d.pipeline.halo_rules import chunk_multiple_for, halo_for
from deconv3d.pipeline.readers import chunk_cache_budget, chunk_reads_spare
from deconv3d.pipeline.system_memory import format_bytes, parse_memory, planning_baseline

__all__ = ["spatial_plan", "RunPlan", "measuring_box_shape", "threads_per_worker"]


def spatial_plan(spatial_shape, block_fns, chunks, halo, memory_limit, model, workers, local: int = 1,
                  cap=None):
    """Chunks, halo, predicted peak and memory limit for the block callables (one, or one per
    channel). Without chunks or a limit, a volume that does not fit in the available memory gets a
    limit (:func:`~deconv3d.pipeline.memory.limit_for_available`), with a warning: only for
    blocks run on this machine (``local``: the processes that share its free memory, each given an
    equal share of it less the program's own memory of the others, 1 for this process's threads; 0
    on a cluster, whose workers' memory this does not see: :func:`_processes_here`) on the CPU (a
    GPU's memory is not budgeted).

    Per-channel callables share one plan: the widest halo and the largest chunk multiple
    any of them asks for, so that no channel's blocks are cut short of its PSF's reach. With a
    ``cap`` (the longest stored chunk side per axis), block sides above it, once enlarged to the
    halo, are cut to whole stored chunks, or rounded up to them where the halo needs it
    (:func:`~deconv3d.pipeline.block_geometry.sides_in_whole_chunks`).
    """
    halo = _planned_halo(spatial_shape, block_fns, halo)
    predicted, multiple = None, max(chunk_multiple_for(f) for f in block_fns)
    _check_memory_limit(memory_limit, chunks, model)
    automatic = (chunks is None and memory_limit is None and model is not None and local
                 and not any(_on_gpu(f) for f in block_fns))  # the whole volume, if it fits
    if memory_limit is not None or automatic:
        for f in block_fns:  # libraries the blocks will load count in the baseline, not in the budget
            getattr(f, "load", lambda shape: None)(tuple(spatial_shape))
    if automatic:
        memory_limit = limit_for_available(model, spatial_shape, planning_baseline(), processes=local)
        automatic = memory_limit is not None
    given = chunks is not None
    if chunks is None and memory_limit is not None:
        chunks = _chunks_within_limit(spatial_shape, memory_limit, model, halo, workers, multiple, automatic, cap,
                                      local)
    chunks, requested = _block_chunks(spatial_shape, chunks, halo, multiple, cap)
    if model is not None:
        baseline = planning_baseline()
        predicted = model.peak_bytes(chunks, halo, spatial_shape, workers=workers, baseline=baseline)
        if given and memory_limit is not None:  # chunks given with a limit: hold them to it
            _hold_chunks_to_limit(spatial_shape, chunks, requested, halo, multiple, cap, memory_limit, model,
                                  workers, baseline, predicted)
    return chunks, halo, predicted, memory_limit


def _planned_halo(spatial_shape, block_fns, halo) -> tuple:
    """The halo asked for, else the widest any block callable asks for (none: zeros), checked."""
    ndim = len(spatial_shape)
    if halo is None:
        asked = [h for h in (halo_for(f) for f in block_fns) if h]
        halo = tuple(max(axis) for axis in zip(*asked))  # () when none asks
    halo = tuple(halo) or (0,) * ndim
    if len(halo) != ndim:
        raise InputError(f"halo {halo} needs one value per spatial axis of {tuple(spatial_shape)}")
    return halo


def _check_memory_limit(memory_limit, chunks, model) -> None:
    """Refuse a memory limit that cannot be read, or one with neither chunks nor a memory model."""
    if memory_limit is not None:  # refused by name first ("lots" or -1 were told they lacked a memory model)
        parse_memory(memory_limit)
        if chunks is None and model is None:
            raise InputError("a memory limit needs a memory model of the method to choose the chunks: pass "
                             "model=MemoryModel(method, psf.shape), e.g. MemoryModel(\"rl\", psf.shape), or give "
                             "chunks instead")


def _chunks_within_limit(spatial_shape, memory_limit, model, halo, workers, multiple, automatic, cap, local):
    """The largest chunks the memory limit allows, with a warning where the limit was chosen here."""
    limit = parse_memory(memory_limit)
    chunks = choose_chunks(spatial_shape, limit, model, halo, workers=workers, baseline=planning_baseline(),
                           multiple=multiple, automatic=automatic, cap=cap, processes=local)
    if automatic:
        warn(f"deconv3d: warning: the whole volume {tuple(spatial_shape)} would need more memory than is "
             f"available: running it in blocks of {tuple(chunks)} within {format_bytes(limit)} (set "
             "--memory-limit or --chunks to choose)")
    return chunks


def _block_chunks(spatial_shape, chunks, halo, multiple, cap) -> tuple[tuple, tuple]:
    """The checked chunks (the whole volume when none), rounded to the multiple (``requested``), and
    those cut to whole stored chunks under a ``cap``: ``(chunks, requested)``."""
    if chunks is None:
        chunks = tuple(spatial_shape)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(spatial_shape) or min(chunks) < 1:
        raise InputError(f"--chunks {chunks} needs {len(spatial_shape)} positive values (one per spatial axis)")
    requested = round_chunks(chunks, spatial_shape, multiple)  # a network's chunks in whole pooling cells
    chunks = requested
    if cap is not None:  # blocks of whole stored chunks, each no longer than the cap
        chunks = sides_in_whole_chunks(chunks, spatial_shape, cap, multiple, halo)  # (enlarged to the halo first)
    return chunks, requested


def _hold_chunks_to_limit(spatial_shape, chunks, requested, halo, multiple, cap, memory_limit, model, workers,
                          baseline, predicted) -> None:
    """Refuse chunks given with a memory limit whose blocks' ``predicted`` peak is above it, saying why."""
    limit = parse_memory(memory_limit)
    # Sides below the halo run at the halo (and in whole stored chunks): smaller ones give the same
    # blocks, so only the others can be made smaller. (The blocks as plan_chunks makes them.)
    _, depth, runs_as = plan_chunks(spatial_shape, chunks, halo)  # (depth: the halo they get, as predicted)
    if predicted > limit and any(c > a for c, a in zip(runs_as, requested)):
        names = "zyx"[-len(spatial_shape):]
        shrink = [names[i] for i, (c, a, h) in enumerate(zip(runs_as, requested, halo))
                  if c == a > max(h, multiple)]  # (a side at the multiple is rounded back up to it)
        smaller = f"give smaller {'/'.join(shrink)} sides, " if shrink else ""
        raise InputError(f"chunks {requested} run as {runs_as} (no side below its halo {halo}"
                         f"{', in whole stored chunks' if cap is not None else ''}) and need about "
                         f"{predicted / 1e6:.0f} MB, above the memory limit {memory_limit}: {smaller}use "
                         f"--memory-limit {format_bytes(math.ceil(predicted * 1.1))} or more, or drop "
                         "--chunks to let the limit choose them")
    floor = model.peak_bytes((1,) * len(chunks), halo, spatial_shape, workers=workers, baseline=baseline)
    if predicted > limit and floor > limit:  # no chunks fit: the program's own memory fills the limit
        raise InputError(f"chunks {chunks} need about {predicted / 1e6:.0f} MB with their halo "
                         f"{tuple(depth)}, above the memory limit {memory_limit}, and no chunks fit it (the "
                         f"program's own memory is about {(baseline + RESIDENT_ALLOWANCE) / 1e6:.0f} MB): use "
                         f"--memory-limit {format_bytes(math.ceil(predicted * 1.1))} or more")
    if predicted > limit:
        raise InputError(f"chunks {chunks} need about {predicted / 1e6:.0f} MB with their halo "
                         f"{tuple(depth)}, above the memory limit {memory_limit}: give smaller chunks, or drop "
                         "--chunks to let the limit choose them")


def _on_gpu(block_fn) -> bool:
    """Whether a block callable runs on a CUDA device (its ``device`` attribute, when it has one)."""
    device = getattr(block_fn, "device", None)
    if device is None:
        return False
    from deconv3d._tensors import resolve_device

    return resolve_device(device).type == "cuda"


@dataclass
class RunPlan:
    """How :func:`~deconv3d.pipeline.run_chunked` cuts a volume of ``shape``: core ``chunks`` and
    ``halo``, the halo the blocks get (``depth``, clipped to the volume; none when it runs as one
    block), the blocks' dask chunks and count, the zarr chunks of the output, the chunks the blocks run
    with (``run_chunks``: the whole volume when preparing would run the method on it anyway), the
    predicted peak memory, the memory limit (asked, or chosen from the free memory) and, once
    :meth:`with_cache` has sized it, the input chunk cache (counted in the predicted peak, as is
    what the ``threads`` reading through it at once hold beside it)."""

    shape: tuple
    chunks: tuple
    halo: tuple
    depth: tuple
    dask_chunks: tuple
    zarr_chunks: tuple
    blocks: int
    run_chunks: tuple
    predicted: int | None
    memory_limit: object
    model: MemoryModel | None
    cache: int = 0  # bytes of decoded input chunks the blocks may keep (chunk_cache_budget)
    threads: int = 1  # blocks in flight in one process, whose reads share its cache

    @classmethod
    def make(cls, shape, block_fns, chunks, halo, memory_limit, model, workers, client, cap=None) -> "RunPlan":
        # The limit budgets one process: blocks in flight in it are its threads (a cluster's worker
        # processes each hold their own blocks), not all of the cluster's workers.
        per_process = workers if client is None else threads_per_worker(client)
        chunks, halo, predicted, memory_limit = spatial_plan(shape, block_fns, chunks, halo, memory_limit, model,
                                                             per_process, local=_processes_here(client), cap=cap)
        dask_chunks, depth, zarr_chunks = plan_chunks(shape, chunks, halo)
        blocks, run_chunks = math.prod(len(c) for c in dask_chunks), chunks
        if blocks > 1 and _prepare_runs_whole(block_fns, shape, chunks, halo, model, memory_limit):
            # The common settings would be measured by running the method on the whole volume, and the
            # blocks would then compute it again: that run is the result (the zarr chunks stay as planned).
            run_chunks, depth, dask_chunks, blocks = shape, (0,) * len(shape), (), 1
            if model is not None:
                predicted = model.peak_bytes(shape, depth, shape, workers=1, baseline=planning_baseline())
        return cls(tuple(shape), chunks, tuple(halo), depth, dask_chunks, zarr_chunks, blocks, run_chunks, predicted,
                   memory_limit, model, threads=per_process)

    def fft_shapes(self, block_fns) -> list:
        """The shapes of the transforms of this run that may go through FFTW, for its record: each block
        callable's ``fft_shapes(block_shape)`` (none without that hook) for the shape (core and halo, cut
        at the volume's faces) of every block it runs, and of the box its ``prepare`` runs the method on
        (whose blocks are written from that run instead)."""
        sizes = self.dask_chunks or tuple((n,) for n in self.shape)
        regions = [axis_regions(n, c, d) for n, c, d in zip(self.shape, sizes, self.depth)]
        shapes = set()
        for fn in (f for f in block_fns if hasattr(f, "fft_shapes")):
            covered, boxes = set(), set()
            if self.blocks > 1 and hasattr(fn, "prepare") and getattr(fn, "prepare_runs_method", lambda: False)():
                box = aligned_box(self.shape, sizes, self.depth, measuring_box_shape(
                    self.shape, self.chunks, self.halo, self.model, self.memory_limit))
                covered = {tuple((w.start, w.stop) for w in b) for b in box_blocks(self.shape, sizes, self.depth, box)}
                boxes.add(tuple(b.stop - b.start for b in box))
            for block in itertools.product(*regions):  # (read, trim, write) per axis
                if tuple((w.start, w.stop) for _, _, w in block) not in covered:
                    boxes.add(tuple(r.stop - r.start for r, _, _ in block))
            shapes.update(tuple(s) for b in boxes for s in fn.fft_shapes(b))
        return sorted(shapes)

    def with_cache(self, reader, lead: int) -> "RunPlan":
        """This plan with the input chunk cache its blocks may keep, counted in its predicted peak with
        what its threads' reads hold beside it."""
        block = _block_shape(self.shape, self.run_chunks, self.halo) if self.blocks > 1 else self.shape
        cache = chunk_cache_budget(reader, lead, block, self.memory_limit, self.predicted, self.threads)
        spare = chunk_reads_spare(reader, lead, self.threads) if cache else 0
        predicted = None if self.predicted is None else self.predicted + cache + spare
        return dataclasses.replace(self, cache=cache, predicted=predicted)

    def execution(self, total: int, workers: int, client, asked_limit) -> dict:
        """How the run goes, as its provenance records it."""
        limit = self.memory_limit
        record = {"chunks": list(self.zarr_chunks), "halo": list(self.depth), "blocks": total,
                  "workers": int(workers) if client is None
                  else f"cluster of {sum(client.nthreads().values())} threads",
                  "memory_limit": limit if limit is None or isinstance(limit, str) else int(limit)}
        if asked_limit is None and limit is not None:
            record["memory_limit_from"] = "free memory"  # chosen here: the whole volume did not fit
        return record


def threads_per_worker(client) -> int:
    """The most threads any worker process of a dask.distributed cluster runs (1 if it cannot say)."""
    try:
        return max([int(n) for n in client.nthreads().values()] or [1])
    except Exception:  # noqa: BLE001 - a scheduler that does not answer: assume one block per process
        return 1


def _processes_here(client) -> int:
    """The processes of this machine whose blocks share its free memory: 1 without a client (this
    process's threads), the worker processes of a ``LocalCluster`` (``--scheduler processes``: each
    gets an equal share; with the whole of it each, two workers could take twice the free memory),
    0 for any other cluster, whose workers' memory this does not see."""
    if client is None:
        return 1
    from distributed import LocalCluster

    if not isinstance(getattr(client, "cluster", None), LocalCluster):
        return 0
    try:
        return max(1, len(client.nthreads()))
    except Exception:  # noqa: BLE001 - a scheduler that does not answer: no share to budget
        return 0


def _prepare_runs_whole(block_fns, shape, chunks, halo, model, memory_limit) -> bool:
    """Whether a block callable's ``prepare`` would run its method over the whole volume (accelerated
    RL measuring its steps, when the memory model says the volume fits: :func:`measuring_box_shape`)."""
    runs = any(getattr(f, "prepare_runs_method", lambda: False)() for f in block_fns)
    return runs and measuring_box_shape(shape, chunks, halo, model, memory_limit) == tuple(shape)


#: Without a memory limit, a volume whose run the memory model predicts at most this many times its
#: largest block's array bytes (without a model: a volume of at most this many times that block's voxels) is
#: measured on whole, and so run as one block (:func:`measuring_box_shape`).
NEAR_BLOCK = 1.1


def measuring_box_shape(shape, chunks, halo, model, memory_limit) -> tuple[int, ...]:
    """The shape of the box a block callable's ``prepare`` measures its common settings on
    (accelerated RL's step schedule; placed by :func:`~deconv3d.pipeline.block_geometry.aligned_box`):
    under a memory limit, the whole volume when the memory model says it
    fits, else the largest box scaled up from a block that does; one block otherwise (chunks
    given without a limit bound each block's memory, often a GPU's, which a larger box would
    overrun, and it would cost up to a whole-volume run before the blocks), but the whole volume
    where ``model`` predicts at most :data:`NEAR_BLOCK` times a block's array bytes for it
    (:meth:`~deconv3d.pipeline.memory_model.MemoryModel.array_bytes` of the volume against the largest
    block's: without the constant each block adds, which would bring any small volume within the
    bound), or, without a model, where it holds at most :data:`NEAR_BLOCK` times a block's voxels
    (the halo then makes each block almost the volume, and the volume runs as one block). Bytes, not
    voxels, where there is a model: with the FFT sizes' rounding, a 48 x 288 x 288 volume in chunks of
    24 x 256 x 256 (halo 12 x 11 x 11) holds 1.07 times its blocks' voxels but needs 1.16 times their
    array bytes (rl-tv, reflect boundary, PSF 9^3).

    The adaptive steps depend on the whole image: measured on one block, a chunked run differed
    from the whole-volume run by up to 11 % of the maximum (43 dB); on the whole volume it
    replays that run's steps exactly. They are sensitive even to a box nearly the volume's: a
    16 x 48 x 48 phantom (PSF 9^3, 20 iterations, Bertero) in chunks of 8 x 24 x 24 ran as 8
    blocks of 16 x 46 x 46 whose steps, measured on one of them, left it 0.12 of the peak
    (47 dB) from the whole-volume run; that volume holds 1.09 times a block's voxels. One block
    stands badly for a volume whose objects are sparse or lie away from it: a 64 x 256 x 256 phantom
    (PSF 15^3, 20 iterations, chunks 32 x 128 x 128) measured on a 64 x 164 x 164 corner box holding
    15 % of its mean signal ended 0.22 of the peak (47 dB) from the whole-volume run (README).
    """
    block = tuple(_block_shape(shape, chunks, halo))
    if memory_limit is None:
        return tuple(shape) if _near_block(shape, chunks, halo, block, model) else block
    if model is None:
        return block
    limit = parse_memory(memory_limit)
    budget = limit - planning_baseline() - RESIDENT_ALLOWANCE
    if model.block_bytes(shape) <= budget:
        return tuple(shape)
    scaled = lambda f: tuple(min(n, max(b, int(b * f))) for n, b in zip(shape, block))
    low, high = 1.0, max(n / b for n, b in zip(shape, block))
    for _ in range(30):  # the largest common scale whose box fits
        mid = (low + high) / 2
        low, high = (mid, high) if model.block_bytes(scaled(mid)) <= budget else (low, mid)
    return scaled(low)


def _near_block(shape, chunks, halo, block, model) -> bool:
    """Whether the whole volume needs at most :data:`NEAR_BLOCK` times its largest block's array bytes
    under ``model`` (each with its own core: the volume has no halo), or, without a model, holds at most
    :data:`NEAR_BLOCK` times that block's voxels."""
    if model is None:
        return math.prod(shape) <= NEAR_BLOCK * math.prod(block)
    core = tuple(max(c) for c in plan_chunks(shape, chunks, halo)[0])
    return model.array_bytes(shape) <= NEAR_BLOCK * model.array_bytes(block, core)


def _block_shape(shape, chunks, halo):
    from deconv3d.pipeline.memory_model import largest_block

    return largest_block(shape, chunks, halo)
