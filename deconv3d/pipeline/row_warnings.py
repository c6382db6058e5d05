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
warning had it in no row. While rows listen, a filter put first among the warning filters
(:func:`~deconv3d.errors.always_show_own_warnings`) shows deconv3d's own warnings every time, in every
thread; the last row to stop listening takes that one filter out again (and puts back, where it was,
an equal one of the caller's that putting it first moved), leaving the others as they are: what the
caller's filters were before the batch, they are after it, other threads' changes meanwhile
included. (A caller's ``catch_warnings`` block that ends while a batch still runs in another thread
puts back its own filters, without this one.)
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from deconv3d._paths import path_text
from deconv3d.errors import WARNINGS_LOCK, always_show_own_warnings

_ROWS_LOCK = threading.Lock()  # around _ROWS (the dispatcher takes only this one)
#: A thread's id -> the warnings lists of the rows listening in it, the innermost last.
_ROWS: dict[int, list[list]] = {}
_replaced = warnings.showwarning  # the hook the dispatcher passes warnings on to
#: While rows listen: the filter put first, and where an equal one of the caller's was (or None).
_always: tuple | None = None


def _dispatch(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` while rows listen: the warning's text into the row it belongs to,
    then the warning on to the hook this replaced."""
    with _ROWS_LOCK:
        own = _ROWS.get(threading.get_ident())
        listening = [rows[-1] for rows in _ROWS.values()]
        listed = own[-1] if own else listening[0] if len(listening) == 1 else None
        if listed is not None:
            listed.append(path_text(str(message)))
    _replaced(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def warnings_into(row: dict):
    """Add the text of each warning shown while the block runs (in this thread, or in another thread
    while no other row listens) to ``row["warnings"]``, and show it as before, through the caller's
    ``warnings.showwarning`` (a GUI's hook, ``catch_warnings``' recorder, the command line's). The
    caller's warning filters decide which are shown, and so listed ("ignore": none)."""
    global _replaced
    listed, thread = row["warnings"], threading.get_ident()
    with WARNINGS_LOCK:  # (not inside a library's catch_warnings block, which would undo it)
        if warnings.showwarning is not _dispatch:
            _replaced, warnings.showwarning = warnings.showwarning, _dispatch
        with _ROWS_LOCK:
            first = not _ROWS
            _ROWS.setdefault(thread, []).append(listed)
        if first:
            _show_own_always()
    try:
        yield
    finally:
        with WARNINGS_LOCK:
            with _ROWS_LOCK:
                rows = _ROWS[thread]
                del rows[max(i for i, r in enumerate(rows) if r is listed)]
                if not rows:
                    del _ROWS[thread]
                idle = not _ROWS
            if idle and warnings.showwarning is _dispatch:
                warnings.showwarning = _replaced
            if idle:
                _take_out_always()


def _show_own_always() -> None:
    """Put first the filter that shows deconv3d's own warnings every time (see the module's notes)."""
    global _always
    before = list(warnings.filters)
    always_show_own_warnings()
    shown = warnings.filters[0]
    _always = shown, next((i for i, f in enumerate(before) if f == shown), None)


def _take_out_always() -> None:
    """Take out the filter :func:`_show_own_always` put first, and put an equal one of the caller's back
    where it was. (While it was first, deconv3d's warnings left no mark in the registries of warnings
    already shown, and the others' marks do not depend on it: taking it out needs no fresh start of them.)"""
    global _always
    if _always is None:
        return
    (shown, where), _always = _always, None
    filters = warnings.filters
    at = next((i for i, f in enumerate(filters) if f is shown), None)
    if at is not None:
        del filters[at]
        if where is not None:
            filters.insert(where, shown)
