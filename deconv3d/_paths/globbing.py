"""A batch's glob patterns and hidden names: whether a pattern reaches a hidden name only through
a wildcard (:func:`glob_hides`), and the files a pattern finds without entering such hidden folders,
by Python 3.11's rule on every Python (:func:`glob_shown`)."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path


def glob_hides(parts, pattern: str, *, below: bool = False) -> bool:
    """Whether the glob ``pattern`` reaches a hidden name (a leading dot) of ``parts``, a path relative
    to the folder it searches, only through a wildcard: ``*`` or ``**`` does not reach ``.raw`` (an output
    folder ``.out`` kept in a batch's input folder, a ``.snapshot``, a ``.Trash-1000``), a pattern part
    that starts with a dot too does (``.raw/*.tif``, ``.r*/*.tif``), as in the shell. Any case, as a
    batch's glob. ``below``: ``parts`` need only lead to a path the pattern matches, or lie inside one
    (an output folder's files the pattern would read, or the input it is in)."""
    parts = tuple(str(p).lower() for p in parts)
    if not any(p.startswith(".") for p in parts):
        return False
    return not _shown(parts, tuple(q.lower() for q in Path(pattern).parts), below)


def _shown(parts: tuple, pattern: tuple, below: bool) -> bool:
    """Whether ``pattern`` (its parts) matches ``parts`` with each hidden one matched by a part that
    starts with a dot (see :func:`glob_hides`)."""
    if not parts or not pattern:
        return below or (not parts and set(pattern) <= {"**"})
    head, rest = pattern[0], pattern[1:]
    if head == "**":  # no part, or one more part that is not hidden
        return _shown(parts, rest, below) or (not parts[0].startswith(".") and _shown(parts[1:], pattern, below))
    return (fnmatch.fnmatchcase(parts[0], head) and (head.startswith(".") or not parts[0].startswith("."))
            and _shown(parts[1:], rest, below))


def glob_shown(folder, pattern: str) -> list[Path]:
    """What ``Path(folder).glob(pattern)`` (Python 3.11's) finds, less what :func:`glob_hides` hides,
    found without entering a hidden folder that the pattern reaches only through a wildcard: a
    ``**`` pattern walked a file server's ``.snapshot`` tree whole, then dropped all it found there.
    A pattern part that starts with a dot (``.raw/*.tif``) enters the folders it matches.

    The rule is Python 3.11's on every Python: ``**`` matches ``folder`` (or the folder it stands
    in) and every folder below it, never a file, and does not follow links to folders (Python 3.13's
    ``Path.glob`` matches files too: ``**`` alone, ``sub/**``); ``**/*.tif`` finds the ``.tif`` files
    at every depth; a pattern that ends in ``/`` matches folders only; a folder that may not be read
    is skipped. Paths are in the order found, each once."""
    if not pattern or Path(pattern).is_absolute():
        raise ValueError(f"unacceptable pattern {pattern!r}: give one relative to the folder")
    parts = Path(pattern).parts + (("",) if pattern.endswith(("/", os.sep)) else ())  # "x/": x a folder
    folder = Path(folder)
    return list(dict.fromkeys(_select(folder, parts))) if folder.is_dir() else []


def _select(path: Path, parts: tuple):
    """The paths below ``path`` that the pattern's ``parts`` match, as :func:`glob_shown` finds them."""
    if not parts or parts == ("",):
        yield path
        return
    head, rest = parts[0], parts[1:]
    if head == "**":  # path, and every folder below that is not hidden (links to folders not followed)
        for below in _folders_shown(path):
            yield from _select(below, rest)
    elif "**" in head:
        raise ValueError("Invalid pattern: '**' can only be an entire path component")
    elif not any(c in head for c in "*?["):  # a name as it is
        child = path / head
        if _present(child, folder=bool(rest)):
            yield from _select(child, rest)
    else:
        for entry in _entries(path):
            if (head.startswith(".") or not entry.name.startswith(".")) and (not rest or _is_folder(entry)) \
                    and fnmatch.fnmatchcase(entry.name, head):
                yield from _select(path / entry.name, rest)


def _folders_shown(path: Path):
    """``path`` and every folder below it that is not hidden nor inside a hidden one, links not followed."""
    yield path
    for entry in _entries(path):
        if not entry.name.startswith(".") and _is_folder(entry, follow_symlinks=False):
            yield from _folders_shown(path / entry.name)


def _entries(path: Path) -> list:
    """The entries of the folder ``path``; none where it may not be read (as :meth:`Path.glob`)."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except PermissionError:
        return []


def _present(path: Path, folder: bool) -> bool:
    """Whether ``path`` exists (is a folder, with ``folder``); not where it may not be looked at, inside
    a folder another user keeps to themselves (``lost+found``), as :meth:`Path.glob` skips those."""
    try:
        return path.is_dir() if folder else path.exists()
    except OSError:
        return False


def _is_folder(entry, follow_symlinks: bool = True) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False
