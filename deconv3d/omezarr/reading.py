"""Reading: lazy, out-of-core opening of TIFF and OME-Zarr (v0.4/v0.5) images (:func:`open_lazy`,
:func:`image_header`), the OME-Zarr block reader (:class:`ZarrReader`), and whole levels into memory
(:func:`read_ome_zarr`); the TIFF side is in :mod:`deconv3d.omezarr.tiff_reading`, the OME-Zarr
metadata parsing in :mod:`deconv3d.omezarr.ngff_metadata`, the :class:`LazyImage` record and what the
block readers share in :mod:`deconv3d.omezarr.lazy_image`, the opening of an image's zarr group in
:mod:`deconv3d.omezarr.zarr_group` (see :mod:`deconv3d.omezarr`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from deconv3d._arrays import refuse_complex, refuse_non_numeric
from deconv3d._paths import TIFF_SUFFIXES, _one_line, refuse_special_file, special_file_problem
from deconv3d._tiff_voxel_sizes import _unit_factor
from deconv3d.errors import InputError, naming_file, naming_image, refusing_image
from deconv3d.omezarr.lazy_image import (LazyImage, _content_identity, _float32_block, _refuse_unreadable, _region,
                                         _verify_unchanged)
from deconv3d.omezarr.ngff_metadata import (_axes_of, _has_scale, _level_transform, _malformed, _multiscale,
                                            _multiscales_key, _omero_channels, _time_axis_and_problem, _unit_problem,
                                            _zarr_voxel)
from deconv3d.omezarr.tiff_reading import _open_tiff, _tiff_header
from deconv3d.omezarr.zarr_group import _image_group, _zarr_problem, bioformats2raw_series, is_zarr_folder

# (is_zarr_folder and bioformats2raw_series: their home is zarr_group, kept importable from here)
__all__ = ["ZARR_SUFFIX", "open_lazy", "image_header", "ZarrReader", "read_ome_zarr", "is_zarr_folder",
           "bioformats2raw_series"]

ZARR_SUFFIX = ".zarr"


def open_lazy(path, omero_warning: bool = True) -> LazyImage:
    """Open a TIFF or an OME-Zarr image as a dask array without reading its pixels (``omero_warning=False``: a
    second look at an image whose run warns of it, without the warning of omero entries beyond its channels).

    Raises
    ------
    InputError
        If the path is missing, neither a regular file nor a folder (a named pipe: opening it
        waited for ever), of an unsupported type, or not a readable image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}: check the path", without_file="not found: check the path")
    refuse_special_file(path)  # (before opening: a named pipe's waited forever)
    suffix = path.suffix.lower()
    if suffix == ZARR_SUFFIX or is_zarr_folder(path):
        return _open_ome_zarr(path, omero_warning=omero_warning)
    if path.is_dir():
        raise naming_image(lambda image: f"{image} is a folder but not a zarr image (no zarr.json or .zgroup in it): "
                           "give a TIFF file or an OME-Zarr folder", path)
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    raise naming_image(lambda image: f"unsupported input format '{path.suffix}' for {image}: use .tif, .tiff or .zarr",
                       path)


