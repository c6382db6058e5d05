"""Small pieces shared by the two trainable models (selfsup and latent): mixed precision, weight
averaging and safe files (their stop rules are :mod:`deconv3d._training_stop`).

``atomic_torch_save`` writes a
checkpoint that appears complete or not at all; ``safe_torch_load`` reads one with
``torch.load(weights_only=True)``, whose unpickler accepts only tensors, numbers,
strings and containers, so a crafted file cannot run code, once the CRC-32 of each of the
zip archive's members has been checked (bytes of the weights overwritten loaded silently).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from pathlib import Path

import torch

from deconv3d._paths import create_temporary, publishing, refuse_write_protected, temporary_name
from deconv3d.errors import WARNINGS_LOCK, InputError


def grad_scaler(dtype):
    """A CUDA gradient scaler for float16 mixed precision (a no-op for any other ``dtype``, None included:
    bfloat16 has float32's exponent range, so its gradients do not underflow): ``torch.amp.GradScaler``
    from torch 2.3, ``torch.cuda.amp.GradScaler`` on torch 2.2, the oldest release pyproject allows."""
    if isinstance(dtype, bool):  # the old signature took a flag: refuse it rather than scale nothing
        raise TypeError("grad_scaler takes the autocast dtype (or None), not a bool")
    enabled = dtype == torch.float16
    scaler = getattr(torch.amp, "GradScaler", None)
    return scaler("cuda", enabled=enabled) if scaler is not None else torch.cuda.amp.GradScaler(enabled=enabled)


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, from Sapphire Rapids).

    On such a 2-core Xeon, bfloat16 autocast cut a step of bench_selfsup's training recipe from
    659 to 311 ms. Limited to ``avx512_bf16`` (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``), the
    network's step took 1.05x float32's time, and without bfloat16 instructions (``AVX512_CORE``,
    ``AVX2``) 2.3-2.7x: there autocast would only slow training down. False where torch cannot tell
    (its check is private; torch 2.2 lacks it), and where ``ONEDNN_MAX_CPU_ISA`` (or its old name
    ``DNNL_MAX_CPU_ISA``) keeps oneDNN from AMX: torch's check reads the CPU, not that limit.
    """
    # oneDNN reads ONEDNN_MAX_CPU_ISA before the old name, case-insensitively, and ignores a value it
    # does not know (then AMX stays in use)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if isa.upper() in _ISA_WITHOUT_AMX:
        return False
    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # a private helper: whatever it raises, take no AMX
        return False


#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` values that stop below AMX.
_ISA_WITHOUT_AMX = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                    "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_2_512")


def amp_dtype(requested: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of mixed precision, or None for float32.

    float16 on CUDA; bfloat16 on a CPU with AMX (:func:`cpu_has_amx`), in training and inference;
    None when not ``requested`` and everywhere else. On bench_selfsup's volumes (2 cores) the
    self-supervised network's CPU inference took 0.29-0.50x its float32 time (1.4-1.6 s against
    3.7-5.2 s at 44-64 x 128 x 128) at the same PSNR to 0.001 dB, its output within 7e-3 of the
    float32 one's peak.
    """
    if not requested:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device):
    """Autocast to ``dtype`` on ``device`` (from :func:`amp_dtype`); with None, a context that changes nothing."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``: a dtype as messages and records name it."""
    return str(dtype).replace("torch.", "")


def precision_name(requested: bool, device: torch.device) -> str:
    """The dtype mixed precision (``requested``) runs a network in on ``device``, as records name
    it: :func:`amp_dtype`'s, "float32" where that is None."""
    return dtype_name(amp_dtype(requested, device) or torch.float32)


AMP_OVERFLOW = ("mixed precision: {dtype} gave a non-finite value in the network's forward pass (as float16 does "
                "above 65504), so the run goes on in float32 (slower)")


