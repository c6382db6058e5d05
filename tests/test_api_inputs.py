"""The Python API as a notebook user calls it: inputs that used to give raw tracebacks, silently
wrong results or warnings now give one-line InputErrors or the documented behaviour."""

import warnings

import numpy as np
import pytest
import torch

from conftest import asymmetric_psf
from deconv3d.classical import richardson_lucy, wiener
from deconv3d.errors import InputError
from deconv3d.fft import resolve_device


@pytest.fixture
def image():
    return np.random.default_rng(0).random((10, 20, 22)).astype(np.float32) + 0.1


@pytest.fixture
def psf():
    return asymmetric_psf((3, 5, 3))


def test_a_psf_not_summing_to_one_gives_the_same_result(image, psf):
    """A bead PSF in camera counts scaled RL's result by 1/sum (7e-8 for a 0.017 mean) and Wiener's."""
    for method in (lambda h: richardson_lucy(image, h, 4, device="cpu"), lambda h: wiener(image, h, device="cpu")):
        unit, counts = method(psf), method(psf * 4000 + 0)
        np.testing.assert_allclose(counts, unit, rtol=1e-4, atol=1e-6 * float(unit.max()))


def test_voxel_size_one_number_is_isotropic_and_a_wrong_count_is_refused(image, psf):
    one = richardson_lucy(image, psf, 3, tv_weight=0.01, voxel_size=0.2, device="cpu")
    three = richardson_lucy(image, psf, 3, tv_weight=0.01, voxel_size=(0.2, 0.2, 0.2), device="cpu")
    np.testing.assert_array_equal(one, three)
    for bad in ((0.1,) * 4, (0.1, 0.1), (0.0, 0.1, 0.1), (float("nan"), 0.1, 0.1), "0.1",
                (True, 1, 1), True, np.array([True, True, True])):  # (True was taken for 1 µm)
        with pytest.raises(InputError, match="voxel size"):
            richardson_lucy(image, psf, 2, tv_weight=0.01, voxel_size=bad, device="cpu")


def test_training_refuses_a_non_finite_voxel_size(image, psf):
    from deconv3d.selfsup import TrainConfig, UNetConfig, train

    for bad in ((float("nan"), 0.1, 0.1), (float("inf"), 0.1, 0.1), 0.0):
        with pytest.raises(InputError, match="voxel size"):
            train(image, psf, config=TrainConfig(steps=1, patch=8, batch=1),
                  unet=UNetConfig(ndim=3, base_channels=2, depth=1), device="cpu", voxel_size=bad)


def test_writers_take_one_voxel_number_and_refuse_bad_ones(tmp_path, image):
    from deconv3d.io import read_image, write_tiff
    from deconv3d.omezarr import create_ome_zarr

    write_tiff(tmp_path / "iso.tif", image, voxel_size=0.25)
    assert read_image(tmp_path / "iso.tif").voxel_size == pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(InputError, match="voxel size"):
        write_tiff(tmp_path / "bad.tif", image, voxel_size=(0.1,) * 4)
    with pytest.raises(InputError, match="voxel size"):
        create_ome_zarr(tmp_path / "z.zarr", image.shape, image.shape, axes="ZYX", voxel_size=(0, 0.1, 0.1))
    assert not (tmp_path / "bad.tif").exists() and not (tmp_path / "z.zarr").exists()


