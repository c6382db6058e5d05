"""``deconvolve`` of one 2D or 3D image read whole (the in-memory path): the checks of the output, options
and image, the method run (RL with the voxels ``--saturation`` flags fitted as clipped, and its count
chosen for ``--iterations auto``), and the result written as a TIFF with its provenance."""

from __future__ import annotations

import time

from deconv3d._paths import line_text
from deconv3d.errors import InputError, refuse_non_finite, warn

from . import selfsup
from ._common import check_negative, check_output, load_psf, refuse_ssl_options, voxel_size_of
from .iteration_choice import _choose_iterations
from .printing import hashed, print_warnings, progress, say_long_step


def _deconvolve_in_memory(args, warnings: list) -> int:
    """``deconvolve`` of one 2D or 3D image read whole, written as a TIFF with its provenance."""
    import numpy as np

    from deconv3d.io import read_image, write_tiff
    from deconv3d.pipeline import provenance, psf_source, tiff_properties
    from deconv3d.pipeline.settings import check_tv_weight

    image = read_image(args.input)  # (one 2D/3D image: a hyperstack goes chunked)
    # Each file is hashed once read (at the end, a file replaced meanwhile was recorded in place of
    # the one the run used): the input here, the model and PSF files below.
    input_sha256 = hashed(args.input, "deconvolve: hashing the input")
    voxel, trained, model_sha256, psf = _voxel_model_and_psf(args, image, warnings)
    source = psf_source(args)  # (the PSF file's hash)
    if args.method == "rl-tv":  # after the PSF's checks: an image without a voxel size, told to lower the
        check_tv_weight(args.tv_weight, image.data.ndim, voxel, args.input)  # weight, then needed one
    print_warnings(warnings)
    start = time.perf_counter()
    result, params, psf = _run_method(args, image.data, psf, voxel, trained)
    seconds = time.perf_counter() - start
    refuse_non_finite(result, f"{args.method} result",  # float32 overflow on values near its limit
                      f"(the image's values reach {float(np.abs(image.data).max()):.3g}): rescale the image to a "
                      "smaller range and run again")
    from deconv3d.pipeline.records import method_fft_shapes

    transforms = method_fft_shapes(args.method, image.data.shape, np.shape(psf), params.get("boundary", "bertero"),
                                   residual="reference" in params)  # (the record of a network that corrects RL)
    record = provenance(args.method, params, psf=psf, input_path=args.input, checksum=input_sha256, device=args.device,
                        fft_shapes=transforms, model_hash=model_sha256, source=source)
    write_tiff(args.output, result, voxel_size=voxel, metadata=tiff_properties(record), axes=image.axes)  # (ZX too)
    print(f"wrote {line_text(args.output)}: {args.method} on {image.data.shape} in {seconds:.1f} s")
    return 0


def _voxel_model_and_psf(args, image, warnings: list):
    """After the run's checks (:func:`_checked_voxel`): the voxel size it uses, ssl's trained model (else None)
    and its file's hash, and the PSF prepared for ``image`` (None without one)."""
    from deconv3d.io import assume_psf_voxel
    from deconv3d.omezarr import file_sha256

    voxel = _checked_voxel(args, image, warnings)
    trained = selfsup.load_model(args) if args.method == "ssl" else None
    model_sha256 = file_sha256(args.model) if trained is not None else None
    if trained is not None:  # before the PSF, which is resampled to the voxel size the model may supply
        voxel = trained.voxel_for(voxel, image.data.ndim, args.input, warnings)
    voxel = assume_psf_voxel(voxel, args.psf, image.data.ndim, args.input, warnings, partial=image.partial_voxel)
    made = getattr(args, "estimated_psf", None)  # (made by memory_estimate._generated_as_used)
    if made is not None and args.psf is None and trained is None and voxel is not None \
            and made[:2] == (tuple(image.data.shape), tuple(voxel)):
        return voxel, trained, model_sha256, made[2]
    # A trained model only checks the PSF against its own: a stack thinner than the PSF is fine.
    psf = load_psf(args, image, voxel, fit_image=trained is None, warnings=warnings) if (args.psf or args.psf_model) else None
    return voxel, trained, model_sha256, psf


def _checked_voxel(args, image, warnings: list):
    """The in-memory run's checks of the output, the options and the image; the image's voxel size."""
    check_output(args.output, [f for f in (args.input, args.psf, args.model) if f], psfs=[args.psf])
    if args.method == "rl-tv" and not args.tv_weight > 0:
        raise InputError("--method rl-tv needs a positive --tv-weight (try 0.002)")
    voxel = voxel_size_of(args, image, warnings)
    check_negative(image.data, args.input, args.method, warnings)
    if args.saturation == "none":
        from deconv3d._saturation import top_two, warn_if_clipped

        warn_if_clipped(top_two(image.data), args.method, warnings)
    refuse_ssl_options(args)
    if args.psf is None and args.psf_model is None and not (args.method == "ssl" and args.model):
        raise InputError("a PSF is needed: add --psf PSF.tif or --psf-model MODEL --na NA --wavelength UM")
    return voxel


def _run_method(args, data, psf, voxel, trained):
    """Deconvolve ``data`` by ``--method``: the result, the parameters recorded, and the PSF used."""
    from deconv3d.classical import richardson_lucy, wiener

    if args.method == "ssl":
        return selfsup.deconvolve_ssl(args, data, psf, voxel, trained)
    if args.method == "wiener":
        say_long_step(data.nbytes, f"wiener: deconvolving {data.shape} in one pass")  # (no count to show)
        params = {"balance": args.balance, "boundary": args.boundary}
        return wiener(data, psf, args.balance, boundary=args.boundary, device=args.device), params, psf
    params = {"iterations": args.iterations, "boundary": args.boundary, "accelerate": not args.no_accelerate,
              "tv_weight": args.tv_weight if args.method == "rl-tv" else 0.0}
    clipped = _clipped_voxels(args.saturation, data, params)
    if clipped is not None and args.boundary == "zero":
        from deconv3d._saturation import clipped_at_faces, zero_boundary_warning

        if near := clipped_at_faces(clipped, tuple(psf.shape)):
            warn(zero_boundary_warning(near))
    if args.iterations == "auto":  # with the voxels --saturation flags fitted as clipped, and not predicted
        params.update(_choose_iterations(data, psf, params, voxel, args.device, clipped))
    bar, callback = progress(params["iterations"], args.method)
    with bar:
        result = richardson_lucy(data, psf, params["iterations"], callback=callback, voxel_size=voxel,
                                 device=args.device, clipped=clipped,
                                 **{k: v for k, v in params.items() if k in ("boundary", "accelerate", "tv_weight")})
    return result, params, psf


def _clipped_voxels(saturation, data, params: dict):
    """The voxels RL fits as clipped for ``--saturation`` (None: every voxel fitted as measured), its record
    added to ``params``, and a line saying how many (or that ``auto`` found no plateau)."""
    import numpy as np

    from deconv3d._saturation import (clipped_fit_line, clipped_voxels, refuse_all_flagged, saturation_level,
                                      saturation_record)

    level = saturation_level(data, saturation)
    clipped = clipped_voxels(data, level)
    if clipped is None:
        if saturation == "auto":
            print(clipped_fit_line(saturation, [None], [None]))  # (no plateau: every voxel fitted)
        return None
    count = int(np.count_nonzero(clipped))
    refuse_all_flagged(count, clipped.size, level)
    params.update(saturation_record(saturation, level, count))
    print(clipped_fit_line(saturation, [level], [count]))
    return clipped
