"""The Richardson-Lucy iteration itself: the transforms and buffers it reuses, the plain and
TV-regularised update, and Biggs-Andrews acceleration."""

from __future__ import annotations

from typing import Optional

import torch

from deconv3d._fftw import real_transforms
from deconv3d._rl_ops import ops_for
from deconv3d.classical._problem import _Problem, _spacing


class _Workspace:
    """The transforms and buffers every iteration reuses (:mod:`deconv3d._fftw`).

    Two FFT-shaped inputs with zero margins: ``estimate_in`` (where the estimate is written,
    or lives: loops that keep their estimate there skip one copy per iteration) and ``ratio``
    (where ``y / H u`` is written); one half-spectrum and one FFT-shaped output. Handing torch
    a smaller array with ``s=fft_shape`` instead would allocate and zero-pad a fresh array on
    every call, twice per iteration. ``otf``/``otf_conj`` carry the backend's inverse
    normalisation (FFTW's inverse is unnormalised).
    """

    def __init__(self, p: _Problem):
        data_box = tuple(c.stop for c in p.data_crop)  # _build_geometry puts the data at the origin
        est_box = tuple(p.estimate_shape)
        # Input 0 holds the estimate, input 1 the ratio (data-sized); inverse 0 is read on the
        # data (the prediction), inverse 1 on the estimate (the correction factor).
        self.fft = real_transforms(p.fft_shape, 2, p.data.device, p.data.dtype,
                                   input_extents=[est_box, data_box], output_extents=[data_box, est_box])
        est_in, ratio_in = self.fft.inputs
        self.spectrum, self.full = self.fft.spectrum, self.fft.output
        whole, est_crop = est_box == tuple(p.fft_shape), tuple(slice(0, s) for s in est_box)
        self.estimate_in = est_in if whole else est_in[est_crop]
        self.ratio = ratio_in if tuple(p.data.shape) == p.fft_shape else ratio_in[p.data_crop]
        self.factor = self.full if whole else self.full[est_crop]
        # Both built here, leaving the problem as it was: p.otf may be kept for the next block (_reuse).
        self.otf = p.otf * self.fft.scale if self.fft.scale != 1.0 else p.otf
        self.otf_conj = self.otf.conj_physical()
        self.ops = ops_for(p.data.device, p.data.dtype, p.fft_shape)  # the element-wise passes (deconv3d._rl_ops)


def _rl_factor(p: _Problem, ws: _Workspace, u: torch.Tensor) -> torch.Tensor:
    """The multiplicative RL correction ``H^T(y / H u)``, before the Bertero weight ``p.inv_weight``
    (``1 / H^T 1``), which the update pass applies (``ws.ops.update``, ``update_step``): one pass
    fewer over the estimate than multiplying here.

    Returns a view into the workspace with the estimate's shape.
    """
    _blur(p, ws, u)
    return _factor_from_blur(p, ws)


def _blur(p: _Problem, ws: _Workspace, u: torch.Tensor) -> torch.Tensor:
    """``H u`` in the workspace's output: a view on the data's geometry, valid until the next transform."""
    if u is not ws.estimate_in:
        ws.estimate_in.copy_(u)
    ws.fft.forward(0)
    ws.spectrum.mul_(ws.otf)
    ws.fft.inverse(0)
    return ws.full[p.data_crop]


def _factor_from_blur(p: _Problem, ws: _Workspace) -> torch.Tensor:
    """The second half of :func:`_rl_factor`, from the ``H u`` that :func:`_blur` left in the workspace."""
    # p.lower: a clipped voxel's datum is a lower bound, its ratio max(y / H u, 1) (_problem._censor)
    ws.ops.ratio(p.data, ws.full[p.data_crop], p.floor, ws.ratio, p.lower)
    ws.fft.forward(1)
    ws.spectrum.mul_(ws.otf_conj)
    ws.fft.inverse(1)
    return ws.factor


#: The rules of the TV term's ε (:class:`_TV`): "local" (the default since RL-TV's flat areas flipped
#: as a checkerboard) and "fixed" (the rule before, which older residual networks' references used).
TV_SMOOTHING = ("local", "fixed")

