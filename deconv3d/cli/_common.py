"""What the commands share in checking and preparing a run: the environment's ``DECONV3D_*``
settings (:func:`check_environment`), the output path (:func:`check_output`), the input's voxel
size (:func:`voxel_size_of`), the PSF (:func:`load_psf`) and data with negative values
(:func:`check_negative`); and :class:`Terminated`, the SIGTERM or SIGHUP raised as Ctrl-C is."""

from __future__ import annotations

from deconv3d._voxel import refuse_nanometres, voxel_size_option, wrong_unit_fix
from deconv3d.errors import InputError

from .arguments import spatial_sizes
from .printing import _log_interval


def check_output(output, inputs=(), *, psfs=(), **kwargs) -> None:
    """:func:`deconv3d.io.check_output_path`, then remove what killed runs left of this output on
    this machine: hidden temporaries as large as the output, which only chunked runs swept before
    (a killed in-memory run to .tif left its own for good). An output that is one of the ``psfs``
    (PSF files among the ``inputs``; None entries ignored) is refused as the PSF: ``-o psf.tif
    --psf psf.tif`` was refused as "the input psf.tif", the name of the image's role. The PSFs' overlap with
    the output is checked here only, the other inputs' by :func:`check_output_path`."""
    from deconv3d._paths import check_output_path, refuse_input_overlap, remove_stale_temporaries

    refuse_input_overlap(output, psfs, role="PSF")
    check_output_path(output, [path for path in inputs if path not in psfs], **kwargs)
    _refuse_unwritable_folder(output)
    remove_stale_temporaries(output)


def _refuse_unwritable_folder(output) -> None:
    """Refuse an output whose folder does not take a new file (:func:`creating_fails`). The permission
    test passes for root where writing fails all the same (/proc, /sys): ``train -o /proc/x.ckpt`` trained
    fully, then failed to create the checkpoint's temporary file (an internal error, exit 1), and
    ``deconvolve`` ran its whole method before it could not write. A full disk is named as full."""
    from pathlib import Path

    from deconv3d._paths import out_of_space

    parent = Path(output).parent
    if (failed := creating_fails(parent)) is None:
        return
    if out_of_space(failed):  # (a full disk or quota: the folder may well be writable)
        raise InputError(f"output directory {parent} is full (creating a file there failed: {failed.strerror}): "
                         "free space there or choose another output location")
    raise InputError(f"output directory is not writable: {parent} (creating a file there failed: "
                     f"{failed.strerror or failed}): choose another output location")


def creating_fails(folder) -> OSError | None:
    """Why ``folder`` does not take a new file, found by creating an empty hidden one there and removing it
    at once: the error; None where it does."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deconv3d-probe-"):
            return None
    except OSError as exc:
        return exc


def refuse_ssl_options(args) -> None:
    """--model and --train-steps belong to ``--method ssl``: refused with another method, naming those given,
    in the words of a batch's settings (:func:`~deconv3d.pipeline.settings_checks.check_ssl_only`), named as
    options."""
    from deconv3d.pipeline.settings_checks import check_ssl_only, settings_as_options

    with settings_as_options():
        check_ssl_only(args.method, args.model or None, args.steps)


def check_environment() -> None:
    """Refuse a wrong ``DECONV3D_*`` setting before any work, by the parsers that read each where it
    is used: the same one-line error (exit 2) for every command and image size. Read only there, a
    mistyped ``DECONV3D_FFTW_PLANNER`` was ignored for images too small for FFTW and failed only a
    batch's large files, and a wrong ``DECONV3D_FFT`` failed every file of a batch one by one (exit 3).
    (``DECONV3D_CACHE_DIR`` takes any value: one that cannot be used caches nothing.)"""
    from deconv3d._fftw import fft_choice
    from deconv3d._fftw_planning import planner_choice
    from deconv3d._rl_ops import fused_choice

    fft_choice()
    planner_choice()
    fused_choice()
    _log_interval()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's cancel or time limit) or SIGHUP (a dropped ssh session), raised
    in the main thread as Ctrl-C is: the same clean-up runs (temporaries removed, a batch report
    written). ``signum``: the signal; :attr:`name` names it, :attr:`status` is the exit status, 128 + it."""

    def __init__(self, signum: int = 15):  # (SIGTERM)
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        return 128 + self.signum


