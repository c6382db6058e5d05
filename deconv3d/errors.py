"""Exceptions for user-facing failures, and the warnings said on the way."""

import contextlib
import os
import re
import sys
import threading
import warnings as _warnings

#: Held around the library's ``warnings.catch_warnings`` blocks (not the command line's, which spans
#: a whole command in the main thread): the block saves and restores the process's filters, so two
#: of them overlapping in two threads left an "ignore" filter behind for good (a checkpoint loaded
#: while a PSF was generated; review of process-global state).
WARNINGS_LOCK = threading.RLock()

#: deconv3d's own modules, as the ``module`` of a warning filter names them.
OWN_MODULES = r"deconv3d(\.|$)"


def always_show_own_warnings(append: bool = False) -> None:
    """Put first among the warning filters (``append``: last, below every filter already there) one
    that shows each of deconv3d's own warnings every time it is issued, not once per place as Python's
    default does: a batch lists each file's warnings in its row, and a plain ``warnings.warn`` of the
    library (a PSF's flat floor) that the second file drew too was listed in the first file's row only."""
    _warnings.filterwarnings("always", module=OWN_MODULES, append=append)


class InputError(ValueError):
    """Bad user input: a missing or unreadable file, an invalid array or parameter.

    The message is one line that names the problem and how to fix it; the command
    line prints it as ``deconv3d: error: <message>`` and exits with status 2.

    ``without_file``: where the message names the input file (as ``a.tif is 2D``), the same message
    said of "the image" without its name (``the image is 2D``), set by the code that builds it
    (:func:`naming_image`); None where it is not given. A batch's lines name the file before the reason
    (:func:`deconv3d.pipeline.batch_file_run._reason`), and give this text where it is set, else the message.
    """

    without_file: str | None = None

    def __init__(self, *args, without_file: str | None = None):
        super().__init__(*args)
        if without_file is not None:
            self.without_file = without_file

    def __reduce__(self):
        """Pickled and copied with ``without_file`` (in ``__dict__``), across processes too (the processes
        scheduler, dask.distributed)."""
        return type(self), self.args, self.__dict__


def naming_image(say, name) -> InputError:
    """The refusal ``say(name)`` that names the input file ``name``, with ``say("the image")`` as its
    ``without_file``: ``say`` builds the one-line message about the image it is given the name of."""
    return InputError(say(name), without_file=say("the image"))


def naming_file(say, path) -> InputError:
    """The refusal ``say(path)`` that names the input file ``path``, with ``say("it")`` as its ``without_file``:
    for a line that reads well after a batch's naming of the file (``a.tif: cannot read it ...``)."""
    return InputError(say(path), without_file=say("it"))


def refusing_image(refuse, name) -> None:
    """Run ``refuse(name)``, a check that raises an :class:`InputError` naming the input file ``name``, with
    ``refuse("the image")``'s line as the refusal's ``without_file``: for a check written elsewhere that
    takes the name to say (``deconv3d._arrays.refuse_complex``). Nothing is raised where the check passes."""
    try:
        refuse(name)
    except InputError as exc:
        if exc.without_file is None:
            try:
                refuse("the image")
            except InputError as said:
                exc.without_file = str(said)
        raise


class BeyondFloat32(InputError):
    """Values of a float64 ``what`` (``"image"``, ``"PSF"``) past float32's range, which deconv3d computes in,
    the largest of them ``peak``: ``name`` (``"image /abs/a.tif"``) names the file as its reader knows it.
    :meth:`said_of` gives the line about another name, for a caller that knows how the user named the file (a
    chunked run's block reader holds the absolute path; :func:`deconv3d.pipeline.files.deconvolve_file`
    names the input as given)."""

    def __init__(self, name: str, peak: float, what: str = "image"):
        self.name, self.peak, self.what = name, float(peak), what
        super().__init__(self.said_of(name))

    def said_of(self, name: str) -> str:
        """The one line about the file ``name`` (``"image a.tif"``, ``"the image"``)."""
        return (f"{name} has values up to {self.peak:.3g}, beyond the float32 range (3.4e38) deconv3d computes in: "
                f"rescale the {self.what} and save it again")

    def __reduce__(self):
        """Pickled and copied with its fields (the default calls the class with the line alone)."""
        return type(self), (self.name, self.peak, self.what), self.__dict__


