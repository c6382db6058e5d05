"""Out-of-core execution: any per-block callable over an image, with a halo, into OME-Zarr.

:func:`run_chunked` is the entry point: it picks the chunk shape (given, or the largest that fits
a memory limit under :class:`~deconv3d.pipeline.memory_model.MemoryModel`), runs the callable block by
block, each block one self-contained task that reads its region plus halo straight from the
source (:func:`~deconv3d.pipeline.chunked.run_blocks`), writes every block
straight into the level-0 array of an OME-Zarr image created under a temporary name, adds the
optional pyramid, and renames the image into place only when it is complete
(:mod:`~deconv3d.pipeline.output`). Method-specific block callables and their halo rules live in
:mod:`~deconv3d.pipeline.methods`; folders of files in :mod:`~deconv3d.pipeline.batch`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from deconv3d._arrays import is_whole
from deconv3d._paths import TIFF_SUFFIXES, image_stem, refuse_input_overlap
from deconv3d.errors import InputError, warn
from deconv3d.pipeline.allocator import large_allocations_returned
from deconv3d.pipeline.block_geometry import (aligned_box, axis_regions, box_blocks, plan_chunks,
                                              sides_in_whole_chunks, stored_chunks, write_box_blocks)
from deconv3d.pipeline.chunked import Cancelled, ProgressCallback, _verify_source, run_blocks
from deconv3d.pipeline.graph import blockwise, store_blocks
from deconv3d.pipeline.memory import choose_chunks, limit_for_available, round_chunks
from deconv3d.pipeline.memory_model import RESIDENT_ALLOWANCE, MemoryModel
from deconv3d.pipeline.methods import NetworkBlock, RichardsonLucyBlock, WienerBlock, chunk_multiple_for, halo_for
from deconv3d.pipeline.output import atomic_output, remove_stale_temporaries
from deconv3d.pipeline.readers import (_View, as_reader, chunk_cache_budget, chunk_reads_spare, chunks_cached,
                                       close_sources, source_files)
from deconv3d.pipeline.records import (provenance, psf_source, psf_summary, run_environment, run_fft_environment,
                                       tiff_properties)
from deconv3d.pipeline.run_flags import cancel_requested
from deconv3d.pipeline.system_memory import format_bytes, parse_memory, planning_baseline
from deconv3d.pipeline.threads_and_memory import release_memory

__all__ = ["run_chunked", "RunInfo", "provenance", "Cancelled", "MemoryModel", "choose_chunks", "parse_memory",
           "RichardsonLucyBlock", "WienerBlock", "NetworkBlock", "atomic_output", "remove_stale_temporaries",
           "plan_chunks", "blockwise", "store_blocks", "run_blocks", "psf_summary", "psf_source", "run_environment",
           "tiff_properties"]


@dataclass(frozen=True)
class RunInfo:
    """What :func:`run_chunked` did: the core block shape it used (the chunks asked for, rounded to a
    network's pooling grid, cut to the volume and at least the halo, then a side longer than the
    stored chunks' cap cut to whole chunks, or rounded up to them where cutting would leave it
    shorter than the halo; the last block along an axis
    also holds a remainder shorter than the halo), halo, number of blocks, predicted peak bytes."""

    chunks: tuple
    halo: tuple
    blocks: int
    predicted_peak: int | None
    seconds: float
    largest_block: tuple = ()  # the largest core block (a remainder shorter than the halo merged in)
    execution: dict = field(default_factory=dict)  # how it ran, as the provenance records it
    environment: dict = field(default_factory=dict)  # in what, as the provenance records it (its blocks' FFT backend)


def _spatial_plan(spatial_shape, block_fns, chunks, halo, memory_limit, model, workers, local: int = 1,
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
    ndim = len(spatial_shape)
    if halo is None:
        asked = [h for h in (halo_for(f) for f in block_fns) if h]
        halo = tuple(max(axis) for axis in zip(*asked))  # () when none asks
    halo = tuple(halo) or (0,) * ndim
    if len(halo) != ndim:
        raise InputError(f"halo {halo} needs one value per spatial axis of {tuple(spatial_shape)}")
    predicted, multiple = None, max(chunk_multiple_for(f) for f in block_fns)
    if memory_limit is not None:  # refused by name first ("lots" or -1 were told they lacked a memory model)
        parse_memory(memory_limit)
        if chunks is None and model is None:
            raise InputError("a memory limit needs a memory model of the method to choose the chunks: pass "
                             "model=MemoryModel(method, psf.shape), e.g. MemoryModel(\"rl\", psf.shape), or give "
                             "chunks instead")
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
        limit = parse_memory(memory_limit)
        chunks = choose_chunks(spatial_shape, limit, model, halo, workers=workers, baseline=planning_baseline(),
                               multiple=multiple, automatic=automatic, cap=cap, processes=local)
        if automatic:
            warn(f"deconv3d: warning: the whole volume {tuple(spatial_shape)} would need more memory than is "
                 f"available: running it in blocks of {tuple(chunks)} within {format_bytes(limit)} (set "
                 "--memory-limit or --chunks to choose)")
    if chunks is None:
        chunks = tuple(spatial_shape)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(spatial_shape) or min(chunks) < 1:
        raise InputError(f"--chunks {chunks} needs {len(spatial_shape)} positive values (one per spatial axis)")
    requested = round_chunks(chunks, spatial_shape, multiple)  # a network's chunks in whole pooling cells
    chunks = requested
    if cap is not None:  # blocks of whole stored chunks, each no longer than the cap
        chunks = sides_in_whole_chunks(chunks, spatial_shape, cap, multiple, halo)  # (enlarged to the halo first)
    if model is not None:
        baseline = planning_baseline()
        predicted = model.peak_bytes(chunks, halo, spatial_shape, workers=workers, baseline=baseline)
        if given and memory_limit is not None:  # chunks given with a limit: hold them to it
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
    return chunks, halo, predicted, memory_limit


def _on_gpu(block_fn) -> bool:
    """Whether a block callable runs on a CUDA device (its ``device`` attribute, when it has one)."""
    device = getattr(block_fn, "device", None)
    if device is None:
        return False
    from deconv3d._tensors import resolve_device

    return resolve_device(device).type == "cuda"


def run_chunked(data, block_fn: Callable | Sequence[Callable], output, *, axes: str | None = None,
                chunks: Sequence[int] | None = None, halo: Sequence[int] | None = None, memory_limit=None,
                model: MemoryModel | None = None, voxel_size=None, provenance: dict | None = None,
                pyramid_levels: int = 0, client=None, workers: int = 1,
                progress: ProgressCallback | None = None, time_axis: tuple | None = None,
                origin: Sequence[float] | None = None, channels: Sequence[dict] | None = None,
                cancel=None) -> RunInfo:
    """Apply ``block_fn`` over ``data`` chunk by chunk with a halo and write an OME-Zarr image.

    Parameters
    ----------
    data : ndarray, dask.array.Array, block reader or LazyImage
        The image; axes ``axes`` (leading ``T``/``C`` allowed, ``"ZX"`` or ``"ZY"`` for a section
        through a stack; any other order, such as ``"XYZ"``, is refused, not reordered: transpose
        such data first). Default: a LazyImage's own, or those of the OME-Zarr image whose level a
        :class:`~deconv3d.omezarr.ZarrReader` reads, else ``"ZYX"``/``"YX"`` for 3D/2D data; 4D
        or 5D data with no axes of its own is refused (pass ``axes="TZYX"`` or ``"CZYX"``). Each
        block reads only its own region plus halo: from a file with a block reader
        (:class:`~deconv3d.omezarr.ZarrReader`, :class:`~deconv3d.omezarr.TiffReader`, or a
        :class:`~deconv3d.omezarr.LazyImage`, whose reader is used), else by slicing the array.
    block_fn : callable or sequence of callables
        ``block -> block`` on float32 spatial blocks (same shape out). A sequence gives one
        callable per channel (e.g. one PSF per emission wavelength). A callable with a
        ``halo()`` method supplies the default halo; one with ``prepare(data, block_shape)`` is
        replaced by what that returns before a run of more than one block (RL's acceleration
        schedule, measured on a centred box of that shape). One with
        ``prepare_with_output(data, box)`` (``box`` a tuple of slices, placed to hold whole
        blocks) returning ``(callable, output)`` has that called instead: ``output``, unless
        None, is its result on ``data[box]``, and the blocks the box holds are written from it
        rather than run.
    output : str or os.PathLike
        The ``.zarr`` directory to create; written under a temporary name, renamed when complete.
        Its chunks tile the blocks, each block writing chunks of its own, and are no longer than
        :data:`~deconv3d.omezarr.writing.CHUNK_CAP` (64 planes of 512 x 512): a block side above
        the cap (once enlarged to the halo) is cut to whole chunks, or rounded up to them where the
        halo needs it (:func:`~deconv3d.pipeline.block_geometry.sides_in_whole_chunks`). The file or zarr
        folder ``data`` is read from (:func:`~deconv3d.pipeline.readers.source_files`) is refused as
        the output, as is a path inside it or holding it, or a file or a symbolic link at the path,
        before any work.
    chunks, halo : sequence of int, optional
        Core chunk shape and halo per spatial axis. Default chunks: the largest that fit
        ``memory_limit`` under ``model``, else the whole volume. A callable with a
        ``chunk_multiple()`` method (the network: ``2**depth``) gets chunk sides rounded up to
        multiples of it. One whose ``placed`` attribute is true is called as
        ``fn(block, placement)`` (:class:`~deconv3d.pipeline.block_geometry.Placement`: where the block lies).
    memory_limit : int or str, optional
        Budget for the whole process, e.g. ``"4GB"``. Also fixes glibc's mmap threshold while the
        run lasts (:func:`~deconv3d.pipeline.allocator.large_allocations_returned`).
    model : MemoryModel, optional
    voxel_size, provenance, pyramid_levels, time_axis, origin
        Written into the OME-Zarr metadata (see :func:`deconv3d.omezarr.create_ome_zarr`); ``time_axis``,
        ``voxel_size`` and ``origin`` default to a :class:`~deconv3d.omezarr.LazyImage` input's own, or
        an OME-Zarr level's (:class:`~deconv3d.omezarr.ZarrReader`) (an uncalibrated
        input's origin, in voxels, scaled by ``voxel_size`` where one is given). A voxel size taken
        from the input is refused, as :func:`~deconv3d.pipeline.files.deconvolve_file` refuses it,
        where its unit cannot be read or it looks like nanometres (a side above 20 µm); one passed
        explicitly is written as given.
    channels : sequence of dict, optional
        The channels' names and colours (:attr:`~deconv3d.omezarr.LazyImage.channels`, the default
        for such an input), written as ``omero`` metadata with the output's own display windows
        (:func:`~deconv3d.omezarr.write_omero`: one more pass over the output).
    client : distributed.Client, optional
        Run the blocks on this cluster; else ``workers`` local threads. Blocks of a file are read
        by the workers themselves; blocks of an in-memory array are read here and sent along.
    progress : callable, optional
        ``progress(0, total)`` once the blocks are planned, then ``progress(done, total)`` per
        block; returning True cancels (:class:`Cancelled`).
    cancel : threading.Event, optional
        Set it (from any thread: a GUI's cancel button) to cancel without waiting for the next
        block: running blocks stop at their next check (an RL iteration, a network's tile), and
        :class:`Cancelled` is raised. A multi-block RL run's measuring of its acceleration steps,
        before the blocks, is not cut short. Cancelled runs leave no output.
    """
    from deconv3d._fftw_planning import measuring_run
    from deconv3d.omezarr import create_ome_zarr, write_omero, write_pyramid
    from deconv3d.omezarr.writing import CHUNK_CAP

    start = time.perf_counter()
    _check_whole_numbers(chunks, halo, workers, pyramid_levels)
    if Path(output).suffix.lower() in TIFF_SUFFIXES:
        raise InputError(f"run_chunked writes an OME-Zarr folder, not a TIFF ({output}): give a path ending in .zarr "
                         "(deconv3d.pipeline.files.deconvolve_file writes TIFF)")
    output = Path(output).absolute()  # where a cluster's workers, each in a folder of its own, write the blocks
    refuse_input_overlap(output, source_files(data))  # (replaced once complete, it was the input's result)
    time_problem = getattr(data, "time_problem", None) if time_axis is None else None  # (the input's, taken)
    reader, axes, time_axis, origin, channels, voxel_size = _source(data, axes, time_axis, origin, channels,
                                                                    voxel_size)
    lead = sum(a in "TC" for a in axes)
    fns = list(block_fn) if isinstance(block_fn, (list, tuple)) else None
    cap = tuple(CHUNK_CAP[a] for a in axes[lead:])  # stored chunks no longer than write_ome_zarr's
    plan = _Plan.make(tuple(reader.shape[lead:]), fns or [block_fn], chunks, halo, memory_limit, model, workers,
                      client, cap).with_cache(reader, lead)
    indices = list(np.ndindex(*reader.shape[:lead]))
    total = plan.blocks * len(indices)
    execution = plan.execution(total, workers, client, asked_limit=memory_limit)
    if provenance is not None:  # how it ran, recorded before the output is published (not after)
        provenance = {**provenance, "execution": execution}
        if "environment" in provenance:  # the FFT backend of these blocks' transforms
            transforms = plan.fft_shapes(fns or [block_fn])
            provenance["environment"] = run_fft_environment(provenance["environment"], transforms)
    # planned: the total is known, nothing written yet
    if (progress is not None and progress(0, total)) or cancel_requested(cancel):
        raise Cancelled("cancelled before the first block")
    if time_problem and "T" in axes:  # a time unit without a name: said once, by the run that writes the axis
        warn(f"deconv3d: warning: {time_problem}")
    # under a limit, freed arrays are unmapped: else heap fragments pile up block after block (allocator.py);
    # the measuring box and every block are one run for FFTW's measuring budget (measuring_run)
    with large_allocations_returned(plan.memory_limit is not None), measuring_run(), atomic_output(output, folder=True) as tmp:
        stored = stored_chunks(plan.shape, plan.zarr_chunks, cap)  # whole chunks of each block, capped
        create_ome_zarr(tmp, reader.shape, (1,) * lead + stored, axes=axes, voxel_size=voxel_size,
                        provenance=provenance, name=image_stem(output),
                        time_axis=time_axis if "T" in axes else None, origin=origin)
        _run_all(reader, os.path.join(tmp, "0"), indices, fns, block_fn, axes, plan, client, workers, progress, total,
                 cancel)
        _verify_source(reader)  # a file moved or rewritten after the last block was read: no output
        if channels:  # the input's channel names and colours, not lost on the way
            write_omero(tmp, channels, workers=workers)
        if pyramid_levels:  # as many chunks at once as blocks were: the limit budgeted those
            write_pyramid(tmp, pyramid_levels, workers=workers)
    return RunInfo(plan.zarr_chunks, plan.depth, total, plan.predicted, time.perf_counter() - start,
                   tuple(max(c) for c in plan.dask_chunks) if plan.dask_chunks else plan.shape, execution,
                   (provenance or {}).get("environment", {}))


def _check_whole_numbers(chunks, halo, workers, pyramid_levels) -> None:
    """Refuse, by name, options of :func:`run_chunked` that are not whole numbers in range: chunks=8
    and pyramid_levels=2.5 failed deep inside with a TypeError, while halo=(-1, 0, 0) (a result 0.16
    of the peak off), workers=0 or 2.5 and pyramid_levels=-1 ran as something else."""
    for name, values, least, like in (("chunks", chunks, 1, "(32, 256, 256)"), ("halo", halo, 0, "(4, 8, 8)")):
        if values is not None and (isinstance(values, (str, bytes)) or not np.iterable(values)
                                   or not all(is_whole(v, least) for v in values)):
            kind = "positive" if least else "non-negative"
            raise InputError(f"{name} must be {kind} whole numbers, one per spatial axis (like {like}), got {values!r}")
    if not is_whole(workers, 1):
        raise InputError(f"workers must be a positive whole number, got {workers!r}")
    if not is_whole(pyramid_levels, 0):
        raise InputError(f"pyramid_levels must be a whole number >= 0, got {pyramid_levels!r}")


def _source(data, axes, time_axis, origin, channels, voxel_size=None):
    """(block reader, axes, time axis, origin, channels, voxel size) of ``data``; a
    :class:`~deconv3d.omezarr.LazyImage`, or a :class:`~deconv3d.omezarr.ZarrReader` of a level of
    an OME-Zarr image (:meth:`~deconv3d.omezarr.ZarrReader.image`), brings its own axes, time axis,
    origin, channels and voxel size where they are not given (without its voxel size, a run that kept
    its time axis wrote scale 1 and no unit in space); that voxel size is checked as deconvolve_file
    checks it (:func:`~deconv3d._voxel.recorded_voxel`: a print resolution's 100 µm pixels were
    written). Other data is ``"ZYX"`` or ``"YX"`` by default; 4D or 5D data without axes is refused
    (read as ``CZYX``, a time series ran each time point through another channel's callable). An
    uncalibrated image's origin (in voxels) is scaled to micrometres where the run gives the output a
    ``voxel_size``, and kept in voxels where it gives none."""
    from deconv3d._voxel import checked_voxel_size, recorded_voxel
    from deconv3d.omezarr import LazyImage, ZarrReader
    from deconv3d.omezarr.writing import axes_or_default

    # (a level's metadata: read if needed; "is None", as "None in" compared an array origin element-wise)
    missing = not axes or any(given is None for given in (time_axis, origin, channels, voxel_size))
    image = data if isinstance(data, LazyImage) else data.image() if isinstance(data, ZarrReader) and missing else None
    if image is not None:
        axes = axes or image.axes
        time_axis = time_axis if time_axis is not None else image.time_axis
        channels = channels if channels is not None else image.channels
        if voxel_size is None:  # the image's own, refused where deconvolve_file refuses it
            spatial = [a.lower() for a in image.axes if a.upper() in "ZYX"]  # (dy, dx) for a YX image
            voxel_size = recorded_voxel(image, f"voxel_size=({', '.join('d' + a for a in spatial)})")
        if origin is None and image.origin is not None:
            origin = image.origin
            if image.voxel_size is None and voxel_size is not None:
                origin = tuple(o * v for o, v in zip(origin, checked_voxel_size(voxel_size, len(origin))))
    reader = as_reader(data)
    axes = axes_or_default(axes, reader.shape)  # 4D or 5D data without axes: refused
    return reader, axes, time_axis, origin, channels, voxel_size


@dataclass
class _Plan:
    """How :func:`run_chunked` cuts a volume of ``shape``: core ``chunks`` and ``halo``, the halo
    the blocks get (``depth``, clipped to the volume; none when it runs as one block), the blocks'
    dask chunks and count, the zarr chunks of the output, the chunks the blocks run
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
    def make(cls, shape, block_fns, chunks, halo, memory_limit, model, workers, client, cap=None) -> "_Plan":
        # The limit budgets one process: blocks in flight in it are its threads (a cluster's worker
        # processes each hold their own blocks), not all of the cluster's workers.
        per_process = workers if client is None else _threads_per_worker(client)
        chunks, halo, predicted, memory_limit = _spatial_plan(shape, block_fns, chunks, halo, memory_limit, model,
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
                box = aligned_box(self.shape, sizes, self.depth, _sample_shape(self.shape, self.chunks, self.halo,
                                                                              self.model, self.memory_limit))
                covered = {tuple((w.start, w.stop) for w in b) for b in box_blocks(self.shape, sizes, self.depth, box)}
                boxes.add(tuple(b.stop - b.start for b in box))
            for block in itertools.product(*regions):  # (read, trim, write) per axis
                if tuple((w.start, w.stop) for _, _, w in block) not in covered:
                    boxes.add(tuple(r.stop - r.start for r, _, _ in block))
            shapes.update(tuple(s) for b in boxes for s in fn.fft_shapes(b))
        return sorted(shapes)

    def with_cache(self, reader, lead: int) -> "_Plan":
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


def _run_all(reader, target_path, indices, fns, block_fn, axes, plan: _Plan, client, workers, progress, total,
             cancel=None):
    """Run every (time point, channel) ``index`` of ``reader`` block by block into ``target_path``."""
    from concurrent.futures import ThreadPoolExecutor

    done = 0
    pool = ThreadPoolExecutor(max(1, int(workers))) if client is None else None
    try:
        for index in indices:
            fn = _fn_for(fns, block_fn, index, axes)
            # the measuring box's chunks serve the blocks, unless a limit gives that box all of it
            with chunks_cached(reader, plan.cache, now=plan.memory_limit is None) as start_cache:
                # prepare reads one box (no block is in flight meanwhile); a volume that is one block
                # needs no common schedule, and preparing would run the method twice.
                covered = []
                if hasattr(fn, "prepare") and plan.blocks > 1:
                    fn, covered = _prepare(fn, _View(reader, index), plan, target_path, index)
                    done += len(covered)
                    if (covered and progress is not None and progress(done, total)) or cancel_requested(cancel):
                        raise Cancelled(f"cancelled after {done} of {total} blocks")
                start_cache()
                done += run_blocks(reader, fn, target_path, chunks=plan.run_chunks, halo=plan.halo, lead=index,
                                   client=client, workers=workers, progress=progress, done=done, total=total,
                                   pool=pool, skip=covered, cancel=cancel)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        close_sources(reader)  # no block reads it now: a long session does not hold the file open


def _prepare(fn, view, plan: _Plan, target_path, index):
    """``fn`` prepared on its measuring box (:func:`_sample_shape`, placed to hold whole blocks:
    :func:`~deconv3d.pipeline.block_geometry.aligned_box`), and the blocks written from the method's result
    on that box, where its ``prepare_with_output`` returns one (accelerated RL measuring its steps:
    those blocks are not run again)."""
    sizes = plan.dask_chunks  # the blocks' core sizes
    box = aligned_box(plan.shape, sizes, plan.depth,
                      _sample_shape(plan.shape, plan.chunks, plan.halo, plan.model, plan.memory_limit))
    if hasattr(fn, "prepare_with_output"):
        fn, output = fn.prepare_with_output(view, box)
    else:  # the hook's contract: the box's shape (a callable centres it)
        fn, output = fn.prepare(view, tuple(b.stop - b.start for b in box)), None
    covered = box_blocks(plan.shape, sizes, plan.depth, box) if output is not None else []
    if covered:
        write_box_blocks(output, box, covered, target_path, index)
    del output
    release_memory()
    return fn, covered


def _threads_per_worker(client) -> int:
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


def _fn_for(fns, block_fn, index, axes):
    if fns is None:
        return block_fn
    channel = index[axes.index("C")] if "C" in axes else 0
    if channel >= len(fns):
        raise InputError(f"channel {channel} has no block function (got {len(fns)}): give one per channel")
    return fns[channel]


def _prepare_runs_whole(block_fns, shape, chunks, halo, model, memory_limit) -> bool:
    """Whether a block callable's ``prepare`` would run its method over the whole volume (accelerated
    RL measuring its steps, when the memory model says the volume fits: :func:`_sample_shape`)."""
    runs = any(getattr(f, "prepare_runs_method", lambda: False)() for f in block_fns)
    return runs and _sample_shape(shape, chunks, halo, model, memory_limit) == tuple(shape)


def _sample_shape(shape, chunks, halo, model, memory_limit) -> tuple[int, ...]:
    """The shape of the box a block callable's ``prepare`` measures its common settings on
    (accelerated RL's step schedule; placed by :func:`~deconv3d.pipeline.block_geometry.aligned_box`):
    under a memory limit, the whole volume when the memory model says it
    fits, else the largest box scaled up from a block that does; one block otherwise (chunks
    given without a limit bound each block's memory, often a GPU's, which a larger box would
    overrun, and it would cost up to a whole-volume run before the blocks).

    The adaptive steps depend on the whole image: measured on one block, a chunked run differed
    from the whole-volume run by up to 11 % of the maximum (43 dB); on the whole volume it
    replays that run's steps exactly.
    """
    block = tuple(_block_shape(shape, chunks, halo))
    if model is None or memory_limit is None:
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


def _block_shape(shape, chunks, halo):
    from deconv3d.pipeline.memory_model import largest_block

    return largest_block(shape, chunks, halo)
