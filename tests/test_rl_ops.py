"""The fused (numba) element-wise passes of the RL loop against the torch ones, and the choice."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.restoration import richardson_lucy as sk_rl

from conftest import asymmetric_psf
from deconv3d import _rl_fused_ops, _rl_ops
from deconv3d._rl_fused_ops import FusedOps
from deconv3d._rl_ops import ops_for
from deconv3d._rl_torch_ops import TorchOps
from deconv3d.classical import richardson_lucy
from deconv3d.errors import InputError

needs_numba = pytest.mark.skipif(not _rl_ops.numba_available(), reason="numba not installed (extra 'numba')")
CPU = torch.device("cpu")


def _crops(shape, seed=0, contiguous=False):
    """Tensors of ``shape`` that are strided crops of larger buffers, as the FFT buffers are
    (``contiguous``: whole contiguous arrays, which run the kernels' vectorised signature)."""
    r = torch.Generator().manual_seed(seed)

    def one():
        big = torch.rand([s + 3 for s in shape], generator=r) * 4
        crop = big[tuple(slice(1, 1 + s) for s in shape)]
        return crop.contiguous() if contiguous else crop
    return one


@pytest.fixture
def fused(monkeypatch):
    def use(name):
        monkeypatch.setenv("DECONV3D_FUSED", name)
    return use


@needs_numba
@pytest.mark.parametrize("shape", [(5, 7, 9), (6, 11), (3, 5, 37)])
@pytest.mark.parametrize("with_denominator", [False, True])
@pytest.mark.parametrize("contiguous", [False, True], ids=["crops", "contiguous"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_fused_passes_equal_torch(shape, with_denominator, contiguous, with_weight):
    make = _crops(shape, contiguous=contiguous)
    data, blurred, u, factor, x_prev, denominator, weight = (make() for _ in range(7))
    blurred[..., 0] = 1e-9  # below the floor
    factor[..., 1] -= 5  # some updates are clamped to 0
    denominator = denominator + 0.5 if with_denominator else None
    weight = weight + 0.25 if with_weight else None  # the Bertero weight, applied in the update pass
    out = {}
    for ops in (TorchOps, FusedOps):
        r = torch.empty(shape)
        ops.ratio(data, blurred.clone(), 0.5, r)
        buffers = ops.buffers(u)
        new, steps = [], []
        # Two steps in a row: the second's <g, g_prev> reads the step the first one kept.
        for guess in (u, x_prev):
            new.append(torch.empty(shape))
            dots = ops.update_step(guess, factor.clone(), denominator, new[-1], buffers, weight=weight)
            steps.append(torch.tensor(dots, dtype=torch.float64))
        assert (new[0] == 0).any() and (new[0] > 0).any()
        ext = torch.empty(shape)
        ops.extrapolate(u, x_prev, 0.6, ext, buffers)
        out[ops.name] = (r, new[0], new[1], steps[0], steps[1], ext)
    names = ("ratio", "update 1", "update 2", "dots 1", "dots 2", "extrapolate")
    for name, t, f in zip(names, out["torch"], out["numba"]):
        if name.startswith("dots") or name == "extrapolate":  # float64 sums; the divide may round the other way
            torch.testing.assert_close(f, t.to(f.dtype), rtol=1e-5, atol=0, msg=name)
        else:
            assert torch.equal(f, t), name
    # The updates are those of the formula, the weight included.
    weighted = factor * weight if with_weight else factor
    expected_update = (u * weighted / (denominator if with_denominator else 1.0)).clamp_min(0)
    assert torch.equal(out["torch"][1], expected_update)
    # The dots are those of the steps themselves (computed here in float64).
    g1 = (out["torch"][1] - u).double()
    g2 = (out["torch"][2] - x_prev).double()
    expected = torch.stack([torch.dot(g2.flatten(), g2.flatten()), torch.dot(g2.flatten(), g1.flatten())])
    torch.testing.assert_close(out["numba"][4], expected, rtol=1e-5, atol=0)


@needs_numba
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("with_denominator", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_fused_plain_update_equals_torch(with_weight, with_denominator, in_place):
    shape = (5, 7, 9)
    make = _crops(shape)
    u, factor, weight, denominator = (make() for _ in range(4))
    factor[..., 1] -= 5  # some updates are clamped to 0
    factor[0, 0, 0] = float("nan")  # stays NaN, as torch's clamp_min leaves it
    weight = weight + 0.25 if with_weight else None
    denominator = denominator + 0.5 if with_denominator else None
    results = []
    for ops in (TorchOps, FusedOps):
        start = u.clone()
        out = start if in_place else torch.empty(shape)
        ops.update(start, factor.clone(), denominator, out, weight=weight)
        results.append(out)
    weighted = factor * weight if with_weight else factor
    expected = (u * weighted / (denominator if with_denominator else 1.0)).clamp_min(0)
    assert torch.isnan(expected[0, 0, 0]) and (expected == 0).any()
    for got in results:  # bit for bit, NaN where the factor was NaN
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_buffers_hold_only_what_the_run_needs():
    like = torch.zeros(4, 5)
    assert TorchOps.buffers(like, steps=False).g is None
    assert TorchOps.buffers(like).g is not TorchOps.buffers(like).g_prev
    assert FusedOps.buffers(like, steps=False).g is None
    assert not hasattr(FusedOps.buffers(like), "scratch")  # the fused extrapolation needs none


@needs_numba
def test_fused_extrapolation_keeps_zeros_at_zero():
    zeros = torch.zeros(2, 3)
    out = torch.full((2, 3), 7.0)
    FusedOps.extrapolate(zeros, zeros, 0.5, out, FusedOps.buffers(zeros, steps=False))
    assert torch.equal(out, zeros)


@needs_numba
@pytest.mark.parametrize("boundary", ["zero", "bertero", "periodic", "reflect"])
@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("tv_weight", [0.0, 0.01])
@pytest.mark.parametrize("shape,psf_shape", [((12, 20, 18), (5, 7, 4)), ((30, 26), (7, 6))])
def test_richardson_lucy_fused_equals_torch(fused, boundary, accelerate, tv_weight, shape, psf_shape):
    r = np.random.default_rng(1)
    image = (r.random(shape) * 50 + 5).astype(np.float32)
    psf = asymmetric_psf(psf_shape, 1)
    results = {}
    for name in ("torch", "numba"):
        fused(name)
        results[name] = richardson_lucy(image, psf, 8, boundary=boundary, accelerate=accelerate,
                                        tv_weight=tv_weight, device="cpu")
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
def test_fused_kernels_follow_torch_threads_and_leave_numba_s_count_as_it_was(monkeypatch):
    """The kernels run on torch's thread count; numba's count in the calling thread is put back
    afterwards (review of process-global state: a user's parallel numba code ran on 1 thread
    after RL under torch.set_num_threads(1), twice as long)."""
    kernels = _rl_fused_ops._kernels()
    extrapolate, seen = kernels.extrapolate, []

    def counting(*args):
        seen.append(kernels.get_num_threads())
        return extrapolate(*args)

    monkeypatch.setattr(kernels, "extrapolate", counting)
    before, numba_before = torch.get_num_threads(), kernels.get_num_threads()
    try:
        torch.set_num_threads(1)
        kernels.set_num_threads(kernels.max_threads)
        x = torch.ones(3, 4, 5)
        FusedOps.extrapolate(x, x.clone(), 0.5, torch.empty_like(x), None)
        assert seen == [1] and kernels.get_num_threads() == kernels.max_threads
    finally:
        torch.set_num_threads(before)
        kernels.set_num_threads(numba_before)


@needs_numba
def test_loading_the_kernels_keeps_torch_s_thread_count():
    """Loading the kernels started numba's OpenMP threads, which set this thread's OpenMP count,
    and so torch's, to all cores: after torch.set_num_threads(1) the first RL ran, and all later
    torch work went on, with 2 threads (found as a test that passed only after another had left
    torch at 1 thread). Needs a fresh process: the kernels load once per process."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, torch
        torch.set_num_threads(1)
        from deconv3d.classical import richardson_lucy
        from deconv3d._rl_fused_ops import FusedOps
        from deconv3d._rl_ops import ops_for
        assert ops_for(torch.device("cpu"), torch.float32) is FusedOps
        richardson_lucy(np.ones((8, 16, 16), np.float32), np.ones((3, 3, 3), np.float32), 2, device="cpu")
        print(torch.get_num_threads())
    """)
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root, "DECONV3D_FUSED": "numba"})
    assert proc.stdout.split() == ["1"], proc.stderr[-2000:]


@needs_numba
def test_small_loops_run_torch_s_passes_without_importing_numba():
    """Loading numba and its kernels cost 0.7-2.4 s per process, paid by every run, the command
    line's memory estimate included, for loops too small to gain from them. Under auto, loops whose
    FFTs are smaller than FUSED_MIN_VOXELS run torch's passes, and neither RL on them, the pipeline's
    preload for such a volume nor the memory model (asked about a large block) imports numba.
    A residual network's preload for such a volume did (it ignored the volume's shape): now its
    reference's FFT shape decides. Needs a fresh process: numba stays imported once loaded."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, numpy as np, torch
        from deconv3d import _rl_ops
        from deconv3d.classical import richardson_lucy
        from types import SimpleNamespace
        from deconv3d.pipeline import MemoryModel, NetworkBlock, RichardsonLucyBlock
        cpu = torch.device("cpu")
        rng = np.random.default_rng(0)
        h = np.ones((3, 3, 3), np.float32) / 27
        richardson_lucy(rng.random((8, 16, 16), dtype=np.float32) + 0.1, h, 4, accelerate=True, device="cpu")
        RichardsonLucyBlock(h, accelerate=True).load((8, 16, 16))
        residual = SimpleNamespace(reference=object(), psf=h)  # (load reads these of a TrainedModel)
        NetworkBlock.load(SimpleNamespace(trained=residual, device="cpu"), (8, 16, 16))
        small = _rl_ops.ops_for(cpu, torch.float32, (8, 16, 16)).name
        large = _rl_ops.fused_planned(cpu, torch.float32, (64, 64, 64))
        MemoryModel("rl", (5, 5, 5), accelerate=True).block_bytes((60, 124, 124))  # counts the fused buffers
        print("numba" in sys.modules, small, large)
        print(_rl_ops.ops_for(cpu, torch.float32, (64, 64, 64)).name, "numba" in sys.modules)
    """)
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root, "DECONV3D_FUSED": "auto"})
    assert proc.stdout.split() == ["False", "torch", "True", "numba", "True"], proc.stderr[-2000:]


