"""The entry point of out-of-core execution: :func:`run_chunked` applies a per-block callable over an
image, with a halo, into an OME-Zarr image, and returns a :class:`RunInfo`.

It checks its options and the source (axes, time axis, origin, channels and voxel size, a
:class:`~deconv3d.omezarr.LazyImage`'s or an OME-Zarr level's own where not given), plans the blocks
(:mod:`~deconv3d.pipeline.planning`), prepares each block callable on its measuring box where it asks
to (writing the blocks that box holds from that run), runs the blocks of every time point and
channel (:mod:`~deconv3d.pipeline.volume_runs`, :func:`~deconv3d.pipeline.chunked.run_blocks`) into an
image created under a temporary name, and renames it into place only when it is complete
(:mod:`~deconv3d.pipeline.output`).
"""

from __future__ import annotations

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
from deconv3d.pipeline.block_geometry import stored_chunks
from deconv3d.pipeline.chunked import Cancelled, ProgressCallback, _verify_source
from deconv3d.pipeline.memory_model import MemoryModel
from deconv3d.pipeline.output import atomic_output
from deconv3d.pipeline.planning import RunPlan
from deconv3d.pipeline.readers import as_reader, source_files
from deconv3d.pipeline.records import run_fft_environment
from deconv3d.pipeline.run_flags import cancel_requested
from deconv3d.pipeline.volume_runs import _channel_name, _run_all

__all__ = ["run_chunked", "RunInfo", "warn_of_clips"]


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
    decided: dict = field(default_factory=dict)  # parameters taken from the volume (a saturation level): recorded
    #: Each (time point, channel) volume's channel, as warnings name it (``channel 1 (RFP)``; "" for one
    #: channel), in the order of ``decided``'s lists: what the command line groups its lines by.
    volume_channels: tuple = ()
    #: The ``deconv3d: warning:`` lines of the volumes whose blocks found them clipped (a callable's
    #: ``counts_clip()``): issued by run_chunked once the output is written, or, with ``warn_clips=False``,
    #: left to its caller (:func:`warn_of_clips`).
    clip_warnings: tuple = ()