#: The differences of the TV term's ``|∇u|`` (:class:`_TV`): "symmetric" (the default since RL-TV's
#: result changed when the image was flipped) and "forward" (the rule before, which older residual
#: networks' references used).
TV_DIFFERENCES = ("symmetric", "forward")


class _TV:
    """Dey et al. (2006) TV term: ``1 / (1 - λ div(∇u / |∇u|_ε))`` with forward/backward differences.

    ``|∇u|_ε = sqrt(|∇u|² + ε²)`` keeps flat areas finite, with ``ε = max(1e-3 · scale, λ u Σ_i 4 / s_i²)``
    per voxel (``s_i`` the spacing relative to the finest axis). Why the second term: where
    ``|∇u| << ε`` the update is the explicit diffusion ``u + (λ u / ε) Δu``, which multiplies the
    voxel-by-voxel checkerboard (the discrete Laplacian's largest eigenvalue, ``Σ_i 4 / s_i²``) by
    ``1 - λ u Σ_i 4 / s_i² / ε``. With ``ε = 1e-3 · scale`` alone that was -23 at λ = 0.002 on a
    flat region at the data's peak: even noise-free flat data became a checkerboard that flipped
    every iteration (±0.5 % at λ = 0.002, ±2.5 % at 0.01), and noisy data at λ >= 0.01 alternated
    between two estimates (0.9-27 % change per iteration). With this ε the factor is 0 or more at
    every intensity: the checkerboard dies in a step. The demo's RL-TV PSNR stayed at 33.27 dB.

    ``|∇u|²`` at a voxel (``differences="symmetric"``) takes, per axis, the mean square of its two
    one-sided differences, ``(D⁺_i u² + D⁻_i u²) / 2``, and the flux across the edge between voxels
    ``j`` and ``j + 1`` is ``D⁺_i u`` times the mean of ``1/|∇u|_ε`` at both ends: at fixed ε, the gradient of
    ``Σ_j |∇u|_ε(j)``. Flipping an axis swaps the two differences and the two ends, so the result
    follows the flip to round-off, as plain RL does; with forward differences alone (``"forward"``,
    the rule before) it did not (2-9 % of the peak on 2D and 3D phantoms flipped). The flux is held
    to ``[-1, 1]``, the forward form's bound (at a lone edge it would reach ``√2``), so the limit on
    λ still keeps the denominator positive; on the checkerboard ``|∇u|`` is the forward form's, so
    ε's rule above still holds, where plain central differences would not see it.

    ``smoothing="fixed"`` is the rule before that, ``ε = 1e-3 · scale`` alone: a residual network
    trained on an RL-TV reference learned its correction on top of that reference, and its
    checkpoint, which predates the record of the rule, gets it back
    (:class:`deconv3d.selfsup.config.Reference`); so does ``differences="forward"``.
    """

    def __init__(self, shape, ndim: int, weight: float, voxel_size, data: torch.Tensor, seams, scale: float,
                 smoothing: str = "local", differences: str = "symmetric"):
        if smoothing not in TV_SMOOTHING:
            raise ValueError(f"TV smoothing must be one of {TV_SMOOTHING}, got {smoothing!r}")
        if differences not in TV_DIFFERENCES:
            raise ValueError(f"TV differences must be one of {TV_DIFFERENCES}, got {differences!r}")
        self.weight = weight
        self.seams = seams if seams is not None else tuple((n - 1, n - 1) for n in shape)  # Neumann ends
        self.spacing = _spacing(ndim, voxel_size)
        self.ndim = ndim
        self.eps = 1e-3 * max(float(scale), 1e-12)  # ε's floor (dim voxels)
        # ε's ratio to u (above); None: ε is the floor everywhere ("fixed")
        self.stable = weight * sum(4.0 / s ** 2 for s in self.spacing) if smoothing == "local" else None
        self.symmetric = differences == "symmetric"
        dev, dt = data.device, data.dtype
        self.grads = [torch.empty(shape, device=dev, dtype=dt) for _ in range(ndim)]
        self.norm = torch.empty(shape, device=dev, dtype=dt)
        self.div = torch.empty(shape, device=dev, dtype=dt)
        self.scratch = torch.empty(shape, device=dev, dtype=dt) if self.symmetric else None

    @classmethod
    def for_problem(cls, p: _Problem, weight: float, voxel_size, scale: float,
                    smoothing: str = "local", differences: str = "symmetric") -> Optional["_TV"]:
        """The TV term on ``p``'s estimate (None for weight 0), across the physical neighbours only.

        ``scale``: see ``_rl_tv._tv_for``; ``smoothing``, ``differences``: ε's rule and ``|∇u|``'s (above).
        """
        if weight <= 0:
            return None
        return cls(p.estimate_shape, p.data.ndim, weight, voxel_size, p.data, p.seams, scale, smoothing, differences)

    def denominator(self, u: torch.Tensor) -> torch.Tensor:
        """``1 - λ div(∇u/|∇u|_ε)`` at ``u`` (a reused buffer; positive for λ below the limit)."""
        if self.stable is None:
            self.norm.fill_(self.eps ** 2)  # ε² as the fixed rule's code wrote it
        else:
            torch.mul(u, self.stable, out=self.norm).clamp_min_(self.eps).square_()  # ε²
        for axis, g in enumerate(self.grads):
            _forward_diff(u, axis, self.spacing[axis], out=g, seam=self.seams[axis])
            if self.symmetric:
                _add_mean_square(g, axis, self.norm)
            else:
                self.norm.addcmul_(g, g)
        self.div.zero_()
        if not self.symmetric:
            self.norm.sqrt_()
            for axis, g in enumerate(self.grads):
                g.div_(self.norm)
                _backward_diff_add(g, axis, self.spacing[axis], self.div)
        else:
            inverse = self.norm.rsqrt_()
            for axis, g in enumerate(self.grads):
                # twice the flux (the mean of the two ends), held to the forward form's bound, 1
                g.mul_(_edge_sum(inverse, axis, self.scratch)).clamp_(-2.0, 2.0)
                _backward_diff_add(g, axis, 2.0 * self.spacing[axis], self.div)
        return self.div.mul_(-self.weight).add_(1.0)


