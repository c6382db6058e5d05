"""Latent arithmetic of deconv3d.latent.ops: exact against hand computation with linear toys."""

import warnings

import numpy as np
import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.latent.model import AEConfig, build_autoencoder
from deconv3d.latent.ops import (blend_pixels, deblur, extrapolate_pixels, interior_fractions, interpolate, lincomb,
                                 synthesize_blur)


class LinearToy:
    """Linear encoder/decoder ``z = A x``, ``y = B z`` on flattened planes (a tuple latent: (A x, 2 A x))."""

    def __init__(self, n_pixels, n_latent=5, seed=0, divisor=1, shape=(4, 4)):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(n_latent, n_pixels, generator=g, dtype=torch.float64)
        self.B = torch.randn(n_pixels, n_latent, generator=g, dtype=torch.float64)
        self.divisor, self.shape = divisor, shape

    def encode(self, x):
        z = x.reshape(x.shape[0], -1).double() @ self.A.T
        return (z, 2 * z)

    def decode(self, z):
        y = 0.5 * (z[0] + 0.5 * z[1]) @ self.B.T
        return y.reshape(-1, 1, *self.shape).float()

    def numpy(self, x):
        """Hand reference: ``A`` and ``B`` applied to one flattened plane."""
        return self.A.numpy() @ x.ravel()


class Squared(LinearToy):
    """The linear toy with its output squared: a decoder that is not linear in the latent."""

    def decode(self, z):
        return super().decode(z) ** 2

    def decode_numpy(self, z):
        """Hand reference of ``decode((z, 2 z))`` for one flattened latent ``z``: ``(B z) ** 2``."""
        return ((0.5 * (z + z) @ self.B.numpy().T) ** 2).reshape(self.shape)


class ScaledIdentity:
    divisor = 1

    @staticmethod
    def encode(x):
        return 3.0 * x

    @staticmethod
    def decode(z):
        return z / 3.0


def unit_planes(seed=0, shape=(4, 4)):
    """Two planes with min 0 and max 1 (so min-max normalisation changes nothing)."""
    rng = np.random.default_rng(seed)
    planes = rng.random((2,) + shape)
    planes.reshape(2, -1)[:, 0], planes.reshape(2, -1)[:, 1] = 0.0, 1.0
    return planes.astype(np.float32)


def test_lincomb_on_tuples_and_tensors_is_exact():
    a, b = (torch.tensor([1.0, 2.0]), torch.tensor([4.0])), (torch.tensor([3.0, -1.0]), torch.tensor([0.5]))
    z = lincomb([0.25, 0.75], [a, b])
    assert torch.equal(z[0], torch.tensor([2.5, -0.25])) and torch.equal(z[1], torch.tensor([1.375]))
    assert torch.equal(lincomb([2.0, -1.0], [a[0], b[0]]), torch.tensor([-1.0, 5.0]))
    assert torch.equal(interpolate(a[0], b[0], 0.25)[0:1], torch.tensor([1.5]))
    with pytest.raises(InputError):
        lincomb([1.0], [a, b])
    with pytest.raises(InputError):
        lincomb([1.0, 1.0], [a, (b[0],)])


@pytest.mark.parametrize("fractions", [[0.25, 0.5], [0.0, 1.0], [-0.5, 1.5]])
def test_synthesis_matches_hand_computation_with_linear_toy(fractions):
    far, near = unit_planes()
    toy = LinearToy(16)
    out = synthesize_blur(toy, far, near, fractions)
    for plane, a in zip(out, fractions):
        z = (1 - a) * toy.numpy(far) + a * toy.numpy(near)
        want = (toy.B.numpy() @ z).reshape(4, 4)
        np.testing.assert_allclose(plane, want, rtol=1e-5, atol=1e-5)


