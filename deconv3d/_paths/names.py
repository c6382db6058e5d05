"""The text of file names and of file errors: the image suffixes (:data:`TIFF_SUFFIXES`,
:data:`OUTPUT_SUFFIXES`) and an image's name less them (:func:`image_stem`), a file name as text any
file format or report can hold (:func:`path_text`), on one line of the command line's output
(:func:`line_text`) or as a provenance record keeps it (:func:`recorded_path`), an error in one line
(:func:`_one_line`), and whether a write failed for want of room (:func:`out_of_space`)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from deconv3d.errors import InputError


TIFF_SUFFIXES = (".tif", ".tiff")
#: What ``deconvolve`` (and a batch) writes: an OME-Zarr folder or a TIFF.
OUTPUT_SUFFIXES = (".zarr",) + TIFF_SUFFIXES
#: An image file's (or folder's) suffixes, two-part ones first: what :func:`image_stem` drops.
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")


def image_stem(path) -> str:
    """The name of the image at ``path``: its file name less its image suffix only, ``.ome.zarr``
    as a whole (``out.ome.zarr`` was named ``out.ome``), dots inside the name kept (``cell.t001.tif``
    gives ``cell.t001``); else :attr:`pathlib.Path.stem`. A batch names its outputs by it, and an
    OME-Zarr output is named by it."""
    name = Path(path).name
    return next((name[:-len(s)] for s in IMAGE_SUFFIXES if name.lower().endswith(s)), Path(path).stem)


_FORMATS = "use .tif or .tiff"


def path_text(path) -> str:
    """A file name as text any file format or report can hold: itself, or where it is not valid
    UTF-8 (``lat\\xe9.tif`` from Latin-1 times, which Python reads with a lone surrogate that a TIFF
    property, a CSV or a JSON report cannot encode) with the bytes that are not as ``\\xNN``."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")  # the name's own bytes
        except UnicodeEncodeError:  # a surrogate no file name decodes to
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")


#: The control characters (C0, DEL, C1) and Unicode's line and paragraph separators as a line shows them: a
#: newline in a file name split an error, a warning or a "wrote ..." line in two (U+0085, U+2028 and U+2029
#: end a line for Python's splitlines and some log viewers too).
_CONTROLS = ({c: f"\\x{c:02x}" for c in (*range(32), *range(0x7F, 0xA0))} | {10: "\\n", 13: "\\r"}
             | {c: f"\\u{c:04x}" for c in (0x2028, 0x2029)})


def line_text(text) -> str:
    """``text`` (a message, or a path as :func:`path_text` gives it) for one line of the command
    line's output: control characters escaped (``\\n``, ``\\r``, ``\\xNN``, ``\\u2028``), all else kept
    (µm, ü). A backslash is kept as it is, so a name holding a backslash and an ``n`` reads as one
    holding a newline would: the line stays readable, and Windows-like names are not doubled."""
    return path_text(text).translate(_CONTROLS)


def recorded_path(path) -> str:
    """A file's name as a provenance record keeps it: absolute (the working directory before it),
    links and ``..`` left as given, as :func:`path_text`. A name relative to the working directory,
    which no record holds, named another file or none for whoever reran the command from elsewhere;
    ``os.path.abspath`` dropped ``link/..`` as text, naming the folder holding the link where the
    file used lies beside the link's target."""
    return path_text(Path(os.fsdecode(path)).absolute())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


#: A full disk or quota, or a file past the file system's largest: "no space left on PATH" wherever met.
SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def out_of_space(exc: BaseException) -> bool:
    """Whether a write failed for want of room: :data:`SPACE_ERRORS`, or numpy's short write
    (``tofile``, under tifffile), which says only "1048576 requested and 523868 written", with no errno.
    The one test of every place that words such an error (the outputs, the batch, the command line)."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in SPACE_ERRORS or (exc.errno is None and re.fullmatch(r"\d+ requested and \d+ written",
                                                                            str(exc).strip()) is not None)


def _check_suffix(path: Path, role: str) -> None:
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"unsupported {role} format '{path.suffix}' for {path}: {_FORMATS}")
