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
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from deconv3d._paths import path_text
from deconv3d.errors import WARNINGS_LOCK

_ROWS_LOCK = threading.Lock()  # around _ROWS (the dispatcher takes only this one)
#: A thread's id -> the warnings lists of the rows listening in it, the innermost last.
_ROWS: dict[int, list[list]] = {}
_replaced = warnings.showwarning  # the hook the dispatcher passes warnings on to


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
            _ROWS.setdefault(thread, []).append(listed)
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
