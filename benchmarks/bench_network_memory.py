"""The self-supervised network's memory count (deconv3d.pipeline.memory.MemoryModel, method "ssl")
against the measured peak of its tiled inference.

Each case runs ``deconv3d.selfsup.predict.predict_tiled`` once on a random image with an untrained
ResUNet (the activations do not depend on the weights) in a fresh process, and prints the growth
of the process's peak resident memory (``ru_maxrss`` after the call less the resident memory
before it) beside ``MemoryModel("ssl", ...).block_bytes`` for the same image (SAFETY included,
RESIDENT_ALLOWANCE not). A ratio above 1 means the model undercounts: a ``--memory-limit`` run of
the chunked network could then exceed its limit.

Run ``python benchmarks/bench_network_memory.py`` (about a minute on 2 cores), or ``--quick``
for a smoke test on tiny images (no measurement).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASES = [(512, 512), (1024, 1024), (1536, 1536), (16, 128, 128)]
QUICK = [(64, 64), (8, 32, 32)]


def measure(shape, base_channels: int, depth: int, context: int) -> str:
    """One case in this process: ``shape measured_MB model_MB``."""
    import resource

    import numpy as np
    import torch

    from deconv3d.pipeline.memory import MemoryModel, current_rss
    from deconv3d.selfsup.config import UNetConfig
    from deconv3d.selfsup.predict import predict_tiled
    from deconv3d.selfsup.unet import ResUNet

    torch.set_num_threads(2)
    config = UNetConfig(ndim=len(shape), base_channels=base_channels, depth=depth)
    model = ResUNet(config).eval()
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    before = current_rss()
    predict_tiled(model, image, mean=0.5, std=0.3, divisor=config.divisor, context=context, device="cpu")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = sum(p.numel() * 4 for p in model.parameters())
    counted = MemoryModel("ssl", (5,) * len(shape), base_channels=base_channels, weights_bytes=weights,
                          context=context).block_bytes(shape)
    return f"{peak - before} {counted}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--context", type=int, default=56, help="the default 3D network's receptive radius")
    parser.add_argument("--quick", action="store_true", help="tiny images: a smoke test, not a measurement")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args(argv)
    if args.case:
        print(measure(tuple(int(n) for n in args.case.split("x")), args.base_channels, args.depth, args.context))
        return
    print(f"# bench_network_memory: base {args.base_channels} channels, depth {args.depth}, context "
          f"{args.context}, {os.cpu_count()} cores; peak RSS growth of predict_tiled against the model")
    print("| image | measured MB | model MB | measured / model |")
    print("|---|---|---|---|")
    for shape in QUICK if args.quick else CASES:
        case = "x".join(str(n) for n in shape)
        out = subprocess.run([sys.executable, __file__, "--case", case, "--base-channels", str(args.base_channels),
                              "--depth", str(args.depth), "--context", str(args.context)],
                             capture_output=True, text=True, check=True).stdout.split()
        measured, counted = int(out[-2]), int(out[-1])
        print(f"| {case} | {measured / 1e6:.0f} | {counted / 1e6:.0f} | {measured / counted:.2f} |")


if __name__ == "__main__":
    main()
