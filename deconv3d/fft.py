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

This module holds the functions (:func:`fft_convolve`, :func:`fft_correlate`, :func:`get_convolver`)
and the OTF cache's limit; the pieces around them live next to it and are exported from here too: the
convolver itself, :class:`FFTConvolver`, and its OTFs in :mod:`deconv3d._fft_convolver`, FFT sizes,
kernel origin and padding in :mod:`deconv3d._fft_shapes`, the checked input tensors and device in
:mod:`deconv3d._tensors`, the shared OTF cache in :mod:`deconv3d._otf_cache`, and the spectral
estimates (band limit, noise variance) in :mod:`deconv3d._spectral`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from deconv3d._arrays import refuse_complex, refuse_file_name
from deconv3d._fft_convolver import PADDINGS, FFTConvolver
from deconv3d._fft_shapes import fast_shape, fast_size, kernel_origin, pad_spatial
from deconv3d._spectral import BLIND, band_limit, band_limit_halo, psf_rms_width, tapered_crop, white_noise_variance
from deconv3d._tensors import as_array, as_tensor, psf_fingerprint, resolve_device

__all__ = [
    "FFTConvolver", "fft_convolve", "fft_correlate", "get_convolver", "resolve_device", "fast_size", "fast_shape",
    "kernel_origin", "pad_spatial", "as_tensor", "as_array", "refuse_complex", "psf_fingerprint", "psf_rms_width",
    "band_limit", "band_limit_halo", "white_noise_variance", "tapered_crop", "PADDINGS", "BLIND",
]

#: Bytes of OTFs that all convolvers together keep (:class:`deconv3d._otf_cache.OtfCache`, the least
#: recently used dropped first; the most recent is kept whatever its size, alone where larger). Each OTF is as
#: large as an image: kept per convolver and counted per convolver (4 shapes each, 8 shared PSFs)
#: a long-lived process held 276 MB after 8 PSFs x 4 shapes of 60 x 256 x 256. Set it
#: (``deconv3d.fft.OTF_CACHE_BYTES = ...``) to keep more or less.
OTF_CACHE_BYTES = 256 * 2**20

_CONVOLVERS: "OrderedDict[tuple, FFTConvolver]" = OrderedDict()
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()  # pipeline blocks call from worker threads


def get_convolver(psf, device="cpu", dtype: torch.dtype = torch.float32) -> FFTConvolver:
    """A shared :class:`FFTConvolver` for this PSF, device and dtype (small LRU cache, thread safe);
    its kernel is fixed (a PSF tensor's graph is not kept: see :func:`fft_convolve`)."""
    dev = resolve_device(device)
    if isinstance(psf, torch.Tensor):
        psf = psf.detach()
    else:  # refused by name before hashing: a file name, ragged lists or None met numpy's errors, complex a warning
        refuse_file_name(psf, "deconv3d.io.read_psf(path).data")
        psf = as_array(psf)
    refuse_complex(psf, "PSF")
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
        ``"reflect"`` mirrors without repeating the edge voxel (``scipy.ndimage``'s ``"mirror"``)
        up to ``n - 1`` voxels deep; where the kernel reaches further (an axis shorter than the
        kernel's extent on a side plus one: 2 planes under a 5-plane PSF), the rest repeats the
        edge voxel, which differs from scipy's endless mirror there.
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
    return convolver_for(x, psf, device, dtype).convolve(x, mode, padding)  # (which checks an array x)


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
    return convolver_for(x, psf, device, dtype).correlate(x, mode, padding)


def convolver_for(x, psf, device, dtype) -> FFTConvolver:
    """The convolver of :func:`fft_convolve` and :func:`fft_correlate` (``device`` None: ``x``'s for a
    tensor, else the CPU): the shared one (:func:`get_convolver`), or, for a PSF tensor that requires
    grad, one of its own that keeps the PSF in the graph."""
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else "cpu"
    if isinstance(psf, torch.Tensor) and psf.requires_grad:
        return FFTConvolver(psf, device=device, dtype=dtype)
    return get_convolver(psf, device, dtype)
