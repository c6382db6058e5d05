"""Commands of the self-supervised path: ``train``, and ``deconvolve --method ssl``."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from deconv3d._paths import line_text, recorded_path
from deconv3d.errors import InputError

from ._common import check_negative, check_output, voxel_size_of
from .arguments import (AMP_HELP, DEVICE_HELP, DEVICES, SpatialSizes, add_common, non_negative_float, positive_float,
                        non_negative_int, positive_int)
from .printing import counted, hashed, make_bar, print_warnings, say_last
from .stopping import stop_request

INVARIANCE = ("before-psf", "after-psf", "both", "none")
BAND_LIMIT = 0.0  # deconv3d.selfsup.BAND_LIMIT, repeated so that --help does not import torch
PRECONDITION = "auto"  # TrainConfig().precondition, likewise
WARM_START = "auto"  # TrainConfig().warm_start, likewise
ANCHOR = "auto"  # TrainConfig().lambda_anchor, likewise
RESIDUAL = True  # TrainConfig().residual, likewise
WARM_TV = "auto"  # TrainConfig().warm_tv, likewise
LAMBDA_INV = 2.0  # TrainConfig().lambda_inv, likewise
LAMBDA_BOUND = 0.1  # TrainConfig().lambda_bound, likewise
DECAY_STEPS = 5000  # TrainConfig().decay_steps, likewise
EMA = 0.99  # TrainConfig().ema, likewise
POSITIVE = True  # UNetConfig().positive, likewise


def register(sub) -> None:
    """Add the ``train`` command to the ``deconv3d`` sub-parsers."""
    p = sub.add_parser("train", help="train a self-supervised deconvolution network on an image")
    p.add_argument("input", help="image to train on (.tif/.tiff, 2D or 3D)")
    p.add_argument("--psf", required=True, help="PSF file (.tif); resampled to the image's voxel size when they differ")
    p.add_argument("-o", "--output", required=True, help="output model file (.ckpt)")
    add_training_options(p, steps_flag="--steps")
    p.add_argument("--voxel-size", type=positive_float, nargs=3, action=SpatialSizes, metavar=("DZ", "DY", "DX"),
                   help="voxel size in µm (overrides the file's metadata): DZ DY DX, or DY DX for a 2D image (which "
                   "uses the last two of three)")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.set_defaults(func=cmd_train)
    add_common(p)


#: Training steps when none are given (train, and deconvolve --method ssl without --model).
DEFAULT_STEPS = 300


def add_training_options(p, steps_flag: str) -> None:
    """Options of the training recipe; ``steps_flag`` is ``--steps`` (train) or ``--train-steps`` (deconvolve)."""
    g = p.add_argument_group("self-supervised network (Papkov et al. 2023)")
    g.add_argument(steps_flag, dest="steps", type=positive_int, default=None,
                   help=f"training steps (default {DEFAULT_STEPS})")
    g.add_argument("--patch", type=positive_int, default=32, help="side of the training patches (default 32)")
    g.add_argument("--batch", type=positive_int, default=2, help="patches per step (default 2)")
    _add_loss_options(g)
    _add_network_options(g)
    _add_estimate_options(g)
    g.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                   help="stop training after this many seconds, counted from the start of training: its set-up and "
                        "the search for the Richardson-Lucy reference included. A step is not started that would end "
                        "past it by the time the last steps took; the set-up, the search's first iteration, "
                        "Richardson-Lucy at the chosen count and the first step always run, and can take a small "
                        "budget past its end. deconvolve's prediction after training (8 passes with --tta) is not "
                        "counted")
    g.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help=AMP_HELP)


def _add_loss_options(g) -> None:
    """The options of the loss terms and their weights."""
    g.add_argument("--invariance", choices=INVARIANCE, default=None,
                   help="where the Siamese invariance loss sits (default before-psf; none with --ssi)")
    g.add_argument("--lambda-inv", type=non_negative_float, default=LAMBDA_INV, metavar="W",
                   help=f"weight of the invariance loss (default {LAMBDA_INV:g}, the paper's)")
    g.add_argument("--lambda-inv-psf", type=non_negative_float, default=None, metavar="W",
                   help="weight of the invariance after the PSF (--invariance after-psf or both; "
                        "default: --lambda-inv)")
    g.add_argument("--lambda-bound", type=non_negative_float, default=LAMBDA_BOUND, metavar="W",
                   help=f"weight of the bounds term (default {LAMBDA_BOUND:g}, the paper's). It penalises negative "
                        "output only (the output is scaled by its own maximum, so never above 1): with the "
                        "positive output, the default, it is 0; it acts with --no-positive")
    g.add_argument("--ssi", action="store_true", help="SSI-style blind-spot baseline (invariance none, lambda_bsp 1; "
                   "the data term is off unless --lambda-rec is given)")
    g.add_argument("--lambda-rec", type=non_negative_float, default=None, metavar="W",
                   help="weight of the data term MSE(x, PSF*f(x)) (default 1; 0 with --ssi)")


def _add_network_options(g) -> None:
    """The options of the network, its optimiser and its output head."""
    g.add_argument("--base-channels", type=positive_int, default=16, help="UNet width (default 16)")
    g.add_argument("--unet-depth", type=positive_int, default=3, help="UNet depth (default 3)")
    g.add_argument("--lr", type=positive_float, default=4e-4, help="Adam learning rate (default 4e-4)")
    g.add_argument("--decay-steps", type=positive_int, default=DECAY_STEPS, metavar="N",
                   help=f"halve the learning rate every N steps (default {DECAY_STEPS})")
    g.add_argument("--ema", type=_ema, default=EMA, metavar="D",
                   help=f"infer with a moving average of the weights, decay D (default {EMA:g}; 0 is the paper's: "
                        "the last weights)")
    g.add_argument("--positive", action=argparse.BooleanOptionalAction, default=POSITIVE,
                   help="softplus output head floored at zero intensity (default on; --no-positive is the paper's "
                        "linear head)")


def _add_estimate_options(g) -> None:
    """The options of the data-term weighting and of the Richardson-Lucy estimate the network starts from."""
    g.add_argument("--precondition", type=_auto_or_non_negative, default=PRECONDITION, metavar="EPS",
                   help="weight the data term by frequency (Wiener): auto (eps 1e-3, gated by the image's "
                        "signal-to-noise ratio) or a number EPS; recovers fine detail in fewer steps on "
                        f"low-noise stacks (default {PRECONDITION}; 0 is the paper's "
                        "plain MSE)")
    g.add_argument("--residual", action=argparse.BooleanOptionalAction, default=RESIDUAL,
                   help="the network learns a correction to Richardson-Lucy of the image, run for the iteration "
                        "count chosen from held-out voxels, starting from that estimate exactly (default "
                        f"{'on' if RESIDUAL else 'off'}); --no-residual learns the whole estimate, after a warm "
                        "start towards it")
    g.add_argument("--warm-start", type=_warm_start, default=WARM_START, metavar="STEPS",
                   help="with --no-residual: first regress the network for STEPS steps onto that "
                        "Richardson-Lucy estimate, then train as usual (default auto: 3/8 of the steps; 0 is the "
                        "paper's random start)")
    g.add_argument("--anchor", type=_auto_or_non_negative, default=ANCHOR, metavar="W",
                   help="keep W times the squared distance to that Richardson-Lucy estimate in the loss "
                        f"(default {ANCHOR}: 1 after a warm start, else 0; 0 lets the Siamese "
                        "loss alone take over)")
    g.add_argument("--warm-tv", type=_warm_tv, default=WARM_TV, metavar="W",
                   help="TV weight of that Richardson-Lucy estimate, or auto to choose it from held-out voxels "
                        f"(default {WARM_TV}; with --no-residual, plain RL (0) scored higher)")


def configs(args, ndim: int):
    """The (TrainConfig, UNetConfig) chosen on the command line."""
    from deconv3d.selfsup import TrainConfig, UNetConfig

    if args.ssi and args.invariance not in (None, "none"):
        raise InputError(f"--ssi is the baseline without an invariance term, but --invariance {args.invariance} was "
                         "given: drop one of them")
    extra = dict(invariance="none", lambda_bsp=1.0) if args.ssi else dict(invariance=args.invariance or "before-psf")
    config = TrainConfig(steps=args.steps or DEFAULT_STEPS, patch=args.patch, batch=args.batch, lr=args.lr,
                         decay_steps=args.decay_steps, ema=args.ema,
                         precondition=args.precondition, warm_start=args.warm_start, lambda_anchor=args.anchor,
                         warm_tv=args.warm_tv, residual=args.residual, time_budget=args.time_budget,
                         lambda_inv=args.lambda_inv, lambda_inv_psf=args.lambda_inv_psf, lambda_rec=args.lambda_rec,
                         lambda_bound=args.lambda_bound, seed=args.seed, amp=args.amp, **extra)
    return config, UNetConfig(ndim=ndim, base_channels=args.base_channels, depth=args.unet_depth,
                              positive=args.positive)


#: The training options that some recipes do not read (:func:`recipe_ignores`).
RECIPE_OPTIONS = ("warm_start", "warm_tv", "lambda_inv", "lambda_inv_psf", "precondition", "lambda_bound")


def recipe_ignores(args) -> list[tuple[str, str, str]]:
    """The training options (dests) that the recipe ``args`` chooses does not read, each with a verb
    and why (``dest``, ``verb``, ``why``): given, they were recorded in the checkpoint as if used
    (``--warm-start 50`` with the residual form, which runs no warm start).
    :func:`deconv3d.cli.classical._unused_option_warnings` warns about those given."""
    from deconv3d.selfsup.losses import loss_weights

    config = configs(args, 2)[0]
    invariance = "--ssi" if args.ssi else f"--invariance {config.invariance}"
    ignored = []
    if config.residual:
        ignored.append(("warm_start", "applies", "to --no-residual, and a residual network (the default) starts at "
                                                 "the Richardson-Lucy estimate itself"))
    elif not (config.warm_steps or config.anchor_weight):  # train() then computes no Richardson-Lucy estimate
        ignored.append(("warm_tv", "sets", "the TV weight of the Richardson-Lucy estimate that a warm start or "
                                           "--anchor uses, and this recipe has neither"))
    # From the recipe's structure, not from weights that resolve to 0: a weight of 0 is read (it turns its term off).
    if config.invariance == "none":
        ignored.append(("lambda_inv", "weighs", f"an invariance term {invariance} does not have"))
    elif config.invariance == "after-psf" and config.lambda_inv_psf is not None:
        ignored.append(("lambda_inv", "is", f"replaced by --lambda-inv-psf under {invariance}"))
    if config.invariance not in ("after-psf", "both"):
        ignored.append(("lambda_inv_psf", "weighs", "the invariance after the PSF (--invariance after-psf or both), "
                                                    f"and {invariance} has none"))
    if config.lambda_rec == 0:
        ignored.append(("precondition", "weighs", "the data term, which --lambda-rec 0 turns off"))
    elif config.lambda_rec is None and not loss_weights(config).data:  # the SSI baseline's default
        ignored.append(("precondition", "weighs", f"the data term, which is off under {invariance} (--lambda-rec "
                                                  "turns it on)"))
    if args.positive:  # (a network's output through the positive head is never negative: the term is 0)
        ignored.append(("lambda_bound", "weighs", "the bounds term, which penalises negative output that the "
                                                  "positive output (the default) never has (--no-positive gives it)"))
    return ignored


def train_with_progress(image, psf, args, voxel, notes=(), stop=None):
    """Train on ``image`` with a progress bar showing the loss; raises on divergence.

    ``notes`` (warnings) are printed at the first report (an iteration of the search for the RL
    reference, or the first step), once training has accepted the input. The search's RL
    iterations are counted on the bar, its description naming their cap
    (:func:`~deconv3d.selfsup.rl_reference.search_cap`; the search usually stops long before it), and
    the bar turns to the training steps at 0 as soon as the search has chosen, its description naming
    RL at that count until the first step (slower than the next ones) is done; without a reference it
    says "setting up" until then. A log gets the bar's lines (a description alone writes none).
    ``stop`` (a :class:`~deconv3d.cli.stopping.StopRequest`) is armed once the first step is done: a
    signal then ends training after the step it comes in (the result's reason is "cancelled"). The loss
    shown is the step's total; with ``--precondition`` its data term is frequency-weighted
    (:func:`~deconv3d.selfsup.losses.data_term`), so it compares steps of one run, not runs on other images."""
    from deconv3d.selfsup import train
    from deconv3d.selfsup.rl_reference import search_cap

    config, unet = configs(args, image.ndim)
    # Before the first step, the residual form searches RL's iteration count on held-out voxels.
    preparing = bool(config.residual or config.warm_steps or config.anchor_weight)  # as train() decides
    # The search's cap in its description, not as the bar's total: it usually stops long before (66 of 600 on
    # noise), and a time left counted to the cap said an hour for a search of minutes.
    bar = (make_bar(None, f"train: choosing the RL reference (at most {search_cap(config.warm_tv)} iterations)", "it",
                    config.time_budget)
           if preparing else make_bar(config.steps, "train: setting up", "step", config.time_budget))
    callback, on_reference = _training_callbacks(bar, config.steps, list(notes), stop)
    with bar:
        result = train(image, psf, config=config, unet=unet, device=args.device, callback=callback, voxel_size=voxel,
                       on_reference=on_reference if preparing else None)
    if result.reason == "non-finite loss":
        raise InputError(f"training diverged at step {result.steps_done} (non-finite loss): lower --lr or check the PSF")
    return result


def _training_callbacks(bar, steps: int, pending: list, stop):
    """:func:`train_with_progress`'s ``callback(step, loss)`` and ``on_reference(reference)`` for train():
    the callback prints the ``pending`` warnings at the first report, counts the search's RL iterations on
    ``bar`` (step 0), then the training steps, and arms ``stop`` at each step and returns whether it was
    asked; ``on_reference`` turns ``bar`` to the ``steps`` training steps, at 0, when the search has chosen,
    described as RL at the chosen count until the first step, which makes the description "train"."""

    def on_reference(reference) -> None:
        bar.set_description(f"train: running the RL reference ({counted(reference.iterations, 'iteration')})",
                            refresh=False)
        bar.unit = "step"
        bar.set_postfix(refresh=False)
        bar.reset(total=steps)  # the rate and ETA count training steps only

    def callback(step, loss):
        if pending:
            bar.clear()
            print_warnings(pending)
        if step == 0:  # an iteration of the search for the RL reference (loss: its held-out error)
            bar.set_postfix(risk=f"{loss:.4g}", refresh=False)
            bar.update(1)
            return
        if stop is not None:  # armed before the step's line is written: a signal as it shows keeps the step
            stop.arm()
        if step == 1:  # the set-up or the RL reference the description named is done
            bar.set_description("train", refresh=False)
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)  # before update, which may write the line
        bar.update(step - bar.n)
        return stop is not None and stop.asked

    return callback, on_reference


def _read_inputs(args):
    from deconv3d.io import (assume_psf_voxel, naming_psf_and_image, psf_dimension_problem, psf_voxel_size, read_image,
                             read_psf)
    from deconv3d.psf import prepare_psf

    image = read_image(args.input)
    check_output(args.output, [args.input, args.psf], suffixes=(".ckpt", ".pt"))
    psf = read_psf(args.psf)
    if problem := psf_dimension_problem(args.psf, psf.data.ndim, args.input, image.data.ndim):
        raise InputError(problem)  # (as deconvolve says it: naming both files and how to make a PSF that fits)
    notes: list[str] = []
    check_negative(image.data, args.input, "train", notes)
    voxel = assume_psf_voxel(voxel_size_of(args, image, notes), args.psf, image.data.ndim, args.input, notes,
                             partial=image.partial_voxel)
    with naming_psf_and_image(args.psf, args.input):
        prepared = prepare_psf(psf.data, image.data.shape, psf_voxel=psf_voxel_size(psf, voxel, args.psf, notes),
                               image_voxel=voxel)
    return image, prepared, voxel, notes


def cmd_train(args) -> int:
    from deconv3d.selfsup import save_checkpoint

    from .classical import _unused_option_warnings

    from deconv3d.selfsup.train_setup import check_patch

    warnings = _unused_option_warnings(args)
    image, psf, voxel, notes = _read_inputs(args)
    config, unet = configs(args, image.data.ndim)
    check_patch(config.patch, image.data.shape, unet, psf.shape)  # before the input is hashed
    start = time.perf_counter()
    notes = warnings + notes
    # The file as it was read, hashed before the training: not seconds of hashing after it, in which a
    # first signal (Slurm's SIGTERM) stopped the command at once and lost the steps trained.
    source = {"path": recorded_path(args.input), "sha256": hashed(args.input, "train: hashing the input")}
    with stop_request() as stop:  # the first signal after step 1 keeps the steps trained, also while they are saved
        result = train_with_progress(image.data, psf, args, voxel, notes, stop)
        if stop.asked and result.reason == "cancelled":  # (not one after the last step: training completed)
            result = replace(result, reason=stop.reason())  # (the library's "cancelled", named)
        save_checkpoint(result, args.output, training_image=source)
    if stop.asked:
        say_last(f"deconv3d: {stop.how()} at step {result.steps_done} of {result.config.steps}: wrote "
                 f"{line_text(args.output)} with the {counted(result.steps_done, 'step')} trained")
        return stop.status()
    last = result.history[-1][1]
    print(f"wrote {line_text(args.output)}: {counted(result.steps_done, 'step')} ({result.reason}) in {time.perf_counter() - start:.1f} s, "
          f"final loss {last:.4g}, {result.precision}")
    return 0


def load_model(args):
    """The ``--model`` of ``deconvolve --method ssl`` (None when training instead)."""
    from deconv3d.selfsup import load_checkpoint

    if args.model and args.steps:
        raise InputError("give either --model or --train-steps for --method ssl, not both")
    return load_checkpoint(args.model, device="cpu") if args.model else None


def deconvolve_ssl(args, image, psf, voxel, trained=None):
    """``deconvolve --method ssl``: apply ``trained`` (see :func:`load_model`) or train on the image first.

    Returns ``(result, params, psf)``.
    """
    from deconv3d.selfsup import apply_model, training_record
    from deconv3d.selfsup.predict import inference_precision

    if trained is not None:
        trained.check_compatible(image.ndim, psf, voxel)
        params = {**trained.record(), "model": recorded_path(args.model)}  # its recipe, as the checkpoint holds it
    else:
        if psf is None:
            raise InputError("--method ssl without --model needs a PSF: add --psf PSF.tif or --psf-model")
        trained = train_with_progress(image, psf, args, voxel)
        params = training_record(trained)  # the whole recipe, seed included
    bar = make_bar(None, "predict", "tile")

    def callback(done, total):
        bar.total = total
        bar.update(done - bar.n)

    with bar:
        result = apply_model(trained, image, device=args.device, tta=args.tta, band_limit=args.band_limit,
                             callback=callback, amp=args.amp)
    params["tta"] = bool(args.tta)
    params["band_limit"] = args.band_limit
    params["amp"] = bool(args.amp)  # the inference's mixed precision (and the training's, with --train-steps)
    params["inference_precision"] = inference_precision(args.amp, args.device)  # what that is on this machine
    return result, params, trained.psf


def _warm_start(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number of steps, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _warm_tv(text: str) -> float | str:
    if text == "auto":
        return text
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a TV weight below 1 (try 0.002-0.03), got {text}")
    return value


def _auto_or_non_negative(text: str) -> float | str:
    """``auto`` or a number >= 0 (--precondition, --anchor)."""
    return "auto" if text == "auto" else non_negative_float(text)


def _ema(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a decay in [0, 1) (0 turns the average off), got {text}")
    return value


def training_defaults() -> dict:
    """``{dest: default}`` of the training options (:func:`add_training_options`)."""
    p = argparse.ArgumentParser(add_help=False)
    add_training_options(p, steps_flag="--train-steps")
    return vars(p.parse_args([]))


def add_deconvolve_options(p) -> None:
    """The ``--method ssl`` options of ``deconvolve``."""
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="trained network (.ckpt from deconv3d train) for --method ssl; repeated, one per channel of "
                        "a multi-channel input (--model A.ckpt --model B.ckpt), each checked "
                        "against its channel's --psf")
    p.add_argument("--tta", action="store_true", help="ssl: average over the 8 xy rotations/flips")
    p.add_argument("--band-limit", type=non_negative_float, default=BAND_LIMIT, metavar="EPS",
                   help=f"ssl: damp frequencies the PSF does not pass, gain (1+EPS)|H|^2/(|H|^2+EPS), e.g. 0.01 on stacks "
                        f"dominated by noise; it blurs low-noise ones (default {BAND_LIMIT:g}: off)")
    add_training_options(p, steps_flag="--train-steps")