def test_run_chunked_refuses_a_tiff_output_and_reports_the_blocks_it_used(tmp_path, image, psf):
    from deconv3d.pipeline import WienerBlock, run_chunked

    with pytest.raises(InputError, match=".zarr"):
        run_chunked(image, WienerBlock(psf), tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    # 4-plane chunks under a 6-plane halo: the blocks are enlarged to the halo, and RunInfo says so.
    info = run_chunked(image, WienerBlock(psf), tmp_path / "out.zarr", chunks=(4, 20, 22), halo=(6, 0, 0))
    assert info.chunks == (6, 20, 22) and info.blocks == 1 + (10 - 6 >= 6)


def test_read_only_arrays_give_no_warning(image, psf):
    frozen = image.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned: "The given NumPy array is not writable"
        out = richardson_lucy(frozen, psf, 2, device="cpu")
    np.testing.assert_array_equal(out, richardson_lucy(image, psf, 2, device="cpu"))


def test_device_names_are_checked_in_api_words():
    for bad in ("gpu", "mps", "meta"):
        with pytest.raises(InputError, match="'auto', 'cpu', 'cuda'"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device 'cuda' was requested"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_loading_a_checkpoint_onto_a_missing_gpu_does_not_call_the_file_damaged(tmp_path, image, psf):
    from deconv3d.selfsup import TrainConfig, UNetConfig, load_checkpoint, save_checkpoint, train

    result = train(image, psf, config=TrainConfig(steps=1, patch=8, batch=1, residual=False),
                   unet=UNetConfig(ndim=3, base_channels=2, depth=1), device="cpu")
    save_checkpoint(result, tmp_path / "m.ckpt")
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path / "m.ckpt", device="cuda")
    assert "no CUDA GPU" in str(info.value) and "damaged" not in str(info.value)
    # A checkpoint's path, or an image's, given where the loaded thing is needed (API review:
    # AttributeError "'str' object has no attribute 'steps_done'", and "the image is 0D").
    from deconv3d.latent import synthesize_blur
    from deconv3d.selfsup import apply_model

    for call, words in ((lambda: apply_model(str(tmp_path / "m.ckpt"), image), "^apply_model needs a trained network, "
                         "got the file name .*m.ckpt.*deconv3d.selfsup.load_checkpoint"),
                        (lambda: apply_model({"model": 1}, image), "^apply_model needs a trained network, got a dict"),
                        (lambda: apply_model(result, "x.tif"), "^got the file name 'x.tif' where an array is needed"),
                        (lambda: synthesize_blur(tmp_path / "ae.ckpt", image[0], image[1], [0.5]),
                         "^got the file name .*ae.ckpt.* deconv3d.latent.load_checkpoint")):
        with pytest.raises(InputError, match=words):
            call()


@pytest.mark.parametrize("kwargs, words", [
    ({"tol": "1e-3"}, "tol"), ({"tv_weight": None}, "tv_weight"), ({"dtype": torch.float16}, "dtype"),
    ({"dtype": np.float64}, "dtype"), ({"iterations": "5"}, "'5'"),
])
def test_wrongly_typed_rl_options_are_input_errors(image, psf, kwargs, words):
    kwargs = {"iterations": 2, **kwargs}
    with pytest.raises(InputError, match=words):
        richardson_lucy(image, psf, kwargs.pop("iterations"), device="cpu", **kwargs)


def test_complex_images_and_bad_balances_are_refused(image, psf):
    with pytest.raises(InputError, match="complex"):
        richardson_lucy(image.astype(np.complex64), psf, 2, device="cpu")
    for balance in ("0.1", None, float("nan")):
        with pytest.raises(InputError, match="balance"):
            wiener(image, psf, balance, device="cpu")
    with pytest.raises(InputError, match="^regularizer must be the name of one of .* a kernel array is not taken"):
        wiener(image, psf, regularizer=np.ones((3, 3, 3)), device="cpu")  # scikit-image's reg (API review)


def test_psf_generation_catches_nanometres_and_text():
    from deconv3d.psf import generate_psf, prepare_psf

    args = dict(model="gaussian", shape=(9, 15, 15), voxel_size=(0.3, 0.1, 0.1), na=1.2, wavelength=0.52)
    with pytest.raises(InputError, match="nanometres"):
        generate_psf(**{**args, "voxel_size": (300, 100, 100)})  # was a one-voxel delta
    with pytest.raises(InputError, match="NA must be a number"):
        generate_psf(**{**args, "na": "1.2"})
    with pytest.raises(InputError, match="image.shape"):
        prepare_psf(generate_psf(**args), np.zeros((20, 30, 30)))


def test_config_fields_of_the_wrong_type_are_input_errors():
    from deconv3d.latent import LatentTrainConfig
    from deconv3d.selfsup import TrainConfig

    for kwargs in ({"mask_percent": "1"}, {"ema": None}):
        with pytest.raises(InputError):
            TrainConfig(**kwargs)
    for kwargs in ({"steps": "3"}, {"steps": 2.5}, {"lr": "1e-3"}, {"latent_weight": None}):
        with pytest.raises(InputError):
            LatentTrainConfig(**kwargs)


def test_metrics_take_tensors_and_check_their_ranges(image):
    from deconv3d.metrics import psnr, psnr_rescaled, ssim

    truth = image / image.max()
    estimate = torch.tensor(truth * 0.9, requires_grad=True)
    assert psnr(truth, estimate) == pytest.approx(psnr(truth, truth * 0.9))
    with pytest.raises(InputError, match="scale it to"):
        psnr_rescaled(truth * 4000, truth * 4000)  # was -46 dB against 26 dB in [0, 1]
    with pytest.raises(InputError, match="win_size"):
        ssim(truth, truth, win_size=4)


def test_write_tiff_takes_a_tensor_that_needs_grad(tmp_path, image):
    from deconv3d.io import read_image, write_tiff

    write_tiff(tmp_path / "t.tif", torch.tensor(image, requires_grad=True))
    np.testing.assert_array_equal(read_image(tmp_path / "t.tif").data, image)


@pytest.mark.parametrize("bad, words", [
    ("stack.tif", "file name 'stack.tif' where an array is needed"),  # torch: can't convert numpy.str_
    (None, "NoneType of object values"),
    ([[1.0, 2.0], [3.0]], "cannot make an array of numbers from list"),  # numpy: setting an array element ...
])
def test_what_is_not_an_array_of_numbers_is_named(psf, bad, words):
    from deconv3d.classical import choose_iterations
    from deconv3d.fft import fft_convolve

    for call in (lambda: richardson_lucy(bad, psf, 2, device="cpu"), lambda: wiener(bad, psf, device="cpu"),
                 lambda: choose_iterations(bad, psf, 3, device="cpu"), lambda: fft_convolve(bad, psf)):
        with pytest.raises(InputError, match=words):
            call()


def test_background_subtracted_data_with_nothing_above_zero_is_warned_about(psf):
    """RL returned all zeros (and choose_iterations 1 iteration of zero risk) without a word. A
    warning, not the command line's refusal: a tile of such a volume can be all below zero, and
    zeros are RL's answer there; the pipeline's blocks skip RL for such a block (no warning)."""
    from deconv3d.classical import choose_iterations
    from deconv3d.pipeline import RichardsonLucyBlock

    below = np.random.default_rng(0).normal(0, 1, (6, 16, 16)).astype(np.float32) - 5
    for call in (lambda: richardson_lucy(below, psf, 3, device="cpu"),
                 lambda: choose_iterations(below, psf, 5, device="cpu")):
        with pytest.warns(RuntimeWarning, match="the image has no positive values, so Richardson-Lucy returns only "
                                                "zeros: add the subtracted offset back$"):
            call()
    # Wiener says nothing here (the command line refuses such an image): a block of a volume may be
    # all below zero, and its clipped ringing is part of the whole volume's linear estimate
    assert wiener(below, psf, device="cpu").shape == below.shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not richardson_lucy(np.zeros((6, 16, 16), np.float32), psf, 2, device="cpu").any()  # zeros: no word
        block = RichardsonLucyBlock(psf, iterations=3, accelerate=True)
        assert not block(below).any() and block.prepare(below, below.shape).accelerate == (0.0,) * 3
    holed = below.copy()
    holed[0, 0, 0] = np.nan  # a dark block with a NaN is not skipped as dark: RL refuses it, as before
    with pytest.raises(InputError, match="NaN"):
        block(holed)


def test_fft_convolve_refuses_what_rl_refuses(image, psf):
    """int32 truncated the PSF to 0 (an all-zero result), a NaN spread over the whole output,
    and a complex image lost its imaginary part with only torch's warning."""
    from deconv3d.fft import fft_convolve

    for kwargs, words in (({"dtype": torch.int32}, "dtype must be torch.float32 or torch.float64"),
                          ({"dtype": torch.float16}, "dtype must be torch.float32 or torch.float64"),
                          ({"dtype": np.float32}, "dtype must be a torch dtype")):
        with pytest.raises(InputError, match=words):
            fft_convolve(image, psf, **kwargs)
    holed = image.copy()
    holed[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="image contains NaN or Inf"):
        fft_convolve(holed, psf)
    with pytest.raises(InputError, match="PSF contains NaN or Inf"):
        fft_convolve(image, np.where(psf > psf.max() / 2, np.nan, psf))
    with pytest.raises(InputError, match="image has complex values"):
        fft_convolve(image.astype(np.complex64), psf)
    with pytest.raises(TypeError):  # device and dtype are keywords, as everywhere else in the API
        fft_convolve(image, psf, "same", "zero", "cpu")


@pytest.mark.parametrize("name", ["fft_convolve", "fft_correlate", "get_convolver"])
@pytest.mark.parametrize("bad, words", [
    ("psf.tif", "^got the file name 'psf.tif' where an array is needed: .*read_psf"),  # numpy: could not convert
    ([[1.0, 2.0], [3.0]], "^cannot make an array of numbers from list"),  # numpy: setting an array element
    (np.ones((3, 3), np.complex64), "^PSF has complex values"),  # ... after numpy's ComplexWarning
    (torch.ones((3, 3), dtype=torch.complex64), "^PSF has complex values"),  # ... after numpy's ComplexWarning
])
def test_fft_functions_name_what_is_not_a_psf(image, name, bad, words):
    """API review: the convolver cache hashed the PSF before any check, so a file name or ragged lists met
    numpy's ValueError and a complex PSF its ComplexWarning (an error under warnings-as-errors) first."""
    from deconv3d import fft

    call = fft.get_convolver if name == "get_convolver" else lambda p: getattr(fft, name)(image[0], p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=words):
            call(bad)


def test_complex_weights_clipped_flags_and_tensors_are_refused_not_cast(image, psf):
    """API review: complex ``weights`` and ``clipped`` maps, and a complex tensor given to fft_convolve (whose
    tensors are not checked), were cast to real with only torch's UserWarning, their imaginary parts
    dropped, where complex images and PSFs are refused; ``extended="no"`` returned the extended domain."""
    from deconv3d.fft import fft_convolve

    ones = np.ones(image.shape, np.complex64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Casting complex values to real discards the imaginary part"
        with pytest.raises(InputError, match="^weights has complex values: give real values"):
            richardson_lucy(image, psf, 2, weights=ones, device="cpu")
        with pytest.raises(InputError, match="^clipped has complex values: give real values"):
            richardson_lucy(image, psf, 2, clipped=torch.from_numpy(ones * 0), device="cpu")
        with pytest.raises(InputError, match="^the input has complex values: give real values .*torch.abs"):
            fft_convolve(torch.from_numpy(ones), psf)
        with pytest.raises(InputError, match="^extended must be True or False, got 'no'"):
            richardson_lucy(image, psf, 2, extended="no", device="cpu")


@pytest.mark.parametrize("name", ["richardson_lucy", "wiener", "fft_convolve", "fft_correlate"])
def test_float64_values_below_float32s_range_are_refused_not_zeroed(image, psf, name):
    """API review: a float64 image or PSF of peak 1e-45 was cast to float32 zeros and subnormals and came
    back as noise (fft_convolve 168 % off scipy's result, RL and Wiener likewise), where values beyond
    float32's range are refused. float64 computation takes them; an all-zero image stays accepted."""
    import deconv3d.fft

    run = {"richardson_lucy": lambda y, h, **k: richardson_lucy(y, h, 2, device="cpu", **k),
           "wiener": lambda y, h, **k: wiener(y, h, device="cpu", **k), "fft_convolve": deconv3d.fft.fft_convolve,
           "fft_correlate": deconv3d.fft.fft_correlate}[name]
    tiny_image, tiny_psf = image.astype(np.float64) * 1e-46, psf.astype(np.float64) * 1e-46
    kept = tiny_image.copy()
    with pytest.raises(InputError, match=r"^image has values below the range of torch.float32 .*: rescale it"):
        run(tiny_image, psf)
    with pytest.raises(InputError, match=r"^PSF has values below the range of torch.float32 .*: rescale it"):
        run(image, tiny_psf)
    np.testing.assert_array_equal(tiny_image, kept)
    wide = np.asarray(run(tiny_image, psf, dtype=torch.float64))
    np.testing.assert_allclose(wide * 1e46, np.asarray(run(image.astype(np.float64), psf, dtype=torch.float64)),
                               rtol=1e-9)
    assert not np.asarray(run(np.zeros_like(tiny_image), psf)).any()


def test_validate_psf_refuses_values_below_float32s_range():
    from deconv3d.psf import center_psf, validate_psf

    for call in (validate_psf, center_psf):
        with pytest.raises(InputError, match=r"^PSF values up to 1e-45 are too small for float32"):
            call(np.full((3, 3), 1e-45))


@pytest.mark.parametrize("name", ["fft_convolve", "fft_correlate"])
def test_fft_convolve_refuses_an_overflow_as_wiener_does(image, psf, name):
    """A float64 image of 1e40 (beyond float32) and float32 ones of 1e37 and 3e38 (whose transform's
    zero frequency sums past 3.4e38) came back all NaN without a word, where Wiener refuses them.
    (Richardson-Lucy refuses the first only: it runs float32 data of such peaks divided by a power of
    two, and refuses a result that float32 cannot hold, as test_classical checks.)"""
    import deconv3d.fft

    apply = getattr(deconv3d.fft, name)
    unit = image.astype(np.float64) / image.max()
    with pytest.raises(InputError, match="^image has values beyond the range of torch.float32"):
        apply(unit * 1e40, psf)
    with pytest.raises(InputError, match="^PSF has values beyond the range of torch.float32"):
        apply(image, psf.astype(np.float64) * 1e40)
    for peak in (1e37, 3e38):
        with pytest.raises(InputError, match="^the result overflowed torch.float32: .* rescale it"):
            apply((unit * peak).astype(np.float32), psf)
        with pytest.raises(InputError, match="^the result overflowed torch.float32: .* rescale it"):
            wiener((unit * peak).astype(np.float32), psf, device="cpu")
    np.testing.assert_allclose(apply(unit * 1e40, psf, dtype=torch.float64).numpy(),  # float64 holds it
                               1e40 * apply(unit, psf, dtype=torch.float64).numpy(), rtol=1e-12)


@pytest.mark.parametrize("method", ["convolve", "correlate"])
def test_fft_convolver_refuses_the_arrays_fft_convolve_refuses(image, psf, method):
    """Found by review: FFTConvolver (public: deconv3d.FFTConvolver) spread one NaN of an array over
    its whole output, and a float32 array of 1e37 came back all NaN, where fft_convolve refuses both;
    the check is now the convolver's own, which fft_convolve goes through. A tensor is not checked, as
    by fft_convolve."""
    from deconv3d.fft import FFTConvolver

    apply = getattr(FFTConvolver(psf), method)
    holed = image.copy()
    holed[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="image contains NaN or Inf"):
        apply(holed)
    unit = image.astype(np.float64) / image.max()
    with pytest.raises(InputError, match="^image has values beyond the range of torch.float32"):
        apply(unit * 1e40)
    with pytest.raises(InputError, match="^the result overflowed torch.float32: .* rescale it"):
        apply((unit * 1e37).astype(np.float32))
    with pytest.raises(InputError, match="image has complex values"):
        apply(image.astype(np.complex64))
    assert torch.isnan(apply(torch.from_numpy(holed))).all()  # a tensor: no extra pass


def test_an_image_of_one_plane_under_a_3d_psf_is_told_to_go_2d(image, psf):
    """Found by review: a 1 x Y x X image with a 3D PSF was told to "crop the PSF", which no crop along z
    fits (a PSF of one plane is no 3D PSF); the fix is a 2D image with a 2D PSF, its in-focus plane.
    An image of two planes still gets the crop."""
    from deconv3d.psf import prepare_psf
    from deconv3d.selfsup import TrainConfig, train

    plane, thick = image[:1], np.pad(psf, ((1, 1), (0, 0), (0, 0)))  # (1, 20, 22) and a 5-plane PSF
    for call in (lambda y: richardson_lucy(y, thick, 2, device="cpu"), lambda y: wiener(y, thick, device="cpu"),
                 lambda y: prepare_psf(thick, y.shape), lambda y: train(y, thick, config=TrainConfig(steps=1),
                                                                        device="cpu")):
        with pytest.raises(InputError, match=r"\(1, 20, 22\).*: an image of one plane is 2D: give it as a 2D array "
                                             r"\(image\[0\]\) with a 2D PSF, the in-focus plane") as refused:
            call(plane)
        assert "crop" not in str(refused.value)
        with pytest.raises(InputError, match="crop the PSF"):
            call(image[:2])


def test_small_validation_gaps(image, psf):
    from deconv3d.classical import choose_iterations
    from deconv3d.io import read_image
    from deconv3d.latent import deblur, synthetic_focal_stacks
    from deconv3d.metrics import psnr
    from deconv3d.psf import generate_psf, prepare_psf
    from deconv3d.selfsup.predict import predict_tiled

    class Identity:
        divisor = 1
        encode = decode = staticmethod(lambda x: x)

    cases = [
        (lambda: choose_iterations(image, psf, 3, seed="a", device="cpu"), "seed must be a whole number"),
        (lambda: prepare_psf(psf, image.shape, energy="0.9"), "energy must be a number in"),
        (lambda: prepare_psf(psf, (20, -64, 64)), r"image_shape must be 2 or 3 positive integers"),
        (lambda: generate_psf("gaussian", (9.7, 17, 17), 0.1, 1.2, 0.52), r"PSF shape must be .* got \(9\.7"),
        (lambda: richardson_lucy(image, psf, True, device="cpu"), "iterations must be a non-negative integer"),
        (lambda: richardson_lucy(image, psf, 2, callback=5, device="cpu"), "callback must be a function"),
        (lambda: psnr(image, image + 0.1, data_range=-1), "data_range must be a positive number"),
        (lambda: psnr(image, image + 0.1, data_range=True), "data_range must be a positive number"),
        (lambda: psnr(np.where(image > 0.5, np.nan, image), image), "reference has NaN or Inf"),
        # API review: TypeError, IndexError, or a value that read as valid
        (lambda: choose_iterations(image, psf, 3, holdout="0.1", device="cpu"), r"got '0\.1'"),
        (lambda: choose_iterations(image, psf, 3, patience=True, device="cpu"), "patience must be a positive"),
        (lambda: read_image(image), "read_image takes a file's path, got ndarray"),
        (lambda: deblur(Identity(), image[0], image[1], None), "alpha must be a number between 0 and 1"),
        (lambda: synthetic_focal_stacks(1, 16), r"shape must be the plane's \(height, width\), got 16"),
        (lambda: predict_tiled(torch.nn.Identity(), image, mean=0.0, std=1.0, divisor=1, context=2.5, device="cpu"),
         "context must be a non-negative whole number of voxels, got 2.5"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words):
            call()
    assert generate_psf("gaussian", (9.0, 17, 17), 0.1, 1.2, 0.52).shape == (9, 17, 17)  # a whole float is fine
    span = torch.tensor(float(image.max() - image.min()))  # a 0-d tensor or array, as t.max() - t.min() gives
    assert psnr(image, image + 0.1, data_range=span) == psnr(image, image + 0.1, data_range=np.array(float(span)))


def test_fit_psf_crops_a_half_precision_psf_and_takes_a_list():
    """API review: a float16 PSF's crop summed to Inf and came back all zero, without an error; a
    list failed with "'list' object has no attribute 'shape'"."""
    from deconv3d.psf import fit_psf

    half = fit_psf(np.full((9, 31, 31), 100, np.float16), (5, 16, 16))
    assert half.dtype == np.float32 and half.shape == (5, 16, 16) and half.sum() == pytest.approx(1.0)
    assert fit_psf(np.ones((3, 5, 5)).tolist(), (3, 3, 3)).shape == (3, 3, 3)
    kept = np.ones((3, 5, 5), np.float32)
    assert fit_psf(kept, (8, 8, 8)) is kept  # a PSF that fits: as it is, no copy


def test_a_single_focal_stack_names_how_to_train_on_it():
    from deconv3d.latent import LatentTrainConfig, synthetic_focal_stacks, train

    stacks, levels = synthetic_focal_stacks(1, (64, 64), levels=(0, 2, 4))
    with pytest.raises(InputError, match=r"LatentTrainConfig\(val_fraction=0\)"):
        train(stacks[0], levels, config=LatentTrainConfig(steps=1), device="cpu")


def test_tensors_that_require_grad_are_taken_where_arrays_are(psf):
    """API review: the PSF functions, the network's train/apply_model and the autoencoder's functions
    failed on such a tensor with "Can't call numpy() on Tensor that requires grad", where the
    classical functions took it."""
    from deconv3d import psf as psfs
    from deconv3d.latent import AEConfig, deblur, synthesize_blur
    from deconv3d.latent.model import build_autoencoder
    from deconv3d.selfsup import TrainConfig, UNetConfig, apply_model, train

    grad = lambda a: torch.tensor(np.asarray(a, np.float32), requires_grad=True)  # noqa: E731
    kernel = grad(psf)
    for call in (lambda p: psfs.validate_psf(p), lambda p: psfs.normalize_psf(p), lambda p: psfs.center_psf(p),
                 lambda p: psfs.crop_psf(p), lambda p: psfs.fit_psf(p, (3, 3, 3)),
                 lambda p: psfs.resample_psf(p, (0.2, 0.1, 0.1), (0.2, 0.1, 0.1)),
                 lambda p: psfs.prepare_psf(p, (10, 20, 22))):
        np.testing.assert_array_equal(call(kernel), call(np.asarray(psf, np.float32)))
    image = np.random.default_rng(0).random((24, 24)).astype(np.float32) + 0.1
    flat = np.ones((3, 3), np.float32) / 9
    result = train(grad(image), grad(flat), config=TrainConfig(steps=1, patch=8, batch=1, residual=False),
                   unet=UNetConfig(ndim=2, base_channels=2, depth=1), device="cpu")
    assert apply_model(result, grad(image), device="cpu").shape == image.shape
    ae = build_autoencoder(AEConfig(widths=(4, 8), crop=16))
    planes = np.random.default_rng(1).random((2, 16, 16)).astype(np.float32)
    assert synthesize_blur(ae, grad(planes[0]), grad(planes[1]), [0.5]).shape == (1, 16, 16)
    assert deblur(ae, grad(planes[0]), grad(planes[1]), 0.5).shape == (16, 16)


@pytest.mark.parametrize("empty", ["image", "PSF"])
def test_an_empty_image_or_psf_is_named_as_empty(image, psf, empty):
    """An empty image was told that the PSF (1, 1, 1) is larger than the image (0, 5, 5), 'crop
    the PSF'; fft_convolve with an empty kernel returned all zeros."""
    from deconv3d.classical import choose_iterations, rl_alpha_schedule
    from deconv3d.fft import fft_convolve

    x, h = (image[:0], np.ones((1, 1, 1))) if empty == "image" else (image, psf[:, :0])
    given = x.copy(), h.copy()
    calls = [lambda: richardson_lucy(x, h, 2, device="cpu"), lambda: wiener(x, h, device="cpu"),
             lambda: choose_iterations(x, h, 3, device="cpu"), lambda: rl_alpha_schedule(x, h, 2, device="cpu")]
    if empty == "PSF":
        calls.append(lambda: fft_convolve(x, h))
    for call in calls:
        with pytest.raises(InputError, match=f"^{empty} is empty \\(shape \\("):
            call()
    np.testing.assert_array_equal(x, given[0])
    np.testing.assert_array_equal(h, given[1])


def test_a_zero_dimensional_image_is_called_0d(psf):
    """numpy's ascontiguousarray made a scalar 1D: 'image must be 2D or 3D, got 1D'."""
    with pytest.raises(InputError, match="got 0D"):
        richardson_lucy(np.float32(3), psf, 2, device="cpu")


@pytest.mark.parametrize("bad, words", [
    ("psf.tif", "^got the file name 'psf.tif' where an array is needed: .*read_psf"),  # numpy: could not convert
    (None, "^the PSF has non-numeric values"),  # "PSF sum is not positive"
    ([[1.0, 2.0], [3.0]], "^cannot make an array of numbers from the PSF"),  # numpy: setting an array element
    (np.zeros((0, 3)), r"^PSF is empty \(shape \(0, 3\)\)"),  # "PSF sum is not positive"
    (np.ones((3, 3), complex), "^the PSF has complex values"),  # "the input has complex values"
])
def test_normalize_psf_names_what_is_not_a_psf(bad, words):
    from deconv3d.psf import normalize_psf

    with pytest.raises(InputError, match=words):
        normalize_psf(bad)


def test_prepare_psf_takes_fit_image_as_a_bool_only():
    """API review: prepare_psf(fit_image="no") refused a PSF larger than the image, as True does."""
    from deconv3d.psf import prepare_psf

    psf = asymmetric_psf((9, 5, 5))
    with pytest.raises(InputError, match="^fit_image must be True or False, got 'no'"):
        prepare_psf(psf, (3, 16, 16), fit_image="no")
    assert prepare_psf(psf, (3, 16, 16), fit_image=np.False_).shape[0] > 3


_NOT_ARRAYS = [("psf.tif", "^got the file name 'psf.tif' where an array is needed: .*read_psf"),
               (None, "^the PSF has non-numeric values"), ([[1.0, 2.0], [3.0]], "^cannot make an array of numbers from")]
_NOT_PSFS = [(np.full((5, 5), np.nan), "^PSF contains NaN or Inf values"),
             (np.ones((5, 5)) - 0.5 * np.eye(5) - 0.6, r"^PSF has negative values \(min"),
             (np.zeros((5, 5)), "^PSF is all zero"), (np.ones(5), "^PSF (must be a non-empty 2D or 3D array|is 1D)")]


#: What each PSF function takes of _NOT_PSFS, or refuses in other words: fit_psf crops any numbers; normalize_psf
#: scales any shape whose sum is positive, and refuses an all-zero PSF as "PSF sum is not positive".
_TAKEN = {"fit_psf": _NOT_PSFS, "normalize_psf": _NOT_PSFS[1:]}


@pytest.mark.parametrize("call, bad, words", [
    (call, bad, words)
    for call in ("validate_psf", "center_psf", "crop_psf", "resample_psf", "prepare_psf", "fit_psf", "normalize_psf")
    for bad, words in _NOT_ARRAYS + _NOT_PSFS if not any(bad is b for b, _ in _TAKEN.get(call, []))])
def test_every_psf_function_names_what_is_not_a_psf(call, bad, words):
    """API review: center_psf and crop_psf took NaN ("PSF sum is not positive", with numpy's warnings),
    negative PSFs (crop_psf returned negative values), 1D ones and None ("`pad_width` must be of integral
    type"); validate_psf, center_psf, crop_psf and resample_psf met a file name or ragged lists with
    numpy's "could not convert string to float"; fit_psf returned a file name as an array; prepare_psf
    called it "PSF is 0D"; normalize_psf called NaN "PSF sum is not positive"."""
    from deconv3d import psf as psfs

    run = {"resample_psf": lambda p: psfs.resample_psf(p, 0.1, 0.2), "prepare_psf": lambda p: psfs.prepare_psf(p, (9, 9)),
           "fit_psf": lambda p: psfs.fit_psf(p, (3, 3))}.get(call, getattr(psfs, call))
    given = bad.copy() if isinstance(bad, np.ndarray) else bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's invalid-value warnings came with the refusal
        with pytest.raises(InputError, match=words):
            run(bad)
    if isinstance(bad, np.ndarray):
        np.testing.assert_array_equal(bad, given)


@pytest.mark.parametrize("mode, padding", [("same", "zero"), ("full", "zero"), ("same", "circular"),
                                           ("same", "reflect")])
def test_fft_convolve_names_an_empty_image_as_empty(psf, mode, padding):
    """An empty image was convolved into an empty result, refused as smaller than the PSF (full,
    circular: 'FFT shape (2, 7, 8) is smaller than the PSF') or met torch's RuntimeError (reflect)."""
    from deconv3d.fft import fft_convolve, fft_correlate

    for call in (fft_convolve, fft_correlate):
        if mode == "full" and call is fft_correlate:
            continue
        with pytest.raises(InputError, match=r"^input is empty \(shape \(0, 5, 5\)\): give one with"):
            call(np.zeros((0, 5, 5), np.float32), psf, mode=mode, padding=padding)
