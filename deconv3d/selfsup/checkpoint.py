"""Save and load trained self-supervised networks without executing code from the file.

A checkpoint is a plain ``torch.save`` dictionary of tensors, numbers, strings, lists
and dicts: the network weights, the network and training configurations, the image
standardisation, the PSF (its shape and fingerprint), the voxel size, for a residual
network the Richardson-Lucy settings of the estimate it corrects, and how the training went
(steps run, why it stopped, precision). Loading uses
``torch.load(weights_only=True)``, whose unpickler accepts only those types, so a
crafted file holding arbitrary objects (a pickle payload) is refused before anything in
it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch

from deconv3d._environment import saving_record
from deconv3d._tensors import psf_fingerprint, resolve_device
from deconv3d._torch_common import (atomic_torch_save, checked_run_record, empty_network, refuse_non_finite,
                                     safe_torch_load)
from deconv3d._voxel import checked_voxel_size
from deconv3d.errors import InputError, warning_naming_image
from deconv3d.psf import normalize_psf, validate_psf
from deconv3d.selfsup.config import Reference, TrainConfig, UNetConfig, from_dict, to_dict
from deconv3d.selfsup.unet import ResUNet

__all__ = ["TrainedModel", "save_checkpoint", "load_checkpoint", "training_record", "FORMAT"]

FORMAT = "deconv3d.selfsup/1"
#: What every version of the format starts with.
FAMILY = "deconv3d.selfsup/"


#: The run record a checkpoint keeps (``TrainedModel.run``): its keys and their types.
RUN_RECORD = {"train_steps": int, "stopped": str, "warm_start": int, "anchor": float, "precision": str}
#: What the run record gained later (the positivity asked for) and what save_checkpoint adds to it:
#: optional, for files written before.
SAVED_RECORD = {"positive": bool, "deconv3d_version": str, "saved": str, "training_image": dict, "environment": dict}


@dataclass
class TrainedModel:
    """A trained network with everything needed to apply it to a new image.

    ``model`` maps standardised images to standardised estimates: the prediction is
    ``model((x - mean) / std) * std + mean``; for a residual network (``reference`` set) it is
    ``reference.estimate(x) + model((x - mean) / std) * std``.
    """

    model: ResUNet
    unet: UNetConfig
    config: TrainConfig
    mean: float
    std: float
    psf: np.ndarray
    voxel_size: Optional[tuple[float, ...]] = None
    reference: Optional[Reference] = None
    # TrainResult.reference_cache: RL's estimate on the training image, reused by apply_model on that image
    reference_cache: Optional[tuple[str, np.ndarray]] = field(default=None, repr=False, compare=False)
    # how the training went: steps run, why it stopped, warm-start steps, anchor weight, precision and the
    # positivity asked for (None from checkpoints written before it was recorded)
    run: Optional[dict] = field(default=None, compare=False)

    @property
    def psf_fingerprint(self) -> str:
        return psf_fingerprint(self.psf)

    @classmethod
    def from_result(cls, result) -> "TrainedModel":
        """From a :class:`deconv3d.selfsup.train.TrainResult`."""
        run = {"train_steps": result.steps_done, "stopped": result.reason, "warm_start": result.warm_steps,
               "anchor": result.config.anchor_weight, "precision": result.precision}
        run.update({k: getattr(result, k) for k in ("positive", "environment") if getattr(result, k, None) is not None})
        return cls(result.model, result.unet, result.config, result.mean, result.std, result.psf,
                   result.voxel_size, result.reference, getattr(result, "reference_cache", None), run)

    def record(self) -> dict:
        """How the network was trained, for an output's provenance: :attr:`run` (when known), the
        full training and UNet configurations (seed included) and, for a residual network, the
        Richardson-Lucy reference it corrects.

        The UNet configuration is the one :func:`~deconv3d.selfsup.train` was given, which a rerun
        passes again: a residual network is built with a linear head whatever its ``positive``, which
        clamps the sum in training instead, so the network's own configuration said ``positive: false``
        for ``--positive`` and ``--no-positive`` alike, though their weights differ."""
        run, unet = dict(self.run or {}), to_dict(self.unet)
        if "positive" in run:  # (unknown for files written before it was recorded: the network's own)
            unet["positive"] = run.pop("positive")
        record = {**run, "training": to_dict(self.config), "unet": unet}
        if self.reference is not None:
            record["reference"] = to_dict(self.reference)
        return record

    def voxel_for(self, voxel_size, ndim: int, source, warnings: list | None = None) -> tuple | None:
        """``voxel_size``, or for an image that carries none (``source``, for the message) the
        model's own, when it has one per axis of the ``ndim``-D image; the warning that says so
        is appended to ``warnings`` (printed by the caller once the input is checked), else printed."""
        own = self.voxel_size
        if voxel_size is not None or own is None or len(own) != ndim:
            return voxel_size
        flag = "--voxel-size DZ DY DX" if ndim == 3 else "--voxel-size DY DX"  # (the axes the option takes)
        warning_naming_image(lambda image: f"deconv3d: warning: {image} carries no voxel size; assuming the model's "
                             f"{tuple(own)} µm (pass {flag} to check it)", source, warnings)
        return tuple(own)

    def check_compatible(self, image_ndim: int, psf=None, voxel_size: Sequence[float] | None = None) -> None:
        """Raise :class:`InputError` if the model was trained for another dimensionality, voxel size or PSF."""
        if image_ndim != self.unet.ndim:
            raise InputError(f"the model was trained on {self.unet.ndim}D images but the image is {image_ndim}D: "
                             f"train a model on this image (deconv3d train)")
        voxel_size = checked_voxel_size(voxel_size, self.unet.ndim)
        if voxel_size is not None and self.voxel_size is not None:
            if not np.allclose(voxel_size, self.voxel_size, rtol=1e-3):
                raise InputError(f"the model was trained at voxel size {self.voxel_size} µm but the image has "
                                 f"{tuple(voxel_size)} µm: resample the image or retrain")
        # (after the voxel size: a training PSF resampled to another voxel size read as "another PSF")
        if psf is not None:
            given = normalize_psf(validate_psf(psf))
            # the same PSF on another scale (a file x1000) normalises to values a float32 rounding apart
            same = given.shape == self.psf.shape and (psf_fingerprint(given) == self.psf_fingerprint or np.allclose(
                given, self.psf, rtol=1e-5, atol=1e-6 * float(np.max(self.psf))))
            if not same:
                raise InputError(f"the model was trained with another PSF (shape {self.psf.shape}, fingerprint "
                                 f"{self.psf_fingerprint}, got shape {given.shape}, fingerprint "
                                 f"{psf_fingerprint(given)}): pass the training PSF or retrain")


def _payload(trained: TrainedModel) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    return {
        "format": FORMAT,
        "state_dict": state,
        "unet": to_dict(trained.unet),
        "train": to_dict(trained.config),
        "mean": float(trained.mean),
        "std": float(trained.std),
        "psf": torch.from_numpy(np.ascontiguousarray(trained.psf, dtype=np.float32)),
        "psf_fingerprint": trained.psf_fingerprint,
        "voxel_size": None if trained.voxel_size is None else [float(v) for v in trained.voxel_size],
        "reference": None if trained.reference is None else to_dict(trained.reference),
        "run": trained.run,
    }


def save_checkpoint(trained, path, *, training_image: dict | None = None) -> None:
    """Write ``trained`` to ``path`` atomically.

    The file appears complete or not at all: it is written under a temporary name in the
    same folder and renamed.

    Parameters
    ----------
    trained : TrainedModel or TrainResult
        The network with what applying it needs: its configs, the PSF, the standardisation,
        the voxel size and, for a residual network, its Richardson-Lucy reference.
    path : str or os.PathLike
        The checkpoint file to write (``.ckpt`` by convention); an existing one is replaced.
    training_image : dict, optional
        What the network was trained on (``deconv3d train`` gives the file's path and SHA-256),
        kept with the run record beside the deconv3d version, the time of saving and the
        environment it trained in (device, threads, FFT backend, versions; recorded by the
        training, so a file written before it was recorded, saved again, still has none): an
        output made with the model records them in its provenance.

    Raises
    ------
    InputError
        For a training that diverged or stopped before its first step, or a network with NaN or
        infinite weights or buffers (nothing to save: loading would refuse the file as damaged), or
        a missing output folder.
    OSError
        Where the file cannot be written (a full disk, no permission), naming it.
    """
    if getattr(trained, "reason", None) == "non-finite loss":
        raise InputError("training diverged (non-finite loss), so there is no model to save: lower the learning "
                         "rate or check the PSF, and train again")
    if getattr(trained, "steps_done", None) == 0:  # cancelled in the reference search: no reference either
        raise InputError("the training was stopped before its first step, so there is no model to save: train "
                         "again and let it run")
    if not isinstance(trained, TrainedModel):
        trained = TrainedModel.from_result(trained)
    saved = saving_record(training_image=None if training_image is None else dict(training_image))
    if trained.run is not None:  # (a checkpoint from before the run record has none to extend: a partial
        trained = replace(trained, run={**trained.run, **saved})  # record would make the file unloadable)
    payload = _payload(trained)
    refuse_non_finite(payload["state_dict"])
    atomic_torch_save(payload, path)


def _read(path) -> dict:
    data = safe_torch_load(path, "deconv3d train")
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, str) and found.startswith(FAMILY) and found != FORMAT:  # a later (or earlier) layout
        from deconv3d import __version__

        raise InputError(f"{path} is a deconv3d checkpoint in format {found!r}, which deconv3d {__version__} does "
                         f"not read (it reads {FORMAT!r}): apply it with the deconv3d release that wrote it, or "
                         "retrain the model with this one")
    if found != FORMAT:
        raise InputError(f"{path} is not a deconv3d self-supervised checkpoint: use a model written by deconv3d train")
    return data


def load_checkpoint(path, device="cpu") -> TrainedModel:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save_checkpoint` (``deconv3d train``); read with
        ``torch.load(weights_only=True)``, so a crafted file cannot run code.
    device : {"cpu", "cuda", "auto"} or torch.device, optional
        Where the network is put, in eval mode.

    Returns
    -------
    TrainedModel

    Raises
    ------
    InputError
        For a missing file, one that is not a deconv3d network checkpoint or is damaged, or a
        device that is not there.
    """
    device = resolve_device(device)  # a missing GPU is not a damaged file
    data = _read(path)
    try:
        unet = from_dict(UNetConfig, data["unet"])
        # Checkpoints from before the Wiener-weighted data term, the warm start, the anchor, the TV target
        # and the residual form had none of them.
        config = from_dict(TrainConfig, {"precondition": 0.0, "warm_start": 0, "lambda_anchor": 0.0, "warm_tv": 0.0,
                                          "residual": False, **data["train"]})
        model = empty_network(lambda: ResUNet(unet))  # (weights loaded next: nothing drawn from the caller's RNG)
        model.load_state_dict(data["state_dict"])
        psf = data["psf"].numpy().astype(np.float32)
        voxel = data["voxel_size"]  # a sequence (one number, which the API takes as isotropic, is damage here)
        voxel = None if voxel is None else checked_voxel_size(tuple(voxel), unet.ndim)
        mean, std = float(data["mean"]), float(data["std"])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError("standardisation out of range")
        reference = data.get("reference")  # absent from files written before the residual form
        # (and its TV smoothing and differences from files written before they changed: they trained on the old ones)
        reference = None if reference is None else from_dict(
            Reference, {"tv_smoothing": "fixed", "tv_differences": "forward", **reference})
        if config.residual != (reference is not None):
            raise ValueError("a residual network without its reference, or the reverse")
        # absent from files written before it was recorded; what came later is kept where well formed
        run = checked_run_record(data.get("run"), RUN_RECORD, SAVED_RECORD)
        trained = TrainedModel(model.to(device).eval(), unet, config, mean, std, psf, voxel, reference, run=run)
        fingerprint = data["psf_fingerprint"]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, InputError) as exc:
        # InputError: a config field out of range (UNetConfig/TrainConfig validate themselves)
        raise InputError(f"{path} is a damaged deconv3d checkpoint ({type(exc).__name__}): retrain the model") from None
    refuse_non_finite(data["state_dict"], path)
    if trained.psf_fingerprint != fingerprint:
        raise InputError(f"{path} is a damaged deconv3d checkpoint (PSF fingerprint mismatch): retrain the model")
    return trained


def training_record(result) -> dict:
    """How a network trained within a run (a :class:`~deconv3d.selfsup.train.TrainResult`) was
    trained, for the output's provenance: :meth:`TrainedModel.record` (the steps run and why
    training stopped, the warm-start steps run and the anchor weight used, ``auto`` resolved, the
    precision, and the configurations)."""
    return TrainedModel.from_result(result).record()
