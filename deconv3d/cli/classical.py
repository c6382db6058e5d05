"""Commands of the classical path: ``psf``, ``psf distill``, ``deconvolve`` and ``demo``.

``deconvolve`` of one image read whole runs in :mod:`~deconv3d.cli.in_memory`, a chunked one in
:mod:`~deconv3d.cli.pipeline` (which of the two: :mod:`~deconv3d.cli.memory_estimate`); ``--iterations auto``'s
chooser is :mod:`~deconv3d.cli.iteration_choice`'s."""

from __future__ import annotations

import sys
from pathlib import Path

from deconv3d import __version__
from deconv3d._paths import line_text
from deconv3d.errors import InputError, warn

from . import pipeline, selfsup
from ._common import check_output, voxel_size_of
from .arguments import (DEVICE_HELP, DEVICES, PSF_MODELS, SATURATION_HELP, SpatialSizes, add_common, add_optics,
                        iterations_value, positive_float, positive_int, saturation_value, spatial_sizes)
from .in_memory import _deconvolve_in_memory
from .iteration_choice import _choose_iterations
from .memory_estimate import _go_out_of_core_if_needed
from .printing import print_warnings

METHODS = ("rl", "rl-tv", "wiener", "ssl")
BOUNDARIES = ("bertero", "zero", "reflect")


