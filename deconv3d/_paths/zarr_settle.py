"""Waiting for zarr's event loop to run no task after a failed zarr read or write
(:func:`settle_zarr`): the chunks still waiting for their turn that no one waits for any more are
cancelled (:func:`_waiting_for_its_turn`, :func:`_orphaned`), the ones being read or written waited
for up to a timeout, and those given up on are not waited for again (:data:`_given_up`)."""

from __future__ import annotations

import re
import threading
import weakref


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

    cancelling = threading.Event()  # (set once _settled() has cancelled tasks: they have their grace to end)
    future = asyncio.run_coroutine_threadsafe(_settled(loop, timeout, cancel, cancelling), loop)
    try:
        try:
            future.result(timeout + (_CANCELLED_GRACE if cancel else 0.0) + 1.0)
        except concurrent.futures.TimeoutError:
            if cancel or not cancelling.is_set():  # (a loop blocked: _settled() never ran, or cancelled nothing)
                raise
            future.result(_CANCELLED_GRACE)  # cancelled tasks are not held to the timeout: their grace too
    except Exception:  # noqa: BLE001 - a loop stopped or blocked meanwhile: nothing more to do
        future.cancel()


def _take(task) -> None:
    """Take the error of the finished asyncio ``task``, if any: no "Task exception was never retrieved" later."""
    if not task.cancelled():
        task.exception()


async def _settled(loop, timeout: float, cancel: bool, cancelling: threading.Event) -> None:
    """Run on zarr's ``loop`` by :func:`settle_zarr`: until no other task is left, cancel the chunks waiting for
    their turn (all of them with ``cancel``, else the orphaned ones) and wait for the others, giving up on those
    still running ``timeout`` seconds after the cancelled ones have ended. Sets ``cancelling`` once it has
    cancelled some. Ends by itself: no task of its own is left pending."""
    import asyncio

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
            _take(task)
        if left and loop.time() >= deadline:
            for task in left:
                _given_up.add(task)
                task.add_done_callback(_take)
            return


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
