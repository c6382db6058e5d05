"""Tiled inference: seamless against one whole-volume pass, TTA, clamping, progress and cancel."""

import itertools
import threading

import numpy as np
import pytest
import torch
from torch import nn

from deconv3d.errors import InputError
from deconv3d.selfsup import network_runner, predict, tiling
from deconv3d.selfsup.predict import Cancelled, predict_tiled
from deconv3d.selfsup.tiling import default_tile_shape

SHAPES = {2: (40, 36), 3: (12, 20, 26)}
TILES = {
    2: [(20, 18), (16, 13), (40, 9)],  # divides the volume, does not divide, one axis whole
    3: [(6, 10, 13), (5, 8, 11), (12, 7, 26)],
}


class Identity(nn.Module):
    def forward(self, x):
        return x


def conv(ndim, cin, cout, seed, symmetric=False):
    """A seeded 3-wide convolution with zero padding; ``symmetric`` makes it xy-dihedral-equivariant."""
    layer = (nn.Conv2d if ndim == 2 else nn.Conv3d)(cin, cout, 3, padding=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(layer.weight.shape, generator=gen) / (3**ndim * cin) ** 0.5
        if symmetric:
            w = sum(torch.rot90(f, k, (-2, -1)) for f in (w, w.flip(-1)) for k in range(4)) / 8
        layer.weight.copy_(w)
        layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))
    return layer


def small_net(ndim, seed=0, symmetric=False):
    """Three conv layers: receptive-field radius 3."""
    return nn.Sequential(
        conv(ndim, 1, 4, seed, symmetric), nn.Tanh(),
        conv(ndim, 4, 4, seed + 1, symmetric), nn.Tanh(),
        conv(ndim, 4, 1, seed + 2, symmetric),
    )


def volume(ndim, seed=0):
    r = np.random.default_rng(seed)
    return (2.0 + r.random(SHAPES[ndim])).astype(np.float32)


def run_numpy(model, x, mean, std):
    """The model on one standardised numpy array, de-standardised (no tiling, no padding)."""
    t = torch.from_numpy(np.ascontiguousarray((x - mean) / std, dtype=np.float32))[None, None]
    with torch.no_grad():
        return model(t)[0, 0].numpy() * std + mean


def whole_reflect_reference(model, x, mean, std, context):
    padded = np.pad(x, context, mode="reflect")
    out = run_numpy(model, padded, mean, std)
    return np.maximum(out[(slice(context, -context),) * x.ndim], 0)


def psnr(reference, test):
    mse = float(np.mean((reference.astype(np.float64) - test) ** 2))
    span = float(reference.max() - reference.min())
    return np.inf if mse == 0 else 10 * np.log10(span**2 / mse)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("tile_index", [0, 1, 2])
