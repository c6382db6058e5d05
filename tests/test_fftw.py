"""The FFTW backend of the CPU Richardson-Lucy loop against torch.fft and scikit-image, the
wisdom cache, the backend choice, and the multiplicative Biggs-Andrews step."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.restoration import richardson_lucy as sk_rl

from conftest import asymmetric_psf
from deconv3d import _fftw, _fftw_planning, _fftw_wisdom
from deconv3d._rl_torch_ops import TorchOps
from deconv3d.classical import richardson_lucy
from deconv3d.classical._iterate import _rl_factor, _Workspace
from deconv3d.classical._problem import _build_problem
from deconv3d.errors import InputError

needs_fftw = pytest.mark.skipif(not _fftw.fftw_available(), reason="pyFFTW not installed (extra 'fftw')")


@pytest.fixture
def backend(monkeypatch):
    def use(name):
        monkeypatch.setenv("DECONV3D_FFT", name)
    return use


def _data(shape, psf_shape, seed=0):
    r = np.random.default_rng(seed)
    image = (r.random(shape) * 50 + 5).astype(np.float32)
    return image, asymmetric_psf(psf_shape, seed)


@needs_fftw
@pytest.mark.parametrize("boundary", ["zero", "bertero", "periodic", "reflect"])
@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("shape,psf_shape", [((12, 20, 18), (5, 7, 4)), ((30, 26), (7, 6))])
def test_fftw_equals_torch(backend, boundary, accelerate, shape, psf_shape):
    image, psf = _data(shape, psf_shape)
    results = {}
    for name in ("torch", "fftw"):
        backend(name)
        results[name] = richardson_lucy(image, psf, 8, boundary=boundary, accelerate=accelerate, device="cpu")
    ref = results["torch"]
    assert results["fftw"].shape == ref.shape and results["fftw"].dtype == np.float32
    # The adaptive step size feeds float32 round-off back into every later iterate, so the
    # accelerated runs agree less closely than the plain ones (as two torch builds would).
    assert np.abs(results["fftw"] - ref).max() <= (1e-3 if accelerate else 2e-5) * ref.max()


@pytest.mark.parametrize("name", ["torch", pytest.param("fftw", marks=needs_fftw)])
def test_workspace_leaves_the_problem_unchanged(backend, name):
    # FFTW's inverse is unnormalised, so its workspace scales the OTFs: it must scale copies,
    # or a second workspace on the same problem would apply the scale twice.
    backend(name)
    image, psf = _data((12, 20, 18), (5, 7, 4))
    problem = _build_problem(torch.from_numpy(image), torch.from_numpy(psf), "bertero")
    otf = problem.otf.clone()
    factors = []
    for _ in range(2):
        ws = _Workspace(problem)
        ws.estimate_in.fill_(float(image.mean()))
        factors.append(_rl_factor(problem, ws, ws.estimate_in).clone())
    assert torch.equal(problem.otf, otf)
    torch.testing.assert_close(factors[1], factors[0], rtol=0, atol=0)
    assert 0.5 < float(factors[0].max()) < 2  # a flat start's correction is near 1


@needs_fftw
@pytest.mark.parametrize("shape,in_ext,out_ext", [
    ((10, 14, 12), (7, 9, 8), (6, 11, 5)),  # every axis pruned
    ((10, 14, 12), (10, 9, 12), (4, 14, 7)),  # whole leading axis, pruned middle
    ((10, 14, 12), (6, 14, 9), (10, 14, 12)),  # whole middle axis; whole output
    ((18, 16), (11, 9), (5, 13)),
    ((18, 16), (18, 16), (18, 16)),  # nothing pruned: one plan each way
])
def test_pruned_transforms_equal_full_ones(shape, in_ext, out_ext):
    r = np.random.default_rng(3)
    fft = _fftw.FFTWTransforms(shape, 1, torch.float64, input_extents=[in_ext], output_extents=[out_ext])
    box_in = tuple(slice(0, e) for e in in_ext)
    box_out = tuple(slice(0, e) for e in out_ext)
    x = np.zeros(shape)
    x[box_in] = r.standard_normal(in_ext)
    fft.inputs[0].copy_(torch.from_numpy(x))
    for _ in range(2):  # the second round sees the garbage the first inverse left in the spectrum
        fft.forward(0)
        np.testing.assert_allclose(fft.spectrum.numpy(), np.fft.rfftn(x), atol=1e-9)
        spectrum = r.standard_normal(fft.spectrum.shape) + 1j * r.standard_normal(fft.spectrum.shape)
        fft.spectrum.copy_(torch.from_numpy(spectrum))
        fft.inverse(0)
        ref = np.fft.irfftn(spectrum, s=shape, axes=tuple(range(len(shape))))
        np.testing.assert_allclose(fft.output.numpy()[box_out] * fft.scale, ref[box_out], atol=1e-12)


@needs_fftw
def test_fftw_zero_boundary_equals_scikit_image(backend):
    backend("fftw")
    # Odd PSF sides: for an even side, scikit-image's "same" convolution with the mirrored
    # PSF is offset by one voxel from the adjoint that deconv3d uses.
    image, psf = _data((10, 24, 22), (5, 7, 3), seed=3)
    ours = richardson_lucy(image, psf, 10, boundary="zero", device="cpu")
    ref = sk_rl(image, psf, 10, clip=False)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


@needs_fftw
def test_fftw_float64(backend):
    image, psf = _data((8, 16, 14), (3, 5, 4), seed=5)
    out = {}
    for name in ("torch", "fftw"):
        backend(name)
        out[name] = richardson_lucy(image, psf, 5, boundary="bertero", device="cpu", dtype=torch.float64)
    assert out["fftw"].dtype == np.float64
    assert np.abs(out["fftw"] - out["torch"]).max() <= 1e-10 * out["torch"].max()


@needs_fftw
def test_wisdom_is_saved_and_reloaded(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_loaded", False)
    backend("fftw")
    image, psf = _data((9, 22, 26), (3, 5, 5), seed=7)
    richardson_lucy(image, psf, 2, boundary="zero", device="cpu")
    path = _fftw_wisdom.wisdom_path()
    assert os.path.dirname(path) == str(tmp_path) and os.path.isfile(path)
    with open(path, "rb") as f:
        parts = _fftw_wisdom._unpack(f.read())
    assert parts is not None and len(parts[1]) > 0  # single-precision plans were recorded
    assert [p for p in os.listdir(tmp_path) if p.startswith(".fftw-wisdom-")] == []  # no temporaries left
    before = os.stat(path).st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    richardson_lucy(image, psf, 2, boundary="zero", device="cpu")  # same plans: the file is left alone
    assert os.stat(path).st_mtime_ns == before - 10**9


@pytest.mark.parametrize("cache_dir, xdg, home_known, expected", [
    ("~/dc", None, True, "home/dc"), (None, "~/.cache", True, "home/.cache/deconv3d"),
    (None, "relative", True, "home/.cache/deconv3d"),  # a relative XDG_CACHE_HOME is ignored, as the spec says
    ("relative", None, True, None), (None, None, False, None), ("~/dc", None, False, None)])
def test_the_cache_folder_is_absolute_or_nothing_is_cached(tmp_path, monkeypatch, cache_dir, xdg, home_known,
                                                           expected):
    """DECONV3D_CACHE_DIR='~/dc', XDG_CACHE_HOME='~/.cache', or HOME unset with no passwd entry
    (expanduser leaves "~") created ./~/dc/fftw-wisdom-... in every working directory."""
    import pwd

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name, value in (("DECONV3D_CACHE_DIR", cache_dir), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    if home_known:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    else:
        monkeypatch.delenv("HOME", raising=False)

        def no_entry(uid):
            raise KeyError(uid)
        monkeypatch.setattr(pwd, "getpwuid", no_entry)
    path = _fftw_wisdom.wisdom_path()
    assert (None if path is None else os.path.dirname(path)) == (expected and str(tmp_path / expected))
    monkeypatch.setattr(_fftw_wisdom, "_remembered", set())
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_on_disk", ())
    _fftw_wisdom.remember_size("3x4x5:float32")
    _fftw_wisdom.save_wisdom(SimpleNamespace(export_wisdom=lambda: (b"a", b"b", b"c"), import_wisdom=lambda parts: None))
    assert os.listdir(work) == []
    if expected is not None:
        with open(path, "rb") as f:
            assert _fftw_wisdom._unpack(f.read()) == (b"a", b"b", b"c")
        assert _fftw_wisdom._read_sizes(_fftw_wisdom._sizes_path()) == ["3x4x5:float32"]


def test_a_wisdom_lock_held_elsewhere_is_waited_for_briefly_then_saved_without(tmp_path, monkeypatch):
    """The save waited for the lock file's flock without end, holding the process-wide lock, while
    another process held it (a 25 s hold, a 25 s stall). Here the test holds the flock through its
    own open file (flock locks belong to open file descriptions): the save goes on without it."""
    import fcntl
    import threading

    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_fftw_wisdom, "_LOCK_WAIT", 0.1)
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_on_disk", ())
    path = _fftw_wisdom.wisdom_path()
    held = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fake = SimpleNamespace(export_wisdom=lambda: (b"a", b"b", b"c"), import_wisdom=lambda parts: None)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        saver = threading.Thread(target=_fftw_wisdom.save_wisdom, args=(fake,), daemon=True)
        saver.start()
        saver.join(10)  # (a guard against hanging the suite: the save waits 0.1 s)
        assert not saver.is_alive(), "the save is still waiting for the lock"
    finally:
        os.close(held)  # releases the lock (and a save still waiting)
    with open(path, "rb") as f:
        assert _fftw_wisdom._unpack(f.read()) == (b"a", b"b", b"c")


def _rfft_plan(pyfftw, shape, flags):
    """An rfftn plan of ``shape`` as FFTWTransforms makes it (float32, this process's torch threads)."""
    real = pyfftw.empty_aligned(shape, dtype="float32")
    spectrum = pyfftw.empty_aligned(shape[:-1] + (shape[-1] // 2 + 1,), dtype="complex64")
    return pyfftw.FFTW(real, spectrum, axes=tuple(range(len(shape))), flags=flags, threads=torch.get_num_threads())


@needs_fftw
def test_runs_saving_wisdom_at_once_keep_each_others_plans(tmp_path, monkeypatch):
    """Each run wrote all the wisdom it held over the file: of two runs measuring at once, the one
    saving last erased the plans the other had saved since it read the file (0 of 93 kept)."""
    import pyfftw

    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "measure")
    _new_process(monkeypatch)
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_on_disk", ())
    theirs, ours = (6, 10, 12), (8, 10, 14)
    pyfftw.forget_wisdom()
    try:
        _fftw_wisdom.load_wisdom(pyfftw)  # this run reads the cache (empty) ...
        _rfft_plan(pyfftw, theirs, ("FFTW_MEASURE",))  # ... then another run measures and saves
        with open(_fftw_wisdom.wisdom_path(), "wb") as f:
            f.write(_fftw_wisdom._pack(pyfftw.export_wisdom()))
        pyfftw.forget_wisdom()
        _fftw.FFTWTransforms(ours, 1, torch.float32)  # this run measures its own and saves
        pyfftw.forget_wisdom()
        with open(_fftw_wisdom.wisdom_path(), "rb") as f:
            pyfftw.import_wisdom(_fftw_wisdom._unpack(f.read()))
        for shape in (theirs, ours):  # FFTW_WISDOM_ONLY raises RuntimeError where no plan is kept
            _rfft_plan(pyfftw, shape, ("FFTW_MEASURE", "FFTW_WISDOM_ONLY"))
    finally:
        pyfftw.forget_wisdom()


@needs_fftw
def test_estimate_plans_are_the_same_whatever_the_wisdom_holds(tmp_path, monkeypatch):
    """FFTW takes plans from the wisdom it holds whatever the flags: DECONV3D_FFTW_PLANNER=estimate
    loaded the file and reused plans measured earlier, so an estimate run after default-planner
    runs differed from one before them (2.3e-5 of the maximum). Estimate runs plan with no wisdom
    held, and neither read nor write the file."""
    import pyfftw

    shape = (12, 20, 18)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    empty, held = tmp_path / "empty", tmp_path / "held"
    original, wisdom_at_planning = pyfftw.FFTW, []

    def recording(*args, **kwargs):
        wisdom_at_planning.append(pyfftw.export_wisdom())
        return original(*args, **kwargs)

    def transform(planner, cache):
        monkeypatch.setenv("DECONV3D_FFTW_PLANNER", planner)
        monkeypatch.setenv("DECONV3D_CACHE_DIR", str(cache))
        fft = _fftw.FFTWTransforms(shape, 1, torch.float32)
        fft.inputs[0].copy_(torch.from_numpy(x))
        fft.forward(0)
        spectrum = fft.spectrum.numpy().copy()
        fft.inverse(0)
        return spectrum, fft.output.numpy().copy()

    before = pyfftw.export_wisdom()
    try:
        pyfftw.forget_wisdom()
        nothing = pyfftw.export_wisdom()
        _new_process(monkeypatch)
        monkeypatch.setattr(pyfftw, "FFTW", recording)
        first = transform("estimate", empty)  # a process that has planned nothing, an empty cache
        seen_first = list(wisdom_at_planning)  # no wisdom, then what its estimated plans add
        assert seen_first and seen_first[0] == nothing
        assert not empty.exists() or not list(empty.iterdir())  # nothing written
        transform("measure", held)  # measured plans, kept in the file and in this process
        assert os.path.isfile(os.path.join(held, os.path.basename(_fftw_wisdom.wisdom_path())))
        for fresh in (False, True):  # this process's measured plans, then the file's in a new process
            if fresh:
                pyfftw.forget_wisdom()
                _new_process(monkeypatch)
            wisdom_at_planning.clear()
            held_before = pyfftw.export_wisdom()
            again = transform("estimate", held)
            assert wisdom_at_planning == seen_first  # planned with the same (no) wisdom
            assert all(np.array_equal(a, b) for a, b in zip(again, first))
            assert _entries(pyfftw.export_wisdom()) == _entries(held_before)  # this process's kept, the file's not read
    finally:
        pyfftw.forget_wisdom()
        pyfftw.import_wisdom(before)


def _entries(wisdom):
    """The plans of exported wisdom, in any order (FFTW exports them in its hash table's order)."""
    return [sorted(part.splitlines()) for part in wisdom]


def test_wisdom_file_format_round_trip():
    parts = (b"double", b"", b"\x00long double\xff")
    assert _fftw_wisdom._unpack(_fftw_wisdom._pack(parts)) == parts
    packed = _fftw_wisdom._pack(parts)
    assert _fftw_wisdom._unpack(packed[:-1]) is None  # truncated
    assert _fftw_wisdom._unpack(packed + b"x") is None  # trailing bytes
    assert _fftw_wisdom._unpack(b"\x80\x04pickle") is None  # a foreign file is ignored, never unpickled


@needs_fftw
def test_damaged_wisdom_file_is_ignored(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_loaded", False)
    with open(_fftw_wisdom.wisdom_path(), "wb") as f:
        f.write(_fftw_wisdom._WISDOM_MAGIC + b"\xff" * 40)
    backend("fftw")
    image, psf = _data((8, 12, 12), (3, 3, 3))
    backend("torch")
    ref = richardson_lucy(image, psf, 3, device="cpu")
    backend("fftw")
    assert np.allclose(richardson_lucy(image, psf, 3, device="cpu"), ref, rtol=0, atol=2e-5 * ref.max())


def test_backend_choice(backend):
    cpu, f32 = torch.device("cpu"), torch.float32
    backend("torch")
    assert _fftw.backend_for((512, 512, 512), cpu, f32) == "torch"
    backend("nonsense")
    with pytest.raises(InputError, match="DECONV3D_FFT"):
        _fftw.backend_for((8, 8), cpu, f32)
    backend("auto")
    assert _fftw.backend_for((8, 8), cpu, f32) == "torch"  # too small for planning to pay off
    big = _fftw.backend_for((64, 128, 128), cpu, f32)
    assert big == ("fftw" if _fftw.fftw_available() else "torch")
    assert _fftw.backend_for((64, 128, 128), torch.device("meta"), f32) == "torch"  # FFTW is CPU only
    assert _fftw.backend_for((64, 128, 128), cpu, torch.float16) == "torch"


@pytest.mark.parametrize("boundary", ["zero", "bertero", "periodic", "reflect"])
@pytest.mark.parametrize("shape,psf_shape", [((12, 20, 18), (5, 7, 4)), ((30, 26), (7, 6)), ((9, 9), (9, 9))])
def test_rl_fft_shape_is_the_problem_s(boundary, shape, psf_shape):
    """A run's record names the backend of RL's transforms from their shape, found without running."""
    from deconv3d.classical._problem import rl_fft_shape

    image, psf = _data(shape, psf_shape)
    problem = _build_problem(torch.from_numpy(image), torch.from_numpy(psf), boundary)
    assert rl_fft_shape(shape, psf_shape, boundary) == tuple(problem.fft_shape)


def test_the_record_names_the_backend_chosen_per_transform(backend, monkeypatch):
    """"fftw (auto)" was recorded wherever pyFFTW was installed, for transforms too small for it too."""
    from deconv3d._environment import fft_record

    monkeypatch.setattr(_fftw, "fftw_available", lambda: True)
    monkeypatch.setattr(_fftw, "FFTW_MIN_VOXELS", 1000)
    backend("auto")
    assert fft_record("cpu", [(8, 8, 8)]) == {"fft": "torch (auto)"}
    assert fft_record("cpu", []) == {"fft": "torch (auto)"}  # Wiener's and the network's transforms
    mixed = fft_record("cpu", [(8, 8, 8), (10, 10, 10)])
    assert mixed["fft"] == "fftw and torch (auto)" and mixed["fftw_planner"]
    backend("torch")
    assert fft_record("cpu", [(10, 10, 10)]) == {"fft": "torch"}


def test_fftw_requested_but_missing(backend, monkeypatch):
    monkeypatch.setattr(_fftw, "fftw_available", lambda: False)
    backend("fftw")
    with pytest.raises(InputError, match="pip install"):
        _fftw.backend_for((8, 8), torch.device("cpu"), torch.float32)


def test_extrapolate_is_a_pade_approximant_of_the_power():
    r = torch.tensor([0.001, 0.05, 0.5, 0.95, 1.0, 1.05, 2.0, 20.0, 1e4], dtype=torch.float64)
    x_prev = torch.full_like(r, 3.0)
    x = r * x_prev
    for alpha in (0.1, 0.5, 0.9):
        out = torch.empty_like(r)
        TorchOps.extrapolate(x, x_prev, alpha, out, TorchOps.buffers(r, steps=False))
        ratio = out / x
        c = (1 + alpha) / (1 - alpha)
        assert torch.all(ratio > 1 / c - 1e-12) and torch.all(ratio < c + 1e-12)  # bounded, positive
        assert torch.all(ratio[1:] >= ratio[:-1])  # increasing in r
        near = (r > 0.9) & (r < 1.1)
        # Third-order agreement with r**alpha about r = 1: |error| <= C |r - 1|^3.
        err = (ratio[near] - r[near] ** alpha).abs()
        assert torch.all(err <= 0.1 * (r[near] - 1).abs() ** 3 + 1e-12)
    zeros = torch.zeros(2, dtype=torch.float64)
    out = torch.empty(2, dtype=torch.float64)
    TorchOps.extrapolate(zeros, zeros, 0.5, out, TorchOps.buffers(out, steps=False))
    assert torch.equal(out, zeros)  # voxels at 0 stay 0, no NaN


@pytest.fixture
def planned(tmp_path, monkeypatch):
    """``planned(shape)``: how :class:`FFTWTransforms` planned ``shape`` ("estimate", "measured" or
    "kept"; a tuple of those per plan where they differ), in a process that has planned nothing
    yet (fresh state, empty cache, auto planner), on a clock where measuring a plan takes 1 s."""
    import pyfftw

    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    _new_process(monkeypatch)
    monkeypatch.setattr(_fftw_wisdom, "_remembered", set())
    monkeypatch.delenv("DECONV3D_FFTW_PLANNER", raising=False)
    made, original, now = [], pyfftw.FFTW, [0.0]
    monkeypatch.setattr(_fftw_planning, "_clock", lambda: now[0])

    def recording(*args, **kwargs):
        before = pyfftw.export_wisdom()
        plan = original(*args, **kwargs)  # FFTW_WISDOM_ONLY without a measured plan raises here
        now[0] += 1.0 if pyfftw.export_wisdom() != before else 0.0  # measured now, not read from the wisdom
        flags = kwargs.get("flags", ())
        made.append("estimate" if "FFTW_ESTIMATE" in flags else "kept" if "FFTW_WISDOM_ONLY" in flags else
                    "measured" if "FFTW_MEASURE" in flags else flags)
        return plan

    def plan(shape):
        made.clear()
        _fftw.FFTWTransforms(shape, 1, torch.float32)
        return made[0] if len(set(made)) == 1 else tuple(made)

    monkeypatch.setattr(pyfftw, "FFTW", recording)
    return plan


def _new_process(monkeypatch):
    """As a later process: the wisdom and sizes files are read again, nothing met or measured yet."""
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_loaded", False)
    monkeypatch.setattr(_fftw_planning, "_met", {})
    monkeypatch.setattr(_fftw_planning, "_measured_s", 0.0)


@needs_fftw
def test_the_auto_planner_measures_a_size_once_it_recurs(planned, tmp_path, monkeypatch):
    """Measuring plans cost 57-81 % of a first 20-iteration run (5-20 s per shape): a size met for
    the first time gets estimated plans at once; met again by a later process (the sizes file), or
    RECUR_IN_PROCESS times in this one, it is measured, and measured plans kept are reused."""
    once, often = (5, 21, 38), (5, 23, 38)  # planned nowhere else in the tests
    assert planned(once) == "estimate" and planned(once) == "estimate"  # this process: not yet recurring
    assert "5x21x38:float32" in (tmp_path / os.path.basename(_fftw_wisdom._sizes_path())).read_text()
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_loaded", False)  # as a later process: the size recurs
    assert planned(once) == "measured"
    monkeypatch.setattr(_fftw_planning, "RECUR_IN_PROCESS", 3)
    assert [planned(often) for _ in range(3)] == ["estimate", "estimate", "measured"]
    monkeypatch.setattr(_fftw_planning, "MEASURE_MAX_VOXELS", 5 * 21 * 38 - 1)  # as for a large transform: never measured
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_loaded", False)
    assert planned((5, 21, 40)) == "estimate" and planned((5, 21, 40)) == "estimate"
    monkeypatch.setattr(_fftw_wisdom, "_wisdom_loaded", False)  # met before, but too large: not measured now ...
    assert planned((5, 21, 40)) == "estimate" and planned(once) == "kept"  # ... while kept plans are used
    monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "estimate")
    assert planned(once) == "estimate"
    monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "measure")
    assert planned((5, 25, 38)) == "measured"
    monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "fast")
    with pytest.raises(InputError, match="not one of auto, estimate, measure, patient: unset it"):
        _fftw.FFTWTransforms(once, 1, torch.float32)


