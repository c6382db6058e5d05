"""FFT convolution with a cached optical transfer function (OTF), in torch.

A PSF is fixed for a whole deconvolution or training run, so its transfer function is
computed once per (FFT shape, device, dtype) and reused (the most recently used OTFs kept, up to
:data:`OTF_CACHE_BYTES`, and the last one whatever its size): the hot loops of
Richardson-Lucy and of network training then cost two real FFTs per convolution and
nothing else. All functions are differentiable with autograd (the transpose of a
convolution is the correlation with the same kernel, which is what the backward pass
computes), with respect to the input and to a PSF tensor that requires grad (whose OTF is then
computed at each call, not cached), and run on CPU or CUDA.

Kernel origin: like ``scipy.signal.fftconvolve(mode="same")``, output voxel ``i`` of a
"same" convolution is ``sum_j h[j] x[i + c - j]`` with ``c = (k - 1) // 2`` per axis, so
odd and even kernels line up with scipy.

This module holds the convolution itself (:class:`FFTConvolver`, :func:`fft_convolve`,
:func:`fft_correlate`, :func:`get_convolver`); the pieces around it live next to it and are exported
from here too: FFT sizes, kernel origin and padding in :mod:`deconv3d._fft_shapes`, the checked input
tensors and device in :mod:`deconv3d._tensors`, the shared OTF cache in :mod:`deconv3d._otf_cache`,
and the spectral estimates (band limit, noise variance) in :mod:`deconv3d._spectral`.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from deconv3d._arrays import refuse_complex, refuse_empty
from deconv3d._fft_shapes import fast_shape, fast_size, irfftn, kernel_origin, pad_spatial, same_fft_shape
from deconv3d._otf_cache import OtfCache
from deconv3d._spectral import BLIND, band_limit, band_limit_halo, psf_rms_width, tapered_crop, white_noise_variance
from deconv3d._tensors import as_array, as_finite_tensor, as_tensor, checked_result, psf_fingerprint, resolve_device
from deconv3d.errors import InputError

__all__ = [
    "FFTConvolver", "fft_convolve", "fft_correlate", "get_convolver", "resolve_device", "fast_size", "fast_shape",
    "kernel_origin", "pad_spatial", "as_tensor", "as_array", "refuse_complex", "psf_fingerprint", "psf_rms_width",
    "band_limit", "band_limit_halo", "white_noise_variance", "tapered_crop", "PADDINGS", "BLIND",
]

PADDINGS = ("zero", "reflect", "circular")
#: Bytes of OTFs that all convolvers together keep (:class:`deconv3d._otf_cache.OtfCache`, the least
#: recently used dropped first; the most recent is kept whatever its size, alone where larger). Each OTF is as
#: large as an image: kept per convolver and counted per convolver (4 shapes each, 8 shared PSFs)
#: a long-lived process held 276 MB after 8 PSFs x 4 shapes of 60 x 256 x 256. Set it
#: (``deconv3d.fft.OTF_CACHE_BYTES = ...``) to keep more or less.
OTF_CACHE_BYTES = 256 * 2**20
_OTF_CACHE = OtfCache(lambda: OTF_CACHE_BYTES)  # (the limit read at each store, from here)


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
    most :data:`OTF_CACHE_BYTES` (the least recently used OTFs dropped first; the most recent one is
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
        """
        return self._apply(x, mode, padding, adjoint=False)

    def correlate(self, x, mode: str = "same", padding: str = "zero") -> torch.Tensor:
        """Correlate ``x`` with the kernel: the adjoint (transpose) of :meth:`convolve` for
        ``padding="zero"`` and ``"circular"``. With ``"reflect"`` both mirror ``x`` first, which
        is not the adjoint of mirroring (that folds the margins back): use autograd through
        :meth:`convolve` where the exact transpose of the reflect model is needed."""
        return self._apply(x, mode, padding, adjoint=True)

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


_CONVOLVERS: "OrderedDict[tuple, FFTConvolver]" = OrderedDict()
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()  # pipeline blocks call from worker threads


