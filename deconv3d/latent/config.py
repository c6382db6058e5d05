"""The training recipe of the linear-latent autoencoder (Mazilu et al., CAIP 2023), checked when
built, and its plain-dict form for checkpoints."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np

from deconv3d.errors import InputError
from deconv3d.latent.losses import DISTANCES, LATENT_NORMS, VARIANTS

__all__ = ["LatentTrainConfig", "train_config_from_dict", "config_to_dict", "LR_DECAYS", "TRIPLET_SCHEMES"]

LR_DECAYS = ("cosine", "step", "none")
TRIPLET_SCHEMES = ("dyadic", "all")


@dataclass(frozen=True)
class LatentTrainConfig:
    """Training recipe (the paper: batch 16, Adam 1e-3, 128x128 crops, GPU).

    ``variant`` is ``"baseline"``, ``"implicit"`` or ``"explicit"``; ``dist`` the latent
    distance of the explicit loss (``"mse"`` as in the authors' code or ``"l1"``) and
    ``latent_weight`` its weight (see below); ``lr_decay`` ``"cosine"`` (to zero at
    ``steps``), ``"step"`` (halve at 50% and 75%) or ``"none"``; ``ema_decay`` 0 disables
    weight averaging; ``val_every`` steps between validations on ``val_fraction`` of the
    stacks (0: no validation, the last weights are kept); ``triplets`` ``"dyadic"`` (the
    paper's midpoint triplets) or ``"all"``; ``time_budget`` in seconds stops early.
    ``stop_after`` (at most ``steps``) stops after that many steps of the ``steps``-step run,
    whose learning-rate schedule (and the command line's validation interval) follow ``steps``:
    a run that ``time_budget`` stopped after K steps is reproduced, bit for bit on the same
    machine and thread count, by ``steps`` as it was and ``stop_after=K``, not by ``steps=K``.
    ``residual`` (beyond the paper) trains the interpolation term on the form
    :func:`~deconv3d.latent.ops.synthesize_blur` uses with ``residual=True``:
    ``D(z2') - [alpha D(z1) + (1 - alpha) D(z3)]`` added to the pixel blend
    ``alpha x1 + (1 - alpha) x3`` must match ``x2``, so the decoder learns the blend's error
    rather than the whole plane; validation scores that form too. ``None`` (default) means
    ``True`` for the implicit and explicit losses and ``False`` for the baseline, which has no
    interpolation term; ``False`` is the paper's form. On benchmarks/bench_latent.py (data
    seeds 0 / 1 / 2, 2000 steps) the explicit loss trained and used in residual form gave
    +2.85 / +2.40 / +2.61 dB interpolation PSNR over pixel blending, against +0.46 / +0.20 /
    +0.69 dB for the paper's form, and ranked above implicit (by 0.24 / 0.27 / 0.14 dB) and
    baseline in that form; in the paper's form explicit and implicit tied.

    The latent term defaults to ``latent_norm="endpoints"`` (beyond the paper): it is divided
    by ``dist(E(x1), E(x3))`` (:func:`~deconv3d.latent.losses.explicit_loss`), so the encoder
    cannot lower it by shrinking all its latents, and, being unitless, it is weighted 0.01.
    On benchmarks/bench_latent.py (synthetic stacks, default network, 2000 steps, 2 cores,
    data seeds 0 / 1) it beat the absolute term at its best weight, 0.1, on every measure:
    interpolation PSNR 33.82 / 34.07 against 33.64 / 33.84 dB, latent linearity LDS 0.850 /
    0.876 against 0.754 / 0.776, deblurring gain from level 8 +4.08 / +2.37 against +3.32 /
    +1.95 dB. The implicit loss (no latent term) gave 33.76 / 34.11 dB, LDS 0.693 / 0.706.
    Earlier runs of the absolute term: 32.85 / 33.60 / 33.76 dB at weights 1 (the paper's) /
    0.1 / 0.01, with LDS 0.759 / 0.751 / 0.717; ``latent_norm="none", latent_weight=1``
    is the paper's loss. A relative weight of 0.03 gave LDS 0.917 for 33.73 dB (seed 0).
    """

    variant: str = "explicit"
    dist: str = "mse"
    latent_weight: float = 0.01  # of the relative term; see the docstring
    latent_norm: str = "endpoints"  # the latent term relative to dist(z1, z3); "none": the paper's
    steps: int = 2000  # explicit variant, 2 CPU cores (bench_latent): 5.6 minutes in float32, 4 in bfloat16 (AMX)
    batch: int = 16
    lr: float = 1e-3
    lr_decay: str = "cosine"
    ema_decay: float = 0.99
    val_every: int = 100
    val_fraction: float = 0.25
    triplets: str = "dyadic"
    augment: bool = True
    seed: int = 0
    time_budget: float | None = None
    stop_after: Optional[int] = None  # stop after this many of the steps (None: all of them)
    residual: Optional[bool] = None  # None: residual form unless variant is baseline
    # mixed precision for the network in training: bfloat16 on a CPU with AMX, float16 on CUDA, float32
    # elsewhere (deconv3d._torch_common.amp_dtype); the output layer, latent arithmetic, losses, validation
    # and later use stay in float32. bench_latent (data seeds 0 / 1): 0.06-0.08 dB lower interpolation PSNR
    # than float32 at 0.69-0.75x the training time
    amp: bool = True

    def __post_init__(self):
        self._resolve_flags()
        self._check_choices()
        self._check_numbers()
        if self.residual and self.variant == "baseline":
            raise InputError("residual training shapes the interpolation term, which the baseline loss lacks: "
                             "use variant implicit or explicit")
        self._check_stopping()
        if isinstance(self.seed, bool) or not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**63):
            raise InputError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")

    def _resolve_flags(self) -> None:
        """Resolve ``residual``'s default (by the variant) and refuse ``residual`` and ``amp`` other than booleans,
        stored as Python bools."""
        if self.residual is None:  # frozen: resolve the default once, so the checkpoint records it
            object.__setattr__(self, "residual", self.variant != "baseline")
        if not isinstance(self.residual, (bool, np.bool_)):
            raise InputError(f"residual must be True, False or None, got {self.residual!r}")
        if not isinstance(self.amp, (bool, np.bool_)):
            raise InputError(f"amp must be True or False, got {self.amp!r}")
        for name in ("residual", "amp"):  # a numpy bool would make the checkpoint unloadable (weights_only)
            object.__setattr__(self, name, bool(getattr(self, name)))

    def _check_choices(self) -> None:
        """Refuse a variant, distance, latent norm, learning-rate decay or triplet scheme it does not know."""
        for name, value, allowed in (("variant", self.variant, VARIANTS), ("dist", self.dist, DISTANCES),
                                     ("latent_norm", self.latent_norm, LATENT_NORMS),
                                     ("lr_decay", self.lr_decay, LR_DECAYS),
                                     ("triplets", self.triplets, TRIPLET_SCHEMES)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    def _check_numbers(self) -> None:
        """Refuse counts that are not positive integers, and rates and weights outside their ranges."""
        counts = (self.steps, self.batch, self.val_every)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in counts):
            raise InputError(f"steps, batch and val_every must be positive integers, got {counts!r}")
        rates = (self.lr, self.ema_decay, self.val_fraction, self.latent_weight)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in rates):
            raise InputError(f"lr, ema_decay, val_fraction and latent_weight must be finite numbers, got {rates!r}")
        if not (self.lr > 0 and 0 <= self.ema_decay < 1 and 0 <= self.val_fraction < 1):
            raise InputError("lr must be > 0, ema_decay in [0, 1) and val_fraction in [0, 1)")
        if self.latent_weight < 0:
            raise InputError(f"latent_weight must be a finite number >= 0, got {self.latent_weight}")

    def _check_stopping(self) -> None:
        """Refuse a time budget that is not a positive number, or a ``stop_after`` not from 1 to ``steps``
        (stored as a Python int)."""
        if self.time_budget is not None and not (isinstance(self.time_budget, numbers.Real) and self.time_budget > 0):
            raise InputError(f"time_budget must be a positive number of seconds, got {self.time_budget!r}")
        if self.stop_after is not None and not (isinstance(self.stop_after, (int, np.integer))
                                                and not isinstance(self.stop_after, bool)
                                                and 1 <= self.stop_after <= self.steps):
            raise InputError(f"stop_after must be a whole number of steps from 1 to steps ({self.steps}), got "
                             f"{self.stop_after!r}")
        if self.stop_after is not None:  # a numpy integer would make the checkpoint unloadable (weights_only)
            object.__setattr__(self, "stop_after", int(self.stop_after))


def train_config_from_dict(data: dict) -> LatentTrainConfig:
    """Rebuild a :class:`LatentTrainConfig` from a plain dict, ignoring unknown keys.

    A dict without ``latent_weight`` comes from a checkpoint written before the weight was a
    parameter, when it was always the paper's 1; one without ``latent_norm`` used the
    absolute latent term; one without ``residual`` was trained in the paper's plain form; one
    without ``amp`` was trained in float32.
    """
    names = {f.name for f in fields(LatentTrainConfig)}
    values = {"latent_weight": 1.0, "latent_norm": "none", "residual": False, "amp": False,
              **{k: v for k, v in dict(data).items() if k in names}}
    return LatentTrainConfig(**values)


def config_to_dict(config: LatentTrainConfig) -> dict:
    """Plain-dict form of a training config, for checkpoints."""
    return asdict(config)
