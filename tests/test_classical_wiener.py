"""Wiener against references built outside deconv3d: scikit-image's filter, scipy's forward model,
and the filter's linearity in the image."""

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from deconv3d.classical import wiener
from deconv3d.errors import InputError
from conftest import asymmetric_psf


@pytest.mark.parametrize("shape, kshape", [((21, 24), (5, 7)), ((11, 14, 15), (3, 5, 5))])
@pytest.mark.parametrize("balance", [1e-3, 0.1, 1.0])
def test_wiener_laplacian_periodic_equals_scikit_image(rng, shape, kshape, balance):
    """The docstring's claim: the Laplacian regulariser on a periodic image is scikit-image's
    ``restoration.wiener`` (odd unit-sum PSF, both unclipped). Agreed to 1e-15 of the peak."""
    from skimage.restoration import wiener as skimage_wiener

    psf = asymmetric_psf(kshape).astype(np.float64)
    image = rng.random(shape)
    ours = wiener(image, psf, balance, regularizer="laplacian", boundary="periodic", clip=False, device="cpu",
                  dtype=torch.float64)
    theirs = skimage_wiener(image, psf, balance, clip=False)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9 * np.abs(theirs).max())


def _centroid(a):
    grids = np.indices(a.shape)
    return np.array([(g * a).sum() / a.sum() for g in grids])


@pytest.mark.parametrize("regularizer", ["identity", "laplacian"])
@pytest.mark.parametrize("boundary", ["reflect", "zero", "periodic"])
@pytest.mark.parametrize("shape, kshape", [((33, 30), (7, 6)), ((32, 31), (6, 5)), ((20, 33, 30), (5, 7, 6)),
                                           ((21, 32, 31), (4, 6, 7))], ids=["2d-odd-even", "2d-even-odd",
                                                                            "3d-odd-even", "3d-even-odd"])
def test_wiener_puts_a_blurred_bead_back_where_it_was(shape, kshape, boundary, regularizer):
    """A bead blurred by scipy's ``fftconvolve(mode="same")`` with a lopsided PSF of odd and even sides
    comes back centred on itself: a missing flip, or an even side's centre taken as ``k // 2``
    instead of scipy's ``(k - 1) // 2``, moves it (by the PSF's own offset, 0.1-0.7 voxels here)."""
    psf = asymmetric_psf(kshape).astype(np.float64)
    bead = tuple(n // 2 + 1 for n in shape)  # off the centre, and far enough from the faces that no mirror of it shows
    truth = np.zeros(shape)
    truth[bead] = 1000.0
    image = fftconvolve(truth, psf, mode="same")
    window = tuple(slice(b - 3, b + 4) for b in bead)
    assert np.abs(_centroid(image[window]) - 3).max() > 0.05  # the blur moved it
    result = wiener(image, psf, 1e-3, regularizer=regularizer, boundary=boundary, clip=False, device="cpu",
                    dtype=torch.float64)
    assert np.unravel_index(np.argmax(result), shape) == bead
    np.testing.assert_allclose(_centroid(result[window]), 3.0, atol=1e-3)


@pytest.mark.parametrize("boundary", ["reflect", "zero", "periodic"])
@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_wiener_scales_with_the_image(rng, boundary, factor):
    """The balance is not scaled by the image: the filter is linear, so scaling the image scales the
    (clipped) estimate and nothing else, in float32 (3e-7 of the peak measured)."""
    psf = asymmetric_psf((3, 5, 5))
    image = rng.poisson(50 * fftconvolve(rng.random((10, 24, 24)) > 0.97, psf, mode="same") + 5).astype(np.float32)
    base = wiener(image, psf, 1e-3, boundary=boundary, device="cpu")
    scaled = wiener(image * np.float32(factor), psf, 1e-3, boundary=boundary, device="cpu")
    assert base.dtype == scaled.dtype == np.float32
    np.testing.assert_allclose(scaled / np.float32(factor), base, rtol=0, atol=1e-5 * base.max())


@pytest.mark.parametrize("kwargs, words", [({"regularizer": "tv"}, "unknown regularizer 'tv': choose one of identity"),
                                           ({"boundary": "bertero"}, "unknown boundary 'bertero' for Wiener: choose")])
def test_wiener_names_the_one_bad_option(kwargs, words):
    with pytest.raises(InputError, match=words):
        wiener(np.ones((6, 8, 8), np.float32), np.ones((3, 3, 3), np.float32), device="cpu", **kwargs)
