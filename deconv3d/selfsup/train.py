"""Training of the Siamese blind-spot deconvolution network on the image it restores.

Each step draws a batch of random patches, masks a stratified random subset of their
voxels, runs the network on the full and the masked patches with shared weights and
minimises :func:`deconv3d.selfsup.losses.siamese_loss`. The compared data region of a
patch is surrounded by the PSF halo (real image where it exists, mirrored beyond the
volume border), so that light from outside the region enters the forward model.

References
----------
.. [1] K. Papkov, M. Palo and L. Parts, "Self-supervised single-image deconvolution
   with Siamese neural networks", arXiv:2308.09426 (2023).
.. [2] Y. Xie, Z. Wang and S. Ji, "Noise2Same: optimizing a self-supervised bound for
   image denoising", NeurIPS 2020.
.. [3] H. Kobayashi, A. C. Solak, J. Batson and L. A. Royer, "Image deconvolution via
   noise-tolerant self-supervised inversion", arXiv:2006.06156 (2020).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from deconv3d._arrays import as_numpy
from deconv3d._environment import run_environment
from deconv3d._fft_shapes import kernel_origin
from deconv3d._tensors import psf_fingerprint, resolve_device
from deconv3d._torch_common import MixedPrecision, WeightAverage, amp_dtype, build_seeded
from deconv3d._voxel import checked_voxel_size
from deconv3d.errors import Cancelled, InputError, NonFiniteValues, OptionWarning, outside_stacklevel, require_config
from deconv3d.psf import normalize_psf, validate_psf
from deconv3d.psf.center_crop import fit_shape
from deconv3d.selfsup.config import Reference, TrainConfig, UNetConfig, reference_fft_shape
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import AUTO_EPS, loss_weights, snr_gain
from deconv3d.selfsup.patches import _PatchSampler
from deconv3d.selfsup.steps import _Steps
from deconv3d.selfsup.unet import ResUNet

__all__ = ["TrainResult", "train", "make_forward_model", "standardize", "build_model", "trainable_model",
           "warm_start_target"]

Callback = Callable[[int, float], Optional[bool]]


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``model`` is in eval mode on the training device and maps standardised images to
    standardised estimates: de-standardise with ``out * std + mean``. ``history`` holds
    ``(step, loss)`` for every step; ``reason`` is ``"completed"``, ``"cancelled"``,
    ``"time_budget"`` or ``"non-finite loss"``.
    """

    model: ResUNet
    mean: float
    std: float
    history: list[tuple[int, float]]
    steps_done: int
    stopped_early: bool
    reason: str
    config: TrainConfig
    unet: UNetConfig
    psf: np.ndarray  # the unit-sum PSF used by the forward model
    voxel_size: Optional[tuple[float, ...]] = None
    seconds: float = 0.0
    last_terms: dict[str, float] = field(default_factory=dict)
    warm_steps: int = 0  # warm-start steps run (TrainConfig.warm_steps, or fewer under a time budget)
    reference: Optional[Reference] = None  # what a residual network corrects (TrainConfig.residual)
    # (fingerprint of the training image, the reference's estimate on it): apply_model on that same image
    # reuses it instead of rerunning RL (not saved in checkpoints)
    reference_cache: Optional[tuple[str, np.ndarray]] = field(default=None, repr=False, compare=False)
    # the network's precision in training: "float32", or the mixed-precision autocast dtype ("bfloat16" on a
    # CPU with AMX, "float16" on CUDA; TrainConfig.amp), or e.g. "bfloat16 for steps 1-3, then float32" after
    # a non-finite pass fell back to float32
    precision: str = "float32"
    # UNetConfig.positive as asked for: a residual network is built with a linear head (``unet.positive`` False)
    # and this clamps its sum at zero intensity in training instead, which changes the weights (None: unknown)
    positive: Optional[bool] = None
    # the device, threads, FFT backend (its Richardson-Lucy reference's) and versions it trained with
    # (deconv3d._environment.run_environment): they change the weights' last bits
    environment: Optional[dict] = None


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
        raise InputError(f"image {img.shape} is smaller than the PSF {psf.shape} in some axis: "
                         "crop the PSF (deconv3d.psf.crop_psf) or use a larger image")
    unet = UNetConfig(ndim=img.ndim) if unet is None else unet
    if unet.ndim != img.ndim:
        raise InputError(f"network is {unet.ndim}D but the image is {img.ndim}D: set UNetConfig(ndim={img.ndim})")
    return img, psf, unet, checked_voxel_size(voxel_size, img.ndim)


