"""Hot and cold pixels: the range each plane is normalised by leaves them out (deconv3d.latent.data.plane_ranges),
in training and at inference alike; planes without one are normalised exactly as before."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from deconv3d.latent import ops
from deconv3d.latent.data import normalize_planes, plane_ranges
from deconv3d.latent.model import AEConfig, build_autoencoder
from deconv3d.latent.ops import deblur, synthesize_blur
from deconv3d.latent.train import _check_stacks

from .conftest import blur_stacks


def plain_ranges(planes):
    """The plain minimum and maximum of every plane (the rule before hot pixels were left out)."""
    x = np.asarray(planes, np.float32)
    return x.min(axis=(-2, -1), keepdims=True), x.max(axis=(-2, -1), keepdims=True)


def counts_stack(seed=3, n_levels=5, size=32):
    """A focal stack in camera counts: offset 100, 1000 counts of signal."""
    return blur_stacks(1, n_levels, size, seed=seed)[0] * 1000 + 100


class LocalSquare:
    """A deterministic network that is local (3x3 mean) and not linear in its latent (squared output),
    so the residual form's correction is not zero."""

    divisor = 1

    @staticmethod
    def encode(x):
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    @staticmethod
    def decode(z):
        return z ** 2


def psnr(got, want, mask):
    peak = want.max() - want.min()
    return np.array([10 * np.log10(peak ** 2 / np.mean((g - w)[mask] ** 2)) for g, w in zip(got, want)])


def test_hot_and_cold_pixels_are_left_out_of_the_range_but_keep_their_values():
    clean = counts_stack()[-1]
    clean[19:22, 4:7] = 900  # a bright patch, for a dead pixel in it
    spiky = clean.copy()
    spiky[5, 20] = 10 * clean.max()  # a hot pixel
    spiky[20, 5] = 0.0  # a dead one, far below its neighbours
    assert [v.item() for v in plane_ranges(spiky)] == [v.item() for v in plain_ranges(clean)]
    normed = normalize_planes(spiky)
    assert normed[5, 20] > 5 and normed[20, 5] < 0  # the data keep them, outside [0, 1]
    np.testing.assert_array_equal(np.delete(normed.ravel(), [5 * 32 + 20, 20 * 32 + 5]),
                                  np.delete(normalize_planes(clean).ravel(), [5 * 32 + 20, 20 * 32 + 5]))


def test_a_lone_pixel_on_a_flat_plane_keeps_its_range_and_a_bead_is_no_hot_pixel():
    flat = np.full((16, 16), 100, np.float32)
    flat[8, 8] = 500
    assert [float(v.item()) for v in plane_ranges(flat)] == [100.0, 500.0]
    bead = np.zeros((16, 16), np.float32)
    bead[8, 8] = 1000
    bead = gaussian_filter(bead, 1.0) + 100  # a bead at the sampling deconvolution needs
    assert [v.item() for v in plane_ranges(bead)] == [v.item() for v in plain_ranges(bead)]
    assert plane_ranges(np.ones((1, 1), np.float32))[1].item() == 1.0


def test_planes_without_spikes_are_normalised_bit_identically():
    """Clean data: training's normalisation and the operations' results are exactly those of the
    plain minimum and maximum, so a checkpoint's behaviour does not change."""
    stacks = np.concatenate([blur_stacks(2, 5, 32, seed=0), blur_stacks(1, 5, 32, seed=3) * 1000 + 100])
    lo, hi = plain_ranges(stacks)
    span = hi - lo
    want = ((stacks - lo) / np.where(span > 0, span, 1)).astype(np.float32)
    np.testing.assert_array_equal(normalize_planes(stacks), want)
    np.testing.assert_array_equal(_check_stacks(stacks, [0, 1, 2, 3, 4], AEConfig(widths=(4, 8), crop=16))[0], want)
    net = build_autoencoder(AEConfig(widths=(4, 8), crop=16), seed=0).eval()
    far, mid, near = stacks[2, 0], stacks[2, 2], stacks[2, -1]
    results = [(synthesize_blur(net, far, near, [0.25, 0.5, 1.5], residual=r), deblur(net, far, mid, 0.5, residual=r))
               for r in (False, True)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "plane_ranges", plain_ranges)
        before = [(synthesize_blur(net, far, near, [0.25, 0.5, 1.5], residual=r), deblur(net, far, mid, 0.5, residual=r))
                  for r in (False, True)]
    for (s, d), (s0, d0) in zip(results, before):
        np.testing.assert_array_equal(s, s0)
        np.testing.assert_array_equal(d, d0)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("which", ["far", "near"])
@pytest.mark.parametrize("factor", [10, 30])
def test_a_hot_pixel_does_not_ruin_blur_synthesis(residual, which, factor):
    """One pixel of FAR or NEAR at 10x or 30x the in-focus maximum: away from it, the synthesised
    planes score within 1 dB of the clean case (they fell 20-30 dB, as every plane's range took the pixel in)."""
    stack = counts_stack()
    far, near, truth = stack[0], stack[-1], stack[1:4]
    fractions = [0.25, 0.5, 0.75]
    away = np.ones(far.shape, bool)
    away[14:19, 14:19] = False
    clean = psnr(synthesize_blur(LocalSquare(), far, near, fractions, residual=residual), truth, away)
    planes = {"far": far.copy(), "near": near.copy()}
    planes[which][16, 16] = factor * near.max()
    hot = psnr(synthesize_blur(LocalSquare(), planes["far"], planes["near"], fractions, residual=residual), truth, away)
    assert np.all(hot > clean - 1), (hot, clean)
