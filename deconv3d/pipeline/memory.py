"""The memory budget of a chunked run: its limit and the largest chunk shape that fits it.

A run given no memory limit takes one from the memory that is free (:func:`limit_for_available`,
:data:`AVAILABLE_SHARE` of it) when the whole volume would not fit; :func:`choose_chunks` then
picks, among even splits of the volume, the chunk shape with the least total work whose predicted
peak (:class:`~deconv3d.pipeline.memory_model.MemoryModel`) fits the limit, and
:func:`round_chunks` rounds chunk sides to a network's multiple. The memory model's counts are in
:mod:`deconv3d.pipeline.memory_model`; measuring the machine's memory and reading limits such as
``"4GB"`` is :mod:`deconv3d.pipeline.system_memory`.
"""

from __future__ import annotations

import math
from typing import Sequence

from deconv3d.errors import InputError
from deconv3d.pipeline.memory_model import RESIDENT_ALLOWANCE, MemoryModel
from deconv3d.pipeline.system_memory import available_memory, format_bytes

__all__ = ["choose_chunks", "round_chunks", "limit_for_available", "AVAILABLE_SHARE"]


#: Share of the available memory a run may take when it chose its blocks itself (no limit given).
AVAILABLE_SHARE = 0.8

def limit_for_available(model: "MemoryModel", shape: Sequence[int], baseline: int, held: int = 0,
                        processes: int = 1) -> int | None:
    """A memory limit for a run given none, or None when the whole ``shape`` fits in what is
    available (:func:`available_memory`) with ``held`` bytes more (an in-memory run's image and
    result): the memory now (``baseline``) plus :data:`AVAILABLE_SHARE` of what is available, or,
    for ``processes`` worker processes that run blocks at once (``--scheduler processes``: a whole
    volume runs in one of them), that share less the program's own memory of all of them but one
    (each loads its libraries, taken as ``baseline``: a LocalCluster worker grew from 329 to 517 MB
    after the free memory was measured, 120 MB per worker over the share), split equally among
    them. Without it a volume larger than the memory ran as one block until the kernel killed
    the process, with no message."""
    available = available_memory()
    if available is None:
        return None
    whole = model.peak_bytes(shape, (0,) * len(shape), shape, workers=1, baseline=baseline) + held
    share, processes = int(AVAILABLE_SHARE * available), max(1, int(processes))
    if whole <= baseline + share:
        return None
    return baseline + (share - (processes - 1) * baseline) // processes  # (= (share + baseline) / processes)


