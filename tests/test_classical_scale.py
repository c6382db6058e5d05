"""Richardson-Lucy is scale-equivariant, ``u(m y) = m u(y)``, at any intensity float32 holds: RL,
RL-TV, accelerated RL and the choice of its iteration count, from 1e-30 to 1e25 times the data.

Absolute constants and float32's range broke it at extreme intensities (review of extreme
intensities): RL-TV came out as plain RL at a peak of 1e25 (``|∇u|²`` overflowed) and drifted at
1e-15 (the TV term's least ε), acceleration stopped stepping at 1e-15 (a floor of 1e-30 under
``<g, g>``), choose_iterations picked 1 iteration at 1e25 and 1e-30 (its squared errors overflowed,
or fell to 0), and the ratio's floor of 1e-30 emptied data of peak 1e-30.
"""

import weakref

import numpy as np
import pytest
import scipy.signal
import torch

from conftest import asymmetric_psf
import deconv3d.classical.rl as rl
from deconv3d.classical import choose_iterations, richardson_lucy

SCALES = [1e-30, 1e-15, 1e15, 1e25]


@pytest.fixture(scope="module")
def problem():
    """Blurred boxes over a background, with Poisson noise; peak 1."""
    truth = np.full((8, 24, 24), 0.05)
    truth[2:6, 5:9, 5:9] = 1.0
    truth[3:5, 14:20, 12:16] = 0.5
    psf = asymmetric_psf((3, 5, 5))
    blurred = np.clip(scipy.signal.fftconvolve(truth, psf, mode="same"), 0, None)
    image = np.random.default_rng(0).poisson(300 * blurred).astype(np.float64)
    return image / image.max(), psf


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("method, options, tolerance", [("rl", {}, 1e-5), ("rl-tv", {"tv_weight": 0.01}, 1e-5),
                                                         ("accelerated", {"accelerate": True}, 2e-5)])
def test_richardson_lucy_scales_with_the_data(problem, scale, method, options, tolerance):
    image, psf = problem
    reference = richardson_lucy(image.astype(np.float32), psf, 10, device="cpu", **options)
    seen = []
    result = richardson_lucy((image * scale).astype(np.float32), psf, 10, device="cpu",
                             callback=lambda it, estimate: seen.append(estimate.clone()), **options)
    assert result.dtype == np.float32 and reference.max() > 0.5
    # within float32's round-off of m y (amplified by the adaptive steps of acceleration)
    np.testing.assert_allclose(result / scale, reference, rtol=0, atol=tolerance * reference.max())
    # the callback sees the estimates in the image's units: its last one is the result
    assert len(seen) == 10 and np.array_equal(seen[-1].numpy(), result)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_float64_runs_keep_their_precision_at_any_scale(problem, scale):
    image, psf = problem
    reference = richardson_lucy(image, psf, 10, tv_weight=0.01, device="cpu", dtype=torch.float64)
    result = richardson_lucy(image * scale, psf, 10, tv_weight=0.01, device="cpu", dtype=torch.float64)
    np.testing.assert_allclose(result / scale, reference, rtol=0, atol=1e-12 * reference.max())


@pytest.mark.parametrize("scale", SCALES)
def test_choose_iterations_scales_with_the_data(problem, scale):
    image, psf = problem
    reference = choose_iterations(image.astype(np.float32), psf, 25, patience=5, device="cpu")
    choice = choose_iterations((image * scale).astype(np.float32), psf, 25, patience=5, device="cpu")
    assert reference.iterations > 3 and choice.iterations == reference.iterations
    # the risk in the image's units: mean squared, so m² times the reference's
    np.testing.assert_allclose(np.array(choice.risk) / scale**2, reference.risk, rtol=1e-5)


