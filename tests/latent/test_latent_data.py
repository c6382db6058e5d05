"""Blur levels, triplets and their alpha, sampling, splits and synthetic focal stacks."""

import numpy as np
import pytest

from deconv3d.errors import InputError
from deconv3d.latent.data import (PAPER_LEVELS, TripletSampler, all_triplets, check_levels, dyadic_triplets,
                                  fixed_triplet_crops, normalize_planes, split_by_image, synthetic_focal_stacks,
                                  tile_stacks, triplet_alpha)

PAPER_TRIPLETS = {(0, 16, 8), (0, 8, 4), (8, 16, 12), (0, 4, 2), (4, 8, 6), (8, 12, 10), (12, 16, 14)}  # (a, b, m)


def test_triplet_alpha_is_weight_of_lower_level():
    assert triplet_alpha(0, 4, 16) == 0.75
    assert triplet_alpha(0, 8, 16) == 0.5
    assert triplet_alpha(2, 3, 6) == 0.75
    with pytest.raises(InputError):
        triplet_alpha(0, 16, 8)


def test_dyadic_triplets_are_the_papers_seven():
    got = {(PAPER_LEVELS[t.low], PAPER_LEVELS[t.high], PAPER_LEVELS[t.mid]) for t in dyadic_triplets(PAPER_LEVELS)}
    assert got == PAPER_TRIPLETS
    assert all(t.alpha == 0.5 for t in dyadic_triplets(PAPER_LEVELS))


def test_all_triplets_alpha_on_uneven_levels():
    levels = [0.0, 1.0, 3.0, 7.0]
    triplets = all_triplets(levels)
    assert len(triplets) == 4
    for t in triplets:
        a, m, b = levels[t.low], levels[t.mid], levels[t.high]
        assert t.alpha == pytest.approx((b - m) / (b - a))
    np.testing.assert_allclose(sorted(t.alpha for t in triplets), [4 / 7, 2 / 3, 2 / 3, 6 / 7])  # by hand


def test_sampler_draws_planes_with_matching_alpha():
    levels = np.array([0.0, 1.0, 3.0, 7.0])
    stacks = np.broadcast_to(levels[None, :, None, None], (2, 4, 8, 8)).astype(np.float32).copy()
    sampler = TripletSampler(stacks, all_triplets(levels), crop=4, seed=0)
    x1, x2, x3, alpha = sampler.sample(32)
    assert x1.shape == (32, 1, 4, 4) and alpha.shape == (32,)
    a, m, b = (x[:, 0, 0, 0].numpy() for x in (x1, x2, x3))
    assert np.all((a < m) & (m < b))
    np.testing.assert_allclose(alpha.numpy(), (b - m) / (b - a), rtol=1e-6)


def test_sampler_is_reproducible_from_seed(stacks):
    draws = [TripletSampler(stacks, dyadic_triplets([0, 1, 2]), crop=8, seed=5).sample(4) for _ in range(2)]
    for t1, t2 in zip(*draws):
        assert np.array_equal(t1.numpy(), t2.numpy())


def test_fixed_crops_cover_ten_positions(stacks):
    x1, x2, x3, alpha = fixed_triplet_crops(stacks, dyadic_triplets([0, 1, 2]), crop=8)
    assert x1.shape == (2 * 10, 1, 8, 8) and np.all(alpha == 0.5)
    np.testing.assert_array_equal(x2[0, 0], stacks[0, 1, :8, :8])


def test_split_by_image_is_disjoint_and_complete():
    data = np.arange(8)[:, None] * np.ones((8, 3))
    train, test = split_by_image(data, 0.25, seed=1)
    assert len(train) == 6 and len(test) == 2
    assert sorted(np.r_[train[:, 0], test[:, 0]].tolist()) == list(range(8))
    with pytest.raises(InputError):
        split_by_image(data[:1], 0.25)


def test_tile_stacks_gives_separate_images():
    stacks = np.arange(2 * 3 * 32 * 32, dtype=np.float32).reshape(2, 3, 32, 32)
    tiles = tile_stacks(stacks, 16)
    assert tiles.shape == (8, 3, 16, 16)
    np.testing.assert_array_equal(tiles[1], stacks[1, :, :16, :16])
    assert tile_stacks(stacks, 20).shape == (2, 3, 32, 32)


def test_normalize_planes_each_to_unit_range():
    x = np.stack([np.arange(4.0).reshape(2, 2) * 5 + 3, np.ones((2, 2))])
    out = normalize_planes(x)
    np.testing.assert_allclose(out[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    assert np.all(out[1] == 0)


def test_synthetic_stacks_blur_decreases_towards_focus():
    stacks, levels = synthetic_focal_stacks(2, (32, 32), levels=(0, 4, 8), seed=0, noise=None)
    assert stacks.shape == (2, 3, 32, 32) and levels.tolist() == [0.0, 4.0, 8.0]
    assert stacks.min() >= 0 and stacks.max() <= 1
    sharpness = np.abs(np.diff(stacks, axis=-1)).mean(axis=(0, 2, 3))
    assert sharpness[0] < sharpness[1] < sharpness[2]
    again, _ = synthetic_focal_stacks(2, (32, 32), levels=(0, 4, 8), seed=0)
    assert np.array_equal(again, synthetic_focal_stacks(2, (32, 32), levels=(0, 4, 8), seed=0)[0])


@pytest.mark.parametrize("levels", [[0, 1], [0, 2, 1], [0, np.nan, 2], "abc"])
def test_bad_levels_are_input_errors(levels):
    with pytest.raises(InputError):
        check_levels(levels)
