"""Writing TIFF for :mod:`deconv3d.io`: float32 ImageJ hyperstacks that carry their voxel size,
written atomically, and streamed plane by plane from zarr or dask arrays larger than memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from deconv3d._arrays import as_numpy
from deconv3d._paths import (_check_writable_target, _one_line, create_temporary, out_of_space, publishing,
                             temporary_name)
from deconv3d._tiff_channels import omero_color
from deconv3d._voxel import checked_voxel_size
from deconv3d.errors import InputError

__all__ = ["write_tiff", "write_hyperstack", "ZarrPlanes"]


def write_tiff(path, data, voxel_size=None, metadata=None, *, slab_bytes: int | None = None,
               axes: str | None = None) -> None:
    """Write a float32 ImageJ-compatible TIFF carrying the voxel size, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.tif``/``.tiff`` path; an existing file is replaced.
    data : array_like
        2D ``(y, x)`` or 3D ``(z, y, x)`` array; written as float32. A 3D zarr or dask
        array is streamed into the file plane by plane (in slabs of at most 256 MiB), so
        a volume larger than memory can be written.
    voxel_size : sequence of float, optional
        Voxel size in micrometres, one value per axis.  Stored as resolution
        tags (pixels per micrometre) plus ImageJ ``spacing`` and ``unit='um'``,
        which Fiji, tifffile and :func:`read_image` all read back. For a 3D stack
        whose planes are not z steps (e.g. synthesised blur levels), two values
        ``(y, x)`` give the pixel size only: no ``spacing`` is written, and Fiji
        shows its default depth of 1.
    metadata : dict, optional
        Extra ``key: value`` pairs stored as ImageJ properties (shown by Fiji's
        *Image > Show Info*), e.g. the method and its parameters: JSON, but strings as they are
        where that text does not read as JSON (:func:`_property_text`).
    slab_bytes : int, optional
        For streamed data: the most bytes of planes read at once (default 256 MiB, at least
        one plane), e.g. what a memory limit leaves.
    axes : str, optional
        The spatial letters of ``data``'s axes: ``"ZYX"`` or ``"YX"`` (the default for 3D and 2D
        data), or ``"ZX"`` / ``"ZY"`` for a 2D section through z (what :func:`read_image` calls
        a stack of one row or column), which is written as a stack with a y (or x) axis of one
        so that it reads back as that section; ``voxel_size`` is then ``(z, x)`` (or ``(z, y)``).

    Raises
    ------
    InputError
        If the suffix is unsupported, the output directory is missing or not
        writable, the data are empty, not 2D/3D or hold NaN or Inf values (which
        :func:`read_image` refuses), or writing fails.

    Notes
    -----
    The data go to a temporary file in the target directory, which is then
    moved onto ``path`` with :func:`os.replace`; on any failure the temporary
    file is removed, so no partial output is ever left behind. Data beyond 4 GB are written as ImageJ
    writes such stacks, one IFD followed by every plane (not BigTIFF, which ImageJ hyperstacks cannot
    be; tifffile and Fiji read the plane count from the description). A SIGTERM or SIGHUP the command
    line handles during the rename is raised after it, its exception carrying ``published``
    (:func:`~deconv3d._paths.publishing`).
    """
    path = Path(path)
    _check_writable_target(path)
    streamed = _is_lazy(data) and len(data.shape) == 3
    if not streamed:
        data = as_numpy(data)  # a torch tensor too, maybe on a GPU or needing grad
        if np.iscomplexobj(data):
            raise InputError(f"cannot write complex data to {path}: write its magnitude or real part")
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: refused below, as Inf
            data = np.asarray(data, dtype=np.float32)
        if data.size == 0:
            raise InputError(f"cannot write {path}: the image is empty (shape {data.shape})")
        _refuse_non_finite(data, path)
    data, voxel_size = _as_stack(data, voxel_size, axes, path)
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict of ImageJ properties, got {type(metadata).__name__}")
    kwargs = _imagej_kwargs(data, voxel_size, metadata)
    shape = _with_samples(tuple(data.shape), kwargs["metadata"])
    kwargs.update(_contiguous_if_large(shape))
    if streamed:  # page by page from slabs of planes: never the whole volume in memory
        _write_atomically(path, lambda fh: tifffile.imwrite(
            fh, data=_pages(data, slab_bytes or _SLAB_BYTES, path), shape=shape, dtype=np.float32,
            imagej=True, **kwargs))
    else:
        _write_atomically(path, lambda fh: tifffile.imwrite(fh, data.reshape(shape), imagej=True, **kwargs))


def _with_samples(shape: tuple, md: dict) -> tuple:
    """``shape`` (axes ``md["axes"]``) for tifffile: with a trailing sample axis of one (``S``, added to
    ``md["axes"]``) where the x axis is one and there are more axes than y and x, as in a ZY section.
    Without it tifffile's ImageJ mode takes that x axis of one for the samples and drops it: a (4, 6, 1)
    stack was written as one (4, 6) page under a header of 4 planes, which read_image refused as corrupt."""
    if len(shape) > 2 and shape[-1] == 1:
        md["axes"] += "S"
        return shape + (1,)
    return shape


#: float32 bytes above which a TIFF is written as ImageJ writes a stack beyond 4 GB: one IFD, then every
#: plane contiguous (tifffile's ``truncate``; ImageJ reads the plane count from its description). 4 GB less
#: 32 MB for the IFDs and metadata, tifffile's own BigTIFF threshold: ImageJ hyperstacks cannot be BigTIFF.
_CLASSIC_TIFF_BYTES = 2**32 - 2**25


def _contiguous_if_large(shape: tuple) -> dict:
    """``tifffile.imwrite``'s ``truncate=True`` for float32 data of ``shape`` beyond :data:`_CLASSIC_TIFF_BYTES`,
    else nothing. Without it tifffile found the IFDs past 4 GB only at the end and fell back to the same
    layout with a UserWarning naming the temporary file ("truncating ImageJ file") on every such output."""
    return {"truncate": True} if 4 * int(np.prod(shape, dtype=np.int64)) > _CLASSIC_TIFF_BYTES else {}


def _write_atomically(path: Path, write) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, then move it onto ``path``: on any
    failure the temporary file is removed, and an OSError becomes an InputError naming ``path``."""
    tmp = temporary_name(path)
    try:
        # (made with its mode, before the data: a private result is never readable by others meanwhile)
        with open(tmp, "wb", opener=lambda name, flags: create_temporary(path, tmp)) as fh:  # (named: tifffile asks)
            write(fh)
        with publishing(path):  # (a SIGTERM just after it: "no output was written", the new file in place)
            os.replace(tmp, path)
    except OSError as exc:
        if out_of_space(exc):
            raise InputError(f"no space left on {path}: free disk space, then run again") from exc
        raise InputError(f"cannot write {path}: {_one_line(exc)}: check free disk space and permissions") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


