"""Which file a path names and where it lies: two names of one file (:func:`_same_file`), a path
inside a folder however that folder is spelled (:func:`relative_to_folder`), what tells a file's
contents apart without reading them (:func:`file_identity`), the nearest existing folder above a path
(:func:`existing_ancestor`), and a path that is neither a regular file nor a folder, a named pipe
say (:func:`special_file_problem`, :func:`refuse_special_file`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def special_file_problem(path, role: str = "input", name: str | None = None) -> str | None:
    """Why ``path`` cannot be read as an image or a PSF, as a one-line message, where it exists but is
    neither a regular file nor a folder: a named pipe (opening it waited forever for a writer, and
    ``deconvolve`` hung), a socket or a device. None otherwise (a missing path is left to the caller).
    The message names the file as ``name`` where given ("the image": a batch's line, which names the
    file before the reason), else as ``role`` and ``path`` (``input in/a.tif``); its fix names what to
    save to a file as the role is (the model, the PSF, else the image)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    what = {"model": "model", "PSF": "PSF"}.get(role, "image")
    return f"{name or f'{role} {path}'} is {kind}, not a regular file: save the {what} to a file and give that"


def refuse_special_file(path, role: str = "input") -> None:
    """Refuse ``path`` where :func:`special_file_problem` finds it is not a regular file or folder; an input
    image's refusal (``role`` "input") is also said of "the image" (its ``without_file``, a batch's line)."""
    if (problem := special_file_problem(path, role)) is not None:
        from deconv3d.errors import InputError

        raise InputError(problem, without_file=special_file_problem(path, name="the image") if role == "input" else None)


def existing_ancestor(path: Path) -> Path:
    """``path`` (made absolute) if it exists, else the nearest folder above it that does: where a
    missing output folder would be created, and so what must be writable."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` lies (strictly) inside folder ``b``, links resolved, as :func:`relative_to_folder` tells."""
    return relative_to_folder(a, b) not in (None, Path())


def relative_to_folder(path, folder) -> Path | None:
    """``path`` relative to the folder ``folder`` (``Path()`` for the folder itself), links resolved;
    None where it is neither that folder nor inside it. Where ``folder`` exists, a folder above
    ``path`` (or ``path`` itself) is it when it is the same file (device and inode): two spellings
    of one folder (another case on a case-insensitive disk, macOS's and Windows' default, or a bind
    mount) compared as text were two, and a batch wrote its outputs among its inputs. Paths that do
    not exist yet are compared as text."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    if path.is_relative_to(folder):
        return path.relative_to(folder)
    try:
        target = os.stat(folder)
    except OSError:  # not there (yet): the text alone tells
        return None
    for above in (path, *path.parents):
        try:
            if os.path.samestat(os.stat(above), target):
                return path.relative_to(above)
        except OSError:  # not there yet, or not to be looked at
            continue
    return None


def file_identity(path) -> tuple:
    """What tells a file's contents apart without reading them: its resolved path, device, inode,
    size, and modification and change times. The change time is needed too: ``cp -p`` (or an
    archive's extraction) over a file of the same size keeps the inode and sets the modification
    time it copies, which may equal the old one; only the change time then moves. Two names of one
    file (a symbolic link and its target) give one identity."""
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)
        except OSError:  # one removed meanwhile
            return False
    return a.resolve() == b.resolve()
