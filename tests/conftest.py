"""Shared fixtures: tiny seeded arrays and a CUDA marker that skips where no GPU exists."""

import os

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """FFTW wisdom (deconv3d._fftw_wisdom) and matplotlib's font cache (the demo's figure) go to temporary
    folders, not the user's ~/.cache (the font cache went to ~/.cache/matplotlib)."""
    names = ("DECONV3D_CACHE_DIR", "MPLCONFIGDIR")
    before = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ[name] = str(tmp_path_factory.mktemp(name.lower()))
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True, scope="session")
def no_progress_lines():
    """No progress lines in captured stderr (deconv3d.cli.printing.LogBar writes one every 30 s when
    stderr is not a terminal): a slow machine would add lines to outputs the tests compare.
    test_cli covers them with the interval set to 0."""
    before = os.environ.get("DECONV3D_PROGRESS_SECONDS")
    os.environ["DECONV3D_PROGRESS_SECONDS"] = "1e9"
    yield
    if before is None:
        os.environ.pop("DECONV3D_PROGRESS_SECONDS", None)
    else:
        os.environ["DECONV3D_PROGRESS_SECONDS"] = before


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: the data are tiny, and on a busy 2-core machine two OpenMP
    threads per operation run many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def once():
    """A cache for the session: ``once(key, make)`` returns ``make()``, made the first time ``key`` is
    asked for (a training several tests, in several modules, only read)."""
    made = {}

    def get(key, make):
        if key not in made:
            made[key] = make()
        return made[key]

    return get


def asymmetric_psf(shape, seed=0):
    """A positive, deliberately lopsided unit-sum kernel: a missing flip shows in any test."""
    r = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = np.exp(-sum((g - 0.3 * (i + 1) / len(shape)) ** 2 * (3 + i) for i, g in enumerate(grids)))
    psf = blob * (0.5 + r.random(shape))
    return (psf / psf.sum()).astype(np.float32)


@pytest.fixture
def computed(monkeypatch):
    """How many OTFs and Bertero weights have been computed (the RL set-up that deconv3d.classical._reuse shares)."""
    from deconv3d import fft
    from deconv3d.classical import _problem

    counts = {"otf": 0, "weight": 0}
    otf, weight = fft.FFTConvolver.otf, _problem._bertero_inverse_weight

    def counted(name, f):
        def call(*args, **kwargs):
            counts[name] += 1
            return f(*args, **kwargs)
        return call

    monkeypatch.setattr(fft.FFTConvolver, "otf", counted("otf", otf))
    monkeypatch.setattr(_problem, "_bertero_inverse_weight", counted("weight", weight))
    return counts
