"""An output path that is the PSF is refused naming it as the PSF, not as "the input"."""

import numpy as np
import pytest

from deconv3d.cli._common import check_output
from deconv3d.errors import InputError
from deconv3d.io import write_tiff


@pytest.fixture
def files(tmp_path):
    write_tiff(tmp_path / "image.tif", np.ones((6, 12, 12)) + 0.1, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", np.ones((3, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    return tmp_path / "image.tif", tmp_path / "psf.tif"


def test_check_output_names_a_psf_as_the_psf_and_the_image_as_the_input(files):
    image, psf = files
    with pytest.raises(InputError, match=f"^output path equals the PSF {psf}: choose another output name$"):
        check_output(psf, [image, psf], psfs=[psf])
    with pytest.raises(InputError, match=f"^output path equals the input {image}: "):
        check_output(image, [image, psf], psfs=[psf, None])
    check_output(image.with_name("out.tif"), [image, psf], psfs=[psf])  # another name: taken


def test_check_output_names_a_psf_inside_the_output_folder_as_the_psf(files, tmp_path):
    image, _ = files
    out = tmp_path / "out.zarr"
    (out / "psfs").mkdir(parents=True)
    psf = out / "psfs" / "psf.tif"
    write_tiff(psf, np.ones((3, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    with pytest.raises(InputError, match=f"^output {out} and PSF {psf} lie one inside the other: choose an output "
                                         "outside the PSF, and not one that contains it$"):
        check_output(out, [image, psf], psfs=[psf])


@pytest.mark.parametrize("route", [[], ["--chunks", "6", "12", "12"]], ids=["in-memory", "chunked"])
def test_deconvolve_refuses_an_output_that_is_its_psf_naming_the_psf(files, capsys, route):
    from cli_helpers import run

    image, psf = files
    before = psf.read_bytes()
    code, _, err = run(["deconvolve", image, "--psf", psf, "-o", psf, "--iterations", "2", *route], capsys)
    assert code == 2 and err.strip().splitlines() == [f"deconv3d: error: output path equals the PSF {psf}: "
                                                      "choose another output name"], err
    assert psf.read_bytes() == before
