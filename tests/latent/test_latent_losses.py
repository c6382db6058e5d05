"""The three objectives of Mazilu et al. against hand-computed values on tiny tensors."""

import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.latent.losses import baseline_loss, explicit_loss, implicit_loss, latent_distance
from deconv3d.latent.train import triplet_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


X1, X2, X3 = t(0.0, 0.0), t(1.0, 1.0), t(0.0, 2.0)
Y1, Y2, Y3 = t(1.0, 1.0), t(4.0, 0.0), t(2.0, 2.0)
# MSE(Y1, X1) = (1 + 1) / 2 = 1; MSE(Y3, X3) = (4 + 0) / 2 = 2; MSE(Y2, X2) = (9 + 1) / 2 = 5
Z2I = (torch.tensor([1.0, 2.0]), torch.tensor([4.0]))
Z2 = (torch.zeros(2), torch.zeros(1))
# latent MSE = (1 + 4 + 16) / 3 = 7; latent L1 = (1 + 2 + 4) / 3 = 7 / 3


def test_baseline_by_hand():
    loss, terms = baseline_loss(X1, X3, Y1, Y3)
    assert float(loss) == pytest.approx(0.5 * (1 + 2))
    assert terms["total"] == pytest.approx(1.5)


def test_implicit_by_hand():
    loss, terms = implicit_loss(X1, X2, X3, Y1, Y2, Y3)
    assert float(loss) == pytest.approx(1.5 + 5)
    assert terms["interp"] == pytest.approx(5)


@pytest.mark.parametrize("dist, latent", [("mse", 7.0), ("l1", 7.0 / 3.0)])
def test_explicit_by_hand(dist, latent):
    loss, terms = explicit_loss(X1, X2, X3, Y1, Y2, Y3, Z2I, Z2, dist)
    assert float(loss) == pytest.approx(1.5 + 5 + latent)
    assert terms["latent"] == pytest.approx(latent)
    assert float(latent_distance(Z2I, Z2, dist)) == pytest.approx(latent)


@pytest.mark.parametrize("weight", [0.0, 0.1, 3.0])
def test_explicit_latent_weight_scales_only_the_latent_term(weight):
    loss, terms = explicit_loss(X1, X2, X3, Y1, Y2, Y3, Z2I, Z2, "mse", weight)
    assert float(loss) == pytest.approx(1.5 + 5 + weight * 7.0)
    assert terms["latent"] == pytest.approx(7.0) and terms["total"] == pytest.approx(float(loss))
    x1, x2, x3, alpha = t(0.0, 0.0), t(1.0, 3.0), t(4.0, 4.0), torch.tensor([0.75])
    loss, _ = triplet_loss(PixelModel(), x1, x2, x3, alpha, "explicit", "mse", latent_weight=weight)
    assert float(loss) == pytest.approx(2.0 + weight * 2.0)  # the hand values of the alpha test below


def test_latent_distance_refuses_unknown_or_mismatched():
    with pytest.raises(InputError):
        latent_distance(Z2I, Z2, "l2")
    with pytest.raises(InputError):
        latent_distance(Z2I, Z2[:1])


class PixelModel:
    """Identity autoencoder: the latent is the plane itself, so every term is known by hand."""

    @staticmethod
    def encode(x):
        return (x,)

    @staticmethod
    def decode(z):
        return z[0]


def test_triplet_loss_weights_the_lower_level_by_alpha():
    x1, x2, x3 = t(0.0, 0.0), t(1.0, 3.0), t(4.0, 4.0)
    alpha = torch.tensor([0.75])
    # z2' = 0.75 * x1 + 0.25 * x3 = (1, 1); MSE(z2', x2) = (0 + 4) / 2 = 2
    for variant, want in (("baseline", 0.0), ("implicit", 2.0), ("explicit", 4.0)):
        loss, terms = triplet_loss(PixelModel(), x1, x2, x3, alpha, variant, "mse")
        assert float(loss) == pytest.approx(want), variant
    loss, _ = triplet_loss(PixelModel(), x1, x2, x3, alpha, "explicit", "l1")
    assert float(loss) == pytest.approx(2.0 + 1.0)