def voxel_size_of(args, image, warnings: list | None = None):
    """``--voxel-size`` (its last ``ndim`` values: :func:`spatial_sizes`) when given, else the file's;
    a voxel size the file records but that is not positive is refused rather than dropped. A z step
    the file does not record (ImageJ's default taken) is warned about, into ``warnings``."""
    problem = getattr(image, "voxel_problem", None)
    if problem and not args.voxel_size:
        raise InputError(f"{problem}: pass --voxel-size DZ DY DX (in µm)")
    name = getattr(args, "input", None) or getattr(args, "beads", "the image")
    voxel = spatial_sizes(args.voxel_size, image.data.ndim, "--voxel-size", name, "DZ DY DX") or image.voxel_size
    fix = ("give --voxel-size in micrometres" if args.voxel_size else
           f"the file's unit is wrong: {wrong_unit_fix(voxel_size_option(image.data.ndim))}")
    if voxel is None:
        if not args.voxel_size:  # the sizes a file records for some axes only
            refuse_nanometres(getattr(image, "partial_voxel", None), fix)
        return None
    voxel = tuple(voxel)[-image.data.ndim:]
    if min(voxel) <= 0:
        raise InputError(f"voxel size {voxel} must be positive: pass --voxel-size DZ DY DX")
    if not args.voxel_size and getattr(image, "z_step_assumed", False):
        from deconv3d._voxel import check_assumed_z_step

        check_assumed_z_step(name, voxel, warnings)  # (first: a missing z step, not a wrong unit)
    refuse_nanometres(voxel, fix)
    return voxel


def load_psf(args, image, voxel, fit_image: bool = True, warnings: list | None = None):
    """``--psf`` or ``--psf-model``, prepared for ``image``; ``fit_image=False`` allows a PSF larger than it.
    A warning about the PSF file is appended to ``warnings`` (printed by the caller once the input is checked)."""
    from deconv3d.io import naming_psf_and_image, psf_dimension_problem, psf_voxel_size, read_psf
    from deconv3d.psf import generate_psf, prepare_psf
    from deconv3d.psf.generate import GridTooLarge, generated_psf_shape

    if args.psf:
        psf = read_psf(args.psf)
        if problem := psf_dimension_problem(args.psf, psf.data.ndim, args.input, image.data.ndim):
            raise InputError(problem)
        with naming_psf_and_image(args.psf, args.input):
            return prepare_psf(psf.data, image.data.shape, psf_voxel=psf_voxel_size(psf, voxel, args.psf, warnings),
                               image_voxel=voxel, fit_image=fit_image)
    if args.na is None or args.wavelength is None:
        raise InputError("--psf-model needs --na and --wavelength: add them, or give a measured --psf file")
    if image.data.ndim != 3:
        raise InputError("--psf-model generates 3D PSFs: for a 2D image give a --psf file, e.g. the plane of best "
                         "focus made by 'deconv3d psf --shape 63 63 --voxel-size DY DX ...'")
    if voxel is None or len(voxel) != 3:
        from deconv3d.io import _sizes

        partial = getattr(image, "partial_voxel", None)
        partial = partial if partial is not None and len(partial) == 3 else (None,) * 3
        missing = "/".join(a for a, v in zip("zyx", partial) if v is None)
        raise InputError(f"--psf-model needs the image's voxel size, and the image records no {missing} size: "
                         f"pass --voxel-size {_sizes(partial)}")
    shape = generated_psf_shape(image.data.shape, voxel, args.na, args.wavelength)
    try:
        psf = generate_psf(args.psf_model, shape, voxel, args.na, args.wavelength, ni=args.ni, ns=args.ns,
                           depth=args.depth)
    except GridTooLarge as exc:  # a shape the command chose, not the user: name what sets it
        raise InputError(f"{exc.problem}; --psf-model took that shape from the image (its planes, and 8 Airy radii "
                         "across within its width): check the voxel size (--voxel-size), or make a PSF of fewer "
                         "voxels with 'deconv3d psf --shape' and give it as --psf") from None
    return prepare_psf(psf, image.data.shape, psf_voxel=voxel, image_voxel=voxel)


def check_negative(data, source, method: str, warnings: list) -> None:
    """Background-subtracted data: Richardson-Lucy counts negative voxels as 0, and the network's
    output (and its Richardson-Lucy reference) is non-negative too. An image with no positive
    value but negative ones would come back all zeros and is refused; many negative voxels get a
    warning."""
    import numpy as np

    from deconv3d.errors import refuse_no_positive, warn_negative_share

    if not float(np.max(data)) > 0 and float(np.min(data)) < 0:  # all zero stays allowed: zeros come back
        refuse_no_positive(source, method)
    warn_negative_share(float(np.mean(data < 0)), source, method, warnings)

