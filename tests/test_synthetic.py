"""Tests for deconv3d.synthetic: phantoms, blur and noise models."""

import numpy as np
import pytest
from scipy import ndimage

from deconv3d import synthetic
from deconv3d.errors import InputError

SHAPES = [(48, 48), (12, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_phantom_deterministic_range_and_content(shape):
    a = synthetic.phantom(shape, seed=3)
    b = synthetic.phantom(shape, seed=3)
    c = synthetic.phantom(shape, seed=4)
    assert a.shape == shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert a.max() > 0.3 and np.count_nonzero(a) > 20


def test_phantom_accepts_generator_and_voxel_size():
    a = synthetic.phantom((8, 24, 24), seed=np.random.default_rng(1), voxel_size=(0.3, 0.1, 0.1))
    b = synthetic.phantom((8, 24, 24), seed=np.random.default_rng(1), voxel_size=(0.3, 0.1, 0.1))
    np.testing.assert_array_equal(a, b)
    assert 0 < a.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("maker", [synthetic.beads, synthetic.filaments, synthetic.nuclei])
def test_building_blocks(maker, shape):
    img = maker(shape, 3, seed=0)
    assert img.shape == shape and img.dtype == np.float32
    assert 0 < img.max() <= 1 and img.min() >= 0
    np.testing.assert_array_equal(img, maker(shape, 3, seed=0))


def test_zero_objects_give_empty_image():
    img = synthetic.phantom((16, 16), seed=0, n_beads=0, n_filaments=0, n_nuclei=0)
    assert not img.any()


@pytest.mark.parametrize("shape", SHAPES)
def test_microtubules(shape):
    img = synthetic.microtubules(shape, seed=2)
    assert img.dtype == np.float32 and 0 < img.max() <= 1 and img.min() >= 0
    assert not np.array_equal(img, synthetic.microtubules(shape, seed=5))


@pytest.mark.parametrize("bad", [(5,), (2, 3, 4, 5), (0, 4)])
def test_bad_shape_raises(bad):
    with pytest.raises(InputError):
        synthetic.phantom(bad)


@pytest.mark.parametrize("shape, psf_shape", [((20, 20), (3, 5)), ((9, 14, 14), (3, 5, 3))])
def test_blur_matches_direct_convolution(shape, psf_shape):
    """Every voxel, the border included: a blur that mirrored or wrapped the image at its edges
    (light from outside the field that no microscope sees) matched the interior only."""
    rng = np.random.default_rng(0)
    image = rng.random(shape)
    psf = rng.random(psf_shape)
    psf /= psf.sum()
    ref = ndimage.convolve(image, psf, mode="constant")  # zeros outside the image
    out = synthetic.blur(image, psf)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_blur_conserves_flux_with_zero_border():
    image = np.zeros((10, 20, 20))
    image[3:7, 6:14, 6:14] = np.random.default_rng(1).random((4, 8, 8))
    psf = np.ones((3, 5, 5)) / 75
    np.testing.assert_allclose(synthetic.blur(image, psf).sum(), image.sum(), rtol=1e-5)


def test_add_noise_mean_and_variance():
    value, photons, read_noise = 0.5, 200.0, 3.0
    image = np.full((200, 200), value)
    image[0, 0] = 1.0  # sets the peak, so scale = photons / 1.0
    noisy = synthetic.add_noise(image, photons=photons, read_noise=read_noise, seed=0)
    flat = noisy[1:, :]
    scale = photons
    expected_var = value / scale + read_noise**2 / scale**2
    assert noisy.dtype == np.float32
    assert abs(flat.mean() - value) < 3 * np.sqrt(expected_var / flat.size)
    assert flat.var() == pytest.approx(expected_var, rel=0.03)


def test_add_noise_background_and_determinism():
    image = np.full((100, 100), 1.0)
    a = synthetic.add_noise(image, photons=100, read_noise=0, background=50, seed=7)
    np.testing.assert_array_equal(a, synthetic.add_noise(image, photons=100, read_noise=0,
                                                         background=50, seed=7))
    assert a.mean() == pytest.approx(1.5, rel=0.01)
    with pytest.raises(InputError):
        synthetic.add_noise(image, photons=0)


def test_add_noise_gaussian_poisson_quantised():
    b = np.linspace(0, 1, 5000).reshape(50, 100)
    y = synthetic.add_noise_gaussian_poisson(b, a=0.001, sigma=0.1, bits=6, seed=0)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    assert len(np.unique(y)) <= 2**6
    np.testing.assert_array_equal(y, synthetic.add_noise_gaussian_poisson(b, bits=6, seed=0))


@pytest.mark.parametrize("bits", [1, 3, 6])
def test_add_noise_gaussian_poisson_quantises_to_exactly_two_to_the_bits_levels(bits):
    """Without noise a ramp over [0, 1] takes every level k / (2**bits - 1) and no other: an
    upper bound on the count alone let a quantiser with a quarter of the levels through."""
    ramp = np.linspace(0, 1, 4001)
    y = synthetic.add_noise_gaussian_poisson(ramp, a=0, sigma=0, bits=bits, seed=0)
    levels = 2**bits - 1
    np.testing.assert_array_equal(np.unique(y), (np.arange(levels + 1) / levels).astype(np.float32))
    np.testing.assert_array_equal(y, (np.round(ramp * levels) / levels).astype(np.float32))


def test_add_noise_gaussian_poisson_statistics():
    b = np.full((300, 300), 0.4)
    y = synthetic.add_noise_gaussian_poisson(b, a=0.01, sigma=0.05, bits=16, seed=1)
    assert y.mean() == pytest.approx(0.4, abs=2e-3)
    assert y.var() == pytest.approx(0.01 * 0.4 + 0.05**2, rel=0.05)


def test_degrade_is_blur_then_noise():
    truth = synthetic.phantom((8, 16, 16), seed=0)
    psf = np.ones((3, 3, 3)) / 27
    out = synthetic.degrade(truth, psf, photons=50, read_noise=1, seed=4)
    ref = synthetic.add_noise(synthetic.blur(truth, psf), photons=50, read_noise=1, seed=4)
    np.testing.assert_array_equal(out, ref)
