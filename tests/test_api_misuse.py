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


def test_prepare_psf_warns_when_only_the_image_voxel_size_is_given(tmp_path):
    """README's recipe with a PSF file saved without calibration (voxel size None) used the 50 nm PSF
    on 100 nm pixels unresampled, (9, 13, 13) where (9, 7, 7) is right, without a word."""
    import tifffile

    from deconv3d.io import psf_voxel_size, read_psf
    from deconv3d.psf import prepare_psf

    kernel = asymmetric_psf((9, 25, 25))
    tifffile.imwrite(tmp_path / "psf.tif", kernel)
    measured = read_psf(tmp_path / "psf.tif")
    assert measured.voxel_size is None
    with pytest.warns(RuntimeWarning, match=r"psf_voxel=None.*pass psf_voxel"):
        used = prepare_psf(measured.data, (16, 32, 32), psf_voxel=measured.voxel_size, image_voxel=(0.3, 0.1, 0.1))
    np.testing.assert_array_equal(used, prepare_psf(kernel, (16, 32, 32)))  # taken as sampled like the image
    assert prepare_psf(kernel, (16, 32, 32), psf_voxel=(0.3, 0.05, 0.05), image_voxel=(0.3, 0.1, 0.1)).shape[1] < \
        used.shape[1]
    # the command line, which warns itself that it takes such a PSF as sampled like the image, passes
    # the image's voxel size for it: the same PSF, and no second warning
    assert psf_voxel_size(measured, (0.3, 0.1, 0.1)) == (0.3, 0.1, 0.1)


@pytest.mark.parametrize("padding", ["zero", "reflect", "circular"])
def test_fft_convolve_is_differentiable_with_respect_to_the_psf(padding):
    """fft_convolve detached the PSF: pt.grad stayed None after backward, so PSF fitting never moved.
    The PSF's gradient now matches finite differences (torch.autograd.gradcheck), for the
    convolution and the correlation, and the shared convolver cache keeps no graph."""
    import torch

    from deconv3d.fft import FFTConvolver, fft_convolve, fft_correlate, get_convolver

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.random((6, 7)), requires_grad=True)
    kernel = torch.tensor(rng.random((3, 4)), requires_grad=True)
    for op in (fft_convolve, fft_correlate):
        assert torch.autograd.gradcheck(lambda a, h: op(a, h, padding=padding, dtype=torch.float64), (x, kernel))
    assert not get_convolver(kernel, "cpu", torch.float64).psf.requires_grad
    # an FFTConvolver of a kernel being fitted follows its values from step to step (no stale cached OTF)
    conv = FFTConvolver(kernel, dtype=torch.float64)
    for _ in range(2):
        kernel.grad = None
        conv.convolve(x, padding=padding).square().sum().backward()
        fresh = kernel.detach().clone().requires_grad_()  # the function: a new convolver per call
        expected = torch.autograd.grad(fft_convolve(x, fresh, padding=padding, dtype=torch.float64).square().sum(),
                                       fresh)[0]
        torch.testing.assert_close(kernel.grad, expected)
        with torch.no_grad():
            kernel -= 0.1 * kernel.grad


def test_writers_keep_coarse_voxel_sizes_the_readers_accept(tmp_path, image, psf):
    """A 50 µm ImageJ stack reads as (50, 50, 50) µm, but write_tiff, write_ome_zarr and run_chunked
    refused that size as nanometres, so 'blur deblur' on such a stack ran its network and then failed
    at the write; the writers keep what they are given (the command line checks sizes users type)."""
    import tifffile

    from deconv3d.io import read_image, write_tiff
    from deconv3d.omezarr import open_lazy, write_ome_zarr
    from deconv3d.pipeline import WienerBlock, run_chunked

    tifffile.imwrite(tmp_path / "coarse.tif", image, imagej=True, resolution=(1 / 50, 1 / 50),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 50})
    coarse = read_image(tmp_path / "coarse.tif")
    assert coarse.voxel_size == pytest.approx((50, 50, 50))
    write_tiff(tmp_path / "back.tif", coarse.data, coarse.voxel_size)
    back = read_image(tmp_path / "back.tif")
    assert back.voxel_size == pytest.approx((50, 50, 50)) and np.array_equal(back.data, image)
    write_ome_zarr(tmp_path / "coarse.zarr", image, voxel_size=coarse.voxel_size)
    lazy = open_lazy(tmp_path / "coarse.zarr")
    assert lazy.voxel_size == pytest.approx((50, 50, 50))
    run_chunked(lazy, WienerBlock(psf), tmp_path / "run.zarr", voxel_size=lazy.voxel_size)
    assert open_lazy(tmp_path / "run.zarr").voxel_size == pytest.approx((50, 50, 50))


