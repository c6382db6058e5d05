"""Where the blocks run: local threads, a LocalCluster of worker processes, or an existing scheduler."""

from __future__ import annotations

import contextlib
import re

from deconv3d.errors import InputError

__all__ = ["check_scheduler", "scheduler_client", "gpu_count", "PinGPU"]

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://[^\s/]+(:\d+)?/?$")


def check_scheduler(spec: str) -> str:
    """Validate ``threads``, ``processes`` or a scheduler address like ``tcp://HOST:PORT``."""
    if spec in ("threads", "processes") or _ADDRESS.match(spec or ""):
        if spec != "threads":
            _import_distributed()
        return spec
    raise InputError(f"unknown scheduler {spec!r}: use threads, processes or an address like tcp://HOST:8786")


def _import_distributed():
    import importlib

    try:
        importlib.import_module("distributed")
    except ImportError as exc:
        raise InputError("--scheduler processes or an address needs dask.distributed: "
                         "pip install 'deconv3d[distributed]'") from exc


def gpu_count(device: str | None) -> int:
    """GPUs the workers should use: all visible ones for ``cuda``/``auto`` on a CUDA machine, else 0."""
    if device not in ("cuda", "auto") and not str(device or "").startswith("cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class PinGPU:
    """Worker plugin: worker ``i`` of a LocalCluster makes GPU ``i % count`` its current device.

    Tensors the block functions put on ``"cuda"`` then land on that worker's own GPU, so a
    cluster of one worker per GPU uses every GPU once.
    """

    name = "deconv3d-pin-gpu"

    def __init__(self, count: int):
        self.count = int(count)

    def setup(self, worker) -> None:
        import torch

        name = str(worker.name)
        index = int(name) if name.isdigit() else sum(map(ord, worker.address))
        torch.cuda.set_device(index % self.count)


@contextlib.contextmanager
def scheduler_client(spec: str, workers: int | None = None, gpus: int = 0):
    """Yield a ``distributed.Client`` (None for ``threads``), closed (and its cluster stopped) on exit.

    ``processes`` starts a LocalCluster of ``workers`` single-threaded worker processes on
    127.0.0.1 (no dashboard); with ``gpus`` > 0 it starts one worker per GPU instead, each
    pinned to its own device (:class:`PinGPU`). An address connects to a scheduler the user
    started, e.g. with dask-jobqueue on SLURM (see examples/).
    """
    check_scheduler(spec)
    if spec == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    if spec == "processes":
        n_workers = gpus if gpus > 0 else (workers or 2)
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
        if gpus > 0:
            client.register_plugin(PinGPU(gpus))
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = Client(spec, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the dask scheduler at {spec}: {exc}: is it running?") from exc
    try:
        yield client
    finally:
        client.close()
