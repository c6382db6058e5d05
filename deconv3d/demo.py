"""The built-in demo: synthesise, blur, add noise, deconvolve, measure and draw.

Everything is generated here (nothing is downloaded), seeded, and sized to finish in about 80 s
on two idle CPU cores (65 s of it the two trainings' budgets; the set-up and classical runs
around them take longer on a loaded machine, where 140-195 s were seen). ``run_demo`` returns
the table rows; the command line prints them. The two trainings (the ssl network's and the
blur-synth autoencoder's) stop on wall-clock budgets, so those two rows depend on how many steps
(and, for ssl, iterations of the search for its RL reference's count) fit the budget at the
machine's current load, and a rerun can give others (31.25 against 31.65 dB for ssl, 28.83
against 30.24 for blur-synth on a loaded 2-core machine); their notes give the counts. The other
rows' scores repeat.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

DEMO_SHAPE = (40, 128, 128)
DEMO_VOXEL = (0.25, 0.1, 0.1)  # µm, (z, y, x)
DEMO_PSF_SHAPE = (39, 41, 41)
DEMO_OPTICS = {"na": 1.2, "wavelength": 0.53, "ni": 1.33, "ns": 1.33}
DEMO_ITERATIONS = 30
DEMO_SSL_SECONDS = 45.0  # training budget of the self-supervised network in the demo
DEMO_BLUR_SECONDS = 20.0  # training budget of the linear-latent blur autoencoder
DEMO_BLUR_SHAPE = (64, 64)  # plane size of the synthetic focal stacks
DEMO_BLUR_LEVELS = (0, 4, 8, 12, 16)  # focal levels (16 in focus), a subset of the paper's
LABELS = {"truth": "ground truth", "input": "widefield input (noisy)"}


def demo_data(seed: int = 0):
    """Ground truth, PSF and noisy widefield image of the demo (float32 arrays)."""
    from deconv3d.psf import generate_psf
    from deconv3d.synthetic import add_noise, blur, phantom

    truth = phantom(DEMO_SHAPE, seed=seed, voxel_size=DEMO_VOXEL)  # round nuclei, not 2x taller than wide
    psf = generate_psf("gibson-lanni", DEMO_PSF_SHAPE, DEMO_VOXEL, **DEMO_OPTICS)
    image = add_noise(blur(truth, psf), photons=300, read_noise=2.0, seed=seed)
    return truth, psf, image


def demo_methods(image, psf, device="auto", iterations: int = DEMO_ITERATIONS, announce=None):
    """Run each method (the classical ones, then the network); yields ``(name, result, seconds)``.

    ``announce(stage)`` is called before each method starts."""
    from deconv3d.classical import richardson_lucy, wiener

    runs = {
        "wiener": lambda: wiener(image, psf, 1e-2, device=device),
        "rl": lambda: richardson_lucy(image, psf, iterations, accelerate=True, voxel_size=DEMO_VOXEL, device=device),
        "rl-tv": lambda: richardson_lucy(
            image, psf, iterations, tv_weight=0.002, accelerate=True, voxel_size=DEMO_VOXEL, device=device
        ),
    }
    runs["ssl"] = lambda: _demo_ssl(image, psf, device)
    stages = {"wiener": "wiener", "rl": f"rl, {iterations} iterations", "rl-tv": f"rl-tv, {iterations} iterations",
              "ssl": f"ssl: training the self-supervised network ({DEMO_SSL_SECONDS:.0f} s)"}
    for name, run in runs.items():
        if announce is not None:
            announce(stages[name])
        start = time.perf_counter()
        result = run()
        yield name, result, time.perf_counter() - start


_SSL_STEPS: list = []  # the last demo network's steps, RL count, and whether the budget cut each (the table's note)


def _demo_ssl(image, psf, device):
    """The self-supervised network, sized for the demo's time budget (a small, short training).

    On two CPU cores the budget buys a few tens of steps, well short of the hundreds the
    network needs (``benchmarks/bench_selfsup.py``); in the default residual form the network
    corrects RL at the held-out count, so this row is close to that RL plus a barely trained
    correction. The table's note says how many steps it got, and at which count the budget ended the
    search for RL's iteration count (both vary with the machine's load). The warning that the budget ended the
    search for RL's count is not shown: its advice, a larger ``--time-budget``, is no option of ``demo``.
    """
    import warnings

    from deconv3d.selfsup import TrainConfig, UNetConfig, apply_model, train

    # warm_tv=0: one held-out RL calibration instead of four (the budget counts it, and this PSF is large)
    config = TrainConfig(steps=400, patch=24, batch=1, lr=1e-3, decay_steps=200, time_budget=DEMO_SSL_SECONDS,
                         warm_tv=0.0)
    cut = "the time budget ended the search"
    with warnings.catch_warnings(record=True) as shown:  # (the caller's filters still decide what is shown)
        warnings.filterwarnings("always", message=cut, category=RuntimeWarning)
        result = train(image, psf, config=config, unet=UNetConfig(ndim=3, base_channels=8, depth=3), device=device)
    for w in shown:  # all but the search's cut, shown as they would have been
        if not str(w.message).startswith(cut):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    _SSL_STEPS[:] = [result.steps_done, result.reference.iterations, result.reason == "time_budget",
                     any(str(w.message).startswith(cut) for w in shown)]
    return apply_model(result, image, device=device)


def demo_blur(device="auto", seed: int = 0) -> dict:
    """Blur synthesis with a linear-latent autoencoder (Mazilu et al., CAIP 2023).

    Trains the explicit variant briefly on synthetic focal stacks, in the default residual
    form, then synthesises the intermediate levels of a held-out stack from its most blurred
    and its sharp plane in that form (a decoded correction on top of pixel blending, see
    :func:`deconv3d.latent.ops.synthesize_blur`).
    Returns the real levels, the synthesised ones (end planes are the real ones), and
    the mean PSNR of the intermediate levels for the network and for pixel blending.
    """
    from deconv3d.latent.data import synthetic_focal_stacks
    from deconv3d.latent.model import AEConfig
    from deconv3d.latent.ops import blend_pixels, synthesize_blur
    from deconv3d.latent.train import LatentTrainConfig, train
    from deconv3d.metrics import psnr

    levels = np.asarray(DEMO_BLUR_LEVELS, dtype=float)
    stacks, _ = synthetic_focal_stacks(8, DEMO_BLUR_SHAPE, levels, seed=seed)
    held_out, _ = synthetic_focal_stacks(1, DEMO_BLUR_SHAPE, levels, seed=seed + 1000)
    config = LatentTrainConfig(steps=400, batch=8, val_every=50, seed=seed, time_budget=DEMO_BLUR_SECONDS)
    ae = AEConfig(widths=(16, 32, 64), crop=min(DEMO_BLUR_SHAPE) // 8 * 8)
    result = train(stacks, levels, config, ae, device=device)
    real = held_out[0]
    fractions = (levels[1:-1] - levels[0]) / (levels[-1] - levels[0])
    inner = synthesize_blur(result.model, real[0], real[-1], fractions, residual=config.residual)
    blended = blend_pixels(real[0], real[-1], fractions)

    def score(planes):
        return float(np.mean([psnr(r, p, data_range=1.0) for r, p in zip(real[1:-1], planes)]))

    synth = np.concatenate([real[:1], inner, real[-1:]]).astype(np.float32)
    return {"levels": levels, "real": real, "synth": synth, "psnr": score(inner), "psnr_blend": score(blended),
            "steps": result.steps_done, "budget_ended": result.reason == "time_budget"}


def run_demo(output: Path, device="auto", seed: int = 0, progress=None) -> list[dict]:
    """Write the demo stacks (TIFF) and ``demo.png`` to ``output``; return one row per method.

    The last row is the blur synthesis of :func:`demo_blur` (PSNR of the synthesised
    levels against the real ones, SSIM not applicable); its strip is in the figure.
    ``progress(stage)`` is called as each stage starts (the command line prints it).
    """
    say = progress or (lambda stage: None)
    from deconv3d._tensors import resolve_device
    from deconv3d.metrics import psnr_rescaled, ssim_rescaled

    output = Path(output)
    resolve_device(device)  # before minutes of work: a missing GPU is a one-line error now
    _check_folder(output)
    say("synthesising the phantom and its widefield image")
    truth, psf, image = demo_data(seed)
    stacks = {"truth": truth, "input": image}
    rows = [_row("input", truth, image, 0.0, psnr_rescaled, ssim_rescaled)]
    methods = demo_methods(image, psf, device, announce=say)
    for name, result, seconds in methods:
        stacks[name] = result
        rows.append(_row(name, truth, result, seconds, psnr_rescaled, ssim_rescaled))
    _note_ssl_budget(rows)
    say(f"blur synthesis: training a linear-latent autoencoder ({DEMO_BLUR_SECONDS:.0f} s)")
    blur = _blur_row(device, seed, rows)
    say("writing the stacks and the figure")
    _write_demo(output, psf, stacks, blur)
    return rows


def _note_ssl_budget(rows: list[dict]) -> None:
    """Note on the ssl row of ``rows`` how many steps the last demo network trained, at which RL count, and
    whether its budget cut them (nothing where no demo network trained)."""
    if _SSL_STEPS:
        steps, iterations, steps_cut, search_cut = _SSL_STEPS
        cut = " and ".join(what for what, was_cut in (("steps", steps_cut), ("RL count", search_cut)) if was_cut)
        next(r for r in rows if r["method"] == "ssl")["note"] = (
            f"{steps} training steps in {DEMO_SSL_SECONDS:.0f} s on RL at {iterations} iterations"
            + (f", {cut} limited by the budget at this machine's load (a rerun can differ)" if cut else "")
            + ": far too few steps on a CPU; train for minutes with 'deconv3d train'")


def _blur_row(device, seed: int, rows: list[dict]) -> dict:
    """Run :func:`demo_blur`, append its row (timed, with a note on its training) to ``rows``, and return it."""
    start = time.perf_counter()
    blur = demo_blur(device, seed)
    rows.append({"method": "blur-synth", "psnr": blur["psnr"], "ssim": float("nan"),
                 "seconds": time.perf_counter() - start,
                 "note": (f"{blur['steps']} training steps in {DEMO_BLUR_SECONDS:.0f} s, as many as fit at this "
                          "machine's load (a rerun can differ)" if blur["budget_ended"] else
                          f"all {blur['steps']} training steps within {DEMO_BLUR_SECONDS:.0f} s")
                 + f"; latent interpolation (residual); pixel blending {blur['psnr_blend']:.2f} dB"})
    return blur


def _write_demo(output: Path, psf, stacks: dict, blur: dict) -> None:
    """Write the PSF, the ``stacks``, the blur strip's planes and the figure into ``output``, all or none
    (:func:`_staged`)."""
    from deconv3d._tiff_hyperstack import write_hyperstack
    from deconv3d.io import write_tiff

    with _staged(output) as folder:
        (folder / MARKER).write_text("written by 'deconv3d demo': a later demo replaces its files here\n")
        write_tiff(folder / "psf.tif", psf, voxel_size=DEMO_VOXEL)
        for name, stack in stacks.items():
            write_tiff(folder / f"{name}.tif", stack, voxel_size=DEMO_VOXEL)
        # synthetic planes: the demo's pixel size only. The real levels are a focal stack, as 'blur train' takes
        # them; the synthesised ones are frames, as 'blur synth' writes them (deconv3d.cli.blur_synth_deblur.FIRST_AXIS)
        write_tiff(folder / "blur_real.tif", blur["real"], voxel_size=DEMO_VOXEL[1:])
        write_hyperstack(folder / "blur_synth.tif", blur["synth"], "TYX", voxel_size=DEMO_VOXEL[1:])
        draw_projections(stacks, folder / "demo.png", DEMO_VOXEL, strip=blur)


#: The file a demo leaves in its folder: a later demo replaces the files of a folder holding it.
MARKER = ".deconv3d-demo"
#: What a demo writes: the stacks (truth, input and each method's), the PSF, the blur strip's
#: planes and the figure.
DEMO_FILES = tuple(f"{name}.tif" for name in ("truth", "input", "wiener", "rl", "rl-tv", "ssl", "psf", "blur_real",
                                              "blur_synth")) + ("demo.png",)


def _check_folder(output: Path) -> None:
    """Refuse, before any work, an output that is a file, that cannot be created or written (tried:
    ``os.access`` says yes to root where a file system says no), or a folder holding files named
    like the demo's that no demo wrote (they were replaced, a user's own ``psf.tif`` among them)."""
    from deconv3d._paths import existing_ancestor, refuse_unnamable, temporary_name
    from deconv3d.errors import InputError

    refuse_unnamable(output, folder=True)  # (first: looking at a name past the limit raised, exit 1)
    if output.exists() and not output.is_dir():
        raise InputError(f"demo output {output} is a file: give a folder (it is created if missing)")
    folder = existing_ancestor(output.resolve())  # the output itself, or where it will be created
    if not folder.is_dir():
        raise InputError(f"cannot create the demo output {output}: {folder} is a file: choose another folder")
    if output.is_dir() and not (output / MARKER).exists():
        taken = sorted(name for name in DEMO_FILES if (output / name).exists())
        if taken:
            raise InputError(f"demo output {output} holds {', '.join(taken)}, which no demo wrote there and the "
                             "demo would replace: choose another folder (an earlier version's demo folder: delete "
                             "it first)")
    probe = temporary_name(folder / "deconv3d-demo")
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise InputError(f"cannot write the demo output {output} in {folder} ({exc.strerror or exc}): choose "
                         "another folder") from None


@contextlib.contextmanager
def _staged(output: Path):
    """A hidden folder to write the files into, on the output's file system: inside ``output`` when
    it exists (links resolved), else in the nearest existing folder above it. On success ``output``
    is created if missing and the files are moved into it, replacing those of an earlier demo
    (other files there are left alone). On any failure, Ctrl-C included, nothing is created; what a
    killed demo left there (named after its machine and process) is removed by the next one."""
    import os
    import shutil

    from deconv3d._paths import existing_ancestor, keep_mode, temporary_name
    from deconv3d.pipeline.output import remove_stale_temporaries

    output = output.resolve()
    name = existing_ancestor(output) / "deconv3d-demo"  # staged as .deconv3d-demo.<host>@<pid>-<id>.tmp
    remove_stale_temporaries(name)
    staging = temporary_name(name)
    staging.mkdir()
    try:
        yield staging
        output.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            keep_mode(output / item.name, item)
            os.replace(item, output / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _row(name, truth, result, seconds, psnr_fn, ssim_fn) -> dict:
    return {"method": name, "psnr": psnr_fn(truth, result), "ssim": ssim_fn(truth, result), "seconds": seconds}


def draw_projections(stacks: dict, path: Path, voxel_size, strip: dict | None = None) -> None:
    """One row per stack: max projections along z (xy view) and along y (xz view, true aspect).

    ``strip`` (from :func:`demo_blur`) adds the blur-synthesis strip below: the real
    focal levels above, the synthesised ones below.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aspect = voxel_size[0] / voxel_size[2]
    n_strip = len(strip["levels"]) if strip else 0
    fig = plt.figure(figsize=(max(7, 1.5 * n_strip), 2.6 * len(stacks) + (3.4 if strip else 0)), layout="constrained")
    top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[2.6 * len(stacks), 3.4]) if strip else (fig, None)
    axes = top_fig.subplots(len(stacks), 2, squeeze=False)
    for (name, stack), (ax_xy, ax_xz) in zip(stacks.items(), axes):
        stack = np.asarray(stack)
        # Display range from the projection itself: a result with an offset still shows its structure.
        low, top = (float(v) for v in np.percentile(stack.max(axis=0), [0.2, 99.8]))
        top = top if top > low else low + 1.0
        ax_xy.imshow(stack.max(axis=0), cmap="magma", vmin=low, vmax=top)
        ax_xz.imshow(stack.max(axis=1), cmap="magma", vmin=low, vmax=top, aspect=aspect)
        ax_xy.set_ylabel(LABELS.get(name, name))
        for ax in (ax_xy, ax_xz):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("max projection, xy")
    axes[0][1].set_title("max projection, xz")
    if strip:
        _draw_strip(bottom_fig, strip)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_strip(fig, strip: dict) -> None:
    axes = fig.subplots(2, len(strip["levels"]), squeeze=False)
    for col, level in enumerate(strip["levels"]):
        for row, planes in enumerate((strip["real"], strip["synth"])):
            ax = axes[row][col]
            ax.imshow(planes[col], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(f"level {level:g}")
    axes[0][0].set_ylabel("real")
    axes[1][0].set_ylabel("synthesised")
    fig.suptitle(f"blur synthesis from the end planes: {strip['psnr']:.1f} dB "
                 f"(pixel blending {strip['psnr_blend']:.1f} dB)")
