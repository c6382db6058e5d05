"""The layout of deconv3d's OME-Zarr outputs (bounded chunks that every block writes whole) and their names."""

import numpy as np
import pytest

from cli_helpers import run
from deconv3d.io import read_image, write_tiff
from deconv3d.omezarr import read_ome_zarr, write_ome_zarr

from .conftest import gaussian_psf


def test_a_whole_volume_run_stores_bounded_chunks_equal_to_its_tiff(tmp_path, monkeypatch, capsys):
    """An image that fits in memory runs as one block: it was stored as one chunk (16 x 1024 x 1024:
    64 MB that a viewer decoded whole for any tile)."""
    import zarr

    monkeypatch.chdir(tmp_path)
    image = np.random.default_rng(0).poisson(50, (3, 530, 520)).astype(np.float32)
    write_tiff("img.tif", image, voxel_size=(0.3, 0.1, 0.1))
    write_tiff("psf.tif", gaussian_psf((3, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    for output in ("out.tif", "out.zarr"):
        code, out, err = run(["deconvolve", "img.tif", "--psf", "psf.tif", "--method", "wiener", "-o", output], capsys)
        assert code == 0, err
    assert "1 block(s)" in out  # the zarr output's run: one block, the whole volume
    stored = zarr.open_array("out.zarr/0", mode="r")
    assert stored.chunks == (3, 512, 512) and stored.nchunks == 4
    np.testing.assert_array_equal(read_ome_zarr("out.zarr")[0], read_image("out.tif").data)


def test_pyramid_levels_are_chunked_within_the_cap(tmp_path):
    """A level took its level-0 chunk whole where that chunk was larger than the cap."""
    import zarr

    data = np.random.default_rng(1).random((1, 1030, 1100)).astype(np.float32)
    write_ome_zarr(tmp_path / "p.zarr", data, chunks=data.shape, pyramid_levels=1)
    level1 = zarr.open_array(str(tmp_path / "p.zarr" / "1"), mode="r")
    assert level1.shape == (1, 515, 550) and level1.chunks == (1, 512, 512)
    np.testing.assert_allclose(level1[0, 100, 200], data[0, 200:202, 400:402].mean(), rtol=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_blocks_longer_than_the_cap_write_whole_chunks_of_their_own(tmp_path, workers):
    """A block side above the cap is cut to whole stored chunks: 683 (prime) had no divisor up to
    512 but 1; each chunk keeps one writer, so concurrent blocks lose nothing."""
    import zarr

    from deconv3d.pipeline import plan_chunks, run_chunked
    from deconv3d.pipeline.chunked import sides_in_whole_chunks, stored_chunks

    assert sides_in_whole_chunks((683, 100, 40), (2048, 300, 40), (512, 64, 512)) == (682, 100, 40)
    assert stored_chunks((2048, 300, 40), (682, 100, 40), (512, 64, 512)) == (341, 50, 40)
    image = np.random.default_rng(2).random((2, 1400, 6)).astype(np.float32)
    info = run_chunked(image, lambda block: block * 2, tmp_path / "b.zarr", chunks=(2, 683, 6), workers=workers)
    stored = zarr.open_array(str(tmp_path / "b.zarr" / "0"), mode="r").chunks
    sizes = plan_chunks(image.shape, info.chunks, (0, 0, 0))[0]
    assert info.chunks == (2, 682, 6) and stored == (2, 341, 6) and sizes[1] == (682, 682, 36)
    np.testing.assert_array_equal(read_ome_zarr(tmp_path / "b.zarr")[0], image * 2)


def test_blocks_enlarged_to_their_halo_past_the_cap_write_whole_chunks(tmp_path):
    """Blocks were cut to whole chunks before being enlarged to the halo: chunks of 40 planes with a
    halo of 73 (a Gaussian PSF's in z) made blocks of 73 planes, whose only divisor up to 64 is 1, and
    the output of 200 planes was stored in 200 chunks of one plane. The enlarged side is rounded to
    whole chunks (up, as cutting it down would leave it shorter than the halo)."""
    import zarr
    from scipy.ndimage import uniform_filter1d

    from deconv3d.pipeline import plan_chunks, run_chunked

    image = np.random.default_rng(4).random((200, 16, 16)).astype(np.float32)

    def smooth(block):  # (a reach of one plane: blocks with their halo give the whole image's result)
        return uniform_filter1d(block, 3, axis=0, mode="nearest")

    info = run_chunked(image, smooth, tmp_path / "h.zarr", chunks=(40, 16, 16), halo=(73, 0, 0))
    stored = zarr.open_array(str(tmp_path / "h.zarr" / "0"), mode="r")
    assert info.chunks[0] >= 73 and info.chunks[0] % stored.chunks[0] == 0
    assert stored.chunks == (37, 16, 16) and stored.nchunks == 6
    assert plan_chunks(image.shape, info.chunks, info.halo)[0][0] == (74, 126)
    np.testing.assert_array_equal(read_ome_zarr(tmp_path / "h.zarr")[0], smooth(image))


def test_an_ome_zarr_output_is_named_as_a_batch_names_it(tmp_path, monkeypatch, capsys):
    """``-o out.ome.zarr`` named the image 'out.ome' (napari's layer name); a batch writing the
    output of ``out.ome.tif`` named it 'out'."""
    import zarr

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    write_tiff("in/cell.t001.ome.tif", np.random.default_rng(3).poisson(20, (6, 16, 16)).astype(np.float32),
               voxel_size=(0.3, 0.1, 0.1))
    write_tiff("psf.tif", gaussian_psf((3, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    names = {}
    for argv, output in ((["deconvolve", "in/cell.t001.ome.tif", "-o", "cell.t001.ome.zarr"], "cell.t001.ome.zarr"),
                         (["batch", "in", "-o", "out"], "out/cell.t001.zarr")):
        code, _, err = run(argv + ["--psf", "psf.tif", "--method", "wiener"], capsys)
        assert code == 0, err
        names[output] = zarr.open_group(output, mode="r").attrs["ome"]["multiscales"][0]["name"]
    assert names == {"cell.t001.ome.zarr": "cell.t001", "out/cell.t001.zarr": "cell.t001"}
    write_ome_zarr(tmp_path / "w.OME.ZARR", np.ones((4, 4), np.float32))
    assert zarr.open_group(str(tmp_path / "w.OME.ZARR"), mode="r").attrs["ome"]["multiscales"][0]["name"] == "w"


class _TallHalo:
    """A block callable whose halo (70 planes) is longer than the stored chunks' cap of 64."""

    def __call__(self, block):
        return block

    def chunk_multiple(self):
        return 16

    def halo(self):
        return (70, 0, 0)


def test_chunks_a_limit_chooses_fit_it_as_the_run_takes_them(monkeypatch):
    """Blocks enlarged to their halo and rounded up to whole stored chunks (80 planes run as 96)
    went over a --memory-limit that had chosen them; chunks given smaller than the halo were told to
    be smaller still."""
    from deconv3d.errors import InputError
    from deconv3d.pipeline import MemoryModel
    from deconv3d.pipeline.planning import spatial_plan
    from deconv3d.pipeline.memory_model import RESIDENT_ALLOWANCE

    monkeypatch.setattr("deconv3d.pipeline.planning.planning_baseline", lambda: 0)
    model = MemoryModel("rl", (141, 9, 9))
    shape, cap = (400, 64, 64), (64, 512, 512)
    fitted = 0
    for limit in RESIDENT_ALLOWANCE + model.block_bytes((231, 16, 16), (96, 16, 16)) * np.linspace(0.95, 1.6, 27):
        try:
            chunks, _, predicted, _ = spatial_plan(shape, [_TallHalo()], None, None, int(limit), model, 1, cap=cap)
        except InputError as exc:
            assert "too small" in str(exc)
            continue
        fitted += 1
        assert predicted <= limit, (chunks, predicted, limit)
    assert fitted >= 20

    low = int(RESIDENT_ALLOWANCE + model.block_bytes((231, 16, 16), (96, 16, 16)) * 0.99)
    with pytest.raises(InputError, match=r"chunks \(32, 16, 16\) run as \(96, 16, 16\) .* use --memory-limit"):
        spatial_plan(shape, [_TallHalo()], (32, 16, 16), None, low, model, 1, cap=cap)


def test_sides_in_whole_chunks_keeps_its_own_sides():
    """A plan made of its sides is planned again as it is: the run re-plans the chunks a memory limit
    chose, and a side of 272 (axis 781, cap 64, multiple 16, halo 231) gave 240, then 256, which
    the limit had not judged."""
    from deconv3d.pipeline.chunked import sides_in_whole_chunks

    assert sides_in_whole_chunks((272,), (781,), (64,), 16, (231,)) == (256,)
    # (axes every 13 and halos every 19, odd steps prime to the grid of 16: both parities and every
    # residue; with every 7th axis and every 9th halo, four times the calls, this test took 15 s)
    for n in range(65, 900, 13):
        for h in range(0, n, 19):
            for m in (1, 16):
                settled = set()  # (many sides plan to the same one: each is planned again once, not per side)
                for c in range(8, n + 1, 5):
                    once = sides_in_whole_chunks((c,), (n,), (64,), m, (h,))
                    if once not in settled:
                        assert sides_in_whole_chunks(once, (n,), (64,), m, (h,)) == once, (c, n, h, m)
                        settled.add(once)
                    assert min(h, n) <= once[0] <= n


def test_sides_in_whole_chunks_ends_where_the_cap_is_not_a_multiple_of_the_grid():
    """A cap of 5 with a grid of 3 sent a side round 9, 12, 9, ... for ever (run_chunked hung); a
    cycle now ends at its largest side, whichever side it entered by, and no side passes the axis."""
    from deconv3d.pipeline.chunked import sides_in_whole_chunks

    assert sides_in_whole_chunks((9,), (13,), (5,), 3, (8,)) == sides_in_whole_chunks((12,), (13,), (5,), 3, (8,))
    for cap, m in ((5, 3), (64, 3), (64, 24), (7, 4), (64, 48)):
        for n in range(1, 220, 3):
            for h in range(0, n + 3, 4):
                settled = set()  # (each side the plans give is planned again once)
                for c in range(1, n + 2, 3):
                    once = sides_in_whole_chunks((c,), (n,), (cap,), m, (h,))
                    assert min(h, n) <= once[0] <= max(c, n), (c, n, h, cap, m)
                    if once not in settled:
                        assert sides_in_whole_chunks(once, (n,), (cap,), m, (h,)) == once, (c, n, h, cap, m)
                        settled.add(once)


def test_sides_in_whole_chunks_raises_where_its_step_never_settles(monkeypatch):
    """Its walk had no bound: a step that never repeats a side (as one that passes the axis) looped
    for ever, and this file's tests hung instead of failing. A side in 1..n settles within n steps. The
    error names the axis by its length ("an axis of 13"; "axis 13" read as the 14th axis)."""
    import deconv3d.pipeline.block_geometry as block_geometry

    calls = []

    def growing(c, n, k, m, h):
        calls.append(c)
        assert len(calls) < 10_000, "sides_in_whole_chunks kept stepping with no bound"
        return c + 1

    monkeypatch.setattr(block_geometry, "_whole_chunk_side", growing)
    said = r"^sides_in_whole_chunks: a side along an axis of 13 \(cap 5, grid 3, halo 8\) did not settle in 14 steps"
    with pytest.raises(RuntimeError, match=said):
        block_geometry.sides_in_whole_chunks((9,), (13,), (5,), 3, (8,))
    assert len(calls) == 14


def test_chunks_below_the_halo_are_told_what_they_run_as(monkeypatch):
    """Without a cap too: (32, 16, 16) with a halo of 70 runs as 70 planes, so 'give smaller chunks'
    sent the user to the same blocks again."""
    from deconv3d.errors import InputError
    from deconv3d.pipeline import MemoryModel
    from deconv3d.pipeline.planning import spatial_plan
    from deconv3d.pipeline.memory_model import RESIDENT_ALLOWANCE

    monkeypatch.setattr("deconv3d.pipeline.planning.planning_baseline", lambda: 0)
    model = MemoryModel("rl", (141, 9, 9))
    low = int(RESIDENT_ALLOWANCE + model.block_bytes((100, 16, 16), (70, 16, 16)) * 0.5)
    with pytest.raises(InputError, match=r"chunks \(32, 32, 32\) run as \(70, 32, 32\) \(no side below its halo "
                                         r"\(70, 0, 0\)\) .*: give smaller y/x sides, use --memory-limit"):
        spatial_plan((400, 64, 64), [_TallHalo()], (32, 32, 32), None, low, model, 1)
    # y and x at the grid of 16 cannot be smaller (they are rounded back up): no such advice
    with pytest.raises(InputError, match=r"run as \(70, 16, 16\) .* above the memory limit \d+: use --memory-limit"):
        spatial_plan((400, 64, 64), [_TallHalo()], (32, 16, 16), None, low, model, 1)