@needs_fftw
def test_a_process_measures_plans_of_sizes_met_before_within_its_budget(planned, monkeypatch):
    """The second run of a chunked command measured all its block shapes at once (43 s of CPU
    against 11.7 s for the first): once a process has measured for MEASURE_BUDGET seconds, the
    plans of sizes met by earlier runs are estimated (or taken measured from the wisdom) and a
    later run measures them. Sizes recurring in this process, and DECONV3D_FFTW_PLANNER=measure,
    are not held to it."""
    monkeypatch.setattr(_fftw_planning, "MEASURE_BUDGET", 1.0)  # one plan's measuring: a size has two plans here
    first, second, third = (6, 21, 38), (6, 23, 38), (6, 25, 38)  # planned nowhere else in the tests
    assert [planned(first), planned(second)] == ["estimate", "estimate"]  # a first run meets them
    _new_process(monkeypatch)
    with _fftw_planning.measuring_run():  # one run (run_chunked's blocks)
        assert planned(first) == ("measured", "estimate")  # the budget is spent after its forward plan
        assert planned(second) == "estimate"
        assert planned(first) == ("kept", "estimate")  # what was measured is used all the same
        monkeypatch.setattr(_fftw_planning, "RECUR_IN_PROCESS", 2)
        assert [planned(third), planned(third)] == ["estimate", "measured"]  # recurs in this process
    _new_process(monkeypatch)
    with _fftw_planning.measuring_run():
        assert planned(first) == "measured"  # the next run measures the plan left (the other is in the wisdom)
        assert planned(second) == "estimate" and _fftw_planning._measured_s == 1.0
        monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "measure")
        assert planned((6, 27, 38)) == "measured" and _fftw_planning._measured_s == 3.0


