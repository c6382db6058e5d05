"""When the training loops of the two trainable models (selfsup and latent) stop: ``stop_reason`` after
each step, and ``_StepClock``, which does not start a step that would end past the time budget."""

from __future__ import annotations

import math
import time


def stop_reason(step: int, loss: float, steps: int, time_budget, callback, started: float,
                stop_after: int | None = None) -> str | None:
    """``"non-finite loss"``, ``"cancelled"``, ``"completed"``, ``"stop_after"`` (``step`` reached
    ``stop_after``, before ``steps``), ``"time_budget"`` or None (go on)."""
    if not math.isfinite(loss):
        return "non-finite loss"
    if callback is not None and callback(step, loss):
        return "cancelled"
    if step >= steps:
        return "completed"
    if stop_after is not None and step >= stop_after:
        return "stop_after"
    if time_budget is not None and time.perf_counter() - started >= time_budget:
        return "time_budget"
    return None


#: How many of the last steps' times :class:`_StepClock` takes the longest of.
RECENT_STEPS = 3


class _StepClock:
    """Whether the next training step would end past ``time_budget`` (seconds from ``started``, a
    ``time.perf_counter()`` value; None: no budget), so that it is not started: a started step always
    finishes, so the one begun just before the budget ended took the run past it by up to a step's time.

    The next step's time is taken as the longest of the last :data:`RECENT_STEPS` steps per network pass,
    times the next step's passes (a self-supervised Siamese step after warm-start steps runs two where they
    ran one; a step of the latent autoencoder counts as one). Both trainers ask it when :func:`stop_reason`
    gives no reason. The first step, which also sets up the network's kernels and may take longer than the
    next ones, counts only while it is the only one measured. A step slower than those it follows still ends
    past the budget, by the difference."""

    def __init__(self, time_budget: float | None, started: float):
        self.time_budget, self.started = time_budget, started
        self.per_pass: list[float] = []  # seconds per network pass of each step run

    def record(self, seconds: float, passes: int) -> None:
        """A step run: it took ``seconds`` and ran the network ``passes`` times."""
        self.per_pass.append(seconds / passes)

    def estimate(self, passes: int) -> float:
        """Seconds a step of ``passes`` network passes is expected to take (0 before any step is measured)."""
        recent = self.per_pass[1:][-RECENT_STEPS:] or self.per_pass
        return max(recent, default=0.0) * passes

    def would_overrun(self, now: float, passes: int) -> bool:
        """Whether a step of ``passes`` passes started at ``now`` would end past the budget."""
        return self.time_budget is not None and now - self.started + self.estimate(passes) > self.time_budget