#: Share of ``TrainConfig.time_budget`` that the search for the RL reference may take.
REFERENCE_SHARE = 0.5


WARM_TV_WEIGHTS = (0.0, 0.002, 0.01, 0.03, 0.06, 0.1)  # the TV weights TrainConfig(warm_tv="auto") chooses from
#: The reference's RL count for an image too small for choose_iterations (richardson_lucy's default).
SMALL_IMAGE_ITERATIONS = 20


def warm_start_target(image: np.ndarray, psf: np.ndarray, device="cpu", tv_weight: float | str = 0.0,
                      extended: bool = False, deadline: float | None = None,
                      callback: Callable[[int, float], Optional[bool]] | None = None) -> tuple[np.ndarray, Reference]:
    """The warm-start target: Bertero RL (RL-TV for ``tv_weight`` > 0) at the count chosen from held-out voxels.

    ``tv_weight="auto"`` takes the weight of :data:`WARM_TV_WEIGHTS` whose chosen count has the
    lowest held-out error. Returns ``(estimate, reference)``, where ``reference`` holds the
    count (:func:`deconv3d.classical.choose_iterations`) and the weight and reproduces the estimate.
    ``extended`` returns the estimate on Bertero's extended domain (``richardson_lucy(extended=True)``).
    ``deadline`` (a ``time.perf_counter()`` value) ends the search early: the best count and weight
    found by then are used (at least one iteration of the first weight is always measured).
    ``callback(iteration, risk)`` is called after every iteration of the search
    (:func:`~deconv3d.classical.choose_iterations`'); returning ``True`` cancels:
    :class:`~deconv3d.Cancelled` is raised.
    """
    asked = []  # holds True once the callback cancelled

    def late(*progress) -> bool:
        if callback is not None and progress and not asked and callback(*progress):
            asked.append(True)
        return bool(asked) or (deadline is not None and time.perf_counter() >= deadline)

    weights = WARM_TV_WEIGHTS if tv_weight == "auto" else (float(tv_weight),)
    if _too_small_to_search(image):
        reference = Reference(SMALL_IMAGE_ITERATIONS, weights[0])
        warnings.warn(f"the training image ({np.size(image)} voxels) is too small to choose the Richardson-Lucy "
                      f"reference's iteration count by held-out voxels: it runs {SMALL_IMAGE_ITERATIONS}",
                      RuntimeWarning, stacklevel=outside_stacklevel())
        return reference.estimate(image, psf, device, extended), reference
    reference = _searched_reference(image, psf, device, weights, late, asked)
    if late():  # (a 0.5 s budget kept 1 iteration where the search picks 21: a reference blurrier than the data)
        said = (f"the time budget ended the search for the reference's Richardson-Lucy count at {reference.iterations} "
                "iteration(s): give a larger {} (or none) to let it finish")
        warnings.warn(OptionWarning(said.format("TrainConfig.time_budget"), said.format("--time-budget")),
                      stacklevel=outside_stacklevel())
    return reference.estimate(image, psf, device, extended), reference


def _too_small_to_search(image) -> bool:
    """Whether ``image`` holds too few held-out voxels for choose_iterations (its defaults: it refuses). The
    mask is drawn only for an image expecting under 4x the minimum (80 of 1600 voxels, 7 SD above it): for
    any other a full-size draw on every training run would only repeat the search's own."""
    from deconv3d.classical import holdout_mask
    from deconv3d.classical.iterations import MIN_HELD_OUT

    expected = np.size(image) * 0.05
    return expected < 4 * MIN_HELD_OUT and int(holdout_mask(np.shape(image), 0.05).sum()) < MIN_HELD_OUT