def register(sub) -> None:
    """Add this module's commands to the ``deconv3d`` sub-parsers."""
    _psf_parser(sub)
    _distill_parser(sub)
    _deconvolve_parser(sub)
    demo = sub.add_parser("demo", help="synthesise a phantom, deconvolve it, write figures and a table")
    demo.add_argument("-o", "--output", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    add_common(demo)
    demo.set_defaults(func=cmd_demo)


def _psf_parser(sub) -> None:
    p = sub.add_parser("psf", help="generate a PSF from microscope parameters ('psf distill' for beads)")
    p.add_argument("-o", "--output", required=True, help="output PSF file (.tif)")
    p.add_argument("--model", choices=PSF_MODELS, default="vectorial", help="PSF model (default vectorial)")
    p.add_argument("--shape", type=positive_int, nargs=3, action=SpatialSizes, required=True, metavar=("Z", "Y", "X"),
                   help="voxels per axis, wide enough to hold the defocus light, e.g. a z range a few times "
                        "the stack's depth of field and some micrometres laterally (31 63 63 at 0.2/0.1 µm); "
                        "Y X for a 2D image's PSF, the plane of best focus (with --voxel-size DY DX)")
    p.add_argument("--voxel-size", type=positive_float, nargs=3, action=SpatialSizes, required=True,
                   metavar=("DZ", "DY", "DX"), help="voxel size in µm: DZ DY DX, or DY DX for a 2D PSF")
    add_optics(p, required=True)
    p.set_defaults(func=cmd_psf)
    add_common(p)


def _distill_parser(sub) -> None:
    p = sub.add_parser("psf-distill", prog="deconv3d psf distill",
                       help="average isolated beads into a PSF (also: 'psf distill')")
    p.add_argument("beads", help="TIFF stack of sub-resolution beads")
    p.add_argument("-o", "--output", required=True, help="output PSF file (.tif)")
    p.add_argument("--size", type=positive_int, nargs=3, action=SpatialSizes, metavar=("Z", "Y", "X"),
                   help="PSF box size: Z Y X, or Y X for a 2D bead image (which uses the last two of three) "
                   "(default: 1.5 FWHM each side; an even size is increased by one, so the bead sits on the centre voxel); "
                   "beads with a neighbour within one box width are not used")
    p.add_argument("--threshold", type=float, default=None,
                   help="bead detection level in image units (default: the background plus the larger of "
                   "10 noise SDs and 20%% of the brightest unsaturated peak)")
    p.add_argument("--voxel-size", type=positive_float, nargs=3, action=SpatialSizes, metavar=("DZ", "DY", "DX"),
                   help="voxel size in µm written with the PSF (overrides the file's metadata): DZ DY DX, or DY DX "
                   "for a 2D bead image")
    p.set_defaults(func=cmd_distill)
    add_common(p)


def _deconvolve_parser(sub) -> None:
    p = sub.add_parser("deconvolve", help="deconvolve an image with a known or generated PSF")
    p.add_argument("input", help="input image (.tif/.tiff, 2D or 3D, or a hyperstack of channels and/or time points; "
                   "or an OME-Zarr .zarr, read chunk by chunk)")
    p.add_argument("-o", "--output", required=True, help="output image: .tif/.tiff (float32 with voxel size; an "
                   "ImageJ hyperstack for several channels or time points) or .zarr (OME-Zarr v0.5 with provenance, "
                   "written chunk by chunk)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--psf", nargs="+", action="extend", metavar="PSF",
                     help="PSF file (.tif), or one per channel of a multi-channel input ("
                          "--psf A.tif B.tif, or repeated: --psf A.tif --psf B.tif); resampled to the image's voxel "
                          "size when they differ (required, except for --method ssl with --model)")
    src.add_argument("--psf-model", choices=PSF_MODELS, help="generate the PSF from microscope parameters")
    add_optics(p, required=False, per_channel=True)  # one emission wavelength, or one per channel (as batch)
    _add_method_options(p)
    p.add_argument("--voxel-size", type=positive_float, nargs=3, action=SpatialSizes, metavar=("DZ", "DY", "DX"),
                   help="voxel size in µm (overrides the file's metadata): DZ DY DX, or DY DX for a 2D image (which "
                   "uses the last two of three)")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    selfsup.add_deconvolve_options(p)
    pipeline.add_chunk_options(p)
    p.set_defaults(func=cmd_deconvolve)
    add_common(p)
    _DEFAULTS.update({dest: p.get_default(dest) for dest in set(_METHOD_OPTIONS) | set(_OPTICS)})


def _add_method_options(p) -> None:
    """``deconvolve``'s --method and the options of the classical methods."""
    p.add_argument("--method", choices=METHODS, default="rl", help="deconvolution method (default rl)")
    p.add_argument("--iterations", type=iterations_value, default=20, metavar="N|auto",
                   help="RL iterations (default 20); 'auto' chooses the count from the image itself by predicting "
                        "5%% held-out voxels (deconv3d.classical.choose_iterations) and runs plain RL, "
                        "without acceleration, for that many (a chunked run: one count per channel, chosen on a "
                        "centred crop of its first time point)")
    p.add_argument("--tv-weight", type=float, default=0.002,
                   help="TV weight for rl-tv (default 0.002; keep it at 0.001-0.01: above, the result gets smoother "
                   "than the object and darker; it must stay below 1/6 for isotropic 3D voxels)")
    p.add_argument("--no-accelerate", action="store_true", help="turn off Biggs-Andrews acceleration")
    p.add_argument("--boundary", choices=BOUNDARIES, help="border handling: for rl and rl-tv bertero (the default: no "
                   "ringing at the borders), zero or reflect; for wiener reflect (the default) or zero")
    p.add_argument("--saturation", type=saturation_value, default="none", metavar="LEVEL|auto|none",
                   help=SATURATION_HELP)
    p.add_argument("--balance", type=positive_float, default=1e-3, help="Wiener regularisation (default 1e-3)")


# Options of `deconvolve` that only some methods read (beyond the training options, ssl's).
_METHOD_OPTIONS = {"iterations": ("rl", "rl-tv"), "no_accelerate": ("rl", "rl-tv"),
                   "boundary": ("rl", "rl-tv", "wiener"),
                   "saturation": ("rl", "rl-tv"), "tv_weight": ("rl-tv",), "balance": ("wiener",), "tta": ("ssl",),
                   "band_limit": ("ssl",)}
_OPTICS = pipeline.OPTICS
_DEFAULTS: dict = {}  # their defaults, read from the parser when it is built
#: Why ns is ignored with the gaussian model (psfmodels' gaussian reads NA, wavelength and ni only).
_GAUSSIAN_NS = "not used by the gaussian PSF model, which has no sample refractive index"
_FLAGS = {"steps": "--train-steps", "residual": "--residual/--no-residual", "amp": "--amp/--no-amp"}


def _flag(dest: str) -> str:
    return _FLAGS.get(dest, "--" + dest.replace("_", "-"))


def _unused_option_warnings(args) -> list[str]:
    """The warnings naming the given options the chosen method (or a trained --model, or the training
    recipe chosen: :func:`selfsup.recipe_ignores`) ignores; for ``deconvolve`` and ``train``.

    Warnings, not errors: scripts that loop over methods with one set of options keep working.
    They are printed once the input has been checked (``printing.print_warnings``), so that a run
    refused for bad input says only its one-line error.
    """
    lines: list[str] = []
    training = selfsup.training_defaults()
    defaults = {**_DEFAULTS, **{d: v for d, v in training.items() if d != "steps"}}
    explicit = getattr(args, "_given_options", None)  # (the command line's Parser records the options given)
    names = getattr(args, "_flag_names", {})  # (a batch's, where they differ)

    def given(dests):  # given, at the default value too; (an option missing from the parser counts as not given)
        if explicit is not None:
            return [names.get(d) or _flag(d) for d in dests if d in defaults and d in explicit]
        return [_flag(d) for d in dests if d in defaults and getattr(args, d, defaults[d]) != defaults[d]]

    def warn(flags, one, many, why):
        names = ", ".join(flags[:-1]) + " and " + flags[-1] if len(flags) > 1 else flags[0]
        lines.append(f"deconv3d: warning: {names} {one if len(flags) == 1 else many} {why}; ignored")

    method, model = getattr(args, "method", "ssl"), getattr(args, "model", None)  # (train's: ssl, training)
    unused = given(d for d, methods in _METHOD_OPTIONS.items() if method not in methods)
    if method != "ssl":
        unused += given(d for d in training if d != "steps")
    if unused:
        warn(unused, "does", "do", f"not apply to --method {method}")
    if method == "ssl" and model and (unused := given(d for d in training if d not in ("steps", "amp"))):
        warn(unused, "sets", "set", "up training, which --model skips (train with --train-steps N instead)")
    if method == "ssl" and not model and given(selfsup.RECIPE_OPTIONS):  # one line each: the recipe does not read them
        for dest, verb, why in selfsup.recipe_ignores(args):
            if unused := given([dest]):
                warn(unused, verb, verb, why)
    if getattr(args, "psf_model", None) is None and (unused := given(_OPTICS)):
        warn(unused, "describes", "describe", "the microscope for --psf-model, and no --psf-model is given")
    if getattr(args, "psf_model", None) == "gaussian" and (unused := given(["ns"])):
        warn(unused, "is", "is", _GAUSSIAN_NS)
    if getattr(args, "pyramid_levels", 0) and Path(args.output).suffix.lower() != ".zarr":
        warn(["--pyramid-levels"], "adds", "add", "down-sampled levels to a .zarr output, and the output is not one")
    return lines


def cmd_psf(args) -> int:
    from deconv3d.io import write_tiff
    from deconv3d.psf import generate_psf
    from deconv3d.psf.generate import GridTooLarge

    check_output(args.output, [])
    if len(args.shape) != len(args.voxel_size):
        raise InputError(f"--shape gives {len(args.shape)} values and --voxel-size {len(args.voxel_size)}: give "
                         "three of each (Z Y X) for a 3D PSF, or two (Y X) for a 2D one")
    if min(args.shape[-2:]) < 2:  # a reader drops axes of length 1: 9 1 15 would read back as a 2D PSF, 1 15 as 1D
        raise InputError(f"--shape {' '.join(map(str, args.shape))} has a Y or X side of 1, which deconvolve "
                         "cannot use as a PSF: give Y and X of at least 2, wide enough to hold the PSF (e.g. 63 63)")
    if args.model == "gaussian" and "ns" in getattr(args, "_given_options", ()):
        print_warnings([f"deconv3d: warning: --ns is {_GAUSSIAN_NS}; ignored"])
    try:
        psf = generate_psf(args.model, tuple(args.shape), tuple(args.voxel_size), args.na, args.wavelength,
                           ni=args.ni, ns=args.ns, depth=args.depth)
    except GridTooLarge as exc:  # the shape is --shape
        raise GridTooLarge(exc.problem, "--shape") from None
    meta = {"deconv3d": __version__, "psf_model": args.model, "na": args.na, "wavelength_um": args.wavelength,
            "ni": args.ni, "ns": args.ns, "depth_um": args.depth}
    write_tiff(args.output, psf, voxel_size=tuple(args.voxel_size), metadata=meta)
    shape, voxel, note = psf.shape, tuple(args.voxel_size), ""
    if len(shape) == 3 and shape[0] == 1:  # read_image drops an axis of one: what the file reads back as
        shape, voxel, note = shape[1:], voxel[1:], " (one plane: it reads back as a 2D PSF, for 2D images)"
    print(f"wrote {line_text(args.output)}: {args.model} PSF {shape}, voxel {voxel} µm{note}")
    return 0


def cmd_distill(args) -> int:
    from deconv3d.io import read_image, write_tiff
    from deconv3d.psf import distill_psf

    beads = read_image(args.beads)
    check_output(args.output, [args.beads])
    notes: list[str] = []
    voxel = voxel_size_of(args, beads, notes)
    if voxel is None:  # the PSF then counts as sampled like each image it deconvolves, whatever that is
        from deconv3d.io import _sizes

        partial = tuple(beads.partial_voxel or (None,) * beads.data.ndim)  # (2D beads: DY DX)
        warn(f"deconv3d: warning: {args.beads} records no full voxel size, so the PSF is written without one and "
             f"taken as sampled like the image it deconvolves: pass --voxel-size {_sizes(partial)}", notes)
    size = spatial_sizes(args.size, beads.data.ndim, "--size", args.beads)
    psf = distill_psf(beads.data, size=size, threshold=args.threshold)
    print_warnings(notes)
    write_tiff(args.output, psf, voxel_size=voxel, metadata={"deconv3d": __version__, "psf": "distilled"})
    print(f"wrote {line_text(args.output)}: PSF {psf.shape} distilled from {line_text(args.beads)}")
    return 0


def cmd_deconvolve(args) -> int:
    _refuse_saturation_misuse(args)
    _one_per_channel(args)
    warnings = _unused_option_warnings(args)
    _method_boundary(args)
    _check_formats(args)
    if not pipeline.wants_pipeline(args):
        _go_out_of_core_if_needed(args)
    if pipeline.wants_pipeline(args):
        return _deconvolve_chunked(args, warnings)
    return _deconvolve_in_memory(args, warnings)


def _refuse_saturation_misuse(args) -> None:
    """Refuse ``--saturation`` with a method that reads every voxel, before anything is read."""
    from deconv3d._saturation import method_problem

    problem = method_problem(args.method, args.saturation)
    if problem:
        raise InputError(problem)


def _method_boundary(args) -> None:
    """``--boundary`` as the method takes it: not given, bertero for rl and rl-tv (and ssl, which ignores it)
    and reflect for Wiener; refused for Wiener where it is RL's bertero, which Wiener does not have."""
    if args.method == "wiener":
        from deconv3d.classical.wiener import RUN_BOUNDARIES, check_run_boundary

        if args.boundary is None:
            args.boundary = RUN_BOUNDARIES[0]
        check_run_boundary(args.boundary)
    elif args.boundary is None:
        args.boundary = "bertero"


def _check_formats(args) -> None:
    """Refuse an output named as a folder, and an input or output that is not .tif, .tiff or .zarr."""
    from deconv3d._paths import _refuse_folder

    _refuse_folder(Path(args.output))  # named as a folder, not as "unsupported output format ''"
    for role, path in (("input", args.input), ("output", args.output)):
        if Path(path).suffix.lower() not in pipeline.OUTPUT_SUFFIXES and not (role == "input" and Path(path).is_dir()):
            raise InputError(f"unsupported {role} format '{Path(path).suffix}' for {path}: use .tif, .tiff or .zarr")


def _deconvolve_chunked(args, warnings: list) -> int:
    """The chunked run; with ``--iterations auto``, rl and rl-tv choose each channel's count on a crop
    (:func:`deconv3d.pipeline.auto_iterations.chosen_settings`), and the other methods ignore it (warned about,
    as in memory)."""
    chooser = None
    if args.iterations == "auto":
        chooser = _choose_iterations if args.method in _METHOD_OPTIONS["iterations"] else None
        args.iterations = _DEFAULTS["iterations"]  # (the settings' count: each channel's chosen replaces it)
    return pipeline.cmd_deconvolve_chunked(args, warnings, iterations_chooser=chooser)


def _one_per_channel(args) -> None:
    """``--psf``, ``--wavelength`` and ``--model`` as one value, or kept as lists of one per channel, which the
    chunked path takes. Wavelengths are one per channel
    only for a generated PSF: beside --psf they are ignored (with a warning)."""
    several = [name for name in ("psf", "wavelength", "model") if isinstance(getattr(args, name, None), list)
               and len(getattr(args, name)) > 1 and (name != "wavelength" or args.psf_model is not None)]
    for name in ("psf", "wavelength", "model"):
        value = getattr(args, name)
        if isinstance(value, list) and len(value) == 1:
            setattr(args, name, value[0])
    if several and Path(args.output).suffix.lower() != ".zarr":
        from deconv3d.omezarr import open_lazy
        from deconv3d.pipeline.files import check_channel_count

        # the input's count, before the in-memory run (one channel) refuses it otherwise; several channels run
        # chunked (_go_out_of_core_if_needed), each with its own, into a TIFF hyperstack
        check_channel_count(open_lazy(args.input, omero_warning=False), len(getattr(args, several[0])), several[0])


def cmd_demo(args) -> int:
    from deconv3d.demo import run_demo

    rows = run_demo(Path(args.output), device=args.device,
                    progress=lambda stage: print(f"deconv3d demo: {stage} ...", file=sys.stderr, flush=True))
    print(f"deconv3d demo: outputs in {args.output}/")
    print(f"| {'method':<22} | {'PSNR (dB)':>9} | {'SSIM':>6} | {'time (s)':>8} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 8}|{'-' * 10}|")
    for row in rows:
        ssim = "" if row["ssim"] != row["ssim"] else f"{row['ssim']:.3f}"  # NaN: not applicable
        note = f" {row['note']}" if row.get("note") else ""
        print(f"| {row['method']:<22} | {row['psnr']:9.2f} | {ssim:>6} | {row['seconds']:8.1f} |{note}")
    return 0
