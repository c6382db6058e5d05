"""Each batch file's warnings listed in its report row, with batches run in several threads at once.

``warnings.showwarning`` is one hook for the whole process. A hook that each file's run swapped in and
restored crossed the rows of two batches run in two threads (each saved the other's hook) and stayed
installed after both, so that a later, unrelated warning landed in a finished row. One dispatcher is
installed instead while any row listens (:func:`warnings_into`); it passes every warning on to the hook
it replaced and adds the warning's text to the row listening in the warning's thread, or, for a warning
from a thread with no row of its own (a worker thread computing a file's blocks), to the only row
listening when exactly one is (with two or more, which one it belongs to is not known: none). The
replaced hook is put back when the last row stops listening, unless another hook has taken the
dispatcher's place meanwhile; a dispatcher that a ``catch_warnings`` block puts back later lists
nothing, as no row listens.

With Python's default filters a warning is shown once per place, so the second file that drew a
warning had it in no row. While rows listen, a filter added last, below the caller's
(:func:`~deconv3d.errors.always_show_own_warnings`), shows deconv3d's own warnings every time where
none of the caller's filters decides (put first, it overrode a caller's "ignore" or "error"); the
last row to stop listening takes that one filter out again (none is added where the caller has an
equal one), leaving the others as they are: what the caller's filters were before the batch, they
are after it, other threads' changes meanwhile included. (A caller's ``catch_warnings`` block that
ends while a batch still runs in another thread puts back its own filters, without this one.) Each
file's start changes the filter list, which makes Python forget which warnings it has shown: under a
caller's catch-all ``"default"`` (``python -W default``) a repeat of an earlier file's warning is
still shown, and listed, once per file.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from deconv3d._paths import path_text
from deconv3d.errors import WARNINGS_LOCK, always_show_own_warnings

_ROWS_LOCK = threading.Lock()  # around _ROWS (the dispatcher takes only this one)
#: A thread's id -> (warnings list, hook) of the rows listening in it, the innermost last: the hook
#: in place in that thread when the row began (a caller's catch_warnings(record=True) recorder).
_ROWS: dict[int, list[tuple]] = {}
_replaced = warnings.showwarning  # the hook in place when the first row began: put back after the last
#: A thread's id -> the hook of its last row to end while other threads' rows listened, and the
#: recording in place then (:func:`_recording`): its next row, begun with the dispatcher in place,
#: passes on to that hook while that recording lasts (a caller's recorder around a whole batch), else
#: to the first row's (the recorder closed: Python's plain hook would print what a GUI's hook took).
_LAST_HOOK: dict[int, tuple] = {}


def _recording():
    """What Python's plain ``showwarning`` sends a warning to now: a ``catch_warnings(record=True)``
    block replaces it (a private part of the warnings module; None where it is missing)."""
    return getattr(warnings, "_showwarnmsg_impl", None)
#: While rows listen: the filter added last (None where the caller had an equal one).
_always: tuple | None = None


def _dispatch(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` while rows listen: the warning's text into the row it belongs to,
    then the warning on to the hook that row's thread had (another thread's: the first row's)."""
    with _ROWS_LOCK:
        own = _ROWS.get(threading.get_ident())
        listening = [rows[-1] for rows in _ROWS.values()]
        row = own[-1] if own else listening[0] if len(listening) == 1 else None
        if row is not None:  # (listed, hook)
            row[0].append(path_text(getattr(message, "without_file", None) or str(message)))
        hook = own[-1][1] if own else _replaced
    hook(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def warnings_into(row: dict):
    """Add the text of each warning shown while the block runs (in this thread, or in another thread
    while no other row listens) to ``row["warnings"]``, and show it as before, through the caller's
    ``warnings.showwarning`` (a GUI's hook, ``catch_warnings``' recorder, the command line's). The
    caller's warning filters decide which are shown, and so listed ("ignore": none). Where the code that
    words a warning about the input file sets its text said of "the image" (the warning's ``without_file``:
    :class:`~deconv3d.errors.Deconv3dWarning`), the row lists that text, as the row names the file
    (``in/b.tif carries no voxel size`` is listed as ``the image carries no voxel size``); it is shown as it
    was."""
    listed, thread = row["warnings"], threading.get_ident()
    _start_listing(listed, thread)
    try:
        yield
    finally:
        _stop_listing(listed, thread)


def _start_listing(listed: list, thread: int) -> None:
    """Register ``listed`` as the list of a row of ``thread``, with the hook its warnings are shown
    through, and put :func:`_dispatch` in place (the first row: also the filter of deconv3d's own)."""
    global _replaced
    with WARNINGS_LOCK:  # (not inside a library's catch_warnings block, which would undo it)
        with _ROWS_LOCK:
            first = not _ROWS
            own = _ROWS.get(thread)
            hook = warnings.showwarning
            if hook is _dispatch:  # this thread's enclosing row's hook, or its last row's, else the first row's
                last, recording = _LAST_HOOK.get(thread, (None, None))
                hook = own[-1][1] if own else last if last is not None and recording is _recording() \
                    else _replaced
            # The hook put back after the last row is the one in place when the first began: a later
            # row begun inside a caller's catch_warnings(record=True) (which resets the hook to
            # Python's) took that one instead, and the first row's end put it back for good.
            if first:
                _replaced = hook
            _ROWS.setdefault(thread, []).append((listed, hook))
        warnings.showwarning = _dispatch
        if first:
            _show_own_always()


def _stop_listing(listed: list, thread: int) -> None:
    """Take the row of ``listed`` out of ``thread``'s rows; after the last row of all, put back the
    hook that was in place when the first began, and the filters."""
    with WARNINGS_LOCK:
        with _ROWS_LOCK:
            rows = _ROWS[thread]
            at = max(i for i, (r, *_) in enumerate(rows) if r is listed)
            if len(rows) == 1:
                _LAST_HOOK[thread] = rows[0][1], _recording()
            del rows[at]
            if not rows:
                del _ROWS[thread]
            idle = not _ROWS
            if idle:
                _LAST_HOOK.clear()
        if idle and warnings.showwarning is _dispatch:
            warnings.showwarning = _replaced
        if idle:
            _take_out_always()


def _show_own_always() -> None:
    """Add, last, the filter that shows deconv3d's own warnings every time (see the module's notes)."""
    global _always
    before = list(warnings.filters)
    always_show_own_warnings(append=True)
    _always = next((f for f in warnings.filters if not any(f is b for b in before)), None)  # (None: had one)


def _take_out_always() -> None:
    """Take out the filter :func:`_show_own_always` added, wherever it now is. (While it was there,
    deconv3d's warnings left no mark in the registries of warnings already shown, and the others'
    marks do not depend on it: taking it out needs no fresh start of them.)"""
    global _always
    if _always is None:
        return
    added, _always = _always, None
    filters = warnings.filters
    at = next((i for i, f in enumerate(filters) if f is added), None)
    if at is not None:
        del filters[at]