@pytest.mark.parametrize("kind", ["identity", "conv"])
def test_tiled_equals_untiled(ndim, tile_index, kind):
    model = Identity() if kind == "identity" else conv(ndim, 1, 1, seed=3)
    x = volume(ndim)
    kw = dict(mean=2.5, std=0.3, divisor=4, context=1, device="cpu")
    whole = predict_tiled(model, x, **kw)
    tiled = predict_tiled(model, x, tile_shape=TILES[ndim][tile_index], overlap=2, **kw)
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    if kind == "identity":
        np.testing.assert_allclose(whole, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_tiled_random_net_matches_reflect_padded_whole_volume(ndim):
    model = small_net(ndim)
    x = volume(ndim, seed=1)
    reference = whole_reflect_reference(model, x, 2.5, 0.3, context=4)
    tiled = predict_tiled(model, x, mean=2.5, std=0.3, divisor=8, tile_shape=TILES[ndim][1],
                          overlap=3, context=4, device="cpu")
    assert psnr(reference, tiled) >= 50


@pytest.mark.parametrize("ndim, shape, tiles", [(2, (72, 60), [(24, 24), (16, 23), (40, 13)]),
                                                (3, (8, 30, 28), [(5, 17, 13)])])
def test_tiles_of_a_strided_unet_keep_the_whole_volume_pooling_grid(ndim, shape, tiles):
    """A strided UNet is shift-equivariant only for shifts by its divisor: every tile's window
    must start on the grid of the whole-volume pass, wherever the tile starts (tile starts
    0, 13, 27, ... used to give tiled results 36% of the range off)."""
    from deconv3d.selfsup.config import UNetConfig
    from deconv3d.selfsup.unet import ResUNet, receptive_radius

    config = UNetConfig(ndim=ndim, base_channels=4, depth=2 if ndim == 3 else 3, positive=False)
    torch.manual_seed(0)
    model = ResUNet(config).eval()
    x = np.random.default_rng(3).random(shape).astype(np.float32) + 1.0
    kw = dict(mean=1.5, std=0.3, divisor=config.divisor, context=receptive_radius(config), device="cpu",
              signed=True, batch_size=4)
    whole = predict_tiled(model, x, tile_shape=shape, **kw)
    span = float(whole.max() - whole.min())
    for tile in tiles:
        tiled = predict_tiled(model, x, tile_shape=tile, overlap=[t // 3 for t in tile], **kw)
        assert np.abs(tiled - whole).max() <= 1e-5 * span, tile


@pytest.mark.parametrize("ndim, shape, block, core", [(2, (90, 77), (slice(21, 90), slice(0, 77)), (slice(24, 69), slice(0, 40))),
                                                      (3, (10, 62, 57), (slice(0, 10), slice(5, 62), slice(3, 57)),
                                                       (slice(0, 10), slice(24, 33), slice(24, 30)))])
def test_a_block_told_its_region_and_grid_equals_the_whole_volume_there(ndim, shape, block, core):
    """A block of a larger volume (read with real context around its core, clipped at the volume
    border) predicts only its core, on the whole volume's grid (volume_phase shifted to the
    block): the core equals the whole-volume pass, the rest is 0. On its own grid and with
    context mirrored around the whole block, it did not (the volume's sides are not multiples of
    the divisor, so its grid is not the block's)."""
    from deconv3d.selfsup.config import UNetConfig
    from deconv3d.selfsup.unet import ResUNet, receptive_radius

    config = UNetConfig(ndim=ndim, base_channels=4, depth=2, positive=False)
    torch.manual_seed(0)
    model = ResUNet(config).eval()
    context = receptive_radius(config)
    x = np.random.default_rng(3).random(shape).astype(np.float32) + 1.0
    kw = dict(mean=1.5, std=0.3, divisor=config.divisor, context=context, device="cpu", signed=True)
    whole = predict_tiled(model, x, **kw)
    assert predict.volume_phase(shape, 4, context) != (0,) * ndim
    start = tuple(b.start for b in block)
    assert all(c.start >= context or b.start == c.start == 0 for b, c in zip(block, core))  # real context
    assert all(b.stop - b.start - c.stop >= context or b.stop == n for b, c, n in zip(block, core, shape))
    piece = np.ascontiguousarray(x[block])
    phase = tuple(p - s for p, s in zip(predict.volume_phase(shape, 4, context), start))
    out = predict_tiled(model, piece, region=core, phase=phase, tile_shape=[max(4, (c.stop - c.start) // 2 + 1)
                                                                            for c in core], **kw)
    span = float(whole.max() - whole.min())
    where = tuple(slice(s + c.start, s + c.stop) for s, c in zip(start, core))
    assert np.abs(out[core] - whole[where]).max() <= 1e-5 * span
    outside = np.ones(piece.shape, bool)
    outside[core] = False
    assert not out[outside].any()
    own = predict_tiled(model, piece, **kw)  # the block's own grid, context mirrored around it
    assert np.abs(own[core] - whole[where]).max() > 1e-2 * span


@pytest.mark.parametrize("region, phase", [((slice(0, 4),), None), ((slice(3, 3), slice(0, 4), slice(0, 4)), None),
                                           ((slice(0, 12, 2), slice(None), slice(None)), None),
                                           (None, (0, 1)), ((0, 1, 2), None)])
def test_bad_regions_and_phases_are_input_errors(region, phase):
    with pytest.raises(InputError) as info:
        predict_tiled(Identity(), volume(3), mean=0.0, std=1.0, divisor=4, device="cpu", region=region, phase=phase)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ndim", [2, 3])
def test_tta_with_equivariant_model_changes_nothing(ndim):
    model = small_net(ndim, seed=5, symmetric=True)
    x = volume(ndim, seed=2)
    kw = dict(mean=2.5, std=0.3, divisor=4, context=3, tile_shape=TILES[ndim][1], device="cpu")
    plain = predict_tiled(model, x, **kw)
    averaged = predict_tiled(model, x, tta=True, **kw)
    np.testing.assert_allclose(averaged, plain, atol=1e-5, rtol=0)


def dihedral_mean_by_hand(model, x, mean, std):
    outputs = []
    for flip in (False, True):
        xf = np.flip(x, -1) if flip else x
        for k in range(4):
            y = run_numpy(model, np.rot90(xf, k, axes=(-2, -1)), mean, std)
            y = np.rot90(y, -k, axes=(-2, -1))
            outputs.append(np.flip(y, -1) if flip else y)
    return np.maximum(np.mean(outputs, axis=0), 0)


@pytest.mark.parametrize("shape", [(16, 24), (8, 16, 24)])
def test_tta_equals_mean_of_eight_transforms(shape):
    model = small_net(len(shape), seed=7)
    x = (2 + np.random.default_rng(3).random(shape)).astype(np.float32)
    expected = dihedral_mean_by_hand(model, x, 2.5, 0.3)
    got = predict_tiled(model, x, mean=2.5, std=0.3, divisor=8, tta=True, device="cpu")
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert not np.allclose(got, np.maximum(run_numpy(model, x, 2.5, 0.3), 0), atol=1e-3)


@pytest.mark.parametrize("shape", [(16, 24), (8, 16, 24)])
def test_tta_gives_the_network_channels_last_copies_on_the_cpu(shape):
    """TTA's rotated and flipped inputs reached the network as strided views, which oneDNN ran about 4x
    slower than a dense copy (measured: the 8 passes over a 32x96x64 window, base 16, depth 3, 2 threads:
    7.3 s before, 1.6 s after, warm). Each of the 8 passes now gets a channels-last copy."""
    layout = torch.channels_last_3d if len(shape) == 3 else torch.channels_last
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=layout))
            return x

    x = (2 + np.random.default_rng(3).random(shape)).astype(np.float32)
    out = predict_tiled(Spy(), x, mean=2.5, std=0.3, divisor=8, tta=True, device="cpu")
    np.testing.assert_allclose(out, x, atol=1e-5, rtol=0)
    assert len(seen) == 8 and all(seen), seen


def test_tta_handles_non_square_padded_tiles():
    x = volume(3, seed=4)  # 20 x 26 in xy; windows are padded to 24 x 32 (and 16 x 24 tiles)
    model = Identity()
    out = predict_tiled(model, x, mean=2.5, std=0.3, divisor=8, tta=True, context=2,
                        tile_shape=(12, 11, 17), device="cpu")
    np.testing.assert_allclose(out, x, atol=1e-5, rtol=0)


class Negate(nn.Module):
    def forward(self, x):
        return -3 * x


@pytest.mark.parametrize("shape", [(3, 5, 7), (9, 30), (1, 6, 6)])
def test_output_non_negative_float32_same_shape(shape):
    x = np.random.default_rng(5).integers(0, 1000, shape).astype(np.uint16)
    out = predict_tiled(Negate(), x, mean=500.0, std=200.0, divisor=8, context=2,
                        tile_shape=4, overlap=1, device="cpu")
    assert out.dtype == np.float32 and out.shape == shape
    assert out.min() >= 0 and out.max() > 0


def test_signed_output_is_the_correction_without_mean_or_clamp():
    """``signed=True`` (a residual network's correction): ``net((x - mean) / std) * std``, negatives kept."""
    x = np.random.default_rng(6).integers(0, 1000, (5, 12, 12)).astype(np.float32)
    out = predict_tiled(Negate(), x, mean=500.0, std=200.0, divisor=8, context=2, tile_shape=4, overlap=1,
                        device="cpu", signed=True)
    np.testing.assert_allclose(out, -3 * (x - 500.0), atol=1e-3)
    assert out.min() < 0


class WindowRamp(nn.Module):
    """Input plus a ramp over the position inside its window: overlapping tiles disagree."""

    SLOPES = (0.7, 0.5, 0.25)

    def forward(self, x):
        nd = x.ndim - 2
        out = x.clone()
        for axis, slope in zip(range(nd), self.SLOPES[-nd:]):
            view = [1] * x.ndim
            view[2 + axis] = x.shape[2 + axis]
            out = out + slope * torch.arange(x.shape[2 + axis], dtype=x.dtype).view(view)
        return out


def cross_fade(starts, tile, length):
    """Per-tile weights along one axis, as the docstring of predict_tiled gives them: 1, except
    over an overlap of length L with a neighbour, where it rises (or falls) as (i + 1) / (L + 1)."""
    weights = []
    for k, start in enumerate(starts):
        w = np.zeros(length)
        w[start:start + tile] = 1.0
        if k > 0:  # overlap with the tile before: rising
            overlap = starts[k - 1] + tile - start
            w[start:start + overlap] = np.arange(1, overlap + 1) / (overlap + 1)
        if k + 1 < len(starts):  # overlap with the tile after: falling
            overlap = start + tile - starts[k + 1]
            w[start + tile - overlap:start + tile] = np.minimum(w[start + tile - overlap:start + tile],
                                                                 np.arange(overlap, 0, -1) / (overlap + 1))
        weights.append(w)
    return weights


@pytest.mark.parametrize("shape, tile, overlap, starts", [
    ((20, 40), (12, 24), (4, 8), ([0, 8], [0, 16])),
    ((10, 20, 40), (6, 12, 24), (2, 4, 8), ([0, 4], [0, 8], [0, 16])),
])
def test_overlapping_tiles_that_disagree_cross_fade_linearly(shape, tile, overlap, starts):
    """Where tiles overlap, the output is the weighted mean of the tiles with separable linear
    ramps (predict_tiled's Notes), not their plain mean. The model adds a ramp over the position
    inside its window, so two tiles differ there by a known offset (no context, divisor 1:
    each window is its tile's core)."""
    x = np.random.default_rng(4).uniform(2.0, 3.0, shape).astype(np.float32)
    mean, std = 2.5, 0.3
    out = predict_tiled(WindowRamp(), x, mean=mean, std=std, divisor=1, context=0, tile_shape=tile,
                        overlap=overlap, device="cpu")
    ndim, slopes = len(shape), WindowRamp.SLOPES[-len(shape):]
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    axis_weights = [cross_fade(s, t, n) for s, t, n in zip(starts, tile, shape)]
    total, weight_sum = np.zeros(shape), np.zeros(shape)
    for corner in itertools.product(*[range(len(s)) for s in starts]):
        weight = np.ones(shape)
        value = x.astype(np.float64)
        for axis, k in enumerate(corner):
            view = [1] * ndim
            view[axis] = shape[axis]
            weight = weight * axis_weights[axis][k].reshape(view)
            value = value + std * slopes[axis] * (grids[axis] - starts[axis][k])
        total += weight * value
        weight_sum += weight
    np.testing.assert_allclose(out, total / weight_sum, rtol=0, atol=1e-5)

    # By hand along the last axis, in the first tile of the others: tile 0 fades out as (8 - i) / 9
    # over x = 16 + i while tile 1 (its window starting at 16) fades in as (i + 1) / 9.
    i = np.arange(8)
    lead = (0,) * (ndim - 1)
    ramp = std * slopes[-1] * (16 + i - 16 * (i + 1) / 9)
    np.testing.assert_allclose(out[lead + (slice(16, 24),)], x[lead + (slice(16, 24),)] + ramp, rtol=0, atol=1e-5)
    plain = x[lead + (slice(16, 24),)] + std * slopes[-1] * (16 + i - 8)  # the plain mean of the two tiles
    assert np.abs(out[lead + (slice(16, 24),)] - plain).max() > 0.1


def test_tensor_input_and_batches_match():
    model = small_net(3, seed=9)
    x = volume(3, seed=6)
    kw = dict(mean=2.5, std=0.3, divisor=4, context=4, tile_shape=(6, 8, 9), overlap=2, device="cpu")
    one = predict_tiled(model, x, **kw)
    many = predict_tiled(model, torch.from_numpy(x), batch_size=5, **kw)
    np.testing.assert_allclose(many, one, atol=1e-5, rtol=0)


def test_model_mode_restored_and_no_grad():
    model = small_net(2)
    model.train()
    out = predict_tiled(model, volume(2), mean=2.5, std=0.3, divisor=4, device="cpu")
    assert model.training and isinstance(out, np.ndarray)
    assert all(p.grad is None for p in model.parameters())


def test_callback_reports_progress_and_cancels():
    x = volume(3)
    calls = []

    def record(done, total):
        calls.append((done, total))

    predict_tiled(Identity(), x, mean=2.5, std=0.3, divisor=4, tile_shape=(6, 10, 13), overlap=0,
                  callback=record, device="cpu")
    assert calls == [(i, 8) for i in range(1, 9)]

    seen = []

    def cancel_at_two(done, total):
        seen.append(done)
        return done >= 2

    with pytest.raises(Cancelled):
        predict_tiled(Identity(), x, mean=2.5, std=0.3, divisor=4, tile_shape=(6, 10, 13),
                      callback=cancel_at_two, device="cpu")
    assert seen == [1, 2]


def test_default_tiles_fit_the_budget(monkeypatch):
    assert default_tile_shape((10, 1024, 1024), 8, "cpu") == (10, 456, 456)
    assert default_tile_shape((64, 64, 64), 8, "cpu") == (64, 64, 64)
    monkeypatch.setitem(tiling.VOXEL_BUDGET, (False, 3), 1000)
    x = volume(3)
    assert np.prod(default_tile_shape(x.shape, 4, "cpu")) <= 1000
    model = small_net(3, seed=2)
    reference = whole_reflect_reference(model, x, 2.5, 0.3, context=4)
    out = predict_tiled(model, x, mean=2.5, std=0.3, divisor=4, context=4, device="cpu")
    assert psnr(reference, out) >= 50


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(std=0.0),
        dict(tile_shape=(4, 4)),
        dict(tile_shape=4, overlap=4),
        dict(context=-1),
        dict(batch_size=0),
        dict(divisor=2.5),  # (an IndexError from the padding)
        dict(batch_size=2.5, tile_shape=4),  # (a TypeError from range())
        dict(divisor=True),
    ],
)
def test_bad_options_are_input_errors(kwargs):
    options = dict(mean=0.0, std=1.0, divisor=4, device="cpu") | kwargs
    with pytest.raises(InputError) as info:
        predict_tiled(Identity(), volume(3), **options)
    assert "\n" not in str(info.value)


