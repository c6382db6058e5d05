"""Every block reads just its region plus halo from the source: files, dask and numpy give the same output."""

import os
import pickle
import threading
import time

import dask.array as da
import numpy as np
import pytest
import tifffile
from skimage.metrics import peak_signal_noise_ratio

from deconv3d.errors import Cancelled, InputError
from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr
from deconv3d.pipeline import RichardsonLucyBlock, WienerBlock, run_chunked
from deconv3d.pipeline.chunked import block_regions, plan_chunks
from deconv3d.pipeline.graph import blockwise

CHUNKS = (10, 20, 17)


def test_file_dask_and_array_sources_equal_map_overlap(tmp_path, volume, psf3d):
    fn = RichardsonLucyBlock(psf3d, iterations=4)
    reference = blockwise(da.from_array(volume), fn, chunks=CHUNKS, halo=fn.halo())[0].compute(scheduler="sync")
    write_ome_zarr(tmp_path / "in.zarr", volume, chunks=(7, 13, 11))
    lazy = open_lazy(tmp_path / "in.zarr")
    assert len(pickle.dumps(lazy.reader)) < 1000  # a path, not the pixels
    sources = {"array": volume, "dask": da.from_array(volume, chunks=5), "file": lazy, "reader": lazy.reader}
    for name, source in sources.items():
        run_chunked(source, fn, tmp_path / f"{name}.zarr", chunks=CHUNKS, workers=2)
        np.testing.assert_array_equal(read_ome_zarr(tmp_path / f"{name}.zarr")[0], reference, err_msg=name)


def test_tiff_reader_drops_singleton_axes(tmp_path):
    data = np.random.default_rng(0).random((1, 2, 6, 9, 11)).astype(np.float32)
    tifffile.imwrite(tmp_path / "h.ome.tif", data, ome=True, metadata={"axes": "TCZYX"})
    lazy = open_lazy(tmp_path / "h.ome.tif")
    assert lazy.axes == "CZYX" and lazy.reader.shape == (2, 6, 9, 11)
    np.testing.assert_array_equal(lazy.reader[1, 2:5, 3:, :7], data[0, 1, 2:5, 3:, :7])
    assert len(pickle.dumps(lazy.reader)) < 1000


class _Counting:
    """A reader that records the voxels read, and a block function that records concurrency."""

    def __init__(self, array):
        self.array, self.shape, self.ndim = array, array.shape, array.ndim
        self.voxels, self.running, self.most = 0, 0, 0
        self.lock = threading.Lock()

    def read(self, key):
        block = np.array(self.array[key], np.float32)
        with self.lock:
            self.voxels += block.size
        return block

    def __call__(self, block):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.01)
        with self.lock:
            self.running -= 1
        return block * 2


def test_blocks_read_only_their_region_and_run_at_most_workers_at_once(tmp_path, volume):
    halo = (3, 4, 5)
    counting = _Counting(volume)
    run_chunked(counting, counting, tmp_path / "o.zarr", chunks=(8, 16, 16), halo=halo, workers=2)
    sizes, depth, _ = plan_chunks(volume.shape, (8, 16, 16), halo)
    expected = sum(int(np.prod([s.stop - s.start for s in read])) for read, _, _ in
                   block_regions(volume.shape, sizes, depth))
    assert counting.voxels == expected  # each block read once, its own region plus halo only
    assert counting.most <= 2
    np.testing.assert_array_equal(read_ome_zarr(tmp_path / "o.zarr")[0], 2 * volume)


