"""The scan of an input for negative values before a chunked run: background-subtracted data with
no positive voxel is refused (every method would return it all zeros), and a large share of
negative voxels is warned about, per channel and time point."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_has_positive", "SCAN_SLAB_BYTES"]


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
    some. Each is read in slabs of at most :data:`SCAN_SLAB_BYTES` that stop at its first positive
    voxel, so an ordinary image costs a slab per channel and time point, not a pass over the file:
    slabs along the first axis whose planes fit, one index at a time before it. The negative share
    is measured on the slab where the scan stopped and on the slab halfway through the rest (the
    slabs before the first positive voxel are not a fair sample: they have none by construction).
    """
    from deconv3d.errors import refuse_no_positive
    from deconv3d.pipeline.readers import as_reader

    reader = as_reader(data)
    shape = tuple(reader.shape)
    lead = axes[:len(axes) - len(axes.lstrip("TC"))] if axes else ""
    found = []  # (index, negative voxels, voxels counted, voxels of the index) of each (t, c) index
    for index in np.ndindex(*shape[:len(lead)]):
        scanned = _scan_to_first_positive(reader, shape, index)
        if scanned is None:
            names = _index_names(lead, shape, index, channels)
            refuse_no_positive(f"{' at '.join(names)} of {name}" if names else name, method)
        found.append((index, *scanned, math.prod(shape[len(lead):])))
    _warn_of_negative_shares(found, name, method, warnings, lead, shape, channels)


def _scan_to_first_positive(reader, shape, index) -> tuple[int, int] | None:
    """(negative voxels, voxels counted) of the image at leading ``index`` of ``reader``, counted in
    the slab holding its first positive voxel and one halfway through the rest; None where it holds
    negative voxels and no positive one (all zero stays allowed: zeros come back)."""
    inner = shape[len(index):]
    axis = 0
    while axis < len(inner) - 1 and 4 * math.prod(inner[axis + 1:]) > SCAN_SLAB_BYTES:
        axis += 1
    step = max(1, SCAN_SLAB_BYTES // max(4 * math.prod(inner[axis + 1:]), 1))
    rest = tuple(slice(None) for _ in inner[axis + 1:])
    keys = [tuple(slice(i, i + 1) for i in (*index, *outer)) + (slice(start, min(start + step, inner[axis])),) + rest
            for outer in np.ndindex(*inner[:axis]) for start in range(0, inner[axis], step)]
    negative = False
    for n, key in enumerate(keys):
        slab = reader.read(key)
        if slab.size and float(slab.max()) > 0:
            later = (n + len(keys)) // 2  # halfway through the slabs not read yet
            sample = [slab] if later == n else [slab, reader.read(keys[later])]
            return sum(int(np.count_nonzero(s < 0)) for s in sample), sum(s.size for s in sample)
        negative = negative or (slab.size > 0 and float(slab.min()) < 0)
    return None if negative else (0, 0)


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
        index, negative, counted, _ = row
        if counted and negative / counted > NEGATIVE_SHARE:
            groups.setdefault(tuple(i for a, i in zip(lead, index) if a != "T"), []).append(row)
    for _, rows in sorted(groups.items()):  # in channel order
        names = _index_names(lead, shape, rows[0][0], channels, axes="C")
        if frames > 1 and len(rows) < frames:
            names += _index_names(lead, shape, rows[0][0], None, axes="T") if len(rows) == 1 else \
                [f"{len(rows)} of {frames} time points"]
        counted = sum(r[2] for r in rows)
        sampled = "" if counted == sum(r[3] for r in rows) else " in a sample"
        warn_negative_share(sum(r[1] for r in rows) / counted, name, method, warnings, sampled=sampled,
                            part=f" in {' at '.join(names)}" if names else "")
