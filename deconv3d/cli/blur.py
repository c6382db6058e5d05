"""The ``blur`` command's parsers: ``blur train``, ``blur synth`` and ``blur deblur``, their options and
the checks of single option values. The commands themselves are in :mod:`.blur_train` and
:mod:`.blur_synth_deblur`, the reading of their input files in :mod:`.blur_inputs`.

Linear-latent autoencoders after Mazilu, Wang, Dummer, Veldhuis, Brune & Strisciuglio,
"Defocus Blur Synthesis and Deblurring via Interpolation and Extrapolation in Latent
Space", CAIP 2023, arXiv:2307.15461 (see :mod:`deconv3d.latent`).
"""

from __future__ import annotations

import argparse
import math

from .arguments import (DEVICE_HELP, DEVICES, Parser, _looks_like_a_file, add_common, non_negative_float, positive_float,
                        non_negative_int, positive_int)
from .blur_synth_deblur import cmd_deblur, cmd_synth
from .blur_train import cmd_train

VARIANTS = ("baseline", "implicit", "explicit")
DISTANCES = ("mse", "l1")
LATENT_NORMS = ("none", "endpoints")


def register(sub) -> None:
    """Add the ``blur`` command and its sub-commands to the ``deconv3d`` sub-parsers."""
    p = sub.add_parser("blur", help="synthesise or remove defocus blur with a linear-latent autoencoder")
    add_common(p)
    blur = p.add_subparsers(dest="blur_command", metavar="SUBCOMMAND", parser_class=Parser)
    blur.required = True
    _train_parser(blur)
    _synth_parser(blur)
    _deblur_parser(blur)


def _number(text: str) -> float:
    """``text`` as a number. Left to argparse, a word was refused as "invalid _finite value: 'a.tif'", naming
    this module's function, and a stack that --levels took (``--levels 0 1 2 a.tif``) was not named as one."""
    try:
        return float(text)
    except ValueError:
        taken = (" (a file name: give the files before this option, whose values run up to the next option)"
                 if _looks_like_a_file(text) else "")  # (as the parser's greedy hints tell a file; not '0.1x')
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}{taken}") from None


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def _finite(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _range_end(text: str) -> float:
    """A level fraction for --range: extrapolation far beyond [0, 1] only amplifies noise (and overflows)."""
    from deconv3d.latent.ops import FRACTION_LIMITS

    value, (lo, hi) = _finite(text), FRACTION_LIMITS
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"must lie in [{lo:g}, {hi:g}] (0 is FAR, 1 is NEAR), got {text}")
    return value


def _val_fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (the share of stacks held out), got {text}")
    return value


def _train_parser(blur) -> None:
    p = blur.add_parser("train", help="train an autoencoder on through-focus stacks (planes ordered by blur)")
    p.add_argument("stacks", nargs="+", metavar="STACK.tif", help="through-focus stacks of at least 3 planes")
    p.add_argument("-o", "--output", required=True, help="output model file (.ckpt)")
    _add_objective_options(p)
    p.add_argument("--levels", type=_finite, nargs="+", metavar="L",
                   help="blur level of each plane, larger = nearer focus (default: plane index)")
    p.add_argument("--focus", choices=("last", "first"),
                   help="which end of the stacks is in focus when --levels is not given (default last); "
                        "--levels orders the planes itself and overrides it (a warning says so where they disagree)")
    _add_training_options(p)
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    add_common(p)
    p.set_defaults(func=cmd_train)


def _add_objective_options(p) -> None:
    """The training objective's options of ``blur train``: the variant and its latent term."""
    p.add_argument("--variant", choices=VARIANTS, default="explicit",
                   help="objective: plain autoencoder, + decoded interpolation, + latent match (default explicit)")
    p.add_argument("--dist", choices=DISTANCES, default="mse",
                   help="latent distance of the explicit loss (default mse; explicit variant only)")
    p.add_argument("--latent-weight", type=non_negative_float, default=0.01, metavar="W",
                   help="weight of the explicit loss's latent term (default 0.01; the paper: 1, with "
                        "--latent-norm none; explicit variant only)")
    p.add_argument("--latent-norm", choices=LATENT_NORMS, default="endpoints",
                   help="'endpoints' (default, beyond the paper): the latent term relative to dist(E(x1), E(x3)), "
                        "so that it cannot fall by shrinking the latents; 'none': the paper's absolute term "
                        "(explicit variant only)")


