import numpy as np
import pytest
import scipy.signal
import torch

from deconv3d.errors import InputError
from deconv3d.fft import FFTConvolver, fast_shape, fast_size, fft_convolve, fft_correlate, get_convolver

CASES = [((33, 30), (5, 5)), ((33, 30), (4, 6)), ((11, 14, 13), (3, 5, 3)), ((11, 14, 13), (4, 3, 6))]


@pytest.mark.parametrize("xshape,kshape", CASES)
@pytest.mark.parametrize("mode", ["same", "full"])
def test_convolve_equals_scipy(rng, xshape, kshape, mode):
    x, k = rng.random(xshape), rng.random(kshape)
    ours = FFTConvolver(k, dtype=torch.float64).convolve(x, mode=mode).numpy()
    np.testing.assert_allclose(ours, scipy.signal.fftconvolve(x, k, mode=mode), atol=1e-10)


@pytest.mark.parametrize("xshape,kshape", [((3, 12), (8, 5)), ((4, 16, 16), (9, 5, 5)), ((2, 3), (7, 8))])
def test_same_convolution_of_an_image_thinner_than_half_the_kernel(rng, xshape, kshape):
    x, k = rng.random(xshape), rng.random(kshape)
    ours = FFTConvolver(k, dtype=torch.float64).convolve(x, mode="same").numpy()
    np.testing.assert_allclose(ours, scipy.signal.fftconvolve(x, k, mode="same"), atol=1e-10)


@pytest.mark.parametrize("dtype", [">f4", ">u2", ">f8"])
def test_big_endian_input_is_read_by_value(rng, dtype):
    x, k = (rng.random((6, 10, 12)) * 1000).astype(dtype), rng.random((3, 3, 5)).astype(">f4")
    native = fft_convolve(x.astype(x.dtype.newbyteorder("=")), k.astype("<f4"), dtype=torch.float64).numpy()
    np.testing.assert_array_equal(fft_convolve(x, k, dtype=torch.float64).numpy(), native)
    np.testing.assert_allclose(native, scipy.signal.fftconvolve(x.astype(float), k.astype(float), mode="same"),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("xshape,kshape", CASES)
def test_float32_default_matches_scipy(rng, xshape, kshape):
    x, k = rng.random(xshape).astype(np.float32), rng.random(kshape).astype(np.float32)
    ours = fft_convolve(x, k)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), scipy.signal.fftconvolve(x, k, mode="same"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("xshape,kshape", CASES)
@pytest.mark.parametrize("mode", ["same", "full"])
def test_autograd_gradient_is_the_correlation(rng, xshape, kshape, mode):
    conv = FFTConvolver(rng.random(kshape), dtype=torch.float64)
    x = torch.tensor(rng.random(xshape), requires_grad=True)
    out = conv.convolve(x, mode=mode)
    weights = torch.tensor(rng.random(tuple(out.shape)))
    (out * weights).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), conv.correlate(weights, mode=mode).numpy(), atol=1e-10)


@pytest.mark.parametrize("xshape,kshape", [c for c in CASES if all(k % 2 for k in c[1])])
def test_correlate_equals_scipy_for_odd_kernels(rng, xshape, kshape):
    x, k = rng.random(xshape), rng.random(kshape)
    ours = fft_correlate(x, k, dtype=torch.float64).numpy()
    np.testing.assert_allclose(ours, scipy.signal.correlate(x, k, mode="same"), atol=1e-10)


