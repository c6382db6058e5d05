"""Tests for deconv3d.metrics against skimage.metrics."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deconv3d import metrics
from deconv3d.errors import InputError

SHAPES = [(32, 32), (9, 16, 16)]


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.random(shape).astype(np.float32)
    return ref, (ref + 0.1 * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_psnr_matches_skimage(shape):
    ref, img = _pair(shape)
    expected = peak_signal_noise_ratio(ref, img, data_range=float(ref.max() - ref.min()))
    assert metrics.psnr(ref, img) == pytest.approx(expected, rel=1e-5)
    assert metrics.psnr(ref, img, data_range=2.0) == pytest.approx(
        peak_signal_noise_ratio(ref, img, data_range=2.0), rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_matches_skimage(shape):
    ref, img = _pair(shape)
    expected = structural_similarity(ref, img, data_range=float(ref.max() - ref.min()))
    assert metrics.ssim(ref, img) == pytest.approx(expected, rel=1e-5)


def test_ssim_small_volume_uses_smaller_window():
    ref, img = _pair((4, 5, 6))
    expected = structural_similarity(ref, img, data_range=float(ref.max() - ref.min()),
                                     win_size=3)
    assert metrics.ssim(ref, img) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError):
        metrics.ssim(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))


def test_identical_arrays_and_monotonic_in_noise():
    ref, _ = _pair((24, 24))
    assert metrics.psnr(ref, ref) == np.inf
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(ref.shape)
    scores = [metrics.psnr(ref, ref + s * noise) for s in (0.01, 0.05, 0.2)]
    assert scores[0] > scores[1] > scores[2]


def test_rescale_affine_recovers_a_and_b():
    ref, _ = _pair((10, 12, 12))
    a, b = 2.5, -0.7
    out = metrics.rescale_affine(ref, (ref - b) / a)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_rescale_affine_constant_image_gives_mean():
    ref, _ = _pair((8, 8))
    np.testing.assert_allclose(metrics.rescale_affine(ref, np.ones_like(ref)), ref.mean(),
                               rtol=1e-6)


def test_rescaled_metrics_ignore_affine_changes():
    ref, img = _pair((24, 24))
    assert metrics.psnr_rescaled(ref, 4 * img + 3) == pytest.approx(
        metrics.psnr_rescaled(ref, img), rel=1e-4)
    assert metrics.ssim_rescaled(ref, 4 * img + 3) == pytest.approx(
        metrics.ssim_rescaled(ref, img), rel=1e-4)
    fitted = metrics.rescale_affine(ref, img)
    assert metrics.psnr_rescaled(ref, img) == pytest.approx(
        peak_signal_noise_ratio(ref, fitted, data_range=1.0), rel=1e-5)


def test_shape_mismatch_raises():
    with pytest.raises(InputError):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 5)))