_SLAB_BYTES = 256 * 2**20  # planes read at once when a lazy volume is streamed into a TIFF

#: ImageJ's ``tunit`` for each OME-Zarr time unit (those :mod:`deconv3d._tiff_metadata` reads back).
_IMAGEJ_TIME_UNITS = {"second": "sec", "minute": "min", "hour": "hr", "day": "day", "millisecond": "ms",
                      "microsecond": "us", "nanosecond": "ns"}


def write_hyperstack(path, array, axes: str, voxel_size=None, metadata=None, *, time_axis=None, channels=None,
                     slab_bytes: int | None = None) -> None:
    """Write a zarr array of several channels and/or time points as a float32 ImageJ hyperstack, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.tif``/``.tiff`` path; an existing file is replaced.
    array : zarr.Array
        The image, with ``axes``; never loaded whole: every time point is read in slabs of
        z-planes of all its channels, at most ``slab_bytes`` (default 256 MiB), or, where one
        z-plane of every channel is more, in runs of channels of one z-plane (one plane of one
        channel at least), and written in ImageJ's plane order (TZCYX).
    axes : str
        ``array``'s axes: ``T`` and/or ``C`` then ``ZYX``, ``YX``, ``ZX`` or ``ZY`` (a section
        through z, written with a y or x axis of one, as :func:`write_tiff` writes one).
    voxel_size, metadata
        As for :func:`write_tiff`: the spatial voxel size in micrometres, and ImageJ properties.
    time_axis : (float, str or None[, float]), optional
        Step, unit and start of the T axis (:attr:`~deconv3d.omezarr.LazyImage.time_axis`): ImageJ's
        ``finterval`` and ``tunit``, but a step without a unit as the ImageJ property ``time_step``
        (ImageJ reads a ``finterval`` with no ``tunit`` as seconds), and a start other than 0 as the
        property ``time_origin``, in the step's unit (ImageJ has no key for it); both are read back
        (:func:`deconv3d._tiff_metadata.time_axis_and_problem`).
    channels : sequence of dict, optional
        One OME-Zarr ``omero`` channel entry per channel (``label``, ``color``, ``window``, as
        :func:`~deconv3d.omezarr.write_omero` writes them): each plane's ImageJ ``Labels`` entry is
        its channel's label, each channel's ``LUTs`` entry ramps from black to its colour (six hex
        digits; white otherwise), and the windows' ``start`` and ``end`` become ImageJ's ``Ranges``
        (display ranges) where every channel has one. Several channels are written in ImageJ's
        ``composite`` mode, with or without these; one channel with its entry (a TZYX time series)
        in ``color`` mode, which shows it through its LUT (without an entry, ``grayscale``).
    slab_bytes : int, optional
        The most bytes read from ``array`` at once.

    Raises
    ------
    InputError
        As :func:`write_tiff` does, and for axes other than those above.
    """
    path = Path(path)
    _check_writable_target(path)
    letters, spatial = _hyperstack_axes(axes, array.shape, path)
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict of ImageJ properties, got {type(metadata).__name__}")
    _, voxel_size = _as_stack(np.empty((1,) * len(spatial)), voxel_size, spatial, path)
    kwargs = _imagej_kwargs(np.empty((1,) * (3 if "Z" in spatial else 2)), voxel_size, metadata)
    sizes = dict(zip(letters, array.shape))
    sizes.update({"Y": sizes.get("Y", 1), "X": sizes.get("X", 1)})  # (a section's lateral axis of one)
    order = "".join(a for a in "TZCYX" if a in sizes)
    kwargs["metadata"]["axes"] = order
    if "T" in letters:
        time_keys, time_properties = _imagej_time_axis(time_axis)
        kwargs["metadata"].update(time_keys)
        if time_properties:
            kwargs["metadata"].setdefault("Properties", {}).update(time_properties)
    kwargs["metadata"].update(_imagej_channels(channels, sizes, path))
    pages = _hyperstack_pages(array, letters, slab_bytes or _SLAB_BYTES, path)
    shape = _with_samples(tuple(sizes[a] for a in order), kwargs["metadata"])
    kwargs.update(_contiguous_if_large(shape))
    _write_atomically(path, lambda fh: tifffile.imwrite(fh, data=pages, shape=shape,
                                                        dtype=np.float32, imagej=True, **kwargs))


