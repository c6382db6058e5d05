"""Set-up of self-supervised training (:func:`deconv3d.selfsup.train`): the input checks, the
image standardisation, the network and its optimiser as training starts them, the fields'
geometry and the data term's frequency weight.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deconv3d._arrays import as_numpy
from deconv3d._tensors import resolve_device
from deconv3d._torch_common import WeightAverage, build_seeded
from deconv3d._voxel import checked_voxel_size
from deconv3d.errors import InputError, NonFiniteValues
from deconv3d.psf import normalize_psf, validate_psf
from deconv3d.psf.prepare import larger_psf_fix
from deconv3d.selfsup.config import TrainConfig, UNetConfig
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import AUTO_EPS, snr_gain
from deconv3d.selfsup.unet import ResUNet

__all__ = ["make_forward_model", "standardize", "build_model", "trainable_model", "check_patch"]


def make_forward_model(psf, device="cpu") -> ForwardModel:
    """Validate ``psf``, normalise it to unit sum and wrap it as a :class:`ForwardModel`."""
    return ForwardModel(normalize_psf(validate_psf(psf)), device=resolve_device(device))


def standardize(image) -> tuple[np.ndarray, float, float]:
    """Return ``((image - mean) / std, mean, std)`` in float32 (statistics in float64)."""
    img = as_numpy(image, dtype=np.float32)
    mean, std = float(img.mean(dtype=np.float64)), float(img.std(dtype=np.float64))
    if not (math.isfinite(std) and std > 0):
        raise InputError("image is constant (zero standard deviation): there is nothing to deconvolve")
    return ((img - np.float32(mean)) / np.float32(std)).astype(np.float32), mean, std


def build_model(unet: UNetConfig, seed: int = 0, device="cpu") -> ResUNet:
    """A :class:`ResUNet` with weights initialised from ``seed`` (global RNG untouched)."""
    return build_seeded(lambda: ResUNet(unet), seed).to(resolve_device(device))


def _check_inputs(image, psf, unet, voxel_size):
    img = as_numpy(image, dtype=np.float32)
    if img.ndim not in (2, 3) or img.size == 0:
        raise InputError(f"image must be a non-empty 2D or 3D array, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise NonFiniteValues("image", "clean or crop it first")
    psf = normalize_psf(validate_psf(psf))
    if psf.ndim != img.ndim:
        raise InputError(f"image is {img.ndim}D but the PSF is {psf.ndim}D: give them the same dimensions")
    if any(n < k for n, k in zip(img.shape, psf.shape)):
        fix = larger_psf_fix(psf.shape, img.shape, "crop the PSF (deconv3d.psf.crop_psf) or use a larger image")
        raise InputError(f"image {img.shape} is smaller than the PSF {psf.shape} in some axis: {fix}")
    unet = UNetConfig(ndim=img.ndim) if unet is None else unet
    if unet.ndim != img.ndim:
        raise InputError(f"network is {unet.ndim}D but the image is {img.ndim}D: set UNetConfig(ndim={img.ndim})")
    return img, psf, unet, checked_voxel_size(voxel_size, img.ndim)



def check_patch(patch: int, image_shape, unet: UNetConfig, psf_shape) -> None:
    """Refuse a training patch side (``TrainConfig.patch``, ``--patch``) smaller than the network's
    down-sampling factor ``unet.divisor``, or than the image where the image is smaller than it. A patch
    larger than the image is not refused: the compared regions take the image's size along shorter axes
    (:func:`_field_geometry`), as the default 32 does on small images.

    For an image smaller than ``unet.divisor`` the advice names a batch of 2 or more too: a patch of the
    whole image makes fields that a PSF's halo may not take past one ``divisor`` a side, one value per
    channel at the network's coarsest level, which a batch of 1 leaves too few for batch normalisation
    (``_field_geometry``'s refusal) and no larger patch can change. Where the fields of the whole image
    (with the halo of a PSF of ``psf_shape``) could be too small for the depth (``_field_geometry``'s other
    refusal), it names the deepest network they take, so that the options it advises are accepted together."""
    shape, largest = tuple(int(n) for n in image_shape), max(image_shape)
    if patch >= min(unet.divisor, largest):
        return
    if largest < unet.divisor:  # (the depth itself is checked with the fields)
        deepest = _deepest(max(n + int(k) - 1 for n, k in zip(shape, psf_shape)))
        advice = (f"a patch of {largest}, a batch of 2 or more and a depth of {deepest} or less (--patch, --batch, "
                  "--unet-depth)" if unet.depth > deepest else
                  f"a patch of {largest} and a batch of 2 or more (--patch, --batch)")
        raise InputError(f"a training patch of {patch} is smaller than the image {shape}, itself smaller than "
                         f"{unet.divisor}, the down-sampling factor of a UNet of depth {unet.depth} (2**depth): use "
                         f"{advice}")
    raise InputError(f"a training patch of {patch} is smaller than {unet.divisor}, the down-sampling factor of a UNet "
                     f"of depth {unet.depth} (2**depth): use a patch of {unet.divisor} or more (--patch), or a "
                     "smaller depth (--unet-depth)")


def _deepest(side: int) -> int:
    """The deepest UNet whose padding of training fields of ``side`` voxels a side does not more than
    double them (:func:`_field_geometry`): ``2**depth <= 2 * side``."""
    return (2 * side).bit_length() - 1


def _data_weight(forward: ForwardModel, data_shape, precondition, image, psf):
    """The data term's frequency weight for ``TrainConfig.precondition`` (None = plain MSE)."""
    if precondition == "auto":
        gain = snr_gain(image, psf)
        return None if gain is None else forward.data_weight(data_shape, AUTO_EPS, gain)
    return forward.data_weight(data_shape, precondition) if precondition > 0 else None


def trainable_model(unet: UNetConfig, config: TrainConfig, device: torch.device, floor: float):
    """``(model, optimizer, schedule, average)`` as :func:`train` starts them.

    The model is in training mode with its positive output's ``floor`` (zero intensity in
    standardised units), a zero-initialised head in the residual form (training starts at the
    reference estimate exactly) and channels-last memory on the CPU; Adam at ``config.lr``
    halves every ``config.decay_steps``; ``average`` is the weight average (None without ``config.ema``).
    """
    model = build_model(unet, config.seed, device).train()
    model.floor.fill_(floor)  # used when unet.positive
    if config.residual:
        with torch.no_grad():
            model.head[-1].weight.zero_()
            model.head[-1].bias.zero_()
    if device.type == "cpu":  # oneDNN convolutions run ~1.5x faster channels-last (measured, 2 cores)
        model = model.to(memory_format=torch.channels_last_3d if unet.ndim == 3 else torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.decay_steps, gamma=0.5)
    average = WeightAverage(model, config.ema) if config.ema > 0 else None
    return model, optimizer, schedule, average


def _field_geometry(forward: ForwardModel, image_shape, unet: UNetConfig, config: TrainConfig):
    """The training fields' geometry (``ForwardModel.geometry``): data regions of side ``config.patch``
    (the image's size along shorter axes) in their PSF halo, padded to the network's divisor;
    refused where the padding would more than double them or batch normalisation would see too
    few values."""
    data_shape = [min(config.patch, n) for n in image_shape]
    side = max(n + b + a for n, b, a in zip(data_shape, forward.halo_before, forward.halo_after))
    if unet.divisor > 2 * side:  # fields are padded up to 2**depth voxels a side: more than twice what they hold
        raise InputError(f"a UNet of depth {unet.depth} pads the training fields to {unet.divisor} voxels a side, more "
                         f"than twice the {side} they hold: use a depth of {_deepest(side)} or less "
                         "(--unet-depth)")
    geometry = forward.geometry(data_shape, unet.divisor)
    if config.batch * math.prod(n // unet.divisor for n in geometry.field_shape) < 2:
        # (a patch already as large as the image along every axis: a larger one is the same, check_patch)
        larger = " or a larger patch (--batch, --patch)" if data_shape != list(image_shape) else " (--batch)"
        raise InputError(f"a batch of {config.batch} training field(s) of {geometry.field_shape} voxels leaves one value "
                         "per channel at the network's coarsest level, too few for batch normalisation: use a batch "
                         f"of 2 or more{larger}")
    return geometry
