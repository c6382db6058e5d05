"""Writing TIFF for :mod:`deconv3d.io`: float32 ImageJ hyperstacks that carry their voxel size (an
OME-TIFF where the name ends in ``.ome.tif``/``.ome.tiff``), written atomically, and streamed plane by plane from zarr or dask arrays larger than memory. The
hyperstacks of several channels and/or time points are written by :mod:`deconv3d._tiff_hyperstack`
over this module's write path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from deconv3d._arrays import as_numpy
from deconv3d._paths import (_check_writable_target, _one_line, create_temporary, out_of_space, publishing,
                             temporary_name)
from deconv3d._voxel import checked_voxel_size
from deconv3d.errors import InputError

__all__ = ["write_tiff", "ZarrPlanes"]


def write_tiff(path, data, voxel_size=None, metadata=None, *, slab_bytes: int | None = None,
               axes: str | None = None) -> None:
    """Write a float32 ImageJ-compatible TIFF (or OME-TIFF) carrying the voxel size, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.tif``/``.tiff`` path; an existing file is replaced. A name ending in ``.ome.tif``
        or ``.ome.tiff`` (any case) gives an OME-TIFF instead of an ImageJ TIFF: OME-XML with the axes,
        ``PhysicalSizeX/Y/Z`` in µm for the voxel size, and ``metadata`` as one ``MapAnnotation``
        (the same text per key); tifffile writes it as a BigTIFF beyond 4 GB.
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
    shape, kwargs = _file_kwargs(path, data, voxel_size, metadata)
    if streamed:  # page by page from slabs of planes: never the whole volume in memory
        _write_atomically(path, lambda fh: tifffile.imwrite(
            fh, data=_pages(data, slab_bytes or _SLAB_BYTES, path), shape=shape, dtype=np.float32, **kwargs))
    else:
        _write_atomically(path, lambda fh: tifffile.imwrite(fh, data.reshape(shape), **kwargs))


def _file_kwargs(path: Path, data, voxel_size, metadata) -> tuple[tuple, dict]:
    """``(shape, keyword arguments of tifffile.imwrite)`` for ``data``: an OME-TIFF where ``path`` is named
    as one (:func:`is_ome_tiff_name`; tifffile makes it a BigTIFF beyond 4 GB), else an ImageJ hyperstack."""
    if is_ome_tiff_name(path):  # (OME-XML keeps a section's x axis of one: no sample axis is needed)
        return tuple(data.shape), _ome_kwargs(data, voxel_size, metadata)
    kwargs = _imagej_kwargs(data, voxel_size, metadata)
    shape = _with_samples(tuple(data.shape), kwargs["metadata"])
    return shape, {**kwargs, "imagej": True, **_contiguous_if_large(shape)}


def is_ome_tiff_name(path) -> bool:
    """Whether ``path`` is named as an OME-TIFF (``.ome.tif`` or ``.ome.tiff``, in any case), the
    suffix by which Bio-Formats and napari's readers take a TIFF's OME-XML."""
    return Path(path).name.lower().endswith((".ome.tif", ".ome.tiff"))


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
    md: dict = {"axes": "ZYX"[-data.ndim:]}
    kwargs: dict = {"metadata": md}
    if (voxel := _written_voxel(data, voxel_size)) is not None:
        kwargs["resolution"] = (1.0 / voxel[-1], 1.0 / voxel[-2])
        md["unit"] = "um"
        if len(voxel) == 3:
            md["spacing"] = voxel[0]
    if metadata:
        md["Properties"] = {str(k): _property_text(v) for k, v in metadata.items() if v is not None}  # None: unknown
    return kwargs


def _written_voxel(data: np.ndarray, voxel_size) -> tuple | None:
    """The checked voxel size to record for 2D or 3D ``data`` (other dimensions refused): one value per
    axis, or ``(y, x)`` only for a stack whose planes are not z steps; None for none."""
    if data.ndim not in (2, 3):
        raise InputError(f"cannot write a {data.ndim}D array as an image: a 2D or 3D array is needed")
    if voxel_size is None:
        return None
    lateral_only = np.ndim(voxel_size) == 1 and len(voxel_size) == 2  # (y, x) of a stack: no z spacing
    return checked_voxel_size(voxel_size, 2 if lateral_only else data.ndim)


def _ome_kwargs(data: np.ndarray, voxel_size, metadata) -> dict:
    """Keyword arguments of ``tifffile.imwrite`` for an OME-TIFF (``ome=True``): the axes, ``PhysicalSizeZ/Y/X`` in µm
    (no z size for a stack given the ``(y, x)`` pixel size only, as :func:`_imagej_kwargs` writes no
    ``spacing``), and the ``metadata`` as one OME ``MapAnnotation`` holding the ImageJ properties' text;
    grey planes (``photometric='minisblack'``): without it tifffile took a stack whose x axis is 3 or 4 long
    for RGB(A) samples, and refused its axes ("axes do not match stored shape")."""
    md: dict = {"axes": "ZYX"[-data.ndim:]}
    if (voxel := _written_voxel(data, voxel_size)) is not None:
        for axis, size in zip("ZYX"[-len(voxel):], voxel):
            md[f"PhysicalSize{axis}"], md[f"PhysicalSize{axis}Unit"] = float(size), "\u00b5m"
    if metadata:
        md["MapAnnotation"] = {str(k): _property_text(v) for k, v in metadata.items() if v is not None}
    return {"metadata": md, "photometric": "minisblack", "ome": True}


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