def test_a_stack_of_one_row_reads_as_a_zx_section(tmp_path, psf):
    """read_image (and open_lazy) called a (4, 1, 10) stack "YX" with voxel (0.3, 0.1): the z step
    as the y pixel size. Its letters are now ZX, and a chunked run writes them."""
    from deconv3d.io import read_image, write_tiff
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import WienerBlock, run_chunked

    write_tiff(tmp_path / "row.tif", np.random.default_rng(0).random((4, 1, 10)) + 0.1, (0.3, 0.1, 0.1))
    for image in (read_image(tmp_path / "row.tif"), open_lazy(tmp_path / "row.tif")):
        assert (image.axes, image.data.shape) == ("ZX", (4, 10))
        assert image.voxel_size == pytest.approx((0.3, 0.1))
    run_chunked(open_lazy(tmp_path / "row.tif"), WienerBlock(psf[1]), tmp_path / "o.zarr", voxel_size=(0.3, 0.1))
    assert open_lazy(tmp_path / "o.zarr").axes == "ZX"
    write_tiff(tmp_path / "plane.tif", np.ones((1, 6, 10)), (0.3, 0.1, 0.1))
    assert read_image(tmp_path / "plane.tif").axes == open_lazy(tmp_path / "plane.tif").axes == "YX"


