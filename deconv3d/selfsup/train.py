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

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from deconv3d._environment import run_environment
from deconv3d._tensors import resolve_device
from deconv3d._torch_common import MixedPrecision, WeightAverage, amp_dtype
from deconv3d.errors import Cancelled, require_config
from deconv3d.selfsup.config import Reference, TrainConfig, UNetConfig, reference_fft_shape
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.losses import loss_weights
from deconv3d.selfsup.patches import _PatchSampler
from deconv3d.selfsup.rl_reference import (REFERENCE_SHARE, SMALL_IMAGE_ITERATIONS, WARM_TV_WEIGHTS,
                                           _reference_on_field, _set_reference, warm_start_target)
from deconv3d.selfsup.steps import _Steps
from deconv3d.selfsup.train_setup import (_check_inputs, _data_weight, _field_geometry, build_model, check_patch,
                                          make_forward_model, standardize, trainable_model)
from deconv3d.selfsup.unet import ResUNet

__all__ = ["TrainResult", "train", "make_forward_model", "standardize", "build_model", "trainable_model",
           "warm_start_target", "WARM_TV_WEIGHTS", "REFERENCE_SHARE", "SMALL_IMAGE_ITERATIONS"]

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


def train(
    image,
    psf,
    *,
    config: TrainConfig = TrainConfig(),
    unet: UNetConfig | None = None,
    device="auto",
    callback: Callback | None = None,
    voxel_size: Sequence[float] | None = None,
    on_reference: Callable[[Reference], None] | None = None,
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
    on_reference : callable, optional
        ``on_reference(reference)`` once the search has chosen the RL reference's
        :class:`~deconv3d.selfsup.config.Reference` (count and TV weight), before RL runs at that count and
        step 1 starts (which together may take seconds); not called for a recipe without a reference or
        after a cancel in the search.

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
    then takes over from that start. ``config.time_budget`` counts from the start of this call: the
    set-up (standardisation, the data term's weight, the network) and the RL reference count in it,
    and at least one step is run whatever is left. A later step is not started when the time the last
    steps took says it would end past the budget (:class:`~deconv3d._training_stop._StepClock`); one slower
    than those still ends past it. The RL run counts in the time budget, and its search for
    the count (and TV weight) stops at half the budget with the best found by then, checked after each
    RL iteration: its first iteration (with RL's set-up), RL at the chosen count, the rest of the set-up and
    the first step are not cut short, so they alone can take a run past a small budget. ``"auto"`` (the
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
    started = time.perf_counter()  # the time budget counts the set-up and the reference search too
    require_config(config, TrainConfig, "config")
    if unet is not None:
        require_config(unet, UNetConfig, "unet")
    dev = resolve_device(device)
    img, psf, unet, voxel_size = _check_inputs(image, psf, unet, voxel_size)
    check_patch(config.patch, img.shape, unet, psf.shape)
    positive_asked = unet.positive
    positive_sum = config.residual and positive_asked
    if config.residual:  # a signed correction: positivity applies to the sum (clamped at zero intensity)
        unet = replace(unet, positive=False)
    (mean, std), sampler, steps = _training_loop(img, psf, unet, config, dev, positive_sum)
    (image_key, target, reference), (step, history, terms, reason, warm_done) = _reference_and_steps(
        img, psf, steps.forward, sampler, steps, config, dev, started, (mean, std), callback, on_reference)
    model = _final_model(steps.model, steps.average)
    cache = _reference_on_field(image_key, img.shape, psf, target) if config.residual and target is not None else None
    return TrainResult(model, mean, std, history, step, reason != "completed", reason, config, unet, psf,
                       voxel_size, time.perf_counter() - started, terms, warm_done,
                       reference if config.residual else None, cache,
                       precision=steps.precision.name(), positive=positive_asked,
                       environment=run_environment(dev, [] if target is None else
                                                   [reference_fft_shape(img.shape, psf.shape)]))


def _training_loop(img: np.ndarray, psf: np.ndarray, unet: UNetConfig, config: TrainConfig, device,
                   positive_sum: bool) -> tuple:
    """What :func:`train`'s steps need: the image's ``(mean, std)``, the patch sampler of the
    standardised image and the :class:`_Steps` (network, optimiser, forward model and loss weights);
    ``positive_sum`` clamps a residual network's sum at zero intensity."""
    standardized, mean, std = standardize(img)
    forward = ForwardModel(psf, device=device)
    geometry = _field_geometry(forward, img.shape, unet, config)
    sampler = _PatchSampler(standardized, geometry, config, device)
    model, optimizer, schedule, average = trainable_model(unet, config, device, -mean / std)
    steps = _Steps(model, optimizer, schedule, average, forward, geometry.region, loss_weights(config), (mean, std),
                   _data_weight(forward, geometry.data_shape, config.precondition, img, psf), config,
                   -mean / std if positive_sum else None, MixedPrecision(amp_dtype(config.amp, device)))
    return (mean, std), sampler, steps


def _reference_and_steps(img, psf, forward: ForwardModel, sampler: _PatchSampler, steps: _Steps, config: TrainConfig,
                         device, started: float, mean_std, callback: Callback | None,
                         on_reference: Callable[[Reference], None] | None = None) -> tuple:
    """Set the RL reference (:func:`_set_reference`), then run the training ``steps``. Returns the
    reference's (fingerprint, estimate, :class:`Reference`) and ``_Steps.run``'s (step, history, terms,
    reason, warm-start steps done); a cancel in the reference's search runs no step (reason "cancelled").
    ``on_reference`` is :func:`train`'s."""
    try:
        reference = _set_reference(img, psf, forward, sampler, config, device, started, mean_std, callback,
                                   on_reference)
    except Cancelled:  # in the search for the RL reference: no step run
        return (None, None, None), (0, [], {}, "cancelled", 0)
    return reference, steps.run(sampler, callback, started)


def _final_model(model: ResUNet, average: WeightAverage | None) -> ResUNet:
    """The trained network as :func:`train` returns it: the weight average's weights where there is one,
    contiguous, in evaluation mode."""
    if average is not None:
        average.copy_to(model)
    return model.to(memory_format=torch.contiguous_format).eval()
