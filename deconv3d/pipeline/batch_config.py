"""Reading a batch's TOML configuration file into a dict of settings, for
:func:`~deconv3d.pipeline.settings.make_settings` to validate.

:func:`load_config` takes the long option names (``-`` or ``_``, and ``no-accelerate`` style flags),
refuses unknown keys and two keys for one setting, and takes the files ``psf`` and ``model`` name
relative to the config file's folder; :data:`RUN_KEYS` are the keys that say how to run a batch
rather than what to compute. A TOML error caused by a Windows path in double quotes (whose
backslashes start escapes) gets the fix :data:`WINDOWS_PATHS` instead of "fix the TOML syntax".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deconv3d.errors import InputError
from deconv3d.pipeline.settings import Settings
from deconv3d.pipeline.settings_checks import _many

__all__ = ["load_config", "RUN_KEYS", "WINDOWS_PATHS"]


#: Keys of a batch config that say how to run it rather than what to compute (``batch``'s own options).
RUN_KEYS = ("scheduler", "workers")


#: The fix for a Windows path that TOML read as escapes: a backslash in double quotes starts one.
WINDOWS_PATHS = "write Windows paths in single quotes ('C:\\data\\psf.tif') or with forward slashes (\"C:/data/psf.tif\")"


def load_config(path) -> dict:
    """Read a batch TOML file into a dict of settings (keys are long option names, '-' or '_';
    ``no-accelerate = true`` is ``accelerate = false``, and ``no-amp`` and ``no-tta`` likewise),
    plus :data:`RUN_KEYS` where given. Two keys for one setting (``amp`` and ``no-amp``, or
    ``tv-weight`` and ``tv_weight``) are refused: which one was meant is not for us to guess.
    The files ``psf`` and ``model`` name are taken relative to the config file's folder."""
    path = Path(path)
    raw = _read_toml(path)
    known = {f.name for f in dataclasses.fields(Settings)} | set(RUN_KEYS)
    out, keys = {}, {}
    for key, value in raw.items():
        name, value = _setting_name(key, value, path, known, keys)
        keys[name] = key
        out[name] = _setting_value(name, key, value, path)
    return out


def _read_toml(path: Path) -> dict:
    """The TOML of the config file ``path``, refused with the fix where it is missing, unreadable or not TOML."""
    import tomllib

    if not path.is_file():
        raise InputError(f"config file not found: {path}: check the path")
    text = None
    try:
        # TOML is UTF-8 (Windows' default was cp1252); Notepad's "UTF-8 with BOM" was refused at line 1
        text = path.read_text(encoding="utf-8-sig")
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fix = WINDOWS_PATHS if _backslash_in_double_quotes(text, exc) else "fix the TOML syntax"
        raise InputError(f"cannot read config {path}: {' '.join(str(exc).split())}: {fix}") from exc
    except OSError as exc:  # the command line's "check free disk space" is a writer's hint
        raise InputError(f"cannot read config {path}: {exc.strerror or exc}: ask for read access to it (or copy it "
                         "somewhere you can read)") from exc


def _setting_name(key: str, value, path: Path, known: set, keys: dict):
    """(setting name, value) of the config's ``key``: ``no-accelerate = true`` is ``accelerate = false``;
    refused where the key is unknown or another key (in ``keys``, name to key) already set it."""
    name = key.replace("-", "_")
    if name in ("no_accelerate", "no_amp", "no_tta"):  # the flag's own name: no-accelerate = true
        if not isinstance(value, bool):
            raise InputError(f"config {path}: {key} must be true or false, got {value!r}")
        name, value = name[3:], not value
    if name not in known:
        raise InputError(f"config {path}: unknown key {key!r}: use the long option names, e.g. method, psf, "
                         "iterations")
    if name in keys:
        raise InputError(f"config {path}: {keys[name]!r} and {key!r} both set {name}: keep one of them")
    return name, value


def _setting_value(name: str, key: str, value, path: Path):
    """The value of setting ``name``: a list as a tuple, and the files ``psf`` and ``model`` name taken
    relative to the config file's folder (:func:`_config_path`)."""
    if isinstance(value, list):
        value = tuple(value)
    if name in ("psf", "model") and value is not None:
        if not all(isinstance(f, str) for f in _many(value)):
            raise InputError(f"config {path}: {key} must be a file name in quotes (or a list of them, one per "
                             f"channel), got {value!r}")
        resolved = [_config_path(f, path, key) for f in _many(value)]
        value = tuple(resolved) if isinstance(value, tuple) else resolved[0]
    return value


