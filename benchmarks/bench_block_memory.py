"""The classical methods' memory counts (deconv3d.pipeline.memory_model.MemoryModel, rl / rl-tv /
wiener) against the measured peak of one block.

Each case runs one block callable (:class:`~deconv3d.pipeline.methods.RichardsonLucyBlock` or
:class:`~deconv3d.pipeline.methods.WienerBlock`, as the pipeline calls them) in a fresh process,
set up as a ``--memory-limit`` run sets itself up before its first block: glibc's fixed mmap
threshold (:func:`~deconv3d.pipeline.allocator.return_large_allocations`), the block's ``load()``
(numba's passes) and, where pyFFTW is the backend, its import. Then the process's peak resident
memory is reset (``/proc/self/clear_refs``), the block is made (as a block read from the source
is, after the baseline) and run, and the growth of the peak (VmHWM) over the resident memory
before is printed beside ``MemoryModel(...).block_bytes`` (its factor and overhead included,
RESIDENT_ALLOWANCE not). Every case runs in ``--runs`` fresh processes (the peak varies from one
process to the next): the table gives the median and range, and the largest ratio
measured / counted. A ratio above 1 means the model undercounts: a ``--memory-limit`` run could
then exceed its limit, so the largest ratio is the figure that matters. ``--blocks`` > 1 also
reports the peak over that many blocks of the same shape in a row in each process
(``release_memory`` between them, as the executor does), over the same baseline.

Run ``python benchmarks/bench_block_memory.py`` (many minutes on 2 cores, ``--runs 1`` a fifth of
that; Linux only), ``--methods``, ``--psfs`` and ``--shapes`` for chosen cases, or
``--quick`` for a smoke test on tiny blocks, one process per case (no measurement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

METHODS = ("rl", "rl-acc", "rl-sched", "rl-tv", "rl-reflect", "wiener")
SHAPES = [(32, 128, 128), (64, 256, 256), (96, 384, 384), (64, 512, 512)]
PSFS = (31, 15)
QUICK = [(8, 32, 32)]


def _vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset the peak resident set size (VmHWM)
        fh.write("5")


def _block_fn(method: str, psf, iterations: int):
    from deconv3d.pipeline.methods import RichardsonLucyBlock, WienerBlock

    if method == "wiener":
        return WienerBlock(psf, 1e-3, device="cpu")
    accelerate = {"rl-acc": True, "rl-sched": (0.5,) * iterations}.get(method, False)
    return RichardsonLucyBlock(psf, iterations, boundary="reflect" if method == "rl-reflect" else "bertero",
                               tv_weight=0.005 if method == "rl-tv" else 0.0, accelerate=accelerate, device="cpu")


def _model(method: str, psf_shape):
    from deconv3d.pipeline.memory_model import MemoryModel

    name = {"rl-tv": "rl-tv", "wiener": "wiener"}.get(method, "rl")
    return MemoryModel(name, psf_shape, accelerate=method in ("rl-acc", "rl-sched"),
                       boundary="reflect" if method == "rl-reflect" else "bertero")


def gaussian_psf(k: int):
    import numpy as np

    r = np.arange(k) - (k - 1) / 2
    z, y, x = np.meshgrid(r * 0.5, r, r, indexing="ij")
    psf = np.exp(-(x ** 2 + y ** 2 + z ** 2) / (2 * (k / 6) ** 2)).astype(np.float32)
    return psf / psf.sum()


WARM_UP = (32, 96, 96)  # a block whose FFTs are large enough for FFTW (>= 2**19 voxels)


def measure(method: str, shape, k: int, iterations: int, blocks: int, warm: bool = False) -> str:
    """One case in this process: ``first_growth peak_growth_over_blocks counted library_load``."""
    import gc

    import numpy as np
    import torch

    from deconv3d._fftw import backend_for, fftw_available
    from deconv3d.fft import fast_shape
    from deconv3d.pipeline.allocator import return_large_allocations
    from deconv3d.pipeline.system_memory import current_rss
    from deconv3d.pipeline.threads_and_memory import release_memory

    return_large_allocations()
    psf = gaussian_psf(k)
    fn = _block_fn(method, psf, iterations)
    getattr(fn, "load", lambda: None)()
    before_lib = current_rss()
    if fftw_available() and backend_for(fast_shape(shape), torch.device("cpu"), torch.float32) == "fftw":
        import pyfftw  # noqa: F401 - a one-time library load (~ dask's import), not the block's

        from deconv3d._fftw_wisdom import load_wisdom, wisdom_lock

        with wisdom_lock:
            load_wisdom(pyfftw)
    if warm:  # one small block first: the code and tables its first call touches join the baseline
        fn(np.random.default_rng(99).random(WARM_UP, dtype=np.float32) + np.float32(0.1))
    library = current_rss() - before_lib
    gc.collect()
    release_memory()
    baseline = current_rss()
    _reset_peak()
    first, peak = None, 0
    for run in range(blocks):
        block = np.random.default_rng(run).random(shape, dtype=np.float32) + np.float32(0.1)
        out = np.asarray(fn(block), dtype=np.float32)
        assert out.shape == block.shape
        del block, out
        release_memory()
        hwm = _vm("VmHWM") - baseline
        first = hwm if first is None else first
        peak = max(peak, hwm)
    counted = _model(method, psf.shape).block_bytes(shape)
    return f"{first} {peak} {counted} {library}"


def run_case(method: str, shape, k: int, args) -> tuple[int, int, int, int] | str:
    """One case in a fresh process with an empty cache: (first, peak over blocks, counted, library)
    in bytes, or the child's last error line."""
    case = f"{method}:{'x'.join(map(str, shape))}:{k}"
    with tempfile.TemporaryDirectory() as cache:  # FFTW's wisdom and sizes: a fresh machine's
        env = {**os.environ, "DECONV3D_CACHE_DIR": cache}
        done = subprocess.run([sys.executable, __file__, "--case", case, "--iterations", str(args.iterations),
                               "--blocks", str(args.blocks)] + ["--warm"] * args.warm,
                              capture_output=True, text=True, env=env)
    if done.returncode:
        return " ".join(done.stderr.strip().splitlines()[-1:])
    first, peak, counted, library = (int(v) for v in done.stdout.split()[-4:])
    return first, peak, counted, library


