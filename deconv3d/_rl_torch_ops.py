"""The element-wise passes of the Richardson-Lucy loop as torch operations (:class:`TorchOps`, any
device and dtype): the reference that the fused numba passes (:mod:`deconv3d._rl_fused_ops`) match.
:func:`deconv3d._rl_ops.ops_for` picks one or the other."""

from __future__ import annotations

from types import SimpleNamespace

import torch

TINY = 1e-30  # denominator floor of the extrapolation: where both estimates are 0, so is the guess


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


class TorchOps:
    """The passes as torch operations (any device and dtype)."""

    name = "torch"

    @staticmethod
    def ratio(data, blurred, floor: float, out, lower=None) -> None:
        """``out = data / max(blurred, floor)`` (``blurred`` is clamped in place), then with ``lower``
        (the least ratio of each datum, a clipped voxel's bound) ``out = max(out, lower)``."""
        torch.div(data, blurred.clamp_min_(floor), out=out)
        if lower is not None:
            torch.maximum(out, lower, out=out)

    @staticmethod
    def buffers(like: torch.Tensor, steps: bool = True) -> SimpleNamespace:
        """The run's work arrays, shaped like the estimate: the extrapolation's scratch and,
        with ``steps``, two step vectors (this step and the previous one)."""
        z = (lambda: torch.zeros_like(like)) if steps else (lambda: None)
        return SimpleNamespace(scratch=torch.empty_like(like), g=z(), g_prev=z())

    @staticmethod
    def update(u, factor, denominator, out, weight=None) -> None:
        """The RL update ``out = max(u · (factor [· weight]) [/ denominator], 0)``; ``out`` may be
        ``u``. ``weight`` (the Bertero normalisation ``1 / H^T 1``) multiplies ``factor`` in place
        first."""
        if weight is not None:
            factor.mul_(weight)
        torch.mul(u, factor, out=out)
        if denominator is not None:
            out.div_(denominator)
        out.clamp_min_(0)

    @staticmethod
    def update_step(guess, factor, denominator, out, buffers, weight=None) -> tuple[float, float]:
        """:meth:`update` of ``guess`` into ``out`` and the Biggs-Andrews step ``g = out - guess``;
        returns ``(<g, g>, <g, g_prev>)`` and keeps ``g`` as the next call's ``g_prev``
        (``buffers`` from :meth:`buffers`)."""
        TorchOps.update(guess, factor, denominator, out, weight)
        g, g_prev = buffers.g, buffers.g_prev
        torch.sub(out, guess, out=g)
        gg, g_gprev = torch.stack((_dot(g, g), _dot(g, g_prev))).tolist()  # one host sync on a GPU, not two
        buffers.g, buffers.g_prev = g_prev, g
        return gg, g_gprev

    @staticmethod
    def extrapolate(x, x_prev, alpha: float, out, buffers) -> None:
        """``out = x · R_α(x / x_prev)``, ``R_α(r) = ((1 - α) + (1 + α) r) / ((1 + α) + (1 - α) r)``.

        ``R_α`` is the [1/1] Padé approximant of ``r^α`` about ``r = 1``: equal value, slope and
        curvature there, increasing, and bounded to ``[1/c, c]`` with ``c = (1 + α) / (1 - α)``,
        so the guess stays positive and a voxel that fell to near zero is not pushed to zero.
        Taken as ``x (x_prev + c x) / (x + c x_prev)``; where both are 0 the guess is 0.

        Examples
        --------
        >>> x, prev = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
        >>> out = torch.empty(3)
        >>> TorchOps.extrapolate(x, prev, 0.5, out, TorchOps.buffers(out, steps=False))
        >>> [round(v, 3) for v in out.tolist()]  # 2 * 2**0.5 = 2.828 exactly; the approximant 2.8
        [2.8, 1.0, 0.0]
        """
        c = (1.0 + alpha) / (1.0 - alpha)
        torch.add(x_prev, x, alpha=c, out=out)
        scratch = buffers.scratch
        torch.add(x, x_prev, alpha=c, out=scratch).clamp_min_(TINY)
        out.div_(scratch).mul_(x)