class PSFLargerThanImage(InputError):
    """A PSF larger than the image along some axis (:func:`deconv3d.psf.prepare_psf`). It keeps the
    shapes, ``psf_shape`` (as resampled to the image's voxel size) and ``image_shape``, so that a caller
    that knows the files can say which (:func:`deconv3d.io.naming_psf_and_image`)."""

    def __init__(self, message: str, psf_shape: tuple, image_shape: tuple):
        super().__init__(message)
        self.psf_shape, self.image_shape = tuple(psf_shape), tuple(image_shape)

    def __reduce__(self):
        """Pickled and copied with its shapes (the default calls the class with the message alone)."""
        return type(self), (self.args[0], self.psf_shape, self.image_shape), self.__dict__


#: What to do about NaN or Inf values in an image file.
NON_FINITE_FILE_FIX = "replace them (e.g. with 0) and save it again"


class NonFiniteValues(InputError):
    """NaN or Inf values in ``what`` (``"image"``), refused with ``fix``. It keeps where one was met, so
    that a caller that knows more can add it and still print one line: ``position`` (its index along
    ``letters``, the spatial axes: a chunked run's block finds it), ``volume`` (the time point and
    channel: ``"channel 1 at time point 0"``) and ``file`` (the input's name, which a batch's lines
    give before the reason: :meth:`line` leaves it out on request)."""

    def __init__(self, what: str, fix: str, position: tuple = (), letters: str = "", volume: str = "",
                 file: str = ""):
        self.what, self.fix, self.volume, self.file = what, fix, volume, file
        self.position = tuple(int(i) for i in position)
        self.letters = letters or "zyx"[-len(self.position):]
        super().__init__(self.line())

    def line(self, with_file: bool = True) -> str:
        """The one line: ``image a.tif contains NaN or Inf values (one at z-y-x (2, 3, 4) of time point 1):
        FIX``; where ``with_file`` is False, said of ``the image`` (as a batch's other reasons say it) without
        the file's name."""
        name = f"the {self.what}" if not with_file else f"{self.what} {self.file}" if self.file else self.what
        of = f" of {self.volume}" if self.volume else ""
        at = f" (one at {'-'.join(self.letters.lower())} {self.position}{of})" if self.position else \
            f" (in {self.volume})" if self.volume else ""
        return f"{name} contains NaN or Inf values{at}: {self.fix}"

    def __reduce__(self):
        """Pickled and copied with its fields: the default calls the class with ``args`` (the line alone),
        which raised a TypeError on loading (dask.distributed brought a block's refusal back only through
        tblib's own reducer, which it installs on the class)."""
        return type(self), (self.what, self.fix, self.position, self.letters, self.volume, self.file), self.__dict__

    def with_details(self, **details) -> "NonFiniteValues":
        """The same refusal with ``details`` (any of the constructor's keywords) replaced."""
        keep = dict(position=self.position, letters=self.letters, volume=self.volume, file=self.file)
        return NonFiniteValues(details.pop("what", self.what), details.pop("fix", self.fix), **{**keep, **details})


class Cancelled(Exception):
    """Raised where a caller cancels a run whose result would be incomplete: a chunked run
    (:func:`deconv3d.pipeline.run_chunked`: its progress callback returns True, or its ``cancel``
    event is set), a network's prediction or in-memory training (:mod:`deconv3d.selfsup`). Nothing
    is returned or written. ``deconv3d.pipeline.Cancelled`` and ``deconv3d.selfsup.Cancelled`` are
    this class."""