def _round_up(size: int, n: int, multiple: int) -> int:
    return min(n, -(-int(size) // multiple) * multiple)


def round_chunks(chunks: Sequence[int], shape: Sequence[int], multiple: int = 1) -> tuple[int, ...]:
    """Each chunk side rounded up to a multiple of ``multiple`` (or to the whole axis)."""
    return tuple(_round_up(c, n, max(1, int(multiple))) for c, n in zip(chunks, shape))


def _candidates(n: int, low: int, multiple: int = 1) -> list[int]:
    """Chunk sizes along an axis: the ceil(n / m) splits for m = 1, 2, ... down to ``low``.

    With ``multiple`` > 1 every size is rounded up to a multiple of it (or to ``n``).
    """
    sizes = {n}
    m = 2
    while True:
        size = _round_up(math.ceil(n / m), n, multiple)
        if size < low:
            break
        sizes.add(size)
        m += 1 if m < 16 else max(1, m // 8)
    return sorted(sizes)


def choose_chunks(shape: Sequence[int], memory_limit: int, model: MemoryModel, halo: Sequence[int], *,
                  workers: int = 1, baseline: int = 0, min_chunk: int = 8, multiple: int = 1,
                  automatic: bool = False, cap: Sequence[int] | None = None, processes: int = 1) -> tuple[int, ...]:
    """The chunk shape that fits ``memory_limit`` with the least total work.

    Among candidate chunk shapes (even splits of every axis, no side below ``min_chunk`` or the
    halo) whose predicted peak fits, it returns the one that minimises the summed FFT volume of
    all blocks, i.e. the largest blocks with the least halo overhead. With ``multiple`` > 1
    (a network's ``2**depth``) every side is a multiple of it or the whole axis. With a ``cap``
    (the stored chunks' largest sides) each candidate is first taken as the run will take it, in
    whole stored chunks (:func:`~deconv3d.pipeline.block_geometry.sides_in_whole_chunks`), so that the
    peak is predicted for the blocks that run: a side rounded up to whole chunks after the choice
    went over the limit without a word.

    Raises
    ------
    InputError
        If not even the smallest candidate fits; the message says what its block needs, how much
        of that is the program's own (``baseline`` and :data:`RESIDENT_ALLOWANCE`), and suggests a
        limit that would fit it, or for an ``automatic`` limit (:func:`limit_for_available`, each of
        ``processes`` worker processes given an equal share of the free memory, less the program's
        own memory of the others) says that too little memory is free and about how much more to free.
    """
    shape = tuple(int(n) for n in shape)
    multiple = max(1, int(multiple))
    lows = [_round_up(max(min_chunk, h + 1), n, multiple) for n, h in zip(shape, halo)]
    axes = _axis_options(shape, lows, halo, multiple, cap)
    fixed = baseline + RESIDENT_ALLOWANCE
    best, smallest, least = _least_work(axes, fixed, workers, model, memory_limit, tuple(lows))
    if best is None:
        _raise_none_fits(shape, halo, least, smallest, fixed, memory_limit, workers, automatic, processes)
    return tuple(best)


def _axis_options(shape, lows, halo, multiple: int, cap) -> list[list[tuple]]:
    """Each axis's candidate sides, planned: per candidate (chunk, largest core, largest block as
    peak_bytes counts it, blocks, padded core side). :func:`~deconv3d.pipeline.block_geometry.plan_chunks`
    works axis by axis, so each axis's candidates are planned once here, not once per combination
    (260 000 combinations for a 2000 x 20000 x 20000 stack)."""
    from deconv3d.pipeline.block_geometry import plan_chunks, sides_in_whole_chunks

    axes = []
    for axis, (n, low, h) in enumerate(zip(shape, lows, halo)):
        options, sides = [], _candidates(n, low, multiple)
        if cap is not None:  # (as the run stores them: one axis's rule does not depend on the others)
            sides = sorted({sides_in_whole_chunks((c,), (n,), (cap[axis],), multiple, (h,))[0] for c in sides})
        for c in sides:
            (sizes,), (depth,), _ = plan_chunks((n,), (c,), (h,))
            options.append((c, max(sizes), min(n, max(sizes) + 2 * depth), len(sizes), max(sizes) + 2 * depth))
        axes.append(options)
    return axes


def _least_work(axes, fixed: int, workers: int, model: MemoryModel, memory_limit: int, least: tuple):
    """Of the combinations of the axes' candidates, the chunks whose peak fits ``memory_limit`` with the least
    summed FFT volume (None where none fits), with the smallest peak of all and the chunks that have it
    (``least`` where no combination is smaller than infinity: there is none)."""
    best, best_cost, smallest = None, math.inf, math.inf
    for combo in _product(axes):
        chunks, core, block, counts, padded = zip(*combo)
        peak = int(fixed + workers * model.block_bytes(block, core))  # = model.peak_bytes(chunks, ...)
        if peak < smallest:  # (the block named in the message: its sides as the run would take them)
            smallest, least = peak, chunks
        if peak > memory_limit:
            continue
        work = math.prod(counts) * math.prod(padded)
        if work < best_cost:
            best, best_cost = chunks, work
    return best, smallest, least


def _raise_none_fits(shape, halo, least, smallest: int, fixed: int, memory_limit: int, workers: int,
                     automatic: bool, processes: int) -> None:
    """The InputError of :func:`choose_chunks` where not even the smallest block fits: what it needs, and a
    limit that holds it (with the halo it runs with: none along an axis it spans whole), or for an
    ``automatic`` limit how much memory to free."""
    from deconv3d.pipeline.block_geometry import plan_chunks

    depth = plan_chunks(shape, tuple(least), tuple(halo))[1]
    needs = (f"the smallest block {tuple(least)} with halo {tuple(depth)} needs about {format_bytes(smallest)}, "
             f"{format_bytes(fixed)} of it the program's own (Python, torch and their libraries)")
    enough = math.ceil(smallest * 1.1)
    if automatic:  # the limit is AVAILABLE_SHARE of the free memory, or a worker's share of that
        who = "the run" if processes <= 1 else f"each of its {processes} worker processes"
        shared = "" if processes <= 1 else ", less the program's own in the others, shared among them"
        more = (enough - memory_limit) / AVAILABLE_SHARE * max(1, processes)
        # (each of N processes may use (share + baseline) / N: the count whose share holds the block)
        fit = memory_limit * processes // enough if processes > 1 else 0
        fewer = f", run {fit} worker process{'es' if fit > 1 else ''} (--workers {fit})" if fit >= 1 else ""
        raise InputError(f"not enough free memory: {needs}, and {who} may use {format_bytes(memory_limit)} "
                         f"({AVAILABLE_SHARE:.0%} of what is available{shared}): free about {format_bytes(more)} "
                         f"more (close other programs){fewer} or run it on a machine with more")
    raise InputError(f"memory limit {format_bytes(memory_limit)} is too small: {needs}: use --memory-limit "
                     f"{format_bytes(enough)} or more" + (" or fewer --workers" if workers > 1 else ""))


def _product(axes):
    import itertools

    return itertools.product(*axes)