def test_deblur_matches_hand_computation_with_linear_toy():
    far, plane = unit_planes(1)
    toy = LinearToy(16, seed=3)
    alpha = 0.3
    z = (toy.numpy(plane) - alpha * toy.numpy(far)) / (1 - alpha)
    want = (toy.B.numpy() @ z).reshape(4, 4)
    np.testing.assert_allclose(deblur(toy, far, plane, alpha), want, rtol=1e-5, atol=1e-5)


def test_identity_autoencoder_reduces_to_pixel_arithmetic_including_extrapolation():
    far, near = unit_planes(2)
    fractions = [-0.5, 0.0, 0.3, 1.0, 2.0]
    np.testing.assert_allclose(synthesize_blur(ScaledIdentity(), far, near, fractions),
                               blend_pixels(far, near, fractions), atol=1e-6)
    np.testing.assert_allclose(blend_pixels(far, near, [0.25])[0], 0.75 * far + 0.25 * near, atol=1e-7)
    np.testing.assert_allclose(deblur(ScaledIdentity(), far, near, 0.4), extrapolate_pixels(far, near, 0.4),
                               atol=1e-6)
    np.testing.assert_allclose(extrapolate_pixels(far, near, 0.4), (near - 0.4 * far) / 0.6, atol=1e-6)


def test_deblur_inverts_synthesis():
    """Synthesising at fraction a and deblurring with alpha = 1 - a gives the sharp plane back."""
    far, near = unit_planes(4)
    toy = ScaledIdentity()
    mid = synthesize_blur(toy, far, near, [0.25])[0]
    np.testing.assert_allclose(deblur(toy, far, mid, 0.75), near, atol=1e-5)


def test_intensity_scale_follows_the_inputs():
    far, near = unit_planes(5)
    toy = ScaledIdentity()
    base = synthesize_blur(toy, far, near, [0.5])
    np.testing.assert_allclose(synthesize_blur(toy, 10 * far + 2, 10 * near + 2, [0.5]), 10 * base + 2, rtol=1e-5)


def test_sizes_off_the_divisor_are_padded_and_cropped_back():
    model = build_autoencoder(AEConfig(widths=(4, 8), crop=16), seed=0)
    rng = np.random.default_rng(0)
    far, near = rng.random((2, 18, 21))
    assert synthesize_blur(model, far, near, [0.5, 1.5]).shape == (2, 18, 21)
    assert deblur(model, far, near, 0.5).shape == (18, 21)
    with pytest.raises(InputError, match="multiple"):
        synthesize_blur(model, far, near, [0.5], fit="error")


def test_interior_fractions():
    np.testing.assert_allclose(interior_fractions(3), [0.25, 0.5, 0.75])


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.2, 1.5, float("nan"), 0.92, 0.9999])
def test_deblur_refuses_alpha_outside_open_unit_interval(alpha):
    """Beyond 10/11 the weight 1 / (1 - alpha) passes the 11 that blur synthesis allows."""
    far, near = unit_planes()
    with pytest.raises(InputError, match="alpha"):
        deblur(ScaledIdentity(), far, near, alpha)
    assert np.isfinite(deblur(ScaledIdentity(), far, near, 10 / 11)).all()


def test_bad_planes_are_input_errors():
    far, near = unit_planes()
    with pytest.raises(InputError, match="shape"):
        synthesize_blur(ScaledIdentity(), far, near[:3], [0.5])
    with pytest.raises(InputError, match="2D"):
        synthesize_blur(ScaledIdentity(), np.stack([far, near]), near, [0.5])
    with pytest.raises(InputError, match="shape"):
        deblur(ScaledIdentity(), far[:, :3], near, 0.5)
    with pytest.raises(InputError):
        synthesize_blur(ScaledIdentity(), far, near, [])
    with pytest.raises(InputError, match="NaN"):
        synthesize_blur(ScaledIdentity(), far, np.full_like(near, np.nan), [0.5])


