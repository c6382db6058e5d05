"""The network's receptive-field probe runs once per network in a process (it takes about a minute in 3D)."""

import pytest

from deconv3d.pipeline import methods


@pytest.fixture
def probes(monkeypatch):
    """Count the calls of the real probe, with an empty per-process cache."""
    calls = []
    real = methods.receptive_field_radius

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(methods, "_RADII", {})
    monkeypatch.setattr(methods, "receptive_field_radius", counted)
    return calls


def test_one_probe_per_network_across_loaded_copies(tmp_path, probes):
    from deconv3d.pipeline import NetworkBlock
    from deconv3d.selfsup import TrainConfig, UNetConfig, load_checkpoint, save_checkpoint, train

    from .conftest import blurred_beads, gaussian_psf

    psf = gaussian_psf((5, 5), (1.0, 1.0))
    image = blurred_beads((48, 48), psf, seed=3, count=20)
    unet = UNetConfig(ndim=2, base_channels=4, depth=2)
    result = train(image, psf, config=TrainConfig(steps=2, patch=16, batch=2, residual=False), unet=unet,
                   device="cpu")
    save_checkpoint(result, tmp_path / "a.ckpt")
    first = NetworkBlock(load_checkpoint(tmp_path / "a.ckpt", device="cpu"), band_limit=None)
    second = NetworkBlock(load_checkpoint(tmp_path / "a.ckpt", device="cpu"), band_limit=None)  # as per file in a batch
    assert len(probes) == 1 and first.context == second.context
    # The cached radius is the probe's own answer.
    assert methods.network_radius(first.trained.model, first.trained.unet) == methods.receptive_field_radius(
        first.trained.model, unet.ndim, unet.divisor)
    # Other weights (here: two more training steps) are probed anew.
    further = train(image, psf, config=TrainConfig(steps=4, patch=16, batch=2, residual=False), unet=unet,
                    device="cpu")
    NetworkBlock(further, band_limit=None)
    assert len(probes) == 3  # the direct call above, and the new network's probe