@pytest.mark.parametrize("xshape,kshape", CASES)
def test_reflect_padding_equals_reflected_valid_convolution(rng, xshape, kshape):
    x, k = rng.random(xshape), rng.random(kshape)
    conv = FFTConvolver(k, dtype=torch.float64)
    pads = [(n - 1 - o, o) for n, o in zip(kshape, conv.origin)]
    expected = scipy.signal.fftconvolve(np.pad(x, pads, mode="reflect"), k, mode="valid")
    np.testing.assert_allclose(conv.convolve(x, padding="reflect").numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("xshape,kshape", CASES + [((9, 12), (4, 5)), ((7, 9, 8), (2, 4, 3))])
def test_reflect_correlation_equals_reflected_valid_correlation(rng, xshape, kshape):
    """Correlation ``out[i] = sum_j k[j] x[i + j - o]`` (the transpose of the "same" convolution)
    reads ``o`` voxels before and ``k - 1 - o`` after: the mirror margins are those of the
    convolution swapped (different for even kernels). Asymmetric kernels, odd and even sides."""
    x, k = rng.random(xshape), rng.random(kshape)
    conv = FFTConvolver(k, dtype=torch.float64)
    pads = [(o, n - 1 - o) for n, o in zip(kshape, conv.origin)]
    expected = scipy.signal.correlate(np.pad(x, pads, mode="reflect"), k, mode="valid", method="direct")
    np.testing.assert_allclose(conv.correlate(x, padding="reflect").numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(fft_correlate(x, k, padding="reflect", dtype=torch.float64).numpy(), expected,
                               atol=1e-10)


def test_circular_padding_is_periodic(rng):
    x, k = rng.random((16, 16)), rng.random((3, 3))
    conv = FFTConvolver(k, dtype=torch.float64)
    tiled = np.tile(x, (3, 3))
    expected = scipy.signal.fftconvolve(tiled, k, mode="same")[16:32, 16:32]
    np.testing.assert_allclose(conv.convolve(x, padding="circular").numpy(), expected, atol=1e-10)


def test_batch_and_channel_dimensions(rng):
    k = rng.random((3, 3, 3))
    x = rng.random((2, 3, 6, 7, 8))
    out = FFTConvolver(k, dtype=torch.float64).convolve(x).numpy()
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[b, c], scipy.signal.fftconvolve(x[b, c], k, mode="same"), atol=1e-10)


def test_otf_is_computed_once_per_shape(rng, monkeypatch):
    conv = FFTConvolver(rng.random((3, 3)))
    calls = []
    real_rfftn = torch.fft.rfftn
    monkeypatch.setattr(torch.fft, "rfftn", lambda *a, **kw: calls.append(1) or real_rfftn(*a, **kw))
    x = torch.rand(20, 20)
    conv.convolve(x)
    first = len(calls)  # OTF + input
    conv.convolve(x)
    assert first == 2 and len(calls) == 3, "the second call must reuse the cached OTF"
    conv.convolve(torch.rand(30, 30))
    conv.convolve(torch.rand(30, 30))
    conv.convolve(x)
    assert len(calls) == 7, "one OTF per shape, each computed once"


def test_shared_convolver_is_reused_for_equal_psfs(rng):
    k = rng.random((3, 3)).astype(np.float32)
    assert get_convolver(k) is get_convolver(k.copy())
    assert get_convolver(k) is not get_convolver(k * 2)


def test_editing_the_callers_psf_in_place_does_not_reach_the_cache(rng):
    """The convolver held a view of the caller's array: after ``k *= 3`` a later call with the
    original values returned 3x the reference from the shared cache."""
    x = rng.random((20, 18)).astype(np.float32)
    k = rng.random((5, 3)).astype(np.float32)
    original = k.copy()
    fft_convolve(x, k)
    k *= 3
    np.testing.assert_allclose(fft_convolve(x[:, :7], original).numpy(),
                               scipy.signal.fftconvolve(x[:, :7], original, mode="same"), rtol=1e-5, atol=1e-6)


def test_float64_psfs_that_round_alike_in_float32_are_not_confused(rng):
    x = rng.random((16, 16))
    h = rng.random((5, 5))
    rounded = h.astype(np.float32).astype(np.float64)
    close = rounded + 1e-9 * (h != rounded)
    fft_convolve(x, rounded, dtype=torch.float64)
    np.testing.assert_allclose(fft_convolve(x, close, dtype=torch.float64).numpy(),
                               scipy.signal.fftconvolve(x, close, mode="same"), rtol=0, atol=1e-13)


def test_the_shared_cache_serves_many_threads(rng):
    """More PSFs than the cache holds, from 16 threads: a KeyError came out when another thread
    evicted a key between the lookup and the LRU update."""
    from concurrent.futures import ThreadPoolExecutor

    kernels = [rng.random((3, 3)).astype(np.float32) for _ in range(40)]

    def churn(seed):
        order = np.random.default_rng(seed).integers(0, len(kernels), 1500)
        return all(get_convolver(kernels[i]).psf.shape == (3, 3) for i in order)

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a loaded machine does
    try:
        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(churn, range(16)))
    finally:
        sys.setswitchinterval(interval)


