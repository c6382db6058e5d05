"""Reading: lazy, out-of-core opening of TIFF and OME-Zarr (v0.4/v0.5) images, block readers, and
whole levels into memory (see :mod:`deconv3d.omezarr`)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deconv3d._arrays import refuse_complex, refuse_non_numeric
from deconv3d._paths import TIFF_SUFFIXES, _one_line, special_file_problem
from deconv3d._tiff_metadata import (_GENERIC_AXES, _checked_voxel, _kept_voxel, _partial_voxel,
                                     _size_in_um, _unit_factor, _voxel_size_um, calibrated, imagej_calibration,
                                     spatial_letters)
from deconv3d.errors import InputError
from deconv3d.io import _check_complete, _refuse_colour, _tifffile_log, _unreadable_tiff

ZARR_SUFFIX = ".zarr"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


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
    partial_voxel: tuple | None = None  # a TIFF that calibrates some axes only: their sizes (see io.Image)
    time_axis: tuple | None = None  # (step, unit or None[, start]) of a T axis the file calibrates; start: an
    # OME-Zarr's T translation, in that unit, where it is not 0
    origin: tuple | None = None  # where an OME-Zarr image's first voxel sits, per spatial axis: in micrometres,
    # or in voxels where voxel_size is None (an uncalibrated image's translation, in the units of its scale of 1)
    channels: tuple | None = None  # OME-Zarr omero channels, OME-TIFF Channels: dicts of label, color, active
    time_problem: str | None = None  # a warning that the T axis's unit has no OME-Zarr name (its step is kept):
    # given by the run that writes the axis (run_chunked, deconvolve_file), not each time the file is opened


def open_lazy(path) -> LazyImage:
    """Open a TIFF or an OME-Zarr image as a dask array without reading its pixels.

    Raises
    ------
    InputError
        If the path is missing, neither a regular file nor a folder (a named pipe: opening it
        waited for ever), of an unsupported type, or not a readable image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}: check the path")
    if (problem := special_file_problem(path)) is not None:  # (before opening: a named pipe's waited forever)
        raise InputError(problem)
    suffix = path.suffix.lower()
    if suffix == ZARR_SUFFIX or (path.is_dir() and any((path / f).exists() for f in _ZARR_MARKERS)):
        return _open_ome_zarr(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder but not a zarr image (no zarr.json or .zgroup in it): give a TIFF file "
                         "or an OME-Zarr folder")
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    raise InputError(f"unsupported input format '{path.suffix}' for {path}: use .tif, .tiff or .zarr")


