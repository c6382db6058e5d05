"""The built-in demo: synthesise, blur, add noise, deconvolve, measure and draw.

Everything is generated here (nothing is downloaded), seeded, and sized to finish in
well under two minutes on two CPU cores. ``run_demo`` returns the table rows; the
command line prints them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DEMO_SHAPE = (40, 128, 128)
DEMO_VOXEL = (0.25, 0.1, 0.1)  # µm, (z, y, x)
DEMO_PSF_SHAPE = (39, 41, 41)
DEMO_OPTICS = {"na": 1.2, "wavelength": 0.53, "ni": 1.33, "ns": 1.33}
DEMO_ITERATIONS = 30
DEMO_SSL_SECONDS = 45.0  # training budget of the self-supervised network in the demo
LABELS = {"truth": "ground truth", "input": "widefield input (noisy)"}


def demo_data(seed: int = 0):
    """Ground truth, PSF and noisy widefield image of the demo (float32 arrays)."""
    from deconv3d.psf import generate_psf
    from deconv3d.synthetic import add_noise, blur, phantom

    truth = phantom(DEMO_SHAPE, seed=seed)
    psf = generate_psf("gibson-lanni", DEMO_PSF_SHAPE, DEMO_VOXEL, **DEMO_OPTICS)
    image = add_noise(blur(truth, psf), photons=300, read_noise=2.0, seed=seed)
    return truth, psf, image


def demo_methods(image, psf, device="auto", iterations: int = DEMO_ITERATIONS):
    """Run each classical method; yields ``(name, result, seconds)``."""
    from deconv3d.classical import richardson_lucy, wiener

    runs = {
        "wiener": lambda: wiener(image, psf, 1e-2, device=device),
        "rl": lambda: richardson_lucy(image, psf, iterations, accelerate=True, voxel_size=DEMO_VOXEL, device=device),
        "rl-tv": lambda: richardson_lucy(
            image, psf, iterations, tv_weight=0.002, accelerate=True, voxel_size=DEMO_VOXEL, device=device
        ),
    }
    runs["ssl"] = lambda: _demo_ssl(image, psf, device)
    for name, run in runs.items():
        start = time.perf_counter()
        result = run()
        yield name, result, time.perf_counter() - start


def _demo_ssl(image, psf, device):
    """The self-supervised network, sized for the demo's time budget (a small, short training)."""
    from deconv3d.selfsup import TrainConfig, UNetConfig, deconvolve

    config = TrainConfig(steps=400, patch=24, batch=1, lr=1e-3, decay_steps=200, time_budget=DEMO_SSL_SECONDS)
    return deconvolve(image, psf, config=config, unet=UNetConfig(ndim=3, base_channels=8, depth=3), device=device)


def run_demo(output: Path, device="auto", seed: int = 0) -> list[dict]:
    """Write the demo stacks (TIFF) and ``demo.png`` to ``output``; return one row per method."""
    from deconv3d.io import write_tiff
    from deconv3d.metrics import psnr_rescaled, ssim_rescaled

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    truth, psf, image = demo_data(seed)
    stacks = {"truth": truth, "input": image}
    rows = [_row("input", truth, image, 0.0, psnr_rescaled, ssim_rescaled)]
    for name, result, seconds in demo_methods(image, psf, device):
        stacks[name] = result
        rows.append(_row(name, truth, result, seconds, psnr_rescaled, ssim_rescaled))
    write_tiff(output / "psf.tif", psf, voxel_size=DEMO_VOXEL)
    for name, stack in stacks.items():
        write_tiff(output / f"{name}.tif", stack, voxel_size=DEMO_VOXEL)
    draw_projections(stacks, output / "demo.png", DEMO_VOXEL)
    return rows


def _row(name, truth, result, seconds, psnr_fn, ssim_fn) -> dict:
    return {"method": name, "psnr": psnr_fn(truth, result), "ssim": ssim_fn(truth, result), "seconds": seconds}


def draw_projections(stacks: dict, path: Path, voxel_size) -> None:
    """One row per stack: max projections along z (xy view) and along y (xz view, true aspect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aspect = voxel_size[0] / voxel_size[2]
    fig, axes = plt.subplots(len(stacks), 2, figsize=(7, 2.6 * len(stacks)),
                             gridspec_kw={"width_ratios": [1, 1]}, squeeze=False)
    for (name, stack), (ax_xy, ax_xz) in zip(stacks.items(), axes):
        stack = np.asarray(stack)
        top = float(np.percentile(stack.max(axis=0), 99.8)) or 1.0
        ax_xy.imshow(stack.max(axis=0), cmap="magma", vmin=0, vmax=top)
        ax_xz.imshow(stack.max(axis=1), cmap="magma", vmin=0, vmax=top, aspect=aspect)
        ax_xy.set_ylabel(LABELS.get(name, name))
        for ax in (ax_xy, ax_xz):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("max projection, xy")
    axes[0][1].set_title("max projection, xz")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