def test_fast_sizes():
    assert fast_size(271) == 280 and fast_size(64) == 64 and fast_size(97) == 98
    assert fast_size(np.array(11)) == 12 and fast_size(np.int64(13)) == 14  # numpy integers too (cached by value)
    shape = fast_shape((79, 271, 271))
    assert shape[-1] % 2 == 0 and all(s >= n for s, n in zip(shape, (79, 271, 271)))


def test_bad_arguments(rng):
    conv = FFTConvolver(rng.random((3, 3)))
    with pytest.raises(InputError, match="mode"):
        conv.convolve(torch.rand(8, 8), mode="valid")
    with pytest.raises(InputError, match="padding"):
        conv.convolve(torch.rand(8, 8), padding="mirror")
    with pytest.raises(InputError, match="dimensions"):
        conv.convolve(torch.rand(8))


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    x, k = rng.random((9, 20, 21)).astype(np.float32), rng.random((3, 5, 5)).astype(np.float32)
    cpu = fft_convolve(x, k, device="cpu").numpy()
    gpu = fft_convolve(torch.from_numpy(x).cuda(), k).cpu().numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)


def _numpy_band_limit(x, k, eps, pad):
    """Independent reference: mirror by ``pad`` before and up to the fast FFT grid after (the
    edge repeated beyond one reflection, as ours), scale the spectrum by (1 + eps) P / (P + eps), crop."""
    grid = fast_shape([n + 2 * p for n, p in zip(x.shape, pad)])
    after = [g - n - p for g, n, p in zip(grid, x.shape, pad)]
    first = [(min(p, n - 1), min(a, n - 1)) for p, a, n in zip(pad, after, x.shape)]
    padded = np.pad(np.pad(x, first, mode="reflect"), [(p - f[0], a - f[1]) for p, a, f in zip(pad, after, first)],
                    mode="edge")
    kernel = np.zeros(grid)
    kernel[tuple(slice(0, s) for s in k.shape)] = k
    power = np.abs(np.fft.fftn(kernel)) ** 2
    power /= power.flat[0]
    out = np.fft.ifftn(np.fft.fftn(padded) * (1 + eps) * power / (power + eps)).real
    return out[tuple(slice(p, p + n) for p, n in zip(pad, x.shape))]