@needs_fftw
def test_each_run_in_a_process_has_its_own_measuring_budget(planned, monkeypatch):
    """Found by review: the budget was the process's, though the docs said per run: in a notebook, or
    on a persistent dask worker, the runs after the first few never measured again. A run
    (measuring_run) starts it afresh; a transform planned outside one is a run of its own (a
    richardson_lucy call), and a cluster worker's blocks of one run, which open one each, share one
    by the run's key."""
    monkeypatch.setattr(_fftw_planning, "MEASURE_BUDGET", 1.0)  # one plan's measuring: a size has two plans here
    sizes = [(7, n, 38) for n in (21, 23, 25, 27)]  # planned nowhere else in the tests
    assert [planned(s) for s in sizes] == ["estimate"] * 4  # met, so measured by later processes
    _new_process(monkeypatch)
    with _fftw_planning.measuring_run():
        assert [planned(sizes[0]), planned(sizes[1])] == [("measured", "estimate"), "estimate"]  # spent
    assert planned(sizes[1]) == ("measured", "estimate")  # a later run in this process measures again
    with _fftw_planning.measuring_run("run-a"):  # a worker's first block of run a
        assert planned(sizes[2]) == ("measured", "estimate")
    with _fftw_planning.measuring_run("run-a"):  # its next block: the same run, budget spent
        assert planned(sizes[3]) == "estimate"
    with _fftw_planning.measuring_run("run-b"):
        assert planned(sizes[3]) == ("measured", "estimate")


