"""A hot pixel sets the range a plane is min-max normalised by: blur synthesis and deblurring warn
of one (leaving it out of the range instead changed ordinary planes: a rule on neighbours alone took
noise maxima of 37 % of photon-limited planes, and narrow beads, for hot pixels)."""

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from deconv3d.latent.ops import deblur, synthesize_blur


class Identity:
    divisor = 1

    @staticmethod
    def encode(x):
        return x

    @staticmethod
    def decode(z):
        return z


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_a_hot_pixel_is_warned_about_where_it_sets_the_range():
    rng = np.random.default_rng(0)
    far = (gaussian_filter(rng.random((32, 32)), 3) * 1000 + 100).astype(np.float32)
    near = (gaussian_filter(rng.random((32, 32)), 1) * 1000 + 100).astype(np.float32)
    quiet(synthesize_blur, Identity(), far, near, [0.5])
    hot = near.copy()
    hot[5, 20] = 10 * near.max()
    with pytest.warns(RuntimeWarning, match=r"near plane's brightest pixel, at \(y=5, x=20\).*hot pixel") as caught:
        synthesize_blur(Identity(), far, hot, [0.5])
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(RuntimeWarning, match=r"plane to deblur's brightest pixel"):
        deblur(Identity(), far, hot, 0.5)


@pytest.mark.parametrize("kind", ["photon-limited", "narrow beads"])
def test_ordinary_planes_are_not_taken_for_hot_pixels(kind):
    """A noise maximum, or one of several beads narrower than a pixel, has its like elsewhere."""
    rng = np.random.default_rng(1)
    planes = []
    for _ in range(20):
        if kind == "photon-limited":
            planes.append(rng.poisson(2.0, (48, 48)).astype(np.float32))
        else:
            spots = np.zeros((48, 48))
            at = rng.integers(2, 46, (12, 2))
            spots[at[:, 0], at[:, 1]] = rng.uniform(500, 1000, 12)
            planes.append((rng.poisson(gaussian_filter(spots, 0.6) * 6 + 20) + 100).astype(np.float32))
    for far, near in zip(planes[::2], planes[1::2]):
        quiet(synthesize_blur, Identity(), far, near, [0.25, 0.75])