def _searched_reference(image, psf, device, weights, late, asked: list) -> Reference:
    """The :class:`Reference` of the TV weight in ``weights`` whose chosen count has the lowest held-out error,
    searching the next weight only while ``late()`` says there is time. ``late(iteration, risk)`` is the
    search's callback; once it has cancelled (``asked`` not empty), :class:`~deconv3d.Cancelled` is raised."""
    from deconv3d.classical import choose_iterations

    choices = []
    for w in weights:
        if choices and late():
            break
        choices.append((choose_iterations(image, psf, 100, tv_weight=w, device=device, callback=late), w))
    if asked:
        raise Cancelled("the search for the Richardson-Lucy reference's iteration count was cancelled")
    choice, weight = min(choices, key=lambda c: min(c[0].risk))
    return Reference(int(choice.iterations), float(weight))


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


def train(
    image,
    psf,
    *,
    config: TrainConfig = TrainConfig(),
    unet: UNetConfig | None = None,
    device="auto",
    callback: Callback | None = None,
    voxel_size: Sequence[float] | None = None,
) -> TrainResult:
    """Train a Siamese blind-spot deconvolution network on one image.

    Parameters
    ----------
    image : array_like
        2D or 3D image (raw intensities; standardised internally).
    psf : array_like
        PSF with the image's dimensionality (normalised to unit sum here).
    config : TrainConfig
        Training recipe: steps, patch, batch, learning rate and decay, masking, loss
        weights, augmentation, seed, time budget and mixed precision.
    unet : UNetConfig, optional
        Network shape; by default ``UNetConfig(ndim=image.ndim)``.
    device : {"auto", "cpu", "cuda"} or torch.device
    callback : callable, optional
        ``callback(step, loss)`` after every step (1-based); returning ``True`` cancels. Before
        step 1, while the RL reference's iteration count is searched (``config.residual``,
        ``warm_start`` or ``anchor_weight``), it is called as ``callback(0, risk)`` after every
        RL iteration tried (``risk``: its held-out error); cancelling there returns with no step run.
    voxel_size : sequence of float, optional
        Voxel size (z, y, x), recorded in the result (for checkpoints).

    Returns
    -------
    TrainResult

    Notes
    -----
    The compared data region has side ``config.patch`` (the image size along shorter
    axes); the network sees it with the PSF halo around it, rounded up to a multiple of
    ``unet.divisor``. Adam with learning rate ``config.lr``, halved every
    ``config.decay_steps``. Mixed precision is used when ``config.amp``, for the network
    only: float16 autocast with gradient scaling on CUDA, bfloat16 autocast on a CPU with
    AMX (:func:`deconv3d._torch_common.cpu_has_amx`; about 2x faster steps there, and
    float32 on other CPUs, where bfloat16 is slower); the network's last layer (whose
    output is the estimate), the FFT forward model and the loss run in float32; a step
    whose reduced-precision pass is not finite (float16 overflow) is redone in float32, as
    is the rest of the run (with a RuntimeWarning). Augmentation flips/rotates the network
    input in the (y, x) plane and un-does it on the output, so that the loss and the PSF
    stay in the data's frame (correct for PSFs that are not symmetric). ``config.precondition`` weights the
    data term's residual by ``(1 + eps) / (|H|^2 + eps)`` in frequency
    (:func:`deconv3d.selfsup.losses.data_term`); ``"auto"`` uses ``eps = 1e-3`` and
    gates the weight by the image's own signal-to-noise ratio per frequency
    (:func:`deconv3d.selfsup.losses.snr_gain`), so that frequencies holding only noise do
    not pull the network; it falls back to the plain MSE where the noise cannot be measured.
    ``config.warm_start`` (beyond the paper) spends the first steps regressing ``f(x)`` onto
    Bertero Richardson-Lucy of the image, run for the count that
    :func:`deconv3d.classical.choose_iterations` picks from held-out voxels (no ground truth):
    a network trained only through ``H`` recovers each frequency in proportion to ``|H|^2``
    and needs many steps to reach what RL reaches in seconds, while a direct regression has
    no such attenuation. Those steps take one network pass instead of two; the Siamese loss
    then takes over from that start. The RL run counts in the time budget, and its search for
    the count (and TV weight) stops at half the budget with the best found by then. ``"auto"`` (the
    default, with ``precondition="auto"``) spends 3/8 of ``config.steps`` on it, and at most
    3/8 of ``config.time_budget``, so that a budgeted run still trains the Siamese loss; on the
    bench_selfsup volumes the two together scored above the paper's recipe on every volume
    and noise level, in fewer seconds. After the warm start, ``config.anchor_weight`` (1 by default) keeps
    ``lambda_anchor * MSE(f(x), target)`` in the loss, so that the Siamese terms refine the RL
    estimate instead of drifting away from it (without it they pulled low-noise results back
    by 0.5 dB). ``config.residual`` (beyond the paper, the default) replaces all of that: the
    network outputs a correction, ``f(x) = T + r(x)`` with ``T`` that RL estimate (RL-TV with the
    held-out weight for ``warm_tv="auto"``) and the head zero-initialised, so training starts at
    ``T`` exactly and needs no warm-start steps. The fields' PSF halo holds RL's extended estimate
    (the object outside the image, ``richardson_lucy(extended=True)``) rather than a mirror image,
    so ``H T`` already explains light from outside. The network is built without its positive
    output (``UNetConfig.positive``): with it, the sum is clamped at zero intensity in training as
    at inference. ``lambda_anchor`` ("auto": 0) weighs ``MSE(r, 0)``, and
    ``TrainResult.reference`` records the RL settings that :func:`deconv3d.selfsup.apply_model`
    reruns on the image it is applied to. In this form only the correction is blind: ``T`` is
    computed once from the whole image, masked voxels included, and the same ``T`` enters both
    passes, so the invariance terms constrain ``r`` alone and the blind-spot term (``--ssi``)
    compares the data with an estimate whose ``T`` has seen the masked voxel. A network that learns the whole estimate could not
    fit RL's detail on dense, low-noise volumes in a CPU's few hundred steps (bench_selfsup
    nuclei: 1 dB below RL); the correction starts there.
    ``precondition=0, warm_start=0`` (with ``residual=False``, ``ema=0`` and a linear head,
    ``UNetConfig(positive=False)``) is the paper's recipe.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> psf = np.ones((3, 3), np.float32)
    >>> res = train(rng.random((24, 24)), psf, config=TrainConfig(steps=2, patch=16, batch=2),
    ...             unet=UNetConfig(ndim=2, base_channels=4, depth=2), device="cpu")
    >>> res.steps_done, res.reason
    (2, 'completed')
    """
    require_config(config, TrainConfig, "config")
    if unet is not None:
        require_config(unet, UNetConfig, "unet")
    dev = resolve_device(device)
    img, psf, unet, voxel_size = _check_inputs(image, psf, unet, voxel_size)
    positive_asked = unet.positive
    positive_sum = config.residual and positive_asked
    if config.residual:  # a signed correction: positivity applies to the sum (clamped at zero intensity)
        unet = replace(unet, positive=False)
    standardized, mean, std = standardize(img)
    forward = ForwardModel(psf, device=dev)
    geometry = _field_geometry(forward, img.shape, unet, config)
    sampler = _PatchSampler(standardized, geometry, config, dev)
    model, optimizer, schedule, average = trainable_model(unet, config, dev, -mean / std)
    steps = _Steps(model, optimizer, schedule, average, forward, geometry.region, loss_weights(config), (mean, std),
                   _data_weight(forward, geometry.data_shape, config.precondition, img, psf), config,
                   -mean / std if positive_sum else None, MixedPrecision(amp_dtype(config.amp, dev)))
    started = time.perf_counter()
    (image_key, target, reference), (step, history, terms, reason, warm_done) = _reference_and_steps(
        img, psf, forward, sampler, steps, config, dev, started, (mean, std), callback)
    model = _final_model(model, average)
    cache = _reference_on_field(image_key, img.shape, psf, target) if config.residual and target is not None else None
    return TrainResult(model, mean, std, history, step, reason != "completed", reason, config, unet, psf,
                       voxel_size, time.perf_counter() - started, terms, warm_done,
                       reference if config.residual else None, cache,
                       precision=steps.precision.name(), positive=positive_asked,
                       environment=run_environment(dev, [] if target is None else
                                                   [reference_fft_shape(img.shape, psf.shape)]))


