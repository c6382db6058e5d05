"""Out-of-core commands: ``deconvolve`` into OME-Zarr chunk by chunk, and the ``batch`` command's
arguments (its run is :mod:`deconv3d.cli.batch`): the options of out-of-core execution, whether a
``deconvolve`` goes chunk by chunk, the pipeline's settings from the options (and a batch's config),
and the progress bar and training of a chunked run."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from deconv3d._paths import OUTPUT_SUFFIXES, line_text
from deconv3d.errors import InputError

from ._common import check_output, refuse_ssl_options
from .arguments import (DEVICE_HELP, DEVICES, PSF_MODELS, SATURATION_HELP, SpatialSizes, add_common, add_optics,
                        iterations_value, non_negative_int, positive_float, positive_int, saturation_value)
from .printing import hashed, make_bar, megabyte_bar, print_warnings
from .selfsup import DEFAULT_STEPS

METHODS = ("rl", "rl-tv", "wiener", "ssl")
#: The microscope's parameters, which only a generated PSF (--psf-model) reads.
OPTICS = ("na", "wavelength", "ni", "ns", "depth")
BOUNDARIES = ("bertero", "zero", "reflect")


def add_chunk_options(p, defaults=True) -> None:
    """``--chunks``, ``--memory-limit`` and ``--pyramid-levels`` (deconvolve and batch)."""
    g = p.add_argument_group("out-of-core execution")
    g.add_argument("--chunks", type=positive_int, nargs=3, action=SpatialSizes, metavar=("Z", "Y", "X"),
                   help="core block shape: Z Y X, or Y X for a 2D image (which uses the last two of three); each "
                   "block also gets the halo that the method needs")
    g.add_argument("--memory-limit", metavar="SIZE", help="peak memory budget of one process, e.g. 4GB: picks "
                   "the largest blocks that fit (default: the whole volume unless --chunks; a run that would not "
                   "fit in the free memory goes block by block within 80%% of it, with a warning)")
    g.add_argument("--pyramid-levels", type=non_negative_int, default=0 if defaults else None, metavar="N",
                   help="extra 2x down-sampled levels in a .zarr output (default 0); halving y and x stops at "
                   "1 voxel, and a warning says how many were written where that is fewer")


def wants_pipeline(args) -> bool:
    """Whether ``deconvolve`` should run chunk by chunk (a .zarr input/output, --chunks or --memory-limit,
    or an image too large for the free memory: ``args.out_of_core``)."""
    suffixes = {Path(args.input).suffix.lower(), Path(args.output).suffix.lower()}
    return (".zarr" in suffixes or Path(args.input).is_dir() or args.chunks is not None
            or args.memory_limit is not None or getattr(args, "out_of_core", False))


def settings_from_args(args, base: dict | None = None):
    """Settings from a config dict ``base`` overridden by every option given on the command line."""
    from deconv3d.pipeline.batch import make_settings

    return make_settings(_setting_values(args, base), options=not hasattr(args, "input_dir"))  # deconvolve: its
    # options, not a batch's


def _setting_values(args, base: dict | None = None) -> dict:
    """The values :func:`settings_from_args` makes its settings of: for a batch, those given, by its
    config or its options."""
    values = dict(base or {})
    # A PSF source given here replaces the config's, whichever kind it is; a file also replaces the
    # microscope's parameters a generated PSF is made from (the config's wavelengths had still set
    # how many channels each file must have).
    if getattr(args, "psf", None) is not None:
        for name in ("psf_model", *OPTICS):
            values.pop(name, None)
    if getattr(args, "psf_model", None) is not None:
        values.pop("psf", None)
    plain = ("method", "psf", "psf_model", "na", "wavelength", "ni", "ns", "depth", "iterations", "tv_weight",
             "boundary", "saturation", "balance", "device", "model", "memory_limit", "pyramid_levels", "band_limit",
             "train_steps", "seed")
    if getattr(args, "steps", None) is not None:  # deconvolve's --train-steps
        values["train_steps"] = args.steps
    elif getattr(args, "method", None) == "ssl" and hasattr(args, "steps") and not args.model:
        values["train_steps"] = DEFAULT_STEPS  # deconvolve trains by default, as in memory
    for name in plain:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    for name in ("voxel_size", "chunks"):
        if getattr(args, name, None) is not None:
            values[name] = tuple(getattr(args, name))
    if getattr(args, "no_accelerate", False):  # deconvolve's flag
        values["accelerate"] = False
    for name in ("accelerate", "tta", "amp"):  # batch's --accelerate/--no-accelerate, --tta/--no-tta, --amp
        if isinstance(getattr(args, name, None), bool):
            values[name] = getattr(args, name)
    if getattr(args, "pattern", None):
        values["pattern"] = tuple(args.pattern)
    if getattr(args, "output_format", None):
        values["output_format"] = args.output_format
    return values


def run_option_warnings(args) -> list[str]:
    """The warning naming ``--workers`` (``workers`` where the config gave it) where the batch's scheduler is the
    address of a running one: its cluster has workers of its own, and the batch runs as many blocks at once as
    they have threads; the number of workers is read only for a cluster the batch starts (``threads``,
    ``processes``). Printed with the warnings about the settings, once the input has been checked."""
    if args.workers is None or args.scheduler in ("threads", "processes"):
        return []
    name = "--workers" if "workers" in getattr(args, "_given_options", ()) else "workers"
    return [f"deconv3d: warning: {name} sizes a cluster the batch starts (--scheduler threads or processes), and "
            f"the scheduler {args.scheduler} runs it on its own cluster's workers; ignored"]


def _bar(desc: str, unit: str, on_start=None):
    """A progress bar (:func:`~deconv3d.cli.printing.make_bar`) and its ``(done, total)`` callback;
    ``on_start()`` runs at the first report."""
    bar = make_bar(None, desc, unit)

    def callback(done, total):
        if bar.total is None:  # planned: the blocks start now (time and rate not counting a training first)
            if on_start is not None:
                bar.clear()
                on_start()
            bar.reset(total=total)
        bar.total = total
        bar.update(done - bar.n)

    return bar, callback


@contextlib.contextmanager
def writing_bar(output):
    """A ``writing(done, total)`` callback for :func:`~deconv3d.pipeline.files.deconvolve_file` (voxels of
    float32 copied into the TIFF ``output`` after the last block), shown as a bar in MB from its first
    report (:func:`~deconv3d.cli.printing.megabyte_bar`): the copy of a GB took about 8 s after the blocks'
    bar had reached its end, with no line."""
    with megabyte_bar(f"writing {line_text(output)}") as shown:
        yield lambda done, total: shown(4 * done, 4 * total)


def cmd_deconvolve_chunked(args, warnings=(), iterations_chooser=None) -> int:
    """``deconvolve`` on the chunked pipeline; ``warnings`` are printed once the run is planned, or before
    ``iterations_chooser`` (``--iterations auto``: :func:`~deconv3d.pipeline.files.deconvolve_file`'s) first
    chooses a count."""
    from deconv3d.pipeline.files import deconvolve_file

    if args.method == "ssl" and args.steps and args.model:
        raise InputError("give --model or --train-steps for --method ssl, not both")
    refuse_ssl_options(args)
    if not Path(args.input).exists():
        raise InputError(f"input not found: {args.input}: check the path")
    psfs, models = ([v] if not isinstance(v, list) else v for v in (args.psf, args.model))  # one per channel, or one
    check_output(args.output, [f for f in (args.input, *psfs, *models) if f], psfs=psfs, suffixes=OUTPUT_SUFFIXES,
                 scratch=True)
    if Path(args.output).suffix.lower() == ".zarr" and Path(args.output).is_file():
        raise InputError(f"output {args.output} is a file: give a new .zarr folder name")
    settings = settings_from_args(args, {"output_format": "zarr"})
    pending = list(warnings)
    bar, callback = _bar(args.method, "block", on_start=lambda: print_warnings(pending))
    start = time.perf_counter()
    with bar, writing_bar(args.output) as writing:
        # hashed where deconvolve_file would hash it, after its checks (an input they refuse is not hashed),
        # with a bar where it is large: a stack of 100 GB was a minute or more of silence before the first block
        info = deconvolve_file(args.input, args.output, settings, progress=callback, warnings=pending,
                               trainer=_trainer(args, pending),
                               iterations_chooser=_after_warnings(iterations_chooser, pending),
                               checksum=lambda path: hashed(path, "deconvolve: hashing the input"), writing=writing)
    for line in _clipped_fit_lines(settings.saturation, info):
        print(line)
    # the whole command's time, as in memory: a network trained first is not in info.seconds
    print(f"wrote {line_text(args.output)}: {args.method} in {info.blocks} block(s) of at most {info.largest_block} + halo "
          f"{info.halo} in {time.perf_counter() - start:.1f} s")
    return 0


def _clipped_fit_lines(saturation, info) -> list[str]:
    """What ``--saturation`` fitted as clipped, as an in-memory run prints it
    (:func:`~deconv3d._saturation.clipped_fit_line`), from what the run took from the volumes
    (:attr:`~deconv3d.pipeline.RunInfo.decided`: one value, or a list of one per time point and channel in
    C order) and their channels (:attr:`~deconv3d.pipeline.RunInfo.volume_channels`): one line, or one per
    channel of several. None where the run counted no voxels (block callables that did not count them:
    RichardsonLucyBlock's blocks count them where no pass over the volume does)."""
    from deconv3d._saturation import NONE, clipped_fit_line

    decided, channels = info.decided, info.volume_channels or ("",)
    if saturation == NONE:
        return []
    listed = any(isinstance(v, list) for v in decided.values())
    per_volume = [{k: v[i] for k, v in decided.items()} for i in range(len(channels))] if listed \
        else [decided] * len(channels)
    groups: dict = {}  # channel name: (levels, counts) of its time points
    for where, values in zip(channels, per_volume):
        levels, counts = groups.setdefault(where, ([], []))
        levels.append(values.get("saturation_level"))
        counts.append(values.get("saturated_voxels"))
    lines = [clipped_fit_line(saturation, levels, counts, where) for where, (levels, counts) in groups.items()]
    return [line for line in lines if line]


def _after_warnings(chooser, pending: list):
    """``chooser`` (None: None), printing the ``pending`` warnings before it first runs, as an in-memory run
    prints them before it chooses."""
    if chooser is None:
        return None

    def choose(*args, **kwargs):
        print_warnings(pending)
        return chooser(*args, **kwargs)

    return choose


def _trainer(args, pending: list):
    """``trainer(image, psf, voxel)`` for an ssl run that trains on the image first: the command's
    training options (``args``; for batch, the defaults of ``deconv3d train`` with its steps and
    seed), with a progress bar showing the loss; ``pending`` warnings are printed at the first step.
    ``trainer.configs(ndim)`` is the (TrainConfig, UNetConfig) it trains with, to plan the blocks first."""
    from .selfsup import configs, train_with_progress

    def trainer(image, psf, voxel):
        notes = list(pending)
        pending.clear()
        return train_with_progress(image, psf, args, voxel, notes=notes)

    trainer.configs = lambda ndim: configs(args, ndim)
    return trainer


#: ``deconv3d batch --help``'s description: what a batch writes, and how it names the files that fail.
BATCH_DESCRIPTION = (
    "Deconvolve every image of a folder, each into OUTPUT/NAME.zarr (or .tif), NAME its file name less its "
    "image suffix. As each file ends, a line '[N/TOTAL] STATUS FILE: reason' names it as the input folder given here "
    "joined with its path in that folder (IN/day2/a.tif), as its warnings on the terminal do (its reason, and "
    "its warnings in the report, say 'the image' of it); a file that failed is "
    "named so again, with its reason, in a 'deconv3d: failed: FILE: reason' line at the end, and the exit status "
    "is 3. OUTPUT/batch_report.json and batch_report.csv hold every file's row (its absolute path, status, output, "
    "reason and warnings). A failed file leaves no output, and a rerun tries it again.")


def register(sub) -> None:
    """Add the ``batch`` command to the ``deconv3d`` sub-parsers."""
    from .batch import cmd_batch  # (batch imports this module: no cycle at import time)

    p = sub.add_parser("batch", help="deconvolve every image of a folder (resumable; OME-Zarr outputs)",
                       argument_default=None, description=BATCH_DESCRIPTION)
    _add_batch_io(p)
    _add_psf_options(p)
    _add_method_options(p)
    _add_ssl_options(p)
    add_chunk_options(p, defaults=False)
    p.set_defaults(func=cmd_batch)
    add_common(p)


def _add_batch_io(p) -> None:
    """The input and output folders, the config file, the file patterns, the scheduler and the output format."""
    p.add_argument("input_dir", help="folder of .tif/.tiff/.zarr images")
    p.add_argument("-o", "--output", required=True, help="output folder (created when missing)")
    p.add_argument("--config", help="TOML file of settings (keys: long option names); options given here win; "
                   "psf and model paths in it are relative to the config file's folder (--psf: to the working "
                   "directory)")
    p.add_argument("--pattern", action="append", metavar="GLOB",
                   help="file pattern (repeatable; default *.tif, *.tiff, *.zarr)")
    p.add_argument("--scheduler", default=None, help="threads (default), processes (a LocalCluster on "
                   "127.0.0.1; needs the distributed extra) or tcp://HOST:PORT of a running dask scheduler")
    p.add_argument("--workers", type=positive_int, default=None, help="worker threads/processes (default 1 thread, "
                   "2 processes)")
    p.add_argument("--output-format", choices=("zarr", "tif"), help="output format (default zarr); tif "
                   "writes an image of several channels or time points as an ImageJ hyperstack")


def _add_psf_options(p) -> None:
    """Where the PSF comes from (a file per channel, or a model) and the optics of a generated one."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--psf", nargs="+", action="extend", metavar="PSF",
                     help="PSF file (.tif), or one per channel (--psf A.tif B.tif, or repeated)")
    src.add_argument("--psf-model", choices=PSF_MODELS, help="generate the PSF from microscope parameters")
    add_optics(p, required=False, per_channel=True)  # batch: one emission wavelength, or one per channel
    for action in p._actions:  # config values must win over the optics defaults
        if action.dest in ("ni", "ns", "depth"):
            action.default = None


def _add_method_options(p) -> None:
    """The method, its parameters, the voxel size and the device."""
    p.add_argument("--method", choices=METHODS, help="deconvolution method (default rl)")
    p.add_argument("--iterations", type=iterations_value, metavar="N|auto",
                   help="RL iterations (default 20); 'auto' chooses each file's count, one per channel, on a centred "
                        "crop of its first time point by predicting 5%% held-out voxels, as deconvolve's does, and "
                        "runs plain RL, without acceleration, for that many (a config's iterations = \"auto\" alike)")
    p.add_argument("--tv-weight", type=float,
                   help="TV weight for rl-tv (default 0.002; keep it at 0.001-0.01: above, the result gets smoother "
                   "than the object and darker; it must stay below 1/6 for isotropic 3D voxels)")
    p.add_argument("--accelerate", action=argparse.BooleanOptionalAction, default=None,
                   help="Biggs-Andrews acceleration (default on; --no-accelerate turns it off)")
    p.add_argument("--boundary", choices=BOUNDARIES, help="border handling: for rl and rl-tv bertero "
                   "(the default), zero or reflect; for wiener reflect (the default) or zero")
    p.add_argument("--saturation", type=saturation_value, metavar="LEVEL|auto|none", help=SATURATION_HELP)
    p.add_argument("--balance", type=positive_float, help="Wiener regularisation (default 1e-3)")
    p.add_argument("--voxel-size", type=positive_float, nargs=3, action=SpatialSizes, metavar=("DZ", "DY", "DX"),
                   help="voxel size in µm: DZ DY DX, or DY DX for 2D images (which use the last two of three)")
    p.add_argument("--device", choices=DEVICES, help=DEVICE_HELP)


def _add_ssl_options(p) -> None:
    """The options of --method ssl: its networks, or the training of one per image, and the network's inference."""
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="trained network (.ckpt) for --method ssl; repeated, one per channel "
                   "(--model A.ckpt --model B.ckpt)")
    p.add_argument("--train-steps", type=positive_int, metavar="N",
                   help="ssl without --model: train a network on each image first, N steps of the default recipe "
                   "('deconv3d train' sets the others)")
    p.add_argument("--seed", type=non_negative_int, help="random seed of that training (default 0)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="ssl: mixed precision of that training and of the network's inference: bfloat16 on CPUs with "
                        "AMX, float16 on CUDA (default on; --no-amp: float32)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="ssl: average over the 8 xy rotations/flips (default off)")
    p.add_argument("--band-limit", type=float, metavar="EPS",
                   help="ssl: damp frequencies the PSF does not pass, e.g. 0.01 on noisy stacks (default 0: off)")


