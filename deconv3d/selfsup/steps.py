"""The steps of self-supervised training (:func:`deconv3d.selfsup.train`): a Siamese step, a
warm-start step, and the loop that runs them with their optimiser, schedule and weight average."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch

from deconv3d._torch_common import AMP_OVERFLOW, WeightAverage, autocast, dtype_name, grad_scaler, stop_reason
from deconv3d.selfsup.config import WARM_SHARE, TrainConfig
from deconv3d.selfsup.losses import ForwardModel, LossWeights, mse, siamese_loss
from deconv3d.selfsup.patches import _Batch, _PatchSampler
from deconv3d.selfsup.unet import ResUNet


def _train_step(model, batch: _Batch, forward: ForwardModel, region, weights: LossWeights, optimizer, scaler,
                stats: tuple[float, float], amp: torch.dtype | None, data_weight=None, anchor: float = 0.0,
                residual: bool = False, floor: float | None = None) -> dict[str, float]:
    """One Siamese step: two passes with shared weights (autocast to ``amp`` unless None), loss in
    float32, update.

    ``anchor`` > 0 with a batch target adds ``anchor * MSE(f(x), target)`` on the compared region.
    ``residual`` makes the estimate the batch target plus the network's output, in both passes,
    clamped at ``floor`` (zero intensity in standardised units) unless it is None.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(amp, batch.fields.device):
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
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    return terms


def _warm_step(model, batch: _Batch, region, optimizer, scaler, amp: torch.dtype | None) -> dict[str, float]:
    """One warm-start step: ``MSE(f(x), target)`` on the compared region, one pass, no mask."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(amp, batch.fields.device):
        out = model(batch.augment(batch.fields))
    loss = mse(batch.restore(out.float())[(Ellipsis,) + tuple(region)], batch.target)
    value = float(loss.detach())
    if math.isfinite(value):
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return {"warm": value, "total": value}



@dataclass
class _Steps:
    """The training loop of :func:`train`: the network, its optimiser, schedule and weight average,
    and what each step's loss needs (``floor``: zero intensity, where the residual sum is kept
    non-negative; ``amp``, the autocast dtype or None, and its gradient ``scaler``, switched off for
    good after a non-finite pass)."""

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
    amp: Optional[torch.dtype]
    scaler: object
    fell_back: Optional[tuple] = None  # (the autocast dtype, the step that fell back to float32)

    def run(self, sampler: _PatchSampler, callback, started: float) -> tuple:
        """Steps until :func:`~deconv3d._torch_common.stop_reason` gives a reason: the warm-start
        steps first (``config.warm_steps``; "auto" under a time budget also ends them at 3/8 of it).
        Returns (steps, history, last terms, reason, warm-start steps run)."""
        config = self.config
        warm_until = None
        if config.warm_start == "auto" and config.time_budget is not None:
            warm_until = started + WARM_SHARE[0] / WARM_SHARE[1] * config.time_budget
        history, step, warming, warm_done = [], 0, config.warm_steps > 0, 0
        while True:
            step += 1
            if warming and (step > config.warm_steps or (warm_until is not None and time.perf_counter() >= warm_until)):
                warming = False
                if not config.anchor_weight:
                    sampler.set_target(None)
            before = self.amp
            terms = self.step(sampler.sample(config.batch), warming)
            if self.amp is not before:
                self.fell_back = (before, step)
            if warming:
                warm_done = step
            self.schedule.step()
            if self.average is not None:
                self.average.update(self.model)
            history.append((step, terms["total"]))
            reason = stop_reason(step, terms["total"], config.steps, config.time_budget, callback, started)
            if reason is not None:
                return step, history, terms, reason, warm_done

    def precision(self) -> str:
        """What the network trained in: "float32", the autocast dtype ("bfloat16", "float16"), or
        e.g. "bfloat16 for steps 1-3, then float32" after a non-finite pass (the step redone)."""
        if self.fell_back is not None:
            dtype, step = self.fell_back
            if step == 1:
                return f"float32 (the first {dtype_name(dtype)} pass was not finite)"
            return f"{dtype_name(dtype)} for step{'s 1-' if step > 2 else ' '}{step - 1}, then float32"
        return dtype_name(self.amp or torch.float32)

    def step(self, batch: _Batch, warming: bool) -> dict[str, float]:
        """One optimiser step. The gradient scaler guards the backward pass only: an overflowing
        float16 forward pass would end the run as a non-finite loss, so that step (not taken) is
        redone in float32, as is the rest of the run (bfloat16 likewise)."""
        terms = self._once(batch, warming)
        if self.amp is not None and not math.isfinite(terms["total"]):
            dtype, self.amp, self.scaler = self.amp, None, grad_scaler(None)
            terms = self._once(batch, warming)
            if math.isfinite(terms["total"]):
                warnings.warn(AMP_OVERFLOW.format(dtype=dtype_name(dtype)), RuntimeWarning, stacklevel=4)
            else:  # a real divergence, which ends the run: no step was taken in float32
                self.amp = dtype
        return terms

    def _once(self, batch: _Batch, warming: bool) -> dict[str, float]:
        if warming:
            return _warm_step(self.model, batch, self.region, self.optimizer, self.scaler, self.amp)
        return _train_step(self.model, batch, self.forward, self.region, self.weights, self.optimizer, self.scaler,
                           self.mean_std, self.amp, self.data_weight, self.config.anchor_weight, self.config.residual,
                           self.floor)
