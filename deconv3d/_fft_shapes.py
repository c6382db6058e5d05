"""The shapes and paddings of FFT convolution: fast FFT sizes (:func:`fast_size`, :func:`fast_shape`),
the kernel origin of a "same" convolution (:func:`kernel_origin`) and the FFT shape that does not wrap
(:func:`same_fft_shape`), padding of the spatial axes (:func:`pad_spatial`), and the inverse real FFT
that works around an MKL fault (:func:`irfftn`). :mod:`deconv3d.fft` exports the public ones.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F


def irfftn(spectrum: torch.Tensor, s: Sequence[int], dim: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.fft.irfftn(spectrum, s, dim)``, on the CPU with MKL done one axis at a time.

    MKL's inverse transform over several leading axes at once corrupts the heap for many
    shapes of few planes and large ones (the process aborts in glibc, or goes on with a damaged
    heap: 2 x 512 x 512, 8 x 1024 x 1024 and 30 x 1024 x 1024 among others, in torch 2.13 on an
    AVX-512 Xeon; pytorch issue 125664), while one axis at a time does not. The same transform,
    to float32 rounding, 0-10 % slower at 64-96 x 256-288^2. Elsewhere (CUDA, CPUs without MKL)
    ``torch.fft.irfftn`` itself; ``out`` as there.
    """
    dims = [d % spectrum.ndim for d in dim]
    if spectrum.device.type != "cpu" or not torch.backends.mkl.is_available() or len(dims) < 2:
        return torch.fft.irfftn(spectrum, s=s, dim=dims, out=out)
    for d, n in zip(dims[:-1], s[:-1]):
        spectrum = torch.fft.ifft(spectrum, n=n, dim=d)
    return torch.fft.irfft(spectrum, n=s[-1], dim=dims[-1], out=out)


def _is_smooth(n: int, primes: Sequence[int] = (2, 3, 5, 7)) -> bool:
    for p in primes:
        while n % p == 0:
            n //= p
    return n == 1


def fast_size(n: int) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3, 5 and 7 (fast for FFTs)."""
    return _fast_size(int(n))


@functools.lru_cache(maxsize=4096)
def _fast_size(n: int) -> int:
    m = max(n, 1)
    while not _is_smooth(m):
        m += 1
    return m


def fast_shape(shape: Sequence[int], last_even: bool = True) -> tuple[int, ...]:
    """Fast FFT size per axis; the last axis is kept even, which real FFTs prefer."""
    out = [fast_size(n) for n in shape]
    if last_even and out and out[-1] % 2:
        out[-1] = fast_size(out[-1] + 1)
        while out[-1] % 2:
            out[-1] = fast_size(out[-1] + 1)
    return tuple(out)


def kernel_origin(kernel_shape: Sequence[int]) -> tuple[int, ...]:
    """Index of the kernel voxel that maps onto the output voxel in a "same" convolution."""
    return tuple((k - 1) // 2 for k in kernel_shape)


def same_fft_shape(shape: Sequence[int], kernel_shape: Sequence[int]) -> tuple[int, ...]:
    """Smallest fast FFT shape with which a zero-padded "same" convolution of an array of ``shape``
    with a kernel of ``kernel_shape`` does not wrap (:meth:`deconv3d.fft.FFTConvolver.same_fft_shape`)."""
    need = [max(n + max(o, k - 1 - o), k) for n, k, o in zip(shape, kernel_shape, kernel_origin(kernel_shape))]
    return fast_shape(need)

def pad_spatial(x: torch.Tensor, before: Sequence[int], after: Sequence[int], mode: str) -> torch.Tensor:
    """Pad the last ``len(before)`` axes of ``x`` with ``mode`` ("reflect", "replicate", "zero").

    Reflection needs the pad to be shorter than the axis; longer pads fall back to
    replicating the edge for the remainder, so any pad width works.
    """
    nd = len(before)
    if mode == "reflect":
        small = [min(b, n - 1) for b, n in zip(before, x.shape[-nd:])]
        small_after = [min(a, n - 1) for a, n in zip(after, x.shape[-nd:])]
        x = _torch_pad(x, small, small_after, "reflect")
        before = [b - s for b, s in zip(before, small)]
        after = [a - s for a, s in zip(after, small_after)]
        if not any(before) and not any(after):
            return x
        mode = "replicate"
    return _torch_pad(x, before, after, "constant" if mode == "zero" else mode)


def _torch_pad(x: torch.Tensor, before, after, mode: str) -> torch.Tensor:
    nd = len(before)
    pads = []
    for b, a in zip(reversed(before), reversed(after)):
        pads += [int(b), int(a)]
    if mode == "constant":
        return F.pad(x, pads)
    lead = x.shape[:-nd]
    # torch's reflect/replicate padding wants (N, C, *spatial) with 1-3 spatial axes.
    y = x.reshape((-1, 1) + tuple(x.shape[-nd:]))
    y = F.pad(y, pads, mode=mode)
    return y.reshape(tuple(lead) + tuple(y.shape[-nd:]))

