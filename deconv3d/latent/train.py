"""Training of the linear-latent autoencoder on focal stacks.

Each step draws a batch of random triplet crops (:class:`deconv3d.latent.data.TripletSampler`),
encodes the planes in one batch (so that batch normalisation sees them together), combines
the latents of each triplet's ends with its ``alpha``, decodes everything in one batch and
minimises the chosen objective of :mod:`deconv3d.latent.losses` with Adam. An exponential
moving average of the weights (with the usual warm-up ``min(decay, (1 + t) / (10 + t))``)
is validated every ``val_every`` steps on held-out stacks by the PSNR of the interpolated
middle plane ``D(alpha E(x1) + (1 - alpha) E(x3))`` against ``x2`` over fixed ten-crops of
the dyadic triplets; the best validated weights are returned. A run whose loss, weights,
batch-normalisation statistics or validation score stop being finite (too high a learning
rate) ends with reason ``"non-finite loss"``; a validation score that is not finite is
never kept as the best.

References
----------
.. [1] P. Mazilu, H. Wang, S. Dummer, R. Veldhuis, C. Brune and N. Strisciuglio,
   "Defocus blur synthesis and deblurring via interpolation and extrapolation in latent
   space", CAIP 2023, arXiv:2307.15461.
.. [2] B. T. Polyak and A. B. Juditsky, "Acceleration of stochastic approximation by
   averaging", SIAM J. Control Optim. 30(4):838-855 (1992).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from deconv3d._arrays import as_numpy
from deconv3d._environment import run_environment
from deconv3d._tensors import resolve_device
from deconv3d._torch_common import MixedPrecision, WeightAverage, amp_dtype, autocast
from deconv3d._training_stop import _StepClock, stop_reason
from deconv3d.errors import InputError, require_config
from deconv3d.latent.config import LatentTrainConfig, config_to_dict, train_config_from_dict
from deconv3d.latent.data import (TripletSampler, all_triplets, check_levels, dyadic_triplets,
                                  fixed_triplet_crops, normalize_planes, split_by_image)
from deconv3d.latent.losses import LATENT_NORMS, baseline_loss, explicit_loss, implicit_loss
from deconv3d.latent.model import AEConfig, Autoencoder, build_autoencoder
from deconv3d.latent.encoding import lincomb

__all__ = ["LatentTrainConfig", "LatentTrainResult", "train", "triplet_loss", "interpolation_psnr",
           "train_config_from_dict", "config_to_dict"]

Callback = Callable[[int, float], Optional[bool]]
@dataclass
class LatentTrainResult:
    """Outcome of :func:`train`.

    ``model`` (eval mode, on the training device) holds the best validated averaged weights
    (the last ones without validation), and records the form it was trained in
    (``model.residual``, ``config.residual``), which :mod:`deconv3d.latent.ops` applies it in.
    ``history`` is ``(step, loss)`` for every step, ``val_history`` ``(step, PSNR dB)``;
    ``reason`` is ``"completed"``, ``"cancelled"``, ``"time_budget"``, ``"stop_after"``
    (``config.stop_after`` steps done) or ``"non-finite loss"``.
    The last means the run diverged: the loss, a weight or buffer of the network or of its
    average (e.g. a BatchNorm running variance), or a validation score was NaN or infinite;
    ``model`` then holds the best finite validated weights if there were any, else the
    diverged ones, and is not to be used (``deconv3d blur train`` refuses to save it, and so
    does :func:`~deconv3d.latent.checkpoint.save_checkpoint`). ``best_score`` is finite or None.
    """

    model: Autoencoder
    history: list[tuple[int, float]]
    val_history: list[tuple[int, float]]
    best_score: float | None
    best_step: int
    steps_done: int
    reason: str
    config: LatentTrainConfig
    ae_config: AEConfig
    levels: np.ndarray
    seconds: float = 0.0
    last_terms: dict[str, float] = field(default_factory=dict)
    # what the network trained in: "float32", the mixed-precision autocast dtype ("bfloat16" on a CPU with
    # AMX, "float16" on CUDA; LatentTrainConfig.amp), or e.g. "bfloat16 for steps 1-3, then float32"
    precision: str = "float32"
    # the device, threads and versions it trained in (deconv3d._environment.run_environment; the network has no
    # FFT), which change the weights' last bits: recorded here, not where the result is saved
    environment: Optional[dict] = None

    @property
    def stopped_early(self) -> bool:
        return self.reason != "completed"


# ------------------------------------------------------------------ loss of one batch


def _split(z: tuple, sizes: list[int]) -> list[tuple]:
    return [tuple(parts) for parts in zip(*(t.split(sizes) for t in z))]


def triplet_loss(model, x1, x2, x3, alpha, variant: str = "explicit", dist: str = "mse", residual: bool = False,
                 latent_weight: float = 1.0, latent_norm: str = "none"):
    """Loss of a batch of triplets: encode, interpolate, decode, :mod:`~deconv3d.latent.losses`.

    Parameters
    ----------
    model : Autoencoder
    x1, x2, x3 : torch.Tensor
        ``(B, 1, H, W)`` planes at levels ``a < m < b``.
    alpha : torch.Tensor
        ``(B,)`` weights ``(b - m) / (b - a)``.
    variant, dist : str
        Objective and latent distance (see :class:`LatentTrainConfig`).
    residual : bool
        Score the interpolation in residual form (:class:`LatentTrainConfig`).
    latent_weight : float
        Weight of the explicit loss's latent term.
    latent_norm : {"none", "endpoints"}
        ``"endpoints"`` divides the latent term by ``dist(z1, z3)``
        (:func:`~deconv3d.latent.losses.explicit_loss`).

    Returns
    -------
    (torch.Tensor, dict)
        The scalar loss and its terms.
    """
    b = x1.shape[0]
    planes = [x1, x3, x2] if variant == "explicit" else [x1, x3]
    # the latent arithmetic and terms at the planes' precision (float32 under autocast)
    z = tuple(t.to(x1.dtype) for t in model.encode(torch.cat(planes)))
    z1, z3, *rest = _split(z, [b] * len(planes))
    if variant == "baseline":
        y1, y3 = model.decode(tuple(torch.cat([t1, t3]) for t1, t3 in zip(z1, z3))).split(b)
        return baseline_loss(x1, x3, y1, y3)
    a = alpha.view(-1, 1, 1, 1)
    z2_interp = lincomb([a, 1 - a], [z1, z3])
    y1, y3, y2 = model.decode(tuple(torch.cat([t1, t3, t2]) for t1, t3, t2 in zip(z1, z3, z2_interp))).split(b)
    if residual:
        y2 = _residual_form(y2, x1, x3, y1, y3, a)
    if variant == "implicit":
        return implicit_loss(x1, x2, x3, y1, y2, y3)
    if latent_norm not in LATENT_NORMS:
        raise InputError(f"latent_norm must be one of {', '.join(LATENT_NORMS)}, got {latent_norm!r}")
    ends = (z1, z3) if latent_norm == "endpoints" else None
    return explicit_loss(x1, x2, x3, y1, y2, y3, z2_interp, rest[0], dist, latent_weight, z_ends=ends)


def _residual_form(y2, x1, x3, y1, y3, a):
    """``alpha x1 + (1 - alpha) x3 + y2 - [alpha y1 + (1 - alpha) y3]``."""
    return y2 + a * (x1 - y1) + (1 - a) * (x3 - y3)


def interpolation_psnr(model, x1, x2, x3, alpha, chunk: int = 64, residual: bool = False) -> float:
    """Mean PSNR (data range 1) of ``D(alpha E(x1) + (1 - alpha) E(x3))`` against ``x2``
    (in residual form, :class:`LatentTrainConfig`, when ``residual``)."""
    was_training = model.training
    model.eval()
    scores = []
    with torch.no_grad():
        for s in range(0, x1.shape[0], chunk):
            c1, c2, c3, a = (t[s:s + chunk] for t in (x1, x2, x3, alpha))
            z1, z3 = _split(model.encode(torch.cat([c1, c3])), [c1.shape[0]] * 2)
            w = a.view(-1, 1, 1, 1)
            y2 = model.decode(lincomb([w, 1 - w], [z1, z3]))
            if residual:
                y1, y3 = model.decode(tuple(torch.cat([t1, t3]) for t1, t3 in zip(z1, z3))).split(c1.shape[0])
                y2 = _residual_form(y2, c1, c3, y1, y3, w)
            mse = (y2 - c2).square().mean(dim=(1, 2, 3))
            scores.append(-10 * torch.log10(mse.clamp_min(1e-10)))
    model.train(was_training)
    return float(torch.cat(scores).mean())


# ------------------------------------------------------------------ helpers


def _all_finite(*models) -> bool:
    """Whether the floating parameters and buffers of ``models`` all have finite sums.

    The loss alone does not show divergence: the decoder ends in a sigmoid, so with exploding
    weights the loss stays bounded while BatchNorm's running variance overflows, and the
    network is then useless in eval mode. A sum is NaN or infinite when a value is, or when
    the values are too large to add up in float32, which no converging run comes near; one
    sum per tensor costs a fraction of ``torch.isfinite`` on every value (measured, 2 cores)."""
    unique = {id(m): m for m in models}.values()
    sums = [t.sum() for m in unique for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def _schedule(optimizer, config: LatentTrainConfig):
    if config.lr_decay == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    milestones = [config.steps // 2, (3 * config.steps) // 4] if config.lr_decay == "step" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[m for m in milestones if m > 0], gamma=0.5)


def plane_problem(stacks: np.ndarray) -> tuple[int, int, str] | None:
    """``(stack, plane, "has a plane that is constant" | "repeats a plane")`` for the first plane of
    ``(n_images, n_levels, H, W)`` stacks that training cannot use, or None. A constant plane
    carries no blur; two equal planes make the latent distances between them zero."""
    flat = stacks.reshape(stacks.shape[0], stacks.shape[1], -1)
    constant = np.argwhere(flat.max(axis=2) == flat.min(axis=2))
    if constant.size:
        return int(constant[0][0]), int(constant[0][1]), "has a plane that is constant"
    for i, planes in enumerate(flat):
        _, inverse = np.unique(planes, axis=0, return_inverse=True)
        seen: set = set()
        for k, group in enumerate(np.ravel(inverse)):
            if group in seen:
                return i, k, "repeats a plane"  # k: the later copy
            seen.add(group)
    return None


def _check_stacks(stacks, levels, ae_config: AEConfig) -> tuple[np.ndarray, np.ndarray]:
    x = as_numpy(stacks, dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.size == 0:
        raise InputError(f"stacks must be (n_images, n_levels, H, W) or one (n_levels, H, W), got {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("stacks contain NaN or Inf values: clean them first")
    problem = plane_problem(x)
    if problem is not None:
        i, k, what = problem
        raise InputError(f"stack {i} {what} (level index {k}): "
                         + ("such planes carry no blur to learn; remove them or the stack" if what.endswith("constant")
                            else "each level must be its own focal plane; remove the copy"))
    levels = check_levels(levels, x.shape[1])
    if ae_config.crop > min(x.shape[-2:]):
        raise InputError(f"planes {x.shape[-2:]} are smaller than the crop {ae_config.crop}: "
                         "use a smaller AEConfig.crop")
    return normalize_planes(x), levels


class _Validator:
    """Fixed validation crops on the device; keeps the best averaged weights."""

    def __init__(self, stacks, levels, crop: int, device, residual: bool = False):
        arrays = fixed_triplet_crops(stacks, dyadic_triplets(levels), crop) if len(stacks) else None
        self.crops = None if arrays is None else [torch.from_numpy(a).to(device) for a in arrays]
        self.history, self.best, self.best_step, self.best_state = [], None, 0, None
        self.residual = residual

    def __call__(self, step: int, model: torch.nn.Module) -> float | None:
        """Score ``model`` at ``step`` (None without validation data or if already scored);
        keep its weights if the score is finite and the best so far."""
        if self.crops is None or (self.history and self.history[-1][0] == step):
            return None
        score = interpolation_psnr(model, *self.crops, residual=self.residual)
        self.history.append((step, score))
        # a NaN score must not become the best: nothing compares greater than NaN, so it would stay
        if math.isfinite(score) and (self.best is None or score > self.best):
            self.best, self.best_step = score, step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return score


# ------------------------------------------------------------------ training loop


def train(stacks, levels, config: LatentTrainConfig = LatentTrainConfig(), ae_config: AEConfig = AEConfig(),
          device="auto", callback: Callback | None = None) -> LatentTrainResult:
    """Train a linear-latent autoencoder on focal stacks.

    Parameters
    ----------
    stacks : array_like
        ``(n_images, n_levels, H, W)`` focal stacks (or one ``(n_levels, H, W)``), planes
        ordered by level; each plane is min-max normalised to [0, 1] here.
    levels : sequence of float
        Strictly increasing level value of each plane (larger = closer to focus).
    config : LatentTrainConfig
        Objective, steps, batch, optimiser, schedule, averaging, validation, seed, budget.
    ae_config : AEConfig
        Network shape and training crop.
    device : {"auto", "cpu", "cuda"} or torch.device
    callback : callable, optional
        ``callback(step, loss)`` after every step (1-based); returning ``True`` cancels.

    Returns
    -------
    LatentTrainResult

    Notes
    -----
    Stacks are split by image (``config.val_fraction``, seeded); training triplets are
    the dyadic midpoint triplets of the levels or all triplets. The weights are
    initialised from ``config.seed``, crops drawn from a numpy Generator seeded with it.
    With ``config.amp`` the network runs under autocast (bfloat16 on a CPU with AMX, about
    half the step time; float16 on CUDA) with its output layer, the latent arithmetic and the
    losses in float32; a step whose reduced-precision pass is not finite is redone in
    float32, as is the rest of the run (``LatentTrainResult.precision`` says so).
    Validation runs in float32. Under ``config.time_budget`` a step is not started when the longest of the
    last few steps' times says it would end past the budget (:class:`~deconv3d._training_stop._StepClock`;
    reason ``"time_budget"``, at least one step run); validation, not counted in them, follows the last step too.

    Examples
    --------
    >>> from deconv3d.latent.data import synthetic_focal_stacks
    >>> stacks, levels = synthetic_focal_stacks(2, (16, 16), levels=(0, 2, 4), seed=0)
    >>> res = train(stacks, levels, LatentTrainConfig(steps=2, batch=2, val_every=1),
    ...             AEConfig(widths=(4, 8), crop=16), device="cpu")
    >>> res.steps_done, res.reason
    (2, 'completed')
    """
    require_config(config, LatentTrainConfig, "config")
    require_config(ae_config, AEConfig, "ae_config")
    dev = resolve_device(device)
    x, levels = _check_stacks(stacks, levels, ae_config)
    train_set, val_set = split_by_image(x, config.val_fraction, config.seed)
    triplets = dyadic_triplets(levels) if config.triplets == "dyadic" else all_triplets(levels)
    sampler = TripletSampler(train_set, triplets, ae_config.crop, seed=config.seed, device=dev,
                             augment=config.augment)
    validator = _Validator(val_set, levels, ae_config.crop, dev, config.residual)
    model, average, optimizer, schedule = _model_and_optimiser(ae_config, config, dev)
    precision = MixedPrecision(amp_dtype(config.amp, dev))
    once = _step_function(model, optimizer, precision, config, dev)
    started = time.perf_counter()
    history, terms, step, reason, evaluated = _run_steps(sampler, once, precision, model, average, schedule, config,
                                                         callback, started, validator)
    evaluated = _best_model(evaluated, validator, config)
    return LatentTrainResult(evaluated, history, validator.history, validator.best, validator.best_step,
                             step, reason, config, ae_config, levels,  # float64: see TrainedAutoencoder
                             time.perf_counter() - started, terms, precision.name(),
                             run_environment(dev, fft_shapes=None))


def _step_function(model, optimizer, precision: MixedPrecision, config: LatentTrainConfig, dev):
    """``once(x1, x2, x3, alpha)``: one pass of :func:`triplet_loss` on a batch under autocast, back-propagated
    where the loss is finite; it returns the loss's terms (``MixedPrecision.step`` redoes it in float32)."""
    def once(x1, x2, x3, alpha) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision.dtype, dev):
            loss, terms = triplet_loss(model, x1, x2, x3, alpha, config.variant, config.dist, config.residual,
                                       config.latent_weight, config.latent_norm)
        if math.isfinite(terms["total"]):
            precision.backward(loss, optimizer)
        return terms

    return once