def test_loop_size_picks_the_passes_under_auto_only(fused):
    small, large = (8, 16, 16), (64, 64, 64)
    assert np.prod(small) < _rl_ops.FUSED_MIN_VOXELS <= np.prod(large)
    fused("auto")
    assert ops_for(CPU, torch.float32, small) is TorchOps
    assert _rl_ops.fused_planned(CPU, torch.float32, small) is False
    assert ops_for(CPU, torch.float32, large) is (FusedOps if _rl_ops.numba_available() else TorchOps)
    if _rl_ops.numba_available():
        fused("numba")  # asked for: at every size, as DECONV3D_FFT=fftw
        assert ops_for(CPU, torch.float32, small) is FusedOps
    fused("torch")
    assert ops_for(CPU, torch.float32, large) is TorchOps
    assert _rl_ops.fused_planned(CPU, torch.float32, large) is False


def test_numba_that_fails_to_import_falls_back_to_torch(fused, monkeypatch):
    monkeypatch.setattr(_rl_ops, "numba_available", lambda: True)
    monkeypatch.setattr(_rl_ops, "_numba_import_error", lambda: "ImportError: llvmlite mismatch")
    _rl_ops._warn_fallback.cache_clear()
    fused("auto")
    with pytest.warns(RuntimeWarning, match="llvmlite mismatch.*torch"):
        assert ops_for(CPU, torch.float32) is TorchOps
    fused("numba")
    with pytest.raises(InputError, match="fails to import.*unset DECONV3D_FUSED"):
        ops_for(CPU, torch.float32)
    _rl_ops._warn_fallback.cache_clear()