def test_blocks_come_grouped_by_shape_and_each_shape_sets_up_rl_once(tmp_path, volume, psf3d, monkeypatch):
    """Every block computed its OTF and Bertero weight again (9 of each for 8 blocks in 3 shapes
    and the measuring box of a 96 x 384 x 384 run, 18 % of its CPU): blocks now come grouped by
    the shape they read, a run keeps one set-up for the next block of its shape, and none is kept
    once the run is over."""
    from deconv3d import fft
    from deconv3d.classical import _reuse

    fn, chunks = RichardsonLucyBlock(psf3d, iterations=2), (24, 16, 16)
    sizes, depth, _ = plan_chunks(volume.shape, chunks, fn.halo())
    shapes = [tuple(s.stop - s.start for s in read) for read, _, _ in block_regions(volume.shape, sizes, depth)]
    changes = sum(a != b for a, b in zip(shapes, shapes[1:]))
    assert changes == len(set(shapes)) - 1 and len(set(shapes)) == 4 and len(shapes) == 9
    computed, otf = [], fft.FFTConvolver.otf
    monkeypatch.setattr(fft.FFTConvolver, "otf", lambda self, *a, **k: computed.append(1) or otf(self, *a, **k))
    run_chunked(volume, fn, tmp_path / "o.zarr", chunks=chunks, workers=1)
    assert len(computed) == 4
    assert _reuse._kept[0] is None


def test_a_chunked_wiener_run_computes_the_otf_once_per_shape(tmp_path, volume, psf3d, monkeypatch):
    """Found by review: every block of a chunked Wiener run computed the PSF's OTF again (18 for 18
    blocks in 4 shapes here), although it depends only on the PSF, the FFT shape, device and dtype.
    Blocks of one run now share it as RL's share their set-up; the result is unchanged (equal to the
    dask graph's blocks, which keep nothing, and to the in-memory Wiener as test_seams asks)."""
    from deconv3d import fft
    from deconv3d.classical import _reuse, wiener

    fn, chunks = WienerBlock(psf3d, balance=1e-3), (12, 16, 16)
    sizes, depth, _ = plan_chunks(volume.shape, chunks, fn.halo())
    shapes = [tuple(s.stop - s.start for s in read) for read, _, _ in block_regions(volume.shape, sizes, depth)]
    assert len(shapes) == 18 and len(set(shapes)) == 4
    computed, otf = [], fft.FFTConvolver.otf
    monkeypatch.setattr(fft.FFTConvolver, "otf", lambda self, s, *a: computed.append(tuple(s)) or otf(self, s, *a))
    graph = blockwise(da.from_array(volume), fn, chunks=chunks, halo=fn.halo())[0].compute(scheduler="sync")
    assert len(computed) == 18  # outside run_blocks nothing is kept: one OTF per block
    computed.clear()
    run_chunked(volume, fn, tmp_path / "o.zarr", chunks=chunks, workers=1)
    assert len(computed) == len(set(computed)) <= len(set(shapes))  # once per FFT shape (blocks of 4 shapes
    # share one here, as they mirror their faces inside the volume the PSF's size deep)
    assert _reuse._kept[0] is None  # and nothing kept once the run is over
    result = read_ome_zarr(tmp_path / "o.zarr")[0]
    np.testing.assert_array_equal(result, graph)
    whole = wiener(volume, psf3d, 1e-3, device="cpu")
    with np.errstate(divide="ignore"):
        assert peak_signal_noise_ratio(whole, result, data_range=float(whole.max() - whole.min())) >= 50


@pytest.mark.parametrize("method", ["rl", "wiener"])
@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_run_that_ends_early_drops_its_rl_set_up(tmp_path, volume, psf3d, end, method):
    """Found by review: a run that failed in a block kept its OTF and Bertero weight after it ended,
    for as long as the exception lived (its traceback holds the run, in a cycle through the block's
    future) or until the garbage collector came. The run drops its set-up when it ends, in a finally;
    on a cluster each block's task does (test below). Wiener's kept OTF likewise."""
    from deconv3d.classical import _reuse

    image = volume.copy()
    if end == "failed":
        image[-1, -1, -1] = np.nan  # the last block refuses it, after others kept their set-up
    fn = RichardsonLucyBlock(psf3d, iterations=2) if method == "rl" else WienerBlock(psf3d)
    kept = []  # what was kept as blocks finished

    def progress(done, total):
        kept.append(_reuse._kept[0] is not None)
        return end == "cancelled" and done >= 1

    with pytest.raises(InputError if end == "failed" else Cancelled) as raised:
        run_chunked(image, fn, tmp_path / "o.zarr", chunks=(12, 16, 16), workers=2, progress=progress)
    assert raised.value.__traceback__ is not None  # (the run still referenced)
    assert any(kept)  # (a set-up was kept while the run lasted)
    assert _reuse._kept[0] is None


