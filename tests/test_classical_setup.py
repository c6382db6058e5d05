"""The fixed pieces built before Richardson-Lucy's first iteration: Bertero's ``H^T 1`` by
separable box sums and the OTF's kernel wrapped around the origin, each against an independent
reference (scipy's correlation, torch.roll of the padded kernel) and against the FFT route."""

import numpy as np
import pytest
import scipy.signal
import torch

from deconv3d._fft_convolver import _wrapped
from deconv3d.classical._problem import _build_problem, _check_inputs, _transpose_of, _transpose_of_ones

CASES = [((9, 20, 23), (5, 7, 4)), ((7, 16, 16), (7, 7, 7)), ((20, 23), (6, 5)), ((15, 18), (5, 9))]


@pytest.mark.parametrize("shape, psf_shape", CASES)
@pytest.mark.parametrize("boundary", ["zero", "bertero", "reflect", "periodic"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_transpose_of_ones_equals_the_fft_route(shape, psf_shape, boundary, dtype, tol):
    rng = np.random.default_rng(3)
    y, h = _check_inputs(rng.random(shape).astype(np.float32), rng.random(psf_shape), "cpu", dtype)
    problem = _build_problem(y, h, boundary)
    by_fft = _transpose_of(problem, torch.ones_like(problem.data))
    by_boxes = _transpose_of_ones(problem, h)
    assert by_boxes.shape == by_fft.shape and by_boxes.dtype == dtype and by_boxes.is_contiguous()
    assert float((by_boxes - by_fft).abs().max()) < tol
    assert float(by_boxes.min()) >= 0  # sums of non-negative terms: no round-off below zero


@pytest.mark.parametrize("shape, psf_shape", [((9, 20, 23), (5, 7, 3)), ((20, 23), (7, 5))])
def test_transpose_of_ones_is_the_psf_correlated_with_the_image_domain(shape, psf_shape):
    rng = np.random.default_rng(4)
    psf = rng.random(psf_shape)
    y, h = _check_inputs(np.ones(shape, np.float32), psf, "cpu", torch.float64)
    expected = scipy.signal.correlate(np.ones(shape), psf / psf.sum(), mode="same")  # odd kernels: same origin
    got = _transpose_of_ones(_build_problem(y, h, "zero"), h).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("psf_shape, fft_shape", [((5, 7, 4), (9, 12, 10)), ((6, 5), (8, 9)), ((3,), (7,)),
                                                  ((4, 4, 4), (4, 4, 4))])
@pytest.mark.parametrize("where", ["centre", "zero", "last", "before", "after"])
def test_wrapped_kernel_equals_the_rolled_padded_kernel(psf_shape, fft_shape, where):
    kernel = torch.tensor(np.random.default_rng(5).random(psf_shape), dtype=torch.float32)
    origin = {"centre": [(k - 1) // 2 for k in psf_shape], "zero": [0] * len(psf_shape),
              "last": [k - 1 for k in psf_shape], "before": [-1] * len(psf_shape),
              "after": [k + 2 for k in psf_shape]}[where]
    padded = torch.zeros(fft_shape)
    padded[tuple(slice(0, k) for k in psf_shape)] = kernel
    expected = torch.roll(padded, tuple(-o for o in origin), tuple(range(-len(fft_shape), 0)))
    assert torch.equal(_wrapped(kernel, fft_shape, origin), expected)


def test_wrapped_kernel_passes_gradients_to_every_kernel_voxel():
    kernel = torch.rand(5, 6, requires_grad=True)
    weights = torch.arange(81.0).reshape(9, 9)
    (_wrapped(kernel, (9, 9), (2, 2)) * weights).sum().backward()
    expected = torch.roll(weights, (2, 2), (0, 1))[:5, :6]  # kernel voxel k sits at (k - origin) mod 9
    assert torch.equal(kernel.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_reciprocal_is_zero_at_and_below_the_threshold(dtype):
    from deconv3d.classical._problem import _safe_reciprocal

    weight = torch.tensor([0.0, 5e-4, 1e-3, 1.0001e-3, 0.5, 2.0], dtype=dtype)
    expected = torch.where(weight <= 1e-3, torch.zeros_like(weight), 1 / weight)
    assert torch.equal(_safe_reciprocal(weight, 1e-3), expected)


def test_the_flat_start_is_the_data_mean_where_bertero_s_weight_is_positive():
    from deconv3d.classical._iterate import _initial_estimate

    image = torch.rand(6, 20, 20, generator=torch.Generator().manual_seed(0))
    psf = torch.ones(5, 5, 5) / 125
    p = _build_problem(image, psf, "bertero")
    p.inv_weight[0, 0, 0] = 0.0  # (a voxel no data constrain)
    u = _initial_estimate(p)
    mean = torch.tensor(float(image.mean()))
    assert torch.equal(u, torch.where(p.inv_weight > 0, mean, torch.zeros(())).expand_as(u))
    assert u[0, 0, 0] == 0 and (u > 0).sum() == (p.inv_weight > 0).sum() < u.numel()


@pytest.mark.parametrize("values, finite", [
    ([1.0, 2.0], True), ([1.0, float("nan")], False), ([float("inf"), 1.0], False), ([-float("inf"), 1.0], False),
    ([float("inf"), -float("inf")], False), ([3e38, 3e38, -1.0], True), ([], True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_all_finite_agrees_with_isfinite(values, finite, dtype):
    from deconv3d._tensors import all_finite

    t = torch.tensor(values, dtype=torch.float32).to(dtype)  # 3e38 is inf in float16: not finite there
    assert all_finite(t) is bool(torch.isfinite(t).all())
    assert all_finite(t) is (finite if dtype == torch.float32 or not values or values[0] != 3e38 else False)
    assert all_finite(torch.tensor([1, 2])) and all_finite(torch.tensor([True]))
    assert not all_finite(torch.tensor([complex(1, float("nan"))]))