def run_chunked(data, block_fn: Callable | Sequence[Callable], output, *, axes: str | None = None,
                chunks: Sequence[int] | None = None, halo: Sequence[int] | None = None, memory_limit=None,
                model: MemoryModel | None = None, voxel_size=None, provenance: dict | None = None,
                pyramid_levels: int = 0, client=None, workers: int = 1,
                progress: ProgressCallback | None = None, time_axis: tuple | None = None,
                origin: Sequence[float] | None = None, channels: Sequence[dict] | None = None,
                cancel=None, warn_clips: bool = True) -> RunInfo:
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
        callable per channel (e.g. one PSF per emission wavelength; another count is refused before any
        block runs). A callable with a
        ``halo()`` method supplies the default halo; one with ``prepare(data, block_shape)`` is
        replaced by what that returns before a run of more than one block (RL's acceleration
        schedule, measured on a centred box of that shape). One with
        ``prepare_with_output(data, box)`` (``box`` a tuple of slices, placed to hold whole
        blocks) returning ``(callable, output)`` has that called instead: ``output``, unless
        None, is its result on ``data[box]``, and the blocks the box holds are written from it
        rather than run. One with ``prepare_whole(data)`` is replaced by what that returns
        before a run of one block (the volume's statistics and its warnings, without the
        measuring run that block would repeat). One with ``counts_clip()`` returning a method's name
        has the top values of its blocks' cores counted as they run, and
        a volume that looks clipped warned of once the output is written, in the words an in-memory run
        of that method uses (:func:`~deconv3d._saturation.warn_if_clipped`); None: not counted. One with
        ``counts_at()`` returning a level has the voxels of its blocks' cores at or above it counted as
        they run (each voxel once) and summed per volume, and is replaced by ``counted(sum)`` before its
        ``decided()`` is recorded; None: not counted. One with ``counts_near_faces()`` returning
        ``(level, reach)`` (RL with the zero boundary and a saturation level) has those of its blocks'
        voxels at or above the level (once prepared) that lie within ``reach`` of the volume's faces
        counted as they run, and a line of their sum over the volumes warned of with the clips
        (:func:`~deconv3d._saturation.zero_boundary_warning`, as an in-memory run warns).
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
    warn_clips : bool
        Issue the clip warnings (:attr:`RunInfo.clip_warnings`) once the output is written (default);
        False leaves them to the caller (:func:`warn_of_clips`), for one that makes another output from
        this one: :func:`~deconv3d.pipeline.files.deconvolve_file` issues them once its TIFF is written.
    """
    from deconv3d._fftw_planning import measuring_run

    start = time.perf_counter()
    _check_whole_numbers(chunks, halo, workers, pyramid_levels)
    output = _checked_output(output, data)
    unnamed_time = data if time_axis is None else None  # (the input, whose time axis is taken: its unit's warning)
    reader, axes, time_axis, origin, channels, voxel_size = _source(data, axes, time_axis, origin, channels,
                                                                    voxel_size)
    fns = _per_channel_fns(block_fn, reader.shape, axes)
    plan, cap, indices = _planned(reader, axes, fns or [block_fn], chunks, halo, memory_limit, model, workers, client)
    total = plan.blocks * len(indices)
    execution = plan.execution(total, workers, client, asked_limit=memory_limit)
    provenance = _provenance_with_run(provenance, execution, plan, fns or [block_fn])  # before it is published
    _before_the_first_block(progress, total, cancel, unnamed_time, axes)
    # under a limit, freed arrays are unmapped: else heap fragments pile up block after block (allocator.py);
    # the measuring box and every block are one run for FFTW's measuring budget (measuring_run)
    with large_allocations_returned(plan.memory_limit is not None), measuring_run(), atomic_output(output, folder=True) as tmp:
        _create_image(tmp, output, reader, plan, cap, axes, voxel_size, provenance, time_axis, origin)
        decided, clips, near = _run_all(reader, os.path.join(tmp, "0"), indices, fns, block_fn, axes, plan, client,
                                        workers, progress, total, cancel, channels)
        if provenance is not None and decided:
            _record_decided(tmp, decided)
        _finish_image(tmp, reader, channels, pyramid_levels, workers)
    info = _run_info(reader, plan, axes, channels, indices, time.perf_counter() - start, execution, provenance,
                     decided, clips, near)
    if warn_clips:
        warn_of_clips(info)
    return info


def _planned(reader, axes, block_fns, chunks, halo, memory_limit, model, workers, client):
    """(the run's :class:`RunPlan`, with its chunk cache; the stored chunks' cap; the (time point, channel)
    indices of the volumes): stored chunks no longer than write_ome_zarr's."""
    from deconv3d.omezarr.writing import CHUNK_CAP

    lead = sum(a in "TC" for a in axes)
    cap = tuple(CHUNK_CAP[a] for a in axes[lead:])  # stored chunks no longer than write_ome_zarr's
    plan = RunPlan.make(tuple(reader.shape[lead:]), block_fns, chunks, halo, memory_limit, model, workers,
                        client, cap).with_cache(reader, lead)
    return plan, cap, list(np.ndindex(*reader.shape[:lead]))


def _before_the_first_block(progress, total, cancel, unnamed_time, axes) -> None:
    """Once planned (the total is known, nothing written yet): raise :class:`Cancelled` where ``progress(0,
    total)`` returns True or ``cancel`` is set, then warn of a time unit without a name: ``unnamed_time``'s
    ``time_problem`` (a :class:`~deconv3d.omezarr.LazyImage`'s; None: no warning), with its
    ``time_problem_without_file``."""
    # planned: the total is known, nothing written yet
    if (progress is not None and progress(0, total)) or cancel_requested(cancel):
        raise Cancelled("cancelled before the first block")
    problem = getattr(unnamed_time, "time_problem", None)
    if problem and "T" in axes:  # a time unit without a name: said once, by the run that writes the axis
        warn(f"deconv3d: warning: {problem}", without_file=getattr(unnamed_time, "time_problem_without_file", None))


def _run_info(reader, plan: RunPlan, axes, channels, indices, seconds, execution, provenance, decided, clips,
              near) -> RunInfo:
    """The :class:`RunInfo` of a run written in ``seconds``, with its clip warnings (:func:`_clip_warnings`)."""
    return RunInfo(plan.zarr_chunks, plan.depth, plan.blocks * len(indices), plan.predicted, seconds,
                   tuple(max(c) for c in plan.dask_chunks) if plan.dask_chunks else plan.shape, execution,
                   (provenance or {}).get("environment", {}), decided,
                   tuple(_channel_name(reader, index, axes, channels) for index in indices),
                   _clip_warnings(clips, near))


def _checked_output(output, data) -> Path:
    """The output folder as an absolute path, refused where it is a TIFF or overlaps the input's files."""
    if Path(output).suffix.lower() in TIFF_SUFFIXES:
        raise InputError(f"run_chunked writes an OME-Zarr folder, not a TIFF ({output}): give a path ending in .zarr "
                         "(deconv3d.pipeline.files.deconvolve_file writes TIFF)")
    output = Path(output).absolute()  # where a cluster's workers, each in a folder of its own, write the blocks
    refuse_input_overlap(output, source_files(data))  # (replaced once complete, it was the input's result)
    return output


