"""Output paths checked before any heavy work starts (:func:`check_output_path`): an output that is
one of its inputs or lies inside one (:func:`refuse_input_overlap`), a path this file system cannot
look at (:func:`refuse_unnamable`), a symbolic link or a write-protected file where the output goes
(:func:`refuse_output_link`, :func:`refuse_write_protected`), a missing or unwritable output
folder, and a folder at the output path that the output may not replace: only an empty ``.zarr``
folder or a zarr image deconv3d wrote holding nothing it did not write may be
(:func:`replaceable_folder`, :func:`added_entries`, :func:`refuse_unreplaceable`). Whether the name
leaves room for its temporary names is :mod:`deconv3d._paths.name_length`'s."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from deconv3d._paths.globbing import _is_folder
from deconv3d._paths.locations import _inside, _same_file
from deconv3d._paths.name_length import _limit_at, check_name_length
from deconv3d._paths.names import _check_suffix
from deconv3d.errors import InputError


def check_output_path(output, inputs=(), suffixes=None, scratch: bool = False) -> None:
    """Check an output path before any heavy work starts.

    Parameters
    ----------
    output : str or os.PathLike
        The path that will be written.
    inputs : str, os.PathLike or iterable of them
        Input files that must not be overwritten (None entries are ignored).
    suffixes : sequence of str, optional
        Accepted suffixes (lower case, with the dot); TIFF by default.
    scratch : bool
        Whether a TIFF output is built through a scratch OME-Zarr (a chunked run's), whose temporary
        names and files make its longest path longer (:func:`check_name_length`).

    Raises
    ------
    InputError
        If the output is one of the inputs, lies inside one or holds one, has an
        unsupported suffix, or its directory does not exist or is not writable.
    """
    output = Path(output)
    refuse_input_overlap(output, inputs)  # (first refuse_unnamable: every later look at the output raised ENAMETOOLONG)
    _refuse_folder(output)  # before the suffix: a folder 'existdir' was named as "unsupported format ''"
    if suffixes is not None and output.suffix.lower() not in suffixes:
        raise InputError(f"unsupported output format '{output.suffix}' for {output}: use {' or '.join(suffixes)}")
    _check_writable_target(output, check_suffix=suffixes is None)
    check_name_length(output, scratch=scratch)


def refuse_input_overlap(output, inputs=(), role: str = "input") -> None:
    """Refuse an output that is one of the ``inputs`` (a path, or an iterable of them; None entries
    are ignored), lies inside one or holds one: it would replace or change what it is computed from.
    The refusal names each of them as ``role`` (``"PSF"``: the inputs are PSF files)."""
    output = Path(output)
    refuse_unnamable(output)  # (looking at it raised "File name too long", from the library's writers too)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for inp in inputs:
        if inp is not None and _same_file(output, Path(inp)):
            raise InputError(f"output path equals the {role} {inp}: choose another output name")
        # An output folder (.zarr) is replaced whole, and one inside an input folder changes it.
        if inp is not None and (_inside(output, Path(inp)) or _inside(Path(inp), output)):
            raise InputError(f"output {output} and {role} {inp} lie one inside the other: choose an output "
                             f"outside the {role}, and not one that contains it")


def _check_writable_target(path: Path, check_suffix: bool = True) -> None:
    _refuse_folder(path)
    if check_suffix:
        _check_suffix(path, "output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory not found: {parent}: create it first or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output directory is not writable: {parent}: choose another output location")
    refuse_output_link(path)
    refuse_write_protected(path)


def refuse_unnamable(path: Path, folder: bool = False) -> None:
    """Refuse an output path this file system cannot even look at: a name in it past its limit (255
    bytes on most), the output's own worded by :func:`check_name_length` with the length to shorten
    it to (not for a ``folder``, a batch's, which is not written under a temporary name), or the path
    as a whole past the system's limit (4095 bytes on Linux) with every name in it within theirs,
    worded as that (it was called a name past its limit, which none was). Looking at it raised
    "File name too long", an internal error (exit 1)."""
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            return
        if not folder:
            try:
                # the output's own name too long: refused there, saying how short, to a length a chunked run's
                # TIFF takes too (whether it is built through a scratch is not known here; one temporary
                # name's length would be refused again by a chunked rerun)
                check_name_length(path, scratch=True)
            except OSError:  # a folder above it too long to look at
                pass
        size, longest = len(os.fsencode(path)), max(len(os.fsencode(part)) for part in Path(path).parts)
        path_max = _limit_at(Path(path), "PC_PATH_MAX", 4096)  # (counting the terminating NUL)
        if size >= path_max and longest <= _limit_at(Path(path), "PC_NAME_MAX", 255):
            raise InputError(f"output path {path} is too long for this file system: {size} bytes, past its limit of "
                             f"{path_max - 1} for a whole path (each name in it is within its own): choose an "
                             "output in a folder with a shorter path") from None
        raise InputError(f"output path {path} is too long for this file system (a name in it is past its "
                         "limit): shorten it") from None


def _refuse_folder(path: Path) -> None:
    """Refuse a folder at an output path, unless the output may replace it, and a link to a folder
    where a file is written (a link at a ``.zarr`` output is refused later, as any link is)."""
    refuse_unnamable(path)
    if path.is_symlink() and path.is_dir() and path.suffix.lower() != ".zarr":  # was "unsupported format ''"
        raise InputError(f"output {path} is a symbolic link to a folder ({os.readlink(path)}): give a file name")
    if path.is_dir() and not path.is_symlink():
        refuse_unreplaceable(path, f"output path is a directory: {path}: "
                             + ("it is not a zarr image deconv3d wrote, and is not replaced: move it away or choose "
                                "another output name" if path.suffix.lower() == ".zarr" else "give a file name"))


def refuse_write_protected(path: Path) -> None:
    """Refuse an output that exists but that this user may not write: it is replaced by a rename,
    which the folder's permissions allow, so a write-protected (``chmod 444``) file was replaced
    and its mode lost; ``cp`` onto it fails with "Permission denied", and so does this. A symbolic
    link is not refused here: the rename replaces the link, never the file it points to (which
    os.access would judge, and a dangling link's missing target was called write-protected)."""
    if os.path.lexists(path) and not os.path.islink(path) and not os.access(path, os.W_OK):
        raise InputError(f"output {path} is write-protected: make it writable (chmod u+w) if it may be replaced, "
                         "or choose another output name")


def replaceable_folder(path: Path) -> bool:
    """Whether a folder at an output path may be replaced by the output: an empty ``.zarr``
    folder (or one holding only files a file browser left, :func:`_os_metadata`), or a zarr image deconv3d wrote (its attributes hold ``deconv3d``; a previous output,
    replaced once the new one is complete) holding nothing but what deconv3d writes there
    (:func:`added_entries`). Any other zarr folder, an acquisition say, is not deleted for an
    output path that names it, nor is an earlier output to which labels were added."""
    return path.suffix.lower() == ".zarr" and _folder_state(path)[0]


#: The group metadata a zarr image deconv3d wrote holds beside its level folders (``0``, ``1``, ...).
_OWN_METADATA = ("zarr.json", ".zattrs", ".zgroup")
#: Files the operating system's file browser leaves in a folder it shows (macOS Finder's ``.DS_Store`` and
#: AppleDouble ``._NAME`` files, Windows Explorer's ``Thumbs.db`` and ``desktop.ini``): not the user's data.
_OS_METADATA = (".ds_store", "thumbs.db", "desktop.ini")


def _os_metadata(name: str, folder: bool) -> bool:
    """Whether the entry ``name`` is a file a file browser left (:data:`_OS_METADATA`)."""
    return not folder and (name.lower() in _OS_METADATA or name.startswith("._"))


def _not_written(listed: dict) -> list[str]:
    """The names among ``listed`` (name: whether a folder) that deconv3d does not write into a zarr
    output: anything but its group metadata, its level folders and what a file browser left there
    (:func:`_os_metadata`: a Finder's ``.DS_Store`` blocked replacing an output that was looked at)."""
    return sorted(name for name, folder in listed.items()
                  if name not in _OWN_METADATA and not (folder and name.isdigit()) and not _os_metadata(name, folder))


def added_entries(path: Path) -> list[str]:
    """The entries of the folder ``path`` that deconv3d did not write, where it is a zarr image
    deconv3d wrote (labels added inside it, say: OME-Zarr keeps them in the image's group); else
    none. Such an output is not replaced: the entries would be deleted with it."""
    return _folder_state(path)[1]


def _folder_state(path: Path) -> tuple[bool, list[str]]:
    """Whether the folder ``path`` may be replaced by an output (:func:`replaceable_folder`), and its
    :func:`added_entries`, from one listing of it (another writer may replace it meanwhile, by a
    zarr output too) and one reading of its group metadata."""
    try:
        with os.scandir(path) as entries:
            listed = {entry.name: _is_folder(entry, follow_symlinks=False) for entry in entries}
    except FileNotFoundError:  # gone meanwhile (another writer moved its output aside): nothing to keep
        return path.suffix.lower() == ".zarr", []
    except OSError:
        return False, []
    if all(_os_metadata(name, folder) for name, folder in listed.items()):  # (a Finder's .DS_Store only: empty)
        return path.suffix.lower() == ".zarr", []
    added = _not_written(listed) if _written_by_deconv3d(path, set(listed)) else None
    return path.suffix.lower() == ".zarr" and added == [], added or []


def refuse_unreplaceable(path: Path, otherwise: str) -> None:
    """Refuse a folder at the output ``path`` that the output may not replace (:func:`replaceable_folder`),
    in one line: a zarr image deconv3d wrote that holds entries it did not write naming them
    (:func:`added_entries`), any other with the message ``otherwise``."""
    replaceable, added = _folder_state(path)
    if replaceable:
        return
    if added:
        shown = ", ".join(added[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
        raise InputError(f"output {path} is a zarr image deconv3d wrote that holds entries it did not write "
                         f"({shown}): they would be deleted with it: move them away or choose another output name")
    raise InputError(otherwise)


def refuse_output_link(path: Path) -> None:
    """Refuse a symbolic link at the output ``path``: replacing the output would replace the link, not
    write where it points."""
    if path.is_symlink():
        raise InputError(f"output {path} is a symbolic link (to {os.readlink(path)}): remove the link, or give "
                         "its target as the output")


def _written_by_deconv3d(path: Path, names: set) -> bool:
    """Whether the zarr group at ``path`` (whose entries are ``names``) carries deconv3d's attribute."""
    import json

    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        if name not in names:
            continue
        try:
            meta = json.loads((path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:  # replaced meanwhile by another writer's output
            return True
        except (OSError, ValueError):
            return False
        attrs = meta.get(key, {}) if key is not None else meta
        return isinstance(attrs, dict) and "deconv3d" in attrs
    return False
