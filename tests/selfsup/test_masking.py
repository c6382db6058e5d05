import itertools
import math

import pytest
import torch

from deconv3d.errors import InputError
from deconv3d.selfsup.config import UNetConfig
from deconv3d.selfsup.masking import apply_mask, box_size, stratified_mask
from deconv3d.selfsup.unet import ResUNet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("percent, ndim, side", [(0.5, 2, 14), (0.5, 3, 6), (1.0, 2, 10), (50.0, 3, 1)])
def test_box_size_follows_the_recipe(percent, ndim, side):
    assert box_size(percent, ndim) == side
    assert side == max(1, round((100 / percent) ** (1 / ndim)))


@pytest.mark.parametrize("percent", [0, -1, 100, 150])
def test_box_size_rejects_bad_percent(percent):
    with pytest.raises(InputError):
        box_size(percent, 3)


@pytest.mark.parametrize("shape", [(33, 45), (15, 12, 20)])
def test_one_masked_voxel_per_full_box(shape):
    b = box_size(0.5, len(shape))
    mask = stratified_mask(shape, 0.5, gen(3)).numpy()
    assert mask.shape == shape and mask.dtype == bool
    for corner in itertools.product(*[range(0, n, b) for n in shape]):
        box = mask[tuple(slice(c, c + b) for c in corner)]
        full = all(c + b <= n for c, n in zip(corner, shape))
        assert box.sum() == 1 if full else box.sum() <= 1
    full_boxes = math.prod(n // b for n in shape)
    assert full_boxes <= mask.sum() <= math.prod(math.ceil(n / b) for n in shape)


def test_mask_density_is_about_half_a_percent():
    mask = stratified_mask((60, 60, 60), 0.5, gen(1))
    assert float(mask.float().mean()) == pytest.approx(1 / 6**3, rel=1e-6)  # 60 is a multiple of 6
    assert float(mask.float().mean()) == pytest.approx(0.005, rel=0.1)


def test_batch_masks_are_independent_and_seeded():
    a = stratified_mask((12, 18, 18), 0.5, gen(7), batch=3)
    b = stratified_mask((12, 18, 18), 0.5, gen(7), batch=3)
    c = stratified_mask((12, 18, 18), 0.5, gen(8), batch=3)
    assert a.shape == (3, 1, 12, 18, 18)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])
    assert (a.sum(dim=(1, 2, 3, 4)) == 2 * 3 * 3).all()


def test_apply_mask_replaces_only_masked_voxels_with_gaussian_noise():
    x = torch.full((2, 1, 64, 64), 5.0)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, ::2] = True
    y = apply_mask(x, mask, 0.2, gen(0))
    assert torch.equal(y[~mask], x[~mask])
    noise = y[mask]
    assert abs(float(noise.mean())) < 0.02 and float(noise.std()) == pytest.approx(0.2, rel=0.05)
    assert torch.equal(y, apply_mask(x, mask, 0.2, gen(0)))
    with pytest.raises(InputError):
        apply_mask(x, mask.float(), 0.2, gen(0))


@pytest.mark.parametrize("ndim, shape", [(2, (16, 16)), (3, (8, 8, 8))])
@pytest.mark.parametrize("train_mode", [True, False])
def test_masked_pass_is_blind_to_masked_input_voxels(ndim, shape, train_mode):
    torch.manual_seed(0)
    net = ResUNet(UNetConfig(ndim=ndim, base_channels=4, depth=2)).train(train_mode)
    x = torch.randn((1, 1) + shape, generator=gen(2)).requires_grad_(True)
    mask = stratified_mask(shape, 5.0, gen(4), batch=1)
    masked_voxel = tuple(int(i) for i in mask.nonzero()[0])
    clear_voxel = tuple(int(i) for i in (~mask).nonzero()[len(mask.nonzero()) // 2])
    out = net(apply_mask(x, mask, 0.2, gen(5)))
    (grad_masked,) = torch.autograd.grad(out[masked_voxel], x, retain_graph=True)
    assert grad_masked[masked_voxel].item() == 0.0
    assert (grad_masked[mask] == 0).all()
    (grad_clear,) = torch.autograd.grad(out[clear_voxel], x)
    assert grad_clear[clear_voxel].item() != 0.0


@pytest.mark.parametrize("shape, psf_shape", [((6, 20, 20), (5, 5, 5)), ((12, 12), (9, 9))])
def test_mirror_copies_of_a_masked_voxel_are_masked_too(shape, psf_shape):
    """Near the border, reflect padding puts an image voxel into a training field more than once.
    No masked voxel may stay in view through a copy: the masked input's gradient with respect to
    the image is zero at every voxel that a mask position copies."""
    import numpy as np

    from deconv3d.fft import pad_spatial
    from deconv3d.selfsup import TrainConfig
    from deconv3d.selfsup.forward_model import ForwardModel
    from deconv3d.selfsup.patches import _PatchSampler

    psf = np.ones(psf_shape, np.float32) / np.prod(psf_shape)
    forward = ForwardModel(psf)
    geometry = forward.geometry([min(n, 8) for n in shape], 4)
    image = torch.randn(shape, generator=gen(7), dtype=torch.float32)
    config = TrainConfig(patch=8, batch=1, mask_percent=5.0, augment=False)
    copies = 0
    for seed in range(4):
        sampler = _PatchSampler(image.numpy(), geometry, replace_seed(config, seed), torch.device("cpu"))
        leaf = image.clone().requires_grad_(True)
        sampler.padded = pad_spatial(leaf, geometry.before, geometry.after, "reflect")  # same values, with a graph
        batch = sampler.sample(1)
        (grad,) = torch.autograd.grad(batch.masked.sum(), leaf)
        # the image voxels the mask positions copy
        padded_ids = pad_spatial(torch.arange(image.numel(), dtype=torch.float64).view(shape), geometry.before,
                                 geometry.after, "reflect").long()
        start = [int(i) for i in _start_of(batch.fields[0, 0], sampler.padded.detach())]
        box = tuple(slice(s, s + f) for s, f in zip(start, geometry.field_shape))
        ids = padded_ids[box][batch.mask[0, 0]]
        assert (grad.view(-1)[ids] == 0).all()
        copies += int((padded_ids[box].unsqueeze(0) == ids.view(-1, *([1] * len(shape)))).sum()) - len(ids)
        assert (grad != 0).any()
    assert copies > 0  # the case: some masked voxels had copies elsewhere in their field


def replace_seed(config, seed):
    from dataclasses import replace

    return replace(config, seed=seed)


def _start_of(field, padded):
    """Where ``field`` sits in ``padded`` (exact match)."""
    for start in itertools.product(*[range(p - f + 1) for p, f in zip(padded.shape, field.shape)]):
        box = tuple(slice(s, s + f) for s, f in zip(start, field.shape))
        if torch.equal(padded[box], field):
            return start
    raise AssertionError("field not found")