def _add_mean_square(g: torch.Tensor, axis: int, acc: torch.Tensor) -> None:
    """``acc[i] += (g[i]² + g[i-1]²) / 2``, cyclic along ``axis``."""
    n = g.shape[axis]
    acc.addcmul_(g, g, value=0.5)
    before = g.narrow(axis, 0, n - 1)
    acc.narrow(axis, 1, n - 1).addcmul_(before, before, value=0.5)
    last = g.narrow(axis, n - 1, 1)
    acc.narrow(axis, 0, 1).addcmul_(last, last, value=0.5)


def _edge_sum(r: torch.Tensor, axis: int, out: torch.Tensor) -> torch.Tensor:
    """``out[i] = r[i] + r[i+1]``, cyclic along ``axis``: ``r`` at both ends of each forward difference."""
    n = r.shape[axis]
    torch.add(r.narrow(axis, 0, n - 1), r.narrow(axis, 1, n - 1), out=out.narrow(axis, 0, n - 1))
    torch.add(r.narrow(axis, n - 1, 1), r.narrow(axis, 0, 1), out=out.narrow(axis, n - 1, 1))
    return out


def _forward_diff(u: torch.Tensor, axis: int, step: float, out: torch.Tensor, seam: tuple[int, int]) -> None:
    """``out[i] = (u[i+1] - u[i]) / step``, cyclic along ``axis``, zero for ``i`` in ``seam`` (first, last).

    With the seam at the last index this is the Neumann forward difference.
    """
    n = u.shape[axis]
    torch.sub(u.narrow(axis, 1, n - 1), u.narrow(axis, 0, n - 1), out=out.narrow(axis, 0, n - 1))
    torch.sub(u.narrow(axis, 0, 1), u.narrow(axis, n - 1, 1), out=out.narrow(axis, n - 1, 1))
    out.narrow(axis, seam[0], seam[1] - seam[0] + 1).zero_()
    if step != 1.0:
        out.div_(step)


def _backward_diff_add(g: torch.Tensor, axis: int, step: float, acc: torch.Tensor) -> None:
    """``acc += (g[i] - g[i-1]) / step``, cyclic: the adjoint of :func:`_forward_diff` (``g`` zero on its seam)."""
    n = g.shape[axis]
    acc.add_(g, alpha=1.0 / step)
    acc.narrow(axis, 1, n - 1).sub_(g.narrow(axis, 0, n - 1), alpha=1.0 / step)
    acc.narrow(axis, 0, 1).sub_(g.narrow(axis, n - 1, 1), alpha=1.0 / step)