def _imagej_time_axis(time_axis) -> tuple[dict, dict]:
    """``(ImageJ keys, ImageJ properties)`` for a T axis's ``(step, unit[, start])``: ``finterval`` and
    ``tunit``, a unit ImageJ has no short name for by its OME-Zarr name (Fiji shows any text); a step
    without a unit, which ImageJ would read as seconds (a step of 2 ps became 2 s), as the property
    ``time_step`` instead; a start other than 0 as the property ``time_origin``. Nothing without a time axis."""
    if time_axis is None:
        return {}, {}
    step, unit, start = (*time_axis, 0.0)[:3]
    keys = {"finterval": float(step), "tunit": _IMAGEJ_TIME_UNITS.get(unit, unit)} if unit else {}
    properties = {} if unit else {"time_step": _property_text(float(step))}
    if start:
        properties["time_origin"] = _property_text(float(start))
    return keys, properties


def _imagej_channels(channels, sizes: dict, path) -> dict:
    """ImageJ's display of a hyperstack's channels (``sizes``: the length of each of its TZCYX axes):
    ``composite`` mode for several, and from ``channels`` (:func:`write_hyperstack`) the planes'
    ``Labels`` (channel fastest, ImageJ's order), the ``LUTs`` and the display ``Ranges``. One channel
    with an entry (a time series whose input named or coloured its channel) is written in ImageJ's
    ``color`` mode, one channel shown through its LUT: tifffile's default, ``grayscale``, shows it grey."""
    count = sizes.get("C", 1)
    md: dict = {"mode": "composite"} if count > 1 else {}
    if not channels:
        return md
    if len(channels) != count:
        raise InputError(f"cannot write {path}: {len(channels)} channel entries for an image of {count} channels: "
                         "give one per channel")
    if count == 1:
        md["mode"] = "color"
    labels = [str(c.get("label") or "") for c in channels]
    if any(labels):
        md["Labels"] = labels * (sizes.get("T", 1) * sizes.get("Z", 1))
    md["LUTs"] = [_imagej_lut(c.get("color")) for c in channels]
    windows = [c.get("window") for c in channels]
    if all(isinstance(w, dict) and "start" in w and "end" in w for w in windows):
        md["Ranges"] = [float(w[k]) for w in windows for k in ("start", "end")]
    return md


