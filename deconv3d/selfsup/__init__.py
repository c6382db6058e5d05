"""Self-supervised single-image deconvolution with a Siamese blind-spot network.

Papkov, Palo & Parts (2023), "Self-Supervised Single-Image Deconvolution with Siamese
Neural Networks", arXiv:2308.09426; building on Noise2Same (Xie, Wang & Ji, NeurIPS 2020)
and SSI (Kobayashi et al. 2020, "Image deconvolution via noise-tolerant self-supervised
inversion").
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from deconv3d._arrays import as_numpy, refuse_complex
from deconv3d._spectral import band_limit as fft_band_limit
from deconv3d._tensors import as_array, psf_fingerprint
from deconv3d.errors import InputError, NonFiniteValues
from deconv3d.selfsup.checkpoint import TrainedModel, load_checkpoint, save_checkpoint, training_record
from deconv3d.selfsup.config import TrainConfig, UNetConfig
from deconv3d.selfsup.predict import Cancelled, predict_tiled
from deconv3d.selfsup.train import TrainResult, train

__all__ = ["deconvolve", "apply_model", "train", "TrainConfig", "UNetConfig", "TrainResult", "TrainedModel",
           "save_checkpoint", "load_checkpoint", "Cancelled", "BAND_LIMIT", "training_record", "default_context"]


BAND_LIMIT = 0.0  # default eps of the output's band limit: off (see apply_model)


def apply_model(trained, image, *, device="auto", tta: bool = False, tile_shape=None, context: int | None = None,
                band_limit: float | None = BAND_LIMIT, callback: Callable[[int, int], Optional[bool]] | None = None,
                region=None, phase=None, amp: bool = True, tv_scale: float | None = None) -> np.ndarray:
    """Deconvolve ``image`` with a trained network.

    The whole volume is processed in overlapping, linearly blended tiles
    (:func:`deconv3d.selfsup.predict.predict_tiled`) with context on every side, mirrored at
    the volume border as in training. A residual network (``TrainConfig.residual``) adds its
    correction to Richardson-Lucy of ``image`` run as in training (``trained.reference``).

    Parameters
    ----------
    trained : TrainedModel or TrainResult
        :func:`train`'s result, or a checkpoint loaded with :func:`load_checkpoint`.
    image : array_like
        2D or 3D image of the network's dimensionality, finite; a tensor is taken too.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
    tta : bool, optional
        Average the 8 rotations and flips of the xy plane (8x the time).
    tile_shape : int or sequence of int, optional
        Tile size per axis; default :func:`~deconv3d.selfsup.predict.default_tile_shape`: the
        whole image if it is within a voxel budget, else cubic-ish tiles that are.
    context : int, optional
        Voxels around each tile; default :func:`default_context`, with which tiled and
        whole-volume results of a trained network agree to about 1e-3 of the output range.
    band_limit : float, optional
        ``eps`` of the output's band limit (``None`` or 0, the default: off); see Notes.
    callback : callable, optional
        ``callback(done, total)`` after every tile; returning ``True`` cancels, which raises
        :class:`Cancelled` (nothing is returned).
    region, phase : optional
        :func:`~deconv3d.selfsup.predict.predict_tiled`'s: the network predicts only ``region``
        (a block's core; the rest is context, and outside it the output holds no prediction),
        on the pooling grid ``phase``.
    amp : bool, optional
        Mixed precision (default on, as the command line's ``--amp``): bfloat16 on a CPU with
        AMX (2-3.4x faster on bench_selfsup's volumes, the PSNR unchanged to 0.001 dB, the
        output within 7e-3 of the float32 one's peak), float16 on CUDA, float32 elsewhere.
    tv_scale : float, optional
        Intensity scale of the TV term of the Richardson-Lucy reference a residual network
        corrects (:func:`~deconv3d.classical.richardson_lucy`'s; default the image's own): a
        block of a larger volume passes the volume's.

    Returns
    -------
    numpy.ndarray
        Non-negative float32 array of the image's shape.

    Raises
    ------
    InputError
        For something that is not a trained network (a checkpoint's path: load it first), an
        image of another dimensionality or with NaN/Inf values, or an invalid option.

    Warns
    -----
    RuntimeWarning
        For a whole image whose intensities are far from the training image's
        (:func:`warn_of_another_scale`): a plain network's output keeps the training image's
        scale, a residual one's correction does. For an image with negative values and no
        positive one: it comes back all zeros, as from Richardson-Lucy.

    Notes
    -----
    The band limit scales the output's spectrum by ``(1 + eps) |H|^2 / (|H|^2 + eps)``
    (:func:`deconv3d.fft.band_limit`). The training losses compare the data with ``H f`` only,
    so what the network puts where the OTF vanishes is constrained only by non-negativity and
    the network itself. On noisy data some of it is texture no measurement supports; on
    sparse objects at low noise it is mostly real detail that positivity recovers beyond the
    passband. On ``benchmarks/bench_selfsup.py`` eps = 0.01 gained 0.01-0.17 dB at noise sigma
    0.1 but cost 0.25-3.6 dB at sigma 0.01 (microtubules and bars lost 2.8-3.6), and no eps
    from 1e-3 to 1e-2 avoided that loss (2.3-3.6 dB), so it is off unless asked for: try 0.01
    on stacks dominated by noise. See Papkov, Palo & Parts (2023) for the network and its
    training.
    """
    if not isinstance(trained, TrainedModel):
        if not isinstance(trained, TrainResult):
            raise InputError(f"apply_model needs a trained network, got {_what(trained)}: pass train()'s result, or "
                             "load a checkpoint first with deconv3d.selfsup.load_checkpoint(path)")
        trained = TrainedModel.from_result(trained)
    image = as_array(image)  # a file name is refused by name ("read it first")
    refuse_complex(image, "the image")  # (cast to float32 with only a ComplexWarning)
    trained.check_compatible(image.ndim)
    if not np.isfinite(image).all():  # one would spread over the network's whole receptive field
        raise NonFiniteValues("image", "clean the data (e.g. replace them by 0) first")
    if region is None:  # a whole image (a chunked run's blocks pass their region)
        warn_of_another_scale(trained, image)
    if context is None:
        context = default_context(trained)
    residual = trained.reference is not None
    out = predict_tiled(trained.model, image, mean=trained.mean, std=trained.std, divisor=trained.unet.divisor,
                        tile_shape=tile_shape, tta=tta, device=device, callback=callback, context=context,
                        amp=amp, signed=residual, region=region, phase=phase)
    if residual:  # the network's correction on top of the RL estimate it was trained to correct
        out += _reference_estimate(trained, image, device, tv_scale)
        np.maximum(out, 0, out=out)
    if region is None and not (image > 0).any():  # no light: nothing to restore (it gave 0.2-0.3), as RL says
        if (image < 0).any():
            warnings.warn("the image has no positive values, so the network returns only zeros: add the subtracted "
                          "offset back", RuntimeWarning, stacklevel=2)
        out[...] = 0  # (a whole image only: a dark block of a volume keeps what one pass would give it)
    if band_limit:
        out = fft_band_limit(out, trained.psf, band_limit, device=device).clamp_min_(0).cpu().numpy()
    return out


def _what(value) -> str:
    """``value`` as an error message names it: a file name quoted, anything else by its type."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return f"the file name {os.fsdecode(value)!r}"
    return f"a {type(value).__name__}"


#: :func:`warn_of_another_scale` warns when an image's mean or SD is this many times the training
#: image's, or less than its share: the network's output keeps the training image's scale (a model
#: trained on an image x1000 wrote 1000x too bright a result, or a residual one mostly zeros).
SCALE_TOLERANCE = 2.0


def warn_of_another_scale(trained, image) -> None:
    """Warn when ``image``'s intensities are far from those the network was trained on
    (:func:`scale_mismatch`)."""
    mean, std = float(np.mean(image, dtype=np.float64)), float(np.std(image, dtype=np.float64))
    message = scale_mismatch(trained, mean, std)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def scale_mismatch(trained, mean: float, std: float, subject: str = "the image's intensities",
                   retrain: str = "train on this one (--train-steps)") -> str | None:
    """What to say of an image of intensity ``mean`` and ``std`` (``subject`` in the message), or None
    when both are within :data:`SCALE_TOLERANCE` of the training image's: the network standardises
    by those, as CSBDeep's networks do, so the output stays on that image's scale. ``trained``:
    anything with the training image's ``mean`` and ``std``; ``retrain``: the way to a network
    for this image that the message offers (an image of several channels cannot take --train-steps)."""
    # (the mean only where the training image's is positive: background-subtracted data sits near 0)
    pairs = [(std, float(trained.std))] + ([(mean, float(trained.mean))] if trained.mean > 0 else [])
    if all(b / SCALE_TOLERANCE <= a <= b * SCALE_TOLERANCE for a, b in pairs):
        return None
    if getattr(trained, "reference", None) is not None:  # residual: RL's estimate carries this image's scale
        effect = ("the correction it adds to the Richardson-Lucy estimate keeps the training image's scale, too "
                  "weak or too strong here")
    else:  # (a residual network's output was said to keep the training scale too: it is within 1 % of the input's)
        effect = "its output keeps the training image's scale"
    return (f"{subject} (mean {mean:.3g}, SD {std:.3g}) are far from those the network was trained on (mean "
            f"{float(trained.mean):.3g}, SD {float(trained.std):.3g}), and {effect}: rescale the image to that "
            f"range, or {retrain}")


def default_context(trained) -> int:
    """Voxels of context around every tile by default (also a chunked run's halo): the larger of
    the PSF half-size and ``4 * blocks_per_level * 2**depth`` (32 for the default 3D network),
    most of the UNet's receptive field (:func:`deconv3d.selfsup.unet.receptive_radius`: 52).

    Measured on a 32 x 256 x 256 confocal stack with a 3D network trained 150 steps, split into
    64 x 64 blocks: the blocks agreed with one pass over the volume to 5.6e-4 of the peak
    (94 dB, in float32; with bfloat16 inference on a CPU with AMX blocks of another shape round
    differently: 86 dB for a 16 x 192 x 192 stack in 64 x 64 blocks, against 93 dB in float32);
    with the whole receptive field as context they cost 2.7x the time and differed from
    that pass by 5.7e-3 (73 dB), at the volume's borders, where the two contexts mirror different
    depths of the image. A network trained only a few steps still has weight further out: tiles
    and blocks of a 20-step 2D one differed by up to 1.4e-2 of the peak at their seams.
    """
    unet = trained.unet
    return max(max(k // 2 for k in trained.psf.shape), 4 * unet.blocks_per_level * unet.divisor)


def _reference_estimate(trained: TrainedModel, image: np.ndarray, device, tv_scale=None) -> np.ndarray:
    """RL's estimate the residual network corrects: the one training computed when ``image`` is the
    training image itself (deconvolve with --train-steps), else a fresh run with the recorded settings."""
    cache = trained.reference_cache
    if cache is not None and cache[1].shape == image.shape and psf_fingerprint(image) == cache[0]:
        return cache[1]
    return trained.reference.estimate(image, trained.psf, device, tv_scale=tv_scale)


def deconvolve(image, psf, *, model=None, config: TrainConfig = TrainConfig(), unet: UNetConfig | None = None,
               device="auto", tta: bool = False, voxel_size: Sequence[float] | None = None,
               band_limit: float | None = BAND_LIMIT, train_callback=None, predict_callback=None) -> np.ndarray:
    """Self-supervised deconvolution of one 2D or 3D image (Papkov, Palo & Parts 2023).

    Parameters
    ----------
    image : array_like
        2D or 3D raw intensities.
    psf : array_like
        PSF with the image's dimensionality and voxel size.
    model : TrainedModel, TrainResult or path, optional
        A network trained before (on this image or one like it, with this PSF). When
        omitted, a network is trained on ``image`` itself with ``config`` and ``unet``.
    config, unet : TrainConfig, UNetConfig
        Training recipe and network shape (used only when training).
    device : {"auto", "cpu", "cuda"}
    tta : bool
        Test-time augmentation over the 8 xy rotations/flips.
    band_limit : float or None
        ``eps`` of the output's band limit (see :func:`apply_model`); 0 or ``None`` (default) is off.
    voxel_size : sequence of float, optional
        Checked against the model's when both are known.
    train_callback, predict_callback : callable, optional
        ``(step, loss)`` during training and ``(done, total)`` tiles during inference;
        returning ``True`` cancels.

    Returns
    -------
    ndarray
        Non-negative float32 estimate of the object, same shape as ``image``.

    Raises
    ------
    Cancelled
        When a callback cancels (nothing is returned).
    InputError
        For bad input, an incompatible model, or training that diverged.

    Notes
    -----
    Without ``model``, a network ``f`` is trained on ``image`` itself (:func:`train`) and then
    applied to the whole of it (:func:`apply_model`). Following Papkov et al. [1]_, each
    training step draws patches of the standardised image ``x`` and runs ``f``, with shared
    weights, on ``x`` and on a copy ``x_m`` whose blind-spot voxels ``M`` (one random voxel per
    small box, ``config.mask_percent`` % of them) are replaced by Gaussian noise. With the
    default terms the loss is

    ``L = λ_rec MSE(x, H f(x)) + λ_inv sqrt(MSE_M(f(x), f(x_m))) + λ_bound B(f(x))``,

    with weights 1, 2 and 0.1, where ``H`` convolves with the unit-sum PSF (the valid part of
    the convolution over a field that includes the PSF halo, so light from outside a patch is
    modelled), the invariance term keeps ``f`` from reproducing each voxel's own noise, and
    ``B`` penalises negative intensities (:func:`deconv3d.selfsup.losses.siamese_loss` lists
    all the terms). By default deconv3d goes beyond the paper: the data term's residual is
    weighted in frequency by ``(1 + ε) / (|H|^2 + ε)``, gated by the image's own
    signal-to-noise ratio (``config.precondition``), and the network learns a correction ``r``
    to a Bertero Richardson-Lucy estimate ``T`` whose iteration count (and TV weight) held-out
    voxels pick (:func:`deconv3d.classical.choose_iterations`), ``f(x) = T + r(x)``
    (``config.residual``); weights are averaged (``config.ema``) and the output head is
    positive (``unet.positive``). ``TrainConfig(precondition=0, warm_start=0, residual=False,
    ema=0)`` with ``UNetConfig(positive=False)`` is the paper's recipe. Inference runs in
    overlapping tiles; the output is de-standardised and clamped at zero.

    References
    ----------
    .. [1] K. Papkov, M. Palo and L. Parts, "Self-supervised single-image deconvolution
       with Siamese neural networks", arXiv:2308.09426 (2023).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> out = deconvolve(rng.random((24, 24)), np.ones((3, 3)), device="cpu",
    ...                  config=TrainConfig(steps=2, patch=16, batch=2),
    ...                  unet=UNetConfig(ndim=2, base_channels=4, depth=2))
    >>> out.shape, out.dtype
    ((24, 24), dtype('float32'))
    """
    image = as_numpy(image)
    if model is None:
        model = train(image, psf, config=config, unet=unet, device=device, callback=train_callback,
                      voxel_size=voxel_size)
        if model.reason == "cancelled":
            raise Cancelled(f"training cancelled after {model.steps_done} step{'' if model.steps_done == 1 else 's'}")
        if model.reason == "non-finite loss":
            raise InputError("training diverged (non-finite loss): lower the learning rate or check the PSF")
    elif isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_checkpoint(model, device=device)
    trained = model if isinstance(model, TrainedModel) else TrainedModel.from_result(model)
    trained.check_compatible(image.ndim, psf, voxel_size)
    return apply_model(trained, image, device=device, tta=tta, band_limit=band_limit, callback=predict_callback)
