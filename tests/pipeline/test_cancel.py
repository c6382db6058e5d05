"""Cancelling a chunked run from another thread (a GUI's cancel button), not only between blocks."""

import threading

import numpy as np
import pytest

from deconv3d.pipeline import Cancelled, RichardsonLucyBlock, run_chunked

from .conftest import blurred_beads, gaussian_psf


class _CountedRL:
    """RL with far more iterations than a test can wait for; says when its block has started and
    counts the iterations it ran."""

    def __init__(self, psf):
        self.rl = RichardsonLucyBlock(psf, 100_000, accelerate=False)
        self.started, self.iterations = threading.Event(), 0

    def halo(self):
        return (2, 2, 2)

    def __call__(self, block):
        from deconv3d.classical import richardson_lucy
        from deconv3d.pipeline.chunked import abandoned

        def each(iteration, _estimate):
            self.started.set()
            self.iterations = iteration
            return abandoned()

        return richardson_lucy(block, self.rl.psf, self.rl.iterations, accelerate=False, callback=each)


def test_a_cancel_event_set_from_another_thread_stops_a_one_block_run_within_an_iteration(tmp_path):
    """The progress callback is asked only between blocks: a one-block run asked to cancel ran
    on to its end (12.6 s for a cancel at 3 s), and only then said "cancelled after 1 of 1 blocks"."""
    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    block = _CountedRL(psf)
    cancel = threading.Event()

    def press_cancel():
        if block.started.wait(60):  # once the block is iterating
            cancel.set()

    presser = threading.Thread(target=press_cancel)
    presser.start()
    try:
        with pytest.raises(Cancelled, match="cancelled after 0 of 1 blocks"):
            run_chunked(blurred_beads((8, 16, 16), psf, seed=1), block, tmp_path / "out.zarr", cancel=cancel)
    finally:
        cancel.set()
        presser.join()
    assert 0 < block.iterations < 100_000  # stopped by the cancel, not run to its end
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_cancel_set_before_the_run_writes_nothing(tmp_path):
    from deconv3d.io import write_tiff
    from deconv3d.pipeline.files import deconvolve_file
    from deconv3d.pipeline.settings import Settings

    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(tmp_path / "img.tif", blurred_beads((8, 16, 16), psf, seed=1), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    cancel = threading.Event()
    cancel.set()
    for name in ("out.zarr", "out.tif"):
        with pytest.raises(Cancelled, match="before the first block"):
            deconvolve_file(tmp_path / "img.tif", tmp_path / name, Settings(psf=str(tmp_path / "psf.tif"),
                            iterations=2), cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "psf.tif"]


def test_a_multi_block_run_cancelled_from_another_thread_stops_its_blocks(tmp_path):
    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    block = _CountedRL(psf)
    cancel = threading.Event()
    presser = threading.Thread(target=lambda: block.started.wait(60) and cancel.set())
    presser.start()
    try:
        with pytest.raises(Cancelled, match="cancelled after 0 of 4 blocks"):
            run_chunked(np.asarray(blurred_beads((8, 32, 32), psf, seed=2)), block, tmp_path / "out.zarr",
                        chunks=(8, 16, 16), workers=2, cancel=cancel)
    finally:
        cancel.set()
        presser.join()
    assert 0 < block.iterations < 100_000
    assert list(tmp_path.iterdir()) == []


def test_a_cluster_run_cancelled_from_another_thread_stops_its_running_block(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import time

    from distributed import Client, LocalCluster

    started, ended = tmp_path / "block-started", tmp_path / "how-the-block-ended"

    class WaitForAbandon:  # (defined here: sent to the worker by value)
        def __call__(self, block):
            import time

            from deconv3d.pipeline import chunked

            started.write_text("")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not chunked.abandoned():
                time.sleep(0.05)
            ended.write_text("abandoned" if chunked.abandoned() else "ran to its end")
            return block

    def press_cancel():
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cancel.set()

    cancel = threading.Event()
    presser = threading.Thread(target=press_cancel)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        presser.start()
        try:
            with pytest.raises(Cancelled, match="cancelled after 0 of 1 blocks"):
                run_chunked(np.ones((4, 8, 8), np.float32), WaitForAbandon(), tmp_path / "out.zarr", client=client,
                            cancel=cancel)
        finally:
            cancel.set()
            presser.join()
        deadline = time.monotonic() + 30
        while not ended.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert ended.read_text() == "abandoned" and not (tmp_path / "out.zarr").exists()