@pytest.mark.parametrize("extra", [[], ["--chunks", 8, 16]])
def test_a_zx_section_written_to_a_tiff_reads_back_as_zx(tmp_path, capsys, extra):
    """deconvolve of a (16, 1, 32) stack, read as a ZX section at (0.3, 0.1), wrote a TIFF that read
    back as YX at (0.3, 0.1) (a .zarr output kept ZX): write_tiff labelled every 2D image YX. It
    takes the section's axes now, in memory and chunked (--chunks), with the .zarr output's data."""
    from cli_helpers import run
    from deconv3d.io import read_image, write_tiff
    from deconv3d.omezarr import open_lazy

    rng = np.random.default_rng(0)
    section, kernel = rng.random((16, 32)) + 0.1, asymmetric_psf((3, 5))
    write_tiff(tmp_path / "row.tif", section[:, None], (0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", kernel, (0.3, 0.1), axes="ZX")
    assert read_image(tmp_path / "psf.tif").axes == "ZX"  # (the API: a section given as such)
    for out in ("out.tif", "out.zarr"):
        code, _, err = run(["deconvolve", tmp_path / "row.tif", "-o", tmp_path / out, "--method", "wiener",
                            "--psf", tmp_path / "psf.tif", *extra], capsys)
        assert code == 0, err
    for out in (read_image(tmp_path / "out.tif"), open_lazy(tmp_path / "out.tif")):
        assert (out.axes, out.data.shape) == ("ZX", (16, 32))
        assert out.voxel_size == pytest.approx((0.3, 0.1))
    zarr = open_lazy(tmp_path / "out.zarr")
    assert zarr.axes == "ZX"
    np.testing.assert_allclose(read_image(tmp_path / "out.tif").data, np.asarray(zarr.data), atol=1e-5)
    with pytest.raises(InputError, match="axes 'XZ'.*ZX"):
        write_tiff(tmp_path / "bad.tif", section, axes="XZ")


@pytest.mark.parametrize("make, words", [
    (lambda h: __import__("deconv3d.pipeline").pipeline.RichardsonLucyBlock(h, iterations=-1), "iterations"),
    (lambda h: __import__("deconv3d.pipeline").pipeline.RichardsonLucyBlock(h, iterations=2.5), "iterations"),
    (lambda h: __import__("deconv3d.pipeline").pipeline.RichardsonLucyBlock(h, boundary="mirror"), "boundary"),
    (lambda h: __import__("deconv3d.pipeline").pipeline.RichardsonLucyBlock(h, tv_weight=-1), "tv_weight"),
    (lambda h: __import__("deconv3d.pipeline").pipeline.RichardsonLucyBlock(h, accelerate=2), "accelerate"),
    (lambda h: __import__("deconv3d.pipeline").pipeline.WienerBlock(h, balance=0), "balance .*try 1e-3"),
    (lambda h: __import__("deconv3d.pipeline").pipeline.WienerBlock(h, balance=-1), "balance .*try 1e-3"),
])
def test_block_options_are_refused_when_the_block_is_made(psf, make, words):
    """iterations=-1 and balance=0 or -1 ended in "math domain error" or ZeroDivisionError in the halo rules."""
    with pytest.raises(InputError, match=words):
        make(psf)


@pytest.mark.parametrize("options", [dict(chunks=8), dict(chunks=(4, 8.5, 8)), dict(halo=(-1, 0, 0)),
                                     dict(halo=2), dict(workers=0), dict(workers=-1), dict(workers=2.5),
                                     dict(workers=True), dict(pyramid_levels=2.5), dict(pyramid_levels=-1)])
def test_run_chunked_refuses_sizes_that_are_not_whole_numbers_in_range(tmp_path, image, psf, options):
    """chunks=8 and pyramid_levels=2.5 raised TypeError deep inside; halo=(-1, 0, 0) gave a result 0.16
    of the peak off, and workers=0 or 2.5 and pyramid_levels=-1 ran as something else."""
    from deconv3d.pipeline import WienerBlock, run_chunked

    name = next(iter(options))
    with pytest.raises(InputError, match=f"{name} must be"):
        run_chunked(image, WienerBlock(psf), tmp_path / "o.zarr", **options)
    assert not list(tmp_path.iterdir())


def test_run_chunked_takes_a_tensor_that_requires_grad(tmp_path, image, psf):
    """richardson_lucy took such a tensor; run_chunked failed with "Can't call numpy() on Tensor that requires grad"."""
    import torch
    import zarr

    from deconv3d.classical import wiener
    from deconv3d.pipeline import WienerBlock, run_chunked

    run_chunked(torch.tensor(image, requires_grad=True), WienerBlock(psf), tmp_path / "o.zarr")
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "o.zarr" / "0"))[:], wiener(image, psf, device="cpu"),
                               rtol=0, atol=1e-6)


def test_configs_given_as_dicts_are_named():
    """A dict for a config failed with "'dict' object has no attribute 'residual'" (selfsup.train) or
    "... 'val_fraction'" (latent.train)."""
    from deconv3d import latent, selfsup

    image, flat = np.random.default_rng(0).random((24, 24)).astype(np.float32) + 0.1, np.ones((3, 3)) / 9
    with pytest.raises(InputError, match=r"config must be a TrainConfig, got dict: pass TrainConfig\(\*\*config\)"):
        selfsup.train(image, flat, config={"steps": 2}, device="cpu")
    with pytest.raises(InputError, match=r"unet must be a UNetConfig"):
        selfsup.train(image, flat, config=selfsup.TrainConfig(steps=1), unet={"ndim": 2}, device="cpu")
    stacks, levels = latent.synthetic_focal_stacks(2, (16, 16), levels=(0, 2, 4), seed=0)
    with pytest.raises(InputError, match=r"config must be a LatentTrainConfig.*LatentTrainConfig\(\*\*config\)"):
        latent.train(stacks, levels, {"steps": 2}, latent.AEConfig(widths=(4, 8), crop=16), device="cpu")
    with pytest.raises(InputError, match=r"ae_config must be an AEConfig"):
        latent.train(stacks, levels, latent.LatentTrainConfig(steps=1), {"crop": 16}, device="cpu")


