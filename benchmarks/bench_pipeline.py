"""Out-of-core pipeline (issue 5): peak memory under --memory-limit, chunked throughput, seam quality.

Three measurements, printed as one markdown table with the machine's core count:

(a) Peak resident memory, as the OS counts it (the child's ``VmHWM`` from ``/proc``, which it
    prints at exit; ``ru_maxrss`` from ``os.wait4`` where there is no ``/proc``), of
    ``deconv3d deconvolve IN.zarr -o OUT.zarr --method rl --iterations 20 --memory-limit 1GB``
    run in a fresh process on a float32 OME-Zarr volume of 1 GiB, and on a volume 4x larger.
    Targets: each peak within the limit; the larger volume's peak at most 10 % above the
    smaller's. The inputs are synthetic (seeded), written slab by slab with zarr (never held in
    memory whole) into ``--workdir`` and deleted at the end.
(b) Throughput of chunked execution (``deconv3d.pipeline.run_chunked`` into a zarr store, blocks
    of ``--chunks`` plus the RL halo) relative to one whole-volume ``richardson_lucy`` call, on a
    volume that fits in memory; after one untimed run of each, the two alternate, ``--repeats`` times
    each; median and min-max.
    Target: ratio (whole time / chunked time) >= 0.7.
(c) Seam quality: PSNR of the chunked output of (b) against the whole-volume output; >= 50 dB.

Run ``python benchmarks/bench_pipeline.py`` (the full run takes long: (a) deconvolves 5 GiB with
20 RL iterations), ``--skip-large`` to leave out the 4x volume, ``--sizes 0.25 1`` to measure (a)
at chosen sizes (add ``--skip-throughput`` for (a) alone), ``--quick`` for a tiny smoke test (no
measurement). Plain RL (no Biggs-Andrews) in (b) unless ``--accelerate``; (a) runs the CLI's
defaults (accelerated), as a user would.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOXEL = (0.3, 0.1, 0.1)
# The child reports its own high-water mark (VmHWM of its address space) at exit: ru_maxrss from
# wait4 is no good here, as Linux carries the parent's high-water mark over into a child that
# subprocess starts with vfork + exec (it read 627 MB for a run whose own peak was 532 MB).
CLI = ("import atexit, sys\n"
       "def _peak():\n"
       "    try:\n"
       "        for line in open('/proc/self/status'):\n"
       "            if line.startswith('VmHWM:'):\n"
       "                sys.stdout.write(f'\\nVMHWM {int(line.split()[1]) * 1024}\\n'); sys.stdout.flush()\n"
       "    except OSError:\n"
       "        pass\n"
       "atexit.register(_peak)\n"
       "from deconv3d.cli import main; sys.exit(main())")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test")
    p.add_argument("--skip-large", action="store_true", help="(a) without the 4x volume")
    p.add_argument("--skip-memory", action="store_true", help="leave out (a)")
    p.add_argument("--skip-throughput", action="store_true", help="leave out (b) and (c)")
    p.add_argument("--volume-gib", type=float, default=1.0, help="(a) size of the smaller volume (default 1)")
    p.add_argument("--scale", type=int, default=4, help="(a) the larger volume is this many times bigger")
    p.add_argument("--sizes", type=float, nargs="+", metavar="GIB",
                   help="(a) volume sizes in GiB to measure instead of --volume-gib and --scale times it; "
                        "the growth is that of the last against the first")
    p.add_argument("--memory-limit", default="1GB", help="(a) the --memory-limit given to the CLI")
    p.add_argument("--plane", type=int, default=1024, help="(a) y and x size of the volumes (z follows the size)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--psf-size", type=int, default=17, help="PSF side in voxels (a Gaussian widefield model)")
    p.add_argument("--shape", type=int, nargs=3, default=(128, 512, 512), help="(b) volume shape")
    p.add_argument("--chunks", type=int, nargs=3, default=(64, 256, 256), help="(b) core block shape")
    p.add_argument("--repeats", type=int, default=3, help="(b) timed runs of each execution")
    p.add_argument("--workers", type=int, default=1, help="(b) blocks run at once (threads)")
    p.add_argument("--accelerate", action="store_true", help="(b) Biggs-Andrews RL (chunked adds its schedule probe)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the temporary volumes go (a fresh folder inside it, deleted at the end)")
    args = p.parse_args(argv)
    if args.quick:
        args.volume_gib, args.plane, args.memory_limit, args.iterations = 1 / 128, 256, "600MB", 5
        args.shape, args.chunks, args.repeats, args.psf_size = (32, 96, 96), (16, 48, 48), 1, 9
    return args


def make_psf(size: int) -> np.ndarray:
    from deconv3d.psf import generate_psf

    return generate_psf("gaussian", (size,) * 3, VOXEL, na=1.2, wavelength=0.52)


def write_volume(path: Path, shape, psf, seed: int = 0, slab: int = 16) -> None:
    """A seeded synthetic widefield volume as OME-Zarr, generated and written ``slab`` z-planes at a time.

    Random beads on a background, blurred by the PSF's in-plane profile (per slab: the data only
    has to look like an acquisition, not be one), with Poisson noise.
    """
    from scipy.ndimage import convolve1d

    from deconv3d.omezarr import create_ome_zarr

    arr = create_ome_zarr(path, shape, (slab, min(shape[1], 256), min(shape[2], 256)), axes="ZYX",
                          voxel_size=VOXEL, name="synthetic")
    profile_y = psf.sum(axis=(0, 2))
    profile_x = psf.sum(axis=(0, 1))
    for z0 in range(0, shape[0], slab):
        rng = np.random.default_rng([seed, z0])
        block = np.full((min(slab, shape[0] - z0),) + tuple(shape[1:]), 5.0, np.float32)
        n = max(1, block.size // 2000)
        block[tuple(rng.integers(0, s, n) for s in block.shape)] += rng.uniform(200, 2000, n).astype(np.float32)
        block = convolve1d(convolve1d(block, profile_y, axis=1), profile_x, axis=2)
        arr[z0:z0 + block.shape[0]] = rng.poisson(np.clip(block, 0, None)).astype(np.float32)


def run_cli(argv, threads: int | None = None):
    """Run the ``deconv3d`` CLI in a fresh process: (exit code, seconds, peak RSS bytes, output, ru_maxrss)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CLI, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    own = re.search(r"VMHWM (\d+)", output)
    return proc.returncode, seconds, int(own.group(1)) if own else peak, output, peak


