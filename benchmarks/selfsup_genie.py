"""Reference rows for bench_selfsup.py: the library's network trained with the answer.

Not methods (no real stack comes with its truth): the same residual UNet, Richardson-Lucy
base, patch sampler, augmentation, Adam schedule, weight average, precision (``config.amp``)
and step or time budget as :func:`deconv3d.selfsup.train`, with a supervised loss instead of
the self-supervised Siamese loss. Trained on the ground truth, it shows what this network reaches in the same
CPU budget when told the answer. Trained in data space on the noise-free blurred image,
it shows what the measurement itself teaches the network in that budget, without the
noise that the self-supervised losses must average out.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch

from deconv3d._torch_common import MixedPrecision, amp_dtype, autocast
from deconv3d._training_stop import stop_reason
from deconv3d.psf import normalize_psf, validate_psf
from deconv3d.selfsup.config import TrainConfig, UNetConfig
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import mse
from deconv3d.selfsup.patches import _PatchSampler
from deconv3d.selfsup.rl_reference import warm_start_target
from deconv3d.selfsup.train import TrainResult
from deconv3d.selfsup.train_setup import standardize, trainable_model


def train_supervised(noisy: np.ndarray, psf: np.ndarray, target: np.ndarray, config: TrainConfig,
                     unet: UNetConfig, data_space: bool = False) -> TrainResult:
    """Train the residual network of ``config`` on ``noisy`` with ``MSE(f(x), target)``; CPU only.

    ``f(x) = T + r(x)`` with ``T`` the held-out-calibrated RL estimate that :func:`train`'s
    residual form uses, and ``target`` the ground truth. Two samplers seeded alike cut the
    image and the target at the same positions with the same augmentation; the result is
    applied with :func:`deconv3d.selfsup.apply_model` like any trained network.

    ``data_space`` trains ``MSE(H f(x), target)`` through the training's forward model, with
    ``target`` the noise-free blurred image: the data term with its noise removed, which the
    self-supervised data terms estimate from the noisy image.
    """
    if not config.residual:
        raise ValueError("the reference trains the residual form only")
    dev = torch.device("cpu")
    standardized, mean, std = standardize(noisy)
    psf = normalize_psf(validate_psf(psf))
    forward = ForwardModel(psf, device=dev)
    geometry = forward.geometry([min(config.patch, n) for n in noisy.shape], unet.divisor)
    region = (Ellipsis,) + tuple(geometry.region)
    image_patches = _PatchSampler(standardized, geometry, config, dev)
    target_patches = _PatchSampler((target - np.float32(mean)) / np.float32(std), geometry, config, dev)
    predict = (lambda f: forward.blur(f, geometry.region)) if data_space else (lambda f: f[region])
    started = time.perf_counter()
    base, reference = warm_start_target(noisy, psf, dev, config.warm_tv, extended=True)
    image_patches.set_target((base - np.float32(mean)) / np.float32(std), (forward.halo_before, forward.halo_after))
    unet = replace(unet, positive=False)  # a signed correction, clamped at zero intensity as in train()
    floor = -mean / std  # zero intensity in standardised units
    model, optimizer, schedule, average = trainable_model(unet, config, dev, floor)  # starts at T exactly
    precision = MixedPrecision(amp_dtype(config.amp, dev))  # as train() trains, fallback included

    def once(batch, wanted) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision.dtype, dev):
            out = model(batch.augment(batch.fields))
        f = (batch.restore(out.float()) + batch.target_field).clamp_min(floor)
        loss = mse(predict(f), wanted)
        value = float(loss.detach())
        if math.isfinite(value):
            precision.backward(loss, optimizer)
        return {"total": value}

    history, step = [], 0
    while True:
        step += 1
        batch, wanted = image_patches.sample(config.batch), target_patches.sample(config.batch).data
        loss = precision.step(lambda: once(batch, wanted), step, model)["total"]
        schedule.step()
        if average is not None:
            average.update(model)
        history.append((step, loss))
        reason = stop_reason(step, loss, config.steps, config.time_budget, None, started)
        if reason is not None:
            break
    if average is not None:
        average.copy_to(model)
    model = model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(model, mean, std, history, step, reason != "completed", reason, config, unet, psf, None,
                       time.perf_counter() - started, {}, 0, reference,
                       precision=precision.name())