class Deconv3dWarning(RuntimeWarning):
    """A warning :func:`warn` issues: what a run assumed or noticed about its input (a voxel size
    taken from the PSF, many negative voxels). The command line always prints these, whatever
    ``PYTHONWARNINGS`` says (they were printed lines before they were warnings).

    ``without_file``: where the warning names the input file, the same text said of "the image", set by
    the code that words it (``warn``'s ``without_file``); None where it is not given. A batch lists the
    warning so in the file's row (:mod:`deconv3d.pipeline.row_warnings`), which names the file."""

    without_file: str | None = None


class OptionWarning(Deconv3dWarning):
    """A warning whose advice names keyword arguments of the Python API (``voxel_size``);
    ``command_line`` holds the same advice naming the command line's options (``--voxel-size``),
    which the command line prints instead."""

    command_line_without_file: str | None = None  # ``command_line`` said of "the image" (see ``without_file``)

    def __init__(self, message: str, command_line: str):
        super().__init__(message)
        self.command_line = command_line


_RECORDING = threading.local()  # .lists: the lists of the recorded_warnings blocks open in this thread


@contextlib.contextmanager
def recorded_warnings():
    """A list of each warning (the :class:`Warning` itself: its category and text, an
    :class:`OptionWarning`'s ``command_line`` too) that deconv3d issues through :func:`warn` or
    :func:`note_warning` in this thread while the block runs (issued as before too): what a caller that
    keeps a result (the batch's prepared PSFs, :func:`deconv3d.pipeline.prepared_psfs.load_psf_for`) issues
    again, as it was, each time it hands the result out, as computing it anew would."""
    kept: list[Warning] = []
    lists = _RECORDING.__dict__.setdefault("lists", [])
    lists.append(kept)
    try:
        yield kept
    finally:
        lists.remove(kept)


def note_warning(message: Warning) -> None:
    """Add ``message``, about to be issued, to the lists of the :func:`recorded_warnings` blocks open
    in this thread."""
    for kept in getattr(_RECORDING, "lists", ()):
        kept.append(message)


PREFIX = "deconv3d: warning: "
#: The command line's options that warnings name, and the keyword arguments (of
#: :class:`~deconv3d.pipeline.batch.Settings` and :func:`~deconv3d.pipeline.run_chunked`) that set the same.
_KEYWORDS = {"--voxel-size": "voxel_size", "--memory-limit": "memory_limit", "--chunks": "chunks",
             "--pyramid-levels": "pyramid_levels"}
_OPTIONS = re.compile(r"--(?:voxel-size|memory-limit|chunks|pyramid-levels)\b")
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(line: str, warnings: list | None = None, without_file: str | None = None) -> None:
    """Append a ``deconv3d: warning: ...`` line to ``warnings`` (for a caller that prints them
    once the input is checked, so that a refusal says only its error), else issue it as a
    :class:`Deconv3dWarning`, a RuntimeWarning (an :class:`OptionWarning` naming the keyword
    arguments where the line names command-line options), located at the caller outside deconv3d.

    Every call warns, as the line printed before did (no once-per-location registry): a folder's
    files that each assume a voxel size each say so. The command line shows it as the same line.
    ``without_file``: where ``line`` names the input file, the line said of "the image" (the
    warning's ``without_file``, :func:`warning_naming_image`).
    """
    if warnings is not None:
        warnings.append(line)
        return
    text = line.removeprefix(PREFIX)
    api = _OPTIONS.sub(lambda match: _KEYWORDS[match[0]], text)
    message = Deconv3dWarning(text) if api == text else OptionWarning(api, text)
    if without_file is not None:
        said = without_file.removeprefix(PREFIX)
        message.without_file = _OPTIONS.sub(lambda match: _KEYWORDS[match[0]], said)
        if isinstance(message, OptionWarning):
            message.command_line_without_file = said
    note_warning(message)
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    if frame is None:  # called from deconv3d only (python -m deconv3d): as warnings.warn says it
        _warnings.warn_explicit(message, type(message), "sys", 1, registry=None)
    else:  # no module_globals, as warnings.warn passes none: with them, the warning machinery asks the
        # module's loader for the line, which raises for __main__ run by ``python -c``, ``-m`` or a prompt
        _warnings.warn_explicit(message, type(message), frame.f_code.co_filename, frame.f_lineno,
                                module=frame.f_globals.get("__name__"), registry=None)