def get_convolver(psf, device="cpu", dtype: torch.dtype = torch.float32) -> FFTConvolver:
    """A shared :class:`FFTConvolver` for this PSF, device and dtype (small LRU cache, thread safe);
    its kernel is fixed (a PSF tensor's graph is not kept: see :func:`fft_convolve`)."""
    dev = resolve_device(device)
    psf = psf.detach() if isinstance(psf, torch.Tensor) else psf
    key = (psf_fingerprint(psf, np.float64 if dtype == torch.float64 else np.float32), str(dev), dtype)
    with _CACHE_LOCK:
        conv = _CONVOLVERS.get(key)
        if conv is not None:
            _CONVOLVERS.move_to_end(key)
            return conv
    conv = FFTConvolver(psf, device=dev, dtype=dtype)  # outside the lock: another thread may build one too
    with _CACHE_LOCK:
        conv = _CONVOLVERS.setdefault(key, conv)
        _CONVOLVERS.move_to_end(key)
        while len(_CONVOLVERS) > _CACHE_SIZE:
            _CONVOLVERS.popitem(last=False)
    return conv


def fft_convolve(x, psf, mode: str = "same", padding: str = "zero", *, device=None, dtype=torch.float32):
    """Convolve ``x`` with ``psf`` by FFT, reusing the PSF's cached OTF across calls.

    Returns a torch tensor (for numpy input too: it is the differentiable building block of the
    network's forward model) on ``device`` (default: ``x``'s device for tensors, else the CPU).
    Equals ``scipy.signal.fftconvolve(x, psf, mode)`` for ``padding="zero"`` and ``mode`` "same" or "full".
    A complex or non-finite ``psf`` is refused, and so is such an ``x`` given as an array (FFTs
    would spread one NaN over the output), or one whose values, or result, overflow ``dtype`` (a
    float64 array of 1e40 in float32; a float32 one of 1e37, whose transform's zero frequency sums
    past 3.4e38: the output was all NaN); a tensor ``x`` is not checked (no extra pass, nor a GPU
    synchronisation, per training step).

    Parameters
    ----------
    x : array_like or torch.Tensor
        Input whose last ``psf.ndim`` axes are spatial; leading axes (batch, channel) are
        carried through.
    psf : array_like or torch.Tensor
        Kernel with 1 to 3 dimensions, used as given (neither normalised nor flipped).
    mode : {"same", "full"}
        ``"same"``: the input's shape, centred as scipy centres it; ``"full"``: the full linear
        convolution, ``n + k - 1`` voxels per spatial axis.
    padding : {"zero", "reflect", "circular"}
        How ``x`` continues beyond its border: zeros, a mirror image, or wrapping around
        (periodic). ``"reflect"`` and ``"circular"`` work with ``mode="same"`` only.
    device : str or torch.device, optional
        Where the work runs and the result lives; ``None`` (default) is ``x``'s device for a
        tensor, else the CPU; ``"auto"`` picks CUDA when present.
    dtype : torch.dtype, optional
        ``torch.float32`` (default) or ``torch.float64``: the precision of the computation
        and of the result.

    Returns
    -------
    torch.Tensor
        The convolution, real, of ``dtype`` on ``device``: ``x``'s shape for ``mode="same"``,
        spatial axes ``n + k - 1`` long for ``mode="full"``.

    Raises
    ------
    InputError
        For a complex or non-finite PSF or array ``x``, or one beyond ``dtype``'s range; an array
        ``x`` whose result overflows ``dtype``; a PSF that is not 1D to 3D; an ``x``
        with fewer dimensions than the PSF; an unknown ``mode`` or ``padding``, or
        ``mode="full"`` with a padding other than ``"zero"``; ``padding="circular"`` on an
        ``x`` smaller than the PSF; a ``dtype`` other than float32/float64; or an unknown or
        unavailable ``device``.

    See Also
    --------
    fft_correlate : the adjoint (transpose) of this convolution.
    FFTConvolver : the same operation as an object that owns its kernel.

    Notes
    -----
    With ``c = (k - 1) // 2`` per axis (:func:`kernel_origin`), output voxel ``i`` of the
    "same" convolution is ``y[i] = sum_j psf[j] x[i + c - j]``. It is computed as
    ``irfftn(rfftn(x) · OTF)``, the OTF being the real FFT of the kernel zero-padded to the FFT
    shape with its origin rolled to index 0. With ``padding="zero"`` the FFT shape is a fast
    size (prime factors 2, 3, 5, 7; :func:`fast_shape`) large enough that the circular
    convolution does not wrap around, and the result is cropped; ``"circular"`` uses ``x``'s own
    shape; ``"reflect"`` first mirrors ``x`` across its border by the kernel's extent on either side
    of its origin, then keeps the interior.
    The :class:`FFTConvolver` (and its OTFs, one per FFT shape) comes from a small thread-safe
    cache keyed by the PSF's values, the device and the dtype (:func:`get_convolver`, the last
    8 kernels; their OTFs at most :data:`OTF_CACHE_BYTES` in all, and the most recent whatever its
    size), so repeated calls with the same PSF and shape cost two real FFTs each. The operation is
    differentiable with autograd, with respect to ``x`` and to a ``psf`` tensor that requires grad
    (PSF fitting: its OTF is then computed at each call, not cached).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.signal import fftconvolve
    >>> from deconv3d.fft import fft_convolve
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((6, 8)).astype(np.float32)
    >>> psf = rng.random((3, 4)).astype(np.float32)
    >>> y = fft_convolve(x, psf)
    >>> type(y).__name__, tuple(y.shape)
    ('Tensor', (6, 8))
    >>> bool(np.allclose(y.numpy(), fftconvolve(x, psf, mode="same"), atol=1e-5))
    True
    >>> tuple(fft_convolve(x, psf, mode="full").shape)
    (8, 11)
    """
    return _checked_apply(x, psf, device, dtype, mode, padding, adjoint=False)


