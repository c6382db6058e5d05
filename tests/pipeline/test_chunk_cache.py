"""A chunked run decodes each chunk of an OME-Zarr input once, within the memory it plans for."""

import collections
import dataclasses
import pickle
import threading
import tracemalloc

import numpy as np
import pytest
import zarr

from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr
from deconv3d.omezarr.chunkcache import READ_BYTES, ChunkCache
from deconv3d.pipeline import run_chunked
from deconv3d.pipeline.planning import RunPlan
from deconv3d.pipeline.readers import ArrayReader, CHUNK_CACHE_BYTES, chunk_cache_budget, chunk_reads_spare


def _count_chunk_fetches(monkeypatch) -> collections.Counter:
    """Chunk files read from a local zarr store, by key (one per decode)."""
    fetched = collections.Counter()
    original = zarr.storage.LocalStore.get

    async def get(self, key, *args, **kwargs):
        if "/c/" in key and "in.zarr" in str(self.root):
            fetched[key] += 1
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    return fetched


def _identity(block):
    return block


def test_a_chunked_run_decodes_each_input_chunk_once(tmp_path, monkeypatch):
    """Found by the performance review: one-plane chunks were decoded by every block that read
    them (9 lateral blocks here: each plane 9 to 18 times); blocks of a zarr whose chunks are wider
    than a block decoded the whole chunk each."""
    image = np.random.default_rng(0).random((12, 24, 24)).astype(np.float32)
    for chunks in ((1, 24, 24), (12, 12, 24)):
        write_ome_zarr(tmp_path / "in.zarr", image, chunks=chunks)
        lazy = open_lazy(tmp_path / "in.zarr")
        fetched = _count_chunk_fetches(monkeypatch)
        run_chunked(lazy, _identity, tmp_path / "out.zarr", chunks=(6, 8, 8), halo=(2, 2, 2), workers=2)
        n_chunks = np.prod([-(-n // c) for n, c in zip(image.shape, chunks)])
        assert len(fetched) == n_chunks and set(fetched.values()) == {1}, (chunks, fetched)
        np.testing.assert_array_equal(read_ome_zarr(tmp_path / "out.zarr")[0], image)
        # dropped at the end of the run (they would stay with the image), and never pickled
        assert lazy.reader.cache_budget == 0 and lazy.reader._cache is None
        monkeypatch.undo()


def test_the_cache_holds_the_chunks_of_a_block_within_what_the_plan_leaves(tmp_path):
    write_ome_zarr(tmp_path / "in.zarr", np.ones((12, 24, 24), np.float32), chunks=(1, 24, 24))
    reader = open_lazy(tmp_path / "in.zarr").reader
    whole, block = 12 * 24 * 24 * 4, 9 * 24 * 24 * 4  # a block of 9 planes (halo included) spans 9 chunks
    assert reader.stored_bytes() == whole and reader.stored_bytes(0, (9, 5, 5)) == block
    assert chunk_cache_budget(reader, 0, (9, 5, 5)) == min(whole, CHUNK_CACHE_BYTES)  # no limit
    limit = 10**7 + chunk_reads_spare(reader, 0, 1)  # (what a read holds beside the cache: not the cache's)
    assert chunk_cache_budget(reader, 0, (9, 5, 5), limit, 10**7 - whole - 1) == whole
    assert chunk_cache_budget(reader, 0, (9, 5, 5), limit, 10**7 - block) == block
    # too little left under the limit for one block's chunks: every read would decode anyway
    assert chunk_cache_budget(reader, 0, (9, 5, 5), limit, 10**7 - block + 1) == 0
    assert chunk_cache_budget(reader, 0, (12, 24, 24)) == 0  # one block reads every chunk once
    assert chunk_cache_budget(ArrayReader(np.ones((4, 4))), 0, (2, 2)) == 0  # nothing to decode


def test_the_plan_counts_what_reads_hold_beside_the_cache(tmp_path):
    """Found in review: a read holds a box of small chunks and their copies, or a chunk and zarr's
    buffer for it, before the cache drops the least recently used: the plan counted only the cache."""
    write_ome_zarr(tmp_path / "in.zarr", np.ones((12, 24, 24), np.float32), chunks=(1, 24, 24))
    reader = open_lazy(tmp_path / "in.zarr").reader
    assert RunPlan.make((12, 24, 24), [_identity], (6, 8, 8), (2, 2, 2), None, None, 3, None).threads == 3
    spare, whole = 2 * 2 * READ_BYTES, 12 * 24 * 24 * 4  # two threads; chunks smaller than a box
    assert chunk_reads_spare(reader, 0, 2) == spare
    plan = RunPlan((12, 24, 24), (6, 8, 8), (2, 2, 2), (2, 2, 2), (), (6, 8, 8), 18, (6, 8, 8),
                   predicted=10**7 - spare - whole, memory_limit=10**7, model=None, threads=2).with_cache(reader, 0)
    assert plan.cache == whole and plan.predicted == 10**7
    plan = dataclasses.replace(plan, predicted=10**7 - spare - 10 * 24 * 24 * 4 + 1, cache=0).with_cache(reader, 0)
    assert plan.cache == 0 and plan.predicted == 10**7 - spare - 10 * 24 * 24 * 4 + 1  # no block's chunks fit


def test_cached_reads_equal_direct_reads_and_stay_within_budget(tmp_path):
    data = np.arange(2 * 9 * 10 * 11, dtype=np.uint16).reshape(2, 9, 10, 11)
    array = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 4, 3, 5), dtype=data.dtype)
    array[:] = data
    chunk_bytes = 4 * 3 * 5 * 2
    cache = ChunkCache(3 * chunk_bytes)
    keys = [(1, slice(2, 7), slice(None), slice(3, None)), (-1, 0, slice(1, 9), slice(0, 11)),
            (0,), (slice(0, 2), slice(3, 4), 9, slice(4, 6)), (1, slice(8, 20))]
    for key in keys * 2:
        np.testing.assert_array_equal(cache.read(array, key), data[key], err_msg=str(key))
        assert cache.held <= cache.budget
    assert cache.read(array, (0, slice(5, 5))) is None and cache.read(array, (slice(0, 2, 2),)) is None
    small = ChunkCache(1)  # keeps no chunk, still reads right
    np.testing.assert_array_equal(small.read(array, keys[0]), data[keys[0]])
    assert small.held == 0


def test_a_reader_pickles_its_budget_not_its_chunks(tmp_path):
    write_ome_zarr(tmp_path / "in.zarr", np.ones((8, 16, 16), np.float32), chunks=(1, 16, 16))
    reader = open_lazy(tmp_path / "in.zarr").reader
    reader.cache_chunks(10**6)
    np.testing.assert_array_equal(reader.read((slice(0, 8), slice(2, 9))), 1.0)
    assert reader._cache.held == 8 * 16 * 16 * 4
    copy = pickle.loads(pickle.dumps(reader))  # as a dask.distributed worker gets it
    assert copy.cache_budget == 10**6 and copy._cache is None and len(pickle.dumps(reader)) < 1000
    np.testing.assert_array_equal(copy.read((slice(0, 2),)), 1.0)
    assert copy._cache.held == 2 * 16 * 16 * 4
    reader.cache_chunks(0)
    assert reader._cache is None and reader.read((0, 0, 0)) == pytest.approx(1.0)


def test_a_read_decodes_only_the_chunks_the_cache_does_not_hold(tmp_path, monkeypatch):
    """Found in review: a read decoded the bounding box of the chunks it missed, so the chunks held
    inside that box (planes 3-5 here, or those between two evicted ones) were decoded again."""
    data = np.arange(9 * 16 * 16, dtype=np.float32).reshape(9, 16, 16)
    array = zarr.create_array(tmp_path / "in.zarr", name="0", shape=data.shape, chunks=(1, 8, 16), dtype=data.dtype)
    array[:] = data
    fetched = _count_chunk_fetches(monkeypatch)
    cache = ChunkCache(10**7)
    for key in [(slice(3, 6),), (slice(1, 2), slice(8, 16)), (slice(0, 9),)]:
        np.testing.assert_array_equal(cache.read(array, key), data[key])
    assert len(fetched) == 18 and set(fetched.values()) == {1}, fetched
    assert cache.held == data.nbytes


def test_a_cached_read_holds_little_beside_the_chunks_it_keeps(tmp_path):
    """Found in review: the first read decoded all the chunks it missed into one box and then
    copied each into the cache, both alive at once: twice the memory the run's plan counts (a
    --memory-limit run of one-plane chunks peaked at 1153 MiB under 980 MB)."""
    array = zarr.create_array(tmp_path / "in.zarr", shape=(32, 256, 256), chunks=(1, 256, 256), dtype=np.float32)
    array[:] = 1.0
    array[0, 0, 0]  # (zarr's first read sets itself up)
    cache = ChunkCache(10**8)
    tracemalloc.start()
    try:
        block = cache.read(array, (slice(None), slice(0, 4), slice(0, 4)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cache.held == 32 * 256 * 256 * 4 and block.shape == (32, 4, 4) and (block == 1).all()
    assert peak - cache.held < cache.held / 2, (peak, cache.held)


class _SlowArray:
    """An 8 x 8 array of four chunks whose reads wait for ``go`` (and, given ``fail``, fail where they
    include one of its first three chunks)."""

    def __init__(self, fail: bool):
        self.data = np.arange(64, dtype=np.uint16).reshape(8, 8)
        self.shape, self.chunks, self.dtype = self.data.shape, (2, 8), self.data.dtype
        self.fail, self.calls, self.go = fail, [], threading.Event()

    def __getitem__(self, key):
        self.calls.append(key)
        assert self.go.wait(10)
        if self.fail and key[0].start < 6:
            raise ValueError("damaged chunk")
        return self.data[key]


@pytest.mark.parametrize("fail", [False, True])
def test_threads_wait_for_the_chunks_another_decodes_and_share_its_failure(fail):
    array, cache, results = _SlowArray(fail), ChunkCache(10**6), {}

    def read(name, key):
        try:
            results[name] = np.array_equal(cache.read(array, key), array.data[key])
        except ValueError as exc:
            results[name] = str(exc)

    threads = [threading.Thread(target=read, args=("first", (slice(0, 6),)))]
    threads[0].start()
    while len(cache._pending) < 3:  # the first holds chunks 0-2 before the second starts
        threads[0].join(0.001)
    threads.append(threading.Thread(target=read, args=("second", (slice(2, 8),))))
    threads[1].start()
    while len(cache._pending) < 4:
        threads[1].join(0.001)
    array.go.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads) and cache._pending == {}
    if fail:  # the second, waiting for chunks 1 and 2, read them itself
        assert results == {"first": "damaged chunk", "second": "damaged chunk"}
    else:  # chunk 2, claimed by the first, was read once
        assert results == {"first": True, "second": True} and len(array.calls) == 2
