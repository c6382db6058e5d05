"""Fixtures of the linear-latent tests: tiny seeded focal stacks."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter


def blur_stacks(n_images=2, n_levels=3, size=16, seed=0):
    """``(n_images, n_levels, size, size)`` stacks: smooth random planes blurred more at lower levels."""
    rng = np.random.default_rng(seed)
    sharp = np.stack([gaussian_filter(img, 1.0) for img in rng.random((n_images, size, size))])
    sigmas = np.linspace(2.0, 0.0, n_levels)
    stacks = np.stack([[gaussian_filter(img, s) if s > 0 else img for s in sigmas] for img in sharp])
    lo = stacks.min(axis=(-2, -1), keepdims=True)
    hi = stacks.max(axis=(-2, -1), keepdims=True)
    return ((stacks - lo) / (hi - lo)).astype(np.float32)


@pytest.fixture
def stacks():
    return blur_stacks()


@pytest.fixture
def make_stacks():
    return blur_stacks