@pytest.mark.parametrize("peak", [100.0, 1e-12])
@pytest.mark.parametrize("options", [{"tv_weight": 0.01}, {"accelerate": True}])
def test_a_voxel_of_weight_zero_does_not_set_the_working_scale(peak, options):
    """Found by review: the power of two was taken over every voxel, so a voxel of weight 0 (a saturated
    one) at 1e20 set it, and RL-TV's result moved by 14 % of its peak, the accelerated run's by 34 %,
    though weights promise that the estimate does not depend on such a voxel's value. At a peak of
    1e-12 (scaled by the kept voxels' power of two), a left-out 3e38 must not overflow into NaN."""
    rng = np.random.default_rng(0)
    image = (rng.poisson(100, (8, 32, 32)) * (peak / 130)).astype(np.float32)
    psf = np.ones((3, 5, 5), np.float32) / 75
    weights = np.ones_like(image)
    weights[4, 16, 16] = 0
    results = []
    for value in (0.0, 1e20, 3e38):
        image[4, 16, 16] = value
        results.append(richardson_lucy(image, psf, 10, weights=weights, device="cpu", **options))
    assert results[0].max() > 0.5 * peak
    for result in results[1:]:
        assert np.array_equal(result, results[0])


@pytest.mark.parametrize("scale", [1e160, 1e-170])
def test_choose_iterations_chooses_in_float64_where_the_risk_overflows_or_underflows(problem, scale):
    """Found by review: the risk was scaled back by ``4.0 ** exponent``, which raised OverflowError at
    1e160 (float64), and at 1e-170 was 0, so every risk was 0 and 1 iteration was chosen. The
    choice compares the risks in the working units; in the image's they are Inf, or 0."""
    image, psf = problem
    reference = choose_iterations(image, psf, 25, patience=5, device="cpu", dtype=torch.float64)
    choice = choose_iterations(image * scale, psf, 25, patience=5, device="cpu", dtype=torch.float64)
    assert reference.iterations > 3 and choice.iterations == reference.iterations
    assert len(choice.risk) == len(reference.risk)
    assert all(r == (np.inf if scale > 1 else 0.0) for r in choice.risk)


def test_a_tv_scale_is_divided_alike_at_the_ends_of_float64s_range(problem):
    """Found by review: a tv_scale was divided by ``2.0 ** -exponent``, which raised OverflowError for
    float64 data of peak 1e-310 (exponent -1030). Data and scale 2**-1030 times a reference run's
    (subnormal numbers) give its result 2**-1030 times."""
    image, psf = problem
    reference = richardson_lucy(image, psf, 5, tv_weight=0.01, tv_scale=0.8, device="cpu", dtype=torch.float64)
    result = richardson_lucy(np.ldexp(image, -1030), psf, 5, tv_weight=0.01, tv_scale=np.ldexp(0.8, -1030),
                             device="cpu", dtype=torch.float64)
    assert reference.max() > 0.5
    np.testing.assert_allclose(np.ldexp(result, 1030), reference, rtol=0, atol=1e-9 * reference.max())


def test_a_callback_that_reads_no_estimate_gets_no_copy_nor_keeps_the_scaled_data(problem, monkeypatch):
    """Found by review: at a peak beyond 2**32 every callback got a scaled copy of the estimate per
    iteration, also the chunked pipeline's cancel check and the progress bar, which read none, and
    the scaled copy of the data was held through the loop: a block's peak memory grew by 1-1.5
    blocks. A callback marked by _ignores_estimate gets the working estimate (one buffer, kept here
    by reference), and the scaled data are freed before the first iteration."""
    image, psf = problem
    made, original = [], rl._working_data

    def working_data(y, keep=None):
        work, exponent = original(y, keep)
        made.append(weakref.ref(work))
        return work, exponent

    monkeypatch.setattr("deconv3d.classical.rl._working_data", working_data)
    seen, alive = [], []

    def callback(it, estimate):
        seen.append(estimate)
        alive.append(made[0]() is not None)

    result = richardson_lucy((image * 2.0**40).astype(np.float32), psf, 5, device="cpu",
                             callback=rl._ignores_estimate(callback))
    assert len(seen) == 5 and len({estimate.untyped_storage().data_ptr() for estimate in seen}) == 1
    assert not any(alive)
    # the working estimate is the result divided by 2**40 (here, before its clamp at 0)
    np.testing.assert_array_equal(np.ldexp(seen[-1].clamp_min(0).numpy(), 40), result)
