"""OME-TIFF outputs of grey stacks whatever their x length."""

import numpy as np
import pytest
import tifffile
import zarr

from deconv3d._tiff_write import ZarrPlanes
from deconv3d.io import write_tiff

VOXEL = (0.5, 0.1, 0.2)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("width", [3, 4])
def test_an_ome_tiff_whose_x_axis_is_3_or_4_long_is_grey_not_rgb(tmp_path, width, lazy):
    """write_tiff (and write_hyperstack) refused such a stack: tifffile took its x axis for RGB(A) samples."""
    data = np.random.default_rng(2).random((5, 6, width), dtype=np.float32)
    array = zarr.zeros(data.shape, dtype="f4", chunks=(2, 6, width))
    array[:] = data
    write_tiff(tmp_path / "s.ome.tif", ZarrPlanes(array) if lazy else data, voxel_size=VOXEL)
    with tifffile.TiffFile(tmp_path / "s.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
