"""The ``blur train`` command: the stacks' planes ordered by blur level, the options checked, the
autoencoder trained (holding out tiles of a single stack for validation) and its checkpoint written."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deconv3d._paths import line_text, recorded_path
from deconv3d.errors import InputError, warn

from ._common import check_output
from .blur_inputs import _read_stacks
from .printing import counted, hashed, progress

if TYPE_CHECKING:  # numpy is imported where it is used: --help and --version do without it
    import numpy as np


def cmd_train(args) -> int:
    from deconv3d.latent.checkpoint import save_checkpoint
    from deconv3d.latent.model import AEConfig
    from deconv3d.latent.train import train

    stacks, pixel, levels = _training_stacks(args)
    plane_shape = stacks.shape[-2:]  # before any tiling below
    _refuse_crop(args.crop, args.widths, plane_shape)
    ae = AEConfig(widths=tuple(args.widths), crop=args.crop, skip_interp=args.skip)
    stacks, val_fraction = _validation_split(stacks, ae.crop, args.val_fraction)
    config = _train_config(args, val_fraction)
    bar, callback = progress(args.stop_after or args.steps, f"blur train ({args.variant})", args.time_budget)
    with bar:
        result = train(stacks, levels, config, ae, device=args.device, callback=callback)
    if result.reason == "non-finite loss":
        raise InputError("training diverged (non-finite loss): lower --lr or check the stacks")
    # what it trained on (a bar for a large stack, as deconvolve and train show theirs)
    stacks = [{"path": recorded_path(p), "sha256": hashed(p, f"blur train: hashing {line_text(p)}")}
              for p in args.stacks]
    save_checkpoint(result, args.output, plane_shape=plane_shape, pixel_size=pixel, training_stacks=stacks)
    print(_trained_line(args, result))
    return 0


def _refuse_crop(crop: int, widths, plane_shape) -> None:
    """Refuse a ``--crop`` larger than the planes, or not a multiple of ``2**len(widths)``, naming crops the
    planes hold. (AEConfig's own refusal named the multiples on both sides, whatever the planes: ``--crop 29``
    on 37x29 planes was told "give crop 28 or 32", and ``--crop 32`` was then refused as too large.)"""
    side, divisor = min(plane_shape), 2 ** len(widths)
    if crop > side:
        raise InputError(f"the planes {tuple(plane_shape)} are smaller than --crop {crop}: give a smaller --crop")
    if crop % divisor == 0:
        return
    fits = [c for c in (crop // divisor * divisor, crop // divisor * divisor + divisor) if 0 < c <= side]
    why = (f"--crop {crop} must be a multiple of {divisor} (the autoencoder halves the planes once per width, "
           f"{len(widths)} --widths)")
    if fits:
        raise InputError(f"{why}: give --crop {' or '.join(map(str, fits))}")
    depth = side.bit_length() - 1  # the most halvings the planes allow: 2**depth <= side < divisor
    if depth == 0:
        raise InputError(f"{why}, and the planes {tuple(plane_shape)} need at least 2 pixels a side")
    raise InputError(f"{why}, and the planes {tuple(plane_shape)} hold no such crop: give fewer widths, e.g. "
                     f"--crop {2 ** depth} --widths {' '.join(map(str, widths[:depth]))}")


def _training_stacks(args):
    """``blur train``'s stacks, their pixel size and levels, planes ordered by blur, after refusing options it
    cannot use, stacks with a constant or repeated plane, and then (the input's problems are named first) an
    output it cannot write."""
    from deconv3d.latent.train import plane_problem

    _refuse_latent_options(args)
    if args.stop_after is not None and args.stop_after > args.steps:
        raise InputError(f"--stop-after {args.stop_after} is more than --steps {args.steps}: it stops after K of "
                         "the --steps steps; give at most that many")
    stacks, pixel = _read_stacks(args.stacks)  # (the stacks' problems first, then the output's, as train's)
    problem = plane_problem(stacks)  # in the files' own order and numbering, before sorting and tiling
    if problem is not None:
        i, k, what = problem
        raise InputError(f"{args.stacks[i]} {what} (plane {k}, counting from 0): "
                         + ("it carries no blur to learn; remove it" if what.endswith("constant")
                            else "each plane must be its own focal level; remove the copy"))
    check_output(args.output, args.stacks, suffixes=(".ckpt", ".pt"))
    stacks, levels = _ordered_levels(args, stacks.shape[1], stacks)
    return stacks, pixel, levels


def _ordered_levels(args, n: int, stacks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stacks with planes sorted by level (most blurred first) and the sorted level values."""
    import numpy as np

    if args.levels is None:
        levels = np.arange(n, dtype=np.float64)
        return (stacks[:, ::-1] if args.focus == "first" else stacks), levels
    levels = np.asarray(args.levels, dtype=np.float64)
    if levels.size != n:
        raise InputError(f"--levels needs {n} values, one per plane, got {levels.size}")
    values, counts = np.unique(levels, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"--levels gives {values[counts > 1][0]:g} twice: give each plane its own level")
    focus = int(np.argmax(levels))
    if args.focus is not None and focus != (0 if args.focus == "first" else n - 1):
        warn(f"deconv3d: warning: --focus {args.focus} is ignored where --levels is given, and --levels puts focus "
             f"(its largest level, {levels[focus]:g}) at plane {focus} of 0 to {n - 1}: the planes are ordered by "
             "--levels (larger = nearer focus); give the in-focus plane the largest level")
    order = np.argsort(levels)
    return stacks[:, order], levels[order]


def _trained_line(args, result) -> str:
    """The line ``blur train`` prints once the model is written: steps, why it stopped, precision, the best
    validation score, and how to reproduce a run its time budget stopped."""
    score = "" if result.best_score is None else (f", best validation PSNR {result.best_score:.2f} dB "
                                                  f"at step {result.best_step}")
    rerun = (f"; --steps {args.steps} --stop-after {result.steps_done} reproduces it" if result.reason == "time_budget"
             else "")
    return (f"wrote {line_text(args.output)}: {args.variant} autoencoder, {counted(result.steps_done, 'step')} "
            f"({result.reason}), {result.precision}{score}{rerun}")


def _validation_split(stacks, crop: int, val_fraction: float):
    """``stacks`` and the validation fraction to train with: one stack is tiled (``crop`` wide) so that
    separate tiles of its field of view validate; with fewer than two usable tiles, no validation."""
    import numpy as np

    from deconv3d.latent.data import tile_stacks
    from deconv3d.latent.train import plane_problem

    if stacks.shape[0] == 1 and val_fraction > 0:  # validate on separate tiles of the one field of view
        tiles = tile_stacks(stacks, crop)
        # a tile of empty background has constant planes: it holds no blur to train or validate on
        usable = [t for t in tiles if plane_problem(t[None]) is None]
        stacks = np.stack(usable) if len(usable) > 1 else stacks
        if stacks.shape[0] == 1 and len(tiles) > 1:
            print("note: fewer than two tiles of the stack hold more than background: no held-out validation, "
                  "the last averaged weights are kept")
            val_fraction = 0.0
        elif stacks.shape[0] == 1:
            print("note: one stack too small to split: no held-out validation, the last averaged weights are kept")
            val_fraction = 0.0
    return stacks, val_fraction


def _train_config(args, val_fraction: float):
    """The :class:`~deconv3d.latent.train.LatentTrainConfig` of ``blur train``'s options."""
    from deconv3d.latent.train import LatentTrainConfig

    return LatentTrainConfig(variant=args.variant, dist=args.dist, latent_weight=args.latent_weight,
                             latent_norm=args.latent_norm,
                             steps=args.steps, batch=args.batch, lr=args.lr,
                             val_every=min(100, args.steps), val_fraction=val_fraction,
                             seed=args.seed, time_budget=args.time_budget, stop_after=args.stop_after,
                             residual=args.residual, amp=args.amp)


def _refuse_latent_options(args) -> None:
    """The options of the explicit loss's latent term, given with another variant, are refused as
    --residual is with the baseline: taken silently, they were recorded in the checkpoint as if
    they had shaped a loss that has no latent term."""
    given = getattr(args, "_given_options", ())  # (given at any value: Parser records them)
    latent = [f"--{d.replace('_', '-')}" for d in ("dist", "latent_weight", "latent_norm") if d in given]
    if latent and args.variant != "explicit":
        names = ", ".join(latent[:-1]) + " and " + latent[-1] if len(latent) > 1 else latent[0]
        raise InputError(f"{names} shape{'s' if len(latent) == 1 else ''} the explicit loss's latent term, which the "
                         f"{args.variant} loss lacks: drop {'it' if len(latent) == 1 else 'them'} or use "
                         "--variant explicit")
