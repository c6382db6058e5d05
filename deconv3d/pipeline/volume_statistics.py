"""Statistics of a whole volume that every block of a chunked run shares, read slab by slab: the TV
term's scale (:func:`volume_peak`) and the saturation plateau (:func:`volume_top_two`)."""

from __future__ import annotations

import numpy as np

__all__ = ["PEAK_SLAB_BYTES", "volume_peak", "volume_top_two"]

#: Bytes of a volume that :func:`volume_peak` reads at a time.
PEAK_SLAB_BYTES = 64 * 2**20


def volume_peak(data) -> float:
    """The TV term's scale (:func:`deconv3d.classical.richardson_lucy`'s ``tv_scale``) of ``data``
    (an array or a reader's view of one volume), that every block of a chunked run then shares:
    the default a whole-volume run takes (its largest value; 1e-12 where none is positive), here over slabs. Read
    in boxes of whole chunks (whole planes of a TIFF) of at most :data:`PEAK_SLAB_BYTES`
    (:func:`~deconv3d.pipeline.readers.storage_boxes`), so that each chunk is decoded once."""
    from deconv3d.classical.rl import _default_tv_scale, _largest_value

    # NaN and Inf are left to the blocks, which refuse them by name
    return _default_tv_scale([_largest_value(slab) for slab in _slabs(data)])


def volume_top_two(data, level: float | None = None):
    """:func:`deconv3d._saturation.top_two` of ``data`` (as :func:`volume_peak` reads it) and, for a
    ``level``, the largest value below it (at least 0), which is the TV scale of a run that fits the
    voxels at or above it as clipped (taken over the others), and how many voxels are at or above it
    (0 without a level)."""
    from deconv3d._saturation import merge_top_two, top_two
    from deconv3d.classical.rl import _largest_value

    parts, below, above = [], 0.0, 0
    for slab in _slabs(data):
        parts.append(top_two(slab))
        if level is not None:
            kept = slab < level
            below = max(below, _largest_value(slab[kept]))
            above += int(kept.size - np.count_nonzero(kept))
    return merge_top_two(parts), below, above


def _slabs(data):
    """``data`` in boxes of whole chunks (whole planes of a TIFF) of at most :data:`PEAK_SLAB_BYTES`
    (:func:`~deconv3d.pipeline.readers.storage_boxes`), each read as an ndarray: each chunk is decoded once."""
    from deconv3d.pipeline.readers import storage_boxes, storage_unit

    for box in storage_boxes(tuple(data.shape), storage_unit(data), PEAK_SLAB_BYTES):
        yield np.asarray(data[box])
