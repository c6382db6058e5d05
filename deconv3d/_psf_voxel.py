"""The voxel size a run takes where the image or the PSF file records none (re-exported by :mod:`deconv3d.io`)."""

from __future__ import annotations

from deconv3d.errors import warn, warning_naming_image


def assume_psf_voxel(voxel_size, psf_path, ndim: int, source, warnings: list | None = None, partial=None):
    """The image's voxel size, completed from a PSF file where the image does not say.

    ``voxel_size`` is returned as given when known; a PSF file (``psf_path``) that carries no voxel
    size is then taken to be sampled like the image, with a warning. For an image (``source``, for
    the messages) that carries none, the PSF file's own is taken, when it records one per axis of
    the ``ndim``-D image; for one that calibrates some axes only (``partial``, as
    :attr:`Image.partial_voxel`) the PSF's fills the missing axes and the recorded ones are kept.
    Warnings are appended to ``warnings`` (for the caller to print once the input is checked),
    else printed.

    Without this the PSF would be used at whatever sampling it has: a PSF sampled twice as finely
    as the image then deconvolves with the wrong width, silently.
    """
    from deconv3d.io import _sizes, read_psf

    if psf_path is None:
        return voxel_size
    psf = read_psf(psf_path)
    if psf.data.ndim != ndim:  # refused next, by the dimensionality check: nothing to say of voxel sizes
        return voxel_size
    own = tuple(psf.voxel_size) if psf.voxel_size is not None else None
    if voxel_size is not None:
        if own is None:
            _warn_psf_takes_image_voxel(psf, psf_path, voxel_size, ndim, warnings)
        return voxel_size
    if partial is not None and len(partial) == ndim:
        missing = "/".join(a for a, v in zip("zyx"[-ndim:], partial) if v is None)
        if own is None:
            warning_naming_image(lambda image: f"deconv3d: warning: {image} records no {missing} voxel size and "
                                 f"the PSF file none: the PSF is taken as sampled like the image and the output "
                                 f"carries no voxel size (pass --voxel-size {_sizes(partial)} with the missing "
                                 f"values to set it)", source, warnings)
            return None
        filled = tuple(o if v is None else v for v, o in zip(partial, own))
        warning_naming_image(lambda image: f"deconv3d: warning: {image} records no {missing} voxel size; assuming "
                             f"the PSF's for it: {_sizes(filled)} µm (pass --voxel-size to set it)", source, warnings)
        return filled
    if own is None:  # as the partly calibrated case above says: nothing to resample with, nothing to record
        warning_naming_image(lambda image: f"deconv3d: warning: neither {image} nor the PSF file {psf_path} records "
                             f"a voxel size: the PSF is taken as sampled like the image and the output carries no "
                             f"voxel size (pass --voxel-size {_sizes((None,) * ndim)} to set it)", source, warnings)
        return None
    warning_naming_image(lambda image: f"deconv3d: warning: {image} carries no voxel size; assuming the PSF's "
                         f"{own} µm (pass --voxel-size to set it)", source, warnings)
    return own


def _warn_psf_takes_image_voxel(psf, psf_path, voxel_size, ndim: int, warnings: list | None) -> None:
    """Warn that the PSF file ``psf_path`` (read as ``psf``), which records no voxel size or only some axes',
    is taken as sampled like the image of ``voxel_size``: :func:`assume_psf_voxel`'s warning for a known one."""
    from deconv3d.io import _sizes, psf_voxel_size

    if psf.partial_voxel is not None:
        completed = psf_voxel_size(psf, voxel_size)
        missing = "/".join(a for a, v in zip("zyx"[-ndim:], psf.partial_voxel) if v is None)
        warn(f"deconv3d: warning: the PSF file {psf_path} records no {missing} voxel size; taking the image's "
             f"for it ({_sizes(completed)} µm)", warnings)
    else:
        warn(f"deconv3d: warning: the PSF file {psf_path} carries no voxel size; taking it as sampled like "
             f"the image ({_sizes(voxel_size)} µm)", warnings)