def warning_naming_image(say, name, warnings: list | None = None) -> None:
    """:func:`warn` the line ``say(name)`` about the input file ``name``, with ``say("the image")`` as its
    ``without_file``: ``say`` words the line about the image it is given the name of."""
    warn(say(name), warnings, without_file=say("the image"))


def outside_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` in the function that calls this which points at
    the first caller outside deconv3d (the user's code), however deep inside the package it is."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def refuse_non_finite(result, what: str, fix: str) -> None:
    """Refuse to write a result with NaN or Inf values: one line naming ``what`` and the ``fix``."""
    import numpy as np

    if not np.isfinite(result).all():
        raise InputError(f"the {what} has NaN or Inf values {fix}")


def refuse_no_positive(source, method: str, of_image: str | None = None) -> None:
    """Refuse background-subtracted data with negative values and no positive one: Richardson-Lucy
    and the network return only zeros for it (``method`` "train": the network would learn nothing),
    and Wiener's output, clipped at 0, only the positive lobes of its ringing. ``of_image``: ``source``
    said of "the image", where ``source`` names the input file (the refusal's ``without_file``)."""
    outcome = "wiener's output, clipped at 0, would hold only ringing" if method == "wiener" else \
        f"{method} would return only zeros"
    say = f" has no positive values, so {outcome}: {NEGATIVE_FIX}"
    raise InputError(f"{source}{say}", without_file=f"{of_image}{say}" if of_image else None)


def require_config(value, cls, name: str) -> None:
    """Refuse ``value`` unless it is a ``cls`` (a configuration class), naming the argument ``name``:
    a dict of its fields failed deep inside with "'dict' object has no attribute ..."."""
    if not isinstance(value, cls):
        how = f"{cls.__name__}(**{name})" if isinstance(value, dict) else f"{cls.__name__}(...)"
        article = "an" if cls.__name__[0] in "AEIO" else "a"
        raise InputError(f"{name} must be {article} {cls.__name__}, got {type(value).__name__}: pass {how}")


#: Richardson-Lucy and the self-supervised network warn when more than this share of the voxels is negative.
NEGATIVE_SHARE = 0.01


def warn_negative_share(share: float, source, method: str, warnings: list | None = None, sampled: str = "",
                        part: str = "") -> None:
    """Warn (see :func:`warn`) when more than :data:`NEGATIVE_SHARE` of the voxels are negative:
    background-subtracted data, which Richardson-Lucy counts as 0 and the network's output cannot
    reach. ``part`` says which channel or time points of the image the share is of (" in channel 1"),
    ``sampled`` which part of those it was measured on, if not all of it. ``source`` names the image (its
    file, for a run of one): the warning's ``without_file`` says "the image"."""
    if share > NEGATIVE_SHARE:
        how = {"rl": "Richardson-Lucy counts them as 0", "rl-tv": "Richardson-Lucy counts them as 0",
               "wiener": "Wiener's output is clipped at 0, which raises its mean"}.get(
            method, "the network's output, like Richardson-Lucy's, cannot go below 0")
        warning_naming_image(lambda image: f"deconv3d: warning: {share:.0%} of {image}'s voxels{part}{sampled} are "
                             f"negative (a subtracted offset?); {how}: {NEGATIVE_FIX}", source, warnings)


#: What to do about negative (background-subtracted) data: every method's output is non-negative
#: (Wiener's is clipped at 0), so the Wiener suggested before gave a clipped result as well.
NEGATIVE_FIX = "add the subtracted offset back"
