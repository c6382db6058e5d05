"""Deconvolve a folder of TIFFs on a dask.distributed LocalCluster (2 worker processes on 127.0.0.1).

Everything happens in a temporary folder: a few synthetic widefield stacks and their PSF are
written as TIFFs, then every stack is deconvolved (accelerated Richardson-Lucy) block by block,
the blocks running on the cluster's workers, into OME-Zarr outputs with a completion record each
(the same machinery as ``deconv3d batch --scheduler processes --workers 2``), and a figure of the
first stack (max projections of the ground truth, the raw stack and the result) is written as
``local_cluster.png``. Run it with::

    python examples/local_cluster.py            # keeps only the figure (in the current folder)
    python examples/local_cluster.py --keep out # writes everything into ./out; rerun to resume

It needs the ``distributed`` extra: ``pip install 'deconv3d[distributed]'``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (32, 96, 96)  # z, y, x of each synthetic stack
VOXEL = (0.3, 0.1, 0.1)  # micrometres
BACKGROUND = 10.0  # expected counts per voxel under the signal (200 counts at the brightest voxel)
#: The batch's settings beside the PSF (examples/README.md quotes the command line that makes the same).
SETTINGS = {"method": "rl", "iterations": 20, "chunks": (16, 48, 48)}


def truth_of(i: int) -> np.ndarray:
    """The ground truth of synthetic stack ``i``."""
    from deconv3d.synthetic import phantom

    return phantom(SHAPE, seed=i, voxel_size=VOXEL)


def make_inputs(folder: Path, n_files: int) -> Path:
    """Write ``n_files`` noisy blurred phantoms and a Gaussian PSF; returns the PSF path.

    Each stack sits on a background of ``BACKGROUND`` expected counts (out-of-focus light and the
    camera's dark level), as a recorded stack does: on a zero background the read noise alone made
    44 % of the voxels negative, which deconv3d warns about as a subtracted offset."""
    from deconv3d.io import write_tiff
    from deconv3d.psf import generate_psf
    from deconv3d.synthetic import degrade

    psf = generate_psf("gaussian", (15, 21, 21), VOXEL, na=1.2, wavelength=0.52)
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        write_tiff(folder / "raw" / f"stack{i:02d}.tif", degrade(truth_of(i), psf, photons=200, background=BACKGROUND, seed=i),
                   voxel_size=VOXEL)
    write_tiff(folder / "psf.tif", psf, voxel_size=VOXEL)
    return folder / "psf.tif"


def deconvolve_folder(folder: Path, psf_path: Path, workers: int) -> list[dict]:
    """Run the batch on a LocalCluster of ``workers`` single-threaded processes on loopback."""
    from distributed import Client, LocalCluster

    from deconv3d.pipeline.batch import make_settings, run_batch, write_reports
    from deconv3d.pipeline.files import deconvolve_file

    settings = make_settings({**SETTINGS, "psf": str(psf_path)})
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, local_directory=str(folder / "dask-scratch")) as cluster, \
            Client(cluster) as client:
        print(f"cluster: {len(client.nthreads())} workers at {client.scheduler.address}")

        def one(path, output, input_sha256):
            info = deconvolve_file(path, output, settings, client=client, checksum=input_sha256)
            print(f"  {path.name}: {info.blocks} blocks of {info.chunks} + halo {info.halo} in {info.seconds:.1f} s")

        rows = run_batch(folder / "raw", folder / "deconvolved", settings, one)
    write_reports(folder / "deconvolved", rows)
    return rows


def save_figure(path: Path, truth: np.ndarray, raw: np.ndarray, result: np.ndarray) -> None:
    """Max projections (xy and xz, axes in micrometres) of the truth, the raw stack and the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dz, _, dx = VOXEL
    z, y, x = SHAPE
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.2), height_ratios=(y * dx, z * dz), layout="constrained")
    for col, (title, data) in enumerate((("ground truth", truth), ("raw (blurred, noisy)", raw),
                                         ("deconvolved on the cluster", result))):
        axes[0, col].imshow(data.max(axis=0), cmap="magma", extent=(0, x * dx, y * dx, 0))
        axes[1, col].imshow(data.max(axis=1), cmap="magma", extent=(0, x * dx, z * dz, 0), aspect="auto")
        axes[0, col].set_title(title)
        axes[1, col].set_xlabel("x (µm)")
    axes[0, 0].set_ylabel("y (µm)")
    axes[1, 0].set_ylabel("z (µm)")
    fig.suptitle("max projections, xy (top) and xz (bottom), of stack00")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def inputs_line(files: int, seconds: float) -> str:
    """What the script says once it has written ``files`` synthetic stacks and the PSF in ``seconds``."""
    return f"wrote {files} stack{'s' if files != 1 else ''} of {SHAPE} and a PSF in {seconds:.1f} s"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="folder to write into and keep (default: a temporary one)")
    parser.add_argument("--files", type=positive_int, default=3, help="number of synthetic stacks (default 3)")
    parser.add_argument("--workers", type=positive_int, default=2, help="worker processes (default 2)")
    parser.add_argument("--figure", type=Path, default=Path("local_cluster.png"),
                        help="where to write the figure (default ./local_cluster.png; with --keep, in that folder)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process

    with tempfile.TemporaryDirectory(prefix="deconv3d-cluster-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        psf_path = make_inputs(folder, args.files)
        print(inputs_line(args.files, time.perf_counter() - start))
        start = time.perf_counter()
        try:
            rows = deconvolve_folder(folder, psf_path, args.workers)
        except KeyboardInterrupt:
            print("interrupted: finished stacks are kept" + (f"; rerun with --keep {args.keep} to resume"
                                                             if args.keep else " only with --keep DIR"))
            return 130
        seconds = time.perf_counter() - start
        from deconv3d.pipeline.batch import status_counts

        for row in rows:
            if row["status"] == "failed":
                print(f"  {Path(row['file']).name} failed: {row['reason']}")
        counts = status_counts(rows)
        print(f"{counts['done']} of {len(rows)} stacks deconvolved, {counts['skipped']} finished before "
              f"(skipped), {counts['failed']} failed, in {seconds:.1f} s")
        finished = next((r for r in rows if r["status"] in ("done", "skipped")), None)
        if finished is not None and finished is rows[0]:
            from deconv3d.io import read_image
            from deconv3d.omezarr import read_ome_zarr

            result = read_ome_zarr(finished["output"])[0]
            figure = folder / args.figure.name if args.keep else args.figure
            save_figure(figure, truth_of(0), read_image(folder / "raw" / "stack00.tif").data, result)
            print(f"first output: shape {result.shape}, max {float(np.max(result)):.3g}; figure: {figure}")
        else:
            print("no figure: stack00 did not finish")
        print(f"outputs: {folder / 'deconvolved'} (report: batch_report.json)")
        if args.keep is None:
            print("(a temporary folder, removed now: use --keep DIR to keep the outputs)")
        return 3 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