def _run_steps(sampler, once, precision: MixedPrecision, model, average, schedule, config: LatentTrainConfig,
               callback, started: float, validator):
    """Train until :func:`_stop_reason` gives a reason. Returns (history of (step, loss), the last step's
    terms, steps done, the reason, the network evaluated: the weight average where there is one)."""
    history, terms, step = [], {}, 0
    clock = _StepClock(config.time_budget, started)
    while True:
        step += 1
        begun = time.perf_counter()
        batch = sampler.sample(config.batch)
        terms = precision.step(lambda: once(*batch), step, model, stacklevel=3)  # (the caller of train)
        if math.isfinite(terms["total"]) and average is not None:
            average.update(model)
        schedule.step()
        history.append((step, terms["total"]))
        clock.record(time.perf_counter() - begun, 1)  # (validation, every val_every steps, not counted)
        evaluated = average.model if average is not None else model
        reason = _stop_reason(step, terms, config, callback, started, model, evaluated, validator, clock)
        if reason is not None:
            return history, terms, step, reason, evaluated


def _model_and_optimiser(ae_config: AEConfig, config: LatentTrainConfig, dev):
    """The seeded autoencoder in training mode, its weight average (None without), Adam and its schedule."""
    model = build_autoencoder(ae_config, config.seed, dev).train()
    if dev.type == "cpu":  # oneDNN convolutions run ~1.4x faster channels-last (measured, 2 cores)
        model = model.to(memory_format=torch.channels_last)
    average = WeightAverage(model, config.ema_decay, buffers=True) if config.ema_decay > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return model, average, optimizer, _schedule(optimizer, config)


