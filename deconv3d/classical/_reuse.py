"""One set-up, the OTF (and for Richardson-Lucy Bertero's ``1 / H^T 1``), kept from one block of a
chunked run for the next block of the same shape.

Both depend only on the PSF, the shape, the boundary, the device and the dtype, not on the data,
yet every block computed them again: 9 of each in a 96 x 384 x 384 run (its measuring box and 8
blocks in 3 shapes), 18 % of its CPU; kept, and with the blocks grouped by shape
(:func:`deconv3d.pipeline.block_geometry.block_regions`), 4 of each, 9 %. Only a caller that names an owner
(:func:`reusing_setup`: :class:`deconv3d.pipeline.RichardsonLucyBlock` names the run of its
block) keeps a set-up, and only until the run ends: the run drops it then (:func:`drop_setup`, in a
``finally``: done, failed or cancelled), and a weak reference to the owner drops it where the owner
goes first. The weak reference alone was not enough: a run that failed in a block lived on in the
exception's traceback (a reference cycle through the block's future) until the garbage collector
came, and its OTF and weight with it. An in-memory call of
:func:`deconv3d.classical.richardson_lucy` keeps nothing once it returns.

Wiener keeps its OTF the same way (:func:`deconv3d.classical.wiener`, for
:class:`deconv3d.pipeline.WienerBlock`), under a key of its own, so RL's and Wiener's never mix: it
computed the OTF again in every block too, 18 times for the 18 blocks in 4 shapes of a 24 x 48 x 48
test run, where 4 serve.

At most one set-up is kept in the process, and a call of another shape, PSF or owner drops it
before building its own. So besides the blocks in flight, which hold their own set-ups (as the
memory model counts them: :mod:`deconv3d.pipeline.memory_model`), it holds between blocks at most one
OTF and one weight, less than the block that built them held.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import NamedTuple, Optional

import torch

_local = threading.local()  # .owner: whom this thread's set-ups are kept for (None: not kept)


class Setup(NamedTuple):
    owner: weakref.ref
    key: tuple  # RL: boundary, data shape, FFT shape, device, dtype; Wiener: "wiener", FFT shape, device, dtype
    psf: torch.Tensor  # a private copy, compared value by value
    otf: torch.Tensor  # never written: shared by every problem built from it
    inv_weight: Optional[torch.Tensor]  # likewise; None where no caller needed it yet


_kept: list = [None]  # the one Setup kept; replaced or cleared whole (one assignment: no lock needed)


@contextlib.contextmanager
def reusing_setup(owner):
    """Within, set-ups that this thread builds are kept for the next call naming the same ``owner``
    (any object that allows weak references; None keeps nothing) until the owner's run drops them
    (:func:`drop_setup`) or ``owner`` is gone."""
    previous = getattr(_local, "owner", None)
    _local.owner = owner
    try:
        yield
    finally:
        _local.owner = previous


def kept_setup(key: tuple, psf: torch.Tensor) -> Optional[Setup]:
    """The set-up kept for ``key`` and ``psf`` (values equal) by this thread's owner, or None: then
    the set-up kept for another is dropped, before the caller builds its own."""
    owner = getattr(_local, "owner", None)
    if owner is None:
        return None
    kept = _kept[0]
    if kept is not None and kept.owner() is owner and kept.key == key and torch.equal(kept.psf, psf):
        return kept
    _kept[0] = None
    return None


def keep_setup(key: tuple, psf: torch.Tensor, otf: torch.Tensor, inv_weight: Optional[torch.Tensor]) -> None:
    """Keep this set-up for this thread's owner, if it has one (``psf``: a private copy)."""
    owner = getattr(_local, "owner", None)
    if owner is not None:
        _kept[0] = Setup(weakref.ref(owner, _forget), key, psf, otf, inv_weight)


def kept_or_built(key: tuple, psf: torch.Tensor, build_otf, build_weight=None):
    """``(otf, inv_weight)``: those kept for ``key`` and ``psf`` by this thread's owner, else built by
    ``build_otf()`` and, where given, ``build_weight()`` (then kept for the next call). ``inv_weight``
    is None where ``build_weight`` is None; one kept without a weight gets it built and kept."""
    kept = kept_setup(key, psf)
    otf = build_otf() if kept is None else kept.otf
    if build_weight is None:
        if kept is None:
            keep_setup(key, psf, otf, None)
        return otf, None
    weight = None if kept is None else kept.inv_weight
    if weight is None:  # something new to keep
        weight = build_weight()
        keep_setup(key, psf, otf, weight)
    return otf, weight


def drop_setup(owner) -> None:
    """Drop the set-up kept for ``owner``, if it is the one kept: its run has ended."""
    kept = _kept[0]
    if kept is not None and kept.owner() is owner:
        _kept[0] = None


def _forget(ref: weakref.ref) -> None:
    """Drop the set-up of an owner that is gone (its run ended)."""
    kept = _kept[0]
    if kept is not None and kept.owner is ref:
        _kept[0] = None
