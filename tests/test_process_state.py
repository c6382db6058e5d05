"""Calls leave process-wide state as they found it, also when they overlap in threads (a napari
session calls the API from background threads, sometimes two at once): torch's RNG and the
warning filters. (Thread counts: tests/pipeline/test_pipeline_edges.py and test_rl_ops.py;
glibc's mmap threshold: tests/pipeline/test_memory.py.)"""

import threading
import time
import warnings

import numpy as np
import torch


def _state_dicts_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overlapping_seeded_builds_give_the_weights_of_a_build_alone_and_keep_the_callers_rng(monkeypatch):
    """Found by the review of process-global state: fork_rng saves and restores the process-wide
    RNG, so a build that ended while another was drawing its weights handed that one its own
    restored stream (weights unlike a build alone in 10 of 10 overlapping pairs) and the caller's
    RNG was not put back. Forced here: the first build ends while the second is half-way."""
    import importlib

    from deconv3d.selfsup import UNetConfig

    train_module = importlib.import_module("deconv3d.selfsup.train_setup")  # (where build_model finds ResUNet)

    config = UNetConfig(ndim=2, base_channels=4, depth=2)
    ResUNet = train_module.ResUNet
    gates = {"first": threading.Event(), "second": threading.Event()}
    inside = {"first": threading.Event(), "second": threading.Event()}

    class HalfWay(ResUNet):
        def __init__(self, cfg):
            name = threading.current_thread().name
            torch.rand(3)  # some draws, then wait (the two threads), then the network's own
            if name in gates:
                inside[name].set()
                assert gates[name].wait(10)
            super().__init__(cfg)

    monkeypatch.setattr(train_module, "ResUNet", HalfWay)
    alone = [train_module.build_model(config, seed=s).state_dict() for s in (0, 1)]
    built = {}

    def build(name, seed):
        built[name] = train_module.build_model(config, seed=seed).state_dict()

    torch.manual_seed(1234)
    caller = torch.random.get_rng_state()
    first = threading.Thread(target=build, args=("first", 0), name="first")
    second = threading.Thread(target=build, args=("second", 1), name="second")
    first.start()
    assert inside["first"].wait(10)
    second.start()
    time.sleep(0.3)  # without a lock around the builds, the second is half-way by now
    gates["first"].set()
    first.join(10)
    gates["second"].set()
    second.join(10)
    assert _state_dicts_equal(built["first"], alone[0]) and _state_dicts_equal(built["second"], alone[1])
    assert torch.equal(torch.random.get_rng_state(), caller)


def test_a_seeded_build_neither_reads_nor_moves_the_rng_another_thread_draws_from():
    """Review of threaded use: builds seeded and restored torch's process-wide RNG around them, so
    a thread drawing from it meanwhile (a user's torch code) changed the seeded weights (up to 0.49)
    and saw its own stream reseeded and rewound (43 repeated values). Builds now draw from a
    generator of their own: the weights are a build alone's, bit for bit those of torch's default
    initialisation after torch.manual_seed(seed), and the other thread's stream is untouched."""
    from deconv3d.latent.model import AEConfig, Autoencoder, build_autoencoder
    from deconv3d.selfsup import UNetConfig
    from deconv3d.selfsup.train_setup import build_model
    from deconv3d.selfsup.unet import ResUNet

    config = UNetConfig(ndim=3, base_channels=4, depth=2)
    for make, build in ((lambda: ResUNet(config), lambda: build_model(config, seed=3)),
                        (lambda: Autoencoder(AEConfig()), lambda: build_autoencoder(AEConfig(), seed=3))):
        torch.manual_seed(3)
        default = make().state_dict()  # torch's own initialisation of that seed
        stop, draws = threading.Event(), []

        def draw():
            while not stop.is_set():
                draws.append(torch.rand(64))

        torch.manual_seed(0)
        drawer = threading.Thread(target=draw)
        drawer.start()
        try:
            built = [build().state_dict() for _ in range(3)]
        finally:
            stop.set()
            drawer.join(10)
        assert all(_state_dicts_equal(b, default) for b in built)
        expected = torch.rand(len(draws) * 64, generator=torch.Generator().manual_seed(0))
        assert len(draws) > 0 and torch.equal(torch.cat(draws), expected)


def test_loading_a_checkpoint_leaves_the_callers_rng_alone(tmp_path):
    """Both loaders built their network from the caller's RNG before replacing its weights
    (review of process-global state): a user's seeded sequence changed when a model was loaded."""
    from deconv3d.latent import checkpoint as latent_checkpoint
    from deconv3d.latent.model import AEConfig, build_autoencoder
    from deconv3d.latent.train import LatentTrainConfig
    from deconv3d.selfsup import TrainConfig, UNetConfig, load_checkpoint, save_checkpoint, train

    rng = np.random.default_rng(0)
    result = train(rng.random((12, 24, 24)).astype(np.float32), np.ones((3, 5, 5), np.float32),
                   config=TrainConfig(steps=1, patch=8, batch=1), unet=UNetConfig(ndim=3, base_channels=4, depth=2),
                   device="cpu")
    save_checkpoint(result, tmp_path / "ssl.ckpt")
    ae = AEConfig(widths=(4, 8), crop=16)
    latent_checkpoint.save_checkpoint(latent_checkpoint.TrainedAutoencoder(
        build_autoencoder(ae, seed=3), ae, LatentTrainConfig(variant="implicit", steps=1), np.array([0.0, 1.0, 2.0]),
        (16, 16), 1.0), tmp_path / "ae.ckpt")
    for load, path in ((load_checkpoint, "ssl.ckpt"), (latent_checkpoint.load_checkpoint, "ae.ckpt")):
        torch.manual_seed(7)
        expected = torch.rand(4)
        torch.manual_seed(7)
        load(tmp_path / path)
        assert torch.equal(torch.rand(4), expected), path


def test_overlapping_warning_guards_leave_no_filter_behind(monkeypatch, tmp_path):
    """A PSF generated while a checkpoint was loaded in another thread, the generation ending
    first: each guard restored the filters it had found, so the loader's exit put back the
    generator's "ignore RuntimeWarning" for good (numpy's divide-by-zero warnings then vanished;
    review of process-global state). One lock now keeps the guards from overlapping."""
    import psfmodels

    from deconv3d import _torch_common
    from deconv3d.psf import generate

    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    gates = {"psf": threading.Event(), "load": threading.Event()}
    inside = threading.Event()

    def slow_psf(zv, nxy, **kwargs):
        inside.set()
        assert gates["psf"].wait(10)
        return np.ones((len(zv), nxy, nxy))

    load = torch.load

    def slow_load(*args, **kwargs):
        assert gates["load"].wait(10)
        return load(*args, **kwargs)

    monkeypatch.setattr(psfmodels, "make_psf", slow_psf)
    monkeypatch.setattr(_torch_common.torch, "load", slow_load)
    before = list(warnings.filters)
    psf = threading.Thread(target=generate._make_psf, args=("vectorial", np.linspace(-0.4, 0.4, 5), 9, 0.1, 1.2, 0.5, 1.33, 1.33, 0.0))
    loader = threading.Thread(target=_torch_common.safe_torch_load, args=(tmp_path / "w.pt", "test"))
    psf.start()
    assert inside.wait(10)
    loader.start()
    time.sleep(0.3)  # without one lock for both guards, the loader's guard is entered by now
    gates["psf"].set()
    psf.join(10)
    gates["load"].set()
    loader.join(10)
    assert warnings.filters == before