def memory_case(args, workdir: Path, psf_path: Path, psf, gib: float, label: str) -> dict:
    plane = args.plane
    nz = max(8, round(gib * 2**30 / (4 * plane * plane)))
    shape = (nz, plane, plane)
    src, out = workdir / f"in_{label}.zarr", workdir / f"out_{label}.zarr"
    t0 = time.perf_counter()
    write_volume(src, shape, psf)
    print(f"  (a) {label}: wrote {shape} ({format_gib(shape)}) in {time.perf_counter() - t0:.0f} s; deconvolving",
          flush=True)
    code, seconds, peak, output, maxrss = run_cli(["deconvolve", src, "-o", out, "--psf", psf_path, "--method", "rl",
                                           "--iterations", args.iterations, "--memory-limit", args.memory_limit,
                                           "--device", "cpu"])
    if code != 0:
        raise SystemExit(f"deconv3d deconvolve failed ({code}):\n{output}")
    for p in (src, out):
        shutil.rmtree(p, ignore_errors=True)
    return {"label": label, "shape": shape, "peak": peak, "seconds": seconds, "maxrss": maxrss,
            "plan": block_plan(output)}


def block_plan(output: str) -> str:
    """The block plan from the CLI's last line, ``wrote OUT: rl in N block(s) of [at most] (..) + halo (..)``
    (``at most`` since the CLI reports the largest block); ``?`` where the line is missing."""
    plan = re.search(r"in (\d+) block\(s\) of ((?:at most )?\(.*?\)) \+ halo (\(.*?\))", output)
    return f"{plan.group(1)} blocks of {plan.group(2)} + halo {plan.group(3)}" if plan else "?"


def format_gib(shape) -> str:
    return f"{4 * math.prod(shape) / 2**30:.3g} GiB"


def part_memory(args, workdir: Path) -> list[dict]:
    from deconv3d.io import write_tiff

    psf = make_psf(args.psf_size)
    psf_path = workdir / "psf.tif"
    write_tiff(psf_path, psf, voxel_size=VOXEL)
    sizes = list(args.sizes) if args.sizes else [args.volume_gib] + ([] if args.skip_large else
                                                                      [args.volume_gib * args.scale])
    return [memory_case(args, workdir, psf_path, psf, gib, f"{gib:g}GiB") for gib in sizes]