def test_the_blocks_of_a_chunked_run_share_one_measuring_budget(tmp_path, monkeypatch):
    """run_chunked and a blockwise graph are one run each: their blocks, each of which opens a run
    for its transforms, share its budget (one budget per block measured every plan of every block
    shape: the second run of a chunked command cost 3.7 times the first), and the next run starts
    afresh. Here a block stands for RL measuring one plan for 1 s."""
    import dask.array as da

    from deconv3d.pipeline import run_chunked
    from deconv3d.pipeline.graph import blockwise

    seen = []

    def block(b):
        with _fftw_planning.measuring_run():  # as RL's transforms open one
            seen.append(_fftw_planning._measured_s)
            _fftw_planning._measured_s += 1.0
        return b

    monkeypatch.setattr(_fftw_planning, "_measured_s", 5.0)  # spent by an earlier run
    image = np.ones((4, 8, 8), np.float32)
    for name in ("a", "b"):
        run_chunked(image, block, tmp_path / f"{name}.zarr", chunks=(2, 4, 8), halo=(0, 0, 0))
    blockwise(da.from_array(image), block, chunks=(2, 4, 8), halo=(0, 0, 0))[0].compute(scheduler="sync")
    assert seen == [0.0, 1.0, 2.0, 3.0] * 3