def _checked_apply(x, psf, device, dtype, mode: str, padding: str, adjoint: bool) -> torch.Tensor:
    """:func:`fft_convolve` (``adjoint`` False) or :func:`fft_correlate`: an array ``x`` is cast and
    checked by :func:`as_finite_tensor` and its result by :func:`checked_result`; a tensor is not."""
    conv = convolver_for(x, psf, device, dtype)
    if isinstance(x, torch.Tensor):
        return conv._apply(x, mode, padding, adjoint)
    return checked_result(conv._apply(as_finite_tensor(x, "image", conv.device, conv.dtype), mode, padding, adjoint))


def fft_correlate(x, psf, mode: str = "same", padding: str = "zero", *, device=None, dtype=torch.float32):
    """Correlate ``x`` with ``psf``: the adjoint of :func:`fft_convolve` (cached OTF) for the
    zero and circular paddings (see :meth:`FFTConvolver.correlate` for reflect); inputs are checked
    as by :func:`fft_convolve`.

    Parameters
    ----------
    x, psf : array_like or torch.Tensor
        As for :func:`fft_convolve`.
    mode : {"same", "full"}
        ``"same"``: the adjoint of the "same" convolution, the input's shape; ``"full"``: the
        adjoint of the full convolution, which takes a full-size ``x`` back to ``n - k + 1``
        voxels per spatial axis.
    padding : {"zero", "reflect", "circular"}
        As for :func:`fft_convolve`. With ``"reflect"`` ``x`` is mirrored before correlating,
        which is not the exact adjoint of the reflect convolution.
    device : str or torch.device, optional
        Where the work runs; ``None`` (default) is ``x``'s device for a tensor, else the CPU.
    dtype : torch.dtype, optional
        ``torch.float32`` (default) or ``torch.float64``.

    Returns
    -------
    torch.Tensor
        The correlation, real, of ``dtype`` on ``device``.

    Raises
    ------
    InputError
        For the inputs and options that :func:`fft_convolve` refuses.

    Notes
    -----
    With ``c = (k - 1) // 2`` per axis, output voxel ``i`` of the "same" correlation is
    ``z[i] = sum_j psf[j] x[i - c + j]``: the spectrum of ``x`` is multiplied by the complex
    conjugate of the cached OTF, so that ``<fft_convolve(u, psf), v> = <u, fft_correlate(v, psf)>``
    for every ``u`` and ``v`` (zero and circular padding).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from deconv3d.fft import fft_convolve, fft_correlate
    >>> rng = np.random.default_rng(0)
    >>> u, v = rng.random((2, 6, 8))
    >>> psf = rng.random((3, 4))
    >>> lhs = float(np.sum(fft_convolve(u, psf, dtype=torch.float64).numpy() * v))
    >>> rhs = float(np.sum(u * fft_correlate(v, psf, dtype=torch.float64).numpy()))
    >>> abs(lhs - rhs) < 1e-9
    True
    """
    return _checked_apply(x, psf, device, dtype, mode, padding, adjoint=True)


def convolver_for(x, psf, device, dtype) -> FFTConvolver:
    """The convolver of :func:`fft_convolve` and :func:`fft_correlate` (``device`` None: ``x``'s for a
    tensor, else the CPU): the shared one (:func:`get_convolver`), or, for a PSF tensor that requires
    grad, one of its own that keeps the PSF in the graph."""
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else "cpu"
    if isinstance(psf, torch.Tensor) and psf.requires_grad:
        return FFTConvolver(psf, device=device, dtype=dtype)
    return get_convolver(psf, device, dtype)