def test_a_checkpoint_saved_to_a_folder_is_refused_by_name(tmp_path):
    """save_checkpoint(model, folder) raised IsADirectoryError naming a hidden temporary file."""
    from deconv3d import latent, selfsup
    from deconv3d.latent.model import build_autoencoder
    from deconv3d.selfsup.unet import ResUNet

    unet = selfsup.UNetConfig(ndim=2, base_channels=2, depth=1)
    network = selfsup.TrainedModel(ResUNet(unet), unet, selfsup.TrainConfig(residual=False), 0.0, 1.0,
                                   np.ones((3, 3), np.float32) / 9)
    ae = latent.AEConfig(widths=(4, 8), crop=16)
    autoencoder = latent.TrainedAutoencoder(build_autoencoder(ae), ae, latent.LatentTrainConfig(),
                                            np.array([0.0, 2.0, 4.0]))
    for save, model in ((selfsup.save_checkpoint, network), (latent.save_checkpoint, autoencoder)):
        with pytest.raises(InputError, match=f"{tmp_path} is a folder: give a file name for the checkpoint"):
            save(model, tmp_path)
        save(model, tmp_path / "m.ckpt")
        assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]


def test_a_memory_limit_without_a_model_names_the_fix_and_bad_values_are_shown_short(tmp_path, psf):
    """The memory-limit error did not say to pass a MemoryModel, and said the same for "lots" and -1;
    Settings(psf=array) put the whole array, over many lines, into its message."""
    from deconv3d.pipeline import MemoryModel, RichardsonLucyBlock, run_chunked
    from deconv3d.pipeline.settings import Settings

    image = np.ones((8, 16, 16), np.float32)
    with pytest.raises(InputError, match=r"pass model=MemoryModel\(method, psf.shape\)"):
        run_chunked(image, RichardsonLucyBlock(psf, iterations=1), tmp_path / "o.zarr", memory_limit="4GB")
    for limit, words in (("lots", "cannot read memory limit 'lots'"), (-1, "memory limit must be positive")):
        for chunks in (None, (4, 16, 16)):
            with pytest.raises(InputError, match=words):
                run_chunked(image, RichardsonLucyBlock(psf, iterations=1), tmp_path / "o.zarr", memory_limit=limit,
                            chunks=chunks, model=MemoryModel("rl", psf.shape))
    with pytest.raises(InputError) as refused:
        Settings(psf=np.ones((9, 15, 15)))
    assert "\n" not in str(refused.value) and "ndarray of shape (9, 15, 15)" in str(refused.value)
    assert len(str(refused.value)) < 200
    assert not list(tmp_path.iterdir())


