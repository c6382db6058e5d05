"""Misuses of the Python API an API review found: each used to run on with a wrong result, a
file deconv3d could not reopen, or a deep internal error, and is now refused (or warned about)
with one line that names the fix, or done correctly."""

import numpy as np
import pytest

from conftest import asymmetric_psf
from deconv3d.errors import InputError


@pytest.fixture
def image():
    return np.random.default_rng(0).random((10, 16, 18)).astype(np.float32) + 0.1


@pytest.fixture
def psf():
    return asymmetric_psf((3, 5, 3))


@pytest.mark.parametrize("axes", ["XYZ", "zxy", "CTZYX", "ZYXC", "ZZX"])
def test_run_chunked_refuses_axes_out_of_tczyx_order(tmp_path, image, psf, axes):
    """axes="XYZ" ran the PSF's z along x (0.22 of the peak off) and wrote an image whose axes
    open_lazy refuses; the letters are labels, so another order is refused before any work."""
    from deconv3d.omezarr import open_lazy, write_ome_zarr
    from deconv3d.pipeline import WienerBlock, run_chunked

    data = image if len(axes) == 3 else image[None, None] if len(axes) == 5 else image[..., None]
    with pytest.raises(InputError, match=r"\(T\)\(C\)ZYX order"):
        run_chunked(data, WienerBlock(psf), tmp_path / "o.zarr", axes=axes)
    with pytest.raises(InputError, match=r"\(T\)\(C\)ZYX order"):
        write_ome_zarr(tmp_path / "w.zarr", data, axes=axes)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "w.zarr").exists()
    run_chunked(image[None], WienerBlock(psf), tmp_path / "ok.zarr", axes="czyx")  # in order, any case
    assert open_lazy(tmp_path / "ok.zarr").axes == "CZYX"
