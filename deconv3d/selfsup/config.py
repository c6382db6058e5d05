"""Validated configurations of the self-supervised network (frozen dataclasses).

They live at the edges (CLI, napari, checkpoints) and unpack into keyword arguments of the core.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import InputError

INVARIANCE_POSITIONS = ("before-psf", "after-psf", "both", "none")
WARM_SHARE = (3, 8)  # warm_start="auto": 3/8 of the steps (and of a time budget) go to the warm start


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_tv_weight(value) -> bool:
    """A TV weight as ``TrainConfig.warm_tv`` and ``Reference`` take it: a number in [0, 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


@dataclass(frozen=True)
class UNetConfig:
    """Residual UNet shape (Noise2Same style). Paper sizes: 96 base channels in 2D, 48 in 3D."""

    ndim: int = 3
    base_channels: int = 16
    depth: int = 3
    blocks_per_level: int = 1
    skip: str = "add"  # "add" (the paper's 3D choice) or "concat"
    positive: bool = True  # softplus output floored at zero intensity (beyond the paper, False = paper; see ResUNet)

    def __post_init__(self):
        if not _is_int(self.ndim) or self.ndim not in (2, 3):
            raise InputError(f"network ndim must be 2 or 3, got {self.ndim}")
        if not all(_is_int(v) and v >= 1 for v in (self.base_channels, self.depth, self.blocks_per_level)):
            raise InputError("base_channels, depth and blocks_per_level must be positive integers")
        if self.skip not in ("add", "concat"):
            raise InputError(f"skip must be 'add' or 'concat', got {self.skip!r}")

    @property
    def divisor(self) -> int:
        """Spatial sizes fed to the network must be multiples of this."""
        return 2**self.depth


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe. Paper: 64^3 patches, batch 4, 15k steps, Adam 4e-4 on a GPU; the defaults are
    the command line's CPU recipe (``deconv3d train``), measured in ``benchmarks/bench_selfsup.py``."""

    steps: int = 300
    patch: int = 32  # side of the data region compared in the loss (network input adds the PSF halo)
    batch: int = 2
    lr: float = 4e-4
    decay_steps: int = 5000  # learning rate halves every decay_steps
    mask_percent: float = 0.5  # blind-spot density in percent of voxels
    mask_noise_std: float = 0.2  # masked voxels are replaced by N(0, std^2) in standardised units
    invariance: str = "before-psf"  # before-psf | after-psf | both | none
    lambda_inv: float = 2.0
    # weight of the invariance after the PSF (invariance "after-psf" or "both"); None = lambda_inv
    lambda_inv_psf: float | None = None
    lambda_bsp: float = 0.0  # SSI-style blind-spot term; the SSI baseline is invariance="none", lambda_bsp=1
    # weight of the data term MSE(x, H f(x)); None = 1, except 0 in the SSI baseline (Kobayashi et al.: masked
    # voxels alone train the network); 1 there gives the literal formula with lambda_inv = 0
    lambda_rec: float | None = None
    lambda_bound: float = 0.1
    augment: bool = True  # rot90/flip in the xy plane
    seed: int = 0
    # seconds from the start of train(), its set-up and the RL reference included; a step that the last steps'
    # times say would end past it is not started (one step at least: a model must exist)
    time_budget: float | None = None
    # mixed precision for the network: float16 on CUDA, bfloat16 on a CPU with AMX (about 2x faster steps);
    # float32 on other CPUs, where bfloat16 is slower (deconv3d._torch_common.amp_dtype)
    amp: bool = True
    ema: float = 0.99  # moving average of the weights used for inference (beyond the paper; 0 = off)
    # Wiener-weighted data term (beyond the paper): eps, or "auto" (eps 1e-3 gated by the image's SNR); 0 = the paper's MSE
    precondition: float | str = "auto"
    # Warm start (beyond the paper): the first warm_start steps regress the network onto Bertero RL of the
    # image at the count deconv3d.classical.choose_iterations picks; "auto" = 3/8 of the steps; 0 = the
    # paper's random start. The paper's recipe is precondition=0, warm_start=0, residual=False, ema=0 (and
    # UNetConfig.positive=False).
    warm_start: int | str = "auto"
    # Anchor (beyond the paper): after a warm start, lambda_anchor * MSE(f(x), that RL target) joins the
    # Siamese loss, so the network refines the calibrated RL estimate instead of drifting from it; 0 = off;
    # "auto" = 1 after a warm start, else 0 (anchor_weight)
    lambda_anchor: float | str = "auto"
    # TV weight of the RL target (warm start or residual base; RL-TV, Dey et al. 2006); "auto" picks it
    # from held-out voxels
    warm_tv: float | str = "auto"
    # Residual form (beyond the paper): the network outputs a correction r(x) to that RL target T and the
    # estimate is f(x) = T + r(x), starting at T exactly (zero-initialised head); it replaces the warm-start
    # steps, and lambda_anchor then weighs MSE(r, 0). False = the network outputs f(x) itself (the paper).
    residual: bool = True

    def __post_init__(self):
        if self.invariance not in INVARIANCE_POSITIONS:
            raise InputError(f"invariance must be one of {', '.join(INVARIANCE_POSITIONS)}, got {self.invariance!r}")
        if not all(_is_int(v) and v >= 1 for v in (self.steps, self.patch, self.batch, self.decay_steps)):
            raise InputError("steps, patch, batch and decay_steps must be positive integers")
        if not (_is_int(self.seed) and 0 <= self.seed < 2**63):
            raise InputError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        if self.time_budget is not None and not (_is_number(self.time_budget) and self.time_budget > 0):
            raise InputError(f"time_budget must be a positive number of seconds or None, got {self.time_budget!r}")
        if not (_is_number(self.mask_percent) and 0 < self.mask_percent < 100):
            raise InputError(f"mask_percent must be a number in (0, 100), got {self.mask_percent!r}")
        for name in ("precondition", "lambda_anchor"):
            value = getattr(self, name)
            if value != "auto" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                        and math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be 'auto' or a finite number >= 0 (0 turns it off), got {value!r}")
        if self.warm_start != "auto" and not (isinstance(self.warm_start, int) and not isinstance(self.warm_start, bool)
                                              and self.warm_start >= 0):
            raise InputError(f"warm_start must be 'auto' or a non-negative number of steps (0 turns it off), "
                             f"got {self.warm_start!r}")
        if self.warm_tv != "auto" and not _is_tv_weight(self.warm_tv):
            raise InputError(f"warm_tv must be 'auto' or a TV weight in [0, 1), got {self.warm_tv!r}")
        for name in ("residual", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (_is_number(self.ema) and 0 <= self.ema < 1):
            raise InputError(f"ema must be a number in [0, 1), got {self.ema!r}")
        if not (_is_number(self.lr) and 0 < self.lr <= 1):
            raise InputError(f"lr must be a learning rate in (0, 1] (the paper's is 4e-4), got {self.lr!r}")
        weights = (self.lambda_inv, self.lambda_bsp, self.lambda_bound, self.mask_noise_std)
        optional = tuple(w for w in (self.lambda_inv_psf, self.lambda_rec) if w is not None)
        if not all(_is_number(w) and w >= 0 for w in weights + optional):
            raise InputError("the loss weights and the mask noise must be finite numbers >= 0")

    @property
    def warm_steps(self) -> int:
        """The number of warm-start steps: ``warm_start``, or 3/8 of ``steps`` for ``"auto"`` (0 when ``residual``)."""
        if self.residual:  # the residual form starts at the target itself
            return 0
        share, whole = WARM_SHARE
        return self.steps * share // whole if self.warm_start == "auto" else int(self.warm_start)

    @property
    def anchor_weight(self) -> float:
        """``lambda_anchor``, with ``"auto"`` resolved: 1 after a warm start, else 0 (the residual
        form, and the paper's random start, which has no RL target to anchor to).

        On benchmarks/bench_selfsup.py the residual form scored higher without the anchor on every
        low-noise volume (bars by 0.8 dB), while the warm-started form needs it (see ``train``).
        """
        if self.lambda_anchor == "auto":
            return 1.0 if self.warm_steps > 0 else 0.0  # warm_steps is 0 in the residual form
        return float(self.lambda_anchor)

    @property
    def invariance_weights(self) -> tuple[float, float]:
        """(weight before the PSF, weight after the PSF) implied by `invariance`, `lambda_inv` and `lambda_inv_psf`."""
        after_weight = self.lambda_inv if self.lambda_inv_psf is None else self.lambda_inv_psf
        before = self.lambda_inv if self.invariance in ("before-psf", "both") else 0.0
        after = after_weight if self.invariance in ("after-psf", "both") else 0.0
        return before, after


@dataclass(frozen=True)
class Reference:
    """The classical estimate a residual network corrects (``TrainConfig.residual``).

    Bertero-boundary Richardson-Lucy (RL-TV for ``tv_weight`` > 0) run for ``iterations``;
    training fixes both from held-out voxels, and inference reruns RL with them.

    ``tv_smoothing`` is the rule of RL-TV's ``ε`` (:class:`deconv3d.classical._iterate._TV`):
    ``"local"`` since it changed, ``"fixed"`` (``ε = 1e-3 · tv_scale``) before. The network learned
    its correction on top of the reference it trained with, so inference keeps that rule: under the
    new one a network trained on the old reference was 2.5 % of the peak off. Checkpoints written
    before the rule was recorded hold the old one (:func:`~deconv3d.selfsup.load_checkpoint`).
    ``tv_differences`` is likewise the rule of its ``|∇u|``: ``"symmetric"`` since it changed,
    ``"forward"`` before (and in checkpoints written before it was recorded).
    """

    iterations: int
    tv_weight: float = 0.0
    tv_smoothing: str = "local"
    tv_differences: str = "symmetric"

    def __post_init__(self):
        from deconv3d.classical._iterate import TV_DIFFERENCES, TV_SMOOTHING

        if not (isinstance(self.iterations, int) and not isinstance(self.iterations, bool) and self.iterations >= 1):
            raise InputError(f"reference iterations must be a positive whole number, got {self.iterations!r}")
        if not _is_tv_weight(self.tv_weight):
            raise InputError(f"reference tv_weight must be in [0, 1), got {self.tv_weight!r}")
        if self.tv_smoothing not in TV_SMOOTHING:
            raise InputError(f"reference tv_smoothing must be one of {', '.join(TV_SMOOTHING)}, "
                             f"got {self.tv_smoothing!r}")
        if self.tv_differences not in TV_DIFFERENCES:
            raise InputError(f"reference tv_differences must be one of {', '.join(TV_DIFFERENCES)}, "
                             f"got {self.tv_differences!r}")

    def estimate(self, image, psf, device="cpu", extended: bool = False, tv_scale: float | None = None):
        """RL of ``image`` with these settings (float32 ndarray); ``extended``: on the Bertero extended domain;
        ``tv_scale``: :func:`~deconv3d.classical.richardson_lucy`'s (a block passes its volume's).

        A PSF larger than the image along some axis is centre-cropped to it (:func:`deconv3d.psf.fit_psf`),
        as the chunked pipeline's RL blocks do, so a thin stack still gets its reference.
        """
        from deconv3d.classical.rl import _richardson_lucy
        from deconv3d.psf import fit_psf

        psf = fit_psf(np.asarray(psf), np.shape(image))
        if (np.asarray(image) <= 0).all():  # a dark block: RL's zeros, without its warning (NaN: RL refuses)
            shape = [n + k - 1 for n, k in zip(np.shape(image), psf.shape)] if extended else np.shape(image)
            return np.zeros(shape, np.float32)
        return _richardson_lucy(image, psf, self.iterations, tv_weight=self.tv_weight, device=device,
                                extended=extended, tv_scale=tv_scale, tv_smoothing=self.tv_smoothing,
                                tv_differences=self.tv_differences)


def reference_fft_shape(image_shape, psf_shape) -> tuple[int, ...]:
    """The shape of the FFTs of :meth:`Reference.estimate` on an image of ``image_shape`` (Bertero's
    RL, with the PSF cut to the image), which alone may go through FFTW in a network's training or
    inference: the one definition the records of both use (:func:`deconv3d._environment.fft_record`)."""
    from deconv3d.classical._problem import rl_fft_shape

    return rl_fft_shape(image_shape, psf_shape, "bertero")


def to_dict(config) -> dict:
    return asdict(config)


def from_dict(cls, data: dict):
    """Rebuild a config from a plain dict, ignoring unknown keys (forward compatibility)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
