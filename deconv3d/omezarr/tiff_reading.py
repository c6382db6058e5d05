"""Lazy reading of TIFF inputs: :func:`_open_tiff` opens a TIFF's first series as a dask array of
one chunk per plane (through tifffile's zarr interface, so a large TIFF is never loaded whole) from
its header (:class:`_TiffHeader`, read by :func:`_tiff_header` without any pixels; its axes put in
T, C, Z, Y, X order by :func:`_tiff_axes`), read by :class:`_TiffArray`, which opens the file once
per process and closes it when asked; :class:`TiffReader` reads any region of it straight from the
file as float32 for the chunked pipeline (see :mod:`deconv3d.omezarr`)."""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deconv3d._arrays import refuse_complex
from deconv3d._paths import _one_line
from deconv3d._tiff_checks import _check_complete, _tifffile_log, _unreadable_tiff
from deconv3d._tiff_metadata import calibrated, imagej_calibration
from deconv3d._tiff_voxel_sizes import (_GENERIC_AXES, _checked_voxel, _kept_voxel, _partial_voxel, _voxel_size_um,
                                        spatial_letters, z_step_assumed)
from deconv3d.errors import InputError, naming_file, naming_image, refusing_image
from deconv3d.io import _refuse_colour
from deconv3d.omezarr.lazy_image import (LazyImage, _content_identity, _float32_block, _refuse_unreadable, _region,
                                         _verify_unchanged)


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
        self.options = {"series": 0, **(options or {})}  # how deconv3d._tiff_checks.open_tiff reads the image
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
            problem = _one_line(exc)

            def say(image):
                return (f"cannot read {image} (region {_region(key)}): {problem}: a strip or tile is damaged; "
                        "copy or export the image again")
            raise naming_file(say, self.path) from exc
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

    Axes of length 1 in the file are dropped (as in the dask array of
    :func:`~deconv3d.omezarr.reading.open_lazy`). It pickles as a path and a file token
    (``remote``): a dask.distributed worker opens the file itself.
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


@dataclass(frozen=True)
class _TiffHeader:
    """What :func:`_open_tiff` takes from a TIFF before it reads any pixels."""

    axes: str  # deconv3d's letters of the axes kept (:func:`_tiff_axes`)
    order: tuple  # the transposition to them, from the file's axes without its singletons
    shape: tuple  # the series' shape, as stored
    dtype: object
    options: dict  # how deconv3d._tiff_checks.open_tiff reads the series
    page_shape: tuple
    calibration: tuple | None
    voxel: tuple | None  # spatial voxel size in micrometres
    voxel_problem: str | None
    sizes: object  # the calibrated sizes of the kept spatial axes (:func:`_kept_voxel`)
    time_axis: tuple | None
    time_problem: object  # None, or the warning about the T axis's unit said of a name (named_time_unit)
    channels: tuple | None


def _tiff_header(path: Path) -> _TiffHeader:
    from deconv3d._tiff_channels import imagej_channels, ome_channels
    from deconv3d._tiff_metadata import time_axis_and_problem
    from deconv3d._tiff_checks import open_tiff

    try:
        with _tifffile_log() as log:
            with open_tiff(path) as (tif, series, options):
                axes, shape, dtype = series.axes, series.shape, series.dtype
                calibration = imagej_calibration(tif, dtype, path)
                voxel = _voxel_size_um(tif, series)
                time_axis, time_problem = time_axis_and_problem(tif) if "T" in series.axes else (None, None)
                count = dict(zip(axes, shape)).get("C", 1)
                channels = ome_channels(tif, count) if tif.is_ome else imagej_channels(tif, count)
                page_shape = tuple(series.pages[0].shape) if series.pages else shape[-2:]
                _check_complete(tif, series, log, path)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise _unreadable_tiff(path, exc) from exc
    kept = "".join(a for a, n in zip(axes, shape) if n != 1)
    _refuse_colour(kept, path)
    refusing_image(lambda image: refuse_complex(np.dtype(dtype), image, "save the intensity (magnitude) instead"),
                   f"image {path}")
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
                     voxel_problem_without_file=_checked_voxel(h.sizes, "the image")[1],
                     partial_voxel=_partial_voxel(h.sizes), channels=h.channels, z_step_assumed=z_step_assumed(h.sizes),
                     **_time_problem(h, path))


def _time_problem(h: _TiffHeader, path: Path) -> dict:
    """LazyImage's ``time_problem``, said of the file ``path`` as given, and ``time_problem_without_file``,
    said of "the image"; neither where it keeps no T axis, or its unit has a name."""
    if h.time_problem is None or "T" not in h.axes:
        return {}
    return {"time_problem": h.time_problem(path), "time_problem_without_file": h.time_problem("the image")}


def _tiff_axes(axes: str, shape, path: Path) -> tuple[str, tuple[int, ...]]:
    """TCZYX letters of a TIFF's non-singleton axes, and the order that puts them so.

    Returns ``(letters, order)``: the image in deconv3d's order is the file's (singletons
    dropped) transposed by ``order``. ImageJ hyperstacks keep Z before C (``ZCYX``), which
    this reorders to ``CZYX``. A section through a stack (one row or column) keeps its letters,
    ``ZX`` or ``ZY`` (:func:`~deconv3d._tiff_voxel_sizes.spatial_letters`), not ``YX``: the plane is
    the last two spatial axes, so a ``ZCYX`` file of one row is ``CZX``, not a channel read as y.
    """
    kept = [a for a, n in zip(axes, shape) if n != 1]
    if len(kept) < 2:
        raise naming_image(lambda image: f"{image} is {len(kept)}D once its axes of length 1 are dropped (shape "
                           f"{tuple(shape)}): a 2D or 3D image is needed", f"image {path}")
    letters = ["Z" if a in _GENERIC_AXES else a for a in kept]
    spatial = [i for i, a in enumerate(letters) if a in "ZYX"]
    if len(spatial) < 2 and any(a in "TC" for a in letters):
        raise naming_image(lambda image: f"{image} has axes {''.join(kept)} (shape {tuple(shape)}), {len(spatial)} "
                           "of them spatial once its axes of length 1 are dropped: a 2D or 3D image is needed",
                           f"image {path}")
    at = spatial[-2:] if len(spatial) >= 2 else [len(kept) - 2, len(kept) - 1]  # the plane's positions
    rest = [i for i in range(len(kept)) if i not in at]
    lead = [letters[i] for i in rest]
    plane = spatial_letters("".join(kept[i] for i in at), 2)
    if any(a not in "TCZ" for a in lead) or len(set(lead)) != len(lead) or (plane[0] == "Z" and "Z" in lead):
        raise naming_image(lambda image: f"{image} has axes {''.join(kept)} that are not T, C, Z, Y, X: save it as "
                           "an ImageJ hyperstack or OME-TIFF with labelled axes", f"image {path}")
    order = tuple(sorted(rest, key=lambda i: "TCZ".index(letters[i]))) + tuple(at)
    return "".join(letters[i] for i in order[:-2]) + plane, order


def _path_token(path: Path) -> str:
    st = path.stat()
    identity = f"{path.resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha1(os.fsencode(identity)).hexdigest()[:16]  # (a file name need not be UTF-8)
