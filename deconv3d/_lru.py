"""Caches that keep their most recently used entries up to a number of bytes: the OTFs of
:mod:`deconv3d.fft`, a batch's prepared PSFs (:func:`deconv3d.pipeline.prepared_psfs.load_psf_for`)."""

from __future__ import annotations

from typing import Callable, Optional


def drop_oldest(entries: dict, size: Callable, cap: int, total: Optional[int] = None,
                count: Optional[int] = None) -> int:
    """Drop the oldest of ``entries`` (a dict in order of use, the least recently used first) while
    they hold more than ``cap`` bytes, or more than ``count`` entries where given; the newest is
    kept whatever its size, alone where larger (a large stack's OTF, not kept, was computed again
    at every call). ``size(value)`` is an entry's bytes and ``total`` their sum, counted here where
    not given. Returns the bytes kept."""
    total = sum(size(value) for value in entries.values()) if total is None else total
    while len(entries) > 1 and (total > cap or (count is not None and len(entries) > count)):
        total -= size(entries.pop(next(iter(entries))))
    return total