def part_throughput(args, workdir: Path) -> dict:
    import torch

    from deconv3d.classical import richardson_lucy
    from deconv3d.metrics import psnr
    from deconv3d.omezarr import read_ome_zarr
    from deconv3d.pipeline import RichardsonLucyBlock, run_chunked
    from deconv3d.synthetic import degrade, phantom

    psf = make_psf(args.psf_size)
    image = degrade(phantom(tuple(args.shape), seed=1, voxel_size=VOXEL), psf, photons=300, seed=1).astype(np.float32)
    fn = RichardsonLucyBlock(psf, args.iterations, accelerate=args.accelerate)
    times = {"whole": [], "chunked": []}
    whole = chunked_out = info = None
    # One untimed run of each first: the process's one-time costs (imports, first-call set-up, about
    # 1.5 s on the first richardson_lucy call) would otherwise all land on the first timed run.
    for r in range(-1, args.repeats):  # then alternate, so drifts of the machine hit both alike
        t0 = time.perf_counter()
        whole = richardson_lucy(image, psf, args.iterations, accelerate=args.accelerate, device="cpu")
        if r >= 0:
            times["whole"].append(time.perf_counter() - t0)
        target = workdir / f"chunked_{r + 1}.zarr"
        t0 = time.perf_counter()
        info = run_chunked(image, fn, target, chunks=tuple(args.chunks), workers=args.workers)
        if r >= 0:
            times["chunked"].append(time.perf_counter() - t0)
        chunked_out = read_ome_zarr(target)[0]
        shutil.rmtree(target, ignore_errors=True)
    seam = psnr(chunked_out, whole, data_range=float(whole.max() - whole.min()))
    return {"times": times, "info": info, "psnr": seam, "threads": torch.get_num_threads()}


def stats(values) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def print_table(args, memory_rows, throughput) -> None:
    from deconv3d.pipeline.system_memory import format_bytes, parse_memory

    print(f"\nbench_pipeline on {os.cpu_count()} cores{' (--quick: not a measurement)' if args.quick else ''}\n")
    print("| measurement | value | target | met |")
    print("|---|---|---|---|")
    limit = parse_memory(args.memory_limit)
    for row in memory_rows:
        ok = row["peak"] <= limit
        print(f"| (a) peak RSS, rl {args.iterations} it, {format_gib(row['shape'])} {row['shape']}, "
              f"--memory-limit {args.memory_limit} ({row['plan']}; {row['seconds']:.0f} s; "
              f"wait4 ru_maxrss {format_bytes(row['maxrss'])}) | "
              f"{format_bytes(row['peak'])} | <= {format_bytes(limit)} | {'yes' if ok else 'NO'} |")
    if len(memory_rows) >= 2:
        first, last = memory_rows[0], memory_rows[-1]
        growth = last["peak"] / first["peak"] - 1
        scale = math.prod(last["shape"]) / math.prod(first["shape"])
        print(f"| (a) peak growth, {scale:.3g}x volume | {100 * growth:+.1f} % | <= +10 % | "
              f"{'yes' if growth <= 0.10 else 'NO'} |")
    if throughput:
        t, info = throughput["times"], throughput["info"]
        ratio = statistics.median(t["whole"]) / statistics.median(t["chunked"])
        label = f"rl {args.iterations} it{' accelerated' if args.accelerate else ''}, {tuple(args.shape)}"
        print(f"| (b) whole-volume time (s), {label}, {throughput['threads']} torch threads | {stats(t['whole'])} | | |")
        print(f"| (b) chunked time (s), {info.blocks} blocks of {info.chunks} + halo {info.halo}, "
              f"{args.workers} worker(s) | {stats(t['chunked'])} | | |")
        print(f"| (b) throughput chunked / whole (median of {args.repeats}) | {ratio:.2f}x | >= 0.7x | "
              f"{'yes' if ratio >= 0.7 else 'NO'} |")
        print(f"| (c) seam PSNR chunked vs whole | {throughput['psnr']:.1f} dB | >= 50 dB | "
              f"{'yes' if throughput['psnr'] >= 50 else 'NO'} |")


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_pipeline-", dir=args.workdir))
    try:
        memory_rows = [] if args.skip_memory else part_memory(args, workdir)
        throughput = None if args.skip_throughput else part_throughput(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(args, memory_rows, throughput)


if __name__ == "__main__":
    main()