@pytest.mark.parametrize("xshape,kshape", [((20, 23), (5, 7)), ((10, 16, 15), (3, 5, 5))])
def test_band_limit_equals_numpy_reference(rng, xshape, kshape):
    from deconv3d.fft import band_limit, band_limit_halo

    x, k = rng.random(xshape), rng.random(kshape)
    pad = band_limit_halo(k)
    assert all(p >= s // 2 for p, s in zip(pad, kshape)) and all(p < n for p, n in zip(pad, xshape))
    ours = band_limit(x, k, 0.05, dtype=torch.float64).numpy()
    ref = _numpy_band_limit(x, k, 0.05, pad)
    assert ours.shape == x.shape
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    flat = band_limit(np.full(xshape, 100.0), k, 0.05, dtype=torch.float64).numpy()
    np.testing.assert_allclose(flat, 100.0, rtol=1e-12)  # the total kept, no ripple from the FFT box's end



def test_band_limit_is_differentiable_with_respect_to_the_psf(rng):
    """band_limit of a PSF tensor that requires grad took the shared, detached convolver: the
    output had no graph and h.grad stayed None, though fft.py promises the PSF's gradient for
    every function. It matches central differences of the numpy reference."""
    from deconv3d.fft import band_limit, band_limit_halo

    x, k, weights = rng.random((20, 23)), rng.random((3, 5)), rng.random((20, 23))
    h = torch.tensor(k, requires_grad=True)
    out = band_limit(x, h, 0.05, dtype=torch.float64)
    np.testing.assert_allclose(out.detach().numpy(), band_limit(x, k, 0.05, dtype=torch.float64).numpy(), atol=1e-12)
    (out * torch.from_numpy(weights)).sum().backward()
    pad, step = band_limit_halo(k), 1e-6
    expected = np.zeros_like(k)
    for i in np.ndindex(k.shape):
        e = np.zeros_like(k)
        e[i] = step
        expected[i] = ((_numpy_band_limit(x, k + e, 0.05, pad) - _numpy_band_limit(x, k - e, 0.05, pad)) * weights).sum()
    expected /= 2 * step
    assert np.abs(expected).max() > 1e-3  # (a gradient to compare)
    np.testing.assert_allclose(h.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_band_limit_halo_is_eight_psf_widths():
    from deconv3d.fft import band_limit_halo

    grids = np.meshgrid(np.arange(-10, 11), np.arange(-3, 4), indexing="ij")
    psf = np.exp(-grids[0] ** 2 / (2 * 2.0**2) - grids[1] ** 2 / (2 * 0.5**2))
    halo = band_limit_halo(psf)
    assert halo[0] == 16  # ceil(8 * 2.0); the truncated Gaussian's RMS width is just under 2
    assert halo[1] == 4  # 8 * 0.5 = 4 > half-size 3


def test_band_limit_keeps_in_band_content_and_removes_what_the_psf_cannot_pass(rng):
    from deconv3d.fft import band_limit

    grids = np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij")
    psf = np.exp(-sum(g**2 for g in grids) / (2 * 1.5**2))
    psf /= psf.sum()
    smooth = scipy.signal.fftconvolve(rng.random((24, 32, 32)), psf, mode="same")  # lies in the PSF's band
    noise = rng.standard_normal((24, 32, 32))
    kept = band_limit(smooth + noise, psf, 1e-3, dtype=torch.float64).numpy()
    # The smooth part passes nearly untouched, most of the white noise is removed.
    interior = (slice(4, -4),) * 3
    err_before = np.linalg.norm(noise[interior])
    err_after = np.linalg.norm((kept - smooth)[interior])
    assert err_after < 0.35 * err_before
    assert np.linalg.norm((band_limit(smooth, psf, 1e-3, dtype=torch.float64).numpy() - smooth)[interior]) \
        < 0.05 * np.linalg.norm(smooth[interior] - smooth.mean())
    with pytest.raises(InputError, match="positive"):
        band_limit(smooth, psf, 0.0)


def _gaussian_kernel(shape, width):
    grid = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    k = np.exp(-sum(g.astype(float) ** 2 for g in grid) / (2 * width ** 2))
    return (k / k.sum()).astype(np.float32)


@pytest.mark.parametrize("shape", [(32, 48, 40), (96, 80)])
def test_white_noise_variance_finds_the_noise_and_not_the_signal(shape):
    """Known white noise on a blurred phantom is measured to 10%; the blurred phantom alone
    (bright, textured: what a difference-based estimator reads as noise) reads as under 5%
    of the smaller noise variance, though its own variance is far larger."""
    from deconv3d.fft import white_noise_variance

    rng = np.random.default_rng(0)
    psf = _gaussian_kernel((15,) * len(shape), 2.5)
    clean = scipy.signal.fftconvolve(rng.random(shape) ** 8 * 10, psf, mode="same")
    for sigma in (0.02, 0.2):
        noisy = clean + rng.normal(0, sigma, shape)
        assert white_noise_variance(noisy, psf) == pytest.approx(sigma ** 2, rel=0.1)
    assert clean.var() > 50 * 0.02 ** 2
    assert white_noise_variance(clean, psf) < 0.05 * 0.02 ** 2
    assert white_noise_variance(clean, np.ones((1,) * len(shape), np.float32)) is None  # transmits everything


def test_deconvolving_a_stack_of_few_large_planes_does_not_corrupt_the_heap():
    """torch.fft.irfftn on the CPU with MKL corrupts the heap for many shapes of few large planes
    (glibc aborts: 'free(): corrupted unsorted chunks'): Wiener and RL on a 16 x 1024 x 1024
    stack, a common size, died with SIGABRT (found by the scale review; pytorch issue 125664).
    Run in a subprocess, since the failure kills the interpreter; the same spectra must also
    come back as numpy's inverse transform gives them."""
    import os
    import subprocess
    import sys

    script = """
import numpy as np, torch
from deconv3d.classical import richardson_lucy, wiener
from deconv3d._fft_shapes import irfftn
image = np.random.default_rng(0).random((16, 1024, 1024), dtype=np.float32)
psf = np.ones((3, 7, 7), np.float32)
for result in (wiener(image, psf), richardson_lucy(image, psf, iterations=2)):
    assert result.shape == image.shape and np.isfinite(result).all()
for shape in ((2, 512, 512), (1, 1, 5, 2000, 300)):
    x = torch.randn(*shape[:-1], shape[-1] // 2 + 1, dtype=torch.complex64)
    y = irfftn(x, shape[-3:], (-3, -2, -1)).numpy()
    ref = np.fft.irfftn(x.numpy(), s=shape[-3:], axes=(-3, -2, -1))
    assert y.shape == shape and np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), shape
print("ok")
"""
    env = {**os.environ, "DECONV3D_FFT": "torch"}  # RL's loop on torch's transforms too (else FFTW where installed)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("dims", [(-1,), (-2, -1), (-3, -2, -1), (1, 2)])
def test_irfftn_equals_torch_s_with_out_and_uneven_sizes(rng, dims):
    from deconv3d._fft_shapes import irfftn

    x = torch.from_numpy(rng.random((3, 6, 10, 9)).astype(np.float32))
    s = [x.shape[d] + 1 for d in dims]  # padded, odd last: every axis's size is honoured
    spectrum = torch.fft.rfftn(x, s=s, dim=dims)
    out = torch.empty(torch.fft.irfftn(spectrum, s=s, dim=dims).shape)
    result = irfftn(spectrum, s, dims, out=out)
    assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(result, torch.fft.irfftn(spectrum, s=s, dim=dims), rtol=1e-5, atol=1e-6)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def test_cached_otfs_are_capped_by_bytes_the_most_recent_kept(rng, monkeypatch):
    """The cache kept 4 OTFs per convolver and 8 shared convolvers whatever their size: a long-lived
    process (napari, a batch) held 276 MB of OTFs after 8 PSFs x 4 shapes of 60 x 256 x 256. What it
    keeps is told by weak references to the OTFs it handed out (nothing else holds them)."""
    import weakref

    import deconv3d.fft as fft

    monkeypatch.setattr(fft, "OTF_CACHE_BYTES", 10_000)  # room for 3 of the ~2.5-3.5 kB OTFs below
    kernels = [rng.random((3, 3, 3)).astype(np.float32) for _ in range(3)]
    shapes = [(8, 8, 8), (8, 8, 10), (10, 8, 8), (8, 10, 8)]
    handed = []
    for k in kernels:
        for shape in shapes:
            otf = get_convolver(k).otf(shape)  # the convolver and cache of fft_convolve
            handed.append((weakref.ref(otf), _nbytes(otf), k, shape))
            del otf
            kept = [(n, k, s) for ref, n, k, s in handed if ref() is not None]
            assert sum(n for n, _, _ in kept) <= fft.OTF_CACHE_BYTES
            assert handed[-1][0]() is not None, "the most recent OTF is kept"
    assert get_convolver(kernels[-1]).otf(shapes[-1]) is handed[-1][0](), "and reused, not computed again"
    largest = max(n for _, n, _, _ in handed)
    assert sum(n for n, _, _ in kept) > fft.OTF_CACHE_BYTES - largest, "the cache is filled, not emptied"
    assert handed[0][0]() is None, "the least recently used went first"
    again = get_convolver(kernels[0]).otf(shapes[0])  # computed afresh, and right
    padded = np.zeros(shapes[0], np.float32)
    padded[:3, :3, :3] = kernels[0]
    expected = np.fft.rfftn(np.roll(padded, (-1, -1, -1), axis=(0, 1, 2)))
    np.testing.assert_allclose(again.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_an_otf_larger_than_the_cache_is_kept_while_the_newest(rng, monkeypatch):
    """One larger than OTF_CACHE_BYTES was never kept: repeated fft_convolve calls on a large stack
    (256 x 512 x 512 with a 31^3 PSF: ~380 MB) computed it again every time. The newest is kept whatever
    its size, alone; the next one pushes it out."""
    import weakref

    import deconv3d._fft_convolver as convolver
    import deconv3d.fft as fft

    monkeypatch.setattr(fft, "OTF_CACHE_BYTES", 10_000)
    built, wrapped = [], convolver._wrapped
    monkeypatch.setattr(convolver, "_wrapped", lambda *a: built.append(a[1]) or wrapped(*a))
    psf = rng.random((3, 3)).astype(np.float32)
    conv = get_convolver(psf)
    small = weakref.ref(conv.otf((8, 8)))
    x = rng.random((60, 60)).astype(np.float32)  # FFT shape 63 x 64: a 63 x 33 complex64 OTF, 16.6 kB
    expected = scipy.signal.fftconvolve(x, psf, mode="same")
    for _ in range(3):
        np.testing.assert_allclose(fft_convolve(x, psf).numpy(), expected, rtol=1e-4, atol=1e-4)
    assert built == [(8, 8), (63, 64)], "the large OTF computed once, then reused"
    assert small() is None, "older ones dropped for it"
    big = weakref.ref(conv.otf((63, 64)))
    conv.otf((8, 8))
    assert big() is None and built[-1] == (8, 8), "and pushed out by the next one"


def test_a_convolvers_otfs_go_with_it(rng):
    """A convolver built per call (Richardson-Lucy's, Wiener's) leaves no OTF in the shared cache."""
    import weakref

    conv = FFTConvolver(rng.random((3, 3, 3)))
    otf = weakref.ref(conv.otf((8, 8, 8)))
    assert otf() is not None
    del conv
    assert otf() is None


@pytest.mark.parametrize("copy_of", ["deepcopy", "pickle", "copy"])
def test_a_copied_or_unpickled_convolvers_otfs_go_with_it(rng, copy_of):
    """The finalizer that drops a convolver's OTFs was set up in __init__ alone: those of a deep copy
    or an unpickled one (and of a shallow copy that outlived its original) stayed in the shared cache
    after it was gone."""
    import copy
    import pickle
    import weakref

    make = {"deepcopy": copy.deepcopy, "pickle": lambda c: pickle.loads(pickle.dumps(c)), "copy": copy.copy}[copy_of]
    k = rng.random((3, 3, 3))
    conv = FFTConvolver(k, dtype=torch.float64)
    kept = conv.otf((8, 8, 8))
    twin = make(conv)
    x = rng.random((7, 6, 9))
    np.testing.assert_allclose(twin.convolve(x).numpy(), scipy.signal.fftconvolve(x, k, mode="same"), atol=1e-10)
    del twin
    assert conv.otf((8, 8, 8)) is kept, "a copy's going leaves the original's OTFs"
    twin = make(conv)
    del conv, kept
    otf = weakref.ref(twin.otf((8, 8, 8)))
    assert otf() is not None and twin.otf((8, 8, 8)) is otf(), "cached while the copy lives"
    del twin
    assert otf() is None, "and dropped with it"


def test_richardson_lucy_and_wiener_leave_fft_convolves_otf_cached(rng, monkeypatch):
    """RL and Wiener build a convolver per call: its OTF, put in the shared cache, pushed out the one
    kept for fft_convolve and went with the convolver, so the next fft_convolve computed it again.
    Each call still computes its own OTF once (counted by the kernel paddings, one per OTF)."""
    import deconv3d._fft_convolver as convolver
    import deconv3d.fft as fft
    from deconv3d.classical import richardson_lucy, wiener

    monkeypatch.setattr(fft, "OTF_CACHE_BYTES", 30_000)  # 12.5 kB (fft_convolve) and 18.4 (RL) or 26 (Wiener)
    built, wrapped = [], convolver._wrapped
    monkeypatch.setattr(convolver, "_wrapped", lambda *a: built.append(a[1]) or wrapped(*a))
    psf = rng.random((3, 3, 3)).astype(np.float32)
    psf /= psf.sum()
    x, big = rng.random((12, 12, 12)).astype(np.float32), rng.random((14, 14, 14)).astype(np.float32)
    first = fft_convolve(x, psf).numpy()
    assert len(built) == 1
    richardson_lucy(big, psf, iterations=2)
    assert len(built) == 2, "RL computes its OTF once"
    np.testing.assert_array_equal(fft_convolve(x, psf).numpy(), first)
    assert len(built) == 2, "fft_convolve's OTF is still kept after RL: no new kernel FFT"
    wiener(x, psf, regularizer="laplacian")
    assert len(built) == 3, "Wiener computes its OTF once (the Laplacian's power from its formula)"
    again = fft_convolve(x, psf).numpy()
    assert len(built) == 3, "and after Wiener"
    np.testing.assert_allclose(again, scipy.signal.fftconvolve(x, psf, mode="same"), rtol=1e-5, atol=1e-6)
