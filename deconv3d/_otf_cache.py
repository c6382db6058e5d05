"""The cache of optical transfer functions that all :class:`deconv3d.fft.FFTConvolver` share
(:class:`OtfCache`): bounded by bytes, the least recently used dropped first, thread safe.
:mod:`deconv3d._fft_convolver` holds the one instance, :mod:`deconv3d.fft` its limit,
:data:`deconv3d.fft.OTF_CACHE_BYTES`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch

from deconv3d._lru import drop_oldest


class OtfCache:
    """The OTFs of all convolvers, keyed by ``(convolver token, FFT shape, origin)``: at most
    ``max_bytes()`` in all (read at each store: :data:`deconv3d.fft.OTF_CACHE_BYTES`), the least
    recently used dropped first, but the most recent kept whatever its size, alone where larger (not
    kept, a large stack's OTF was computed again at every call). A convolver's OTFs go with it
    (:meth:`forget`). Thread safe (pipeline blocks call from worker threads)."""

    def __init__(self, max_bytes: Callable[[], int]):
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()
        self._gone: list = []  # tokens of convolvers collected while the lock was held

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            self._drop_gone()
            otf = self._entries.get(key)
            if otf is not None:
                self._entries.move_to_end(key)
            return otf

    def put(self, key: tuple, otf: torch.Tensor) -> torch.Tensor:
        """Keep ``otf`` under ``key``, dropping the least recently used others until the rest fits or
        it is alone; the one kept already (another thread's) if any."""
        with self._lock:
            self._drop_gone()
            if key in self._entries:
                return self._entries[key]
            self._entries[key] = otf
            self.nbytes = drop_oldest(self._entries, _tensor_bytes, self._max_bytes(), self.nbytes + _tensor_bytes(otf))
        return otf

    def forget(self, token) -> None:
        """Drop the OTFs of a convolver that is gone: now, or at the next call where the lock is held
        (a finalizer may run inside a call of this very thread)."""
        self._gone.append(token)
        if self._lock.acquire(blocking=False):
            try:
                self._drop_gone()
            finally:
                self._lock.release()

    def _drop_gone(self) -> None:
        if not self._gone:
            return
        gone = set()
        while self._gone:
            gone.add(self._gone.pop())
        for key in [k for k in self._entries if k[0] in gone]:
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        self.nbytes -= _tensor_bytes(self._entries.pop(key))


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