def test_processes_recording_sizes_at_once_keep_every_size(tmp_path, monkeypatch):
    """Read, merge and replace lost 138 of 240 sizes to six processes at once; appends keep all."""
    import multiprocessing

    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_fftw_wisdom, "_remembered", set())

    def record(i):
        for j in range(40):
            _fftw_wisdom.remember_size(f"{i}x{j}:float32")

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=record, args=(i,)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(set(_fftw_wisdom._read_sizes(_fftw_wisdom._sizes_path()))) == sorted(f"{i}x{j}:float32" for i in range(6)
                                                                          for j in range(40))


@needs_fftw
def test_an_estimate_run_leaves_the_next_run_nothing_to_save(tmp_path, monkeypatch):
    """Setting the wisdom aside for an estimate run and importing it back changes the order FFTW
    exports it in: the next default run in the process compared it with the file's copy, found a
    difference, and rewrote the file (logging "planned ... in 0.0 s") though it measured nothing."""
    import pyfftw

    shape = (8, 16, 18)
    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    saved = []
    monkeypatch.setattr(_fftw_wisdom, "save_wisdom", lambda fftw, real=_fftw_wisdom.save_wisdom: (saved.append(1), real(fftw)))
    before = pyfftw.export_wisdom()
    try:
        pyfftw.forget_wisdom()
        _new_process(monkeypatch)
        monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "measure")
        _fftw.FFTWTransforms(shape, 1, torch.float32)  # measured, and saved
        assert saved
        saved.clear()
        _fftw.FFTWTransforms(shape, 1, torch.float32)  # the same plans again: nothing to save
        assert not saved
        monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "estimate")
        _fftw.FFTWTransforms(shape, 1, torch.float32)
        monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "measure")
        _fftw.FFTWTransforms(shape, 1, torch.float32)  # still nothing new measured
        assert not saved
    finally:
        pyfftw.forget_wisdom()
        pyfftw.import_wisdom(before)


