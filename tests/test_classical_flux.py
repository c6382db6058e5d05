"""Photometric fidelity of the classical methods: the intensities a microscopist measures after
deconvolution (a nucleus's total, a background level) keep the data's units and total.

Richardson-Lucy with a unit-sum PSF keeps the total: ``sum(u) = sum(y)`` for the zero boundary
after every iteration (Shepp & Vardi 1982's EM property; skimage's ``richardson_lucy`` too), and
Bertero's estimate on the extended domain predicts the field's total, ``sum(valid(u * h)) = sum(y)``.
Measured on these volumes: both within 8e-8 of the data's total in float32. Bertero's estimate cropped
to the field is not bound to the data's total (light from the field falls outside it and light from
outside falls in: 1.016-1.030 of it on a 12 x 32 x 32 bead volume).
"""

import numpy as np
import pytest
import scipy.signal
from skimage.restoration import richardson_lucy as skimage_richardson_lucy

from conftest import asymmetric_psf
from deconv3d.classical import richardson_lucy, wiener

SHAPES = [((24, 24), (5, 5)), ((8, 20, 20), (3, 5, 5))]


def beads(shape, kernel_shape, seed=0):
    """Poisson counts of a few bright beads over a background of 2, blurred by a lopsided PSF."""
    rng = np.random.default_rng(seed)
    truth = np.full(shape, 2.0)
    truth[tuple(rng.integers(0, n, 6) for n in shape)] += 300.0
    psf = asymmetric_psf(kernel_shape)
    blurred = np.clip(scipy.signal.fftconvolve(truth, psf, mode="same"), 0, None)
    return rng.poisson(blurred).astype(np.float32), psf


@pytest.mark.parametrize("shape, kernel_shape", SHAPES)
@pytest.mark.parametrize("accelerate", [False, True])
def test_zero_boundary_keeps_the_total_intensity(shape, kernel_shape, accelerate):
    image, psf = beads(shape, kernel_shape)
    result = richardson_lucy(image, psf, 15, boundary="zero", accelerate=accelerate, device="cpu")
    total = image.sum(dtype=np.float64)
    assert result.sum(dtype=np.float64) == pytest.approx(total, rel=1e-6)
    reference = skimage_richardson_lucy(image.astype(np.float64), psf.astype(np.float64), 15, clip=False)
    assert reference.sum() == pytest.approx(total, rel=1e-9)  # the property is RL's, not this code's


@pytest.mark.parametrize("shape, kernel_shape", SHAPES)
@pytest.mark.parametrize("accelerate", [False, True])
def test_bertero_predicts_the_total_intensity_of_the_field(shape, kernel_shape, accelerate):
    image, psf = beads(shape, kernel_shape)
    extended = richardson_lucy(image, psf, 15, boundary="bertero", accelerate=accelerate, extended=True, device="cpu")
    predicted = scipy.signal.convolve(extended.astype(np.float64), psf.astype(np.float64), mode="valid")
    assert predicted.shape == image.shape
    assert predicted.sum() == pytest.approx(image.sum(dtype=np.float64), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float64])
@pytest.mark.parametrize("method", ["rl", "rl-tv", "wiener"])
def test_integer_and_float64_images_are_read_at_their_values(dtype, method):
    """No rescaling to [0, 1] and no offset: an image in camera counts of any dtype gives, bit for bit,
    the result of the same values in float32 (a signed image with its negative read noise included)."""
    image, psf = beads((8, 20, 20), (3, 5, 5))
    image = np.clip(image - 3, -3, 255)  # negatives for the signed dtypes; within uint8 for all
    if np.dtype(dtype).kind == "u":
        image = np.clip(image, 0, None)
    run = {"rl": lambda y: richardson_lucy(y, psf, 8, boundary="zero", device="cpu"),
           "rl-tv": lambda y: richardson_lucy(y, psf, 8, tv_weight=0.01, device="cpu"),
           "wiener": lambda y: wiener(y, psf, clip=False, device="cpu")}[method]
    expected = run(image.astype(np.float32))
    assert expected.max() > 50  # in counts, not normalised
    np.testing.assert_array_equal(run(image.astype(dtype)), expected)


@pytest.mark.parametrize("method", ["rl", "wiener"])
def test_a_psf_in_counts_changes_no_intensity(method):
    """A bead image's PSF in camera counts (uint16, peak 60000) is scaled to unit sum: the result
    is that of the unit-sum PSF to float32's round-off, not 1e-6 or 1e5 times it."""
    image, _ = beads((8, 20, 20), (3, 5, 5))
    counts = np.round(asymmetric_psf((3, 5, 5)) * 60000 / asymmetric_psf((3, 5, 5)).max()).astype(np.uint16)
    unit = (counts / counts.sum(dtype=np.float64)).astype(np.float32)
    run = {"rl": lambda h: richardson_lucy(image, h, 8, device="cpu"),
           "wiener": lambda h: wiener(image, h, device="cpu")}[method]
    expected = run(unit)
    np.testing.assert_allclose(run(counts), expected, rtol=0, atol=1e-5 * expected.max())
