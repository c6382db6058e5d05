"""The volumes of a chunked run (:func:`~deconv3d.pipeline.run.run_chunked`): each (time point, channel)
volume of the image run block by block with its own block callable, prepared on its measuring box
first where it asks to (the blocks that box holds written from that run), and what its blocks report
of their cores (top values, voxels counted at a level or near the faces) gathered for the record and
the warnings."""

from __future__ import annotations

import numpy as np

from deconv3d.errors import InputError, NonFiniteValues
from deconv3d.pipeline.block_geometry import aligned_box, box_blocks, write_box_blocks
from deconv3d.pipeline.chunked import BlockFigures, Cancelled, located, run_blocks
from deconv3d.pipeline.planning import RunPlan, measuring_box_shape
from deconv3d.pipeline.readers import _View, chunks_cached, close_sources
from deconv3d.pipeline.run_flags import cancel_requested
from deconv3d.pipeline.threads_and_memory import release_memory


def _decided(per_index: list) -> dict:
    """The parameters the prepared block callables took from each (time point, channel) volume
    (their ``decided()``): as they are for one volume; for several, each key a list of one value per
    volume in C order of the leading axes (None where a volume has none); empty where none has any."""
    if len(per_index) == 1 or not any(per_index):
        return per_index[0] if per_index else {}
    keys = dict.fromkeys(k for d in per_index for k in d)
    return {k: [d.get(k) for d in per_index] for k in keys}


def _run_all(reader, target_path, indices, fns, block_fn, axes, plan: RunPlan, client, workers, progress, total,
             cancel=None, channels=None):
    """Run every (time point, channel) ``index`` of ``reader`` block by block into ``target_path``;
    ``channels`` (names and colours) name an index in the warnings of its preparing pass. Returns
    what the prepared block callables took from the volumes, for the record (:func:`_decided`; with the
    voxels at or above a level that their blocks counted, where a callable's ``counts_at()`` gives one,
    summed over the volume's blocks), and the clips to warn of once the output is written
    (:func:`~deconv3d.pipeline.run._clip_warnings`): of each volume whose blocks looked for one (a block callable's
    ``counts_clip()``), its top values merged from its blocks' cores, the method the warning names and
    the volume's view (which names it); and the voxels fitted as clipped that lie within the PSF's reach
    of their volume's faces, summed over the volumes whose callables count them (``counts_near_faces()``:
    the zero boundary; None where none does)."""
    from concurrent.futures import ThreadPoolExecutor

    from deconv3d._saturation import merge_top_two

    done, said, decided, clips, nears = 0, set(), [], [], None
    pool = ThreadPoolExecutor(max(1, int(workers))) if client is None else None
    try:
        for index in indices:
            fn = _fn_for(fns, block_fn, index, axes)
            view = _view(reader, index, axes, channels, said)
            method = fn.counts_clip() if hasattr(fn, "counts_clip") else None
            figures = _figures(fn, method)
            fn, done = _run_volume(reader, fn, view, target_path, index, plan, figures, client, workers, progress,
                                   done, total, pool, cancel)
            if figures.counts is not None:  # each block's core counted once: the volume's voxels at or above the level
                fn = fn.counted(sum(figures.counts))
            decided.append(fn.decided() if hasattr(fn, "decided") else {})
            _refuse_all_flagged(decided[-1], plan.shape, view.where)
            if figures.tops is not None:
                clips.append((merge_top_two(figures.tops), method, view))
            if figures.nears is not None:
                nears = (nears or 0) + sum(figures.nears)
    except NonFiniteValues as exc:  # found by a block or the measuring box: named with its volume and axes
        raise exc.with_details(letters=axes[len(index):], volume=view.where) from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        close_sources(reader)  # no block reads it now: a long session does not hold the file open
    return _decided(decided), clips, nears


def _run_volume(reader, fn, view, target_path, index, plan: RunPlan, figures: BlockFigures, client, workers,
                progress, done, total, pool, cancel):
    """Run the blocks of one (time point, channel) ``index`` into ``target_path``: ``fn`` prepared first
    on its measuring box where it has ``prepare`` and the volume has several blocks (or on the whole
    volume by ``prepare_whole`` where it is one), the blocks that box covered skipped. Returns
    ``fn`` (prepared) and ``done``, the blocks done so far, with this volume's added."""
    # the measuring box's chunks serve the blocks, unless a limit gives that box all of it
    with chunks_cached(reader, plan.cache, now=plan.memory_limit is None) as start_cache:
        # prepare reads one box (no block is in flight meanwhile); a volume that is one block
        # needs no common schedule, and preparing would run the method twice.
        covered = []
        if hasattr(fn, "prepare") and plan.blocks > 1:
            fn, covered = _prepare(fn, view, plan, target_path, index, figures)
            done += len(covered)
            if (covered and progress is not None and progress(done, total)) or cancel_requested(cancel):
                raise Cancelled(f"cancelled after {done} of {total} blocks")
        elif hasattr(fn, "prepare_whole") and plan.blocks == 1:
            fn = fn.prepare_whole(view)
        start_cache()
        figures.faces = _faces(fn, figures.nears)
        done += run_blocks(reader, fn, target_path, chunks=plan.run_chunks, halo=plan.halo, lead=index,
                           client=client, workers=workers, progress=progress, done=done, total=total,
                           pool=pool, skip=covered, cancel=cancel, figures=figures)
    return fn, done


