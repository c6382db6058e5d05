"""The convolver of :mod:`deconv3d.fft`: :class:`FFTConvolver`, convolution and correlation with one
fixed kernel whose optical transfer function (OTF) is computed once per FFT shape and kept in the
cache that all convolvers share (at most :data:`deconv3d.fft.OTF_CACHE_BYTES`). Public as
``deconv3d.fft.FFTConvolver``; the functions over it (:func:`deconv3d.fft.fft_convolve`,
:func:`deconv3d.fft.fft_correlate`, :func:`deconv3d.fft.get_convolver`) live there.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Sequence

import torch

from deconv3d._arrays import refuse_empty
from deconv3d._fft_shapes import fast_shape, irfftn, kernel_origin, pad_spatial, same_fft_shape
from deconv3d._otf_cache import OtfCache
from deconv3d._tensors import as_finite_tensor, as_tensor, checked_result, resolve_device
from deconv3d.errors import InputError

PADDINGS = ("zero", "reflect", "circular")


def _otf_cache_limit() -> int:
    """:data:`deconv3d.fft.OTF_CACHE_BYTES`, read at each store (users set it there)."""
    from deconv3d import fft  # (deconv3d.fft imports this module)

    return fft.OTF_CACHE_BYTES


_OTF_CACHE = OtfCache(_otf_cache_limit)


class FFTConvolver:
    """Convolution and correlation with one fixed kernel, its OTF cached per FFT shape.

    Parameters
    ----------
    psf : array_like or torch.Tensor
        Kernel with 1 to 3 dimensions. It is used as given (not normalised or flipped). A tensor
        that requires grad (a PSF being fitted) is read at each call, its current values, and
        results are differentiable with respect to it; its OTFs are then not cached. Any other
        kernel is copied and fixed.
    device : str or torch.device, optional
        Where the OTFs live and the work runs (``"auto"`` picks CUDA when present).
    dtype : torch.dtype, optional
        Real dtype of the computation, float32 by default (float64 for references).
    cache : bool, optional
        Keep the OTFs in the cache that all convolvers share (True, the default), or, for a
        convolver built for one call and dropped after it (Richardson-Lucy's, Wiener's), only the
        most recent one, in the convolver itself: put in the shared cache, such an OTF pushed out
        the ones kept there for :func:`fft_convolve` and went with its convolver at the call's end.

    Notes
    -----
    Inputs may carry leading batch and channel dimensions; the FFTs run over the last
    ``psf.ndim`` axes. The OTF of the kernel, zero-padded to the FFT shape and rolled so
    that its origin (see :func:`kernel_origin`) sits at index 0, is computed on first use
    of a shape and kept for the next use, in a cache that all convolvers share and that holds at
    most :data:`deconv3d.fft.OTF_CACHE_BYTES` (the least recently used OTFs dropped first; the most recent one is
    kept whatever its size).

    Examples
    --------
    >>> import numpy as np
    >>> conv = FFTConvolver(np.ones((3, 3)) / 9, device="cpu")
    >>> y = conv.convolve(np.eye(8, dtype=np.float32))
    >>> tuple(y.shape)
    (8, 8)
    """

    def __init__(self, psf, *, device="cpu", dtype: torch.dtype = torch.float32, cache: bool = True):
        self.device = resolve_device(device)
        if not isinstance(dtype, torch.dtype):
            raise InputError(f"dtype must be a torch dtype such as torch.float32, got {dtype!r}")
        if dtype not in (torch.float32, torch.float64):  # int32 truncated the PSF to 0; float16 has no FFT here
            raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dtype = dtype
        # Checked once per kernel: a NaN would fill every OTF and output.
        # A private copy: a view of the caller's array would change under the cached OTFs. A kernel
        # that requires grad (being fitted) is read afresh at each call instead, its OTFs not cached
        # (see otf): a detached copy dropped its gradient silently.
        kernel = as_finite_tensor(psf, "PSF", self.device, dtype)
        self._fitted = psf if kernel.requires_grad else None
        self.psf = kernel if kernel.requires_grad else kernel.detach().clone()
        if not 1 <= self.psf.ndim <= 3:
            raise InputError(f"PSF must be 1D, 2D or 3D, got {self.psf.ndim}D: pass a single PSF volume")
        refuse_empty(self.psf.shape, "PSF", "value")  # (scipy's fftconvolve returns an empty array)
        self.ndim = self.psf.ndim
        self.origin = kernel_origin(self.psf.shape)
        self._cache_token = object()  # its OTFs' key in _OTF_CACHE (an id() is reused; a pickled copy gets its own)
        self.cache = bool(cache)
        self._own: tuple | None = None  # (key, OTF): the most recent, where cache is False
        self._forget_otfs_when_gone()

    def _forget_otfs_when_gone(self) -> None:
        if self._fitted is None and self.cache:  # (a kernel being fitted caches nothing)
            weakref.finalize(self, _OTF_CACHE.forget, self._cache_token).atexit = False

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_cache_token"]
        state["_own"] = None  # (an OTF: computed again where needed)
        return state

    def __setstate__(self, state: dict) -> None:
        """A copy (pickled, ``copy.copy``, ``copy.deepcopy``) gets a token of its own and drops its
        OTFs from the shared cache when it goes, as one built anew: set up in ``__init__`` alone,
        the copies' OTFs stayed in the cache after them."""
        self.__dict__.update(state)
        self._cache_token = object()
        self._forget_otfs_when_gone()

    @property
    def dims(self) -> tuple[int, ...]:
        """The spatial axes, counted from the end."""
        return tuple(range(-self.ndim, 0))

    def otf(self, fft_shape: Sequence[int], origin: Sequence[int] | None = None) -> torch.Tensor:
        """Half-spectrum OTF for ``fft_shape`` (cached unless the kernel requires grad; with
        ``cache=False`` only the most recent, in the convolver), kernel ``origin`` rolled to index 0."""
        origin = self.origin if origin is None else tuple(origin)
        key = (self._cache_token, tuple(fft_shape), origin)
        if not self.cache:
            own = self._own
            if own is not None and own[0] == key:
                return own[1]
        else:
            otf = _OTF_CACHE.get(key)
            if otf is not None:
                return otf
        if any(s < k for s, k in zip(fft_shape, self.psf.shape)):
            raise InputError(f"FFT shape {tuple(fft_shape)} is smaller than the PSF {tuple(self.psf.shape)}")
        kernel = self.psf if self._fitted is None else as_tensor(self._fitted, self.device, self.dtype)
        otf = torch.fft.rfftn(_wrapped(kernel, tuple(fft_shape), origin), dim=self.dims)
        if self._fitted is not None:  # a graph per call: a cached one is freed by the first backward, stale after a step
            return otf
        if not self.cache:
            self._own = (key, otf)
            return otf
        return _OTF_CACHE.put(key, otf)

    def same_fft_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Smallest fast FFT shape with which a zero-padded "same" convolution does not wrap."""
        return same_fft_shape(shape, self.psf.shape)

    def convolve(self, x, mode: str = "same", padding: str = "zero") -> torch.Tensor:
        """Convolve ``x`` with the kernel.

        Parameters
        ----------
        x : array_like or torch.Tensor
            Input; its last ``psf.ndim`` axes are spatial.
        mode : {"same", "full"}
            Output the input's size (centred as scipy does) or the full linear convolution.
        padding : {"zero", "reflect", "circular"}
            How the input continues beyond its border ("same" mode only for the latter two).

        Raises
        ------
        InputError
            For an array ``x`` (not a tensor) that is complex, holds NaN or Inf or values beyond
            the convolver's dtype, or whose result overflows it (a float32 array of 1e37: its
            transform's zero frequency sums past 3.4e38), as :func:`~deconv3d.fft.fft_convolve`
            refuses them; a tensor ``x`` is not checked (no extra pass, nor a GPU synchronisation,
            per call). Also for fewer dimensions than the PSF, an empty ``x``, or an unknown
            ``mode`` or ``padding``.
        """
        return self._checked(x, mode, padding, adjoint=False)

    def correlate(self, x, mode: str = "same", padding: str = "zero") -> torch.Tensor:
        """Correlate ``x`` with the kernel: the adjoint (transpose) of :meth:`convolve` for
        ``padding="zero"`` and ``"circular"``. With ``"reflect"`` both mirror ``x`` first, which
        is not the adjoint of mirroring (that folds the margins back): use autograd through
        :meth:`convolve` where the exact transpose of the reflect model is needed. An array ``x`` is
        checked, and its result, as by :meth:`convolve`; a tensor is not."""
        return self._checked(x, mode, padding, adjoint=True)

    def _checked(self, x, mode: str, padding: str, adjoint: bool) -> torch.Tensor:
        """:meth:`convolve` (``adjoint`` False) or :meth:`correlate`: an array ``x`` is cast and checked by
        :func:`as_finite_tensor` and its result by :func:`checked_result`; a tensor is not."""
        if isinstance(x, torch.Tensor):
            return self._apply(x, mode, padding, adjoint)
        x = as_finite_tensor(x, "image", self.device, self.dtype)
        return checked_result(self._apply(x, mode, padding, adjoint))

    def _apply(self, x, mode: str, padding: str, adjoint: bool) -> torch.Tensor:
        x = as_tensor(x, self.device, self.dtype)
        if x.ndim < self.ndim:
            raise InputError(f"input has {x.ndim} dimensions but the PSF has {self.ndim}: give matching data")
        refuse_empty(x.shape, "input", "value")  # (reflect raised torch's error; full and circular blamed the PSF)
        if padding not in PADDINGS:
            raise InputError(f"unknown padding {padding!r}: choose one of {', '.join(PADDINGS)}")
        if mode == "full":
            if padding != "zero":
                raise InputError("mode='full' works with zero padding only: use padding='zero'")
            return self._full(x, adjoint)
        if mode != "same":
            raise InputError(f"unknown mode {mode!r}: choose 'same' or 'full'")
        if padding == "circular":
            return self._spectral(x, tuple(x.shape[-self.ndim:]), self.origin, adjoint)
        if padding == "reflect":
            return self._same_reflect(x, adjoint)
        shape = tuple(x.shape[-self.ndim:])
        return self._spectral(x, self.same_fft_shape(shape), self.origin, adjoint)[self._crop(shape)]

    def _crop(self, shape: Sequence[int], start: Sequence[int] | None = None) -> tuple:
        start = start or (0,) * len(shape)
        return (Ellipsis,) + tuple(slice(s, s + n) for s, n in zip(start, shape))

    def _spectral(self, x: torch.Tensor, fft_shape, origin, adjoint: bool) -> torch.Tensor:
        otf = self.otf(fft_shape, origin)
        spectrum = torch.fft.rfftn(x, s=fft_shape, dim=self.dims)
        spectrum = spectrum * (otf.conj() if adjoint else otf)
        return irfftn(spectrum, fft_shape, self.dims)

    def _full(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        shape = tuple(x.shape[-self.ndim:])
        out_shape = tuple(n + k - 1 for n, k in zip(shape, self.psf.shape))
        if adjoint:  # transpose of "full": correlate the full-size input back to the signal size
            signal = tuple(n - k + 1 for n, k in zip(shape, self.psf.shape))
            out = self._spectral(x, fast_shape(shape), (0,) * self.ndim, True)
            return out[self._crop(signal)]
        out = self._spectral(x, fast_shape(out_shape), (0,) * self.ndim, False)
        return out[self._crop(out_shape)]

    def _same_reflect(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        shape = tuple(x.shape[-self.ndim:])
        before = [k - 1 - o for k, o in zip(self.psf.shape, self.origin)]
        after = list(self.origin)
        if adjoint:
            before, after = after, before
        padded = pad_spatial(x, before, after, "reflect")
        ext = tuple(padded.shape[-self.ndim:])
        # Only interior voxels are kept, and those need no wrap-around: the FFT may be circular.
        out = self._spectral(padded, fast_shape(ext), self.origin, adjoint)
        return out[self._crop(shape, before)]


def _wrapped(kernel: torch.Tensor, fft_shape: tuple, origin: Sequence[int]) -> torch.Tensor:
    """``kernel`` zero-padded to ``fft_shape`` with its ``origin`` rolled to index 0: each axis's part
    from the origin on written at the start, the part before it at the end (``torch.roll`` of the
    padded array did the same with one more FFT-shaped copy)."""
    padded = kernel.new_zeros(fft_shape)
    if not all(0 <= o < k for o, k in zip(origin, kernel.shape)):  # an origin outside the kernel
        padded[tuple(slice(0, k) for k in kernel.shape)] = kernel
        return torch.roll(padded, tuple(-o for o in origin), tuple(range(-len(fft_shape), 0)))
    pieces = [((slice(o, k), slice(0, k - o)), (slice(0, o), slice(f - o, f)))
              for o, k, f in zip(origin, kernel.shape, fft_shape)]
    for parts in itertools.product(*pieces):
        padded[tuple(dst for _, dst in parts)] = kernel[tuple(src for src, _ in parts)]
    return padded
