"""The zarr group of an OME-Zarr image: opened read-only (:func:`_image_group`: the folder's own, or the one
series of a bioformats2raw root), with the refusals of a folder that holds none (a bare array, no or broken
metadata), and the series of a bioformats2raw root (:func:`bioformats2raw_series`); for
:mod:`deconv3d.omezarr.reading`, which re-exports the public names."""

from __future__ import annotations

from pathlib import Path

from deconv3d._paths import _one_line
from deconv3d.errors import InputError, naming_file, naming_image


#: Files that make a folder a zarr group: zarr v3, and v2 (OME-Zarr v0.4, bioformats2raw's output).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")


def is_zarr_folder(path) -> bool:
    """Whether ``path`` is a folder holding a zarr group's or array's metadata (:data:`_ZARR_MARKERS`), whatever
    its name."""
    path = Path(path)
    return path.is_dir() and any((path / f).exists() for f in _ZARR_MARKERS)


def _image_group(path: Path):
    """The zarr group of the image at ``path``: ``path`` itself, or for a bioformats2raw root
    (``bioformats2raw.layout``, no multiscales) its one series ``path/0``. Returns ``(group, path)``."""
    group = _open_group(path)
    series = _series_of(path, dict(group.attrs))
    if len(series) > 1:  # OME-NGFF: readers SHOULD tell that there is more than one image
        raise naming_image(lambda image: f"{image} holds {len(series)} images (bioformats2raw series "
                           f"{', '.join(series[:5])}{', ...' if len(series) > 5 else ''}): give one, e.g. "
                           f"{path / series[0]}", path)
    if series:
        return _open_group(path / series[0]), path / series[0]
    return group, path


def bioformats2raw_series(path) -> list[str]:
    """The series of the bioformats2raw root at ``path`` (a zarr group with ``bioformats2raw.layout`` and no
    ``multiscales`` of its own): the names of its folders that are numbers, in order (``["0", "1"]``); ``[]`` where
    ``path`` is no such root or no zarr group. A batch takes each series of a root holding several as an input."""
    path = Path(path)
    if not path.is_dir():
        return []
    try:
        return _series_of(path, dict(_open_group(path).attrs))
    except InputError:
        return []


def _series_of(path: Path, attrs: dict) -> list[str]:
    """:func:`bioformats2raw_series` of the group at ``path`` whose attributes are ``attrs``."""
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # (another "ome": _multiscale's error)
    if ome.get("multiscales") or not ("bioformats2raw.layout" in ome or "bioformats2raw.layout" in attrs):
        return []
    return sorted((p.name for p in path.iterdir() if p.name.isdecimal() and p.is_dir()), key=int)


def _open_group(path: Path):
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:
        if _is_bare_array(path):  # zarr's own words were "an array already exists", read as a write clash
            raise naming_image(lambda image: f"{image} is a bare zarr array, without the OME-Zarr metadata that "
                               "gives its axes and voxel size: save it as an OME-Zarr image "
                               "(deconv3d.omezarr.write_ome_zarr) or as TIFF", path) from exc
        problem = _zarr_problem(exc, path)

        def say(image):
            return (f"cannot open {image} as OME-Zarr ({problem}): give an OME-Zarr image group, e.g. one written "
                    "by deconv3d or bioformats2raw")
        raise naming_file(say, path) from exc  # (said in a batch's line naming the file)


def _zarr_problem(exc: Exception, folder: Path) -> str:
    """What zarr's ``exc`` says is wrong with the zarr ``folder``, without the folder's name (the line names it):
    no metadata file (a v2 group's ``.zattrs`` without its ``.zgroup`` is none: zarr's words named the folder
    again), metadata that is not JSON, else zarr's own words."""
    import json

    if isinstance(exc, json.JSONDecodeError):
        return f"its metadata is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if not any((folder / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray")):
        return "it holds no zarr.json or .zgroup"
    return _one_line(exc)


def _is_bare_array(path: Path) -> bool:
    import zarr

    try:
        zarr.open_array(str(path), mode="r")
    except Exception:  # noqa: BLE001 - anything else is not one
        return False
    return True
