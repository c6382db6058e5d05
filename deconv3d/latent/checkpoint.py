"""Save and load trained linear-latent autoencoders without executing code from the file.

A checkpoint is a plain ``torch.save`` dictionary of tensors, numbers, strings, lists and
dicts: a format tag, the network weights, the network shape (``widths``, ``depth``,
``crop``, ``skip_interp``), the training recipe (``variant``, ``dist``, steps, ...), the
blur level values, the plane size of the training stacks and how the training went (steps
run, why it stopped, precision, the step whose weights it holds). Loading uses
``torch.load(weights_only=True)``, whose unpickler accepts only those types, so a crafted
file holding arbitrary objects (a pickle payload) is refused before anything in it runs.

References
----------
.. [1] P. Mazilu, H. Wang, S. Dummer, R. Veldhuis, C. Brune and N. Strisciuglio,
   "Defocus blur synthesis and deblurring via interpolation and extrapolation in latent
   space", CAIP 2023, arXiv:2307.15461.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from deconv3d._environment import saving_record
from deconv3d._tensors import resolve_device
from deconv3d._torch_common import (atomic_torch_save, checked_run_record, empty_network, refuse_non_finite,
                                     safe_torch_load)
from deconv3d.errors import WARNINGS_LOCK, InputError
from deconv3d.latent.data import check_levels
from deconv3d.latent.model import AEConfig, Autoencoder, config_from_dict, config_to_dict
from deconv3d.latent.config import LatentTrainConfig, config_to_dict as train_config_to_dict, train_config_from_dict

__all__ = ["FORMAT", "TrainedAutoencoder", "save_checkpoint", "load_checkpoint"]

FORMAT = "deconv3d.latent/1"


#: The run record a checkpoint keeps (``TrainedAutoencoder.run``): its keys and their types.
RUN_RECORD = {"train_steps": int, "stopped": str, "precision": str}
#: What the run record gained later: optional, for files written before.
LATER_RECORD = {"best_step": int, "environment": dict, "deconv3d_version": str, "saved": str, "training_stacks": list}


@dataclass
class TrainedAutoencoder:
    """A trained linear-latent autoencoder with what is needed to apply it.

    ``levels`` are the blur level values of the training stacks (larger = nearer focus), in
    float64 as given: float32 made levels such as 1e8, 1e8 + 1, ... (or 0, 1e-300, ...) equal, so a
    checkpoint trained on them was written and then refused as damaged by :func:`load_checkpoint`;
    ``plane_shape`` their ``(H, W)`` (``None`` when unknown) and ``best_score`` the best
    validation PSNR of the interpolated middle planes (``None`` without validation).
    """

    model: Autoencoder
    ae_config: AEConfig
    config: LatentTrainConfig
    levels: np.ndarray
    plane_shape: Optional[tuple[int, int]] = None
    best_score: Optional[float] = None
    pixel_size: Optional[tuple[float, float]] = None  # (y, x) µm of the training planes, when known
    # how the training went: steps run, why it stopped, precision and ``best_step``, the step whose averaged
    # weights the file holds (the best validated, else the last: a run of 400 steps can hold those of step 100),
    # the environment it trained in and, once saved, the stacks it trained on, the deconv3d version and the
    # time of saving (None from files written before it was recorded)
    run: Optional[dict] = None

    @classmethod
    def from_result(cls, result, plane_shape=None, pixel_size=None) -> "TrainedAutoencoder":
        """From a :class:`deconv3d.latent.train.LatentTrainResult`."""
        shape = None if plane_shape is None else tuple(int(n) for n in plane_shape)[-2:]
        pixel = None if pixel_size is None else tuple(float(v) for v in pixel_size)[-2:]
        validated = result.best_score is not None  # (else the last weights are kept)
        run = {"train_steps": result.steps_done, "stopped": result.reason, "precision": result.precision,
               "best_step": result.best_step if validated else result.steps_done}
        if getattr(result, "environment", None) is not None:
            run["environment"] = result.environment
        return cls(result.model, result.ae_config, result.config, np.asarray(result.levels, np.float64), shape,
                   result.best_score, pixel, run)

    def check_planes(self, shape) -> None:
        """Raise :class:`InputError` for planes smaller than the training crops (a model for another size).

        Larger planes are fine: the network is fully convolutional and
        :mod:`deconv3d.latent.ops` pads them to a multiple of its divisor. The hint names a
        crop that fits the planes together with the widths that crop needs (the model's own,
        or as many of them as the planes allow), so that ``deconv3d blur train`` takes both.
        """
        h, w = (int(n) for n in tuple(shape)[-2:])
        crop = self.ae_config.crop
        if min(h, w) >= crop:
            return
        widths = self.ae_config.widths[:min(h, w).bit_length() - 1]  # 2**len(widths) <= the planes' side
        fit = (min(h, w) >> len(widths)) << len(widths)  # a multiple of 2**len(widths)
        hint = (f"train one on these planes with --crop {fit} --widths {' '.join(map(str, widths))} "
                "(deconv3d blur train)" if widths else "planes need at least 2 pixels a side")
        raise InputError(f"the model was trained on {crop}x{crop} crops but the planes are {h}x{w}: "
                         f"it is a model for another size; {hint}")


def _payload(trained: TrainedAutoencoder) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    model = config_to_dict(trained.ae_config)
    model["depth"] = len(trained.ae_config.widths)
    return {
        "format": FORMAT,
        "state_dict": state,
        "model": model,
        "train": train_config_to_dict(trained.config),
        "levels": [float(v) for v in np.asarray(trained.levels).ravel()],
        "plane_shape": None if trained.plane_shape is None else [int(n) for n in trained.plane_shape],
        "best_score": None if trained.best_score is None else float(trained.best_score),
        "pixel_size": None if trained.pixel_size is None else _pixel_floats(trained.pixel_size),
        "run": trained.run,
    }


def save_checkpoint(trained, path, plane_shape=None, pixel_size=None, training_stacks: list | None = None) -> None:
    """Write ``trained`` (a :class:`TrainedAutoencoder` or a ``LatentTrainResult``) to ``path`` atomically.

    The file appears complete or not at all: it is written under a temporary name in the
    same folder and moved onto ``path`` with :func:`os.replace`. ``plane_shape`` and the
    planes' ``(y, x)`` ``pixel_size`` (µm) are used only with a ``LatentTrainResult``.
    ``training_stacks`` (``blur train`` gives each file's path and SHA-256) is kept with the run
    record beside the deconv3d version, the time of saving and the environment it trained in (the
    training's own, ``LatentTrainResult.environment``: a file written before it was recorded, saved
    again, still has none), as ``deconv3d train``'s checkpoints keep their training image.

    Examples
    --------
    >>> save_checkpoint(result, "ae.ckpt", plane_shape=(64, 64))  # doctest: +SKIP
    >>> load_checkpoint("ae.ckpt").ae_config.widths  # doctest: +SKIP
    (32, 64, 128, 256)

    A diverged training (``reason == "non-finite loss"``), a network with NaN or infinite
    weights or buffers, a ``pixel_size`` that is not two positive finite numbers and a
    ``training_stacks`` entry that is not made of strings, numbers, lists and dicts (a
    ``pathlib.Path``, say) are refused with :class:`InputError` before anything is written:
    :func:`load_checkpoint` would refuse the file anyway. So is a ``training_stacks`` that is not a
    list (one path as a string, say), given or in ``trained.run``, which :func:`load_checkpoint` would
    drop from the run record, and a run record whose other keys it would drop or refuse.
    """
    if getattr(trained, "reason", None) == "non-finite loss":
        raise InputError("training diverged (non-finite loss), so there is no model to save: lower the learning "
                         "rate or check the stacks")
    if training_stacks is not None and not isinstance(training_stacks, list):
        raise InputError(_NOT_A_LIST.format(type(training_stacks).__name__))
    if not isinstance(trained, TrainedAutoencoder):
        trained = TrainedAutoencoder.from_result(trained, plane_shape, pixel_size)
    if trained.run is not None:  # (a file from before the run record has none to extend)
        trained = replace(trained, run={**trained.run, **saving_record(training_stacks=training_stacks)})
        _refuse_unkept_run(trained.run)
    payload = _payload(trained)
    refuse_non_finite(payload["state_dict"])
    _refuse_unloadable(payload)
    atomic_torch_save(payload, path)


_NOT_A_LIST = ("training_stacks must be a list, got {}: give a list of the stacks' records, e.g. "
               "[{{'path': 'a.tif', 'sha256': ...}}], even for one stack")


def _refuse_unkept_run(run: dict) -> None:
    """Refuse a run record that :func:`load_checkpoint` would not read back whole (``checked_run_record``): a
    :data:`LATER_RECORD` key of another type was dropped on loading (``training_stacks`` given as one path in
    ``TrainedAutoencoder.run``, say: saved, and read back with no record of the stacks), a :data:`RUN_RECORD`
    key of another type, or missing, made the whole file refused as damaged. Each key is checked by the
    loading's own rule, as one the record must hold."""
    for key, kind in {**RUN_RECORD, **LATER_RECORD}.items():
        if key in LATER_RECORD and key not in run:
            continue
        try:
            checked_run_record(run, {key: kind})
            continue
        except TypeError:
            pass
        if key == "training_stacks":
            raise InputError(_NOT_A_LIST.format(type(run[key]).__name__))
        got = f"got {type(run[key]).__name__}" if key in run else "it is missing"
        raise InputError(f"the run record's {key} must be of type {kind.__name__}, {got}: give the value "
                         "the training recorded (LatentTrainResult), or leave the run record None")


def _pixel_problem(pixel) -> bool:
    """Whether a recorded ``(y, x)`` pixel size is unusable: not two positive finite numbers."""
    return len(pixel) != 2 or not all(np.isfinite(v) and v > 0 for v in pixel)


def _pixel_floats(pixel) -> list[float]:
    """A ``(y, x)`` pixel size to record, as floats; refused with :class:`InputError` unless two positive finite
    numbers (a single number or words raised TypeError or ValueError from the conversion)."""
    try:
        values = [] if isinstance(pixel, str) else [float(v) for v in pixel]  # ("12" is not (1, 2))
    except (TypeError, ValueError):
        values = []
    if _pixel_problem(values):
        raise InputError(f"pixel_size must be two positive, finite (y, x) sizes in µm, got {pixel!r}: give the "
                         "training planes' pixel size, or None where it is not known")
    return values


def _refuse_unloadable(payload: dict) -> None:
    """Refuse a payload :func:`load_checkpoint` would refuse for its records beside the weights: an object
    its safe unpickler does not load (the pixel size is checked as it is recorded, :func:`_pixel_floats`).
    Saved, such a checkpoint was written whole and then refused on every load (as damaged, or "not a safe
    deconv3d checkpoint"), the model lost with it."""
    records = {k: v for k, v in payload.items() if k != "state_dict"}  # (the tensors are safe)
    buffer = io.BytesIO()
    torch.save(records, buffer)
    buffer.seek(0)
    try:
        with WARNINGS_LOCK, warnings.catch_warnings():  # (as safe_torch_load reads it)
            warnings.simplefilter("ignore")
            torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the safe unpickler's refusal, whatever its type
        raise InputError("the checkpoint's record holds an object that load_checkpoint refuses to unpickle (such as "
                         "a pathlib.Path or a numpy number in training_stacks): give plain strings, numbers, lists "
                         "and dicts, e.g. str(path)") from None


def _read(path) -> dict:
    data = safe_torch_load(path, "deconv3d blur train")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not a deconv3d blur autoencoder checkpoint: use a model written by "
                         "deconv3d blur train")
    return data


