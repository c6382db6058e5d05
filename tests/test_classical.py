import numpy as np
import pytest
import scipy.signal
import torch
from skimage.restoration import richardson_lucy as skimage_rl

from conftest import asymmetric_psf
from deconv3d.classical import richardson_lucy, wiener
from deconv3d.errors import InputError
from deconv3d.metrics import psnr
from deconv3d.synthetic import add_noise, blur, phantom

SHAPES = [((40, 44), (7, 5)), ((14, 30, 28), (5, 7, 5))]


def blurred(truth, psf):
    return np.clip(scipy.signal.fftconvolve(truth, psf, mode="same"), 0, None).astype(np.float32)


@pytest.mark.parametrize("shape,kshape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_boundary_equals_skimage(rng, shape, kshape, dtype):
    psf = asymmetric_psf(kshape).astype(dtype)
    image = blurred(rng.random(shape), psf).astype(dtype)
    ours = richardson_lucy(image, psf, 15, boundary="zero", device="cpu",
                           dtype=torch.float64 if dtype == np.float64 else torch.float32)
    reference = skimage_rl(image, psf, num_iter=15, clip=False)
    assert ours.dtype == dtype and ours.shape == image.shape
    assert np.abs(ours - reference).max() <= 1e-4 * reference.max()


@pytest.mark.parametrize("shape, support", [((20, 22), (slice(0, 1), slice(0, 2))),
                                            ((8, 12, 14), (slice(2, 5), slice(3, 5), slice(0, 2)))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_boundary_psf_short_of_its_origin_on_one_side(shape, support, dtype):
    """Numerics review: a PSF whose support stops short of its origin on one side (zero rows at one
    end: padded, or cut off centre) leaves faces of the image no voxel sends light to. Exact RL
    ignores their data, but the FFT path divided by the ratio floor there, and the round-off of
    those huge ratios spread over the whole image: 7-14 % of the peak in float32 and float64."""
    from scipy.ndimage import convolve, correlate

    psf = np.zeros((3, 5, 5)[-len(shape):])
    psf[support] = np.random.default_rng(2).random(psf[support].shape) + 0.5
    psf /= psf.sum()
    y = np.random.default_rng(1).random(shape) + 0.05
    u = np.full(shape, y.mean())  # exact spatial RL, zero boundary, origin (k - 1) // 2 as deconv3d's
    for _ in range(5):
        hu = convolve(u, psf, mode="constant", origin=0)
        u = u * correlate(np.divide(y, hu, out=np.zeros(shape), where=hu > 1e-300), psf, mode="constant")
    ours = richardson_lucy(y.astype(dtype), psf.astype(dtype), 5, boundary="zero", device="cpu",
                           dtype=torch.float64 if dtype == np.float64 else torch.float32)
    assert np.abs(ours - u).max() <= (1e-5 if dtype == np.float32 else 1e-12) * u.max()


def test_flipped_psf_would_be_detected(rng):
    """The asymmetric PSF makes the comparison sensitive to a convolution/correlation mix-up."""
    psf = asymmetric_psf((5, 7, 5))
    image = blurred(rng.random((14, 30, 28)), psf)
    ours = richardson_lucy(image, psf[::-1, ::-1, ::-1].copy(), 15, boundary="zero", device="cpu")
    reference = skimage_rl(image, psf, num_iter=15, clip=False)
    assert np.abs(ours - reference).max() > 1e-2 * reference.max()


def noisy_problem(shape, seed=3, photons=150):
    truth = phantom(shape, seed=seed)
    grids = np.meshgrid(*[np.arange(-4, 5)] * len(shape), indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s**2) for g, s in zip(grids, [2.0, 1.2, 1.2][-len(shape):])))
    psf = (psf / psf.sum()).astype(np.float32)
    return truth, psf, add_noise(blur(truth, psf), photons=photons, read_noise=1.0, seed=seed)


@pytest.mark.parametrize("shape", [(96, 96), (24, 64, 64)])
def test_tv_beats_plain_rl_at_equal_iterations_on_noisy_data(shape):
    truth, psf, image = noisy_problem(shape, photons=50)
    plain = psnr(truth, richardson_lucy(image, psf, 30, boundary="zero", device="cpu"))
    tv = psnr(truth, richardson_lucy(image, psf, 30, boundary="zero", tv_weight=0.01, device="cpu"))
    assert tv > plain + 0.5


@pytest.mark.parametrize("tv_weight, voxel_size", [(0.002, None), (0.01, (0.3, 0.1, 0.1))])
def test_tv_keeps_a_flat_image_flat(tv_weight, voxel_size):
    """Found by review: with |∇u| regularised by 1e-3 of the peak alone, the TV term was an unstable
    explicit diffusion on flat areas, and a constant image became a checkerboard that flipped every
    iteration (6.97-7.03 at weight 0.002, 6.85-7.18 at 0.01); plain RL keeps it at 7 exactly."""
    psf = np.exp(-sum(g ** 2 / w for g, w in zip(np.meshgrid(*(np.arange(k) - k // 2 for k in (5, 7, 7)),
                                                             indexing="ij"), (4.5, 2.9, 2.9))))
    image = np.full((10, 16, 16), 7.0)
    runs = [richardson_lucy(image, psf, n, tv_weight=tv_weight, voxel_size=voxel_size, device="cpu",
                            dtype=torch.float64)[2:-2, 3:-3, 3:-3] for n in (20, 21)]
    for estimate in runs:
        assert np.abs(estimate - 7.0).max() < 7e-3
    assert np.abs(runs[1] - runs[0]).max() < 1e-3


@pytest.mark.parametrize("shape", [(40, 44), (10, 20, 18)])
@pytest.mark.parametrize("accelerate", [False, True])
def test_tv_follows_a_flipped_image(shape, accelerate):
    """Found by review: |∇u| of forward differences alone made RL-TV's result depend on the image's
    orientation (7.4 % of the peak on a 2D image turned upside down, 1-9 % on these), where plain RL
    follows any flip to round-off. Each axis flipped alone, image and PSF together."""
    truth, psf, image = noisy_problem(shape, photons=100)
    psf = psf * (1 + np.linspace(0, 1, psf.size).reshape(psf.shape))  # asymmetric along every axis
    run = lambda y, h: richardson_lucy(np.ascontiguousarray(y), np.ascontiguousarray(h), 8, tv_weight=0.01,
                                       accelerate=accelerate, device="cpu", dtype=torch.float64)
    estimate = run(image, psf)
    for axis in range(len(shape)):
        flip = tuple(slice(None, None, -1) if a == axis else slice(None) for a in range(len(shape)))
        assert np.abs(run(image[flip], psf[flip])[flip] - estimate).max() < 1e-9 * estimate.max()


def test_tv_denominator_stays_positive_below_the_limit_at_a_pit():
    """The symmetric |∇u| (the mean square of both one-sided differences) lets a lone edge's flux reach
    √2 where the forward form's stays within 1: at a one-voxel pit in 2D the TV term's divergence was
    4.24 against the 4 that tv_weight's limit, 1/4, allows for, and the denominator went negative
    below the limit. The flux is held to the forward form's bound. (The fixed ε: the local one, 2 at the
    pit's rim here, keeps this pit's denominator at 0.41 anyway.)"""
    from deconv3d.classical._iterate import _TV

    u = torch.ones((9, 9), dtype=torch.float64)
    u[4, 4] = 0.0
    tv = _TV(u.shape, 2, 0.249, None, u, None, 1e-3, "fixed")
    assert float(tv.denominator(u).min()) == pytest.approx(1 - 0.249 * 4, rel=1e-3)


def test_tv_lowers_the_total_intensity_as_documented():
    """richardson_lucy's tv_weight documents the total RL-TV loses against RL (0.5-1.5 % at 0.01,
    3-8 % at 0.1). Before the TV term's stable ε the change swung with the data (review: -0.8 % to
    +16 % on a bead image; -2.3 % at 0.1 here)."""
    _, psf, image = noisy_problem((96, 96), photons=100)
    total = richardson_lucy(image, psf, 30, boundary="zero", device="cpu").sum()
    change = {w: richardson_lucy(image, psf, 30, boundary="zero", tv_weight=w, device="cpu").sum() / total - 1
              for w in (0.01, 0.1)}
    assert -0.015 < change[0.01] < -0.005 and -0.08 < change[0.1] < -0.03


def test_acceleration_beats_plain_rl_at_equal_iterations():
    _, psf, _ = noisy_problem((96, 96))
    truth = phantom((96, 96), seed=3, n_beads=0)
    image = blur(truth, psf)
    plain = psnr(truth, richardson_lucy(image, psf, 10, boundary="zero", device="cpu"))
    fast = psnr(truth, richardson_lucy(image, psf, 10, boundary="zero", accelerate=True, device="cpu"))
    assert fast > plain + 0.5


def _iterations_to_reach(truth, image, psf, target, boundary):
    seen = []
    richardson_lucy(image, psf, 20, boundary=boundary, accelerate=True, device="cpu",
                    callback=lambda i, est: seen.append(psnr(truth, est.numpy())))
    return next((i + 1 for i, value in enumerate(seen) if value >= target), None)


@pytest.mark.parametrize("shape, photons, boundary", [((96, 96), 1000, "zero"), ((96, 96), 1000, "bertero"),
                                                      ((24, 64, 64), 2000, "bertero")])
def test_the_step_floor_reaches_plain_rl_quality_sooner(monkeypatch, shape, photons, boundary):
    """ALPHA_FLOOR's case: accelerated RL reaches plain RL-20's PSNR in fewer iterations than with
    Biggs & Andrews' own step (measured: 9 against 10 in 2D, 10 against 11 in 3D), and every
    adaptive step from the third on is at least the floor."""
    from deconv3d.classical import _iterate, rl_alpha_schedule

    truth, psf, image = noisy_problem(shape, photons=photons)
    target = psnr(truth, richardson_lucy(image, psf, 20, boundary=boundary, device="cpu"))
    steps = rl_alpha_schedule(image, psf, 20, boundary=boundary, device="cpu")
    assert steps[:2] == [0.0, 0.0] and min(steps[2:]) >= _iterate.ALPHA_FLOOR == 0.65
    with_floor = _iterations_to_reach(truth, image, psf, target, boundary)
    monkeypatch.setattr(_iterate, "ALPHA_FLOOR", 0.0)
    without = _iterations_to_reach(truth, image, psf, target, boundary)
    assert with_floor is not None and without is not None and with_floor < without


def i_divergence(data, estimate, psf):
    model = np.clip(blur(estimate, psf), 1e-12, None)
    data = np.clip(data, 0, None)
    return float(np.sum(data * np.log(np.where(data > 0, data, 1) / model) - data + model))


def test_acceleration_lowers_the_rl_objective_faster_in_3d():
    truth, psf, image = noisy_problem((24, 64, 64), photons=2000)
    for iterations in (5, 10):
        plain = richardson_lucy(image, psf, iterations, boundary="zero", device="cpu")
        fast = richardson_lucy(image, psf, iterations, boundary="zero", accelerate=True, device="cpu")
        assert i_divergence(image, fast, psf) < 0.9 * i_divergence(image, plain, psf)


def test_bertero_boundary_has_lower_border_error_than_zero():
    truth, psf, image = noisy_problem((24, 64, 64), photons=5000)
    border = np.ones(truth.shape, bool)
    border[4:-4, 6:-6, 6:-6] = False
    assert truth[border].mean() > 0.5 * truth.mean(), "objects must touch the border"
    errors = {}
    for boundary in ("zero", "reflect", "bertero"):
        result = richardson_lucy(image, psf, 30, boundary=boundary, device="cpu")
        errors[boundary] = float(np.sqrt(np.mean((result[border] - truth[border]) ** 2)))
    assert errors["bertero"] < errors["zero"]
    assert errors["reflect"] < errors["zero"]


def test_non_negative_float32_output_and_tensor_round_trip():
    truth, psf, image = noisy_problem((32, 32))
    out = richardson_lucy(image - 0.01, psf, 5, device="cpu")
    assert out.dtype == np.float32 and out.min() >= 0
    tensor_out = richardson_lucy(torch.from_numpy(image), psf, 5, device="cpu")
    assert isinstance(tensor_out, torch.Tensor)


def test_callback_reports_progress_and_can_cancel():
    _, psf, image = noisy_problem((32, 32))
    seen = []
    richardson_lucy(image, psf, 10, device="cpu", callback=lambda i, est: seen.append((i, est.shape)) or i == 4)
    assert [i for i, _ in seen] == [1, 2, 3, 4] and seen[0][1] == image.shape


@pytest.mark.parametrize("accelerate", [False, True])
def test_tolerance_stops_early(accelerate):
    _, psf, image = noisy_problem((32, 32))
    seen = []
    richardson_lucy(image, psf, 500, tol=1e-2, accelerate=accelerate, device="cpu",
                    callback=lambda i, est: seen.append(i))
    assert 1 < len(seen) < 500


@pytest.mark.parametrize("boundary, accelerate", [("bertero", True), ("reflect", False)])
def test_tolerance_is_measured_on_the_returned_image(boundary, accelerate):
    """It was measured on Bertero's extended estimate (or reflect's mirrored field): a run with
    tol 3e-2 went on to iteration 38 where the returned image had changed by 0.029 at 24."""
    _, psf, image = noisy_problem((32, 32))
    seen = []
    richardson_lucy(image, psf, 200, tol=2e-2, boundary=boundary, accelerate=accelerate, device="cpu",
                    callback=lambda i, est: seen.append(est.clone()))
    changes = [float(torch.linalg.vector_norm(b - a) / torch.linalg.vector_norm(a)) for a, b in zip(seen, seen[1:])]
    first = next(i for i, c in enumerate(changes) if c < 2e-2)
    assert len(seen) == first + 2  # stopped at the first iteration whose change fell below tol


def test_bad_acceleration_schedules_are_refused():
    _, psf, image = noisy_problem((32, 32))
    for schedule in ([0, 0, 1.0], [0, 0, 1.5], [0.5, float("nan")], None, 3):
        with pytest.raises(InputError, match="accelerate|steps must lie"):
            richardson_lucy(image, psf, 4, accelerate=schedule, device="cpu")
    np.testing.assert_array_equal(richardson_lucy(image, psf, 4, accelerate=np.bool_(True), device="cpu"),
                                  richardson_lucy(image, psf, 4, accelerate=True, device="cpu"))


@pytest.mark.parametrize("fused", ["torch", "auto"])
def test_a_tensor_that_requires_grad_is_deconvolved_on_every_backend(fused, monkeypatch):
    """The torch passes failed ("functions with out=... arguments don't support automatic
    differentiation") where the numba ones worked."""
    monkeypatch.setenv("DECONV3D_FUSED", fused)
    _, psf, image = noisy_problem((32, 32))
    tensor = torch.from_numpy(image).requires_grad_(True)
    np.testing.assert_allclose(richardson_lucy(tensor, psf, 4, accelerate=True, device="cpu").numpy(),
                               richardson_lucy(image, psf, 4, accelerate=True, device="cpu"), rtol=1e-6, atol=1e-7)


def test_anisotropic_voxels_raise_the_tv_limit():
    _, psf, image = noisy_problem((12, 24, 24))
    with pytest.raises(InputError, match="tv_weight"):
        richardson_lucy(image, psf, 2, tv_weight=0.2, device="cpu")
    richardson_lucy(image, psf, 2, tv_weight=0.2, voxel_size=(1.0, 0.1, 0.1), device="cpu")


def test_bad_inputs():
    _, psf, image = noisy_problem((32, 32))
    bad_image = image.copy()
    bad_image[3, 3] = np.nan
    huge = image.astype(np.float64) * 1e300  # finite, beyond float32
    nan_psf = psf.copy()
    nan_psf[0, 0] = np.nan
    cases = [
        (dict(image=bad_image, psf=psf), "^image contains NaN"),
        (dict(image=image, psf=nan_psf), "^PSF contains NaN"),
        (dict(image=huge, psf=psf), "^image has values beyond the range of torch.float32"),
        (dict(image=image, psf=-psf), "^PSF has no positive value"),
        (dict(image=image, psf=np.where(psf < psf.max() / 100, -psf.max() / 1e3, psf)), "^PSF has negative values"),
        (dict(image=image, psf=np.zeros_like(psf)), "all zero"),
        (dict(image=image[:5, :5], psf=psf), "larger than the image"),
        (dict(image=image[None], psf=psf), "PSF is 2D"),
        (dict(image=image[0], psf=psf[0]), "2D or 3D"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            richardson_lucy(iterations=2, device="cpu", **kwargs)
    with pytest.raises(InputError, match="boundary"):
        richardson_lucy(image, psf, 2, boundary="mirror", device="cpu")


def test_a_psfs_round_off_negatives_are_cut_at_zero():
    """An FFT round trip leaves a PSF with values of -1e-9: validate_psf accepts them (down to 1e-6
    of the peak), and RL and Wiener used to refuse the same array as "not non-negative"."""
    _, psf, image = noisy_problem((32, 32))
    rough = psf.copy()
    rough[psf < psf.max() / 100] = -psf.max() * 1e-7
    clipped = np.clip(rough, 0, None)
    np.testing.assert_array_equal(richardson_lucy(image, rough, 3, device="cpu"),
                                  richardson_lucy(image, clipped, 3, device="cpu"))
    np.testing.assert_array_equal(wiener(image, rough, device="cpu"), wiener(image, clipped, device="cpu"))


@pytest.mark.parametrize("method", ["wiener", "zero", "reflect", "bertero"])
def test_an_image_whose_total_overflows_the_transforms_is_refused(method):
    """Each value fits float32 but their sum does not: the transform's zero frequency overflowed and
    every method returned all NaN without a word. Richardson-Lucy runs such data divided by a power
    of two (:func:`deconv3d.classical._problem._working_exponent`), and refuses only a result that
    float32 cannot hold."""
    _, psf, image = noisy_problem((16, 32, 32))
    unit = image / image.max()
    huge = (unit * 1e36).astype(np.float32)
    if method == "wiener":
        with pytest.raises(InputError, match="^the result overflowed torch.float32: .* rescale it"):
            wiener(huge, psf, device="cpu")
        return
    np.testing.assert_allclose(richardson_lucy(huge, psf, 2, boundary=method, device="cpu") / 1e36,
                               richardson_lucy(unit.astype(np.float32), psf, 2, boundary=method, device="cpu"),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="^the result overflowed torch.float32: .* rescale it"):
        richardson_lucy((unit * 3.4e38).astype(np.float32), psf, 5, boundary=method, device="cpu")  # peak 1.25x


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_whole_number_float_iteration_count_is_accepted(accelerate):
    """The check accepts 3.0 and numpy integers; the loops used to fail on them with a TypeError."""
    from deconv3d.classical import choose_iterations, rl_alpha_schedule

    _, psf, image = noisy_problem((32, 32))
    expected = richardson_lucy(image, psf, 3, accelerate=accelerate, device="cpu")
    for count in (3.0, np.float64(3), np.int64(3)):
        np.testing.assert_array_equal(richardson_lucy(image, psf, count, accelerate=accelerate, device="cpu"),
                                      expected)
    assert len(rl_alpha_schedule(image, psf, 3.0, device="cpu")) == 3
    assert choose_iterations(image, psf, max_iterations=4.0, device="cpu").iterations <= 4
    with pytest.raises(InputError, match="non-negative integer"):
        richardson_lucy(image, psf, 2.5, device="cpu")


@pytest.mark.parametrize("regularizer", ["identity", "laplacian"])
@pytest.mark.parametrize("boundary", ["reflect", "zero"])
def test_wiener_sharpens_a_noise_free_blur(regularizer, boundary):
    truth = phantom((20, 64, 64), seed=1)
    _, psf, _ = noisy_problem((20, 64, 64))
    image = blur(truth, psf)
    result = wiener(image, psf, 1e-3, regularizer=regularizer, boundary=boundary, device="cpu")
    assert result.dtype == np.float32 and result.min() >= 0
    inner = (slice(5, -5), slice(8, -8), slice(8, -8))  # away from the unknown outside of the field
    assert psnr(truth[inner], result[inner]) > psnr(truth[inner], image[inner]) + 1.5


def test_wiener_periodic_is_exact_inverse_of_circular_blur(rng):
    truth = rng.random((32, 32)).astype(np.float32)
    psf = np.zeros((32, 32), np.float32)
    psf[15:18, 15:18] = np.outer([1, 4, 1], [1, 4, 1])  # its transfer function has no zeros
    psf /= psf.sum()
    circular = np.real(np.fft.ifft2(np.fft.fft2(truth) * np.fft.fft2(np.fft.ifftshift(psf)))).astype(np.float32)
    small = psf[15:18, 15:18].copy()
    result = wiener(circular, small, 1e-7, boundary="periodic", device="cpu")
    np.testing.assert_allclose(result, truth, atol=2e-3)


def test_wiener_periodic_inverts_an_asymmetric_circular_blur(rng):
    """scipy's wrap-mode convolution with a lopsided kernel, undone: a missing conjugate
    (the correlation) or flip shows (error 0.84 of the range instead of 3e-5)."""
    import scipy.ndimage

    truth = rng.random((24, 30)).astype(np.float32)
    psf = asymmetric_psf((5, 3))
    circular = scipy.ndimage.convolve(truth.astype(np.float64), psf.astype(np.float64), mode="wrap")
    result = wiener(circular.astype(np.float32), psf, 1e-9, boundary="periodic", device="cpu")
    np.testing.assert_allclose(result, truth, atol=2e-3)


def _mirror_then_edge(x, before, after):
    """np.pad: reflected up to one reflection of each axis, the edge repeated beyond (as pad_spatial)."""
    first = [(min(b, n - 1), min(a, n - 1)) for b, a, n in zip(before, after, x.shape)]
    x = np.pad(x, first, mode="reflect")
    return np.pad(x, [(b - f[0], a - f[1]) for b, a, f in zip(before, after, first)], mode="edge")


def _numpy_wiener(image, psf, balance, regularizer, boundary, clip=True):
    """The filter ``(1 + balance |L(0)|^2) conj(H) Y / (|H|^2 + balance |L|^2)`` in numpy's full FFTs, on the image
    extended with ``np.pad``: by the kernel size before and up to the fast FFT size after (zero), or into the box
    of ``mirror_box`` (reflect; its depth is tested against the endless mirror in test_classical_wiener)."""
    import importlib

    from deconv3d.fft import fast_shape

    box = fast_shape([n + 2 * k for n, k in zip(image.shape, psf.shape)])
    before = list(psf.shape)
    if boundary == "reflect":
        wiener_module = importlib.import_module("deconv3d.classical.wiener")
        box, before = wiener_module.mirror_box(image.shape, psf.shape, wiener_module.wiener_reach(psf, balance))
    after = [b - n - k for b, n, k in zip(box, image.shape, before)]
    if boundary == "reflect":
        ext = _mirror_then_edge(image.astype(np.float64), before, after)
    else:
        ext = np.pad(image, list(zip(before, after))).astype(np.float64)

    def transfer(kernel):
        placed = np.zeros(ext.shape)
        placed[tuple(slice(0, k) for k in kernel.shape)] = kernel
        return np.fft.fftn(np.roll(placed, [-((k - 1) // 2) for k in kernel.shape], range(ext.ndim)))

    h = transfer(psf.astype(np.float64))
    lap = np.zeros((3,) * image.ndim)
    lap[(1,) * image.ndim] = -2.0 * image.ndim
    for axis in range(image.ndim):
        for side in (0, 2):
            lap[tuple(side if a == axis else 1 for a in range(image.ndim))] = 1.0
    penalty = np.abs(transfer(lap)) ** 2 if regularizer == "laplacian" else np.ones(ext.shape)
    gain = 1 + balance * penalty.flat[0]  # at zero frequency: 1 + balance for the identity, 1 for the Laplacian
    estimate = np.real(np.fft.ifftn(gain * np.conj(h) * np.fft.fftn(ext) / (np.abs(h) ** 2 + balance * penalty)))
    estimate = estimate[tuple(slice(k, k + n) for k, n in zip(before, image.shape))]
    return np.maximum(estimate, 0) if clip else estimate


@pytest.mark.parametrize("regularizer", ["identity", "laplacian"])
@pytest.mark.parametrize("boundary", ["reflect", "zero"])
# extended by the kernel: fast FFT sizes already, or not (13 + 6 = 19 -> 20, 19 + 10 = 29 -> 30)
@pytest.mark.parametrize("shape,kshape", [((14, 20), (3, 5)), ((8, 14, 20), (3, 3, 5)), ((13, 19), (3, 5)),
                                          ((7, 13, 19), (3, 3, 5))])
def test_wiener_equals_a_numpy_reference(rng, regularizer, boundary, shape, kshape):
    image = blurred(rng.random(shape).astype(np.float32), asymmetric_psf(kshape)) + 0.01
    psf = asymmetric_psf(kshape)
    expected = _numpy_wiener(image, psf, 1e-2, regularizer, boundary)
    result = wiener(image, psf, 1e-2, regularizer=regularizer, boundary=boundary, device="cpu")
    np.testing.assert_allclose(result, expected, atol=1e-4 * float(expected.max()))


@pytest.mark.parametrize("boundary", ["reflect", "zero", "periodic"])
def test_wiener_without_the_clip_keeps_the_linear_estimate_and_its_total(rng, boundary):
    """The clip at 0 adds light: beads over a background of 20 counts with Poisson noise came out
    24 % brighter on average. clip=False returns the linear estimate (the numpy reference
    unclipped; scikit-image's clip=False), whose total is the data's (a gain of 1 at zero frequency)."""
    psf = asymmetric_psf((5, 7, 7))
    truth = np.zeros((12, 32, 32))
    truth[tuple(rng.integers(2, 30, size=(3, 20)) % np.array([[12], [32], [32]]))] = 400.0
    image = rng.poisson(blurred(truth, psf) + 20.0).astype(np.float32)
    linear = wiener(image, psf, 1e-3, boundary=boundary, clip=False, device="cpu", dtype=torch.float64)
    clipped = wiener(image, psf, 1e-3, boundary=boundary, device="cpu", dtype=torch.float64)
    assert linear.min() < 0
    np.testing.assert_allclose(clipped, np.maximum(linear, 0), rtol=0, atol=1e-12)
    assert clipped.mean() > 1.05 * image.mean()  # what the clip does to the level
    if boundary != "periodic":
        expected = _numpy_wiener(image, psf, 1e-3, "identity", boundary, clip=False)
        np.testing.assert_allclose(linear, expected, atol=1e-9 * float(np.abs(expected).max()))
    else:
        assert linear.sum() == pytest.approx(image.sum(dtype=np.float64), rel=1e-7)  # (a float32 PSF)
    with pytest.raises(InputError, match="clip must be True or False"):
        wiener(image, psf, clip="no", device="cpu")


@pytest.mark.parametrize("shape, kshape", [((64, 64), (9, 9)), ((6, 12, 12), (3, 5, 5)), ((6, 14, 14), (3, 5, 5)),
                                           ((17, 33, 31), (7, 9, 9))])
@pytest.mark.parametrize("balance", [1e-3, 5e-2])
@pytest.mark.parametrize("regularizer", ["identity", "laplacian"])
def test_wiener_of_a_constant_image_is_the_constant(shape, kshape, balance, regularizer):
    """Whatever the image's size: the reflected border fills the FFT box (zeros after it rang
    through the image, 80-108 % of the value at (64, 64), 0-428 % at (6, 12, 12)). Whatever the
    balance: the filter's gain at zero frequency is 1, so flat areas keep their level (review of
    quantitative fidelity: the identity regulariser's plain Tikhonov filter gave 100 / (1 + balance),
    4.8 % dimmer at a balance of 0.05)."""
    psf = np.ones(kshape, np.float64) / np.prod(kshape)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        result = wiener(np.full(shape, 100.0), psf, balance, regularizer=regularizer, device="cpu", dtype=dtype)
        np.testing.assert_allclose(result, 100.0, rtol=tol)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    _, psf, image = noisy_problem((16, 32, 32))
    cpu = richardson_lucy(image, psf, 10, device="cpu")
    gpu = richardson_lucy(image, psf, 10, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4 * cpu.max())


@pytest.mark.parametrize("shape, kshape", [((24, 30), (5, 7)), ((10, 16, 14), (3, 5, 5))])
def test_periodic_boundary_equals_wrapped_ndimage_rl(rng, shape, kshape):
    """Circulant RL against an independent loop built on scipy.ndimage's 'wrap' mode."""
    from scipy import ndimage

    psf = asymmetric_psf(kshape)
    image = rng.poisson(50 * (1 + rng.random(shape))).astype(np.float64)
    ref = np.full(shape, image.mean())
    for _ in range(8):
        blurred = ndimage.convolve(ref, psf.astype(np.float64), mode="wrap")
        ref = ref * ndimage.correlate(image / blurred, psf.astype(np.float64), mode="wrap")
    ours = np.asarray(richardson_lucy(image, psf, 8, boundary="periodic", device="cpu"))
    assert np.abs(ours - ref).max() <= 1e-4 * ref.max()


@pytest.mark.parametrize("kwargs, words", [
    ({"iterations": float("nan")}, "iterations"),
    ({"iterations": 2.5}, "iterations"),
    ({"voxel_size": (float("nan"), 0.1, 0.1), "tv_weight": 0.01}, "voxel size"),
])
def test_non_finite_options_are_input_errors(kwargs, words):
    image = np.ones((6, 8, 8), np.float32)
    psf = np.ones((3, 3, 3), np.float32)
    args = {"iterations": 2, **kwargs}
    with pytest.raises(InputError, match=words):
        richardson_lucy(image, psf, args.pop("iterations"), device="cpu", **args)


def test_wiener_refuses_an_infinite_balance():
    with pytest.raises(InputError, match="finite"):
        wiener(np.ones((6, 8, 8), np.float32), np.ones((3, 3, 3), np.float32), balance=float("inf"))


@pytest.mark.parametrize("shape", [(9, 9), (7, 8)], ids=["odd", "even"])
def test_bertero_extended_estimate_predicts_the_image_from_outside_light(shape):
    """The extended estimate's interior is the ordinary result, and its "valid" convolution with
    the PSF reproduces an image lit from outside the field better than the mirrored interior does."""
    rng = np.random.default_rng(0)
    psf = asymmetric_psf(shape)  # asymmetric: a flipped or misplaced margin shows
    big = (rng.random((60, 60)) ** 8 * 10 + 0.1).astype(np.float32)
    image = scipy.signal.fftconvolve(big, psf, mode="valid").astype(np.float32)
    ext = richardson_lucy(image, psf, 300, extended=True, device="cpu")
    plain = richardson_lucy(image, psf, 300, device="cpu")
    before = [k // 2 for k in psf.shape]  # k - 1 - kernel_origin
    assert ext.shape == tuple(n + k - 1 for n, k in zip(image.shape, psf.shape))
    np.testing.assert_array_equal(ext[tuple(slice(b, b + n) for b, n in zip(before, image.shape))], plain)
    err = np.abs(scipy.signal.fftconvolve(ext, psf, mode="valid") - image).mean() / image.mean()
    mirrored = np.pad(plain, [(b, k - 1 - b) for b, k in zip(before, psf.shape)], mode="reflect")
    err_mirrored = np.abs(scipy.signal.fftconvolve(mirrored, psf, mode="valid") - image).mean() / image.mean()
    assert err < 0.02 and err < 0.5 * err_mirrored  # measured 1.0% vs 3.0% (odd)
    with pytest.raises(InputError, match="bertero"):
        richardson_lucy(image, psf, 2, boundary="zero", extended=True, device="cpu")


def test_weighted_rl_matches_a_scipy_reference_and_ignores_zero_weight_voxels(rng):
    """Zero boundary: ``u <- u H^T(w y / H u) H^T(1) / H^T(w)`` written with scipy; the Bertero
    (extended) estimate does not move when voxels of weight 0 change."""
    psf = asymmetric_psf((5, 7, 5))
    image = blurred(rng.random((14, 30, 28)), psf) + 0.05
    w = (rng.random(image.shape) > 0.2).astype(np.float32)
    w[3, 4:9, 5] = 0.5  # fractional weights take part too

    def conv(a, k):
        return scipy.signal.fftconvolve(a, k, mode="same")

    flipped = psf[::-1, ::-1, ::-1]
    u = np.full(image.shape, image.mean(), np.float64)
    for _ in range(10):
        u = u * conv(w * image / conv(u, psf), flipped) * conv(np.ones_like(u), flipped) / conv(w, flipped)
    ours = richardson_lucy(image, psf, 10, boundary="zero", weights=w, device="cpu")
    assert np.abs(ours - u).max() <= 1e-4 * u.max()
    assert np.abs(ours - richardson_lucy(image, psf, 10, boundary="zero", device="cpu")).max() > 1e-3 * u.max()
    ext = richardson_lucy(image, psf, 10, weights=w, extended=True, device="cpu")
    changed = np.where(w == 0, rng.random(image.shape).astype(np.float32) * 10, image)
    np.testing.assert_array_equal(richardson_lucy(changed, psf, 10, weights=w, extended=True, device="cpu"), ext)
    np.testing.assert_allclose(richardson_lucy(image, psf, 10, weights=np.ones_like(w), device="cpu"),
                               richardson_lucy(image, psf, 10, device="cpu"), rtol=1e-4, atol=1e-5 * u.max())


@pytest.mark.parametrize("boundary", ["zero", "reflect", "bertero"])
def test_uniformly_small_weights_give_plain_rl_not_zeros(rng, boundary):
    """The weighted update divides by ``H^T(w)``, so weights all 0.05 are plain RL. The rule that leaves
    voxels seeing under 10 % of kept light unestimated counts light on voxels of positive weight: taken
    on ``H^T(w)`` itself it put every voxel under 10 % and the result was all zeros."""
    psf = asymmetric_psf((5, 7, 5))
    image = blurred(rng.random((10, 20, 18)), psf) + 0.05
    small = richardson_lucy(image, psf, 5, boundary=boundary, weights=np.full(image.shape, 0.05), device="cpu")
    plain = richardson_lucy(image, psf, 5, boundary=boundary, device="cpu")
    assert np.count_nonzero(small) == small.size
    np.testing.assert_allclose(small, plain, rtol=0.05, atol=0.05 * plain.max())  # (Bertero corners: 1e-3 floor)


@pytest.mark.parametrize("weights, word", [(np.ones((3, 3)), "shape"), (-np.ones((14, 30, 28)), "[0, 1]"),
                                           (np.zeros((14, 30, 28)), "not all 0")])
def test_bad_weights_are_refused(weights, word):
    with pytest.raises(InputError, match=word.replace("[", r"\[").replace("]", r"\]")):
        richardson_lucy(np.ones((14, 30, 28), np.float32), np.ones((3, 3, 3), np.float32) / 27, 2, weights=weights,
                        device="cpu")


def _tv_denominator(u, weight, eps_min, local=True, symmetric=True):
    """Dey et al.'s ``1 - λ div(∇u / |∇u|_ε)``, Neumann at both ends (numpy), with ``|∇u|_ε² = |∇u|² + ε²``
    and ``ε = max(eps_min, λ u Σ_i 4)`` (unit spacing); ``local=False``: ``ε = eps_min`` (the rule before
    that, which older residual networks' references keep). ``symmetric``: per axis the mean square of
    the backward and forward difference in ``|∇u|²``, each edge's flux times the mean of ``1/|∇u|_ε`` at
    its ends, within [-1, 1]; else forward differences alone (the rule before, likewise kept)."""
    grads = []
    for axis in range(u.ndim):
        g = np.zeros_like(u)
        g[(slice(None),) * axis + (slice(0, -1),)] = np.diff(u, axis=axis)
        grads.append(g)
    eps = np.maximum(eps_min, weight * 4 * u.ndim * u) if local else eps_min
    if symmetric:
        pad = [np.pad(g, [(1, 0) if a == axis else (0, 0) for a in range(u.ndim)])
               for axis, g in enumerate(grads)]  # pad[axis][i] is the edge before voxel i, pad[axis][i+1] after
        squares = [(p[(slice(None),) * a + (slice(0, -1),)] ** 2
                    + p[(slice(None),) * a + (slice(1, None),)] ** 2) / 2 for a, p in enumerate(pad)]
        inverse = 1 / np.sqrt(eps ** 2 + sum(squares))
    else:
        inverse = 1 / np.sqrt(eps ** 2 + sum(g * g for g in grads))
    div = np.zeros_like(u)
    for axis, g in enumerate(grads):
        if symmetric:
            after = np.roll(inverse, -1, axis)  # the last voxel's wraps around, where g is 0
            g = np.clip(g * (inverse + after) / 2, -1, 1)
        else:
            g = g * inverse
        div += g
        div[(slice(None),) * axis + (slice(1, None),)] -= g[(slice(None),) * axis + (slice(0, -1),)]
    return 1 - weight * div


def bertero_rl_tv(image, psf, iterations, weight, local=True, symmetric=True):
    """Bertero RL-TV written with scipy (float64), on the image's field: the TV term joins physical
    neighbours of the extended object (margin before, image, margin after); ``local``, ``symmetric``:
    ε's rule and the differences' (:func:`_tv_denominator`), with ``eps_min = 1e-3`` of the image's peak."""
    image, psf = np.asarray(image, np.float64), np.asarray(psf, np.float64)
    flipped = psf[(slice(None, None, -1),) * psf.ndim]
    weight_sum = scipy.signal.fftconvolve(np.ones_like(image), flipped, mode="full")
    inv = np.where(weight_sum > 1e-3, 1 / np.maximum(weight_sum, 1e-3), 0.0)
    eps, floor = 1e-3 * image.max(), 1e-6 * image.max()
    u = np.full(weight_sum.shape, image.mean()) * (inv > 0)
    for _ in range(iterations):
        blur = np.maximum(scipy.signal.fftconvolve(u, psf, mode="valid"), floor)
        factor = scipy.signal.fftconvolve(image / blur, flipped, mode="full") * inv
        u = np.clip(u * factor / _tv_denominator(u, weight, eps, local, symmetric), 0, None)
    return u[tuple(slice(k // 2, k // 2 + n) for k, n in zip(psf.shape, image.shape))]  # k - 1 - kernel_origin


@pytest.mark.parametrize("shape, kshape", [((40, 40), (7, 7)), ((43, 45), (6, 6)), ((12, 24, 24), (5, 7, 6))],
                         ids=["fft-gap", "no-gap", "3d"])
@pytest.mark.parametrize("local, symmetric", [(True, True), (True, False), (False, False)],
                         ids=["local-eps", "local-eps-forward", "fixed-eps-forward"])
def test_bertero_tv_equals_tv_on_the_extended_object(rng, shape, kshape, local, symmetric):
    """Bertero RL-TV against scipy, whatever the FFT buffer's layout; with the TV term's ε and
    differences of today, and with the older rules that the references of older residual networks
    keep (private knobs)."""
    from deconv3d.classical.rl import _richardson_lucy

    psf = asymmetric_psf(kshape).astype(np.float64)
    truth = np.full(shape, 50.0)
    truth[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 200
    image = rng.poisson(scipy.signal.fftconvolve(truth, psf, mode="same").clip(0)).astype(np.float64)
    field = bertero_rl_tv(image, psf, 15, 0.02, local, symmetric)
    ours = _richardson_lucy(image, psf, 15, tv_weight=0.02, device="cpu", dtype=torch.float64,
                            tv_smoothing="local" if local else "fixed",
                            tv_differences="symmetric" if symmetric else "forward")
    assert np.abs(ours - field).max() <= 1e-9 * field.max()  # was 6% of the max at the first row
    if local and symmetric:
        np.testing.assert_array_equal(ours, richardson_lucy(image, psf, 15, tv_weight=0.02, device="cpu",
                                                            dtype=torch.float64))


@pytest.mark.parametrize("kshape", [(9, 9), (8, 6), (15, 11)])
def test_reflect_boundary_restores_the_border_as_the_exact_mirror_model_does(kshape):
    """Noise-free data made by the mirror model; RL with that model (numpy: forward ``H P u``,
    adjoint folds the mirrored margins back) is the reference for the border error."""
    rng = np.random.default_rng(12)
    shape = (48, 50)
    grids = np.meshgrid(*[np.arange(k) - (k - 1) / 2 for k in kshape], indexing="ij")
    psf = np.exp(-sum(g ** 2 / k for g, k in zip(grids, kshape)))
    psf /= psf.sum()
    pads = [(k - 1 - (k - 1) // 2, (k - 1) // 2) for k in kshape]
    truth = 20 + 100 * rng.random(shape) ** 4
    image = scipy.signal.fftconvolve(np.pad(truth, pads, mode="reflect"), psf, mode="valid")
    index = np.pad(np.arange(truth.size).reshape(shape), pads, mode="reflect").ravel()

    def adjoint(r):
        back = scipy.signal.fftconvolve(r, psf[::-1, ::-1], mode="full").ravel()
        return np.bincount(index, back, minlength=truth.size).reshape(shape)

    norm, u = adjoint(np.ones(shape)), np.full(shape, image.mean())
    for _ in range(100):
        u = u * adjoint(image / scipy.signal.fftconvolve(np.pad(u, pads, mode="reflect"), psf, mode="valid")) / norm
    border = np.ones(shape, bool)
    border[tuple(slice(k, n - k) for k, n in zip(kshape, shape))] = False

    def border_rmse(estimate):
        return np.sqrt(np.mean((estimate - truth)[border] ** 2))

    ours = richardson_lucy(image, psf, 100, boundary="reflect", device="cpu", dtype=torch.float64)
    assert border_rmse(ours) <= 1.02 * border_rmse(u)  # zero-boundary RL on the mirrored field: 1.17-2.1x


@pytest.mark.parametrize("boundary", ["periodic", "bertero"])
def test_float64_keeps_structure_a_million_times_fainter_than_a_bright_voxel(boundary):
    """The ratio's prediction floor follows the precision: at 1e-6 of the peak (float32's) in
    float64 too, the faint object lost 99.97 % of its light in 30 iterations."""
    import scipy.signal

    grids = np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij")
    psf = np.exp(-sum(g**2 for g in grids) / 2)
    psf /= psf.sum()
    obj = np.zeros((16, 32, 32))
    obj[6, 8:24, 20:24] = 0.5  # 32 in all, away from the bead
    data = scipy.signal.fftconvolve(obj, psf, mode="same").clip(0)
    data[6, 6, 6] += 1e5
    out = richardson_lucy(data, psf, 30, boundary=boundary, dtype=torch.float64, device="cpu")
    assert np.asarray(out)[:, :, 16:].sum() == pytest.approx(32.0, rel=1e-6)
