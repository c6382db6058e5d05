"""The steps of self-supervised training (:func:`deconv3d.selfsup.train`): a Siamese step, a
warm-start step, and the loop that runs them with their optimiser, schedule and weight average."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch

from deconv3d._torch_common import MixedPrecision, WeightAverage, autocast
from deconv3d._training_stop import _StepClock, stop_reason
from deconv3d.selfsup.config import WARM_SHARE, TrainConfig
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import LossWeights, mse, siamese_loss
from deconv3d.selfsup.patches import _Batch, _PatchSampler
from deconv3d.selfsup.unet import ResUNet


def _train_step(model, batch: _Batch, forward: ForwardModel, region, weights: LossWeights, optimizer,
                precision: MixedPrecision, stats: tuple[float, float], data_weight=None, anchor: float = 0.0,
                residual: bool = False, floor: float | None = None) -> dict[str, float]:
    """One Siamese step: two passes with shared weights (autocast to ``precision.dtype`` unless
    None), loss in float32, update.

    ``anchor`` > 0 with a batch target adds ``anchor * MSE(f(x), target)`` on the compared region.
    ``residual`` makes the estimate the batch target plus the network's output, in both passes,
    clamped at ``floor`` (zero intensity in standardised units) unless it is None.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision.dtype, batch.fields.device):
        out = model(batch.augment(batch.fields))
        out_masked = model(batch.augment(batch.masked))
    f, f_masked = batch.restore(out.float()), batch.restore(out_masked.float())
    if residual:
        f, f_masked = f + batch.target_field, f_masked + batch.target_field
        if floor is not None:
            f, f_masked = f.clamp_min(floor), f_masked.clamp_min(floor)
    total, terms = siamese_loss(batch.data, f, f_masked, batch.mask, partial(forward.blur, region=region), region,
                                weights, mean=stats[0], std=stats[1], data_weight=data_weight)
    if anchor and batch.target is not None:
        term = mse(f[(Ellipsis,) + tuple(region)], batch.target)
        total = total + anchor * term
        terms["anchor"], terms["total"] = float(term.detach()), float(total.detach())
    if math.isfinite(terms["total"]):
        precision.backward(total, optimizer)
    return terms


def _warm_step(model, batch: _Batch, region, optimizer, precision: MixedPrecision) -> dict[str, float]:
    """One warm-start step: ``MSE(f(x), target)`` on the compared region, one pass, no mask."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision.dtype, batch.fields.device):
        out = model(batch.augment(batch.fields))
    loss = mse(batch.restore(out.float())[(Ellipsis,) + tuple(region)], batch.target)
    value = float(loss.detach())
    if math.isfinite(value):
        precision.backward(loss, optimizer)
    return {"warm": value, "total": value}


def _still_warming(step: int, warm_steps: int, warm_until: float | None, now: float) -> bool:
    """Whether ``step`` (1-based) of a run still in its warm start is a warm-start step: within ``warm_steps``
    and, under a time budget with ``warm_start="auto"``, started before ``warm_until``."""
    return step <= warm_steps and (warm_until is None or now < warm_until)


def _passes(warming: bool) -> int:
    """The network passes of a step: one in a warm-start step, two (the full and the masked input) in a Siamese one."""
    return 1 if warming else 2


@dataclass
class _Steps:
    """The training loop of :func:`train`: the network, its optimiser, schedule and weight average,
    and what each step's loss needs (``floor``: zero intensity, where the residual sum is kept
    non-negative; ``precision``, the autocast dtype and gradient scaler, float32 for good after a
    non-finite pass)."""

    model: ResUNet
    optimizer: torch.optim.Optimizer
    schedule: object
    average: Optional[WeightAverage]
    forward: ForwardModel
    region: tuple
    weights: LossWeights
    mean_std: tuple[float, float]
    data_weight: Optional[torch.Tensor]
    config: TrainConfig
    floor: Optional[float]
    precision: MixedPrecision

    def run(self, sampler: _PatchSampler, callback, started: float) -> tuple:
        """Steps until :func:`~deconv3d._training_stop.stop_reason` gives a reason, or until the next step
        would end past ``config.time_budget`` by the time the recent steps took (:class:`_StepClock`; reason
        "time_budget", at least one step run): the warm-start steps first (``config.warm_steps``; "auto"
        under a time budget also ends them at 3/8 of it). Returns (steps, history, last terms, reason,
        warm-start steps run)."""
        config = self.config
        warm_until = None
        if config.warm_start == "auto" and config.time_budget is not None:
            warm_until = started + WARM_SHARE[0] / WARM_SHARE[1] * config.time_budget
        clock = _StepClock(config.time_budget, started)
        history, step, warming, warm_done = [], 0, config.warm_steps > 0, 0
        while True:
            step += 1
            begun = time.perf_counter()
            if warming and not _still_warming(step, config.warm_steps, warm_until, begun):
                warming = False
                if not config.anchor_weight:
                    sampler.set_target(None)
            batch = sampler.sample(config.batch)
            terms = self.precision.step(lambda: self._once(batch, warming), step, self.model, stacklevel=4)
            if warming:
                warm_done = step
            self.schedule.step()
            if self.average is not None:
                self.average.update(self.model)
            history.append((step, terms["total"]))
            reason = stop_reason(step, terms["total"], config.steps, config.time_budget, callback, started)
            ended = time.perf_counter()
            clock.record(ended - begun, _passes(warming))
            if reason is None:  # (the step after a warm one may be a Siamese one, of two passes)
                next_warm = warming and _still_warming(step + 1, config.warm_steps, warm_until, ended)
                reason = "time_budget" if clock.would_overrun(ended, _passes(next_warm)) else None
            if reason is not None:
                return step, history, terms, reason, warm_done

    def _once(self, batch: _Batch, warming: bool) -> dict[str, float]:
        """One optimiser step at the run's current precision."""
        if warming:
            return _warm_step(self.model, batch, self.region, self.optimizer, self.precision)
        return _train_step(self.model, batch, self.forward, self.region, self.weights, self.optimizer, self.precision,
                           self.mean_std, self.data_weight, self.config.anchor_weight, self.config.residual, self.floor)