def _build(path, data: dict, device) -> Autoencoder:
    ae = config_from_dict(data["model"])
    if int(data["model"].get("depth", len(ae.widths))) != len(ae.widths):
        raise InputError(f"{path} is a damaged deconv3d checkpoint (depth does not match widths): retrain the model")
    model = empty_network(lambda: Autoencoder(ae))  # (weights loaded below: nothing drawn from the caller's RNG)
    refuse_non_finite(data["state_dict"], path)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError:
        raise InputError(f"the weights in {path} do not fit its network shape (widths {list(ae.widths)}): "
                         "it holds a model for another size; retrain it with deconv3d blur train") from None
    return model.to(resolve_device(device)).eval()


def load_checkpoint(path, device="cpu") -> TrainedAutoencoder:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save_checkpoint` (``deconv3d blur train``).
    device : {"cpu", "cuda", "auto"} or torch.device, optional
        Where the network is put, in eval mode.

    Returns
    -------
    TrainedAutoencoder
        Its ``model`` records the form it was trained in (``model.residual``, from the
        training config), so the network alone is applied in that form too.

    Raises
    ------
    InputError
        For a missing file, a file that is not a deconv3d autoencoder checkpoint (including
        crafted pickles, refused without running them), or weights that do not fit the
        stored network shape.
    """
    device = resolve_device(device)  # a missing GPU is not a damaged file
    data = _read(path)
    try:
        model = _build(path, data, device)
        config = train_config_from_dict(data["train"])
        levels = check_levels(data["levels"])  # float64, as saved
        shape = data.get("plane_shape")
        best = data.get("best_score")
        pixel = data.get("pixel_size")  # absent from files written before it was recorded
        if pixel is not None:
            pixel = tuple(float(v) for v in pixel)
            if _pixel_problem(pixel):
                raise ValueError("pixel size out of range")
        run = checked_run_record(data.get("run"), RUN_RECORD, LATER_RECORD)  # absent from files written before it
        model.residual = bool(config.residual)  # the network alone knows its form too (deconv3d.latent.ops)
        return TrainedAutoencoder(model, model.config, config, levels,
                                  None if shape is None else tuple(int(n) for n in shape),
                                  None if best is None else float(best), pixel, run)
    except InputError as exc:  # a field out of range: name the file, not the training option
        if str(path) in str(exc):
            raise
        raise InputError(f"{path} is a damaged deconv3d checkpoint ({exc}): retrain the model") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path} is a damaged deconv3d checkpoint ({type(exc).__name__}): retrain the model") from None