def _imagej_lut(color) -> np.ndarray:
    """ImageJ's ``(3, 256)`` uint8 lookup table from black to ``color`` (six hex digits RRGGBB, as
    OME-Zarr's ``omero`` writes it; anything else is white, as :func:`~deconv3d.omezarr.write_omero`
    makes it: :func:`~deconv3d._tiff_channels.omero_color`)."""
    color = omero_color(color)
    rgb = np.array([int(color[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64)
    return np.rint(np.outer(rgb, np.arange(256)) / 255).astype(np.uint8)


def _hyperstack_axes(axes, shape, path) -> tuple[str, str]:
    """``(axes, spatial axes)`` of a hyperstack to write, refused unless T and/or C lead ZYX, YX, ZX or ZY."""
    letters = str(axes).upper()
    spatial = letters.lstrip("T").lstrip("C")
    if letters[:len(letters) - len(spatial)] not in ("T", "C", "TC") or spatial not in ("ZYX", "YX", "ZX", "ZY") \
            or len(letters) != len(shape):
        raise InputError(f"cannot write {path} as a hyperstack with axes {axes!r} for a {len(shape)}D image: give "
                         "T and/or C, then ZYX or YX (e.g. 'TCZYX')")
    return letters, spatial


def _hyperstack_pages(array, axes: str, slab_bytes: int, path):
    """The planes of ``array`` (``axes`` as :func:`_hyperstack_axes` allows) as float32 in ImageJ's
    order: time points, then z-planes, then channels; read a slab of z-planes of every channel at a
    time, or, where one z-plane of every channel is more than ``slab_bytes``, as many channels of one
    z-plane as ``slab_bytes`` holds (one page at least): else many channels of large planes read
    several times the budget at once."""
    times = array.shape[0] if axes[0] == "T" else 1
    for t in range(times):
        volume = _TimePoint(array, t if axes[0] == "T" else None, "C" in axes, axes)
        page_bytes = 4 * int(np.prod(volume.plane_shape))
        if volume.channels * page_bytes > slab_bytes:
            for z in range(volume.depth):
                def read(start, stop, z=z):
                    return volume.slab(z, z + 1, slice(start, stop))[:, 0]

                for pages in _slabs(read, volume.channels, page_bytes, slab_bytes, path):  # (channel, y, x)
                    yield from pages
                    del pages  # (see _slabs)
            continue
        for slab in _slabs(volume.slab, volume.depth, volume.channels * page_bytes, slab_bytes, path):  # (c, z, y, x)
            for z in range(slab.shape[1]):
                yield from slab[:, z]
            del slab  # (see _slabs)


class _TimePoint:
    """One time point of a hyperstack's zarr array, as ``(channel, z, y, x)`` slabs of float32
    (a 2D image as a depth of one; a ZX or ZY section with its y or x axis of one)."""

    def __init__(self, array, t, has_channels: bool, axes: str):
        self.array, self.lead = array, (() if t is None else (t,))
        self.has_channels, self.spatial = has_channels, axes.lstrip("T").lstrip("C")
        shape = array.shape[len(self.lead) + has_channels:]
        self.channels = array.shape[len(self.lead)] if has_channels else 1
        self.depth = shape[0] if self.spatial[0] == "Z" else 1
        self.plane_shape = shape[1:] if self.spatial[0] == "Z" else shape

    def slab(self, start: int, stop: int, channels: slice = slice(None)) -> np.ndarray:
        """z-planes ``start..stop`` of the ``channels`` (all by default; a 2D image's one plane whatever the range)."""
        key = self.lead + ((channels,) if self.has_channels else ()) + \
            ((slice(start, stop),) if self.spatial[0] == "Z" else ())
        slab = np.asarray(self.array[key], dtype=np.float32)
        slab = slab if self.has_channels else slab[None]
        slab = slab if self.spatial[0] == "Z" else slab[:, None]
        if self.spatial in ("ZX", "ZY"):
            slab = np.expand_dims(slab, 2 if self.spatial == "ZX" else 3)
        return slab


def _refuse_non_finite(data: np.ndarray, path) -> None:
    """Refuse NaN or Inf (float64 data beyond float32's range become Inf): read_image refuses such
    a file, so it was written only to be unreadable. Checked plane by plane (no volume-sized mask)."""
    for plane in data.reshape((-1,) + data.shape[-2:]) if data.ndim >= 2 else [data]:
        if not np.isfinite(plane).all():
            raise InputError(f"cannot write {path}: the image holds NaN or Inf values (or values beyond float32's "
                             "range): replace them, e.g. with numpy.nan_to_num, or rescale the image")


def _is_lazy(data) -> bool:
    """A zarr or dask array (sliced on demand), as opposed to something to load whole."""
    return isinstance(data, ZarrPlanes) or type(data).__module__.split(".")[0] in ("zarr", "dask")


class ZarrPlanes:
    """The 3D image ``array[lead]`` of a zarr array, read only when sliced (``[a:b]``: planes a to b).

    For :func:`write_tiff` to stream an image that sits behind singleton leading axes (an
    OME-Zarr's t and c) straight from zarr: each slab decodes every chunk it touches once and
    keeps a copy of the planes only. Through dask, every task's slice stayed a view of its
    whole decoded chunk until the slab was joined (150 MB over a 67 MB slab, measured).
    """

    def __init__(self, array, lead=()):
        self.array, self.lead = array, tuple(lead)
        self.shape = tuple(array.shape[len(self.lead):])
        self.ndim, self.dtype = len(self.shape), array.dtype

    def __getitem__(self, key):
        return self.array[self.lead + (key,)]


def _pages(volume, slab_bytes: int = _SLAB_BYTES, path="the TIFF"):
    """The z-planes of a lazy 3D array as float32, read in slabs of at most ``slab_bytes`` (one plane at least)."""
    def read(start, stop):
        return np.asarray(volume[start:stop], dtype=np.float32)

    for slab in _slabs(read, volume.shape[0], max(1, int(np.prod(volume.shape[1:])) * 4), slab_bytes, path):
        yield from slab
        del slab  # (see _slabs)


def _slabs(read, depth: int, plane_bytes: int, slab_bytes: int, path):
    """``read(start, stop)``'s float32 slabs of planes ``0..depth``, as many planes of ``plane_bytes``
    at a time as ``slab_bytes`` holds (one at least), each refused where it holds NaN or Inf (the
    writer removes its temporary file). The caller deletes each slab once written, as this does:
    else it is held while the next slab is read, two slabs at a time, twice the budget."""
    step = max(1, min(depth, int(slab_bytes) // plane_bytes))
    for start in range(0, depth, step):
        with np.errstate(over="ignore", invalid="ignore"):
            slab = read(start, start + step)
        _refuse_non_finite(slab, path)
        yield slab
        del slab


def _as_stack(data, voxel_size, axes, path):
    """``(data, voxel_size)`` for an ImageJ file: a ZX or ZY section (``axes``) as a stack with a
    y or x axis of one (whose size, never read back, repeats the other lateral one); ZYX and YX as
    they are. Other letters, or as many as not ``data``'s axes, are refused."""
    if axes is None:
        return data, voxel_size
    letters = str(axes).upper() if isinstance(axes, str) else None
    if letters not in ("ZYX", "YX", "ZX", "ZY") or len(letters) != len(data.shape):
        raise InputError(f"cannot write {path} with axes {axes!r} for a {len(data.shape)}D image: give 'ZYX' or 'YX' "
                         "(or 'ZX' or 'ZY' for a 2D section through z)")
    if letters in ("ZYX", "YX"):
        return data, voxel_size
    voxel = checked_voxel_size(voxel_size, 2)
    data = np.expand_dims(data, 1 if letters == "ZX" else 2)
    return data, None if voxel is None else (voxel[0], voxel[1], voxel[1])


def _imagej_kwargs(data: np.ndarray, voxel_size, metadata) -> dict:
    """Keyword arguments of ``tifffile.imwrite`` for an ImageJ hyperstack."""
    if data.ndim not in (2, 3):
        raise InputError(f"cannot write a {data.ndim}D array as an image: a 2D or 3D array is needed")
    md: dict = {"axes": "ZYX"[-data.ndim:]}
    kwargs: dict = {"metadata": md}
    if voxel_size is not None:
        lateral_only = np.ndim(voxel_size) == 1 and len(voxel_size) == 2  # (y, x) of a stack: no z spacing
        voxel = checked_voxel_size(voxel_size, 2 if lateral_only else data.ndim)
        kwargs["resolution"] = (1.0 / voxel[-1], 1.0 / voxel[-2])
        md["unit"] = "um"
        if len(voxel) == 3:
            md["spacing"] = voxel[0]
    if metadata:
        md["Properties"] = {str(k): _property_text(v) for k, v in metadata.items() if v is not None}  # None: unknown
    return kwargs


def _property_text(value) -> str:
    """An ImageJ property's text: anything but a string (numbers, lists, the parameter dicts of the
    provenance) as JSON, which other tools read back (``json.loads``), and a string as it is, which
    ``json.loads`` refuses, so a reader keeps the text where that fails; but a string that would read
    as JSON is stored JSON-quoted: a fingerprint such as ``0e57377405965361`` read back as the number
    0.0 (``1234567890123456``, ``true`` and ``null`` as others). Strings stay as they were for every
    other value, so readers that take a text property of an earlier output as it is read these too."""
    import json

    if not isinstance(value, str):
        return json.dumps(value, default=str)
    try:
        json.loads(value)
    except ValueError:
        return value
    return json.dumps(value)
