"""Tiny seeded volumes and PSFs shared by the pipeline tests."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve


def gaussian_psf(shape=(7, 7, 7), sigma=(1.2, 1.0, 1.0)):
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s * s) for g, s in zip(grids, sigma)))
    return (psf / psf.sum()).astype(np.float32)


def blurred_beads(shape, psf, seed=0, count=60):
    """Poisson-noisy image of random beads blurred by ``psf`` (independent of deconv3d's code)."""
    rng = np.random.default_rng(seed)
    obj = np.zeros(shape, np.float64)
    obj[tuple(rng.integers(0, n, count) for n in shape)] = rng.uniform(50, 200, count)
    obj = gaussian_filter(obj, 1.0) + 1.0
    return rng.poisson(np.clip(fftconvolve(obj, psf, mode="same"), 0, None) * 5).astype(np.float32)


@pytest.fixture
def psf3d():
    return gaussian_psf()


@pytest.fixture
def volume(psf3d):
    return blurred_beads((24, 48, 48), psf3d)
