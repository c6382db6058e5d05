"""The fused (numba) element-wise passes of the RL loop against the torch ones, and the choice."""

import numpy as np
import pytest
import torch
from skimage.restoration import richardson_lucy as sk_rl

from conftest import asymmetric_psf
from deconv3d import _rl_ops
from deconv3d._rl_ops import FusedOps, TorchOps, ops_for
from deconv3d.classical import richardson_lucy
from deconv3d.errors import InputError

needs_numba = pytest.mark.skipif(not _rl_ops.numba_available(), reason="numba not installed (extra 'numba')")
CPU = torch.device("cpu")


def _crops(shape, seed=0):
    """Tensors of ``shape`` that are strided crops of larger buffers, as the FFT buffers are."""
    r = torch.Generator().manual_seed(seed)

    def one():
        big = torch.rand([s + 3 for s in shape], generator=r) * 4
        return big[tuple(slice(1, 1 + s) for s in shape)]
    return one


@pytest.fixture
def fused(monkeypatch):
    def use(name):
        monkeypatch.setenv("DECONV3D_FUSED", name)
    return use


@needs_numba
@pytest.mark.parametrize("shape", [(5, 7, 9), (6, 11)])
def test_fused_passes_equal_torch(shape):
    make = _crops(shape)
    data, blurred, u, factor, x_prev = (make() for _ in range(5))
    blurred[..., 0] = 1e-9  # below the floor
    factor[..., 1] -= 5
    new = (u * factor).clamp_min(0)  # an RL update with some voxels clamped to 0: the step's input
    assert (new == 0).any() and (new > 0).any()
    out = {}
    for ops in (TorchOps, FusedOps):
        r = torch.empty(shape)
        ops.ratio(data, blurred.clone(), 0.5, r)
        g = torch.empty(shape)
        dots = ops.step(u, new, g, x_prev)
        ext = torch.empty(shape)
        ops.extrapolate(u, x_prev, 0.6, ext, torch.empty(shape))
        out[ops.name] = (r, g, torch.tensor(dots, dtype=torch.float64), ext)
    names = ("ratio", "step", "dots", "extrapolate")
    for name, t, f in zip(names, out["torch"], out["numba"]):
        if name in ("dots", "extrapolate"):  # float64 sums; the divide may round the other way
            torch.testing.assert_close(f, t.to(f.dtype), rtol=1e-5, atol=0, msg=name)
        else:
            assert torch.equal(f, t), name


@needs_numba
def test_fused_extrapolation_keeps_zeros_at_zero():
    zeros = torch.zeros(2, 3)
    out = torch.full((2, 3), 7.0)
    FusedOps.extrapolate(zeros, zeros, 0.5, out)
    assert torch.equal(out, zeros)


@needs_numba
@pytest.mark.parametrize("boundary", ["zero", "bertero", "periodic", "reflect"])
@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("shape,psf_shape", [((12, 20, 18), (5, 7, 4)), ((30, 26), (7, 6))])
def test_richardson_lucy_fused_equals_torch(fused, boundary, accelerate, shape, psf_shape):
    r = np.random.default_rng(1)
    image = (r.random(shape) * 50 + 5).astype(np.float32)
    psf = asymmetric_psf(psf_shape, 1)
    results = {}
    for name in ("torch", "numba"):
        fused(name)
        results[name] = richardson_lucy(image, psf, 8, boundary=boundary, accelerate=accelerate, device="cpu")
    ref = results["torch"]
    if accelerate:  # the step size's float64 dot products feed round-off into later iterates
        assert np.abs(results["numba"] - ref).max() <= 1e-3 * ref.max()
    else:  # the same float32 operations in the same order
        np.testing.assert_array_equal(results["numba"], ref)


@needs_numba
def test_fused_zero_boundary_equals_scikit_image(fused):
    fused("numba")
    r = np.random.default_rng(2)
    image = (r.random((10, 24, 22)) * 40 + 1).astype(np.float32)
    psf = asymmetric_psf((5, 7, 5), 2)
    ours = richardson_lucy(image, psf, 10, boundary="zero", device="cpu")
    ref = sk_rl(image, psf, 10, clip=False)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_choice_of_implementation(fused, monkeypatch):
    fused("torch")
    assert ops_for(CPU, torch.float32) is TorchOps
    fused("auto")
    expected = FusedOps if _rl_ops.numba_available() else TorchOps
    assert ops_for(CPU, torch.float32) is expected
    assert ops_for(CPU, torch.float64) is TorchOps  # the kernels are float32
    assert ops_for(torch.device("cuda"), torch.float32) is TorchOps
    fused("bogus")
    with pytest.raises(InputError, match="DECONV3D_FUSED"):
        ops_for(CPU, torch.float32)
    monkeypatch.setattr(_rl_ops, "numba_available", lambda: False)
    fused("auto")
    assert ops_for(CPU, torch.float32) is TorchOps
    fused("numba")
    with pytest.raises(InputError, match="pip install"):
        ops_for(CPU, torch.float32)


@needs_numba
def test_fused_kernels_follow_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x = torch.ones(3, 4, 5)
        FusedOps.extrapolate(x, x.clone(), 0.5, torch.empty_like(x))
        assert _rl_ops._kernels().get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