def test_complex_input_is_refused_wherever_richardson_lucy_refuses_it(tmp_path, image, psf):
    """The PSF functions, distill_psf, the network's and the autoencoder's functions and run_chunked
    cast complex input to real with only numpy's ComplexWarning; Richardson-Lucy refused it."""
    import warnings

    from deconv3d import latent, selfsup
    from deconv3d import psf as psfs
    from deconv3d.latent.model import build_autoencoder
    from deconv3d.pipeline import WienerBlock, run_chunked
    from deconv3d.selfsup.unet import ResUNet

    kernel, volume, plane = psf.astype(np.complex64), image.astype(np.complex64), image[0].astype(np.complex64)
    unet = selfsup.UNetConfig(ndim=2, base_channels=2, depth=1)
    network = selfsup.TrainedModel(ResUNet(unet), unet, selfsup.TrainConfig(residual=False), 0.5, 0.3,
                                   np.ones((3, 3), np.float32) / 9)
    ae = build_autoencoder(latent.AEConfig(widths=(4, 8), crop=16))
    calls = [lambda: psfs.validate_psf(kernel), lambda: psfs.normalize_psf(kernel), lambda: psfs.center_psf(kernel),
             lambda: psfs.crop_psf(kernel), lambda: psfs.fit_psf(kernel, (3, 3, 3)),
             lambda: psfs.resample_psf(kernel, (0.2, 0.1, 0.1), (0.3, 0.1, 0.1)),
             lambda: psfs.prepare_psf(kernel, image.shape), lambda: psfs.distill_psf(volume, (3, 5, 5)),
             lambda: selfsup.train(plane, np.ones((3, 3)) / 9, config=selfsup.TrainConfig(steps=1), unet=unet,
                                   device="cpu"),
             lambda: selfsup.apply_model(network, plane, device="cpu"),
             lambda: latent.train(np.zeros((2, 3, 16, 16), np.complex64), (0, 2, 4), latent.LatentTrainConfig(steps=1),
                                  latent.AEConfig(widths=(4, 8), crop=16), device="cpu"),
             lambda: latent.synthesize_blur(ae, plane[:, :16], plane[:, :16], [0.5]),
             lambda: latent.deblur(ae, plane[:, :16], plane[:, :16], 0.5),
             lambda: run_chunked(volume, WienerBlock(psf), tmp_path / "o.zarr")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning would fail the call rather than pass it
        for call in calls:
            with pytest.raises(InputError, match="has complex values: give real intensities"):
                call()
    assert not list(tmp_path.iterdir())


def test_sizes_that_are_not_whole_numbers_are_refused():
    """AEConfig(crop=16.5) became 16 and apply_model(tile_shape=2.5) ran with tiles of 2."""
    from deconv3d import latent, selfsup
    from deconv3d.selfsup.unet import ResUNet

    with pytest.raises(InputError, match="crop must be a whole number"):
        latent.AEConfig(widths=(4, 8), crop=16.5)
    assert latent.AEConfig(widths=(4, 8), crop=np.int64(16)).crop == 16
    unet = selfsup.UNetConfig(ndim=2, base_channels=2, depth=1)
    network = selfsup.TrainedModel(ResUNet(unet), unet, selfsup.TrainConfig(residual=False), 0.5, 0.3,
                                   np.ones((3, 3), np.float32) / 9)
    plane = np.random.default_rng(0).random((12, 12)).astype(np.float32)
    for tiles in (2.5, (4, 4.5)):
        with pytest.raises(InputError, match="tile_shape must be whole numbers of voxels"):
            selfsup.apply_model(network, plane, device="cpu", tile_shape=tiles)
    whole = selfsup.apply_model(network, plane, device="cpu")
    np.testing.assert_allclose(selfsup.apply_model(network, plane, device="cpu", tile_shape=(12, np.int64(12))), whole)


def test_complex_input_is_refused_in_one_form_everywhere(tmp_path, image, psf):
    """Complex input was refused by three helpers in three forms ("got complex values where real
    intensities are needed", "image is complex", "image ... has complex values"); one helper
    (deconv3d._arrays.refuse_complex) now names what holds them and the fix, for arrays, tensors and files."""
    import tifffile
    import torch

    from deconv3d.classical import richardson_lucy
    from deconv3d.io import read_image
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import WienerBlock, run_chunked

    tifffile.imwrite(tmp_path / "c.tif", image.astype(np.complex64))
    calls = {"image": lambda: richardson_lucy(image.astype(np.complex64), psf, 1, device="cpu"),
             "PSF": lambda: richardson_lucy(image, torch.from_numpy(psf.astype(np.complex64)), 1, device="cpu"),
             "the image": lambda: run_chunked(image.astype(np.complex64), WienerBlock(psf), tmp_path / "o.zarr"),
             f"image {tmp_path / 'c.tif'}": lambda: read_image(tmp_path / "c.tif"),
             f"image {tmp_path / 'c.tif'} ": lambda: open_lazy(tmp_path / "c.tif")}
    for name, call in calls.items():
        with pytest.raises(InputError) as error:
            call()
        assert str(error.value).startswith(f"{name.strip()} has complex values: "), error.value
        assert "magnitude" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("value, whole", [(3, True), (np.int64(3), True), (2.5, False), (True, False),
                                          (np.bool_(True), False), ("3", False), (3.0, False)])
def test_options_that_count_share_one_whole_number_test(tmp_path, image, psf, value, whole):
    """Whether an option is a whole number (an integer, a numpy one too, not a bool) was tested in
    four places (run_chunked, Settings, the tile planner, AEConfig.crop); they share
    deconv3d._arrays.is_whole now and agree on every kind of value."""
    from deconv3d._arrays import is_whole
    from deconv3d.latent import AEConfig
    from deconv3d.pipeline import WienerBlock, run_chunked
    from deconv3d.pipeline.batch import make_settings
    from deconv3d.selfsup.tiling import _per_axis

    assert is_whole(value) is whole and is_whole(value, 4) is False and is_whole(4, 4) is True
    calls = [lambda: run_chunked(image, WienerBlock(psf), tmp_path / f"o{value!r}.zarr", workers=value),
             lambda: make_settings({"psf_model": "gaussian", "na": 1.2, "wavelength": 0.5, "pyramid_levels": value}),
             lambda: _per_axis(value, 3, "tile_shape"),
             lambda: AEConfig(widths=(4,), crop=2 * value if whole else value)]
    for call in calls:
        if whole:
            call()
        else:
            with pytest.raises(InputError):
                call()


@pytest.mark.parametrize("lazy", [False, True])
def test_a_zy_section_or_a_stack_one_pixel_wide_is_written_as_one_page_per_plane(tmp_path, lazy):
    """tifffile's ImageJ mode took an x axis of one for the samples and dropped it: a ZY section (or a
    (z, y, 1) stack, streamed from zarr) became one (z, y) page under a header of z planes, which
    read_image refused as corrupt, and a hyperstack of such planes (C, Z, Y) lost its channels."""
    import tifffile
    import zarr

    from deconv3d._tiff_hyperstack import write_hyperstack
    from deconv3d.io import read_image, write_tiff

    rng = np.random.default_rng(5)
    section, channels = rng.uniform(1, 9, (4, 6)).astype(np.float32), rng.uniform(1, 9, (3, 4, 6)).astype(np.float32)
    if lazy:
        stack = zarr.create_array(str(tmp_path / "s.zarr"), shape=(4, 6, 1), chunks=(2, 6, 1), dtype="f4")
        stack[:] = section[..., None]
        write_tiff(tmp_path / "zy.tif", stack, (0.3, 0.1, 0.1))
    else:
        write_tiff(tmp_path / "zy.tif", section, (0.3, 0.1), axes="ZY")
    back = read_image(tmp_path / "zy.tif")
    assert back.axes == "ZY" and np.array_equal(back.data.reshape(4, 6), section)
    write_hyperstack(tmp_path / "czy.tif", channels, "CZY", (0.3, 0.1), slab_bytes=24 if lazy else None)
    with tifffile.TiffFile(tmp_path / "czy.tif") as tif:
        assert len(tif.pages) == 12 and tif.imagej_metadata["images"] == 12
        np.testing.assert_array_equal(tif.series[0].asarray().reshape(4, 3, 6), channels.transpose(1, 0, 2))


@pytest.mark.parametrize("crop, hint", [(50, "give crop 48 or 64, or fewer widths"), (8, "give crop 16, or fewer")])
def test_a_crop_that_is_not_a_multiple_of_the_autoencoders_divisor_is_refused_with_crops_that_work(crop, hint):
    """The refusal named the rule as code ('2**len(widths)'); it now says why and which crops work."""
    from deconv3d import latent

    with pytest.raises(InputError, match=r"crop \d+ must be a positive multiple of 16 \(the autoencoder halves the "
                                         r"planes once per width, 4 widths\): " + hint):
        latent.AEConfig(widths=(4, 8, 16, 32), crop=crop)
    assert latent.AEConfig(widths=(4, 8, 16, 32), crop=48).crop == 48
