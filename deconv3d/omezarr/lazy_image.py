"""The lazily opened image (:class:`LazyImage`, what :func:`~deconv3d.omezarr.open_lazy` returns) and
what its block readers, :class:`~deconv3d.omezarr.TiffReader` and :class:`~deconv3d.omezarr.ZarrReader`,
share: a block read as C-ordered float32 with float64 values past float32's range refused, the
identity of an input file (inode, size, modification time) and the one-line refusal of an input that
changed during a run, and the one-line error for a file that went away or cannot be read mid-run
(see :mod:`deconv3d.omezarr`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deconv3d._paths import _one_line
from deconv3d.errors import naming_file, naming_image
from deconv3d.omezarr.chunk_store import UNREADABLE_FIX


@dataclass(frozen=True)
class LazyImage:
    """A lazily read image: ``data`` is a dask array; nothing is loaded until computed.

    ``axes`` is upper case from ``"TCZYX"`` (e.g. ``"ZYX"``, ``"CZYX"``); ``voxel_size`` has one
    value in micrometres per spatial axis (z, y, x) or is None when the file does not say.
    """

    data: object
    voxel_size: tuple[float, ...] | None
    axes: str
    path: Path
    reader: object = None  # reads any region from the file directly (see ZarrReader, TiffReader)
    voxel_problem: str | None = None  # why a voxel size recorded in the file was not usable (see io.Image)
    voxel_problem_without_file: str | None = None  # voxel_problem said of "the image", for a batch's line
    partial_voxel: tuple | None = None  # a TIFF that calibrates some axes only: their sizes (see io.Image)
    z_step_assumed: bool = False  # a TIFF's z step is ImageJ's default, the file recording none (see io.Image)
    time_axis: tuple | None = None  # (step, unit or None[, start]) of a T axis the file calibrates; start: an
    # OME-Zarr's T translation, in that unit, where it is not 0
    origin: tuple | None = None  # where an OME-Zarr image's first voxel sits, per spatial axis: in micrometres,
    # or in voxels where voxel_size is None (an uncalibrated image's translation, in the units of its scale of 1)
    channels: tuple | None = None  # OME-Zarr omero channels, OME-TIFF Channels: dicts of label, color, active
    time_problem: str | None = None  # a warning that the T axis's unit has no OME-Zarr name (its step is kept):
    # given by the run that writes the axis (run_chunked, deconvolve_file), not each time the file is opened
    time_problem_without_file: str | None = None  # time_problem said of "the image", for a batch's row


def _float32_block(block, path) -> np.ndarray:
    """A block read from ``path`` as C-ordered float32; float64 values past float32's range are
    refused as in-memory reading refuses them (a bare cast made them Inf, then reported as Inf
    in the file, with a numpy overflow warning first). NaN or Inf values the file holds are kept, as
    a float32 file's are: the run refuses them where it can say where the first one lies (refused
    here, as read, they were named without it)."""
    block = np.asarray(block)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(block, dtype=np.float32, order="C")
    if block.dtype.kind == "f" and block.dtype.itemsize > 4 and np.isinf(out).any():
        from deconv3d.io import refuse_beyond_float32

        refuse_beyond_float32(block, out, f"image {path}")  # names the peak
    return out


def _content_identity(path) -> tuple | None:
    """What changes when a file's contents are rewritten or it is replaced, moved or deleted: its
    inode, size and modification time (None when it cannot be read). Not its change time, which
    chmod, chown and new hard links (backups) move without touching the contents."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _verify_unchanged(path, now: tuple | None, then: tuple | None) -> None:
    """Raise the one-line error for an input that changed during a run (``now`` differs from
    ``then``; nothing to compare with when ``then`` is None)."""
    if then is not None and now != then:
        raise naming_image(lambda image: f"{image} was changed, moved or deleted during the run: nothing was "
                           "written; run again once the image is complete and left in place", path)




def _refuse_unreadable(path, key, exc: BaseException) -> None:
    """A file that went away or cannot be read during a run (not a damaged one): say so in one line.
    Other errors (MemoryError) are left to the caller to raise."""
    if isinstance(exc, OSError):
        def say(image):
            return f"cannot read {image} (region {_region(key)}): {_one_line(exc)}: {UNREADABLE_FIX}"
        raise naming_file(say, path) from exc  # (said in a batch's line naming the file)


def _region(key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return "[" + ", ".join((f"{k.start or 0}:{'' if k.stop is None else k.stop}" if isinstance(k, slice) else str(k))
                           for k in key) + "]"