class _TiffArray:
    """Array-like view of a TIFF's first series for ``dask.array.from_array``.

    Only the path and how to read it travel with it (it pickles to
    dask.distributed workers); every process opens the file through tifffile's zarr store and
    reads just the pages a block needs. The store is opened at the first read and kept for the
    next ones (every block of a run reads through it), until :meth:`close` (a chunked run's end:
    :func:`~deconv3d.pipeline.readers.close_sources`) or until this object is gone, whichever
    comes first; a later read opens it again. Stores were shared by every view of a file and the 8
    most recent kept open, so a long session held handles to files it was done with, and a deleted
    TIFF's space came back only when its handle was pushed out.
    """

    def __init__(self, path: Path, shape, dtype, options: dict | None = None):
        # absolute: a dask.distributed worker opens it from a folder of its own
        self.path, self.shape, self.dtype, self.ndim = os.path.abspath(path), tuple(shape), np.dtype(dtype), len(shape)
        self.options = {"series": 0, **(options or {})}  # how deconv3d.io.open_tiff reads the image
        self.__setstate__({})

    def __getstate__(self) -> dict:  # (the open store stays here: a copy opens its own)
        return {k: v for k, v in self.__dict__.items() if k not in ("_store", "_users", "_closing", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._store = None  # weakref.finalize closing the open store, and its zarr array: (finalize, array)
        self._users, self._closing = 0, False  # reads in flight; a close waiting for them
        self._lock = threading.Lock()

    def _array(self):
        import tifffile
        import zarr

        with self._lock:
            if self._store is None:
                store = tifffile.imread(self.path, aszarr=True, level=0, **self.options)
                # closed with this object at the latest (at exit too: left to the interpreter's teardown,
                # files were reported as unclosed)
                self._store = (weakref.finalize(self, store.close), zarr.open(store, mode="r"))
            return self._store[1]

    def __getitem__(self, key):
        with self._lock:
            self._users += 1
        try:
            return np.asarray(self._array()[key])
        except (OSError, MemoryError) as exc:
            _refuse_unreadable(self.path, key, exc)
            raise
        except Exception as exc:  # noqa: BLE001 - a codec's complaint: zlib.error, a predictor's KeyError, ...
            raise InputError(f"cannot read {self.path} (region {_region(key)}): {_one_line(exc)}: a strip or tile "
                             "is damaged; copy or export the image again") from exc
        finally:
            with self._lock:
                self._users -= 1
                self._close_if_asked()

    def close(self) -> None:
        """Close the file now, or once the reads in flight (another thread's) are done; a later
        read opens it again."""
        with self._lock:
            self._closing = True
            self._close_if_asked()

    def _close_if_asked(self) -> None:  # (under the lock)
        if self._closing and not self._users:
            self._closing = False
            if self._store is not None:
                self._store[0]()
                self._store = None


class TiffReader:
    """Regions of a TIFF's first series, read through tifffile's zarr store, as float32.

    Axes of length 1 in the file are dropped (as in :func:`open_lazy`'s dask array). It pickles
    as a path and a file token (``remote``): a dask.distributed worker opens the file itself.
    """

    remote = True

    def __init__(self, source: _TiffArray, order=None, calibration: tuple[float, float] | None = None):
        self.source = source
        self.calibration = calibration  # ImageJ's linear intensity calibration (offset, scale), applied on read
        self.identity = _content_identity(source.path)  # what verify compares with
        kept = tuple(n for n in source.shape if n != 1)
        self.order = tuple(order) if order is not None else tuple(range(len(kept)))
        self.shape = tuple(kept[i] for i in self.order)
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def read(self, key) -> np.ndarray:
        """Region ``key`` in this reader's (T, C, Z, Y, X) order, whatever order the file keeps."""
        key = tuple(key) if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        in_file = [slice(None)] * self.ndim
        for k, i in zip(key, self.order):
            in_file[i] = k
        it = iter(in_file)
        full = tuple(0 if n == 1 else next(it) for n in self.source.shape)
        block = self.source[full]
        left = [i for i in range(self.ndim) if not isinstance(in_file[i], (int, np.integer))]  # file order
        wanted = [left.index(i) for i in self.order if i in left]
        return calibrated(_float32_block(block.transpose(wanted), self.source.path), self.calibration)

    __getitem__ = read

    def close(self) -> None:
        """Close the file until the next read (:meth:`_TiffArray.close`)."""
        self.source.close()

    def verify(self, thorough: bool = True) -> None:
        """Refuse a run whose TIFF was rewritten, replaced, moved or deleted since it was opened:
        blocks read before and after would come from two different images (one stat: ``thorough``
        changes nothing)."""
        _verify_unchanged(self.source.path, _content_identity(self.source.path), self.identity)


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


@dataclass(frozen=True)
class _TiffHeader:
    """What :func:`_open_tiff` takes from a TIFF before it reads any pixels."""

    axes: str  # deconv3d's letters of the axes kept (:func:`_tiff_axes`)
    order: tuple  # the transposition to them, from the file's axes without its singletons
    shape: tuple  # the series' shape, as stored
    dtype: object
    options: dict  # how deconv3d.io.open_tiff reads the series
    page_shape: tuple
    calibration: tuple | None
    voxel: tuple | None  # spatial voxel size in micrometres
    voxel_problem: str | None
    sizes: object  # the calibrated sizes of the kept spatial axes (:func:`_kept_voxel`)
    time_axis: tuple | None
    time_problem: str | None
    channels: tuple | None


def _tiff_header(path: Path) -> _TiffHeader:
    from deconv3d._tiff_metadata import ome_channels, time_axis_and_problem
    from deconv3d.io import open_tiff

    try:
        with _tifffile_log() as log:
            with open_tiff(path) as (tif, series, options):
                axes, shape, dtype = series.axes, series.shape, series.dtype
                calibration = imagej_calibration(tif, dtype, path)
                voxel = _voxel_size_um(tif, series)
                time_axis, time_problem = time_axis_and_problem(tif) if "T" in series.axes else (None, None)
                channels = ome_channels(tif, dict(zip(axes, shape)).get("C", 1))
                page_shape = tuple(series.pages[0].shape) if series.pages else shape[-2:]
                _check_complete(tif, series, log, path)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise _unreadable_tiff(path, exc) from exc
    kept = "".join(a for a, n in zip(axes, shape) if n != 1)
    _refuse_colour(kept, path)
    refuse_complex(np.dtype(dtype), f"image {path}", "save the intensity (magnitude) instead")
    axes, order = _tiff_axes(axes, shape, path)
    spatial_kept = "".join(a for a in kept if a in "ZYX" or a in _GENERIC_AXES)
    sizes = _kept_voxel(voxel, spatial_kept, sum(a in "ZYX" for a in axes))
    spatial, problem = _checked_voxel(sizes, path)
    return _TiffHeader(axes, tuple(order), tuple(shape), dtype, options, page_shape, calibration, spatial, problem,
                       sizes, time_axis, time_problem, channels)


def _open_tiff(path: Path) -> LazyImage:
    import dask.array as da

    h = _tiff_header(path)
    shape, dtype, order = h.shape, h.dtype, h.order
    plane = h.page_shape[-2:] if len(h.page_shape) >= 2 else shape[-2:]
    chunks = (1,) * (len(shape) - 2) + tuple(plane)
    token = _path_token(path)
    source = _TiffArray(path, shape, dtype, h.options)
    data = da.from_array(source, chunks=chunks, name=f"tiff-{token}", asarray=False,
                         meta=np.empty((0,) * len(shape), dtype))
    data = data.reshape([n for n in shape if n != 1]) if 1 in shape else data
    data = data.transpose(order) if list(order) != sorted(order) else data
    data = data.astype(np.float32)
    if h.calibration is not None:
        data = data * np.float32(h.calibration[1]) + np.float32(h.calibration[0])
    return LazyImage(data=data, voxel_size=h.voxel, axes=h.axes, path=path, time_axis=h.time_axis,
                     reader=TiffReader(source, order, h.calibration), voxel_problem=h.voxel_problem,
                     partial_voxel=_partial_voxel(h.sizes), channels=h.channels,
                     time_problem=h.time_problem if "T" in h.axes else None)


def _tiff_axes(axes: str, shape, path: Path) -> tuple[str, tuple[int, ...]]:
    """TCZYX letters of a TIFF's non-singleton axes, and the order that puts them so.

    Returns ``(letters, order)``: the image in deconv3d's order is the file's (singletons
    dropped) transposed by ``order``. ImageJ hyperstacks keep Z before C (``ZCYX``), which
    this reorders to ``CZYX``. A section through a stack (one row or column) keeps its letters,
    ``ZX`` or ``ZY`` (:func:`~deconv3d._tiff_metadata.spatial_letters`), not ``YX``: the plane is
    the last two spatial axes, so a ``ZCYX`` file of one row is ``CZX``, not a channel read as y.
    """
    kept = [a for a, n in zip(axes, shape) if n != 1]
    if len(kept) < 2:
        raise InputError(f"image {path} is {len(kept)}D once its axes of length 1 are dropped (shape {tuple(shape)}): "
                         "a 2D or 3D image is needed")
    letters = ["Z" if a in _GENERIC_AXES else a for a in kept]
    spatial = [i for i, a in enumerate(letters) if a in "ZYX"]
    if len(spatial) < 2 and any(a in "TC" for a in letters):
        raise InputError(f"image {path} has axes {''.join(kept)} (shape {tuple(shape)}), {len(spatial)} of them "
                         "spatial once its axes of length 1 are dropped: a 2D or 3D image is needed")
    at = spatial[-2:] if len(spatial) >= 2 else [len(kept) - 2, len(kept) - 1]  # the plane's positions
    rest = [i for i in range(len(kept)) if i not in at]
    lead = [letters[i] for i in rest]
    plane = spatial_letters("".join(kept[i] for i in at), 2)
    if any(a not in "TCZ" for a in lead) or len(set(lead)) != len(lead) or (plane[0] == "Z" and "Z" in lead):
        raise InputError(f"image {path} has axes {''.join(kept)} that are not T, C, Z, Y, X: save it as "
                         "an ImageJ hyperstack or OME-TIFF with labelled axes")
    order = tuple(sorted(rest, key=lambda i: "TCZ".index(letters[i]))) + tuple(at)
    return "".join(letters[i] for i in order[:-2]) + plane, order


def _path_token(path: Path) -> str:
    st = path.stat()
    identity = f"{path.resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha1(os.fsencode(identity)).hexdigest()[:16]  # (a file name need not be UTF-8)


def _multiscale(attrs: dict, path: Path) -> dict:
    """The first multiscale image in the attributes ``attrs`` of the group at ``path``, its
    ``datasets`` checked: a non-empty list of levels, each naming its array by a ``path`` string.
    Metadata of another shape is refused in one line naming its file and key (:func:`_malformed`);
    read as it was, it raised an AttributeError, KeyError or TypeError."""
    ome = attrs.get("ome", attrs)
    if not isinstance(ome, dict):
        raise _malformed(path, "ome", ome, "an object holding 'version' and 'multiscales'")
    scales = ome.get("multiscales")
    if scales is None:
        raise InputError(f"{path} is not an OME-Zarr image (no 'multiscales' metadata): give an image group")
    key = _multiscales_key(attrs)
    if not isinstance(scales, list) or not scales or not isinstance(scales[0], dict):
        raise _malformed(path, key, scales, "a list of multiscale images (objects with 'axes' and 'datasets')")
    datasets = scales[0].get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise _malformed(path, f"{key}[0].datasets", datasets, 'a list of resolution levels ({"path": "0", '
                         '"coordinateTransformations": [...]}, ...)')
    for i, dataset in enumerate(datasets):
        if not isinstance(dataset, dict):
            raise _malformed(path, f"{key}[0].datasets[{i}]", dataset, 'a resolution level ({"path": "0", ...})')
        if not isinstance(dataset.get("path"), str) or not dataset["path"].strip("/"):
            raise _malformed(path, f"{key}[0].datasets[{i}].path", dataset.get("path"), "the name of an array in "
                             "the image")
    return scales[0]


def _multiscales_key(attrs: dict) -> str:
    """The key of an image's multiscales, for messages: ``ome.multiscales`` (0.5), ``multiscales`` (0.4)."""
    return f"{'ome.' if 'ome' in attrs else ''}multiscales"


def _malformed(path: Path, key: str, value, wanted: str) -> InputError:
    """The one-line error for the entry ``key`` (``ome.multiscales[0].axes``) of the OME-Zarr metadata
    of the group at ``path``, which holds ``value`` (None: nothing) where a reader needs ``wanted``."""
    file = next((path / name for name in ("zarr.json", ".zattrs") if (path / name).is_file()), path)
    text = json.dumps(value, ensure_ascii=False, default=str)  # as the file writes it: an editor finds it
    found = "missing, where it should be" if value is None else f"{text if len(text) <= 60 else text[:57] + '...'}, not"
    return InputError(f"{file}: {key} is {found} {wanted}: fix that entry of the image's OME-Zarr metadata, or "
                      "export the image again")


def _axes_of(ms: dict, ndim: int, path: Path, metadata: tuple | None = None) -> tuple[str, list]:
    """The axes as letters from ``TCZYX`` in the file's order, and their units.

    OME-NGFF (0.4, 0.5) orders axes by type: time, then channel, then space, with unique names.
    Spatial axes are also taken in deconv3d's z, y, x order, which the specification recommends:
    read by position, an ``xyz`` image put the PSF's optical axis along x without a word.
    ``axes`` must be a list of one axis per dimension, each an object with a ``name`` or (0.3) a
    name; without ``axes`` (0.1, 0.2) a 2D, 3D or 5D array is ``YX``, ``ZYX`` or ``TCZYX``, and
    another (a 4D one: TZYX or CZYX?) is refused, in one line naming the file and key (``metadata``:
    the group's path and the key of its multiscales, :func:`_multiscales_key`).
    """
    group, key = metadata or (path, "multiscales")
    axes = ms.get("axes")
    if axes is None and ndim in (2, 3, 5):
        axes = ["t", "c", "z", "y", "x"][-ndim:]
    if not isinstance(axes, list) or len(axes) != ndim:
        raise _malformed(group, f"{key}[0].axes", axes, f"a list of {ndim} axes ({{\"name\": \"z\", \"type\": "
                         f"\"space\", ...}}), one per dimension of the image's {ndim}D array")
    for i, axis in enumerate(axes):
        if not isinstance(axis.get("name") if isinstance(axis, dict) else axis, str):
            raise _malformed(group, f"{key}[0].axes[{i}]" + (".name" if isinstance(axis, dict) else ""),
                             axis.get("name") if isinstance(axis, dict) else axis, 'an axis name ("t", "c", "z", '
                             '"y" or "x")')
    names = [(a.get("name") if isinstance(a, dict) else str(a)) for a in axes]
    names = [n.lower() if isinstance(n, str) else n for n in names]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    if len(names) != ndim or any(n not in _AXIS_TYPES for n in names):
        raise InputError(f"{path}: unsupported OME-Zarr axes {names}: deconv3d reads t, c, z, y, x")
    for a, n in zip(axes, names):
        kind = a.get("type") if isinstance(a, dict) else None
        if kind is not None and kind != _AXIS_TYPES[n]:
            raise InputError(f"{path}: OME-Zarr axis {n!r} has type {kind!r}, not {_AXIS_TYPES[n]!r}: fix the "
                             "image's axes metadata")
    letters = "".join(names)
    if not _in_order(letters, "tczyx"):
        raise InputError(f"{path}: OME-Zarr axes {''.join(names)} are not in t, c, z, y, x order: deconv3d reads "
                         "that order (spatial axes z, y, x); reorder the image's axes")
    return letters.upper(), units


def _in_order(letters: str, order: str) -> bool:
    """Whether ``letters`` are distinct and appear in ``order``'s order."""
    positions = [order.index(a) for a in letters]
    return positions == sorted(positions) and len(set(positions)) == len(positions)


def _level_transform(ms: dict, level: int, ndim: int, path: Path | None = None,
                     metadata: tuple | None = None) -> tuple[list, list]:
    """The voxel scale of ``level`` and the position of its first voxel, per axis in the file's units.

    The dataset's transforms apply first, then the multiscale's: scales multiply, and a translation
    of the dataset is scaled by the multiscale's scale before its own translation is added. Each is
    a list of one finite number per axis (a scale's positive; OME-NGFF), where a numeric string
    (``["2", "0.5", "0.5"]``) is read as its number; one stored in a file (``path``), a string in
    place of the list, true or false in it, or of another length, is refused by name rather than
    read as 1 (or 0). So is a
    ``coordinateTransformations`` that is not a list of ``scale``, ``translation`` (or ``identity``)
    transformations, in one line naming the file and key (``metadata``: the group's path and the key
    of its multiscales, :func:`_multiscales_key`): skipped, a misspelt ``"Scale"`` was read as 1.
    """
    scale, origin = [1.0] * ndim, [0.0] * ndim
    where = f"{path}: level {ms['datasets'][level].get('path', level)!r}"
    group, key = metadata or (path, "multiscales")
    for owner, transforms in ((f"{key}[0].datasets[{level}]", ms["datasets"][level].get("coordinateTransformations")),
                              (f"{key}[0]", ms.get("coordinateTransformations"))):
        if transforms is not None and not isinstance(transforms, list):
            raise _malformed(group, f"{owner}.coordinateTransformations", transforms, 'a list of transformations '
                             '([{"type": "scale", "scale": [...]}, ...])')
        for i, tr in enumerate(transforms or []):
            kind = tr.get("type") if isinstance(tr, dict) else None
            if kind == "identity":
                continue
            if kind not in ("scale", "translation"):
                raise _malformed(group, f"{owner}.coordinateTransformations[{i}]", tr, 'a "scale" or "translation" '
                                 "transformation (what OME-Zarr 0.4 and 0.5 levels hold)")
            if tr.get(kind) is None and "path" in tr:
                raise InputError(f"{where} keeps its {kind} outside the metadata ({tr['path']!r}), which deconv3d "
                                 f"does not read: write the {kind} values into the image's metadata")
            try:  # (a list: the string "111" is no scale of 1, and true no number)
                values = [float(v) for v in tr[kind] if not isinstance(v, bool)] if isinstance(tr[kind], list) else []
            except (KeyError, TypeError, ValueError):
                values = []
            if len(values) != ndim or not all(np.isfinite(values)) or (kind == "scale" and min(values) <= 0):
                raise InputError(f"{where} has {kind} {tr.get(kind)!r}, not {ndim} "
                                 f"{'positive numbers' if kind == 'scale' else 'numbers'} (one per axis): fix the "
                                 "image's coordinateTransformations")
            if kind == "scale":
                scale = [a * b for a, b in zip(scale, values)]
                origin = [o * b for o, b in zip(origin, values)]
            else:
                origin = [o + v for o, v in zip(origin, values)]
    return scale, origin


def _has_scale(ms: dict, level: int) -> bool:
    """Whether the (checked: :func:`_level_transform`) transformations of ``level``, its own and the
    multiscale's, hold a scale: without one the file gives no voxel size, whatever its units."""
    transforms = (ms["datasets"][level].get("coordinateTransformations") or []) + (
        ms.get("coordinateTransformations") or [])
    return any(tr.get("type") == "scale" for tr in transforms)


def _open_group(path: Path):
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:
        if _is_bare_array(path):  # zarr's own words were "an array already exists", read as a write clash
            raise InputError(f"{path} is a bare zarr array, without the OME-Zarr metadata that gives its axes and "
                             "voxel size: save it as an OME-Zarr image (deconv3d.omezarr.write_ome_zarr) "
                             "or as TIFF") from exc
        raise InputError(f"cannot open {path} as OME-Zarr ({_one_line(exc)}): give an OME-Zarr image group, "
                         "e.g. one written by deconv3d or bioformats2raw") from exc


def _is_bare_array(path: Path) -> bool:
    import zarr

    try:
        zarr.open_array(str(path), mode="r")
    except Exception:  # noqa: BLE001 - anything else is not one
        return False
    return True


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
            import zarr

            self._array = zarr.open_array(self.path, path=self.component, mode="r")
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
        except (RuntimeError, ValueError) as exc:  # a codec's or the store's complaint about a chunk
            raise InputError(f"cannot read {self.path} (array {self.component!r}, region {_region(key)}): "
                             f"{_one_line(exc)}: a chunk is damaged; copy or convert the image again") from exc

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


def _float32_block(block, path) -> np.ndarray:
    """A block read from ``path`` as C-ordered float32; float64 values past float32's range are
    refused as in-memory reading refuses them (a bare cast made them Inf, then reported as Inf
    in the file, with a numpy overflow warning first)."""
    block = np.asarray(block)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(block, dtype=np.float32, order="C")
    if block.dtype.kind == "f" and block.dtype.itemsize > 4 and np.isinf(out).any():
        from deconv3d.io import _as_float32

        _as_float32(block, path)  # names the peak, or the NaN/Inf the file itself holds
    return out


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
        raise InputError(f"{path} was changed, moved or deleted during the run: nothing was written; run again "
                         "once the image is complete and left in place")


def _refuse_unreadable(path, key, exc: BaseException) -> None:
    """A file that went away or cannot be read during a run (not a damaged one): say so in one line.
    Other errors (MemoryError) are left to the caller to raise."""
    if isinstance(exc, OSError):
        raise InputError(f"cannot read {path} (region {_region(key)}): {_one_line(exc)}: check that the image is "
                         "still there and readable (it was moved, deleted or unmounted during the run?)") from exc


def _region(key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return "[" + ", ".join((f"{k.start or 0}:{'' if k.stop is None else k.stop}" if isinstance(k, slice) else str(k))
                           for k in key) + "]"


#: Files that make a folder a zarr group: zarr v3, and v2 (OME-Zarr v0.4, bioformats2raw's output).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")


def _image_group(path: Path):
    """The zarr group of the image at ``path``: ``path`` itself, or for a bioformats2raw root
    (``bioformats2raw.layout``, no multiscales) its first series ``path/0``. Returns ``(group, path)``."""
    group = _open_group(path)
    attrs = dict(group.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # (another "ome": _multiscale's error)
    if not ome.get("multiscales") and ("bioformats2raw.layout" in ome or "bioformats2raw.layout" in attrs):
        if (path / "1").is_dir():  # OME-NGFF: readers SHOULD tell that there is more than one image
            series = sorted((p.name for p in path.iterdir() if p.name.isdigit() and p.is_dir()), key=int)
            raise InputError(f"{path} holds {len(series)} images (bioformats2raw series {', '.join(series[:5])}"
                             f"{', ...' if len(series) > 5 else ''}): give one, e.g. {path / '0'}")
        if (path / "0").is_dir():
            return _open_group(path / "0"), path / "0"
    return group, path


def _open_ome_zarr(path: Path, level: int = 0) -> LazyImage:
    import dask.array as da

    group, image_path = _image_group(path)  # path stays the input's name, for messages and outputs
    attrs = dict(group.attrs)
    ms, metadata = _multiscale(attrs, image_path), (image_path, _multiscales_key(attrs))
    if level >= len(ms["datasets"]):
        raise InputError(f"{path} has no resolution level {level}")
    component = ms["datasets"][level]["path"]
    try:
        data = da.from_zarr(str(image_path), component=component)
    except Exception as exc:
        if not any((image_path / component.strip("/") / name).exists() for name in ("zarr.json", ".zarray")):
            raise _malformed(image_path, f"{metadata[1]}[0].datasets[{level}].path", component, "the name of an "
                             "array in the image (it holds none of that name)") from exc
        raise InputError(f"cannot read level {component!r} of {image_path}: {_one_line(exc)}") from exc
    refuse_non_numeric(data.dtype, f"image {path}")
    refuse_complex(data.dtype, f"image {path}", "save the intensity (magnitude) instead")
    axes, units = _axes_of(ms, data.ndim, path, metadata)
    (scale, shift), base = (_level_transform(ms, level, data.ndim, path, metadata),
                            _level_transform(ms, 0, data.ndim, path, metadata)[0])
    if not (_has_scale(ms, level) and _has_scale(ms, 0)):  # the file gives no voxel size (or time step): its
        units = [None] * len(units)  # units say nothing, and a scale of 1 micrometer is not one it wrote
    drop = ()
    if "Z" in axes and data.shape[axes.index("Z")] == 1:  # a 2D image stored as 5D (bioformats2raw)
        drop = (axes.index("Z"),)
        data = data[tuple(0 if i in drop else slice(None) for i in range(data.ndim))]
        axes, units, scale, base, shift = ("".join(a for i, a in enumerate(axes) if i not in drop),
                                           *([v for i, v in enumerate(x) if i not in drop]
                                             for x in (units, scale, base, shift)))
    spatial = _zarr_voxel(axes, scale, units, base)
    origin = None
    if spatial is not None and any(v for a, v in zip(axes, shift) if a in "ZYX"):  # in µm, as the voxel size
        origin = tuple(v * (_unit_factor(u) if u else 1.0) for a, v, u in zip(axes, shift, units) if a in "ZYX")
    elif any(v for a, v in zip(axes, shift) if a in "ZYX"):  # uncalibrated: in its own voxels (it was dropped)
        origin = tuple(v / s for a, v, s in zip(axes, shift, scale) if a in "ZYX")
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    reader = ZarrReader(image_path, component, shape=data.shape, drop=drop)
    time_axis = None
    if "T" in axes:  # kept for the output, which would otherwise say 1 with no unit (and start at 0)
        t = axes.index("T")
        if scale[t] != 1 or units[t] or shift[t]:
            time_axis = (float(scale[t]), units[t]) + ((float(shift[t]),) if shift[t] else ())
    return LazyImage(data=data, voxel_size=spatial, axes=axes, path=path, reader=reader, time_axis=time_axis,
                     voxel_problem=_unit_problem(axes, units, path), origin=origin,
                     channels=_omero_channels(dict(group.attrs), data.shape[axes.index("C")] if "C" in axes else 1))


def _omero_channels(attrs: dict, count: int) -> tuple | None:
    """The label, colour and visibility of each of the ``count`` channels in an OME-Zarr's
    ``omero`` metadata (0.5 under ``ome``, 0.4 at the top), or None where it does not give one
    entry per channel. The display windows are left out: they describe the input's intensities."""
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    omero = ome.get("omero", attrs.get("omero"))
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list) or len(channels) != count or not all(isinstance(c, dict) for c in channels):
        return None
    kept = tuple({k: c[k] for k, kind in (("label", str), ("color", str), ("active", bool))
                  if isinstance(c.get(k), kind)} for c in channels)
    return kept if any(kept) else None


def _unit_problem(axes: str, units, path) -> str | None:
    """Why the spatial units cannot be read (one that cannot be converted to µm), or None: the TIFF
    reader's rule and message (:func:`deconv3d._tiff_metadata._checked_voxel`)."""
    return _checked_voxel([_size_in_um(1.0, u) for a, u in zip(axes, units) if a in "ZYX" and u], path)[1]


def _zarr_voxel(axes: str, scale, units, base_scale):
    """Spatial voxel size in µm of a level with ``scale``, or None when unknown.

    Space axes without a unit whose level-0 scale (``base_scale``) is 1 (what an uncalibrated
    image gets, this package's own outputs included) are unknown; a scale other than 1 without
    a unit is taken as micrometres.
    """
    space = [(s, unit) for a, s, unit in zip(axes, scale, units) if a in "ZYX"]
    base = [b for a, b in zip(axes, base_scale) if a in "ZYX"]
    if not any(unit for _, unit in space) and all(b == 1 for b in base):
        return None
    voxel = []
    for s, unit in space:
        factor = _unit_factor(unit) if unit else 1.0
        voxel.append(s * factor if factor else None)
    return tuple(voxel) if voxel and all(v and v > 0 for v in voxel) else None


def read_ome_zarr(path, level: int = 0):
    """Load one level of an OME-Zarr (v0.4 or v0.5) image: ``(array, voxel_size, axes, attrs)``."""
    path = Path(path)
    lazy = _open_ome_zarr(path, level)
    return np.asarray(lazy.data.compute()), lazy.voxel_size, lazy.axes, dict(_image_group(lazy.path)[0].attrs)