def _reference_and_steps(img, psf, forward: ForwardModel, sampler: _PatchSampler, steps: _Steps, config: TrainConfig,
                         device, started: float, mean_std, callback: Callback | None) -> tuple:
    """Set the RL reference (:func:`_set_reference`), then run the training ``steps``. Returns the
    reference's (fingerprint, estimate, :class:`Reference`) and ``_Steps.run``'s (step, history, terms,
    reason, warm-start steps done); a cancel in the reference's search runs no step (reason "cancelled")."""
    try:
        reference = _set_reference(img, psf, forward, sampler, config, device, started, mean_std, callback)
    except Cancelled:  # in the search for the RL reference: no step run
        return (None, None, None), (0, [], {}, "cancelled", 0)
    return reference, steps.run(sampler, callback, started)


def _final_model(model: ResUNet, average: WeightAverage | None) -> ResUNet:
    """The trained network as :func:`train` returns it: the weight average's weights where there is one,
    contiguous, in evaluation mode."""
    if average is not None:
        average.copy_to(model)
    return model.to(memory_format=torch.contiguous_format).eval()


def _field_geometry(forward: ForwardModel, image_shape, unet: UNetConfig, config: TrainConfig):
    """The training fields' geometry (``ForwardModel.geometry``): data regions of side ``config.patch``
    (the image's size along shorter axes) in their PSF halo, padded to the network's divisor;
    refused where the padding would more than double them or batch normalisation would see too
    few values."""
    data_shape = [min(config.patch, n) for n in image_shape]
    side = max(n + b + a for n, b, a in zip(data_shape, forward.halo_before, forward.halo_after))
    if unet.divisor > 2 * side:  # fields are padded up to 2**depth voxels a side: more than twice what they hold
        raise InputError(f"a UNet of depth {unet.depth} pads the training fields to {unet.divisor} voxels a side, more "
                         f"than twice the {side} they hold: use a depth of {(2 * side).bit_length() - 1} or less "
                         "(--unet-depth)")
    geometry = forward.geometry(data_shape, unet.divisor)
    if config.batch * math.prod(n // unet.divisor for n in geometry.field_shape) < 2:
        raise InputError(f"a batch of {config.batch} training field(s) of {geometry.field_shape} voxels leaves one value "
                         "per channel at the network's coarsest level, too few for batch normalisation: use a batch "
                         "of 2 or more or a larger patch (--batch, --patch)")
    return geometry


def _set_reference(img, psf, forward: ForwardModel, sampler: _PatchSampler, config: TrainConfig, device, started: float,
                   mean_std, callback: Callback | None = None) -> tuple:
    """Richardson-Lucy's estimate that the warm start regresses onto, the anchor keeps the network
    near, or the residual network corrects, set as ``sampler``'s target (standardised by
    ``mean_std``). Returns (fingerprint of the image, the estimate, its :class:`Reference`), or
    Nones when the recipe needs none. :func:`train`'s ``callback`` gets ``(0, risk)`` per iteration
    of the search for RL's count; its cancel raises :class:`~deconv3d.Cancelled`."""
    if not (config.warm_steps or config.residual or config.anchor_weight):  # (an anchor alone needs it too)
        return None, None, None
    # The residual base spans the fields' PSF halo with RL's estimate of the object outside the image,
    # so that H(T) explains the light entering the field from outside from the start.
    # Under a time budget the search for RL's count and weight takes at most half of it.
    deadline = None if config.time_budget is None else started + REFERENCE_SHARE * config.time_budget
    image_key = psf_fingerprint(img)  # of the data RL runs on (a caller may change the array while training)
    searching = None if callback is None else (lambda _iteration, risk: callback(0, risk))
    target, reference = warm_start_target(img, psf, device, config.warm_tv, extended=config.residual,
                                          deadline=deadline, callback=searching)
    margin = (forward.halo_before, forward.halo_after) if config.residual else None
    mean, std = mean_std
    sampler.set_target((target - np.float32(mean)) / np.float32(std), margin)
    return image_key, target, reference


def _reference_on_field(image_key: str, image_shape, psf: np.ndarray, extended: np.ndarray) -> tuple[str, np.ndarray]:
    """The residual base on the image's field (cut from the extended estimate of the same RL run, so
    ``Reference.estimate(img, psf)`` up to float32 rounding), keyed by the fingerprint of the image RL ran on."""
    shape = fit_shape(psf.shape, image_shape)
    start = [k - 1 - o for k, o in zip(shape, kernel_origin(shape))]
    field_box = tuple(slice(s, s + n) for s, n in zip(start, image_shape))
    return image_key, np.ascontiguousarray(extended[field_box])
