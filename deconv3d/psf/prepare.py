"""Fitting a PSF to an image: resampling it to the image's voxel size, and :func:`prepare_psf`.

:func:`resample_psf` (through ``_centred_zoom``, which :mod:`deconv3d.psf.generate` uses too) samples
a PSF on the image's grid; :func:`prepare_psf` validates, resamples, centres, crops and normalises a
PSF for an image, with the steps from :mod:`deconv3d.psf.validate` and :mod:`deconv3d.psf.center_crop`,
whose public functions are also importable from here.
"""

from __future__ import annotations

import numpy as np

from deconv3d._voxel import checked_voxel_size, format_sizes
from deconv3d.errors import InputError, PSFLargerThanImage
from deconv3d.psf.center_crop import CROP_SLACK, center_psf, crop_psf, fit_psf
from deconv3d.psf.validate import _positive_ints, _psf_array, _warn, _warn_of_an_offset, normalize_psf, validate_psf

#: prepare_psf and resample_psf, and the public PSF steps that were defined here before they moved to
#: :mod:`deconv3d.psf.validate` and :mod:`deconv3d.psf.center_crop` (still importable from here).
__all__ = ["prepare_psf", "resample_psf", "validate_psf", "normalize_psf", "center_psf", "crop_psf", "fit_psf",
           "CROP_SLACK"]


def _centred_zoom(arr: np.ndarray, step, out_shape, order: int = 3) -> np.ndarray:
    """Resample so that output centre ``(m-1)//2`` samples the input centre ``(n-1)//2``.

    Both are the kernel origin of :func:`deconv3d.fft.kernel_origin`, also for even sizes.
    ``step[i]`` is the distance, in input voxels, between neighbouring output voxels.
    """
    from scipy import ndimage

    step = np.array(step, dtype=float)  # a copy: an end sample moved inside changes its axis's step
    c_in = (np.asarray(arr.shape) - 1) // 2
    c_out = (np.asarray(out_shape) - 1) // 2
    if np.allclose(step, 1) and np.allclose(c_in - c_out, np.round(c_in - c_out)):
        start = np.round(c_in - c_out).astype(int)
        return arr[tuple(slice(s, s + m) for s, m in zip(start, out_shape))].copy()
    offset = c_in - step * c_out
    # Rounding put the end samples of upsampling 3x (0.1 / 0.3 = 0.33333333333333337) at -5e-16 and
    # 10 + 2e-15 of an 11-voxel axis, outside it, where 'constant' mode gives 0: whole faces were
    # emptied. An end sample within 1e-9 outside is moved a hair inside, and that axis's step follows.
    last = offset + step * (np.asarray(out_shape) - 1)
    for i, n in enumerate(arr.shape):
        low = 1e-12 if -1e-9 < offset[i] < 0 else offset[i]
        high = n - 1 - 1e-12 if n - 1 < last[i] < n - 1 + 1e-9 else last[i]
        if (low, high) != (offset[i], last[i]) and out_shape[i] > 1:
            offset[i], step[i] = low, (high - low) / (out_shape[i] - 1)
    # (The matrix as a diagonal: scipy before 1.16 warned, as a deprecation, of the 1-D form.)
    return ndimage.affine_transform(arr, np.diag(step), offset=offset, output_shape=tuple(out_shape), order=order)


#: Voxel sizes of a PSF and an image that differ this many times along an axis are taken for units
#: that disagree (nanometres given as micrometres: 1000), not for a PSF measured at another sampling.
MAX_VOXEL_RATIO = 100

#: The largest PSF :func:`resample_psf` builds (512^3, 0.5 GiB in float32): beyond it the two voxel
#: sizes are in different units (nanometres given as micrometres) far more often than a PSF is that large.
MAX_RESAMPLED_VOXELS = 512**3