def _stop_reason(step, terms, config: LatentTrainConfig, callback, started, model, evaluated, validator,
                 clock: _StepClock):
    """Why training stops after this step (None: it goes on), validating ``evaluated`` when due: a
    network, weight average or validation score that is not finite stops it as "non-finite loss";
    "time_budget" also when ``clock`` says the next step would end past the budget, asked before and again
    after the validation (the next step starts after it)."""
    reason = stop_reason(step, terms["total"], config.steps, config.time_budget, callback, started,
                         config.stop_after)
    if reason is None and clock.would_overrun(time.perf_counter(), 1):
        reason = "time_budget"
    if not _all_finite(model, evaluated):  # diverged with a finite loss (see _all_finite)
        reason = "non-finite loss"
    if step % config.val_every == 0 or reason is not None:
        score = validator(step, evaluated)
        if score is not None and not math.isfinite(score):
            reason = "non-finite loss"
    if reason is None and clock.would_overrun(time.perf_counter(), 1):  # (the next step starts after the validation)
        reason = "time_budget"
    return reason


def _best_model(evaluated, validator, config: LatentTrainConfig):
    """The evaluated network with the best validated weights, contiguous, in evaluation mode."""
    if validator.best_state is not None:
        evaluated.load_state_dict(validator.best_state)
    evaluated = evaluated.to(memory_format=torch.contiguous_format).eval()
    evaluated.residual = bool(config.residual)  # the form it was trained in, for a caller that passes .model alone
    return evaluated
