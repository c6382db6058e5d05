"""The memory model picks chunk shapes that fit a budget; a network's chunks follow its pooling grid."""

import numpy as np
import pytest

from deconv3d.errors import InputError
from deconv3d.pipeline.memory import MemoryModel, choose_chunks, largest_block, round_chunks


def test_choose_chunks_fits_the_limit_and_prefers_large_blocks():
    model = MemoryModel("rl", (9, 9, 9))
    shape, halo = (64, 256, 256), (8, 8, 8)
    whole = model.peak_bytes(shape, halo, shape)
    chunks = choose_chunks(shape, whole // 3, model, halo)
    assert model.peak_bytes(chunks, halo, shape) <= whole // 3
    assert chunks != shape and max(largest_block(shape, chunks, halo)) > 2 * 8
    assert choose_chunks(shape, 2 * whole, model, halo) == shape
    with pytest.raises(InputError, match="--memory-limit"):
        choose_chunks(shape, 1000, model, halo)


def test_network_chunks_are_multiples_of_its_divisor():
    model = MemoryModel("ssl", (5, 5, 5), base_channels=16)
    shape, halo = (50, 300, 300), (16, 16, 16)
    limit = model.peak_bytes((40, 120, 120), halo, shape)
    chunks = choose_chunks(shape, limit, model, halo, multiple=8)
    assert model.peak_bytes(chunks, halo, shape) <= limit
    assert all(c % 8 == 0 or c == n for c, n in zip(chunks, shape)), chunks
    assert round_chunks((30, 27, 300), (50, 300, 300), 8) == (32, 32, 300)
    assert round_chunks((45, 1, 299), (50, 300, 300), 8) == (48, 8, 300)  # never past the axis


def test_reflect_rl_counts_its_mirrored_block():
    """The reflect boundary mirrors the block by the PSF half-size before the Bertero model."""
    bertero, reflect = MemoryModel("rl", (9, 9, 9)), MemoryModel("rl", (9, 9, 9), boundary="reflect")
    assert reflect.block_bytes((32, 64, 64)) == bertero.block_bytes((40, 72, 72))


def test_the_memory_baseline_is_measured_after_the_blocks_load_their_libraries(monkeypatch):
    """The numba passes hold about 110 MB once loaded; measured before them, the baseline let a
    run exceed its --memory-limit by that much."""
    import deconv3d.pipeline as pipeline
    from deconv3d.pipeline import RichardsonLucyBlock

    events = []

    class Block:
        def load(self):
            events.append("load")

    def rss():
        events.append("rss")
        return 100 * 2**20

    monkeypatch.setattr(pipeline, "current_rss", rss)
    pipeline._spatial_plan((32, 64, 64), [Block()], None, (4, 4, 4), "2GB", MemoryModel("rl", (9, 9, 9)), 1)
    assert events[0] == "load" and "rss" in events
    RichardsonLucyBlock(np.ones((3, 3, 3), np.float32) / 27).load()  # loads the element-wise backend, no error
