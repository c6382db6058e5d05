"""The element-wise passes of the Richardson-Lucy loop fused with numba on the CPU (:class:`FusedOps`),
their kernels and their compilation; :func:`deconv3d._rl_ops.ops_for` picks them or the torch passes.

Between its FFTs, one RL iteration makes several passes over arrays of the FFT's size: the
ratio ``y / max(H u, floor)`` and the update ``max(u · factor [· w], 0)`` (``w = 1 / H^T 1``, the
Bertero boundary's weight); with Biggs-Andrews
acceleration also the step ``g = x_{k+1} - guess``, two dot products and the extrapolated
guess. In torch each is its own pass over memory: the extrapolation alone is five (two
additions, a clamp, a division and a product), the update and step five more. :class:`FusedOps`
(the optional ``numba`` extra) does each stage in one parallel loop over the rows of the array
(a 2D image is one plane): the ratio; the update (with the weight), alone or together with the
step and its dot products, writing the step over the previous one (one step buffer instead of
two); the extrapolation. It computes the same float32 expressions in the same order as
:class:`~deconv3d._rl_torch_ops.TorchOps`, except that its dot products accumulate in float64. Without a weight, plain
RL's fused update runs as fast as torch's product and clamp; with one, torch makes a third pass
(``factor · w``): at 96 x 288 x 288 with 2 threads (median of 30, twice) the fused update took
2.47-2.56 ms against 2.76-2.82 ms, and the update and step 3.5-3.7 ms against 4.3-4.4 ms for the
weight's pass followed by them. Inside the loop, whose arrays no longer fit in the cache, the
saving was larger: 20 Bertero iterations of the bench_rl problem took 3.8 % less (pairwise median
of 10 interleaved runs, outputs bit-identical). Measured at 80 x 280 x 280 float32 with 2 threads (best of 41, in two runs on a shared 2-core
machine whose medians swung twofold): the extrapolation 3.6-3.8 ms against 7.1-7.7 ms in torch,
the ratio 2.6-2.8 against 3.1-3.3 ms. At 96 x 288 x 288 (best of 25) the fused update and step
took 6.8 ms against 9.3 ms for torch's update followed by a fused step. Those loops indexed the
3D arrays, whose runtime strides kept them scalar; they now read each row as a contiguous slice
(:func:`_rows`), which LLVM vectorises: on a crop of 96 x 288 x 288 with 2 threads (min of 30)
the extrapolation went from 4.75 to 2.04 ms, the update and step from 7.03 to 4.00 ms (its dot
products also sum per row, with reassociation) and the ratio from 4.12 to 2.02 ms.
The ratio also takes the clipped voxels' bound (``max(ratio, lower)``), which torch.maximum applied
as a pass of its own: on 64 x 256 x 256 (blurred and out crops of 94 x 286 x 286 buffers, 1 % of the
voxels flagged) with 2 threads on an idle 2-core machine, 60 interleaved calls took a median 1.28 ms
[1.20-1.48] against 1.63 ms [1.52-1.84] (pairwise 0.79; a second run 1.31 against 1.69 ms), and the
ratio without a bound 0.99 ms [0.93-5.19] against 0.98 ms [0.92-1.15] before the bound was added
(pairwise 1.03; again 1.01 against 1.01 ms, 1.02).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from types import SimpleNamespace

import numpy as np
import torch

from deconv3d._rl_torch_ops import TINY


def _rows(t: torch.Tensor, write: bool = False) -> tuple:
    """``(flat, z_stride, y_stride)``: a 1D contiguous numpy view from ``t``'s first element to its
    last, and the element strides of its planes and rows (a 2D tensor is one plane).

    The kernels read each row as a contiguous slice of ``flat``, which LLVM vectorises whatever
    the crop; indexing the 3D crop itself with runtime strides kept the loops scalar (2.0 against
    5.3 ms for the extrapolation at 96 x 288 x 288, 2 threads). An input whose rows are not
    contiguous is copied; an output must have contiguous rows (the workspace's always do).
    """
    if t.stride(-1) != 1 or any(v < 0 for v in t.stride()):
        if write:
            raise ValueError(f"fused RL passes write rows that are contiguous, got strides {t.stride()}")
        t = t.contiguous()
    a = t.detach().numpy()
    a = a[None] if a.ndim == 2 else a
    nz, ny, nx = a.shape
    z_stride, y_stride = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    span = ((nz - 1) * z_stride + (ny - 1) * y_stride + nx) if a.size else 0
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,)), z_stride, y_stride


def _shape3(t: torch.Tensor) -> tuple[int, int, int]:
    return (1,) + tuple(t.shape) if t.ndim == 2 else tuple(t.shape)


class FusedOps:
    """The same passes, one numba loop each (float32 CPU tensors whose rows are contiguous)."""

    name = "numba"

    @staticmethod
    def ratio(data, blurred, floor: float, out, lower=None) -> None:
        bound = lower is not None
        with _serialised(), _ready() as k:
            k.ratio(*_rows(data), *_rows(blurred), np.float32(floor), *_rows(lower if bound else data), bound,
                    *_rows(out, write=True), *_shape3(out))

    @staticmethod
    def buffers(like: torch.Tensor, steps: bool = True) -> SimpleNamespace:
        """One step vector, overwritten in place by each step (none without ``steps``)."""
        return SimpleNamespace(g=torch.zeros_like(like) if steps else None)

    @staticmethod
    def update(u, factor, denominator, out, weight=None) -> None:
        FusedOps._update(u, factor, denominator, out, weight, None)

    @staticmethod
    def update_step(guess, factor, denominator, out, buffers, weight=None) -> tuple[float, float]:
        return FusedOps._update(guess, factor, denominator, out, weight, buffers.g)

    @staticmethod
    def _update(guess, factor, denominator, out, weight, g) -> tuple[float, float]:
        """The update kernel; with a step vector ``g`` also the step and its dot products."""
        divide, weigh, step = denominator is not None, weight is not None, g is not None
        with _serialised(), _ready() as k:
            gg, gp = k.update(*_rows(guess), *_rows(factor), *_rows(weight if weigh else factor), weigh,
                              *_rows(denominator if divide else factor), divide, *_rows(out, write=True),
                              *_rows(g if step else out, write=True), step, *_shape3(out))
        return float(gg), float(gp)

    @staticmethod
    def extrapolate(x, x_prev, alpha: float, out, buffers=None) -> None:
        c = (1.0 + alpha) / (1.0 - alpha)
        with _serialised(), _ready() as k:
            k.extrapolate(*_rows(x), *_rows(x_prev), np.float32(c), *_rows(out, write=True), *_shape3(out))


_LOCK = threading.Lock()
_LAYER: list = []  # numba's threading layer, once a parallel kernel has chosen it


def _serialised():
    """A lock where numba's threading layer cannot run kernels from two threads at once.

    numba's own ``workqueue`` layer (its fallback when neither OpenMP nor TBB loads) aborts the
    process on concurrent use, and the pipeline runs blocks in threads; ``omp`` and ``tbb`` run
    them side by side. Until the first kernel has run the layer is unknown: locked then too.
    """
    if not _LAYER:
        import numba

        try:
            _LAYER.append(numba.threading_layer())
        except ValueError:  # no parallel kernel has run yet
            return _LOCK
    return _LOCK if _LAYER[0] == "workqueue" else contextlib.nullcontext()


@contextlib.contextmanager
def _ready():
    """The kernels, running on as many threads as torch does (``torch.set_num_threads``) for the
    ``with`` block; numba's count in this thread is put back afterwards (a user's own parallel
    numba code ran on the count RL had set: twice as long after RL under torch.set_num_threads(1))."""
    k = _kernels()
    n = max(1, min(torch.get_num_threads(), k.max_threads))
    before = k.get_num_threads()
    if before != n:
        k.set_num_threads(n)
    try:
        yield k
    finally:
        if before != n:
            k.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _kernels():
    """Compile the kernels on first use (numba is imported only then); numba caches them on disk
    (next to this file, or in the user's cache folder where that is read-only; uncached where
    neither can be written)."""
    threads = torch.get_num_threads()
    try:
        return _compile(cache=True)
    except RuntimeError:  # numba found nowhere to write its cache
        return _compile(cache=False)
    finally:
        # Loading them starts numba's OpenMP threads, which set OpenMP's count in this thread to
        # all cores: torch then ran on 2 threads after torch.set_num_threads(1), for good (its
        # sums and FFTs round differently with another count).
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _compile(cache: bool) -> SimpleNamespace:
    """One signature per kernel: every array as a contiguous float32 vector with its plane and
    row strides (:func:`_rows`), then the shape ``nz, ny, nx``."""
    import numba
    from numba import float32 as f32, int64 as i64

    a = (f32[::1], i64, i64)  # an array: its flat storage, plane stride, row stride
    n = (i64, i64, i64)
    jit = functools.partial(numba.njit, parallel=True, cache=cache, nogil=True)

    # (globals the kernels call, not variables of their closures: numba's disk cache missed those)
    global _row, _updated
    _row = numba.njit(inline="always", cache=cache, nogil=True)(_row_of)
    _updated = numba.njit(inline="always", cache=cache, nogil=True)(_updated_of)
    return SimpleNamespace(ratio=_ratio_kernel(jit, a, n), update=_update_kernel(jit, a, n),
                           extrapolate=_extrapolate_kernel(jit, a, n),
                           max_threads=numba.config.NUMBA_NUM_THREADS,
                           get_num_threads=numba.get_num_threads, set_num_threads=numba.set_num_threads)


#: :func:`_row_of` and :func:`_updated_of` compiled, set by :func:`_compile` (numba is imported only then).
_row = _updated = None


def _row_of(array, z_stride, y_stride, r, ny, nx):
    """Row ``r`` (of the ``nz * ny`` rows, plane by plane) of an array given as its flat storage and strides
    (:func:`_rows`): the ``nx`` values from ``z * z_stride + y * y_stride``. Compiled inline into each kernel
    (:func:`_compile`)."""
    start = (r // ny) * z_stride + (r % ny) * y_stride
    return array[start:start + nx]


def _updated_of(u, fr, wr, qr, x, weigh, divide, zero):
    """The update of voxel ``x`` from its guess ``u``, the rows ``fr`` (the factor), ``wr`` (the weight, read
    where ``weigh``) and ``qr`` (the denominator, read where ``divide``): ``u · f [· w] [/ q]``, clamped at
    ``zero``. Compiled inline into the update kernel (:func:`_compile`): on x86-64 with numba 0.68.1 the kernel
    compiled to the same instructions as with these lines in its loop (not so with ``zero`` a constant here)."""
    f = fr[x]
    if weigh:  # rounded to float32 first, as torch's factor.mul_(weight)
        f = f * wr[x]
    v = u * f
    if divide:
        v = v / qr[x]
    if v < zero:  # torch's clamp_min: NaN stays NaN
        v = zero
    return v


def _ratio_kernel(jit, a: tuple, n: tuple):
    """The compiled kernel ``out = data / max(blurred, floor)``, with ``bound`` then ``max(out, lower)``
    (:func:`_compile`: ``jit``, ``a``, ``n``)."""
    import numba
    from numba import float32 as f32, void

    @jit(void(*a, *a, f32, *a, numba.boolean, *a, *n))
    def ratio(data, d_z, d_y, blurred, b_z, b_y, floor, lower, l_z, l_y, bound, out, o_z, o_y, nz, ny, nx):
        for r in numba.prange(nz * ny):
            dr = _row(data, d_z, d_y, r, ny, nx)
            br = _row(blurred, b_z, b_y, r, ny, nx)
            lr = _row(lower, l_z, l_y, r, ny, nx)
            orow = _row(out, o_z, o_y, r, ny, nx)
            for x in range(nx):
                b = br[x]
                v = dr[x] / (b if b > floor else floor)
                if bound:  # torch.maximum's vector path: the bound unless v > it, and NaN stays NaN
                    low = lr[x]
                    if not v > low and v == v:
                        v = low
                orow[x] = v

    return ratio


def _update_kernel(jit, a: tuple, n: tuple):
    """The compiled kernel of the multiplicative update, clamped at zero, in place or not; with ``step``
    also the step from the guess, written over the previous one, and the dot products of the step with
    itself and with the previous step ((0, 0) without) (:func:`_compile`: ``jit``, ``a``, ``n``).

    The dot products sum each row locally, then the rows: accumulating straight into the loop-wide
    reduction variables kept the loop scalar. ``reassoc`` lets LLVM vectorise them (partial sums in
    another order); the update itself has no sums to reorder and stays bit-identical to torch's (tested)."""
    import numba
    from numba import float64 as f64

    @jit(numba.types.UniTuple(f64, 2)(*a, *a, *a, numba.boolean, *a, numba.boolean, *a, *a, numba.boolean, *n),
         fastmath={"reassoc"})
    def update(guess, u_z, u_y, factor, f_z, f_y, weight, w_z, w_y, weigh, denominator, q_z, q_y, divide,
               out, o_z, o_y, g, g_z, g_y, step, nz, ny, nx):
        gg, gp = 0.0, 0.0  # (g: the previous step is read from it, this one written over it)
        zero = np.float32(0)
        for r in numba.prange(nz * ny):
            ur = _row(guess, u_z, u_y, r, ny, nx)
            fr = _row(factor, f_z, f_y, r, ny, nx)
            wr = _row(weight, w_z, w_y, r, ny, nx)
            qr = _row(denominator, q_z, q_y, r, ny, nx)
            orow = _row(out, o_z, o_y, r, ny, nx)
            gr = _row(g, g_z, g_y, r, ny, nx)
            row_gg, row_gp = 0.0, 0.0
            for x in range(nx):
                u = ur[x]
                v = _updated(u, fr, wr, qr, x, weigh, divide, zero)
                orow[x] = v
                if step:
                    d = v - u
                    row_gg += f64(d) * f64(d)
                    row_gp += f64(d) * f64(gr[x])
                    gr[x] = d
            gg += row_gg
            gp += row_gp
        return gg, gp

    return update


def _extrapolate_kernel(jit, a: tuple, n: tuple):
    """The compiled kernel of the extrapolation ``out = (p + c x) / max(x + c p, tiny) * x`` (``x`` the estimate,
    ``p`` the previous one; :func:`_compile`: ``jit``, ``a``, ``n``)."""
    import numba
    from numba import float32 as f32, void

    tiny = np.float32(TINY)

    @jit(void(*a, *a, f32, *a, *n))
    def extrapolate(x, x_z, x_y, x_prev, p_z, p_y, c, out, o_z, o_y, nz, ny, nx):
        for r in numba.prange(nz * ny):
            xr = _row(x, x_z, x_y, r, ny, nx)
            pr = _row(x_prev, p_z, p_y, r, ny, nx)
            orow = _row(out, o_z, o_y, r, ny, nx)
            for i in range(nx):
                a, b = xr[i], pr[i]
                den = a + c * b
                orow[i] = (b + c * a) / (den if den > tiny else tiny) * a

    return extrapolate
