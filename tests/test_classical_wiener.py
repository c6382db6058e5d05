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
    # Mirrored twice the filter's reach deep, the bead's mirror images (blurred by the PSF, not its
    # mirror: not the data's continuation) ring into it: 3.3e-3 voxels in the 3d-even-odd case, also with the
    # endless mirror; the faults this looks for moved it by 0.1 or more.
    np.testing.assert_allclose(_centroid(result[window]), 3.0, atol=5e-3 if boundary == "reflect" else 1e-3)


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


def _gaussian(shape, sigma):
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    h = np.exp(-sum(g ** 2 / (2 * s ** 2) for g, s in zip(grids, sigma)))
    return h / h.sum()


def _endless_mirror(image, psf, balance):
    """Wiener with the endless mirror: one period of the mirrored image (``2 (n - 1)`` per axis), built
    here with numpy and filtered as periodic, gives the infinitely mirrored image's result exactly."""
    period = image
    for axis, n in enumerate(image.shape):
        period = np.concatenate([period, np.flip(np.take(period, range(1, n - 1), axis=axis), axis=axis)], axis=axis)
    result = wiener(period, psf, balance, boundary="periodic", clip=False, device="cpu", dtype=torch.float64)
    return result[tuple(slice(0, n) for n in image.shape)]


@pytest.mark.parametrize("shape, kshape, sigma", [((16, 64, 64), (5, 9, 9), (1.5, 1.2, 1.2)),
                                                  ((96, 96), (9, 9), (1.2, 1.2))], ids=["3d", "2d"])
def test_wiener_reflect_boundary_is_the_endless_mirror_at_the_faces(shape, kshape, sigma):
    """The reflect boundary mirrored the image by the PSF's size, short of the inverse filter's reach
    at small balances: with beads on the faces the result was 3.8e-3 (2D) and 0.16 (3D, 16 planes) of
    the peak away from the endless mirror's at a balance of 1e-3, 1e-3 with a mirror of one reach.
    Twice the reach (or one period of the mirror) measured 4.4e-6 and 6.7e-6."""
    rng = np.random.default_rng(7)
    truth = np.full(shape, 5.0)
    spots = rng.integers(0, shape, size=(40, len(shape)))
    for axis in range(len(shape)):  # beads on every face
        spots[2 * axis, axis], spots[2 * axis + 1, axis] = 0, shape[axis] - 1
    truth[tuple(spots.T)] += 100.0
    psf = _gaussian(kshape, sigma)
    blurred = fftconvolve(np.pad(truth, 8, mode="symmetric"), psf, mode="same")[(slice(8, -8),) * len(shape)]
    image = rng.poisson(np.clip(blurred, 0, None)).astype(np.float64)
    ours = wiener(image, psf, 1e-3, clip=False, device="cpu", dtype=torch.float64)
    endless = _endless_mirror(image, psf, 1e-3)
    assert np.abs(ours - endless).max() < 2e-5 * endless.max()


@pytest.mark.parametrize("regularizer", ["identity", "laplacian"])
@pytest.mark.parametrize("planes", [1, 2])
def test_wiener_reflect_takes_one_or_two_planes(planes, regularizer):
    """A side of 1 or 2 makes the reflect boundary's period box 1 or 2 voxels along it, smaller than the
    Laplacian's 3-voxel kernel, whose OTF was then refused ("FFT shape (1, 38, 38) is smaller than the PSF
    (3, 3, 3)"; 597deea took it). The endless mirror of one plane is that plane repeated, of two planes
    the pair alternating: the result is that of 8 such planes, whose period box holds the kernel."""
    rng = np.random.default_rng(3)
    image = rng.poisson(20.0, size=(planes, 24, 26)).astype(np.float64)
    psf = _gaussian((planes, 7, 7), (0.5, 1.2, 1.2))
    thick = np.tile(image, (8 // planes, 1, 1))
    ours = wiener(image, psf, 1e-3, regularizer=regularizer, clip=False, device="cpu", dtype=torch.float64)
    reference = wiener(thick, psf, 1e-3, regularizer=regularizer, clip=False, device="cpu", dtype=torch.float64)
    np.testing.assert_allclose(ours, reference[:planes], rtol=0, atol=1e-9 * reference.max())