def _voxel_integrated(psf: np.ndarray, step) -> np.ndarray:
    """``psf`` averaged over a box ``step`` input voxels wide along every lateral axis it coarsens.

    A camera pixel records the light over its whole extent: sampled at the coarse pixel
    centres alone, a finely sampled PSF came out too narrow (a Gaussian of sigma 0.12 µm
    resampled from 0.05 to 0.4 µm had an RMS width of 0.035 µm instead of the 0.167 µm of
    its pixel-integrated form). A z step does not integrate: each plane is taken at one focus
    position, as psfmodels computes planes, so the z axis of a 3D PSF is only interpolated
    (averaging over a doubled step had widened a Gaussian's axial RMS width by 8%). Box
    weights have fractional ends for a step that is not a whole number of voxels.
    """
    from scipy import ndimage

    out = np.asarray(psf, dtype=np.float64)
    for axis, width in enumerate(np.asarray(step, dtype=float)):
        if width <= 1 + 1e-9 or axis < out.ndim - 2:
            continue
        reach = int(np.ceil(width / 2 - 0.5))
        k = np.arange(-reach, reach + 1)
        weights = np.clip(np.minimum(k + 0.5, width / 2) - np.maximum(k - 0.5, -width / 2), 0, None)
        out = ndimage.convolve1d(out, weights / weights.sum(), axis=axis, mode="constant")
    return out


def resample_psf(psf, psf_voxel, image_voxel) -> np.ndarray:
    """Resample a PSF from its voxel size to the image's, keeping its physical extent.

    Parameters
    ----------
    psf : array_like
        2D or 3D PSF.
    psf_voxel, image_voxel : float or tuple of float
        Voxel sizes (micrometres), one per axis, or one number for isotropic voxels.

    Returns
    -------
    numpy.ndarray
        float32, unit sum, odd-sized; the input's centre voxel ``(n-1)//2`` (the kernel
        origin, also for even sizes) stays on the output's centre voxel.
        Returned unchanged (as float32) when the voxel sizes agree to 1e-6.

    Raises
    ------
    InputError
        For a PSF that :func:`validate_psf` refuses; for a voxel size that is not positive, for voxel
        sizes :data:`MAX_VOXEL_RATIO` times apart along an axis, and when the resampled PSF would be
        more than :data:`MAX_RESAMPLED_VOXELS` voxels: these come from voxel sizes in different units
        (nanometres given as micrometres).

    Notes
    -----
    Cubic-spline interpolation (:func:`scipy.ndimage.affine_transform`, a
    centred :func:`scipy.ndimage.zoom`) samples the PSF on the image grid;
    negative undershoot is clamped to 0. Along a lateral axis that gets coarser the PSF is
    first averaged over the new pixel's extent, as a camera pixel integrates the light falling
    on it; planes are taken at one focus each, so z is interpolated only. The output spans the
    input's physical extent, rounded to whole voxels.
    """
    psf = validate_psf(psf)  # (NaN, negative or all-zero PSFs were "PSF sum is not positive")
    src, dst = (np.asarray(checked_voxel_size(v, psf.ndim, what, required=True))
                for v, what in ((psf_voxel, "PSF voxel size"), (image_voxel, "image voxel size")))
    if np.allclose(src, dst, rtol=1e-6, atol=0):
        return psf.copy()
    step = dst / src
    half = np.floor((np.asarray(psf.shape) - 1) / 2.0 / step + 0.5).astype(int)
    shape = tuple(int(n) for n in 2 * half + 1)
    sizes = f"from {format_sizes(src)} µm voxels to {format_sizes(dst)} µm"
    if (step >= MAX_VOXEL_RATIO).any() or (step <= 1 / MAX_VOXEL_RATIO).any():
        # a PSF shrunk to a voxel (the image returned unchanged) or blown up: units that disagree
        raise InputError(f"resampled {sizes} the PSF changes scale {format_sizes(np.round(step, 3))}-fold: "
                         "check that both voxel sizes are in micrometres")
    if np.prod(shape, dtype=float) > MAX_RESAMPLED_VOXELS:
        raise InputError(f"resampled {sizes} the PSF would be {shape} voxels: check that both voxel sizes are in "
                         "micrometres, or crop the PSF")
    out = _centred_zoom(_voxel_integrated(psf, step), step, shape, order=3)
    return normalize_psf(np.clip(out, 0, None))


def _warn_of_one_voxel_size(ndim: int, psf_voxel, image_voxel) -> None:
    """Warn where only one of the PSF's and the image's voxel sizes is given: the PSF is then used as if
    sampled like the image."""
    if psf_voxel is not None:  # (the command line completes the image's from the PSF's before)
        _warn(f"the image's voxel size is not given (image_voxel=None), so the PSF, sampled at "
              f"{format_sizes(checked_voxel_size(psf_voxel, ndim, 'PSF voxel size'))} µm, is used as if "
              "sampled like the image: pass image_voxel (read_image(...).voxel_size, or partial_voxel "
              "completed by hand)", stacklevel=4)
    elif image_voxel is not None:  # (the command line passes the image's for a PSF file that records none)
        _warn(f"the PSF's voxel size is not given (psf_voxel=None), so the PSF is used as if sampled like "
              f"the image, at {format_sizes(checked_voxel_size(image_voxel, ndim, 'image voxel size'))} "
              "µm: pass psf_voxel (read_psf(...).voxel_size, or its partial_voxel completed by hand)", stacklevel=4)