def _add_training_options(p) -> None:
    """The optimisation's options of ``blur train``: steps, batches and crops, the network's widths and form,
    learning rate, validation share, seed, when to stop, and precision."""
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch", type=positive_int, default=16, help="triplets per step (default 16)")
    p.add_argument("--crop", type=positive_int, default=64, help="training crop side (default 64)")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[32, 64, 128, 256], metavar="W",
                   help="encoder widths, finest first (default 32 64 128 256; the paper: 64 ... 1024)")
    p.add_argument("--skip", action="store_true", help="interpolate the encoder features of every scale")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="train the interpolation as a correction on top of pixel blending (beyond the paper; "
                        "default for implicit and explicit; --no-residual: the paper's form)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--val-fraction", type=_val_fraction, default=0.25, help="held-out share of the stacks (default 0.25)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of weights, split and crops (default 0)")
    p.add_argument("--time-budget", type=positive_float, help="stop after this many seconds")
    p.add_argument("--stop-after", type=positive_int, metavar="K",
                   help="stop after K of the --steps steps, on the learning-rate schedule of all of them: "
                        "reproduces a run that --time-budget stopped (--steps N --stop-after K, from its N steps "
                        "and its train_steps K)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision for the network's training: float16 on CUDA, bfloat16 on CPUs with AMX, where "
                        "it took 0.7x the time; float32 elsewhere (default on; --no-amp: float32)")


def _synth_parser(blur) -> None:
    p = blur.add_parser("synth", help="synthesise blur levels between a blurred and a sharp plane",
                        description="Synthesise blur levels between a blurred and a sharp plane. The output holds "
                                    "the blur levels along ImageJ's time axis (frames), not z: Fiji shows a t "
                                    "slider, not slices at a depth it would make up, and the file's properties "
                                    "list the fraction of each frame.")
    p.add_argument("--model", required=True, help="autoencoder written by 'deconv3d blur train'")
    p.add_argument("far", metavar="FAR.tif", help="the most blurred plane")
    p.add_argument("near", metavar="NEAR.tif", help="the in-focus plane")
    p.add_argument("--levels", type=positive_int, required=True, metavar="K",
                   help="number of planes to write, evenly spaced over --range (default FAR to NEAR, both included)")
    p.add_argument("--range", type=_range_end, nargs=2, default=[0.0, 1.0], metavar=("A0", "A1"),
                   help="first and last fraction from FAR (0) to NEAR (1); beyond [0, 1] extrapolates")
    p.add_argument("-o", "--output", required=True,
                   help="output stack (.tif), one plane per blur level, along ImageJ's time axis (frames), not z "
                        "(the properties 'first_axis' and 'fractions' say so)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="decode only a correction on top of pixel blending, keeping the end planes exact "
                        "(default: as the model was trained; --no-residual: the paper's decoding)")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    add_common(p)
    p.set_defaults(func=cmd_synth)


def _deblur_parser(blur) -> None:
    p = blur.add_parser("deblur", help="extrapolate the in-focus plane from a blurred plane")
    p.add_argument("--model", required=True, help="autoencoder written by 'deconv3d blur train'")
    p.add_argument("far", metavar="FAR.tif", help="the most blurred plane")
    p.add_argument("level", metavar="LEVEL.tif", help="the plane to deblur")
    p.add_argument("--alpha", type=_fraction, required=True, metavar="A",
                   help="weight of FAR in LEVEL, (b - m) / (b - a) for the levels a of FAR, m of LEVEL, b of focus; "
                        "above 0 and at most 10/11 (an 11-fold extrapolation)")
    p.add_argument("-o", "--output", required=True, help="output plane (.tif)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="add back the detail of LEVEL that the autoencoder does not reconstruct "
                        "(default: when the model was trained in residual form; --no-residual: the paper's)")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    add_common(p)
    p.set_defaults(func=cmd_deblur)