def _initial_estimate(p: _Problem, out: torch.Tensor | None = None) -> torch.Tensor:
    """The flat start (the data's mean; 0 where the Bertero weight is unreliable), into ``out``."""
    u = out if out is not None else torch.empty(p.estimate_shape, device=p.data.device, dtype=p.data.dtype)
    if p.inv_weight is None:
        return u.fill_(float(p.data.mean()))
    # 1 where the weight (0 or more) is positive, else 0: 6x faster than multiplying by a bool mask
    return torch.sign(p.inv_weight, out=u).mul_(float(p.data.mean()))


def _run(p: _Problem, iterations: int, tv, accelerate, tol, callback, record=None) -> torch.Tensor:
    ws = _Workspace(p)
    if isinstance(accelerate, bool) and accelerate:
        return _run_accelerated(p, ws, iterations, tv, tol, callback, record=record)
    if not isinstance(accelerate, bool):
        return _run_accelerated(p, ws, iterations, tv, tol, callback, schedule=[float(a) for a in accelerate])
    u = _initial_estimate(p, out=ws.estimate_in)  # updated in place where the FFT reads it
    previous = torch.empty_like(u) if tol is not None else None
    for it in range(1, iterations + 1):
        if previous is not None:
            previous.copy_(u)
        _rl_update(p, ws, u, u, tv)
        if _should_stop(it, u, previous, tol, callback, p):
            break
    return u


def _rl_update(p: _Problem, ws: _Workspace, u: torch.Tensor, out: torch.Tensor, tv, blurred: bool = False) -> None:
    """``out = u · factor(u) / tv(u)``, clamped at 0; ``out`` may be ``u`` itself.

    ``blurred``: :func:`_blur` has already left ``H u`` in the workspace (no transform repeated).
    """
    factor = _factor_from_blur(p, ws) if blurred else _rl_factor(p, ws, u)
    denominator = tv.denominator(u) if tv is not None else None
    ws.ops.update(u, factor, denominator, out, weight=p.inv_weight)


def _should_stop(it, u, previous, tol, callback, p) -> bool:
    if callback is not None and callback(it, u[p.result_crop]):
        return True
    if previous is None:
        return False
    # On the image returned, not on the extended or mirrored estimate around it.
    u, previous = u[p.result_crop], previous[p.result_crop]
    change = torch.linalg.vector_norm(u - previous) / torch.linalg.vector_norm(previous).clamp_min(1e-30)
    return bool(change < tol)


#: The least step of accelerated RL (:func:`_run_accelerated`), from its third iteration on.
#: Biggs & Andrews' ``α`` (0 or more) lags in the first iterations from the flat start: on the
#: bench_rl problem (Bertero) it was 0.11, 0.33, 0.49 at iterations 3-5 and 0.65-0.80 from
#: iteration 6 on. Floors of 0.6 / 0.65 / 0.7 / 0.75 / 0.8 were tried there: plain RL-20's PSNR
#: was reached at iteration 10 / 9 / 9 / 8 / 8 (Bertero; 10 without a floor) and 10 / 10 / 11 /
#: never / never (zero boundary, where that PSNR is the peak; 11 without a floor). With 0.65, on
#: six more 3D and 2D problems (Poisson 100 and 10^4 photons, a Gibson-Lanni PSF 5 µm deep, sparse
#: beads, microtubules, a 2D phantom; both boundaries) it was never later than without a floor
#: (iteration 7-9 against 9-10 for Bertero, and the same or earlier for the zero boundary), and its
#: best PSNR within 30-40 iterations within 0.04 dB of it or higher, but for one problem's
#: 30th iteration (Gibson-Lanni, Bertero: 32.08 against 32.20 dB, both still rising).
#: It also replaces Biggs & Andrews' restart (``α = 0`` after anti-correlated steps): with TV
#: (λ = 0.002) the first two steps were anti-correlated, and a floor of 0.7 that kept the restart
#: lost the iteration it gained (Bertero: 10, as without a floor; 9 without the restart).
#: Extrapolating from the second iteration instead, with the floor as its step (no two steps to
#: correlate yet), was tried and not kept: it reached plain RL-20's PSNR one iteration sooner in 6 of
#: 11 3D cases and 5 of 6 small test problems, never later (bench_rl: zero 9 against 10, Bertero 9
#: either way; also with TV 0.002), but with clipped voxels (``clipped=``, fitted as lower bounds, which
#: a ratio held at 1 or more cannot pull back) its early overshoot stayed: RMS error 558 on the
#: command's clipped test phantom, against 74 for the same run fitting the clipped values as data.
ALPHA_FLOOR = 0.65


