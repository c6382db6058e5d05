"""Output paths checked before any heavy work starts, and the temporary names outputs are written
under until they are complete (:mod:`deconv3d.io`, :mod:`deconv3d.pipeline.output`)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from deconv3d.errors import InputError


TIFF_SUFFIXES = (".tif", ".tiff")


_FORMATS = "use .tif or .tiff"


def check_output_path(output, inputs=(), suffixes=None) -> None:
    """Check an output path before any heavy work starts.

    Parameters
    ----------
    output : str or os.PathLike
        The path that will be written.
    inputs : str, os.PathLike or iterable of them
        Input files that must not be overwritten (None entries are ignored).
    suffixes : sequence of str, optional
        Accepted suffixes (lower case, with the dot); TIFF by default.

    Raises
    ------
    InputError
        If the output is one of the inputs, lies inside one or holds one, has an
        unsupported suffix, or its directory does not exist or is not writable.
    """
    output = Path(output)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for inp in inputs:
        if inp is not None and _same_file(output, Path(inp)):
            raise InputError(f"output path equals the input {inp}: choose another output name")
        # An output folder (.zarr) is replaced whole, and one inside an input folder changes it.
        if inp is not None and (_inside(output, Path(inp)) or _inside(Path(inp), output)):
            raise InputError(f"output {output} and input {inp} lie one inside the other: choose an output "
                             "outside the input, and not one that contains it")
    if suffixes is not None and output.suffix.lower() not in suffixes:
        raise InputError(f"unsupported output format '{output.suffix}' for {output}: use {' or '.join(suffixes)}")
    _check_writable_target(output, check_suffix=suffixes is None)


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that marks itself as unfinished, and names the machine and the
    process writing it (``.NAME.<host>@<pid>-<id>.tmp``;
    :func:`deconv3d.pipeline.output.remove_stale_temporaries` sweeps them)."""
    return path.with_name(f".{path.name}.{host_tag()}@{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def existing_ancestor(path: Path) -> Path:
    """``path`` (made absolute) if it exists, else the nearest folder above it that does: where a
    missing output folder would be created, and so what must be writable."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def host_tag() -> str:
    """This machine's name as a file-name part (letters, digits and '-'): jobs on several cluster
    nodes writing into one shared folder must not take each other's temporaries for leftovers."""
    import socket

    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_suffix(path: Path, role: str) -> None:
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"unsupported {role} format '{path.suffix}' for {path}: {_FORMATS}")


def _check_writable_target(path: Path, check_suffix: bool = True) -> None:
    if check_suffix:
        _check_suffix(path, "output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory not found: {parent}: create it first or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output directory is not writable: {parent}: choose another output location")
    if path.is_symlink():  # replacing the output would replace the link, not write where it points
        raise InputError(f"output {path} is a symbolic link (to {os.readlink(path)}): give the link's target as the "
                         "output, or remove the link")
    if path.is_dir() and not _is_zarr_image(path):
        raise InputError(f"output path is a directory: {path}: give a file name")


def _is_zarr_image(path: Path) -> bool:
    """A ``.zarr`` folder holding a zarr group: a previous output, replaced once the new one is complete."""
    return path.suffix.lower() == ".zarr" and any((path / f).is_file() for f in ("zarr.json", ".zgroup"))


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` lies (strictly) inside folder ``b``, links resolved."""
    a, b = a.resolve(), b.resolve()
    return a != b and a.is_relative_to(b)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()
