"""The scan of an input for negative values before a chunked run: background-subtracted data with
no positive voxel is refused (every method would return it all zeros), and a large share of
negative voxels is warned about, per channel and time point."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deconv3d.pipeline.readers import as_reader, storage_unit

__all__ = ["check_has_positive", "SCAN_SLAB_BYTES", "SHARE_SAMPLE_BYTES"]


#: Bytes of the input that :func:`check_has_positive` reads at a time. It runs before the memory
#: limit is checked against the blocks: at 64 MiB its two slabs, their source-dtype copies and
#: masks took about 210 MB, and a run under --memory-limit 256MB peaked at 474 MB before being
#: told the limit was too small (memory review). 16 MiB stays within the resident allowance.
SCAN_SLAB_BYTES = 16 * 2**20


def check_has_positive(data, name: str, method: str, warnings: list | None = None, axes: str | None = None,
                       channels=None) -> None:
    """Refuse an image with negative voxels and no positive one (background-subtracted data) before
    ``method`` returns it all zeros, as an in-memory run refuses it; warn, as it does, when many
    voxels are negative (:func:`deconv3d.errors.warn_negative_share`; ``warnings`` as there).

    ``data``: a block reader, lazy image, dask array or array. With ``axes`` (from ``"TCZYX"``)
    each index of its leading T and C axes is checked on its own and named in the messages (with
    its label from ``channels``, as :attr:`~deconv3d.omezarr.LazyImage.channels`): scanned whole,
    a channel with no positive value came back all zeros, with exit 0, beside channels that had
    some. Each is read from its start up to its first positive voxel, in slabs of at most
    :data:`SCAN_SLAB_BYTES` that start at one plane (or chunk) and grow, so an ordinary image costs
    a plane per channel and time point. The negative share is measured on what was read (less empty
    planes before the first positive voxel: they have none by construction) and on a sample of the
    rest, :data:`SHARE_SAMPLE_BYTES` in all (:func:`_sample_budgets`): a small image is read whole,
    a long time series at some planes of some time points (a sample of that size for each time
    point had read a 60-point series whole before the first block).
    """
    from deconv3d.errors import refuse_no_positive

    reader = as_reader(data)
    shape = tuple(reader.shape)
    lead = axes[:len(axes) - len(axes.lstrip("TC"))] if axes else ""
    found, ends = [], []  # (index, negative voxels, voxels counted, voxels of the index); where each scan ended
    for index in np.ndindex(*shape[:len(lead)]):
        scanned = _scan_to_first_positive(reader, shape, index)
        if scanned is None:
            names = _index_names(lead, shape, index, channels)
            refuse_no_positive(_part(names, name), method, of_image=_part(names, "the image"))
        found.append([index, *scanned[:2], math.prod(shape[len(lead):]), False])
        ends.append(scanned[2])
    for i, budget in _sample_budgets(reader, shape, lead).items():  # (after the refusals: they need no sample)
        if ends[i] is not None:
            n, c, scaled = _sample(reader, _rows_of(reader, shape, found[i][0]), ends[i], budget)
            found[i][1:] = found[i][1] + n, found[i][2] + c, found[i][3], scaled
    _warn_of_negative_shares(found, name, method, warnings, lead, shape, channels)


def _sample_budgets(reader, shape, lead: str) -> dict[int, int]:
    """Bytes of the negative share's sample for each leading index (by its number in C order) that
    gets one: :data:`SHARE_SAMPLE_BYTES` shared by the channels, each channel's spread over as many
    of its time points, evenly apart, as give a storage unit's row each (one at least)."""
    t = lead.find("T")
    frames = shape[t] if t >= 0 else 1
    indices = math.prod(shape[:len(lead)])
    if indices == 0:
        return {}
    per_channel = SHARE_SAMPLE_BYTES // max(1, indices // frames)
    rows = _rows_of(reader, shape, (0,) * len(lead))
    unit = max(1, 4 * rows.voxels * math.prod(rows.units))  # (one row of a storage unit, as float32)
    picked = min(frames, max(1, per_channel // unit))
    times = {(2 * j + 1) * frames // (2 * picked) for j in range(picked)}
    return {i: per_channel // picked for i, index in enumerate(np.ndindex(*shape[:len(lead)]))
            if t < 0 or index[t] in times}


#: Bytes (as float32) of the TIFF planes or zarr chunks beyond the slabs holding the first positive
#: voxels that the negative share is also measured on, for the whole image: rows spread over the
#: rest of each channel and time point, or of some time points of a long series (at least a row per
#: channel). A second 16 MiB slab halfway through the rest, served only this warning: with the
#: first, 58 % of a 96 x 384 x 384 image was read before the first block; now 8 %.
SHARE_SAMPLE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class _Rows:
    """The image at leading ``index`` as rows: positions along ``axis`` (the first axis whose
    rows fit a slab) at every index of the axes before it, in C order. A storage unit (a TIFF
    page, a zarr chunk: :func:`~deconv3d.pipeline.readers.storage_unit`) spans ``units`` of those
    axes and ``axis``: reading one row decodes that many at least."""

    index: tuple
    inner: tuple
    axis: int
    units: tuple

    @property
    def count(self) -> int:
        return math.prod(self.inner[:self.axis + 1])

    @property
    def voxels(self) -> int:  # of one row
        return math.prod(self.inner[self.axis + 1:])

    def run_end(self, row: int) -> int:
        """The row after the last one along ``axis`` at ``row``'s index of the axes before it."""
        return (row // self.inner[self.axis] + 1) * self.inner[self.axis]

    def unit_of(self, row: int) -> tuple:
        """Which storage unit ``row`` lies in."""
        at = np.unravel_index(row, self.inner[:self.axis + 1])
        return tuple(int(i) // u for i, u in zip(at, self.units))

    def key(self, start: int, stop: int) -> tuple:
        """Rows ``start`` to ``stop`` (within one run along ``axis``) as a key of the whole image."""
        outer = np.unravel_index(start // self.inner[self.axis], self.inner[:self.axis]) if self.axis else ()
        first = start % self.inner[self.axis]
        return (tuple(slice(i, i + 1) for i in (*self.index, *outer)) + (slice(first, first + stop - start),)
                + tuple(slice(None) for _ in self.inner[self.axis + 1:]))


def _rows_of(reader, shape, index) -> _Rows:
    inner = tuple(shape[len(index):])
    axis = 0
    while axis < len(inner) - 1 and 4 * math.prod(inner[axis + 1:]) > SCAN_SLAB_BYTES:
        axis += 1
    units = tuple(max(1, u) for u in storage_unit(reader)[len(index):len(index) + axis + 1])
    return _Rows(tuple(index), inner, axis, units)


def _scan_to_first_positive(reader, shape, index) -> tuple[int, int, int | None] | None:
    """(negative voxels, voxels counted, the row after them or None where nothing is left to
    sample) of the image at leading ``index`` of ``reader``; None where it holds negative voxels and
    no positive one (all zero stays allowed: zeros come back).

    Read in slabs of at most :data:`SCAN_SLAB_BYTES`, from one storage unit (a plane of a TIFF)
    doubling, up to the first positive voxel; counted are those slabs less the rows of zeros
    before that voxel (empty planes before the stack: counted, they diluted a 40 % share to 2 %).
    The rows after them may be sampled next (:func:`_sample`)."""
    rows = _rows_of(reader, shape, index)
    if rows.count == 0 or rows.voxels == 0:
        return 0, 0, None
    step = _slab_rows(rows)
    widest = step // rows.units[-1] * rows.units[-1] or step  # whole units where they fit a slab
    start, size, negative, counted, found = 0, min(rows.units[-1], step), 0, 0, False
    while start < rows.count and not found:
        stop = min(start + size, rows.run_end(start))
        n, c, found = _counts(reader.read(rows.key(start, stop)), stop - start)
        start, size, negative, counted = stop, min(2 * size, widest), negative + n, counted + c
    if not found:
        return None if negative else (0, 0, None)
    return negative, counted, start


def _slab_rows(rows: _Rows) -> int:
    """How many rows a slab of :data:`SCAN_SLAB_BYTES` holds (one at least)."""
    return max(1, SCAN_SLAB_BYTES // (4 * rows.voxels))


def _counts(slab, rows: int) -> tuple[int, int, bool]:
    """(negative voxels, voxels counted, whether one is positive) of a slab of ``rows`` rows; the
    rows of zeros before its first positive voxel (all of them, without one) are not counted."""
    flat = np.asarray(slab).reshape(rows, -1)
    positive = (flat > 0).any(axis=1)
    first = int(positive.argmax()) if positive.any() else rows
    empty = int(np.count_nonzero(~flat[:first].any(axis=1)))
    return int(np.count_nonzero(flat < 0)), (rows - empty) * flat.shape[1], first < rows


def _sample(reader, rows: _Rows, start: int, budget: int) -> tuple[float, int, bool]:
    """(negative voxels, voxels, whether sampled) of the rows after ``start``, from the next storage
    unit on (the last slab read its own): all of them where they fit ``budget`` bytes, else one row
    of each of as many units as that holds (one at least, 64 at most), spread evenly, and their
    counts scaled to all the rows they stand for. Unscaled, a few sampled planes weighed as little
    beside the slabs read before the first positive voxel as they held voxels: eight negative planes
    before it made 8 % negative voxels read as 36 %."""
    offset, unit, step = start % rows.inner[rows.axis], rows.units[-1], _slab_rows(rows)
    first = min(start - offset + -(-offset // unit) * unit, rows.run_end(start))
    rest = rows.count - first
    if 4 * rows.voxels * rest <= budget:
        spans, at = [], first
        while at < rows.count:
            spans.append((at, min(at + step, rows.run_end(at))))
            at = spans[-1][1]
    else:
        wanted = min(64, max(1, budget // (4 * rows.voxels * math.prod(rows.units))))  # (64 reads)
        picks = {}
        for j in range(wanted):  # one row per unit: one decode each
            row = first + (2 * j + 1) * rest // (2 * wanted)
            picks.setdefault(rows.unit_of(row), row)
        spans = [(row, row + 1) for row in sorted(picks.values())]
    negative = counted = 0
    for a, b in spans:
        slab = reader.read(rows.key(a, b))
        negative, counted = negative + int(np.count_nonzero(slab < 0)), counted + slab.size
    voxels = rest * rows.voxels
    if not spans or counted == voxels:
        return negative, counted, False
    return negative * voxels / counted, voxels, True


def _index_names(lead: str, shape, index, channels, axes: str = "CT") -> list[str]:
    """``channel 2 (GFP)``, ``time point 1``: those of ``axes`` at ``index`` of the ``lead`` axes that
    have more than one entry, the channel first (its label from ``channels`` where they give one)."""
    names = []
    for a in axes:
        at = lead.find(a)
        if at < 0 or shape[at] < 2:
            continue
        i = index[at]
        label = (channels[i] or {}).get("label") if a == "C" and channels and len(channels) == shape[at] else None
        names.append(f"{'channel' if a == 'C' else 'time point'} {i}{f' ({label})' if label else ''}")
    return names


def _warn_of_negative_shares(found, name, method, warnings, lead: str, shape, channels) -> None:
    """One warning per channel (:func:`~deconv3d.errors.warn_negative_share`) where the share of
    negative voxels exceeds the threshold, naming the channel and the time points where it does
    (not all of them: a line per time point of a long series would bury every other line)."""
    from deconv3d.errors import NEGATIVE_SHARE, warn_negative_share

    t = lead.find("T")
    frames = shape[t] if t >= 0 else 1
    groups = {}  # channel: the rows of its time points over the threshold
    for row in found:
        index, negative, counted = row[:3]
        if counted and negative / counted > NEGATIVE_SHARE:
            groups.setdefault(tuple(i for a, i in zip(lead, index) if a != "T"), []).append(row)
    for _, rows in sorted(groups.items()):  # in channel order
        names = _index_names(lead, shape, rows[0][0], channels, axes="C")
        if frames > 1 and len(rows) < frames:
            names += _index_names(lead, shape, rows[0][0], None, axes="T") if len(rows) == 1 else \
                [f"{len(rows)} of {frames} time points"]
        counted = sum(r[2] for r in rows)
        whole = counted == sum(r[3] for r in rows) and not any(r[4] for r in rows)
        sampled = "" if whole else " in a sample"
        warn_negative_share(sum(r[1] for r in rows) / counted, name, method, warnings, sampled=sampled,
                            part=f" in {' at '.join(names)}" if names else "")


def _part(names: list, image: str) -> str:
    """The part of ``image`` that ``names`` say (``channel 1 at time point 0 of a.tif``), or ``image``."""
    return f"{' at '.join(names)} of {image}" if names else image
