"""The ``deconv3d`` command line: the only module that prints to the terminal or exits.

Exit status: 0 done; 2 bad input or usage (one line ``deconv3d: error: ...`` on stderr,
no output file left behind); 1 an unexpected internal error (``--debug`` shows the
traceback). See ../shared/DESIGN.md for the contract.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deconv3d import __version__
from deconv3d.errors import InputError

PSF_MODELS = ("gaussian", "gibson-lanni", "vectorial")
METHODS = ("rl", "rl-tv", "wiener")
BOUNDARIES = ("bertero", "zero", "reflect")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors follow the contract: one line, exit status 2."""

    def error(self, message):
        raise InputError(f"{message} (see '{self.prog} --help')")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_optics(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("microscope (for generated PSFs)")
    g.add_argument("--na", type=_positive_float, required=required, help="numerical aperture of the objective")
    g.add_argument("--wavelength", type=_positive_float, required=required, help="emission wavelength in µm")
    g.add_argument("--ni", type=_positive_float, default=1.515, help="immersion refractive index (default 1.515, oil)")
    g.add_argument("--ns", type=_positive_float, default=1.33, help="sample refractive index (default 1.33, water)")
    g.add_argument("--depth", type=float, default=0.0, help="depth below the coverslip in µm (default 0)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deconv3d", description="Deconvolution of 3D fluorescence microscopy.")
    parser.add_argument("--version", action="version", version=f"deconv3d {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _psf_parser(sub)
    _distill_parser(sub)
    _deconvolve_parser(sub)
    demo = sub.add_parser("demo", help="synthesise a phantom, deconvolve it, write figures and a table")
    demo.add_argument("-o", "--output", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _add_common(demo)
    return parser


def _psf_parser(sub) -> None:
    p = sub.add_parser("psf", help="generate a PSF from microscope parameters ('psf distill' for beads)")
    p.add_argument("-o", "--output", required=True, help="output PSF file (.tif)")
    p.add_argument("--model", choices=PSF_MODELS, default="vectorial", help="PSF model (default vectorial)")
    p.add_argument("--shape", type=_positive_int, nargs=3, required=True, metavar=("Z", "Y", "X"))
    p.add_argument("--voxel-size", type=_positive_float, nargs=3, required=True, metavar=("DZ", "DY", "DX"),
                   help="voxel size in µm")
    _add_optics(p, required=True)
    _add_common(p)


def _distill_parser(sub) -> None:
    p = sub.add_parser("psf-distill", help="average isolated beads into a PSF (also: 'psf distill')")
    p.add_argument("beads", help="TIFF stack of sub-resolution beads")
    p.add_argument("-o", "--output", required=True, help="output PSF file (.tif)")
    p.add_argument("--size", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"), help="PSF box size")
    _add_common(p)


def _deconvolve_parser(sub) -> None:
    p = sub.add_parser("deconvolve", help="deconvolve an image with a known or generated PSF")
    p.add_argument("input", help="input image (.tif/.tiff, 2D or 3D)")
    p.add_argument("-o", "--output", required=True, help="output image (.tif/.tiff, float32 with voxel size)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--psf", help="PSF file (.tif); resampled to the image's voxel size when they differ")
    src.add_argument("--psf-model", choices=PSF_MODELS, help="generate the PSF from microscope parameters")
    _add_optics(p, required=False)
    p.add_argument("--method", choices=METHODS, default="rl", help="deconvolution method (default rl)")
    p.add_argument("--iterations", type=_positive_int, default=20, help="RL iterations (default 20)")
    p.add_argument("--tv-weight", type=float, default=0.002, help="TV weight for rl-tv (default 0.002)")
    p.add_argument("--no-accelerate", action="store_true", help="turn off Biggs-Andrews acceleration")
    p.add_argument("--boundary", choices=BOUNDARIES, default="bertero",
                   help="border handling for RL (default bertero: no ringing at the borders)")
    p.add_argument("--balance", type=_positive_float, default=1e-3, help="Wiener regularisation (default 1e-3)")
    p.add_argument("--voxel-size", type=_positive_float, nargs=3, metavar=("DZ", "DY", "DX"),
                   help="voxel size in µm (overrides the file's metadata)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _add_common(p)


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept the contract's ``psf distill BEADS`` spelling for the ``psf-distill`` command."""
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            continue
        if arg == "psf" and i + 1 < len(argv) and argv[i + 1] == "distill":
            return argv[:i] + ["psf-distill"] + argv[i + 2:]
        break
    return argv


def _progress(total: int, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal) and an RL callback feeding it."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="it", disable=None, leave=False)

    def callback(iteration, _estimate):
        bar.update(iteration - bar.n)

    return bar, callback


def cmd_psf(args) -> int:
    from deconv3d.io import check_output_path, write_tiff
    from deconv3d.psf import generate_psf

    check_output_path(args.output, [])
    psf = generate_psf(args.model, tuple(args.shape), tuple(args.voxel_size), args.na, args.wavelength,
                       ni=args.ni, ns=args.ns, depth=args.depth)
    meta = {"deconv3d": __version__, "psf_model": args.model, "na": args.na, "wavelength_um": args.wavelength,
            "ni": args.ni, "ns": args.ns, "depth_um": args.depth}
    write_tiff(args.output, psf, voxel_size=tuple(args.voxel_size), metadata=meta)
    print(f"wrote {args.output}: {args.model} PSF {psf.shape}, voxel {tuple(args.voxel_size)} µm")
    return 0


def cmd_distill(args) -> int:
    from deconv3d.io import check_output_path, read_image, write_tiff
    from deconv3d.psf import distill_psf

    beads = read_image(args.beads)
    check_output_path(args.output, [args.beads])
    psf = distill_psf(beads.data, size=tuple(args.size) if args.size else None)
    write_tiff(args.output, psf, voxel_size=beads.voxel_size, metadata={"deconv3d": __version__, "psf": "distilled"})
    print(f"wrote {args.output}: PSF {psf.shape} distilled from {args.beads}")
    return 0


def _voxel_size(args, image):
    voxel = tuple(args.voxel_size) if args.voxel_size else image.voxel_size
    if voxel is None:
        return None
    voxel = tuple(voxel)[-image.data.ndim:]
    if min(voxel) <= 0:
        raise InputError(f"voxel size {voxel} must be positive: pass --voxel-size DZ DY DX")
    return voxel


def _load_psf(args, image, voxel):
    from deconv3d.io import read_image
    from deconv3d.psf import generate_psf, prepare_psf

    if args.psf:
        psf = read_image(args.psf)
        return prepare_psf(psf.data, image.data.shape, psf_voxel=psf.voxel_size, image_voxel=voxel)
    if args.na is None or args.wavelength is None:
        raise InputError("--psf-model needs --na and --wavelength: add them, or give a measured --psf file")
    if voxel is None or len(voxel) != 3 or image.data.ndim != 3:
        raise InputError("--psf-model needs a 3D image with a known voxel size: pass --voxel-size DZ DY DX")
    shape = _generated_psf_shape(image.data.shape, voxel, args.na, args.wavelength)
    psf = generate_psf(args.psf_model, shape, voxel, args.na, args.wavelength, ni=args.ni, ns=args.ns,
                       depth=args.depth)
    return prepare_psf(psf, image.data.shape, psf_voxel=voxel, image_voxel=voxel)


def _generated_psf_shape(image_shape, voxel, na, wavelength):
    """Odd PSF box: about 8 Airy radii laterally, the image's depth axially, never larger than the image."""
    airy = 0.61 * wavelength / na
    lateral = [2 * int(round(8 * airy / d)) + 1 for d in voxel[1:]]
    wanted = [image_shape[0]] + lateral
    return tuple(min(w, n if n % 2 else n - 1) for w, n in zip(wanted, image_shape))


def cmd_deconvolve(args) -> int:
    import time

    from deconv3d.classical import richardson_lucy, wiener
    from deconv3d.fft import psf_fingerprint
    from deconv3d.io import check_output_path, read_image, write_tiff

    image = read_image(args.input)
    check_output_path(args.output, [args.input] + ([args.psf] if args.psf else []))
    if args.method == "rl-tv" and not args.tv_weight > 0:
        raise InputError("--method rl-tv needs a positive --tv-weight (try 0.002)")
    voxel = _voxel_size(args, image)
    psf = _load_psf(args, image, voxel)
    start = time.perf_counter()
    if args.method == "wiener":
        result = wiener(image.data, psf, args.balance, device=args.device)
        params = {"balance": args.balance}
    else:
        params = {"iterations": args.iterations, "boundary": args.boundary, "accelerate": not args.no_accelerate,
                  "tv_weight": args.tv_weight if args.method == "rl-tv" else 0.0}
        bar, callback = _progress(args.iterations, args.method)
        with bar:
            result = richardson_lucy(image.data, psf, args.iterations, callback=callback, voxel_size=voxel,
                                     device=args.device, **{k: v for k, v in params.items() if k != "iterations"})
    seconds = time.perf_counter() - start
    meta = {"deconv3d": __version__, "method": args.method, "parameters": params, "input": str(args.input),
            "psf_shape": list(psf.shape), "psf_sha256_16": psf_fingerprint(psf)}
    write_tiff(args.output, result, voxel_size=voxel, metadata=meta)
    print(f"wrote {args.output}: {args.method} on {image.data.shape} in {seconds:.1f} s")
    return 0


def cmd_demo(args) -> int:
    from deconv3d.demo import run_demo

    rows = run_demo(Path(args.output), device=args.device)
    print(f"deconv3d demo: outputs in {args.output}/")
    print(f"| {'method':<22} | {'PSNR (dB)':>9} | {'SSIM':>6} | {'time (s)':>8} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 8}|{'-' * 10}|")
    for row in rows:
        print(f"| {row['method']:<22} | {row['psnr']:9.2f} | {row['ssim']:6.3f} | {row['seconds']:8.1f} |")
    return 0


COMMANDS = {"psf": cmd_psf, "psf-distill": cmd_distill, "deconvolve": cmd_deconvolve, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deconv3d`` command; returns the exit status."""
    argv = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except InputError as exc:
        if debug:
            raise
        print(f"deconv3d: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deconv3d: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: unexpected errors exit 1
        if debug:
            raise
        print(f"deconv3d: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
