"""Writing: OME-Zarr v0.5 image groups with axes, units, scales and provenance, filled block by block,
plus their down-sampled pyramid levels (see :mod:`deconv3d.omezarr`)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np

from deconv3d import __version__
from deconv3d._paths import file_identity, image_stem, path_text
from deconv3d._tiff_channels import omero_color
from deconv3d._voxel import checked_voxel_size
from deconv3d.errors import InputError, warn
from deconv3d.omezarr.ngff_metadata import _AXIS_TYPES, _in_order, _level_transform

OME_VERSION = "0.5"

#: The longest chunk side written along each axis: 64 planes in z, 512 voxels in y and x (whole
#: planes only where they are that small), one time point and one channel. A viewer decodes a
#: whole chunk to show any tile of it: a 64 x 64 tile of a 16 x 1024 x 1024 image stored as one
#: chunk (64 MB) took 0.45 s to read, against 0.04 s with chunks of 16 x 512 x 512.
CHUNK_CAP = {"T": 1, "C": 1, "Z": 64, "Y": 512, "X": 512}


def capped_chunks(axes: str, shape) -> tuple[int, ...]:
    """The chunk shape of an image of ``shape`` with ``axes``: each axis whole, up to :data:`CHUNK_CAP`."""
    return tuple(max(1, min(int(n), CHUNK_CAP[a])) for a, n in zip(axes.upper(), shape))


def checked_axes(axes: str, ndim: int) -> str:
    """``axes`` in upper case when they are ``ndim`` distinct letters in (T)(C)ZYX order with two or
    three spatial ones (``ZX`` or ``ZY``: a section through a stack), the only order deconv3d reads
    back (:func:`open_lazy`) and the one its PSFs assume (z first); else a one-line
    :class:`InputError`. Letters are labels only: data in another order is not reordered."""
    letters = str(axes).upper()
    if len(letters) != ndim:
        raise InputError(f"axes {axes!r} do not match an array of {ndim} dimensions: give one letter per axis")
    spatial = sum(a in "ZYX" for a in letters)
    if not (set(letters) <= set("TCZYX") and _in_order(letters, "TCZYX") and spatial >= 2):
        known = set(letters) <= set("TCZYX") and len(set(letters)) == len(letters) and spatial >= 2
        fix = (f"transpose the data to {''.join(sorted(letters, key='TCZYX'.index))} order and pass that" if known
               else "give distinct letters from T, C, Z, Y, X, two or three of them spatial")
        raise InputError(f"axes {axes!r} are not in (T)(C)ZYX order, the order deconv3d reads and its PSFs "
                         f"assume: {fix}")
    return letters


def axes_or_default(axes: str | None, shape) -> str:
    """``axes`` as :func:`checked_axes` returns them; without them, ``"ZYX"`` or ``"YX"`` for 3D or 2D
    data, and 4D or 5D data is refused in one line naming the axes to pass (read as ``CZYX``, a time
    series ran each time point through another channel's callable, or was written with a c axis)."""
    ndim = len(shape)
    if not axes and ndim in (4, 5):
        example = "'TCZYX'" if ndim == 5 else "'TZYX' (a time series) or 'CZYX' (channels)"
        raise InputError(f"the image is {ndim}D {tuple(shape)} and its axes are unknown: pass axes={example}")
    return checked_axes(axes or "ZYX"[-ndim:], ndim)  # labels only: data in another order is refused


def _axes_metadata(axes: str, calibrated: bool = True, time_unit: str | None = None) -> list[dict]:
    """NGFF axes; space axes carry ``micrometer`` only when the voxel size is known, time its unit."""
    out = []
    for a in axes.lower():
        entry = {"name": a, "type": _AXIS_TYPES[a]}
        if entry["type"] == "space" and calibrated:
            entry["unit"] = "micrometer"
        if entry["type"] == "time" and time_unit:
            entry["unit"] = time_unit
        out.append(entry)
    return out


def _full_scale(axes: str, voxel_size, factors, time_step: float = 1.0) -> list[float]:
    spatial = iter(voxel_size) if voxel_size is not None else None
    scale = []
    for a, f in zip(axes, factors):
        base = float(next(spatial)) if (spatial is not None and a in "ZYX") else 1.0
        scale.append((time_step if a == "T" else base) * f)
    return scale


def create_ome_zarr(path, shape, chunks, *, axes: str, voxel_size=None, provenance: dict | None = None,
                    name: str | None = None, time_axis: tuple | None = None, origin=None):
    """Create an empty OME-Zarr v0.5 image group (level ``0`` only) and return its level-0 array.

    Parameters
    ----------
    path : str or os.PathLike
        The group directory to create (it must not exist).
    shape, chunks : tuple of int
        Shape and chunk shape of the float32 level-0 array (chunks should match the blocks that
        will be written, so that no two writers share a chunk).
    axes : str
        Letters from ``"TCZYX"`` in that order, two or three of them spatial, one per dimension
        (any other order is refused: :func:`checked_axes`).
    voxel_size : sequence of float, optional
        One value in micrometres per spatial axis (z, y, x).
    provenance : dict, optional
        Stored verbatim (JSON) as the group's ``deconv3d`` attribute; without one that attribute
        holds ``{"software": "deconv3d", "version": ...}``. It marks the folder as deconv3d's: an
        output path may replace only such a folder (:func:`deconv3d._paths.replaceable_folder`).
    time_axis : (float, str or None[, float]), optional
        Step, unit and (optional) start of the ``T`` axis (:attr:`LazyImage.time_axis` of the
        input): default 1, no unit, 0; a start is written as level 0's T translation.
    origin : sequence of float, optional
        Where the first voxel sits, in micrometres per spatial axis, or in voxels without a
        ``voxel_size`` (:attr:`LazyImage.origin` of the input): written as level 0's translation,
        so that the output overlays its input.
    """
    import zarr

    axes = checked_axes(axes, len(shape))
    time_step, time_unit, time_start = (*time_axis, 0.0)[:3] if time_axis is not None else (1.0, None, 0.0)
    voxel_size = checked_voxel_size(voxel_size, sum(a in "ZYX" for a in axes))
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    arr = group.create_array("0", shape=tuple(shape), chunks=tuple(int(c) for c in chunks), dtype="float32",
                             fill_value=0.0, dimension_names=list(axes.lower()))
    translation = None
    if origin is not None or time_start:
        spatial = iter(checked_origin(origin, sum(a in "ZYX" for a in axes)) if origin is not None else ())
        translation = [next(spatial, 0.0) if a in "ZYX" else float(time_start) if a == "T" else 0.0 for a in axes]
    # (path_text: a name that is not UTF-8 as \xNN; JSON holds no lone surrogate)
    ms = {"name": path_text(name or image_stem(path)), "axes": _axes_metadata(axes, voxel_size is not None, time_unit),
          "datasets": [_dataset("0", _full_scale(axes, voxel_size, [1] * len(axes), time_step), translation)]}
    attrs = {"ome": {"version": OME_VERSION, "multiscales": [ms]}}
    attrs["deconv3d"] = provenance if provenance is not None else {"software": "deconv3d", "version": __version__}
    group.attrs.update(attrs)
    return arr


def write_omero(path, channels, workers: int | None = None) -> None:
    """Give the OME-Zarr image at ``path`` ``omero`` channel metadata: ``channels`` (one dict per
    channel of level 0: ``label``, ``color``, ``active``, as :attr:`LazyImage.channels`) with each
    channel's display window its own intensity range, read from level 0 (one pass, ``workers``
    chunks at a time). A colour that is not six hex digits becomes white
    (:func:`~deconv3d._tiff_channels.omero_color`)."""
    import dask.array as da

    group, attrs, ms, axes = _opened_image(path)
    level = da.from_zarr(str(path), component=ms["datasets"][0]["path"])
    if "C" in axes:
        level = da.moveaxis(level, axes.index("C"), 0)
    else:
        level = level[None]
    if len(channels) != level.shape[0]:
        raise InputError(f"{len(channels)} channel entries for an image of {level.shape[0]} channels")
    others = tuple(range(1, level.ndim))
    low, high = da.compute(level.min(axis=others), level.max(axis=others), **_num_workers(workers))
    entries = []
    for channel, lo, hi in zip(channels, low, high):
        entry = {**channel, "color": omero_color(channel.get("color", ""))}
        entry["window"] = {"min": float(lo), "max": float(hi), "start": float(lo), "end": float(hi)}
        entries.append(entry)
    attrs["ome"]["omero"] = {"channels": entries}
    group.attrs.update(attrs)


def checked_origin(origin, ndim: int) -> tuple[float, ...]:
    """``origin`` as ``ndim`` finite floats, or a one-line :class:`InputError`."""
    try:
        values = tuple(float(v) for v in origin)
    except (TypeError, ValueError):
        values = ()
    if len(values) != ndim or not all(np.isfinite(values)):
        raise InputError(f"origin {origin!r} must be {ndim} finite numbers (micrometres per spatial axis)")
    return values


def _dataset(path: str, scale, translation=None) -> dict:
    transforms = [{"type": "scale", "scale": [float(s) for s in scale]}]
    if translation is not None and any(translation):
        transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
    return {"path": path, "coordinateTransformations": transforms}


def write_pyramid(path, levels: int, scheduler=None, workers: int | None = None) -> None:
    """Add ``levels`` down-sampled levels (2x mean in y and x, and in z while it has at least 16 planes),
    or as many as the shape holds: down-sampling stops at 1 voxel in y and x, with a warning
    saying how many levels were written (more asked for were dropped without a word).

    Each level's ``translation`` puts its voxels at the centres of the level-0 voxels they
    average, so that viewers overlay the levels without a half-voxel shift. A level's chunks are
    those of the level above, cut to its shape and to :data:`CHUNK_CAP`. ``workers`` bounds
    the chunks averaged at once (default: dask's, one per core: on 16 cores a run under a
    memory limit went 20 % over it here, where its blocks had stayed within).
    """
    import dask.array as da

    group, attrs, ms, axes = _opened_image(path)
    factors = [1] * len(axes)
    base, start = _level_transform(ms, 0, len(axes), Path(path))
    full = _spatial(axes, group[ms["datasets"][0]["path"]].shape)
    for level in range(1, levels + 1):
        src = da.from_zarr(str(path), component=ms["datasets"][level - 1]["path"])
        step = _halving_steps(axes, src.shape)
        if all(s == 1 for s in step):
            warn(f"deconv3d: warning: --pyramid-levels {levels} is more than a {full} image holds: wrote {level - 1}, "
                 f"the last of {_spatial(axes, src.shape)} voxels (each level halves y and x, down to 1 voxel)")
            break
        _store_mean_level(group, str(level), src, step, axes, scheduler, workers)
        factors = [f * s for f, s in zip(factors, step)]
        # A mean over f voxels is centred (f - 1) / 2 voxels in: the level's origin moves by that.
        shift = [s + b * (f - 1) / 2 for s, b, f in zip(start, base, factors)]
        ms["datasets"].append(_dataset(str(level), [b * f for b, f in zip(base, factors)], shift))
    if len(ms["datasets"]) > 1:  # OME-NGFF: the multiscale SHOULD name how its levels were made
        ms["type"] = "mean"
        ms["metadata"] = {"description": "each level is the mean of 2 x 2 (x 2 in z while z has at least 16 "
                                         "planes) voxels of the level above",
                          "method": "dask.array.coarsen(numpy.mean)"}
    group.attrs.update(attrs)


def _opened_image(path):
    """(group, its attributes as a dict to update and write back, their first multiscale, its axes in
    upper case) of the OME-Zarr image at ``path``, opened for writing."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    ms = attrs["ome"]["multiscales"][0]
    return group, attrs, ms, "".join(a["name"] for a in ms["axes"]).upper()


def _num_workers(workers: int | None) -> dict:
    """dask's ``num_workers`` keyword for ``workers`` chunks at once; none (dask's default) without."""
    return {"num_workers": max(1, int(workers))} if workers else {}


def _halving_steps(axes: str, shape) -> list[int]:
    """The down-sampling factor of the level below one of ``shape``, per axis: 2 in y and x, and in z
    while it has at least 16 planes, where the axis has at least 2 voxels; else 1."""
    return [2 if (a in "YX" or (a == "Z" and n >= 16)) and n >= 2 else 1 for a, n in zip(axes, shape)]


def _store_mean_level(group, name: str, src, step, axes: str, scheduler, workers) -> None:
    """Write the means of ``src`` (the level above, a dask array) over blocks of ``step`` voxels as the
    array ``name`` of ``group``, the voxels past a whole block dropped."""
    import dask.array as da

    trimmed = src[tuple(slice(0, n - n % s) for n, s in zip(src.shape, step))]
    down = da.coarsen(np.mean, trimmed, dict(enumerate(step))).astype(np.float32)
    # a chunk no larger than its level's, nor than the cap (a level of one chunk was decoded whole per tile)
    chunks = tuple(min(c, k) for c, k in zip(src.chunksize, capped_chunks(axes, down.shape)))
    arr = group.create_array(name, shape=down.shape, chunks=chunks,
                             dtype="float32", fill_value=0.0, dimension_names=list(axes.lower()))
    down.rechunk(arr.chunks).store(arr, lock=False, scheduler=scheduler, **_num_workers(workers))


def _spatial(axes: str, shape) -> tuple:
    return tuple(int(n) for a, n in zip(axes, shape) if a in "ZYX")


def write_ome_zarr(path, data, *, voxel_size=None, axes: str | None = None, chunks=None, provenance=None,
                   pyramid_levels: int = 0) -> None:
    """Write an array (numpy or dask) as an OME-Zarr v0.5 image, atomically (temp name + rename).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.zarr`` directory; an existing one is replaced only once the new one is complete,
        and only a zarr image deconv3d wrote, holding nothing else (labels added to it, say)
        (:func:`deconv3d._paths.replaceable_folder`; any other is refused before any work, as is a
        file or a symbolic link at the path), and never the file or folder a dask or zarr array
        ``data`` is read from, nor a path inside it (an OME-Zarr image's level: the image).
    data : array_like or dask array
        2D to 5D data whose axes are ``axes`` (default ``"ZYX"``/``"YX"``; 4D or 5D data without
        ``axes`` is refused: pass ``axes="TZYX"`` or ``"CZYX"``); written as float32.
    voxel_size : sequence of float, optional
        Micrometres per spatial axis (z, y, x).
    chunks : tuple of int, optional
        Chunk shape on disk (default: :func:`capped_chunks`, 64 planes of at most 512 x 512).
    provenance : dict, optional
        The ``deconv3d`` attribute block (see :func:`deconv3d.pipeline.provenance`).
    pyramid_levels : int
        Number of extra, 2x down-sampled levels (at most as many as the shape holds:
        :func:`write_pyramid`).
    """
    import dask.array as da

    from deconv3d._paths import refuse_input_overlap
    from deconv3d.pipeline.output import atomic_output
    from deconv3d.pipeline.readers import source_files

    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    refuse_input_overlap(path, source_files(data))  # (data read from the output path itself, a zarr array too)
    axes = axes_or_default(axes, arr.shape)  # (4D without axes was written as CZYX, a time series' t as c)
    if chunks is None:
        chunks = capped_chunks(axes, arr.shape)
    with atomic_output(path, folder=True) as tmp:
        target = create_ome_zarr(tmp, arr.shape, chunks, axes=axes, voxel_size=voxel_size, provenance=provenance,
                                 name=image_stem(path))  # (not the temporary folder's)
        _store_settled(arr.astype(np.float32).rechunk(chunks).store(target, lock=False, compute=False))
        if pyramid_levels:
            write_pyramid(tmp, pyramid_levels)


def _store_settled(stored) -> None:
    """Compute dask's ``store`` task ``stored``; on dask's own threads (the default scheduler), a pool
    of its own that, where a chunk fails, lets the chunks in flight finish (the queued ones are
    cancelled) before the error goes on: dask raised the first error at once while its threads still
    wrote chunks, which made the removed temporary output again seconds later. Another scheduler (a
    cluster's), or a pool set through ``dask.config`` (the user's, capping its threads), is used as it is."""
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.threaded
    from dask.base import get_scheduler
    from dask.system import CPU_COUNT

    if get_scheduler(collections=[stored]) is not dask.threaded.get or dask.config.get("pool", None) is not None:
        stored.compute()  # (a pool set through dask.config is the user's: its threads are theirs to cap)
        return
    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        stored.compute(pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def file_sha256(path, block: int = 1 << 22, progress=None) -> str:
    """SHA-256 of a file, or of a directory's files (relative names and contents, sorted).

    ``progress``: None, or a callable ``progress(done, total)`` called with the bytes hashed so far
    and the files' total size (their sizes before reading), once before the first read and after
    each block read.
    """
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if progress is not None:
        done, total = 0, sum(f.stat().st_size for f in files)
        progress(done, total)
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")  # the same hash on Windows
        with open(f, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
                if progress is not None:
                    done += len(chunk)
                    progress(done, total)
    return h.hexdigest()


_SHA256_SEEN: dict = {}
_SHA256_SEEN_LOCK = threading.Lock()
#: How much older than the moment it was hashed a file's modification and change times must be for
#: its hash to be kept (git's "racily clean" rule): file systems with coarse clocks (ext4 before
#: Linux 6.13, ramfs, FAT's 2 s, many network file systems) leave both times unchanged by a
#: rewrite within the same tick.
_SETTLED_NS = 2 * 10**9


def unchanged_file_sha256(path) -> str:
    """:func:`file_sha256` of a file, hashed again only when its status changed.

    For the PSF and model files a batch hashes before, during and after each file's run (four
    times per input: a 100 MB checkpoint cost seconds per small stack). The hash is kept with the
    file's device, inode, size and modification and change times: a file replaced (a new inode) or
    rewritten in place (new times) is hashed again. A file whose times were not at least 2 s older
    than the moment it was hashed is hashed every time (a same-size rewrite within one tick of a
    coarse file-system clock keeps its times), and so is a directory.
    """
    path = Path(path)
    hashed_at = time.time_ns()
    try:
        key = file_identity(path)  # (..., modification time, change time)
    except OSError:
        return file_sha256(path)  # (its own error)
    if path.is_dir():
        return file_sha256(path)
    with _SHA256_SEEN_LOCK:
        digest = _SHA256_SEEN.get(key)
    if digest is None:
        digest = file_sha256(path)
        if max(key[-2:]) > hashed_at - _SETTLED_NS:
            return digest  # (racily clean: a rewrite in the same clock tick would keep these times)
        with _SHA256_SEEN_LOCK:
            if len(_SHA256_SEEN) > 256:  # (a long-lived process hashing many files)
                _SHA256_SEEN.clear()
            _SHA256_SEEN[key] = digest
    return digest