def larger_psf_fix(psf_shape, image_shape, crop: str) -> str:
    """The fix a refusal of a PSF of ``psf_shape`` larger than an image of ``image_shape`` names: ``crop``
    (cropping the PSF), except for an image of one plane (1 x Y x X) under a PSF of several, which no
    crop along z fits: that plane is a 2D image, deconvolved with a 2D PSF."""
    if len(image_shape) == 3 and image_shape[0] == 1 and len(psf_shape) == 3 and psf_shape[0] > 1:
        return ("an image of one plane is 2D: give it as a 2D array (image[0]) with a 2D PSF, the in-focus plane "
                "of this one (the plane of its peak)")
    return crop


def prepare_psf(psf, image_shape, psf_voxel=None, image_voxel=None, energy=0.999, fit_image: bool = True) -> np.ndarray:
    """Make a PSF ready for deconvolving an image.

    Validate, resample to the image voxel size (when both are known and differ),
    centre on the centroid of its core (:func:`center_psf`), crop to ``energy`` and normalise to unit sum.

    Parameters
    ----------
    psf : array_like
        2D or 3D PSF with the same number of dimensions as the image.
    image_shape : tuple of int
        Shape of the image to deconvolve.
    psf_voxel, image_voxel : tuple of float, optional
        Voxel sizes in micrometres. Where only one is given, the PSF is taken as sampled like the
        image, with a RuntimeWarning (a PSF file saved without calibration reads with voxel size None).
    energy : float, optional
        Fraction of the PSF intensity kept by :func:`crop_psf`.
    fit_image : bool, optional
        Refuse a PSF larger than the image (default). ``False`` for a PSF that is only compared
        with another, e.g. a trained network's, which crops its own (:func:`fit_psf`).

    Returns
    -------
    numpy.ndarray
        float32, odd-shaped, centred, unit-sum PSF no larger than the image.

    Raises
    ------
    InputError
        If the PSF is invalid, its dimensionality differs from the image's, or it is larger
        than the image (after resampling). An even PSF axis as long as the image's, which
        centring pads to odd, is cropped to the largest odd size that fits.
    """
    if np.ndim(image_shape) != 1:
        raise InputError(f"image_shape must be the image's shape (a tuple of ints), got an array of shape "
                         f"{np.shape(image_shape)}: pass image.shape")
    if not isinstance(fit_image, (bool, np.bool_)):  # ("no" refused a PSF larger than the image)
        raise InputError(f"fit_image must be True or False, got {fit_image!r}")
    psf = _psf_array(psf)  # (a file name was "PSF is 0D")
    if psf.ndim != len(image_shape):
        raise InputError(
            f"PSF is {psf.ndim}D but image is {len(image_shape)}D: "
            "use a PSF with the same number of dimensions as the image"
        )
    image_shape = _positive_ints(image_shape, "image_shape")
    psf = validate_psf(psf)
    _warn_of_an_offset(psf)
    if psf_voxel is not None and image_voxel is not None:
        psf = resample_psf(psf, psf_voxel, image_voxel)
    else:
        _warn_of_one_voxel_size(psf.ndim, psf_voxel, image_voxel)
    given = psf.shape
    psf = crop_psf(center_psf(psf), energy)
    if fit_image and any(p > n for p, n in zip(psf.shape, image_shape)):
        # (per axis: a PSF wider than the image laterally but cropped to fit, and padded to odd along z, fits)
        if any(p > n and g > n for p, g, n in zip(psf.shape, given, image_shape)):
            fix = larger_psf_fix(given, image_shape, "crop the PSF (or generate it with a smaller shape) or use a "
                                                     "larger image")
            raise PSFLargerThanImage(f"PSF {given} is larger than the image {image_shape}: {fix}", given, image_shape)
        # An even axis as long as the image's, padded to odd by centring: keep the largest odd box that fits.
        psf = fit_psf(psf, tuple(n - 1 + n % 2 for n in image_shape))
    return normalize_psf(psf)
