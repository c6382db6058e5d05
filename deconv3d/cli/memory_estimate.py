"""Whether ``deconvolve`` of one image goes to the chunked pipeline: an image of several channels or time
points, or one whose in-memory run would not fit in memory (the memory model of the network, or of the PSF
as the run will prepare it: :func:`_psf_estimate`); for :func:`deconv3d.cli.classical.cmd_deconvolve`."""

from __future__ import annotations

from pathlib import Path

from deconv3d.errors import InputError

from . import selfsup


def _go_out_of_core_if_needed(args) -> None:
    """Send an image of several channels or time points to the chunked pipeline, which deconvolves
    each of them and writes a TIFF output as an ImageJ hyperstack (in memory, one 2D/3D image is
    read), and one too large for memory (:func:`_go_out_of_core_if_too_large`). The file's header is
    read once, for both."""
    from deconv3d.omezarr.reading import image_header

    if not Path(args.input).is_file():
        return
    try:
        axes, full_shape, voxel = image_header(args.input)  # (a TIFF's header: without dask)
    except InputError:
        return  # refused as it was, by the in-memory read
    if any(n > 1 for a, n in zip(axes, full_shape) if a in "TC"):
        args.out_of_core = True
    else:
        _go_out_of_core_if_too_large(args, tuple(n for a, n in zip(axes, full_shape) if a in "ZYX"), voxel)


def _go_out_of_core_if_too_large(args, shape, voxel) -> None:
    """Send rl, rl-tv, Wiener or ssl with a ``--model`` on an image (of ``shape``, its file recording
    ``voxel``) whose in-memory run would need
    more memory than is available (:func:`deconv3d.pipeline.system_memory.available_memory`) to the
    chunked pipeline, which then splits it into blocks that fit (``run_chunked``'s automatic
    limit): in memory it ran until the kernel killed the process, with no message and no output.
    (ssl that trains holds the whole image to train on, and stays in memory.)"""
    from deconv3d._tensors import resolve_device
    from deconv3d.pipeline.memory import limit_for_available
    from deconv3d.pipeline.memory_model import MemoryModel
    from deconv3d.pipeline.system_memory import planning_baseline

    if (args.method == "ssl" and not args.model) or resolve_device(args.device).type == "cuda":
        return  # (on a GPU the arrays live in its memory, which this does not budget)
    if args.method == "ssl":  # the chunked run's model of the network's blocks
        from deconv3d.pipeline.batch import network_memory_model
        from deconv3d.pipeline.network_block import NetworkBlock

        block = NetworkBlock(selfsup.load_model(args), device=args.device, tta=args.tta, amp=args.amp,
                             band_limit=args.band_limit or None)
        model = network_memory_model(block)
    else:
        psf_shape, reach = _psf_estimate(args, voxel, shape)
        model = MemoryModel(args.method, psf_shape, accelerate=not args.no_accelerate, boundary=args.boundary,
                            saturation=args.saturation != "none", reach=reach)
    # The chunked planning's own test, which then chooses the blocks: with the in-memory image and
    # result counted here too, a run between the two tests went to the chunked path as one block,
    # and took more memory than in memory (found by the diff review)
    if limit_for_available(model, shape, planning_baseline()) is None:
        return
    args.out_of_core = True  # (--iterations auto chooses its count there on a crop)


def _psf_estimate(args, file_voxel, shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The PSF's shape as the run will prepare it, near enough for a memory estimate (``file_voxel``:
    the voxel size the image's file records), and for Wiener the filter's reach
    (:func:`~deconv3d.classical.wiener.wiener_reach`, which sets its mirror's depth) of that PSF: a file's
    resampled to the image's voxel size and cropped (:func:`_psf_file_as_used`), a generated one as
    generated; ``()`` where not known, which the memory model counts as the widest PSF of that shape."""
    from deconv3d.psf.generate import generated_psf_shape

    voxel = file_voxel if not getattr(args, "voxel_size", None) or len(args.voxel_size) < len(shape) else \
        tuple(args.voxel_size)[-len(shape):]  # (too few values: refused once the image is read)
    psf = None
    if args.psf:
        psf = _psf_file_as_used(args.psf, voxel, shape)
    elif args.psf_model and args.na and args.wavelength and voxel is not None and len(shape) == 3:
        generated = generated_psf_shape(shape, voxel, args.na, args.wavelength)
        psf = _generated_as_used(args, generated, voxel, shape) if args.method == "wiener" else None
        if psf is None:
            return tuple(min(k, n) for k, n in zip(generated, shape)), ()
    if psf is None:
        return (1,) * len(shape), ()
    reach = ()
    if args.method == "wiener":
        from deconv3d.classical.wiener import wiener_reach

        reach = wiener_reach(psf, args.balance)
    return tuple(min(k, n) for k, n in zip(psf.shape, shape)), reach


def _generated_as_used(args, shape, voxel, image_shape):
    """The PSF of ``shape`` that ``--psf-model`` generates for an image of ``image_shape`` and ``voxel``, cropped
    as :func:`~deconv3d.cli._common.load_psf` crops it; None where the optics are refused (an NA above the
    immersion index), which the run then refuses with its own message, after the checks that come first. Kept
    as ``args.estimated_psf`` with the image shape and voxel size it was made for: the in-memory run takes it
    for those rather than generating it again (:func:`~deconv3d.cli.in_memory._voxel_model_and_psf`)."""
    from deconv3d.psf import generate_psf, prepare_psf

    try:
        psf = generate_psf(args.psf_model, shape, voxel, args.na, args.wavelength, ni=args.ni, ns=args.ns,
                           depth=args.depth)
        psf = prepare_psf(psf, image_shape, psf_voxel=voxel, image_voxel=voxel)
    except InputError:
        return None
    args.estimated_psf = (tuple(image_shape), tuple(voxel), psf)
    return psf


def _psf_file_as_used(path, voxel, shape):
    """The PSF file ``path`` as :func:`~deconv3d.cli._common.load_psf` prepares it for an image of ``shape`` and
    ``voxel``: resampled to that voxel size and cropped (a PSF of 0.1 µm planes on 0.3 µm ones is a third as
    deep); as read where that fails, which the run then refuses with its own message."""
    import warnings

    from deconv3d.io import psf_voxel_size, read_psf
    from deconv3d.psf import prepare_psf

    psf = read_psf(path)
    try:
        with warnings.catch_warnings():  # (an uncalibrated PSF: the run warns once it is read)
            warnings.simplefilter("ignore")
            return prepare_psf(psf.data, shape, psf_voxel=psf_voxel_size(psf, voxel), image_voxel=voxel,
                               fit_image=False)
    except InputError:
        return psf.data