def test_residual_deblur_adds_back_what_the_autoencoder_lost_from_the_plane():
    """A rank-5 linear toy on 16 pixels loses detail: D(E(x)) = B A x != x.

    Residual deblur must equal the plain extrapolation plus the plane's own reconstruction
    error, ``x_k - B A x_k``, computed here by hand, and differ from the plain result.
    """
    far, plane = unit_planes(4)
    toy = LinearToy(16, n_latent=5)
    A, B = toy.A.numpy(), toy.B.numpy()
    for alpha in (0.25, 0.5, 0.8):
        c_far, c_plane = -alpha / (1 - alpha), 1 / (1 - alpha)
        plain = (B @ A @ (c_far * far.ravel() + c_plane * plane.ravel())).reshape(4, 4)
        expected = plain + plane - (B @ A @ plane.ravel()).reshape(4, 4)
        got = deblur(toy, far, plane, alpha, residual=True)
        np.testing.assert_allclose(deblur(toy, far, plane, alpha), plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        assert np.abs(got - plain).max() > 0.1


def test_residual_synthesis_is_blend_plus_the_decoders_departure_from_linearity():
    """With a linear toy, D is linear in z, so the correction vanishes: residual = pixel blend.

    With an added nonlinearity in the decoder, the correction is exactly
    ``D(z_a) - [(1 - a) D(z_far) + a D(z_near)]``, computed here by hand.
    """
    far, near = unit_planes(3)
    toy = LinearToy(16, n_latent=16)
    fractions = [0.0, 0.25, 0.5, 1.0]
    np.testing.assert_allclose(synthesize_blur(toy, far, near, fractions, residual=True),
                               blend_pixels(far, near, fractions), atol=1e-4)  # float32 decode

    sq = Squared(16, n_latent=16)
    za, zb = sq.numpy(far), sq.numpy(near)
    dec = sq.decode_numpy
    for a in fractions:
        expected = (1 - a) * far + a * near + dec((1 - a) * za + a * zb) - (1 - a) * dec(za) - a * dec(zb)
        got = synthesize_blur(sq, far, near, [a], residual=True)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(synthesize_blur(sq, far, near, [0.0, 1.0], residual=True), np.stack([far, near]),
                               atol=1e-4)


def test_residual_synthesis_blends_planes_of_different_intensity_ranges_exactly():
    """Defocus keeps the flux and lowers the peak, so the two planes span different ranges: with
    linear latents the residual form is pixel blending in the planes' own intensities (it was off
    by up to 26 of 260 counts when the blend was mapped back with the blended range)."""
    from scipy.ndimage import gaussian_filter

    sharp = np.zeros((32, 32), np.float32)
    sharp[16, 16] = sharp[8, 20] = 1000.0
    near, far = gaussian_filter(sharp, 1.0) + 100, gaussian_filter(sharp, 3.0) + 100
    fractions = [0.0, 0.25, 0.5, 1.0, 1.5]
    got = synthesize_blur(ScaledIdentity(), far, near, fractions, residual=True)
    np.testing.assert_allclose(got, blend_pixels(far, near, fractions), atol=1e-4 * near.max())
    plain = synthesize_blur(ScaledIdentity(), far, near, [0.5])  # the paper's form maps the normalised blend back
    assert np.abs(plain - blend_pixels(far, near, [0.5])).max() > 1


@pytest.mark.parametrize("trained_residual", [False, True])
@pytest.mark.parametrize("wrapped", [True, False])
def test_a_trained_model_is_applied_in_the_form_it_was_trained_in(trained_residual, wrapped):
    """A model that carries its training config (what ``train`` and ``load_checkpoint`` return),
    or a network that records its form (their ``.model``), is applied in its trained form unless
    ``residual`` says otherwise, which warns; a bare network that knows nothing plainly."""
    from deconv3d.latent.checkpoint import TrainedAutoencoder
    from deconv3d.latent.ops import FormWarning
    from deconv3d.latent.train import LatentTrainConfig

    far, plane = unit_planes(4)
    toy = LinearToy(16, n_latent=5)  # rank 5: the residual form differs from the plain one
    if wrapped:
        trained = TrainedAutoencoder(toy, None, LatentTrainConfig(residual=trained_residual), np.zeros(2, np.float32))
    else:
        trained = LinearToy(16, n_latent=5)
        trained.residual = trained_residual
    for residual in (None, False, True):
        form = trained_residual if residual is None else residual
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            synth = synthesize_blur(trained, far, plane, [0.25, 0.5], residual=residual)
            sharp = deblur(trained, far, plane, 0.5, residual=residual)
        assert [w.category for w in caught] == [FormWarning] * 2 * (form != trained_residual)
        assert all("not trained for" in str(w.message) and "\n" not in str(w.message) for w in caught)
        np.testing.assert_array_equal(synth, synthesize_blur(toy, far, plane, [0.25, 0.5], residual=form))
        np.testing.assert_array_equal(sharp, deblur(toy, far, plane, 0.5, residual=form))
    np.testing.assert_array_equal(deblur(toy, far, plane, 0.5), deblur(toy, far, plane, 0.5, residual=False))
    assert np.abs(deblur(toy, far, plane, 0.5, residual=True) - deblur(toy, far, plane, 0.5)).max() > 0.1


def test_deblur_maps_the_output_to_the_extrapolated_range_of_the_inputs():
    """Planes of different intensity ranges (far in [b, a + b], plane in [d, c + d]) with a toy whose
    latents are exactly linear: the normalised output ``y = cf u + cp v`` (u, v the min-max
    normalised planes, cf = -alpha / (1 - alpha), cp = 1 / (1 - alpha)) is mapped to
    ``(cf lo_far + cp lo_plane, cf hi_far + cp hi_plane)``; where that range is empty or inverted,
    to the plane's own range (module docstring of deconv3d.latent.ops)."""
    u, v = unit_planes(6)
    cases = [(20.0, 10.0, 100.0, 5.0, 0.25, None),  # far in [10, 30], plane in [5, 105]: the mapped range
             (100.0, 0.0, 10.0, 0.0, 0.5, (0.0, 10.0))]  # hi = -100 + 20 < lo = 0: the plane's own range
    for a, b, c, d, alpha, fallback in cases:
        far, plane = a * u + b, c * v + d
        cf, cp = -alpha / (1 - alpha), 1 / (1 - alpha)
        lo, hi = (cf * b + cp * d, cf * (a + b) + cp * (c + d)) if fallback is None else fallback
        assert hi > lo
        want = lo + (hi - lo) * (cf * u + cp * v)
        for residual in (False, True):  # an exact autoencoder leaves no residual to add
            got = deblur(ScaledIdentity(), far, plane, alpha, residual=residual)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("s_far, s_near", [(2.0, 50.0), (50.0, 2.0)])
def test_residual_synthesis_scales_the_correction_by_the_blended_span(s_far, s_near):
    """With planes spanning different ranges (s_far, s_near counts) and a decoder nonlinear in the
    latent, the correction ``D(z_a) - [(1 - a) D(z_far) + a D(z_near)]`` (normalised units) is
    scaled by ``(1 - a) s_far + a s_near``, or, where extrapolation makes that not positive
    (a = -0.1 for spans 2 / 50, a = 1.5 for 50 / 2), by the span of the nearer end plane, as the
    synthesize_blur docstring says."""
    u, v = unit_planes(7)
    far, near = s_far * u + 1, s_near * v - 3
    sq = Squared(16, n_latent=16, seed=2)
    zf, zn = sq.numpy(u), sq.numpy(v)
    fractions = [-0.1, 0.25, 0.5, 0.9, 1.5]
    got = synthesize_blur(sq, far, near, fractions, residual=True)
    for plane, a in zip(got, fractions):
        span = (1 - a) * s_far + a * s_near
        span = span if span > 0 else (s_near if a >= 0.5 else s_far)
        correction = sq.decode_numpy((1 - a) * zf + a * zn) - (1 - a) * sq.decode_numpy(zf) - a * sq.decode_numpy(zn)
        want = (1 - a) * far + a * near + span * correction
        assert np.abs(span * correction).max() > 10  # the correction matters at this scale
        np.testing.assert_allclose(plane, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("fractions", [[1e39], [0.5, -1e30], [11.5], [-10.5]])
def test_fractions_beyond_the_extrapolation_limits_are_input_errors(fractions):
    """1e39 is finite in float64 but overflows float32, which used to give an all-NaN stack."""
    far, near = unit_planes()
    with pytest.raises(InputError, match="fractions") as info:
        synthesize_blur(ScaledIdentity(), far, near, fractions)
    assert "\n" not in str(info.value)
    assert np.isfinite(synthesize_blur(ScaledIdentity(), far, near, [-10.0, 11.0])).all()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_residual_synthesis_with_a_constant_plane_follows_the_intensity_scale(scale):
    """A constant plane spans 0 counts in any units: with a constant far plane the correction is
    scaled by ``a s_near``, and where extrapolation (a = -0.5) makes that negative, by the near
    plane's span, as the far one is constant. The span used to fall back to 1.0 in absolute units,
    so a constant 3e-4 far plane and a 0..1e-3 near one gave -0.024..0.048 at a = 0.5."""
    _, v = unit_planes(8)
    far, near = np.full((4, 4), 0.3 * scale, np.float32), (scale * v - 0.2 * scale).astype(np.float32)
    sq = Squared(16, n_latent=16, seed=3)
    zf, zn = np.zeros(16), sq.numpy(v)  # the constant plane normalises to zeros
    fractions = [-0.5, 0.25, 0.5, 0.75, 1.5]
    got = synthesize_blur(sq, far, near, fractions, residual=True)
    for plane, a in zip(got, fractions):
        span = scale * (a if a > 0 else 1.0)
        correction = sq.decode_numpy((1 - a) * zf + a * zn) - (1 - a) * sq.decode_numpy(zf) - a * sq.decode_numpy(zn)
        want = (1 - a) * far + a * near + span * correction
        assert np.abs(span * correction).max() > 0.1 * scale  # the correction matters
        np.testing.assert_allclose(plane, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    unit = synthesize_blur(sq, far / scale, near / scale, fractions, residual=True)
    np.testing.assert_allclose(got / scale, unit, rtol=1e-4, atol=1e-4 * np.abs(unit).max())


def test_deblur_alpha_past_the_limit_advises_the_direction_that_lowers_it():
    """alpha = (b - m) / (b - a) falls as the plane's level m nears focus b or the far level a moves
    away from it; the refusal of alpha 0.95 used to advise a plane nearer the far one, which raises
    alpha. Following the advice on levels a = 0, m = 0.4, b = 8 brings alpha within 10/11."""
    from deconv3d.latent.ops import MAX_DEBLUR_ALPHA

    def alpha(a, m, b):
        return (b - m) / (b - a)

    far, near = unit_planes()
    assert alpha(0, 0.4, 8) == pytest.approx(0.95)
    with pytest.raises(InputError, match="alpha") as info:
        deblur(ScaledIdentity(), far, near, alpha(0, 0.4, 8))
    message = str(info.value)
    assert "\n" not in message and "nearer the far" not in message
    assert "a plane nearer focus" in message and "FAR plane further from focus" in message
    for a, m in ((0, 2.0), (-4, 0.4)):  # the plane nearer focus; a far plane further from it
        assert alpha(a, m, 8) <= MAX_DEBLUR_ALPHA
        assert np.isfinite(deblur(ScaledIdentity(), far, near, alpha(a, m, 8))).all()
    assert alpha(0, 0.2, 8) > alpha(0, 0.4, 8)  # a plane nearer the far one: further past the limit