def _figures(fn, method) -> BlockFigures:
    """What the blocks of ``fn`` (before it is prepared) are to report of their cores (:class:`BlockFigures`):
    their top values where ``method`` (its ``counts_clip()``) names one, their voxels at or above its
    ``counts_at()`` level where it gives one, and lists for those near the volume's faces where its
    ``counts_near_faces()`` gives anything (the level, known once prepared: :func:`_faces`)."""
    tops = None if method is None else []  # (asked before prepare, which resolves auto to a level or none)
    level = fn.counts_at() if hasattr(fn, "counts_at") else None  # (a level given: prepare keeps it)
    # (a level, or auto's once prepared: asked again then; the blocks' count adds to the run's)
    near = [] if hasattr(fn, "counts_near_faces") and fn.counts_near_faces() is not None else None
    return BlockFigures(tops, None if level is None else [], near, level)


def _faces(fn, near: list | None):
    """What the blocks of ``fn`` (prepared) count near the volume's faces, where ``near`` gathers it: its
    ``counts_near_faces()`` where that gives a level (``(level, reach)``), else None (``auto`` found no
    plateau: nothing is fitted as clipped)."""
    faces = fn.counts_near_faces() if near is not None and hasattr(fn, "counts_near_faces") else None
    return faces if faces is not None and isinstance(faces[0], float) else None


def _refuse_all_flagged(decided: dict, shape, where: str) -> None:
    """Refuse, as an in-memory run does, a volume (of ``shape``, named ``where``) whose voxels are all at or
    above the saturation level its block callable took (``decided``: ``saturation_level`` and
    ``saturated_voxels``, where counted): :func:`~deconv3d._saturation.refuse_all_flagged`. The run's
    output is not published then."""
    from deconv3d._saturation import refuse_all_flagged

    if decided.get("saturated_voxels") is not None and decided.get("saturation_level") is not None:
        refuse_all_flagged(decided["saturated_voxels"], int(np.prod(shape)), decided["saturation_level"], where)


def _prepare(fn, view, plan: RunPlan, target_path, index, figures: BlockFigures | None = None):
    """``fn`` prepared on its measuring box (:func:`~deconv3d.pipeline.planning.measuring_box_shape`,
    placed to hold whole blocks: :func:`~deconv3d.pipeline.block_geometry.aligned_box`), and the blocks
    written from the method's result on that box, where its ``prepare_with_output`` returns one
    (accelerated RL measuring its steps: those blocks are not run again). With ``figures``, what those
    blocks' cores hold is added to its lists, as the blocks run report theirs
    (:class:`~deconv3d.pipeline.block_figures.BlockFigures`), from the box's values the measuring run read
    (:attr:`~deconv3d.pipeline.readers._View.keep`), the faces' level being the prepared ``fn``'s
    (:func:`_faces`, set on ``figures``)."""
    sizes = plan.dask_chunks  # the blocks' core sizes
    box = aligned_box(plan.shape, sizes, plan.depth,
                      measuring_box_shape(plan.shape, plan.chunks, plan.halo, plan.model, plan.memory_limit))
    counting = figures is not None and figures.gathers()
    view.keep = box if counting and hasattr(fn, "prepare_with_output") else None
    try:
        fn, output = _prepared(fn, view, box)
        covered = box_blocks(plan.shape, sizes, plan.depth, box) if output is not None else []
        if counting:
            figures.faces = _faces(fn, figures.nears)
        for write, core in _covered_cores(view, box, covered) if counting else ():
            figures.add(figures.measure(core, (tuple(w.start for w in write), tuple(plan.shape))))
    finally:
        view.keep = view.kept = None
    if covered:
        write_box_blocks(output, box, covered, target_path, index)
    del output
    release_memory()
    return fn, covered


def _prepared(fn, view, box):
    """``fn`` prepared on ``box`` of ``view`` and its output there (None where it gives none); NaN or Inf
    values that it refused are named by where the first one lies in the box (read again, only then)."""
    try:
        if hasattr(fn, "prepare_with_output"):
            return fn.prepare_with_output(view, box)
        # the hook's contract: the box's shape (a callable centres it)
        return fn.prepare(view, tuple(b.stop - b.start for b in box)), None
    except NonFiniteValues as exc:  # (only that refusal: the box is read again to find where)
        raise located(exc, np.asarray(view[tuple(box)], dtype=np.float32), [b.start for b in box]) from None


def _covered_cores(view, box, covered):
    """Each ``covered`` block's ``write`` region and the values of its core there, from the values of ``box``
    the measuring run read (``view.kept``); read again where it read no such box."""
    values, view.keep = view.kept, None
    for write in covered:
        inside = tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(write, box))
        yield write, view[tuple(write)] if values is None else np.asarray(values)[inside]


def _channel_name(reader, index, axes, channels) -> str:
    """The channel of the volume at ``index`` of the leading axes as warnings name it (``channel 1 (RFP)``),
    "" where the image has one channel."""
    from deconv3d.pipeline.negatives import _index_names

    return " ".join(_index_names(axes[:len(index)], reader.shape, index, channels, axes="C"))


def _view(reader, index, axes, channels, said) -> _View:
    """The image at ``index`` of the leading axes, as a :class:`~deconv3d.pipeline.readers._View` that
    names it (``channel 1 (RFP) at time point 0``) for the warnings of a preparing pass."""
    from deconv3d.pipeline.negatives import _index_names

    lead = axes[:len(index)]
    where = " at ".join(_index_names(lead, reader.shape, index, channels))
    return _View(reader, index, where, index[lead.index("C")] if "C" in lead else None, said)


def _fn_for(fns, block_fn, index, axes):
    if fns is None:
        return block_fn
    channel = index[axes.index("C")] if "C" in axes else 0
    if channel >= len(fns):
        raise InputError(f"channel {channel} has no block function (got {len(fns)}): give one per channel")
    return fns[channel]
