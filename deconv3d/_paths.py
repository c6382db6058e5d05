"""Output paths checked before any heavy work starts, the temporary names outputs are written
under until they are complete (:mod:`deconv3d.io`, :mod:`deconv3d.pipeline.output`), the section
that keeps a termination signal from cutting their publishing in two (:func:`signals_deferred`,
:func:`publishing`), and
the sweep of what killed runs left under such names (kept here, free of heavy imports, so that every
command can sweep before it writes)."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import os
import re
import shutil
import signal
import stat
import threading
import time
import uuid
import weakref
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


def special_file_problem(path, role: str = "input") -> str | None:
    """Why ``path`` cannot be read as an image or a PSF, as a one-line message, where it exists but is
    neither a regular file nor a folder: a named pipe (opening it waited forever for a writer, and
    ``deconvolve`` hung), a socket or a device. None otherwise (a missing path is left to the caller)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    what = "model" if role == "model" else "image"
    return f"{role} {path} is {kind}, not a regular file: save the {what} to a file and give that"


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


def refuse_input_overlap(output, inputs=()) -> None:
    """Refuse an output that is one of the ``inputs`` (a path, or an iterable of them; None entries
    are ignored), lies inside one or holds one: it would replace or change what it is computed from."""
    output = Path(output)
    refuse_unnamable(output)  # (looking at it raised "File name too long", from the library's writers too)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for inp in inputs:
        if inp is not None and _same_file(output, Path(inp)):
            raise InputError(f"output path equals the input {inp}: choose another output name")
        # An output folder (.zarr) is replaced whole, and one inside an input folder changes it.
        if inp is not None and (_inside(output, Path(inp)) or _inside(Path(inp), output)):
            raise InputError(f"output {output} and input {inp} lie one inside the other: choose an output "
                             "outside the input, and not one that contains it")


def check_name_length(*paths: Path, renamed: Path | None = None, scratch: bool = False) -> None:
    """Refuse an output name too long to be written under its temporary names.

    :func:`temporary_name` adds the writer's tag (about 40 bytes) to the name, twice for a TIFF
    (which may be assembled from a temporary OME-Zarr of its own temporary name): a legal name
    of 184 to 255 bytes failed with "File name too long" after the whole computation.
    ``renamed``: the file whose name those of ``paths`` derive from (a batch's input, for its output
    and its record), named in the message as the one to shorten, to the length that all of them
    allow: the strictest's (a batch's record, 4 bytes longer than its OME-Zarr output, refused
    the input again once it was shortened to the length the output's message gave).
    A path that its temporary names would make too long as a whole is refused too (:func:`_refuse_long_paths`;
    ``scratch``: a TIFF among ``paths`` is built through a scratch OME-Zarr, as a chunked run builds it).
    """
    rooms = [room for room in map(_name_room, paths) if room is not None]
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
        extra = (_tag_bytes() * (2 if scratch and suffix in TIFF_SUFFIXES else 1)
                 + (_ZARR_ENTRY_BYTES if zarr else 0))
        path_max = _limit_at(Path(whole), "PC_PATH_MAX", 4096)  # (counting the terminating NUL)
        if size + extra >= path_max:
            raise InputError(f"output path {path} is too long for this file system: {size} bytes from the root, and "
                             f"its temporary names and the files written in them up to {extra} more, past its limit "
                             f"of {path_max - 1} for a whole path (each name in it is within its own): choose an "
                             "output in a folder with a shorter path")


def _name_room(path: Path) -> tuple[str, int, int, int] | None:
    """The name of ``path``, its length in bytes, the bytes its temporary names add
    (:func:`check_name_length`) and the longest name its folder takes; None where that is not known."""
    path = Path(path)
    parent = existing_ancestor(path.parent if str(path.parent) else Path("."))
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows, or a file system that does not say
        limit = 255
    if limit is None or limit <= 0:
        return None
    extra = _tag_bytes() * (2 if path.suffix.lower() in TIFF_SUFFIXES else 1)
    return path.name, len(os.fsencode(path.name)), extra, limit


def _tag_bytes() -> int:
    """The bytes :func:`temporary_name` adds to a name (at most, for this machine), the leading dot too."""
    return len(f".{host_tag()}@{max(9999999, os.getpid())}-{'0' * 8}{_TMP_SUFFIX}") + 1


