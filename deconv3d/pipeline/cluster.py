"""Where the blocks run: local threads, a LocalCluster of worker processes, or an existing scheduler."""

from __future__ import annotations

import contextlib
import re

from deconv3d.errors import InputError

__all__ = ["check_scheduler", "scheduler_client"]

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


@contextlib.contextmanager
def scheduler_client(spec: str, workers: int | None = None):
    """Yield a ``distributed.Client`` (None for ``threads``), closed (and its cluster stopped) on exit.

    ``processes`` starts a LocalCluster of ``workers`` single-threaded worker processes on
    127.0.0.1 (no dashboard); an address connects to a scheduler the user started, e.g. with
    dask-jobqueue on SLURM (see examples/). With GPUs, start one worker per GPU.
    """
    check_scheduler(spec)
    if spec == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    if spec == "processes":
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
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
