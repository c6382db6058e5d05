"""Name-length limits: an output name, or a whole output path, that would pass the file system's
limit once written under its temporary names (:func:`check_name_length`), with the bytes those names
add (:func:`_tag_bytes`) and the limits where the output would be (:func:`_limit_at`); refused before
the computation, not with "File name too long" after it."""

from __future__ import annotations

import os
from pathlib import Path

from deconv3d._paths.locations import existing_ancestor
from deconv3d._paths.names import TIFF_SUFFIXES
from deconv3d._paths.temporaries import _TMP_SUFFIX, host_tag
from deconv3d.errors import InputError


def check_name_length(*paths: Path, renamed: Path | None = None, scratch: bool = False) -> None:
    """Refuse an output name too long to be written under its temporary names.

    :func:`~deconv3d._paths.temporaries.temporary_name` adds the writer's tag (about 40 bytes) to
    the name, twice for a TIFF built through a ``scratch`` OME-Zarr (a chunked run's, written under
    a temporary name of that scratch's own temporary name): a legal name of 184 to 255 bytes failed
    with "File name too long" after the whole computation. A TIFF written whole (an in-memory run, a
    PSF) has one temporary name only: counted twice, a name of about 190 to 215 bytes that it writes
    was refused.
    ``renamed``: the file whose name those of ``paths`` derive from (a batch's input, for its output
    and its record), named in the message as the one to shorten, to the length that all of them
    allow: the strictest's (a batch's record, 4 bytes longer than its OME-Zarr output, refused
    the input again once it was shortened to the length the output's message gave).
    A path that its temporary names would make too long as a whole is refused too (:func:`_refuse_long_paths`;
    ``scratch``: a TIFF among ``paths`` is built through a scratch OME-Zarr, as a chunked run builds it).
    """
    rooms = [room for room in (_name_room(path, scratch) for path in paths) if room is not None]
    if renamed is None:
        for name, size, extra, limit in rooms:
            if size + extra > limit:
                raise InputError(f"output name {_short(name)} is too long ({size} bytes): it is written under a "
                                 f"temporary name {extra} bytes longer, past the limit of {limit} here: shorten it "
                                 f"to {limit - extra} bytes or fewer")
        _refuse_long_paths(paths, scratch)
        return
    own = len(os.fsencode(Path(renamed).name))
    # (a derived name is the input's with bytes added: the input may have as many as the strictest name allows)
    allowed, name, extra, limit = min((limit - extra - (size - own), name, extra, limit)
                                      for name, size, extra, limit in rooms) if rooms else (own, "", 0, 0)
    if allowed < own:
        raise InputError(f"input name {_short(Path(renamed).name)} is too long ({own} bytes): the file {_short(name)} "
                         f"derived from it is written under a temporary name {extra} bytes longer, past the limit of "
                         f"{limit} here: rename the input to {allowed} bytes or fewer")
    _refuse_long_paths(paths, scratch)


#: The bytes the files of a zarr folder (an OME-Zarr output, a TIFF's scratch) add to its path at most, zarr's
#: temporary of each included: ``/0/c/0/0/0/0/0.<32 hex digits>.partial``, chunk indices of up to 4 digits on 5 axes.
_ZARR_ENTRY_BYTES = len("/0/c" + "/9999" * 5 + "." + "0" * 32 + ".partial")


def _refuse_long_paths(paths, scratch: bool = False) -> None:
    """Refuse an output path under whose temporary names (one tag of :func:`check_name_length`'s; two, with
    the files written in them, for a TIFF built through a ``scratch`` zarr folder; one and those files for a
    ``.zarr``) a path would be past the system's limit for a whole path (PATH_MAX, 4095 bytes on Linux): one
    of 4080 bytes, every name in it within its own, passed, and the run failed after its computation with
    "File name too long" (exit 1). A TIFF written whole (a PSF, an in-memory run) has only its one temporary
    name: counted with the scratch's, one of 3990 bytes was refused. Counted from the root (a chunked run
    writes under the absolute path)."""
    for path in map(Path, paths):
        room = _name_room(path)
        if room is None:
            continue
        whole = os.path.abspath(path)
        size = len(os.fsencode(whole))
        suffix = path.suffix.lower()
        zarr = suffix == ".zarr" or (scratch and suffix in TIFF_SUFFIXES)  # (a zarr folder's files in it)
        extra = _tags(path, scratch) * _tag_bytes() + (_ZARR_ENTRY_BYTES if zarr else 0)
        path_max = _limit_at(Path(whole), "PC_PATH_MAX", 4096)  # (counting the terminating NUL)
        if size + extra >= path_max:
            raise InputError(f"output path {path} is too long for this file system: {size} bytes from the root, and "
                             f"its temporary names and the files written in them up to {extra} more, past its limit "
                             f"of {path_max - 1} for a whole path (each name in it is within its own): choose an "
                             "output in a folder with a shorter path")


def _tags(path: Path, scratch: bool) -> int:
    """How many writer's tags the longest temporary name of ``path`` has: two for a TIFF built through
    a ``scratch`` OME-Zarr (:func:`check_name_length`), one otherwise."""
    return 2 if scratch and Path(path).suffix.lower() in TIFF_SUFFIXES else 1


def _name_room(path: Path, scratch: bool = False) -> tuple[str, int, int, int] | None:
    """The name of ``path``, its length in bytes, the bytes its temporary names add (two tags for a TIFF
    built through a ``scratch`` OME-Zarr, :func:`check_name_length`) and the longest name its folder
    takes; None where that is not known."""
    path = Path(path)
    parent = existing_ancestor(path.parent if str(path.parent) else Path("."))
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows, or a file system that does not say
        limit = 255
    if limit is None or limit <= 0:
        return None
    extra = _tag_bytes() * _tags(path, scratch)
    return path.name, len(os.fsencode(path.name)), extra, limit


def _tag_bytes() -> int:
    """The bytes :func:`~deconv3d._paths.temporaries.temporary_name` adds to a name (at most, for this
    machine), the leading dot too."""
    return len(f".{host_tag()}@{max(9999999, os.getpid())}-{'0' * 8}{_TMP_SUFFIX}") + 1


def _short(name: str) -> str:
    return name if len(name) <= 48 else f"{name[:24]}...{name[-16:]}"


def _limit_at(path: Path, name: str, default: int) -> int:
    """``os.pathconf(name)`` where ``path`` would be: at the nearest folder above it that can be looked
    at (``path`` itself may be too long to); ``default`` where no folder says."""
    for above in (path, *path.parents):
        try:
            value = os.pathconf(above, name)
        except (AttributeError, OSError, ValueError):  # not there (yet), too long, or Windows
            continue
        return value if value is not None and value > 0 else default
    return default