@needs_fftw
def test_the_fftw_backend_logs_on_one_logger_as_before_its_split(tmp_path, monkeypatch, caplog):
    """The FFTW backend's INFO lines (a measured plan's time, a cache it could not write) came from
    the logger ``deconv3d._fftw``; split into _fftw_planning and _fftw_wisdom, they came from
    loggers named after those, so a program that set ``deconv3d._fftw`` to INFO saw neither."""
    import logging

    import pyfftw

    monkeypatch.setenv("DECONV3D_CACHE_DIR", str(tmp_path))
    _new_process(monkeypatch)
    monkeypatch.setattr(_fftw_wisdom, "_remembered", set())
    monkeypatch.setenv("DECONV3D_FFTW_PLANNER", "measure")
    before = pyfftw.export_wisdom()
    try:
        pyfftw.forget_wisdom()
        with caplog.at_level(logging.INFO, logger="deconv3d._fftw"):
            _fftw.FFTWTransforms((4, 6, 10), 1, torch.float32)
            blocked = tmp_path / "a file"
            blocked.write_text("")
            monkeypatch.setenv("DECONV3D_CACHE_DIR", str(blocked))  # no folder can be made in it
            _fftw_wisdom.save_wisdom(pyfftw)
    finally:
        pyfftw.forget_wisdom()
        pyfftw.import_wisdom(before)
    ours = [(r.name, r.getMessage().split(" ")[:3]) for r in caplog.records if r.name.startswith("deconv3d")]
    assert ours == [("deconv3d._fftw", ["planned", "FFTW", "transforms"]), ("deconv3d._fftw", ["could", "not", "save"])]