def test_a_cluster_task_drops_its_rl_set_up_when_it_ends(volume, psf3d):
    """On a cluster's worker the run's flag lives as long as the block's task: its set-up goes with it
    (the worker keeps a failed task's traceback)."""
    from deconv3d.classical import _reuse
    from deconv3d.pipeline.chunked import _block_task

    class Failing(RichardsonLucyBlock):
        def __call__(self, block):
            super().__call__(block)  # keeps its set-up for the task's run
            raise RuntimeError("after RL")

    with pytest.raises(RuntimeError, match="after RL") as raised:
        _block_task(volume[:12, :16, :16], None, Failing(psf3d, iterations=1), None, "unused", (),
                    abandon="deconv3d-abandon-test")
    assert raised.value.__traceback__ is not None and _reuse._kept[0] is None


def _handles_on(path) -> list[str]:
    """This process's file descriptors open on ``path``, deleted or not (Linux's /proc/self/fd)."""
    real = str(path.resolve())
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # (the descriptor listdir itself used, closed since)
            pass
    return [link for link in links if link in (real, real + " (deleted)")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in Linux's /proc/self/fd")
def test_a_run_on_a_tiff_opens_it_once_and_leaves_it_closed(tmp_path, psf3d, monkeypatch, capsys):
    """Stores of the 8 TIFFs read last stayed open: a long session (napari, a notebook, a batch) held
    handles to files it was done with, and a deleted TIFF's space came back only once its handle
    was pushed out. Each run (run_chunked, deconvolve_file, the command line in-process) reads
    its blocks through one open of the file, and closes it when it ends."""
    from cli_helpers import run

    from deconv3d.pipeline.files import deconvolve_file
    from deconv3d.pipeline.settings import Settings

    volume = np.random.default_rng(0).poisson(20, (16, 32, 32)).astype(np.float32)
    path, psf_path = tmp_path / "in.tif", tmp_path / "psf.tif"
    calibrated = dict(imagej=True, resolution=(10, 10), metadata={"axes": "ZYX", "spacing": 0.2, "unit": "um"})
    tifffile.imwrite(path, volume, **calibrated)
    tifffile.imwrite(psf_path, psf3d, **calibrated)
    opens, real_imread = [], tifffile.imread
    monkeypatch.setattr(tifffile, "imread", lambda *a, **k: (opens.append(a[0]) if k.get("aszarr") else None)
                        or real_imread(*a, **k))
    chunks = (8, 16, 16)
    image = [open_lazy(path)]
    runs = {"run_chunked": lambda: run_chunked(image[0], RichardsonLucyBlock(psf3d, iterations=2), tmp_path / "a.zarr",
                                               chunks=chunks, workers=2),
            "deconvolve_file": lambda: deconvolve_file(path, tmp_path / "b.zarr",
                                                       Settings(psf=str(psf_path), iterations=2, chunks=chunks)),
            "command line": lambda: run(["deconvolve", path, "-o", tmp_path / "c.tif", "--psf", psf_path,
                                         "--iterations", 2, "--chunks", *chunks], capsys)}
    for name, call in runs.items():
        opens.clear()
        result = call()
        if name == "command line":  # its exit status, and its line "wrote ...: rl in 8 block(s) of ..."
            assert result[0] == 0, result[2]
            blocks = int((result[1] + result[2]).split(" block(s)")[0].split()[-1])
        else:
            blocks = result.blocks
        assert blocks == 8 and len(opens) == 1, f"{name}: {len(opens)} opens for {blocks} blocks"
        assert _handles_on(path) == [], f"{name} left the file open"
    assert float(np.asarray(image[0].data[0]).sum()) == float(volume[0].sum())  # read again: opened again
    assert _handles_on(path) != []
    image.clear()
    assert _handles_on(path) == [], "closed with the image that opened it"
