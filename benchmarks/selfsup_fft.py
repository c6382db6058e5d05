"""FFT versus spatial convolution inside self-supervised training (issue 3, part 2).

One forward+backward step through the forward model ``PSF ⊛ f`` (both Siamese branches) on a 64^3 patch with a
21^3 Gibson-Lanni PSF, timed three ways in one interleaved run: the cached-OTF FFT
convolver, an FFT convolver that recomputes the kernel FFT once every step (shared by the two
branches), and torch's
``conv3d``. Run as ``python benchmarks/selfsup_fft.py [--batch 4] [--repeats 30]``
or through ``bench_selfsup.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from deconv3d.fft import FFTConvolver
from deconv3d.psf import generate_psf


def make_steps(batch: int, patch: int = 64, psf_size: int = 21):
    psf = generate_psf("gibson-lanni", (psf_size,) * 3, voxel_size=(0.406,) * 3, na=0.8, wavelength=0.6,
                       ni=1.33, ns=1.33)
    target = torch.rand(batch, 1, patch, patch, patch)
    field = torch.rand(batch, 1, patch, patch, patch)
    cached = FFTConvolver(psf)
    kernel = torch.from_numpy(np.ascontiguousarray(psf[::-1, ::-1, ::-1], dtype=np.float32))[None, None]

    def loss_step(make_forward):
        # Both Siamese branches go through the forward model, as in a training step; make_forward() is
        # called once per step (the uncached row computes the kernel FFT once per step, not per branch).
        forward = make_forward()
        f = field.clone().requires_grad_(True)
        loss = ((forward(f) - target) ** 2).mean() + ((forward(f * 0.9) - target) ** 2).mean()
        loss.backward()
        return float(loss.detach())

    return {
        "FFT, cached OTF": lambda: loss_step(lambda: cached.convolve),
        "FFT, kernel FFT recomputed": lambda: loss_step(lambda: FFTConvolver(psf).convolve),
        "torch conv3d": lambda: loss_step(lambda: lambda f: F.conv3d(f, kernel, padding=psf_size // 2)),
    }


def run(batch: int = 4, repeats: int = 30, conv_repeats: int = 3) -> list[str]:
    steps = make_steps(batch)
    times = {name: [] for name in steps}
    for fn in steps.values():
        fn()  # warm up
    for r in range(repeats):
        for name, fn in steps.items():
            if name == "torch conv3d" and r >= conv_repeats:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["FFT, cached OTF"]) * 1e3  # ms, as the rows
    lines = [f"# forward+backward of PSF ⊛ f: batch {batch}, 64^3 patch, 21^3 PSF, "
             f"{torch.get_num_threads()} threads, {os.cpu_count()} cores",
             "| convolution                 | ms / step median | min - max         | vs cached FFT |",
             "|-----------------------------|------------------|-------------------|---------------|"]
    for name, ts in times.items():
        ms = [t * 1e3 for t in ts]
        med = statistics.median(ms)
        lines.append(f"| {name:<27} | {med:16.1f} | {min(ms):7.1f} - {max(ms):<7.1f} | {med / ref:12.2f}x |")
    saved = [t * 1e3 for t in _kernel_fft_times(repeats)]
    lines.append(f"# what the cache saves per step, timed alone: the kernel FFT at the step's FFT shape, "
                 f"{statistics.median(saved):.2f} ms [{min(saved):.2f} - {max(saved):.2f}]")
    return lines


def _kernel_fft_times(repeats: int, patch: int = 64, psf_size: int = 21) -> list[float]:
    """Seconds to build a convolver and its OTF for one 64^3 patch (the recomputed row's extra work)."""
    psf = generate_psf("gibson-lanni", (psf_size,) * 3, voxel_size=(0.406,) * 3, na=0.8, wavelength=0.6,
                       ni=1.33, ns=1.33)
    field = torch.rand(1, 1, patch, patch, patch)
    shape = FFTConvolver(psf).same_fft_shape(field.shape[-3:])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        FFTConvolver(psf).otf(shape)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("\n".join(run(args.batch, args.repeats)))


if __name__ == "__main__":
    main()
