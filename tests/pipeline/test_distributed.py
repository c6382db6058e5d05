"""A LocalCluster of 2 worker processes on 127.0.0.1 writes the same output as local threads.

From an in-memory array (blocks sent along with their tasks) and from an OME-Zarr file (every
worker opens it by path and reads its blocks itself).
"""

import numpy as np
import pytest

from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr
from deconv3d.pipeline import RichardsonLucyBlock, run_chunked
from deconv3d.pipeline.cluster import scheduler_client

pytest.importorskip("distributed", reason="dask.distributed is not installed")


def test_localcluster_equals_threads(tmp_path, volume, psf3d):
    fn = RichardsonLucyBlock(psf3d, iterations=3)
    run_chunked(volume, fn, tmp_path / "threads.zarr", chunks=(12, 24, 24), workers=2)
    write_ome_zarr(tmp_path / "in.zarr", volume, chunks=(5, 16, 16))
    with scheduler_client("processes", workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        run_chunked(volume, fn, tmp_path / "procs.zarr", chunks=(12, 24, 24), client=client)
        run_chunked(open_lazy(tmp_path / "in.zarr"), fn, tmp_path / "file.zarr", chunks=(12, 24, 24), client=client)
    threads = read_ome_zarr(tmp_path / "threads.zarr")[0]
    for name in ("procs", "file"):
        out = read_ome_zarr(tmp_path / f"{name}.zarr")[0]
        np.testing.assert_allclose(out, threads, rtol=1e-5, atol=1e-6 * float(threads.max()), err_msg=name)