def _short(name: str) -> str:
    return name if len(name) <= 48 else f"{name[:24]}...{name[-16:]}"


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that marks itself as unfinished, and names the machine and the
    process writing it (``.NAME.<host>@<pid>-<id>.tmp``;
    :func:`deconv3d.pipeline.output.remove_stale_temporaries` sweeps them)."""
    return path.with_name(f".{path.name}.{host_tag()}@{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def keep_mode(path: Path, tmp: Path) -> None:
    """Give ``tmp``, the temporary of an output that will replace the existing ``path``, that output's
    permission bits (``rwx`` for owner, group and others) and its group, as ``cp`` onto a file keeps
    them: a ``chmod 600`` result replaced by a rerun came back 0644 (readable by all), a zarr folder
    at 0750 as 0755 (the umask's). Called as ``tmp`` is created (:func:`create_temporary`, which makes
    it no wider than this), so that a private result is never readable by others while it is
    rewritten. Setuid, setgid and sticky bits are not copied
    (``tmp`` keeps its own: a folder's setgid inherited from its parent). The group is kept where this
    user may give it (one of its groups); where it cannot be and the output was someone else's,
    ``tmp`` is given the umask's mode: the old mode on this user's group (``0660``) would lock the
    previous owner out of the result. A new output keeps the umask's mode; a link at ``path`` (which
    the rename replaces, never its target) gives none, nor a file to a folder or a folder to a file
    (a file's 0644 would make a folder that cannot be entered, nor removed). For a zarr folder this is
    the folder's own mode, which decides who may reach its files."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) != os.path.isdir(tmp):
            return
        own = os.lstat(tmp)
        if own.st_gid != st.st_gid:
            try:
                os.chown(tmp, -1, st.st_gid)
            except OSError:  # not one of this user's groups
                if st.st_uid != own.st_uid:  # the umask's mode (create_temporary made it narrower)
                    os.chmod(tmp, (stat.S_IMODE(own.st_mode) & ~0o777) | (_NEW_MODE[stat.S_ISDIR(own.st_mode)]
                                                                           & ~_umask()))
                    return
            own = os.lstat(tmp)
        os.chmod(tmp, (stat.S_IMODE(own.st_mode) & ~0o777) | (st.st_mode & 0o777))
    except OSError:  # no output there (yet), or one removed meanwhile
        pass


#: The mode a new file (False) or folder (True) is made with, less the umask's bits.
_NEW_MODE = {False: 0o666, True: 0o777}


def create_temporary(path: Path, tmp: Path, folder: bool = False, like: Path | None = None) -> int | None:
    """Create ``tmp``, the temporary of the output ``path`` (:func:`temporary_name`), a ``folder`` or a
    file, which is returned open for writing (a descriptor, for :func:`open`), with the permissions it
    will have (:func:`keep_mode`). It was made with the umask's mode and narrowed right after: under a
    permissive umask (``0o000``) a ``chmod 600`` output's temporary was 0666 for that moment, and a
    file opened then stays readable to whoever opened it. It is now made with the output's
    mode, which the umask can only narrow: :func:`keep_mode`'s ``chmod`` that follows gives back
    what the umask took away (never more than the output's mode), and the group. Until the group is
    the output's, the temporary's group bits go to the folder's group, so they are made no wider than
    the output gives others (0640 is made 0600, then given its group and 0640). A new output is made
    with the umask's mode, as before. ``like``: the output whose mode a ``folder`` is made no wider
    than instead of ``path``'s, where it holds what becomes that file (a chunked TIFF's scratch
    zarr): a file's mode with ``x`` where ``r`` is set (0600 makes 0700), group bits as others'."""
    mode = _NEW_MODE[folder]
    try:
        st = os.lstat(path if like is None else like)
    except OSError:  # a new output (or one that cannot be looked at: refused before)
        st = None
    if st is not None and like is not None and folder and stat.S_ISREG(st.st_mode):
        kept = st.st_mode & 0o777
        kept |= (kept & 0o444) >> 2  # (a folder holding a file's data: entered by whom may read the file)
        mode &= kept & (0o707 | (kept & 0o007) << 3)
    elif st is not None and not stat.S_ISLNK(st.st_mode) and stat.S_ISDIR(st.st_mode) == folder:  # (as keep_mode)
        kept = st.st_mode & 0o777
        mode &= kept & (0o707 | (kept & 0o007) << 3)
    if folder:
        os.mkdir(tmp, mode)
        keep_mode(path, tmp)
        return None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        keep_mode(path, tmp)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Held while :func:`_umask` sets the umask and puts it back: two threads doing so at once read each
#: other's 0o077 and one left it set for the process.
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """This process's umask, read where the system tells it (Linux), else set and put back at once
    (under :data:`_UMASK_LOCK`; not kept between calls, as the user may change it)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # (what another thread creates meanwhile is private, not open to all)
        os.umask(mask)
    return mask


def existing_ancestor(path: Path) -> Path:
    """``path`` (made absolute) if it exists, else the nearest folder above it that does: where a
    missing output folder would be created, and so what must be writable."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def host_tag() -> str:
    """This machine's name as a file-name part (letters, digits and '-'): jobs on several cluster
    nodes writing into one shared folder must not take each other's temporaries for leftovers.
    On Linux it also names the process-id namespace: containers on one host (Docker with the
    host's network, Apptainer --containall) share its name while their process ids overlap (each
    run was process 1, and each removed the other's temporary as its own leftover)."""
    import socket

    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    namespace = _pid_namespace()
    return f"{host}-ns{namespace}" if namespace else host


def _pid_namespace() -> str:
    """The inode number of this process's pid namespace ('' where unknown: not Linux)."""
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except (OSError, AttributeError):
        return ""


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
                check_name_length(path)  # the output's own name too long: refused there, saying how short
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


_TMP_SUFFIX = ".tmp"
#: The writer's part of a name :func:`temporary_name` gives: ``.<host>@<pid>-<id>.tmp`` (the host,
#: missing in names of older versions, and the process as groups).
_WRITER = r"\.(?:([A-Za-z0-9-]+)@)?(\d+)-[0-9a-f]{8}" + re.escape(_TMP_SUFFIX)

_ON_WINDOWS = os.name == "nt"

#: Seconds after its last change that a temporary written from another machine counts as abandoned.
OTHER_HOST_STALE_AGE = 2 * 24 * 3600


def _writer_alive(entry: Path) -> bool:
    """Whether another process that is still running writes ``entry`` (named by :func:`temporary_name`,
    possibly a temporary of a temporary, whose last part names the writer). A temporary from
    another machine (a job on another node of a cluster, writing into the same shared folder) is
    taken as live until it has not changed for :data:`OTHER_HOST_STALE_AGE`: its process cannot
    be asked from here, and removing it broke that job's write."""
    match = re.search(_WRITER + "$", entry.name)
    if match is None:  # an older name without the process: stale
        return False
    if match.group(1) is not None and match.group(1) != host_tag():
        return _changed_since(entry, time.time() - OTHER_HOST_STALE_AGE)
    pid = int(match.group(2))
    return pid != os.getpid() and _process_exists(pid)


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine; when that cannot be told, True (its
    temporary is then left alone). On Windows ``os.kill(pid, 0)`` is no check: signal 0 is
    CTRL_C_EVENT there, which interrupts the processes of a console, and a dead pid raises
    ``OSError``, which ended a batch in an internal error; psutil asks the system instead."""
    if _ON_WINDOWS:
        try:
            import psutil

            return bool(psutil.pid_exists(pid))
        except Exception:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; anything else: unknown
        return True
    return True


def _changed_since(entry: Path, moment: float) -> bool:
    """Whether ``entry`` or anything under it changed after ``moment`` (stops at the first that did):
    a zarr folder's own time changes only when its top-level entries do, not as chunks are written."""
    stack = [str(entry)]
    while stack:
        path = stack.pop()
        try:
            if os.lstat(path).st_mtime > moment:
                return True
            if os.path.isdir(path) and not os.path.islink(path):
                stack.extend(os.path.join(path, name) for name in os.listdir(path))
        except OSError:  # removed meanwhile
            continue
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def signals_deferred():
    """A section of the main thread that a termination must not cut in two: publishing an output, where an
    earlier one is moved aside and the new one renamed into its place (a SIGTERM between the two renames
    removed both). A signal handler that asks :func:`defer_signal` (the command line's, for SIGTERM and
    SIGHUP) records its signal there instead of raising, and the signal is raised again, once, as the
    outermost section ends. Elsewhere, and in other threads (Python runs handlers in the main thread
    only), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        signum = None if _DEFERRED["depth"] else _DEFERRED.pop("signum", None)
        if signum is not None:
            signal.raise_signal(signum)  # (its handler runs now, in this thread)


@contextlib.contextmanager
def publishing(path):
    """:func:`signals_deferred` around putting the finished output ``path`` in place (its rename): a signal
    deferred meanwhile is raised as the section ends, and once the block has completed its exception carries
    ``published`` (``path``), so that the command line says the output was written (it had said that none
    was, the new output in place)."""
    done = False
    try:
        with signals_deferred():
            yield
            done = True
    except BaseException as exc:
        if done:
            exc.published = str(path)
        raise


def defer_signal(signum: int) -> bool:
    """For a signal handler: inside :func:`signals_deferred`, record ``signum`` (the first one), to be raised
    again as the section ends, and return True; elsewhere False."""
    if not _DEFERRED["depth"]:
        return False
    _DEFERRED.setdefault("signum", signum)
    return True


#: How deep the main thread is in :func:`signals_deferred` sections, and the signal deferred meanwhile.
_DEFERRED: dict = {"depth": 0}


def settle_zarr(timeout: float = 3.0, cancel: bool = False) -> None:
    """Wait until zarr's event loop runs no task: the ones a failed zarr read or write left behind.

    zarr v3 reads and writes the chunks of one call concurrently on its own asyncio loop (a
    thread) and raises the first chunk's error at once, while the call's other chunks go on: a
    temporary output removed then was made again by their writes (an empty ``.out.zarr...tmp/0/c/1/0``
    left behind), and tasks still pending at exit printed asyncio's "Task was destroyed but it is
    pending!" lines after the one error line. Their errors are taken (not printed). With ``cancel``
    (a command ending, all of whose zarr work is its own: not a library call, beside which another
    thread may read or write zarr), chunks still waiting for their turn (beyond zarr's limit of
    concurrent reads or writes) are cancelled, not waited for: a read of 65,536 one-voxel chunks
    that failed at its first went on for a minute, then printed 114,000 lines of "Task was
    destroyed" at exit. Without ``cancel`` the chunks still waiting for their turn that no one waits
    for any more (:func:`_orphaned`: those of a call that has already raised its error) are cancelled
    too: they are the failed call's own, never begun, and what they would read or write is wanted by
    no one. ``atomic_output`` waited for them to be read, for up to 30 s, after a chunk of the input was
    found damaged, before saying so (1.2 s of 8,192 chunks, 0.03 s now); the chunks being read or
    written are still waited for. Does nothing where zarr is not loaded. Tasks still running after
    ``timeout`` seconds (a stalled write) are given up on, and later calls do not wait for them
    again: a failure is not made a minute longer. A loop that runs nothing (blocked in a call) is given
    up on after ``timeout`` too, with the grace for cancelled tasks only where some were cancelled (or
    ``cancel``): always added, it made every such stall 30 s longer (atomic_output's 31 s became 61 s)."""
    import sys

    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    import asyncio
    import concurrent.futures

    def take(task) -> None:
        if not task.cancelled():
            task.exception()  # taken: no "Task exception was never retrieved" later

    cancelling = threading.Event()  # (set once settled() has cancelled tasks: they have their grace to end)

    async def settled() -> None:  # (ends by itself: no task of its own is left pending)
        deadline, cancelled = None, set()  # (the deadline counts from when the cancelled tasks have ended)
        while pending := asyncio.all_tasks() - {asyncio.current_task(), *_given_up}:  # (tasks a finished one left, too)
            # chunks still waiting for their turn are cancelled, in the order they queued: each takes its place out
            # of the queue, a search from its front (in any other order 65,536 of them took minutes). They end as the
            # loop comes to them (seconds for so many on a busy machine): not held to the deadline
            waiting = sorted((t for t in pending - cancelled if _waiting_for_its_turn(t) and (cancel or _orphaned(t))),
                             key=_creation_order)
            for task in waiting:
                task.cancel()
            cancelled.update(waiting)
            if waiting:
                cancelling.set()
                await asyncio.wait(waiting, timeout=_CANCELLED_GRACE)
                continue
            deadline = loop.time() + timeout if deadline is None else deadline
            done, left = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for task in done:
                take(task)
            if left and loop.time() >= deadline:
                for task in left:
                    _given_up.add(task)
                    task.add_done_callback(take)
                return

    future = asyncio.run_coroutine_threadsafe(settled(), loop)
    try:
        try:
            future.result(timeout + (_CANCELLED_GRACE if cancel else 0.0) + 1.0)
        except concurrent.futures.TimeoutError:
            if cancel or not cancelling.is_set():  # (a loop blocked: settled() never ran, or cancelled nothing)
                raise
            future.result(_CANCELLED_GRACE)  # cancelled tasks are not held to the timeout: their grace too
    except Exception:  # noqa: BLE001 - a loop stopped or blocked meanwhile: nothing more to do
        future.cancel()


#: How long :func:`settle_zarr` waits at most for the tasks it cancelled to end (beyond its timeout).
_CANCELLED_GRACE = 30.0


def _waiting_for_its_turn(task) -> bool:
    """Whether the asyncio ``task`` waits to acquire a semaphore, and so has not begun its work: the
    chunks of a zarr call beyond its limit of concurrent reads or writes (``async.concurrency``)."""
    awaited = task.get_coro()
    while awaited is not None:
        if getattr(awaited, "__qualname__", "") == "Semaphore.acquire":
            return True
        awaited = getattr(awaited, "cr_await", None)
    return False


def _orphaned(task) -> bool:
    """Whether no one waits for the asyncio ``task`` any more: it was handed to ``asyncio.gather``
    (zarr's ``concurrent_map``, one task per chunk), and that gather is over, its caller given the
    error of another of its tasks (a gather lets its other tasks go on then). Told from the gather's
    callback on the task and the gather's own future it holds; where that cannot be told (another
    Python's asyncio), False: the task is waited for."""
    import asyncio

    callbacks = getattr(task, "_callbacks", None)
    if not callbacks:
        return False
    for entry in callbacks:
        callback = entry[0] if isinstance(entry, tuple) else entry
        code, cells = getattr(callback, "__code__", None), getattr(callback, "__closure__", None)
        if (getattr(callback, "__qualname__", "") != "gather.<locals>._done_callback" or code is None or not cells
                or "outer" not in code.co_freevars):
            return False
        try:
            outer = cells[code.co_freevars.index("outer")].cell_contents
        except (ValueError, IndexError):  # (an empty cell: the gather is still being made)
            return False
        if not (isinstance(outer, asyncio.Future) and outer.done()):
            return False
    return True


def _creation_order(task) -> int:
    """The number asyncio names a task by (``Task-N``, counted up as tasks are made), else 0."""
    match = re.fullmatch(r"Task-(\d+)", task.get_name())
    return int(match.group(1)) if match else 0


#: zarr loop tasks :func:`settle_zarr` stopped waiting for (touched on that loop only).
_given_up: weakref.WeakSet = weakref.WeakSet()


def remove_stale_temporaries(path) -> list[Path]:
    """Delete leftovers of interrupted writes of ``path``; returns what was removed.

    A temporary that a process still running on this machine is writing is left alone.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    # a name like img[1].zarr is not a pattern; a TIFF output's scratch OME-Zarr is written under
    # a temporary name of its own temporary name (two leading dots)
    found = [q for dots in (".", "..") for q in parent.glob(f"{dots}{glob.escape(path.name)}.*{_TMP_SUFFIX}")] \
        if parent.is_dir() else []
    return _remove_stale(found)


def remove_stale_temporaries_in(folder, names) -> list[Path]:
    """Delete the leftovers of interrupted writes of the outputs ``names`` in ``folder``, listing
    it once (a batch sweeping each output's own listed the folder per file: 6.3 s over 2000
    files, growing with their square). Only names deconv3d writes (``.NAME.<host>@<pid>-<id>.tmp``,
    or a temporary of one) are touched: any other hidden ``.tmp`` entry is left alone."""
    names = set(names)
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(_TMP_SUFFIX)]
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is not None and match.group(1) in names:
            found.append(Path(entry.path))
    return _remove_stale(found)


#: ``.NAME.<host>@<pid>-<id>.tmp`` (:func:`temporary_name`), or a temporary of one (two dots, two tags).
_TEMPORARY = re.compile(r"^\.\.?(.+?)(?:" + _WRITER + "){1,2}$")  # group 1: the output's name


def _remove_stale(found) -> list[Path]:
    stale = []
    for entry in sorted(set(found)):
        if not _writer_alive(entry):
            try:
                _remove(entry)
            except OSError:  # held open (Windows), or no permission: left for a later sweep, not the run's end
                continue
            stale.append(entry)
    return stale
