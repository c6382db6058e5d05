"""The self-supervised network's memory count (deconv3d.pipeline.memory_model.MemoryModel, method "ssl")
against the measured peak of its tiled inference.

Each case runs ``deconv3d.selfsup.predict.predict_tiled`` once on a random image with an untrained
ResUNet (the activations do not depend on the weights) in a fresh process, ``--runs`` times (the
peak swings by about 20 % from one process to the next). Per case it prints the median and range
of the growth of the process's peak resident memory (``ru_maxrss`` after the call less the
resident memory before it) beside ``MemoryModel("ssl", ...).block_bytes`` for the same image
(SAFETY included, RESIDENT_ALLOWANCE not), and the largest ratio measured / counted. A ratio
above 1 means the model undercounts: a ``--memory-limit`` run of the chunked network could then
exceed its limit, so the largest ratio is the figure that matters.

Run ``python benchmarks/bench_network_memory.py`` (about five minutes on 2 cores; ``--runs 1``
about one), ``--shapes 512x512`` for chosen images, or ``--quick``
for a smoke test on tiny images, one process per case (no measurement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CASES = [(512, 512), (1024, 1024), (1536, 1536), (16, 128, 128)]
QUICK = [(64, 64), (8, 32, 32)]


def measure(shape, base_channels: int, depth: int, context: int) -> str:
    """One case in this process: ``shape measured_MB model_MB``."""
    import resource

    import numpy as np
    import torch

    from deconv3d.pipeline.memory_model import MemoryModel
    from deconv3d.pipeline.system_memory import current_rss
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


def run_case(shape, args) -> tuple[int, int]:
    """One case in a fresh process: (measured growth of the peak, counted) in bytes."""
    case = "x".join(str(n) for n in shape)
    out = subprocess.run([sys.executable, __file__, "--case", case, "--base-channels", str(args.base_channels),
                          "--depth", str(args.depth), "--context", str(args.context)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-2]), int(out[-1])


def case_row(shape, args) -> float:
    """Run one case in ``args.runs`` fresh processes, print its row; returns the largest measured / counted."""
    runs = [run_case(shape, args) for _ in range(args.runs)]
    measured, counted = [m for m, _ in runs], runs[0][1]
    ratios = [m / counted for m in measured]
    print(f"| {'x'.join(map(str, shape))} | {statistics.median(measured) / 1e6:.0f} ({min(measured) / 1e6:.0f}-"
          f"{max(measured) / 1e6:.0f}) | {counted / 1e6:.0f} | {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f}) | {max(ratios):.2f} |", flush=True)
    return max(ratios)


def main(argv=None) -> None:
    from deconv3d.cli.arguments import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--context", type=int, default=56, help="the default 3D network's receptive radius")
    parser.add_argument("--shapes", help="images to measure, e.g. 512x512,16x128x128 (default: "
                        + ",".join("x".join(map(str, s)) for s in CASES) + ")")
    parser.add_argument("--runs", type=positive_int,
                        help="fresh processes per case (default 5, 1 with --quick): the peak varies from run to run")
    parser.add_argument("--quick", action="store_true", help="tiny images: a smoke test, not a measurement")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.case:
        print(measure(tuple(int(n) for n in args.case.split("x")), args.base_channels, args.depth, args.context))
        return
    shapes = QUICK if args.quick else [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")] \
        if args.shapes else CASES
    print(f"# bench_network_memory: base {args.base_channels} channels, depth {args.depth}, context "
          f"{args.context}, {os.cpu_count()} cores, {args.runs} fresh process(es) per case; peak RSS growth of "
          f"predict_tiled against the model: median (min-max)")
    print("| image | measured MB | model MB | measured / model | max measured / model |")
    print("|---|---|---|---|---|")
    worst = max(case_row(shape, args) for shape in shapes)
    print(f"# largest measured / model over all runs: {worst:.2f} (above 1: the model undercounts)")


if __name__ == "__main__":
    main()