def _run_accelerated(p: _Problem, ws: _Workspace, iterations, tv, tol, callback, schedule=None,
                     record=None) -> torch.Tensor:
    """Biggs & Andrews (1997) vector extrapolation around the RL map ψ, taken multiplicatively.

    ``y_k = x_k · R_α(x_k / x_{k-1})``, ``x_{k+1} = ψ(y_k)``, ``g_k = x_{k+1} - y_k`` and
    ``α_{k+1} = <g_k, g_{k-1}> / <g_{k-1}, g_{k-1}>`` clipped to [:data:`ALPHA_FLOOR`, 0.999]
    (Biggs & Andrews clip it to [0, 1): the floor reached plain RL's PSNR up to three iterations
    sooner, never later, see :data:`ALPHA_FLOOR`). Biggs & Andrews step
    along ``x_k - x_{k-1}`` and clip the guess at zero; RL is multiplicative, so a voxel clipped
    to zero can never recover, and on noisy 3D data that path peaks about 0.2 dB lower. A
    geometric step, ``R_α(r) = r^α``, keeps the guess positive, at the price of a ``log`` and
    an ``exp`` per voxel. ``R_α`` is instead the [1/1] Padé approximant of ``r^α`` at ``r = 1``
    (:meth:`deconv3d._rl_torch_ops.TorchOps.extrapolate`): the same first- and second-order
    prediction, positive, bounded like a clamped ratio, and only additions, multiplications
    and one division. Measured on
    6.3M float32 voxels with 2 threads: 2.9 ms against 5.6 ms for the geometric step (median
    of 15), where one RL iteration at that FFT size takes about 32 ms; with the ``numba``
    extra it is one fused pass (:class:`deconv3d._rl_fused_ops.FusedOps`), and so are the update,
    the step and its two dot products, which then keep one step vector instead of two. With
    a ``schedule`` (replayed steps) no step vectors are kept at all. On the bench_rl problem,
    without the floor, it reached plain RL's 20-iteration PSNR within one iteration of ``r^α``
    (zero boundary: iteration 11 against 10, 28.13 vs 28.14 dB at iteration 10; Bertero: both at
    iteration 10, 33.99 vs 33.85 dB after 20); with it, at iteration 10 (zero) and 9 (Bertero).
    """
    x = _initial_estimate(p)
    x_prev, guess = torch.empty_like(x), ws.estimate_in  # the FFT reads the guess where it is written
    buffers = ws.ops.buffers(x, steps=schedule is None)  # a schedule needs no step vectors
    alpha, gg_prev = 0.0, None
    for it in range(1, iterations + 1):
        if schedule is not None:
            alpha = schedule[it - 1] if it <= len(schedule) else 0.0
        if record is not None:
            record.append(alpha if it > 2 else 0.0)
        if it > 2 and alpha > 0:
            ws.ops.extrapolate(x, x_prev, alpha, out=guess, buffers=buffers)
        else:
            guess.copy_(x)
        if schedule is not None:
            _rl_update(p, ws, guess, x_prev, tv)  # x_prev's buffer now holds x_{k+1}
        else:
            factor = _rl_factor(p, ws, guess)
            denominator = tv.denominator(guess) if tv is not None else None
            # x_prev's buffer now holds x_{k+1}; the step g = x_{k+1} - guess stays in buffers
            gg, g_gprev = ws.ops.update_step(guess, factor, denominator, x_prev, buffers, weight=p.inv_weight)
            if it > 1:
                alpha = min(max(g_gprev / max(gg_prev, 1e-30), ALPHA_FLOOR), 0.999)
            gg_prev = gg  # the next iteration's denominator
        x, x_prev = x_prev, x
        if _should_stop(it, x, x_prev if tol is not None else None, tol, callback, p):
            break
    return x