def image_header(path) -> tuple[str, tuple[int, ...], tuple[float, ...] | None]:
    """``(axes, shape, voxel_size)`` of the image :func:`open_lazy` opens at ``path``, as its
    :class:`LazyImage` has them (``shape`` is its data's), refused as it refuses: for a TIFF read from
    the header alone, without dask (whose import took 0.35-1.1 s of a run that asked only whether
    the image fits in memory); for another input through :func:`open_lazy`."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file() and special_file_problem(path) is None:
        h = _tiff_header(path)
        kept = [n for n in h.shape if n != 1]
        return h.axes, tuple(kept[i] for i in h.order), h.voxel
    lazy = open_lazy(path)
    return lazy.axes, tuple(lazy.data.shape), lazy.voxel_size


class ZarrReader:
    """Regions of one array of a zarr (v2 or v3) store on disk, as float32.

    It pickles as the path (``remote``): every process, a dask.distributed worker included,
    opens the array itself, once, and reads only the chunks a region touches. Given a budget
    (:meth:`cache_chunks`: a chunked run's blocks), it keeps decoded chunks for the next reads
    (:class:`~deconv3d.omezarr.chunkcache.ChunkCache`); the budget pickles with it, each process
    keeping a cache of its own.
    """

    remote = True
    cache_budget, _cache = 0, None  # (class defaults: a reader made without __init__ keeps no chunks)

    def __init__(self, path, component: str = "", shape=None, drop: tuple[int, ...] = ()):
        # absolute: as _TiffArray's; "0/" and "/0" are the array "0" (Path(path) / "/0" is the root /0)
        self.path, self.component = os.path.abspath(path), str(component).strip("/")
        self._array = None
        self.drop = tuple(drop)  # singleton axes of the array left out of this reader's shape (read at 0)
        if shape is None:
            shape = [n for i, n in enumerate(self._open().shape) if i not in self.drop]
        self.shape = tuple(shape)
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)
        self.identity = self._identity()  # what verify compares with

    def _open(self):
        if self._array is None:
            self._array = _open_array(self.path, self.component)
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None, "_cache": None}

    def cache_chunks(self, budget: int) -> None:
        """Keep up to ``budget`` bytes of decoded chunks from now on (0: none, and drop those held)."""
        with _CACHE_LOCK:
            if self._cache is not None:
                self._cache.clear()
            self._cache, self.cache_budget = None, max(0, int(budget))

    def stored_bytes(self, lead: int = 0, region=None) -> int:
        """:func:`~deconv3d.omezarr.chunkcache.stored_bytes` of this array."""
        from deconv3d.omezarr.chunkcache import stored_bytes

        return stored_bytes(self.chunks, self.shape, self._open().dtype.itemsize, lead, region)

    def _cached(self):
        if self.cache_budget <= 0:
            return None
        with _CACHE_LOCK:  # (once per process: threads reading at once share one)
            if self._cache is None:
                from deconv3d.omezarr.chunkcache import ChunkCache

                self._cache = ChunkCache(self.cache_budget)
            return self._cache

    @property
    def chunks(self) -> tuple[int, ...]:
        """The array's chunk shape on disk (less the dropped axes): what one read decodes at least."""
        return tuple(n for i, n in enumerate(self._open().chunks) if i not in self.drop)

    def read(self, key) -> np.ndarray:
        if self.drop:
            key = list(key) if isinstance(key, tuple) else [key]
            key += [slice(None)] * (self.ndim - len(key))
            for axis in sorted(self.drop):
                key.insert(axis, 0)
            key = tuple(key)
        try:
            cache = self._cached()
            block = None if cache is None else cache.read(self._open(), key)
            return _float32_block(self._open()[key] if block is None else block, self.path)
        except OSError as exc:
            _refuse_unreadable(self.path, key, exc)
            raise
        except InputError:  # (the store's refusal of a chunk that is no file, which names it)
            raise
        except (RuntimeError, ValueError) as exc:  # a codec's or the store's complaint about a chunk
            problem = _one_line(exc)

            def say(image):
                return (f"cannot read {image} (array {self.component!r}, region {_region(key)}): {problem}: "
                        "a chunk is damaged; copy or convert the image again")
            raise naming_file(say, self.path) from exc

    __getitem__ = read

    def image(self) -> LazyImage | None:
        """The OME-Zarr image this array is a resolution level of, as :func:`open_lazy` reads that
        level (its axes, voxel size, time axis, origin and channels), or None where the array is no
        such level (a bare array, unreadable or malformed metadata) or the level's shape is not this
        reader's. The level is found as the group ``path`` and its level ``component``, or as the
        array's own path (``ZarrReader("image.zarr/0")``: the group that holds it lists it)."""
        full = Path(self.path, self.component)
        for group_path, level in dict.fromkeys([(Path(self.path), self.component), (full.parent, full.name)]):
            lazy = _level_image(group_path, level)
            if lazy is not None:
                return lazy if tuple(lazy.data.shape) == self.shape else None
        return None

    def verify(self, thorough: bool = True) -> None:
        """Refuse a run whose input array was rewritten, moved or deleted since it was opened (its
        metadata file changed or went away), or, ``thorough``, whose chunks were written meanwhile
        (an image still being acquired or copied): missing chunks read as the fill value, so the
        output would hold zeros where the image was. The chunk files are stat'ed only when
        ``thorough`` (the run's last check: once per block, a zarr of 16386 chunk files in 32
        blocks spent 2.9 s of 30 s on them)."""
        if self.identity is None or not thorough:
            now = self._metadata_identity()
            _verify_unchanged(self.path, now, None if self.identity is None else self.identity[0])
            return
        _verify_unchanged(self.path, self._identity(), self.identity)

    def _identity(self) -> tuple | None:
        """The metadata file's identity and the count, total size and latest modification time
        of the array's files (None when the metadata cannot be read: nothing to compare)."""
        metadata = self._metadata_identity()
        return None if metadata is None else (metadata, _files_state(Path(self.path) / self.component))

    def _metadata_identity(self) -> tuple | None:
        folder = Path(self.path) / self.component
        for name in ("zarr.json", ".zarray"):
            found = _content_identity(folder / name)
            if found is not None:
                return found
        return None


def _level_image(group_path: Path, level: str) -> LazyImage | None:
    """The image of the OME-Zarr group ``group_path`` at its level ``level`` (:meth:`ZarrReader.image`),
    or None where that group is no such image or lists no such level."""
    try:
        group, image_path = _image_group(group_path)
        levels = [str(d.get("path")).strip("/") for d in _multiscale(dict(group.attrs), image_path).get("datasets", [])]
        if Path(image_path) != group_path or level not in levels:
            return None
        return _open_ome_zarr(image_path, levels.index(level))
    except (InputError, AttributeError, TypeError, KeyError, IndexError, ValueError):  # metadata not OME-Zarr's
        return None  # (attrs["multiscales"] = ["not a dict"] crashed a run given its axes)


_CACHE_LOCK = threading.Lock()


def _files_state(folder: Path) -> tuple[int, int, int]:
    """(count, total size, latest modification time) of the files under ``folder``: a zarr array
    whose chunks are written during a run changes it (one stat per chunk file)."""
    count = size = latest = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                st = entry.stat()
            except OSError:
                continue
            count, size, latest = count + 1, size + st.st_size, max(latest, st.st_mtime_ns)
    return count, size, latest


def _open_ome_zarr(path: Path, level: int = 0, omero_warning: bool = True) -> LazyImage:
    """``omero_warning=False``: no warning about omero entries beyond the channels (a second look at an image
    that its run opened, and warned about, already)."""
    group, image_path = _image_group(path)  # path stays the input's name, for messages and outputs
    attrs = dict(group.attrs)
    ms, metadata = _multiscale(attrs, image_path), (image_path, _multiscales_key(attrs))
    if level >= len(ms["datasets"]):
        raise naming_image(lambda image: f"{image} has no resolution level {level}", path)
    component = ms["datasets"][level]["path"]
    data = _level_array(image_path, component, level, metadata)
    refusing_image(lambda image: refuse_non_numeric(data.dtype, image), f"image {path}")
    refusing_image(lambda image: refuse_complex(data.dtype, image, "save the intensity (magnitude) instead"),
                   f"image {path}")
    axes, units = _axes_of(ms, data.ndim, path, metadata)
    (scale, shift), base = (_level_transform(ms, level, data.ndim, path, metadata),
                            _level_transform(ms, 0, data.ndim, path, metadata)[0])
    if not (_has_scale(ms, level) and _has_scale(ms, 0)):  # the file gives no voxel size (or time step): its
        units = [None] * len(units)  # units say nothing, and a scale of 1 micrometer is not one it wrote
    data, drop, (axes, units, scale, base, shift) = _drop_single_z(data, axes, units, scale, base, shift)
    spatial = _zarr_voxel(axes, scale, units, base)
    origin = _origin(axes, shift, scale, units, calibrated=spatial is not None)
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    reader = ZarrReader(image_path, component, shape=data.shape, drop=drop)
    return LazyImage(data=data, voxel_size=spatial, axes=axes, path=path, reader=reader,
                     **_time_axis_and_problem(axes, scale, units, shift, path),
                     voxel_problem=_unit_problem(axes, units, path), origin=origin,
                     voxel_problem_without_file=_unit_problem(axes, units, "the image"),
                     channels=_omero_channels(dict(group.attrs), data.shape[axes.index("C")] if "C" in axes else 1,
                                              path if omero_warning else None))


def _level_array(image_path: Path, component: str, level: int, metadata):
    """The dask array of ``component``, the image's resolution ``level`` (``metadata``: the image's path and its
    multiscales key, for the message of a level that names no array)."""
    import dask.array as da

    try:
        return da.from_zarr(_open_array(image_path, component))
    except Exception as exc:
        if not any((image_path / component.strip("/") / name).exists() for name in ("zarr.json", ".zarray")):
            raise _malformed(image_path, f"{metadata[1]}[0].datasets[{level}].path", component, "the name of an "
                             "array in the image (it holds none of that name)") from exc
        problem = _zarr_problem(exc, image_path / component)
        raise naming_image(lambda image: f"cannot read level {component!r} of {image} ({problem}): export the image "
                           "again, e.g. with deconv3d or bioformats2raw", image_path) from exc


def _open_array(root, component: str):
    """The zarr array ``component`` of the store at ``root``, read-only, its chunks read through
    :class:`~deconv3d.omezarr.chunk_store.CheckedLocalStore`: a chunk whose file is a folder or a broken
    link, or is empty or cut short, is refused, not read as the fill value (zeros); and decoded through
    :func:`~deconv3d.omezarr._chunk_decoding.refusing_damaged_chunks`: a chunk whose bytes do not decode,
    whatever its codec, is refused in one line naming it, read by :class:`ZarrReader` or the dask array."""
    import warnings

    import zarr

    from deconv3d.errors import WARNINGS_LOCK
    from deconv3d.omezarr._chunk_decoding import refusing_damaged_chunks
    from deconv3d.omezarr.chunk_store import CheckedLocalStore

    # (zarr warns, opening a v3 array of a numcodecs codec such as zlib, that other implementations may not
    # support it: advice for whoever writes such an array, which a run reading it cannot act on)
    with WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3", category=UserWarning)
        array = zarr.open_array(store=CheckedLocalStore(root, read_only=True), path=component, mode="r")
    return refusing_damaged_chunks(array)


def _drop_single_z(data, axes: str, *per_axis):
    """A 2D image stored as 5D (bioformats2raw), its Z axis of one plane: ``data`` without that axis, the
    dropped axis's index (``()`` where none is), and ``axes`` and each list of ``per_axis`` values without it."""
    if not ("Z" in axes and data.shape[axes.index("Z")] == 1):
        return data, (), (axes, *per_axis)
    drop = (axes.index("Z"),)
    data = data[tuple(0 if i in drop else slice(None) for i in range(data.ndim))]
    return data, drop, ("".join(a for i, a in enumerate(axes) if i not in drop),
                        *([v for i, v in enumerate(x) if i not in drop] for x in per_axis))


def _origin(axes: str, shift, scale, units, calibrated: bool):
    """The spatial axes' translation: in µm, as the voxel size, where the image is ``calibrated``, else in its
    own voxels (the voxel size is then dropped); None where it has none."""
    if calibrated and any(v for a, v in zip(axes, shift) if a in "ZYX"):
        return tuple(v * (_unit_factor(u) if u else 1.0) for a, v, u in zip(axes, shift, units) if a in "ZYX")
    if any(v for a, v in zip(axes, shift) if a in "ZYX"):
        return tuple(v / s for a, v, s in zip(axes, shift, scale) if a in "ZYX")
    return None


def read_ome_zarr(path, level: int = 0):
    """Load one level of an OME-Zarr (v0.4 or v0.5) image: ``(array, voxel_size, axes, attrs)``."""
    path = Path(path)
    lazy = _open_ome_zarr(path, level)
    return np.asarray(lazy.data.compute()), lazy.voxel_size, lazy.axes, dict(_image_group(lazy.path)[0].attrs)
