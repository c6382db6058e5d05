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
    # the first plane for itself, the 4 sampled ones for the 47 planes after it
    share = (np.sum(image[0] < 0) + np.sum(image[planes[1:]] < 0) * 47 / 4) / image.size
    assert len(found) == 1 and f"{share:.0%} of in.tif's voxels in a sample are negative" in found[0], found
    # Chunks of 8 planes: the first chunk (it has one), then one plane of one other chunk: each
    # chunk is decoded once at most.
    planes.clear()
    chunked = DaskReader(da.from_array(image, chunks=(8, 32, 32)))
    monkeypatch.setattr(chunked, "read", lambda key, read=chunked.read: planes.extend(
        range(key[0].start, key[0].stop)) or read(key))
    negatives.check_has_positive(chunked, "in.zarr", "rl", [])
    assert planes == list(range(8)) + [28]


def test_the_share_weighs_the_sample_by_the_planes_it_stands_for(monkeypatch):
    """Found by the review of the scan above: planes read before the first positive voxel were
    counted whole and the few sampled after it as only themselves, so 8 % negative voxels (8
    negative planes first of 96) were warned as 36 %. Here 4 of 48 planes, slabs of 16, a sample of 4."""
    monkeypatch.setattr(negatives, "SCAN_SLAB_BYTES", 4 * 32 * 32 * 16)
    monkeypatch.setattr(negatives, "SHARE_SAMPLE_BYTES", 4 * 32 * 32 * 4, raising=False)
    image = np.random.default_rng(2).poisson(20, (48, 32, 32)).astype(np.float32) + 1
    image[:4] = -1
    found = []
    negatives.check_has_positive(image, "in.tif", "rl", found)
    assert len(found) == 1 and "8% of in.tif's voxels in a sample are negative" in found[0], found