def at_own_precision(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` outside autocast, at the precision of ``layer``'s weights: a network's output layer.

    Under mixed precision the output layer's result is the network's answer itself, which bfloat16
    rounds to 8 significant bits. A tiny self-supervised network regressed onto RL's estimate kept
    0.58 of the misfit with a bfloat16 head, 0.24 with a float32 one, 0.17 all in float32. A
    network converted to one dtype as a whole runs in that dtype; without autocast nothing changes.
    """
    own = next(layer.parameters()).dtype
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.to(own))


class MixedPrecision:
    """The precision of one training run: the autocast dtype (None: float32) and its gradient scaler.

    :meth:`step` redoes a step whose reduced-precision pass was not finite (float16 overflows above
    65504) in float32, and keeps float32 for the rest of the run, with one warning; if the float32
    redo is not finite either, the run diverged and the dtype is left as it was. :meth:`name` says
    what the network trained in, for the training record.
    """

    def __init__(self, dtype: torch.dtype | None):
        self.dtype, self.scaler = dtype, grad_scaler(dtype)
        self.fell_back = None  # (the autocast dtype, the step redone in float32)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimiser step through the gradient scaler."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def step(self, once, step: int, model: torch.nn.Module, stacklevel: int = 2) -> dict[str, float]:
        """``once()``, a training step of ``model`` returning its loss terms (``"total"`` among them)
        and taking its optimiser step only when that is finite, run at this precision; redone in
        float32 when its reduced-precision pass was not finite. ``step``: its 1-based number, for
        :meth:`name`; ``stacklevel``: the warning's as the caller would give it (2: the caller's
        caller). The failed pass's BatchNorm statistics are undone: its infinite activations
        made them infinite for good, and eval mode would have given NaN everywhere."""
        saved = None if self.dtype is None else [b.detach().clone() for b in model.buffers()]
        terms = once()
        if saved is None or math.isfinite(terms["total"]):
            return terms
        with torch.no_grad():
            for buffer, before in zip(model.buffers(), saved):
                buffer.copy_(before)
        dtype, self.dtype, self.scaler = self.dtype, None, grad_scaler(None)
        terms = once()
        if math.isfinite(terms["total"]):
            self.fell_back = (dtype, step)
            warnings.warn(AMP_OVERFLOW.format(dtype=dtype_name(dtype)), RuntimeWarning, stacklevel=stacklevel + 1)
        else:  # a real divergence, which ends the run: no step was taken in float32
            self.dtype = dtype
        return terms

    def name(self) -> str:
        """"float32", the autocast dtype ("bfloat16", "float16"), or e.g. "bfloat16 for steps 1-3,
        then float32" after a non-finite pass (the step redone)."""
        if self.fell_back is not None:
            dtype, step = self.fell_back
            if step == 1:
                return f"float32 (the first {dtype_name(dtype)} pass was not finite)"
            return f"{dtype_name(dtype)} for step{'s 1-' if step > 2 else ' '}{step - 1}, then float32"
        return dtype_name(self.dtype or torch.float32)


def refuse_non_finite(state: dict, path=None) -> None:
    """Refuse a network state dict with a value that is not a tensor or holds NaN or infinity: saving
    (``path`` None), there is no model to save (a file of one, written, was refused as damaged as it
    was loaded); loading from ``path``, the file is damaged (its NaN result was blamed on the image)."""
    if all(torch.is_tensor(t) and bool(torch.isfinite(t).all()) for t in state.values()):
        return
    if path is None:
        raise InputError("the network has NaN or infinite weights (its training diverged), so there is no model "
                         "to save: retrain with a lower learning rate")
    raise InputError(f"{path} is a damaged deconv3d checkpoint (non-finite weights): retrain the model")


def atomic_torch_save(payload: dict, path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it to ``path``.

    The file is created with the mode the umask gives (0644 under the usual 022), as the TIFF
    and zarr outputs are, so that colleagues on a shared server can read the model; a file it
    replaces keeps its own mode (a ``chmod 600`` model stays private), as they do. A SIGTERM or
    SIGHUP the command line handles during the rename is raised after it, its exception carrying
    ``published`` (:func:`~deconv3d._paths.publishing`).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory not found: {parent}: create it first or choose another output path")
    if path.is_dir():  # (os.replace's IsADirectoryError named the hidden temporary file)
        raise InputError(f"{path} is a folder: give a file name for the checkpoint, e.g. {path / 'model.ckpt'}")
    refuse_write_protected(path)
    import io

    # Serialised in memory first (a model is some MB): torch.save into a file that cannot be
    # written (a full disk) raised RuntimeError ("unexpected pos"), an internal error (exit 1);
    # writing the bytes raises OSError, which the command line reports as a full disk.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = temporary_name(path)
    try:
        try:
            # (made with its mode, before the bytes: a private model is never readable by others meanwhile)
            with open(create_temporary(path, tmp), "wb") as fh:
                fh.write(buffer.getbuffer())
        except OSError as exc:  # named: a failed write's error names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        with publishing(path):  # (a SIGTERM just after it: "no output was written", the new file in place)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_seeded(factory, seed: int) -> torch.nn.Module:
    """``factory()``, a network, initialised as torch initialises it after ``torch.manual_seed(seed)``
    (the same weights, bit for bit), from a generator of its own: torch's process-wide RNG is
    neither read nor changed.

    It used to seed and restore the global RNG around the build (``fork_rng``). Another thread
    drawing from it meanwhile (a user's torch code, another plugin) changed the seeded weights (up
    to 0.49) and had its own stream reseeded and rewound (43 values repeated): review of threaded
    use. The network is now built on the meta device, where its default initialisation draws
    nothing, then given real memory and initialised: convolutions and linear layers as their
    ``reset_parameters`` do, norm layers by theirs (no draws), other buffers at zero.
    """
    nn = torch.nn
    model = empty_network(factory)
    generator = torch.Generator().manual_seed(int(seed))
    done = set()
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            # the bounds of torch's kaiming_uniform_(a=sqrt(5)) and bias init, computed as torch does
            # (bit for bit); Tensor.uniform_ takes the generator on every torch pyproject allows
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = math.sqrt(3.0) * (nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in))
            with torch.no_grad():
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    module.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            module.reset_parameters()  # ones, zeros and the running statistics: nothing drawn
            done.update(id(b) for b in module.buffers(recurse=False))
        else:
            continue
        done.update(id(p) for p in module.parameters(recurse=False))
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"build_seeded does not know how to initialise {missed[:3]}")
    for buffer in model.buffers():
        if id(buffer) not in done:
            buffer.zero_()
    return model


def empty_network(factory) -> torch.nn.Module:
    """``factory()`` on the CPU with uninitialised memory and nothing drawn from torch's RNG (built
    on the meta device): for weights loaded next, or set by :func:`build_seeded`."""
    with torch.device("meta"):
        model = factory()
    return model.to_empty(device="cpu")


def safe_torch_load(path, producer: str):
    """Load ``path`` without executing code from it; ``producer`` names the command that writes such files."""
    from deconv3d._paths import special_file_problem

    path = Path(path)
    problem = special_file_problem(path, "model")  # (a named pipe "did not exist")
    if problem is not None:
        raise InputError(problem)
    if path.is_dir():
        raise InputError(f"model {path} is a folder, not a checkpoint file: give the .ckpt file written by {producer}")
    if not path.is_file():
        raise InputError(f"model file {path} does not exist: give the path of a checkpoint written by {producer}")
    try:
        if not _fails_its_crc(path):
            with WARNINGS_LOCK, warnings.catch_warnings():  # (its save and restore of the filters is process-wide)
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler refuses any object that is not a tensor, number, string or container
        if not _truncated(exc):
            raise InputError(f"{path} is not a safe deconv3d checkpoint (it holds objects that could run code, or is "
                             f"not a checkpoint at all): use a model written by {producer}") from None
    raise InputError(f"{path} is truncated or damaged (it cannot be read to its end): copy it again, or "
                     f"write it again with {producer}")


def _fails_its_crc(path: Path) -> bool:
    """Whether ``path`` is a zip archive (torch's format) one of whose members no longer matches its
    CRC-32: bytes of the weights overwritten on a disk or in a copy, which ``torch.load`` does not
    check (the network loaded with the damaged weights, and changed the result). Reads the file once."""
    import zipfile

    if not zipfile.is_zipfile(path):  # (a legacy pickle; a zip cut short is torch.load's to find)
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, EOFError):  # a local header that no longer is one
        return True


def _truncated(exc: Exception) -> bool:
    """Whether ``torch.load`` failed reading the file, not unpickling it: its zip archive cut short
    or damaged (a copy stopped midway said "not a safe checkpoint ... that could run code"). An
    empty file ends at once (EOFError); a cut zip has no central directory (miniz's RuntimeError)
    or a record past the end (EINVAL; EIO: a read error of the disk)."""
    import errno

    return (isinstance(exc, EOFError) or (isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.EIO))
            or (isinstance(exc, RuntimeError) and "zip archive" in str(exc)))


def checked_run_record(record, kinds: dict[str, type], optional: dict[str, type] | None = None) -> dict | None:
    """A checkpoint's record of its training run, checked: None when the file has none (written
    before it was recorded), else its ``kinds`` keys, each of that type (``float`` takes a finite
    number), and those of the ``optional`` keys it holds in their type (keys recorded later, which
    files written before lack); keys of a later version are dropped. Anything else raises TypeError
    (a damaged file)."""
    if record is None:
        return None
    if not isinstance(record, dict) or not set(kinds) <= set(record):
        raise TypeError("run record")
    for key, kind in kinds.items():
        value = record[key]
        fits = isinstance(value, (int, float)) and math.isfinite(value) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) or not fits:
            raise TypeError(f"run record: {key}")
    later = {k: record[k] for k, kind in (optional or {}).items()
             if isinstance(record.get(k), kind) and (kind is bool or not isinstance(record[k], bool))}
    return {**{key: record[key] for key in kinds}, **later}


class WeightAverage:
    """Exponential moving average of a network's weights (Polyak & Juditsky 1992, SIAM J. Control
    Optim. 30(4):838-855) with warm-up: update ``t`` moves the average ``1 - min(decay, (1 + t) / (10 + t))``
    of the way to the live network, so that the first steps do not dominate.

    ``model`` holds the average. With ``buffers`` the floating buffers (BatchNorm statistics) are
    averaged too and integer ones copied; without, they stay the live network's own, which already
    are running averages, and :meth:`copy_to` writes only the parameters.
    """

    def __init__(self, model: torch.nn.Module, decay: float, buffers: bool = False):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates, self.buffers = float(decay), 0, buffers

    def _pairs(self, model: torch.nn.Module):
        yield from zip(self.model.parameters(), model.parameters())
        if self.buffers:
            yield from zip(self.model.buffers(), model.buffers())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        keep = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, live in self._pairs(model):
            if avg.dtype.is_floating_point:
                avg.mul_(keep).add_(live.detach(), alpha=1 - keep)
            else:
                avg.copy_(live)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averages into ``model``."""
        for avg, live in self._pairs(model):
            live.copy_(avg)
