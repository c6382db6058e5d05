"""LDS and APD (deconv3d.metrics) against hand-computed values."""

import numpy as np
import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.metrics import latent_apd, latent_lds


def test_lds_by_hand():
    # steps (1, 0) and (1, 1): cos = 1 / sqrt(2)
    assert latent_lds([np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([2.0, 1.0])]) == pytest.approx(2**-0.5)
    # steps (1, 0), (0, 1), (1, 0): cosines 0 and 0
    z = [np.array(v, float) for v in ([0, 0], [1, 0], [1, 1], [2, 1])]
    assert latent_lds(z) == pytest.approx(0.0)
    # steps (1, 0), (2, 0), (-1, 0): cosines 1 and -1
    z = [np.array(v, float) for v in ([0, 0], [1, 0], [3, 0], [2, 0])]
    assert latent_lds(z) == pytest.approx(0.0)
    assert latent_lds([np.zeros(3), np.ones(3), 5 * np.ones(3)]) == pytest.approx(1.0)


def test_lds_flattens_tuples_and_tensors():
    flat = [np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 2.0]), np.array([1.0, 3.0, 2.0])]
    tuples = [(torch.tensor(z[:2]).view(1, 2), torch.tensor(z[2:])) for z in flat]
    assert latent_lds(tuples) == pytest.approx(latent_lds(flat))
    # steps (1, 0, 2) and (0, 3, 0): orthogonal
    assert latent_lds(flat) == pytest.approx(0.0)


def test_apd_by_hand():
    # real steps sqrt(2), sqrt(2); synthesised 1, 1; end-to-end 2: mean(|sqrt2 - 1|) / 2
    z = [np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.array([2.0, 0.0])]
    assert latent_apd(z) == pytest.approx((2**0.5 - 1) / 2)
    # collinear but uneven: real 1, 3; synthesised 2, 2; end-to-end 4: (1 + 1) / 2 / 4
    z = [np.array([0.0]), np.array([1.0]), np.array([4.0])]
    assert latent_apd(z) == pytest.approx(0.25)
    # the same latents are exact when the levels say so
    assert latent_apd(z, levels=[0, 1, 4]) == pytest.approx(0.0)
    assert latent_apd([(torch.zeros(2),), (torch.tensor([3.0, 4.0]),)]) == pytest.approx(0.0)


def test_bad_latents_are_input_errors():
    with pytest.raises(InputError):
        latent_lds([np.zeros(2), np.ones(2)])
    with pytest.raises(InputError, match="identical"):
        latent_lds([np.zeros(2), np.zeros(2), np.ones(2)])
    with pytest.raises(InputError, match="size"):
        latent_lds([np.zeros(2), np.ones(3), np.ones(2)])
    with pytest.raises(InputError):
        latent_apd([np.zeros(2)])
    with pytest.raises(InputError, match="levels"):
        latent_apd([np.zeros(1), np.ones(1), 2 * np.ones(1)], levels=[0, 2, 1])
    with pytest.raises(InputError, match="identical"):
        latent_apd([np.zeros(1), np.ones(1), np.zeros(1)])


class Identity:
    divisor = 1

    @staticmethod
    def encode(x):
        return (x,)

    @staticmethod
    def decode(z):
        return z[0]


def test_linearity_scores_of_a_pixel_blend_stack():
    from deconv3d.latent.ops import linearity_scores

    rng = np.random.default_rng(0)
    a, b = rng.random((2, 6, 6))
    a.flat[:2], b.flat[:2] = (0.0, 1.0), (0.0, 1.0)  # min 0, max 1: normalisation changes nothing
    t = np.array([0.0, 0.2, 0.7, 1.0])
    stack = (1 - t[:, None, None]) * a + t[:, None, None] * b
    scores = linearity_scores(Identity(), stack, levels=t)
    assert scores["lds"] == pytest.approx(1.0) and scores["apd"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("levels", [[0.0, float("nan"), 2.0], [0.0, 1.0, float("inf")], [float("-inf"), 0.0, 1.0]])
def test_apd_refuses_non_finite_levels(levels):
    """A NaN level passes the 'strictly increasing' test (every comparison with NaN is False) and
    made APD NaN; an infinite one makes the fractions t_i NaN."""
    z = [np.array([0.0]), np.array([1.0]), np.array([4.0])]
    with pytest.raises(InputError, match="finite") as info:
        latent_apd(z, levels=levels)
    assert "\n" not in str(info.value)


def test_linearity_scores_take_a_trained_model_as_synthesis_does(tmp_path, stacks):
    """linearity_scores(result) raised AttributeError ('LatentTrainResult' object has no attribute
    'encode') where synthesize_blur and deblur take what train and load_checkpoint return."""
    from deconv3d.latent import AEConfig, LatentTrainConfig, load_checkpoint, save_checkpoint, train
    from deconv3d.latent.ops import linearity_scores

    result = train(stacks, [0, 1, 2], LatentTrainConfig(steps=1, batch=2, val_fraction=0.0),
                   AEConfig(widths=(4, 8), crop=16), device="cpu")
    save_checkpoint(result, tmp_path / "ae.ckpt")
    expected = linearity_scores(result.model, stacks[0])
    assert linearity_scores(result, stacks[0]) == expected
    assert linearity_scores(load_checkpoint(tmp_path / "ae.ckpt"), stacks[0]) == pytest.approx(expected)
    with pytest.raises(InputError, match="load it first with deconv3d.latent.load_checkpoint"):
        linearity_scores(str(tmp_path / "ae.ckpt"), stacks[0])
