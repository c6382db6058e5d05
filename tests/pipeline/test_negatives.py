"""What the scan for positive and negative values reads of an input before a chunked run's first block."""

import dask.array as da
import numpy as np
import tifffile

from deconv3d.omezarr import open_lazy
from deconv3d.pipeline import negatives
from deconv3d.pipeline.readers import DaskReader


def test_the_scan_reads_a_plane_and_a_spread_sample_not_two_slabs(tmp_path, monkeypatch):
    """Found by the performance review: a 96 x 384 x 384 TIFF had 58 % of its planes read before
    the first block (a 16 MiB slab with the first positive voxel, then one halfway through the
    rest that only served the negative-share warning). Here a slab is 16 planes and the sample 4."""
    monkeypatch.setattr(negatives, "SCAN_SLAB_BYTES", 4 * 32 * 32 * 16)
    monkeypatch.setattr(negatives, "SHARE_SAMPLE_BYTES", 4 * 32 * 32 * 4, raising=False)
    image = np.random.default_rng(1).normal(0, 1, (48, 32, 32)).astype(np.float32)  # a subtracted offset
    tifffile.imwrite(tmp_path / "in.tif", image)
    lazy = open_lazy(tmp_path / "in.tif")
    planes, read = [], lazy.reader.read
    monkeypatch.setattr(lazy.reader, "read", lambda key: planes.extend(range(key[0].start, key[0].stop)) or read(key))
    found = []
    negatives.check_has_positive(lazy, "in.tif", "rl", found)
    assert planes == [0, 6, 18, 30, 42]  # the first (it has a positive voxel), 4 spread over the rest
    share = np.mean(image[planes] < 0)
    assert len(found) == 1 and f"{share:.0%} of in.tif's voxels in a sample are negative" in found[0], found
    # Chunks of 8 planes: the first chunk (it has one), then one plane of one other chunk: each
    # chunk is decoded once at most.
    planes.clear()
    chunked = DaskReader(da.from_array(image, chunks=(8, 32, 32)))
    monkeypatch.setattr(chunked, "read", lambda key, read=chunked.read: planes.extend(
        range(key[0].start, key[0].stop)) or read(key))
    negatives.check_has_positive(chunked, "in.zarr", "rl", [])
    assert planes == list(range(8)) + [28]