def test_a_divisor_the_network_does_not_take_is_named():
    """divisor=3 for a network of divisor 4 failed in the network on a padded window, saying to
    "pad with pad_to_multiple()", which a caller of predict_tiled cannot do."""
    from deconv3d.selfsup import UNetConfig
    from deconv3d.selfsup.unet import ResUNet

    net = ResUNet(UNetConfig(ndim=3, base_channels=4, depth=2))
    with pytest.raises(InputError, match=r"divisor 3 is not a multiple of the network's 4 .*pass divisor=4"):
        predict_tiled(net, volume(3), mean=0.0, std=1.0, divisor=3, device="cpu")


def test_bad_image_and_bad_model_are_input_errors():
    with pytest.raises(InputError):
        predict_tiled(Identity(), np.zeros((2, 3, 4, 5), np.float32), mean=0, std=1, divisor=1, device="cpu")
    with pytest.raises(InputError, match="fully convolutional"):
        predict_tiled(nn.Conv3d(1, 2, 1), volume(3), mean=0, std=1, divisor=1, device="cpu")


def test_a_model_in_training_mode_is_run_as_a_copy():
    """apply_model switched the caller's module to eval and back: a concurrent call's remaining tiles
    then ran in training mode, and batch norm overwrote its running statistics."""
    from deconv3d.selfsup import TrainConfig, UNetConfig, apply_model, train

    rng = np.random.default_rng(0)
    image = rng.random((12, 24, 24)).astype(np.float32)
    psf = np.ones((3, 3, 3), np.float32) / 27
    res = train(image, psf, config=TrainConfig(steps=2, patch=16, batch=1, residual=False),
                unet=UNetConfig(ndim=3, base_channels=4, depth=2), device="cpu")
    expected = apply_model(res, image, device="cpu", tile_shape=(12, 16, 16))
    stats = {k: v.clone() for k, v in res.model.state_dict().items()}
    res.model.train()
    # Call B starts while A runs, and A ends while B still has tiles to go.
    b_started, a_done = threading.Event(), threading.Event()

    def a_waits(done, total):
        assert b_started.wait(30)

    a = threading.Thread(target=lambda: (apply_model(res, image, device="cpu", tile_shape=(12, 16, 16),
                                                     callback=a_waits), a_done.set()))
    a.start()

    def b_waits(done, total):
        b_started.set()
        if done == 1:
            assert a_done.wait(30)

    out = apply_model(res, image, device="cpu", tile_shape=(12, 16, 16), callback=b_waits)
    a.join(30)
    np.testing.assert_array_equal(out, expected)
    assert res.model.training
    assert all(torch.equal(v, stats[k]) for k, v in res.model.state_dict().items())