def _config_path(name: str, config: Path, key: str) -> str:
    """A file a config names (at ``key``): ``~`` expanded (no shell does it there), a relative path
    taken from the config file's folder (not the working directory, as for --psf: the config travels
    with it). A ``~user`` with no such user, or a ``~`` with no HOME and no passwd entry, is refused
    (Python raised RuntimeError: an internal error). So is a name with a control character that
    names no file: a Windows path in double quotes (``"C:\\temp\\new.tif"``), whose ``\\t`` and
    ``\\n`` TOML reads as a tab and a new line (its "not found" error came over two lines)."""
    try:
        given = Path(name).expanduser()
    except RuntimeError:
        home = Path(name).parts[0]
        raise InputError(f"config {config}: {key} = {name!r}: the home folder of {home!r} is not found (no such "
                         "user, or HOME unset): give the full path") from None
    found = given if given.is_absolute() else config.parent / given
    if any(ord(c) < 32 or ord(c) == 127 for c in name) and not found.exists():
        raise InputError(f"config {config}: {key} = {name!r} holds a control character (a backslash in double "
                         f"quotes starts an escape such as \\t or \\n): {WINDOWS_PATHS}")
    return str(found)


def _backslash_in_double_quotes(text, exc) -> bool:
    """Whether the TOML error ``exc`` lies inside a basic (double-quoted, one- or multi-line) string
    of ``text`` (a config) that holds a backslash before it: ``psf = "C:\\Users\\me\\psf.tif"`` was
    refused as "Invalid hex value". Its place is found as TOML counts lines (at "\\n" only: not at
    the U+2028 that ``str.splitlines`` also splits at), the strings by reading the text up to it. Also
    where the text parses, or fails only on a later line, once the error's line has its backslashes
    doubled (read as themselves): a path ending in a backslash (``["C:\\", "D:\\psf.tif"]``) ran its
    string on into the next one, and TOML's error (an unclosed list) then lay outside any string (a
    rule looking for ``\\"`` before "," or "]" on the error's line also fired for escaped quotes in
    text, literal strings and comments; doubling every backslash of the text missed the path where the
    config had another error, or a right ``\\"`` elsewhere; parsing only up to the error's line missed
    a list that closes on a later line)."""
    import re
    import tomllib

    where = _toml_error_place(exc)
    if text is None or (where is None and "(at end of document)" not in str(exc)):
        return False
    lines = text.split("\n")
    number = where[0] if where else len(lines)  # (at the end of the document: its last line)
    end = len(text)
    if where:
        end = sum(len(line) + 1 for line in lines[:number - 1]) + where[1] - 1
    if _ends_in_basic_string_with_backslash(text[:end]):
        return True
    if not 0 < number <= len(lines) or re.search(r'\\".*#', lines[number - 1]):
        return False  # (doubled, a right \" before a "#" ends its string and comments out the rest of the line)
    try:
        tomllib.loads("\n".join([*lines[:number - 1], lines[number - 1].replace("\\", "\\\\"), *lines[number:]]))
    except tomllib.TOMLDecodeError as again:  # the hint where the error moved on past that line
        later = _toml_error_place(again)
        return later is not None and later[0] > number
    return True


def _toml_error_place(exc) -> tuple[int, int] | None:
    """The (line, column) a TOML error names ("at line 2, column 11"), or None (at the end of the document)."""
    import re

    where = re.search(r"at line (\d+), column (\d+)\)", str(exc))
    return (int(where[1]), int(where[2])) if where else None


def _ends_in_basic_string_with_backslash(text: str) -> bool:
    """Whether ``text``, the start of a TOML document, ends inside a basic string (``"..."`` or
    ``\"\"\"...\"\"\"``) holding a backslash: literal strings (``'...'``, ``'''...'''``) keep
    backslashes as they are, and comments are not read."""
    i, open_, backslash = 0, None, False  # open_: the delimiter of the string in which text[i] lies, or "#"
    while i < len(text):
        char = text[i]
        if open_ is None:
            if char in "\"'":
                open_, backslash = char * 3 if text.startswith(char * 3, i) else char, False
                i += len(open_)
                continue
            open_ = "#" if char == "#" else None
        elif char == "\n" and len(open_) == 1:  # the end of a comment, or of a one-line string (refused)
            open_ = None
        elif char == "\\" and open_[0] == '"':  # an escape: the next character does not close the string
            backslash, i = True, i + 2
            continue
        elif open_ != "#" and text.startswith(open_, i):  # closed (of up to 5 quotes, the last 3 close it)
            run = len(text[i:i + 5]) - len(text[i:i + 5].lstrip(open_[0]))
            open_, i = None, i + (run if len(open_) == 3 else 1)
            continue
        i += 1
    return open_ is not None and open_[0] == '"' and backslash
