"""Mixed precision in the autoencoder's training: bfloat16 on a CPU with AMX, float32 otherwise.

The AMX check is forced either way, so these tests run the same on any CPU (forced bfloat16 on a
CPU without AMX is emulated by oneDNN: slower, but right).
"""

import importlib

import numpy as np
import pytest
import torch

from amp_helpers import autocast_failing_at
from deconv3d import _torch_common
from deconv3d.errors import InputError
from deconv3d.latent.checkpoint import load_checkpoint, save_checkpoint
from deconv3d.latent.model import AEConfig, build_autoencoder
from deconv3d.latent.train import LatentTrainConfig, config_to_dict, train, train_config_from_dict, triplet_loss

AE = AEConfig(widths=(4, 8), crop=16)
train_module = importlib.import_module("deconv3d.latent.train")


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(_torch_common, "cpu_has_amx", lambda: True)


@pytest.mark.parametrize("amp, expected", [(True, "bfloat16"), (False, "float32")])
def test_training_reports_its_precision_and_the_checkpoint_keeps_it(amx, stacks, tmp_path, monkeypatch, amp,
                                                                    expected):
    seen = []
    first = train_module.build_autoencoder

    def recording(*args, **kwargs):  # the dtype of the decoder's last block under the step's autocast
        model = first(*args, **kwargs)
        model.decoder[-1].register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(train_module, "build_autoencoder", recording)
    res = train(stacks, [0, 1, 2], LatentTrainConfig(steps=3, batch=2, val_every=1, amp=amp), AE, device="cpu")
    assert res.reason == "completed" and res.precision == expected
    assert set(seen) == {torch.bfloat16 if amp else torch.float32}
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # the weights stay float32
    save_checkpoint(res, tmp_path / "ae.ckpt", plane_shape=stacks.shape[-2:])
    loaded = load_checkpoint(tmp_path / "ae.ckpt")
    assert loaded.config.amp is amp
    kept = {k: loaded.run[k] for k in ("train_steps", "stopped", "precision")}  # (beside what came later)
    assert kept == {"train_steps": 3, "stopped": "completed", "precision": expected}
    data = torch.load(tmp_path / "ae.ckpt", weights_only=True)
    data["run"]["train_steps"] = "3"
    torch.save(data, tmp_path / "ae.ckpt")
    with pytest.raises(InputError, match="damaged"):
        load_checkpoint(tmp_path / "ae.ckpt")


def test_numpy_bools_are_stored_as_bools(stacks, tmp_path):
    """np.True_ passed the check, and torch.load(weights_only=True) refused the checkpoint holding it."""
    config = LatentTrainConfig(steps=1, batch=2, val_fraction=0.0, amp=np.False_, residual=np.True_)
    assert config.amp is False and config.residual is True
    res = train(stacks, [0, 1, 2], config, AE, device="cpu")
    save_checkpoint(res, tmp_path / "ae.ckpt", plane_shape=stacks.shape[-2:])
    assert load_checkpoint(tmp_path / "ae.ckpt").config == config


@pytest.mark.parametrize("variant", ["baseline", "implicit", "explicit"])
@pytest.mark.parametrize("skip", [False, True])
def test_a_network_converted_to_one_dtype_computes_its_loss_in_that_dtype(variant, skip):
    model = build_autoencoder(AEConfig(widths=(4, 8), crop=16, skip_interp=skip), seed=0).to(torch.bfloat16)
    x1, x2, x3 = torch.rand(3, 2, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    alpha = torch.tensor([0.5, 0.25], dtype=torch.bfloat16)
    loss, terms = triplet_loss(model, x1, x2, x3, alpha, variant, residual=variant != "baseline")
    assert loss.dtype == torch.bfloat16 and np.isfinite(terms["total"])


def test_bfloat16_training_follows_float32_training(amx, stacks):
    """The same seeded run in both precisions: bfloat16 rounds, so the losses differ a little, not a lot."""
    runs = [train(stacks, [0, 1, 2], LatentTrainConfig(steps=20, batch=4, val_fraction=0.0, amp=amp), AE,
                  device="cpu") for amp in (True, False)]
    low, full = (np.array([loss for _, loss in r.history]) for r in runs)
    assert runs[0].precision == "bfloat16" and runs[1].precision == "float32"
    assert not np.array_equal(low, full)  # (bfloat16 did run)
    assert np.abs(low / full - 1).max() < 0.05  # the same weights and batches: rounding only
    assert low[-5:].mean() < 0.95 * low[:5].mean() and full[-5:].mean() < 0.95 * full[:5].mean()  # both learn


def test_the_output_layer_latents_and_loss_are_float32_under_autocast():
    model = build_autoencoder(AE, seed=0).train()
    seen = {}
    model.head.register_forward_hook(lambda m, i, out: seen.update(h=i[0].detach().clone(), out=out))
    x1, x2, x3 = torch.rand(3, 2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = triplet_loss(model, x1, x2, x3, torch.tensor([0.5, 0.25]), residual=True)
        z = model.encode(x1)
    assert z[0].dtype == torch.bfloat16  # the encoder does run in bfloat16
    assert loss.dtype == torch.float32 and seen["h"].dtype == torch.float32 and seen["out"].dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(seen["out"], model.head(seen["h"]), rtol=0, atol=0)  # float32 all through


def test_the_latent_term_is_computed_in_float32_from_the_bfloat16_latents():
    """The relative latent term divides two small distances: taken in bfloat16 it is off by ~1e-3."""
    model = build_autoencoder(AE, seed=0).train()
    seen = []
    model.encoder[-1].register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    x1, x2, x3 = torch.rand(3, 2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    a = torch.tensor([0.5, 0.25])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, terms = triplet_loss(model, x1, x2, x3, a, latent_weight=0.01, latent_norm="endpoints")
    assert seen[0].dtype == torch.bfloat16
    z1, z3, z2 = seen[0].double().split(2)
    w = a.double().view(-1, 1, 1, 1)
    expected = ((w * z1 + (1 - w) * z3 - z2) ** 2).mean() / ((z1 - z3) ** 2).mean()
    assert terms["latent"] == pytest.approx(float(expected), rel=1e-5)


def test_a_non_finite_bfloat16_pass_is_redone_in_float32(amx, stacks, monkeypatch):
    """A non-finite bfloat16 pass at step 3: that step is redone in float32, as are the rest."""
    calls = []
    monkeypatch.setattr(train_module, "autocast", autocast_failing_at(3, train_module.autocast, calls))
    with pytest.warns(RuntimeWarning, match="bfloat16 gave a non-finite value") as caught:
        res = train(stacks, [0, 1, 2], LatentTrainConfig(steps=5, batch=2, val_every=1), AE, device="cpu")
    assert caught[0].filename == __file__  # the warning names the caller's line
    assert res.reason == "completed" and res.steps_done == 5 and len(calls) == 3
    assert all(np.isfinite(loss) for _, loss in res.history)
    assert res.precision == "bfloat16 for steps 1-2, then float32"


def test_the_amp_setting_is_checked_and_old_checkpoints_trained_in_float32():
    with pytest.raises(InputError, match="amp must be True or False"):
        LatentTrainConfig(amp="no")
    stored = config_to_dict(LatentTrainConfig(amp=True))
    assert train_config_from_dict(stored).amp is True
    del stored["amp"]  # a checkpoint from before mixed precision
    assert train_config_from_dict(stored).amp is False
