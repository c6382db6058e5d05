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


def test_gpu_workers_pin_their_own_device(monkeypatch):
    """One worker per GPU: worker i makes GPU i its current device (checked with a stand-in)."""
    import torch

    from deconv3d.pipeline.cluster import PinGPU, gpu_count

    assert gpu_count("cpu") == 0
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)

    class Worker:
        def __init__(self, name):
            self.name, self.address = name, f"tcp://127.0.0.1:{4000 + int(name)}"

    plugin = PinGPU(2)
    for name in (0, 1, 2):
        plugin.setup(Worker(name))
    assert chosen == [0, 1, 0]


@pytest.mark.cuda
def test_processes_scheduler_starts_one_worker_per_gpu():
    import torch

    count = torch.cuda.device_count()
    with scheduler_client("processes", workers=5, gpus=count) as client:
        devices = client.run(lambda: __import__("torch").cuda.current_device())
    assert len(devices) == count and sorted(devices.values()) == list(range(count))
