"""What run_blocks' blocks report of their cores (BlockFigures): gathered over the blocks, the whole volume's
figures; only the request travels with a block's task."""

import pickle

import numpy as np
import zarr

from deconv3d._saturation import face_reach, near_faces, top_two
from deconv3d.pipeline.chunked import BlockFigures, FigureRequest, run_blocks


def test_blocks_gather_the_whole_volumes_figures(tmp_path):
    """Tops, counts at a level and those near the faces, each block's core counted once (the halo not)."""
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 20, (8, 12, 12)).astype(np.float32)
    reach = face_reach((3, 4, 5))  # ((1, 1), (2, 1), (2, 2))
    zarr.create_array(str(tmp_path / "out.zarr"), shape=volume.shape, chunks=(4, 6, 6), dtype="f4", fill_value=0)
    figures = BlockFigures(tops=[], counts=[], nears=[], level=15.0, faces=(15.0, reach))
    written = run_blocks(volume, lambda b: b, tmp_path / "out.zarr", chunks=(4, 6, 6), halo=(1, 2, 2), workers=2,
                         figures=figures)
    assert written == len(figures.tops) == len(figures.counts) == len(figures.nears) == 8
    assert sorted(figures.tops) == sorted(top_two(volume[z:z + 4, y:y + 6, x:x + 6])
                                          for z in (0, 4) for y in (0, 6) for x in (0, 6))
    assert sum(figures.counts) == np.count_nonzero(volume >= 15)
    assert sum(figures.nears) == np.count_nonzero((volume >= 15) & near_faces(volume.shape, reach)) > 0


def test_a_level_without_its_list_asks_nothing_and_the_request_pickles():
    assert BlockFigures(level=3.0, faces=(3.0, ((1, 1),))).request() is None
    assert BlockFigures(tops=[], level=3.0).request() == FigureRequest(True, None, None)
    request = BlockFigures(counts=[], nears=[], level=3.0, faces=(3.0, ((1, 1),))).request()
    assert pickle.loads(pickle.dumps(request)) == request == FigureRequest(False, 3.0, (3.0, ((1, 1),)))