def case_row(method: str, shape, k: int, args) -> float | None:
    """Run one case in ``args.runs`` fresh processes, print its row; returns the largest measured /
    counted of the first blocks (None where a run failed)."""
    runs = [run_case(method, shape, k, args) for _ in range(args.runs)]
    block = "x".join(map(str, shape))
    failed = next((r for r in runs if isinstance(r, str)), None)
    if failed is not None:
        print(f"| {method} | {block} | {k}^3 | failed: {failed} |", flush=True)
        return None
    first, counted = [r[0] for r in runs], runs[0][2]
    ratios, over_blocks = [f / counted for f in first], max(r[1] for r in runs) / counted
    print(f"| {method} | {block} | {k}^3 | {statistics.median(first) / 1e6:.0f} ({min(first) / 1e6:.0f}-"
          f"{max(first) / 1e6:.0f}) | {counted / 1e6:.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-"
          f"{max(ratios):.2f}) | {max(ratios):.2f} | {over_blocks:.2f} | "
          f"{statistics.median([r[3] for r in runs]) / 1e6:.0f} |", flush=True)
    return max(ratios)


def main(argv=None) -> None:
    from deconv3d.cli.arguments import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--psfs", default=",".join(str(k) for k in PSFS))
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--iterations", type=int, default=5, help="RL iterations (the peak is reached by the 3rd)")
    parser.add_argument("--runs", type=positive_int,
                        help="fresh processes per case (default 5, 1 with --quick): the peak varies from run to run")
    parser.add_argument("--blocks", type=positive_int, default=1, help="blocks run one after the other in each process")
    parser.add_argument("--warm", action="store_true", help=f"run one {WARM_UP} block before the baseline")
    parser.add_argument("--quick", action="store_true", help="tiny blocks: a smoke test, not a measurement")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.case:
        method, shape, k = args.case.split(":")
        print(measure(method, tuple(int(n) for n in shape.split("x")), int(k), args.iterations, args.blocks, args.warm))
        return
    shapes = QUICK if args.quick else [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    psfs = (5,) if args.quick else tuple(int(k) for k in args.psfs.split(","))
    print(f"# bench_block_memory: {os.cpu_count()} cores, DECONV3D_FFT={os.environ.get('DECONV3D_FFT', 'auto')}, "
          f"DECONV3D_FUSED={os.environ.get('DECONV3D_FUSED', 'auto')}, {args.iterations} iterations, "
          f"{args.runs} fresh process(es) per case, {args.blocks} block(s) per process"
          f"{', warmed up' if args.warm else ''}; peak RSS growth of the first block against the model: "
          f"median (min-max)")
    print("| method | block | PSF | measured MB | model MB | measured / model | max measured / model "
          "| max over blocks | library MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = [case_row(method, shape, k, args) for method in args.methods.split(",") for k in psfs for shape in shapes]
    worst = [w for w in worst if w is not None]
    if worst:
        print(f"# largest measured / model over all runs: {max(worst):.2f} (above 1: the model undercounts)")


if __name__ == "__main__":
    main()