def test_cpu_inference_folds_batch_norm_and_leaves_the_callers_model_alone():
    """The CPU runs a copy with each residual block's batch norms folded into its convolutions and
    channels-last memory (1.7x faster on 64 x 128 x 128, profiling review); its output equals the
    network's own to float32 rounding, and the caller's module is untouched."""
    from deconv3d.selfsup import UNetConfig
    from deconv3d.selfsup.network_runner import _for_cpu_inference
    from deconv3d.selfsup.train_setup import build_model
    from deconv3d.selfsup.unet import ResidualBlock

    model = build_model(UNetConfig(ndim=3, base_channels=4, depth=2), seed=1).eval()
    with torch.no_grad():  # batch norms that do something
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    fast = _for_cpu_inference(model)
    blocks = [m for m in fast.modules() if isinstance(m, ResidualBlock)]
    assert blocks and not any(isinstance(m, torch.nn.BatchNorm3d) for b in blocks for m in b.modules())
    with torch.no_grad():
        np.testing.assert_allclose(fast(x).numpy(), model(x).numpy(), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    assert model.stem.weight.is_contiguous()  # the caller's stays in its own memory format


def test_predict_tiled_runs_the_folded_copy_on_the_cpu(monkeypatch):
    from deconv3d.selfsup import UNetConfig
    from deconv3d.selfsup.train_setup import build_model

    model, used = build_model(UNetConfig(ndim=2, base_channels=4, depth=2), seed=0).eval(), []
    fold = network_runner._for_cpu_inference
    monkeypatch.setattr(network_runner, "_for_cpu_inference", lambda m: used.append(m) or fold(m))
    image = np.random.default_rng(0).random((24, 24)).astype(np.float32)
    out = predict_tiled(model, image, mean=0.5, std=0.2, divisor=4, device="cpu")
    with torch.no_grad():
        whole = model((torch.from_numpy(image)[None, None] - 0.5) / 0.2) * 0.2 + 0.5
    assert used == [model] and np.abs(out - whole[0, 0].numpy()).max() < 1e-5
