"""Deconvolve a folder of TIFFs on a dask.distributed LocalCluster (2 worker processes on 127.0.0.1).

Everything happens in a temporary folder: a few synthetic widefield stacks and their PSF are
written as TIFFs, then every stack is deconvolved (Richardson-Lucy) block by block, the blocks
running on the cluster's workers, into OME-Zarr outputs with a completion record each (the same
machinery as ``deconv3d batch --scheduler processes --workers 2``). Run it with::

    python examples/local_cluster.py            # keeps nothing: prints where the outputs were
    python examples/local_cluster.py --keep out # writes into ./out instead of a temporary folder

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


def make_inputs(folder: Path, n_files: int) -> Path:
    """Write ``n_files`` noisy blurred phantoms and a Gaussian PSF; returns the PSF path."""
    from deconv3d.io import write_tiff
    from deconv3d.psf import generate_psf
    from deconv3d.synthetic import degrade, phantom

    psf = generate_psf("gaussian", (15, 21, 21), VOXEL, na=1.2, wavelength=0.52)
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        truth = phantom(SHAPE, seed=i, voxel_size=VOXEL)
        write_tiff(folder / "raw" / f"stack{i:02d}.tif", degrade(truth, psf, photons=200, seed=i), voxel_size=VOXEL)
    write_tiff(folder / "psf.tif", psf, voxel_size=VOXEL)
    return folder / "psf.tif"


def deconvolve_folder(folder: Path, psf_path: Path, workers: int) -> list[dict]:
    """Run the batch on a LocalCluster of ``workers`` single-threaded processes on loopback."""
    from distributed import Client, LocalCluster

    from deconv3d.pipeline.batch import make_settings, run_batch, write_reports
    from deconv3d.pipeline.files import deconvolve_file

    settings = make_settings({"method": "rl", "psf": str(psf_path), "iterations": 20, "chunks": (16, 48, 48)})
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers at {client.scheduler.address}")

        def one(path, output, input_sha256):
            info = deconvolve_file(path, output, settings, client=client, checksum=input_sha256)
            print(f"  {path.name}: {info.blocks} blocks of {info.chunks} + halo {info.halo} in {info.seconds:.1f} s")

        rows = run_batch(folder / "raw", folder / "deconvolved", settings, one)
    write_reports(folder / "deconvolved", rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="folder to write into and keep (default: a temporary one)")
    parser.add_argument("--files", type=int, default=3, help="number of synthetic stacks (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process

    with tempfile.TemporaryDirectory(prefix="deconv3d-cluster-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        psf_path = make_inputs(folder, args.files)
        print(f"wrote {args.files} stacks of {SHAPE} and a PSF in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        rows = deconvolve_folder(folder, psf_path, args.workers)
        seconds = time.perf_counter() - start
        from deconv3d.omezarr import read_ome_zarr

        first = read_ome_zarr(rows[0]["output"])[0]
        print(f"deconvolved {sum(r['status'] == 'done' for r in rows)} of {len(rows)} stacks in {seconds:.1f} s "
              f"(first output: shape {first.shape}, max {float(np.max(first)):.3g})")
        print(f"outputs: {folder / 'deconvolved'} (report: batch_report.json)")
        if args.keep is None:
            print("(a temporary folder, removed now: use --keep DIR to keep the outputs)")


if __name__ == "__main__":
    main()