class HalvingModel(PixelModel):
    """Decodes to half the latent: the reconstructions miss half of each plane."""

    @staticmethod
    def decode(z):
        return 0.5 * z[0]


def test_residual_triplet_loss_scores_the_blend_plus_the_decoded_correction():
    x1, x2, x3 = t(0.0, 2.0), t(1.0, 3.0), t(4.0, 4.0)
    alpha = torch.tensor([0.75])
    # y1 = (0, 1), y3 = (2, 2), y2' = 0.5 (0.75 x1 + 0.25 x3) = (0.5, 1.25)
    # residual form: y2' + 0.75 (x1 - y1) + 0.25 (x3 - y3) = (0.5 + 0 + 0.5, 1.25 + 0.75 + 0.5) = (1, 2.5)
    # MSE against x2 = (0 + 0.25) / 2 = 0.125; recon = 0.5 [(0 + 1) / 2 + (4 + 4) / 2] = 2.25
    loss, terms = triplet_loss(HalvingModel(), x1, x2, x3, alpha, "implicit", "mse", residual=True)
    assert terms["interp"] == pytest.approx(0.125) and float(loss) == pytest.approx(2.25 + 0.125)
    plain, plain_terms = triplet_loss(HalvingModel(), x1, x2, x3, alpha, "implicit", "mse")
    assert plain_terms["interp"] == pytest.approx((0.25 + 3.0625) / 2)  # y2' = (0.5, 1.25) against (1, 3)
    # a model that reconstructs exactly makes the residual form equal the plain one
    exact = triplet_loss(PixelModel(), x1, x2, x3, alpha, "explicit", "mse", residual=True)[0]
    assert float(exact) == pytest.approx(float(triplet_loss(PixelModel(), x1, x2, x3, alpha, "explicit", "mse")[0]))


Z1 = (torch.zeros(2), torch.zeros(1))
Z3 = (torch.full((2,), 2.0), torch.full((1,), 2.0))
# MSE(Z1, Z3) = 4, L1 = 2: the relative term is 7 / 4 (mse) or (7 / 3) / 2 (l1)


@pytest.mark.parametrize("dist, relative", [("mse", 7.0 / 4.0), ("l1", 7.0 / 6.0)])
def test_explicit_relative_to_the_endpoints_by_hand(dist, relative):
    loss, terms = explicit_loss(X1, X2, X3, Y1, Y2, Y3, Z2I, Z2, dist, 0.5, z_ends=(Z1, Z3))
    assert terms["latent"] == pytest.approx(relative)
    assert float(loss) == pytest.approx(1.5 + 5 + 0.5 * relative)


class ScalingModel(PixelModel):
    """Latents are ``s`` times the plane and decode back exactly: only their scale differs."""

    def __init__(self, s):
        self.s = s

    def encode(self, x):
        return (self.s * x,)

    def decode(self, z):
        return z[0] / self.s


def test_relative_latent_term_ignores_the_latents_scale():
    x1, x2, x3, alpha = t(0.0, 0.0), t(1.0, 3.0), t(4.0, 4.0), torch.tensor([0.75])
    # z2' - z2 = s (0, -2) and z1 - z3 = s (-4, -4): absolute MSE 2 s^2, relative 2 / 16
    for s in (1.0, 0.1):
        _, absolute = triplet_loss(ScalingModel(s), x1, x2, x3, alpha, "explicit", "mse")
        _, relative = triplet_loss(ScalingModel(s), x1, x2, x3, alpha, "explicit", "mse", latent_norm="endpoints")
        assert absolute["latent"] == pytest.approx(2.0 * s * s)
        assert relative["latent"] == pytest.approx(2.0 / 16.0)
        assert relative["interp"] == pytest.approx(absolute["interp"])
    with pytest.raises(InputError):
        triplet_loss(PixelModel(), x1, x2, x3, alpha, "explicit", "mse", latent_norm="batch")