def _provenance_with_run(provenance: dict | None, execution: dict, plan: RunPlan, block_fns) -> dict | None:
    """The provenance with how the run goes and, where it records an environment, its blocks' FFT backend
    (None without one): recorded before the output is published, not after."""
    if provenance is None:
        return None
    provenance = {**provenance, "execution": execution}
    if "environment" in provenance:  # the FFT backend of these blocks' transforms
        transforms = plan.fft_shapes(block_fns)
        provenance["environment"] = run_fft_environment(provenance["environment"], transforms)
    return provenance


def _create_image(tmp, output, reader, plan: RunPlan, cap, axes, voxel_size, provenance, time_axis, origin) -> None:
    """Create the empty OME-Zarr image at ``tmp``, stored in whole chunks of each block no longer than ``cap``."""
    from deconv3d.omezarr import create_ome_zarr

    lead = sum(a in "TC" for a in axes)
    stored = stored_chunks(plan.shape, plan.zarr_chunks, cap)  # whole chunks of each block, capped
    create_ome_zarr(tmp, reader.shape, (1,) * lead + stored, axes=axes, voxel_size=voxel_size,
                    provenance=provenance, name=image_stem(output),
                    time_axis=time_axis if "T" in axes else None, origin=origin)


def _finish_image(tmp, reader, channels, pyramid_levels, workers) -> None:
    """Once every block is written: check the source is unchanged, then add the channels' metadata and
    the pyramid levels."""
    from deconv3d.omezarr import write_omero, write_pyramid

    _verify_source(reader)  # a file moved or rewritten after the last block was read: no output
    if channels:  # the input's channel names and colours, not lost on the way
        write_omero(tmp, channels, workers=workers)
    if pyramid_levels:  # as many chunks at once as blocks were: the limit budgeted those
        write_pyramid(tmp, pyramid_levels, workers=workers)


def _record_decided(tmp, decided: dict) -> None:
    """Add to the provenance written with the image (its ``parameters``) what the block callables
    took from the volume once prepared (:func:`~deconv3d.pipeline.volume_runs._decided`): known only after
    the blocks' preparing."""
    import zarr

    group = zarr.open_group(str(tmp), mode="r+")
    record = dict(group.attrs["deconv3d"])
    record["parameters"] = {**record.get("parameters", {}), **decided}
    group.attrs["deconv3d"] = record


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


def _per_channel_fns(block_fn, shape, axes: str) -> list | None:
    """``block_fn`` as a list where it is a sequence of block callables, one per channel; None where it is
    one callable for all. Refuse, before any work, a sequence that is not one per channel (an image
    without a ``C`` axis has one): three for two channels ran the first two, the third left unused, and two
    for one channel ran the first on every time point, without a word."""
    fns = list(block_fn) if isinstance(block_fn, (list, tuple)) else None
    count = shape[axes.index("C")] if "C" in axes else 1
    if fns is not None and len(fns) != count:
        raise InputError(f"{len(fns)} block function(s) for an image of {count} channel(s): "
                         "give one per channel, or one callable for all")
    return fns


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


def _clip_warnings(clips, near: int | None = None) -> tuple:
    """The ``deconv3d: warning:`` lines of the volumes in ``clips``
    (:func:`~deconv3d.pipeline.volume_runs._run_all`'s) that look clipped, as an in-memory run words them
    (:func:`~deconv3d._saturation.warn_if_clipped`: once per channel), to be issued once the output is
    written: a run without a pass over the volume learns it from its blocks. Then, where ``near`` (the
    voxels fitted as clipped within the PSF's reach of their volume's faces with the zero boundary, summed
    over the run's volumes) is more than 0, the in-memory run's line of them
    (:func:`~deconv3d._saturation.zero_boundary_warning`), once."""
    from deconv3d._saturation import warn_if_clipped, zero_boundary_warning

    lines: list = []
    for top, method, view in clips:
        warn_if_clipped(top, method, lines, view=view)
    if near:
        lines.append(zero_boundary_warning(near))
    return tuple(lines)


def warn_of_clips(info: RunInfo) -> None:
    """Issue the clip warnings of a run (:attr:`RunInfo.clip_warnings`) that :func:`run_chunked`, called
    with ``warn_clips=False``, left to its caller (:func:`~deconv3d.errors.warn`)."""
    for line in info.clip_warnings:
        warn(line)