def test_numba_import_error_reports_a_working_install():
    expected = None if _rl_ops.numba_available() else "ModuleNotFoundError"
    error = _rl_ops._numba_import_error()
    assert error == expected or (expected and error.startswith(expected))


@needs_numba
def test_fused_passes_read_inputs_of_any_strides():
    """The kernels read rows as contiguous slices; an input whose rows are not contiguous (a
    transposed tensor given to richardson_lucy) is copied first, so the result is the same."""
    r = torch.Generator().manual_seed(1)
    data = (torch.rand((5, 9, 7), generator=r) * 4).transpose(1, 2)  # (5, 7, 9), x stride 7
    blurred = torch.rand((5, 7, 9), generator=r) + 0.1
    assert data.stride(-1) != 1
    outs = []
    for ops in (TorchOps, FusedOps):
        out = torch.empty((5, 7, 9))
        ops.ratio(data, blurred.clone(), 0.5, out)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="contiguous"):
        FusedOps.ratio(data, blurred, 0.5, torch.empty((5, 9, 7)).transpose(1, 2))


@needs_numba
def test_concurrent_blocks_under_numbas_workqueue_layer_do_not_abort():
    """numba's fallback threading layer aborts the process (SIGABRT) when two threads run its
    kernels at once, as pipeline blocks do; the fused passes take a lock under it."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, torch
        from concurrent.futures import ThreadPoolExecutor
        from deconv3d.classical import richardson_lucy
        torch.set_num_threads(1)
        rng = np.random.default_rng(0)
        ys = [(rng.random((8, 24, 26)) * 30 + 1).astype(np.float32) for _ in range(4)]
        h = rng.random((3, 5, 5)).astype(np.float32); h /= h.sum()
        serial = [richardson_lucy(y, h, 6, accelerate=True, device="cpu") for y in ys]
        with ThreadPoolExecutor(4) as pool:
            par = list(pool.map(lambda i: richardson_lucy(ys[i % 4], h, 6, accelerate=True, device="cpu"), range(16)))
        assert all(np.array_equal(p, serial[i % 4]) for i, p in enumerate(par))
        import numba
        print(numba.threading_layer())
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "DECONV3D_FUSED": "numba"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "workqueue"


def test_preload_starts_cuda_before_the_memory_baseline(monkeypatch):
    """The pipeline measures its memory baseline after preload: on a GPU the CUDA context must exist by
    then (checked with a stand-in for torch.empty, without a GPU)."""
    made = []
    monkeypatch.setattr(torch, "empty", lambda *a, **k: made.append(k.get("device")))
    _rl_ops.preload(torch.device("cuda"), torch.float32)
    assert made == [torch.device("cuda")]
    made.clear()
    monkeypatch.setattr(_rl_ops, "ops_for", lambda device, dtype, shape=None: None)  # no numba kernels to load here
    _rl_ops.preload(torch.device("cpu"), torch.float32)
    assert made == []


@pytest.mark.parametrize("ops", [TorchOps, pytest.param(FusedOps, marks=needs_numba)], ids=["torch", "numba"])
@pytest.mark.parametrize("shape", [(5, 7, 9), (6, 11), (3, 5, 37), (40, 67)])
@pytest.mark.parametrize("contiguous", [False, True], ids=["crops", "contiguous"])
@pytest.mark.parametrize("bounded", [False, True], ids=["no bound", "bound"])
def test_ratio_with_lower_bound_equals_two_passes(ops, shape, contiguous, bounded):
    """The ratio pass takes the clipped voxels' bound in the same pass: bit for bit the ratio
    followed by torch.maximum, as the loop ran it before."""
    make = _crops(shape, seed=3, contiguous=contiguous)
    data, blurred, lower = make() - 1, make(), make()  # some data negative: their ratio is raised to 0
    blurred[..., 0] = 1e-9  # below the floor
    data[..., 1] = 0.0
    lower = torch.where(lower < 1, 1.0, torch.where(lower < 2, lower / 4, 0.0))  # 1, a weight, or 0
    expected = torch.div(data, blurred.clamp_min(0.5))
    if bounded:
        expected = torch.maximum(expected, lower)
        assert (expected == lower).any() and (expected > lower).any() and (lower == 0).any()
    out = torch.empty(shape)
    ops.ratio(data, blurred.clone(), 0.5, out, lower if bounded else None)
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))  # signed zeros alike
