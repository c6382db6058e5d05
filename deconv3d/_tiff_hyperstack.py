"""Writing ImageJ hyperstacks for the pipeline: a zarr array of several channels and/or time points as one
float32 TIFF with its time step, channel names, colours and display ranges (an OME-TIFF, without the display
ranges, where the name ends in ``.ome.tif``/``.ome.tiff``), read in slabs and written atomically by
:mod:`deconv3d._tiff_write`'s write path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from deconv3d._paths import _check_writable_target
from deconv3d._tiff_channels import omero_color
from deconv3d._tiff_metadata import _OME_TIME_UNITS
from deconv3d._tiff_write import (_SLAB_BYTES, _as_stack, _contiguous_if_large, _imagej_kwargs, _ome_kwargs,
                                  _property_text, _slabs, _with_samples, _write_atomically, is_ome_tiff_name)
from deconv3d.errors import InputError

__all__ = ["write_hyperstack"]


#: ImageJ's ``tunit`` for each OME-Zarr time unit (those :mod:`deconv3d._tiff_metadata` reads back).
_IMAGEJ_TIME_UNITS = {"second": "sec", "minute": "min", "hour": "hr", "day": "day", "millisecond": "ms",
                      "microsecond": "us", "nanosecond": "ns"}


def write_hyperstack(path, array, axes: str, voxel_size=None, metadata=None, *, time_axis=None, channels=None,
                     slab_bytes: int | None = None) -> None:
    """Write a zarr array of several channels and/or time points as a float32 ImageJ hyperstack (or
    OME-TIFF), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.tif``/``.tiff`` path; an existing file is replaced. A name ending in ``.ome.tif`` or
        ``.ome.tiff`` (any case; :func:`~deconv3d._tiff_write.is_ome_tiff_name`) gives an OME-TIFF instead,
        the planes in the same order (OME's DimensionOrder XYCZT), as :func:`_ome_hyperstack_kwargs`
        describes its OME-XML.
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
    sizes = dict(zip(letters, array.shape))
    sizes.update({"Y": sizes.get("Y", 1), "X": sizes.get("X", 1)})  # (a section's lateral axis of one)
    order = "".join(a for a in "TZCYX" if a in sizes)
    plane = np.empty((1,) * (3 if "Z" in spatial else 2))  # (the spatial dimensions, for the voxel size)
    time_axis, channels = time_axis if "T" in letters else None, _checked_channels(channels, sizes, path)
    if is_ome_tiff_name(path):
        shape, kwargs = tuple(sizes[a] for a in order), _ome_hyperstack_kwargs(
            plane, voxel_size, metadata, order, time_axis, channels)
    else:
        shape, kwargs = _imagej_hyperstack_kwargs(plane, voxel_size, metadata, order, sizes, time_axis, channels)
    pages = _hyperstack_pages(array, letters, slab_bytes or _SLAB_BYTES, path)
    _write_atomically(path, lambda fh: tifffile.imwrite(fh, data=pages, shape=shape, dtype=np.float32, **kwargs))


def _imagej_hyperstack_kwargs(plane, voxel_size, metadata, order: str, sizes: dict, time_axis,
                              channels) -> tuple[tuple, dict]:
    """``(shape, keyword arguments of tifffile.imwrite)`` of an ImageJ hyperstack with axes ``order``
    (TZCYX, the lengths ``sizes``), the time step (:func:`_imagej_time_axis`) and the ``channels``
    (:func:`_imagej_channels`)."""
    kwargs = _imagej_kwargs(plane, voxel_size, metadata)
    kwargs["metadata"]["axes"] = order
    time_keys, time_properties = _imagej_time_axis(time_axis)
    kwargs["metadata"].update(time_keys)
    if time_properties:
        kwargs["metadata"].setdefault("Properties", {}).update(
            {key: _property_text(value) for key, value in time_properties.items()})
    kwargs["metadata"].update(_imagej_channels(channels, sizes))
    shape = _with_samples(tuple(sizes[a] for a in order), kwargs["metadata"])
    return shape, {**kwargs, "imagej": True, **_contiguous_if_large(shape)}


#: OME-XML's ``TimeIncrementUnit`` symbol (UnitsTime) of each OME-Zarr time unit that has one.
_OME_TIME_SYMBOLS = {name: symbol for symbol, name in _OME_TIME_UNITS.items()}


def _ome_hyperstack_kwargs(plane, voxel_size, metadata, order: str, time_axis, channels) -> dict:
    """Keyword arguments of ``tifffile.imwrite`` for an OME-TIFF hyperstack with axes ``order`` (TZCYX:
    OME's DimensionOrder XYCZT, the planes in the order the ImageJ path writes them): as
    :func:`~deconv3d._tiff_write._ome_kwargs` writes a 2D or 3D image, plus the time step as ``TimeIncrement``
    and ``TimeIncrementUnit`` where its unit has an OME symbol (else the step as the property ``time_step``,
    and the unit, if any, as ``time_unit``), a start other than 0 as the property ``time_origin``, and each
    channel's ``Name`` (its label) and ``Color`` (its colour, white where it has none, as the ImageJ path's
    lookup tables) where ``channels`` are given. OME-XML has no channel display range: windows are not kept."""
    step, unit, start = (*time_axis, 0.0)[:3] if time_axis is not None else (None, None, 0.0)
    symbol = _OME_TIME_SYMBOLS.get(unit)
    extra = {} if step is None or symbol else {"time_step": float(step), "time_unit": unit or None}
    if start:
        extra["time_origin"] = float(start)
    kwargs = _ome_kwargs(plane, voxel_size, {**(metadata or {}), **extra})
    md = kwargs["metadata"]
    md["axes"] = order
    if symbol:
        md["TimeIncrement"], md["TimeIncrementUnit"] = float(step), symbol
    if channels:
        md["Channel"] = [{**({"Name": str(c["label"])} if c.get("label") else {}),
                          "Color": _ome_color(c.get("color"))} for c in channels]
    return kwargs


def _ome_color(color) -> int:
    """OME-XML's ``Color`` of a channel colour (six hex digits RRGGBB; white otherwise, as
    :func:`~deconv3d._tiff_channels.omero_color` makes it): RGBA, opaque, as a signed 32-bit integer."""
    rgba = int(omero_color(color), 16) << 8 | 0xFF
    return rgba - 2**32 if rgba >= 2**31 else rgba


def _imagej_time_axis(time_axis) -> tuple[dict, dict]:
    """``(ImageJ keys, ImageJ properties)`` for a T axis's ``(step, unit[, start])``: ``finterval`` and
    ``tunit``, a unit ImageJ has no short name for by its OME-Zarr name (Fiji shows any text); a step
    without a unit, which ImageJ would read as seconds (a step of 2 ps became 2 s), as the property
    ``time_step`` instead; a start other than 0 as the property ``time_origin``. Nothing without a time axis."""
    if time_axis is None:
        return {}, {}
    step, unit, start = (*time_axis, 0.0)[:3]
    keys = {"finterval": float(step), "tunit": _IMAGEJ_TIME_UNITS.get(unit, unit)} if unit else {}
    properties = {} if unit else {"time_step": float(step)}
    if start:
        properties["time_origin"] = float(start)
    return keys, properties


def _checked_channels(channels, sizes: dict, path):
    """``channels`` (:func:`write_hyperstack`), refused unless one entry per channel (``sizes``: the
    length of each of the hyperstack's axes); None for none."""
    count = sizes.get("C", 1)
    if channels and len(channels) != count:
        raise InputError(f"cannot write {path}: {len(channels)} channel entries for an image of {count} channels: "
                         "give one per channel")
    return channels or None


def _imagej_channels(channels, sizes: dict) -> dict:
    """ImageJ's display of a hyperstack's channels (``sizes``: the length of each of its TZCYX axes):
    ``composite`` mode for several, and from ``channels`` (:func:`write_hyperstack`) the planes'
    ``Labels`` (channel fastest, ImageJ's order), the ``LUTs`` and the display ``Ranges``. One channel
    with an entry (a time series whose input named or coloured its channel) is written in ImageJ's
    ``color`` mode, one channel shown through its LUT: tifffile's default, ``grayscale``, shows it grey."""
    count = sizes.get("C", 1)
    md: dict = {"mode": "composite"} if count > 1 else {}
    if not channels:
        return md
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

