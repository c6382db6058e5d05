"""The ``blur synth`` and ``blur deblur`` commands: a trained autoencoder applied to a pair of planes,
blur levels synthesised between them or the in-focus plane extrapolated, written with what a rerun needs."""

from __future__ import annotations

from deconv3d import __version__
from deconv3d._paths import line_text, recorded_path
from deconv3d.errors import InputError, refuse_non_finite, warn

from ._common import check_output
from .blur_inputs import _read_pair
from .printing import hashed


def _load_model(args, shape, pixel):
    """The checkpoint, whether to apply it in residual form (unset: as trained) and the
    planes' pixel size (the model's where the planes record none; a different one is refused)."""
    import numpy as np

    from deconv3d.latent.checkpoint import load_checkpoint

    trained = load_checkpoint(args.model, device=args.device)
    trained.check_planes(shape)
    own = trained.pixel_size
    if pixel is not None and own is not None and not np.allclose(pixel, own, rtol=1e-3):
        raise InputError(f"the model was trained on planes of {own} µm pixels but these have {pixel} µm: resample "
                         "the planes, or train a model at this sampling (deconv3d blur train)")
    if pixel is None and own is not None:
        pixel = own
        warn(f"deconv3d: warning: the planes record no pixel size; assuming the model's {own} µm")
    residual = bool(trained.config.residual) if args.residual is None else args.residual
    return trained, residual, pixel


def _inputs_record(args, planes: dict, command: str) -> dict:
    """What a ``synth`` or ``deblur`` output records for a rerun, as ``deconvolve``'s do: each of the
    ``planes`` (``{role: path}``) and the model by absolute path and whole SHA-256 (``model_sha256``,
    the key and value ``deconvolve`` records; earlier versions kept its first 16 digits alone, as
    ``model_sha256_16``), the environment it ran in (the autoencoder has no FFT) and the time. Files larger
    than :data:`~deconv3d.cli.printing.HASH_PROGRESS_BYTES` are hashed with a bar named by ``command``."""
    from deconv3d._environment import run_environment, timestamp

    def sha256(path) -> str:  # (a bar for a large file, as deconvolve shows its input's)
        return hashed(path, f"blur {command}: hashing {line_text(path)}")

    record = {}
    for role, path in planes.items():
        record.update({role: recorded_path(path), f"{role}_sha256": sha256(path)})
    return {**record, "model": recorded_path(args.model), "model_sha256": sha256(args.model),
            "environment": run_environment(args.device, fft_shapes=None), "created": timestamp()}


_OUT_OF_RANGE = "(the model or the fractions are out of range): keep --range near [0, 1], or retrain the model"


MAX_LEVELS = 1000  # planes blur synth writes at most (1e11 asked for 745 GiB)
#: What the first axis of a ``blur synth`` stack holds (its ``first_axis`` property). It is written as ImageJ's
#: time axis (frames, TYX): written as slices without a spacing, Fiji and read_image took the levels for z
#: planes 1 µm apart (read_image gave voxel size (1, dy, dx)), so the stack could be deconvolved as a volume
#: without a word. Frames are an ordered series of planes that Fiji and tifffile show on a t slider, with
#: no depth; channels would be drawn in separate colours and are unordered.
FIRST_AXIS = ("blur level, not z or time: frame k lies at fractions[k] of the way from FAR (0) to NEAR (1); "
              "no frame interval is recorded")


def cmd_synth(args) -> int:
    import numpy as np

    from deconv3d._tiff_hyperstack import write_hyperstack
    from deconv3d.latent.ops import synthesize_blur

    far, near, voxel = _read_pair(args.far, args.near, "NEAR")
    if not 2 <= args.levels <= MAX_LEVELS:
        raise InputError(f"--levels must be from 2 (the planes at both ends of --range) to {MAX_LEVELS}, "
                         f"got {args.levels}")
    check_output(args.output, [args.far, args.near, args.model])
    trained, residual, voxel = _load_model(args, far.shape, voxel)
    fractions = np.linspace(args.range[0], args.range[1], args.levels)
    stack = synthesize_blur(trained.model, far, near, fractions, residual=residual)
    refuse_non_finite(stack, "synthesised stack", _OUT_OF_RANGE)
    meta = {"deconv3d": __version__, "method": "latent-synth", "residual": residual,
            "first_axis": FIRST_AXIS, "fractions": [round(float(a), 6) for a in fractions],
            **_inputs_record(args, {"far": args.far, "near": args.near}, "synth"),
            "pixel_size_um": None if voxel is None else list(voxel)}
    write_hyperstack(args.output, stack, "TYX", voxel_size=voxel, metadata=meta)  # levels as frames (FIRST_AXIS)
    print(f"wrote {line_text(args.output)}: {args.levels} blur levels (as time frames, not z) from fraction "
          f"{fractions[0]:g} to {fractions[-1]:g}")
    return 0


def cmd_deblur(args) -> int:
    from deconv3d.io import write_tiff
    from deconv3d.latent.ops import deblur

    far, plane, voxel = _read_pair(args.far, args.level, "LEVEL")
    check_output(args.output, [args.far, args.level, args.model])
    trained, residual, voxel = _load_model(args, far.shape, voxel)
    sharp = deblur(trained.model, far, plane, args.alpha, residual=residual)
    refuse_non_finite(sharp, "deblurred plane", _OUT_OF_RANGE)
    meta = {"deconv3d": __version__, "method": "latent-deblur", "alpha": args.alpha,
            "residual": residual, **_inputs_record(args, {"far": args.far, "level": args.level}, "deblur")}
    write_tiff(args.output, sharp, voxel_size=voxel, metadata=meta)
    print(f"wrote {line_text(args.output)}: in-focus plane extrapolated with alpha {args.alpha!r}")
    return 0
