"""Parsing of an OME-Zarr (OME-NGFF v0.1-v0.5) image's metadata: its first multiscale image with
its resolution levels checked (:func:`_multiscale`), its axes and units (:func:`_axes_of`), each
level's scale and translation (:func:`_level_transform`, :func:`_has_scale`), the spatial voxel size
in micrometres they give (:func:`_zarr_voxel`) or why its units cannot be used (:func:`_unit_problem`),
and the ``omero`` channels' labels and colours (:func:`_omero_channels`); metadata of another shape
is refused in one line naming its file and key (:func:`_malformed`). Shared by reading and writing
(see :mod:`deconv3d.omezarr`); no pixels are read here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deconv3d._tiff_voxel_sizes import _checked_voxel, _size_in_um, _unit_factor
from deconv3d.errors import InputError, naming_image, warning_naming_image

_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


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
        field = _first_field(ome, path)
        if field is not None:  # (a plate's or a well's: bioformats2raw writes plates so)
            raise naming_image(lambda image: f"{image} is an OME-Zarr high-content screening "
                               f"{'plate' if 'plate' in ome else 'well'}, not an image: give one of its fields, e.g. "
                               f"{Path(path, field)}", path)
        raise naming_image(lambda image: f"{image} is not an OME-Zarr image (no 'multiscales' metadata): give an image "
                           "group", path)
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


def _first_field(ome: dict, path: Path) -> str | None:
    """The path of the first field (image) of an OME-Zarr HCS ``plate`` (its first well's first image, as the
    well's metadata names it, else ``0``) or ``well`` (its first image) at ``path`` whose attributes are ``ome``,
    or None where they are neither."""
    plate = ome.get("plate")
    wells = plate.get("wells") if isinstance(plate, dict) else None
    if isinstance(wells, list) and wells and isinstance(wells[0], dict) and isinstance(wells[0].get("path"), str):
        well = wells[0]["path"].strip("/")
        return f"{well}/{_well_image(_group_attributes(Path(path, well))) or '0'}"
    return _well_image(ome)


def _well_image(ome: dict) -> str | None:
    """The path of the first image of the OME-Zarr HCS well whose attributes are ``ome``, or None."""
    well = ome.get("well")
    images = well.get("images") if isinstance(well, dict) else None
    if isinstance(images, list) and images and isinstance(images[0], dict) and isinstance(images[0].get("path"), str):
        return images[0]["path"].strip("/")
    return None


def _group_attributes(folder: Path) -> dict:
    """The OME attributes of the zarr group in ``folder`` (v0.5's ``ome``, v0.4's top level), read through zarr
    as the image's own are (:func:`deconv3d.omezarr.zarr_group._image_group`), or {} where they cannot be read."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(folder), mode="r").attrs)
    except Exception:  # noqa: BLE001 - only the hint's field name is lost: the refusal stands
        return {}
    ome = attrs.get("ome", attrs)
    return ome if isinstance(ome, dict) else {}


def _multiscales_key(attrs: dict) -> str:
    """The key of an image's multiscales, for messages: ``ome.multiscales`` (0.5), ``multiscales`` (0.4)."""
    return f"{'ome.' if 'ome' in attrs else ''}multiscales"


def _malformed(path: Path, key: str, value, wanted: str) -> InputError:
    """The one-line error for the entry ``key`` (``ome.multiscales[0].axes``) of the OME-Zarr metadata
    of the group at ``path``, which holds ``value`` (None: nothing) where a reader needs ``wanted``. Its
    ``without_file`` names the metadata file as the image's (``the image's zarr.json: ...``)."""
    name = next((name for name in ("zarr.json", ".zattrs") if (path / name).is_file()), None)
    text = json.dumps(value, ensure_ascii=False, default=str)  # as the file writes it: an editor finds it
    found = "missing, where it should be" if value is None else f"{text if len(text) <= 60 else text[:57] + '...'}, not"

    def say(file):
        return (f"{file}: {key} is {found} {wanted}: fix that entry of the image's OME-Zarr metadata, or export the "
                "image again")
    return InputError(say(path / name if name else path),
                      without_file=say(f"the image's {name}" if name else "the image"))


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
        raise naming_image(lambda image: f"{image}: unsupported OME-Zarr axes {names}: deconv3d reads t, c, z, y, x",
                           path)
    for a, n in zip(axes, names):
        kind = a.get("type") if isinstance(a, dict) else None
        if kind is not None and kind != _AXIS_TYPES[n]:
            raise naming_image(lambda image: f"{image}: OME-Zarr axis {n!r} has type {kind!r}, not "
                               f"{_AXIS_TYPES[n]!r}: fix the image's axes metadata", path)
    letters = "".join(names)
    if not _in_order(letters, "tczyx"):
        raise naming_image(lambda image: f"{image}: OME-Zarr axes {''.join(names)} are not in t, c, z, y, x order: "
                           "deconv3d reads that order (spatial axes z, y, x); reorder the image's axes", path)
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
    at = f"level {ms['datasets'][level].get('path', level)!r}"
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
                raise naming_image(lambda image: f"{image}: {at} keeps its {kind} outside the metadata "
                                   f"({tr['path']!r}), which deconv3d does not read: write the {kind} values into the "
                                   "image's metadata", path)
            try:  # (a list: the string "111" is no scale of 1, and true no number)
                values = [float(v) for v in tr[kind] if not isinstance(v, bool)] if isinstance(tr[kind], list) else []
            except (KeyError, TypeError, ValueError):
                values = []
            if len(values) != ndim or not all(np.isfinite(values)) or (kind == "scale" and min(values) <= 0):
                raise naming_image(lambda image: f"{image}: {at} has {kind} {tr.get(kind)!r}, not {ndim} "
                                   f"{'positive numbers' if kind == 'scale' else 'numbers'} (one per axis): fix the "
                                   "image's coordinateTransformations", path)
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


def _omero_channels(attrs: dict, count: int, path=None) -> tuple | None:
    """The label, colour and visibility of each of the ``count`` channels in an OME-Zarr's
    ``omero`` metadata (0.5 under ``ome``, 0.4 at the top), or None where it does not give one
    entry per channel. The display windows are left out: they describe the input's intensities.
    Entries beyond the ``count`` channels are left out, with a warning naming the image ``path`` (none where
    ``path`` is None)."""
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    omero = ome.get("omero", attrs.get("omero"))
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if isinstance(channels, list) and len(channels) > count:
        extra = f"the {len(channels) - count} extra entr{'y is' if len(channels) == count + 1 else 'ies are'} ignored"
        if path is not None:
            warning_naming_image(lambda image: f"deconv3d: warning: {image}'s omero metadata lists {len(channels)} "
                                 f"channels but the image has {count}: {extra}", path)
        channels = channels[:count]
    if not isinstance(channels, list) or len(channels) != count or not all(isinstance(c, dict) for c in channels):
        return None
    kept = tuple({k: c[k] for k, kind in (("label", str), ("color", str), ("active", bool))
                  if isinstance(c.get(k), kind)} for c in channels)
    return kept if any(kept) else None


def _unit_problem(axes: str, units, path) -> str | None:
    """Why the spatial units cannot be read (one that cannot be converted to µm), or None: the TIFF
    reader's rule and message (:func:`deconv3d._tiff_voxel_sizes._checked_voxel`)."""
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


def _time_axis(axes: str, scale, units, shift):
    """The time step, its unit and (where not 0) its start, kept for the output, which would otherwise say 1 with
    no unit (and start at 0); None where the image has no T axis or says nothing of it."""
    if "T" in axes:
        t = axes.index("T")
        if scale[t] != 1 or units[t] or shift[t]:
            return (float(scale[t]), units[t]) + ((float(shift[t]),) if shift[t] else ())
    return None


def _time_axis_and_problem(axes: str, scale, units, shift, path) -> dict:
    """:func:`_time_axis` and the warning about its unit, as LazyImage's ``time_axis`` and ``time_problem`` (and
    ``time_problem_without_file``, that warning said of "the image"): a unit OME-Zarr does not name (``frame``)
    was passed on to the output, whose readers then stumbled on it. A usual spelling (``sec``, ``s``) takes its
    OME-Zarr name; another is left out, the step kept, and warned about by the run that writes the axis, as for
    a TIFF (:func:`~deconv3d._tiff_metadata.time_axis_and_problem`)."""
    from deconv3d._tiff_metadata import _OME_TIME_UNITS, named_time_unit

    axis = _time_axis(axes, scale, units, shift)
    if axis is None or not axis[1]:
        return {"time_axis": axis, "time_problem": None}
    name, problem = named_time_unit(axis[1], axis[0], {n: n for n in _OME_TIME_UNITS.values()},
                                    "second, minute, hour, millisecond, microsecond or nanosecond")
    return {"time_axis": (axis[0], name, *axis[2:]), "time_problem": problem and problem(path),
            "time_problem_without_file": problem and problem("the image")}
