"""Checking a PSF array before use: validation, unit-sum normalisation, and the warnings about a PSF.

:func:`validate_psf` refuses an array that cannot serve as a PSF and :func:`normalize_psf` scales one
to unit sum; ``_positive_ints`` checks a shape or box size given as whole numbers; ``_warn`` issues a
RuntimeWarning noted for :func:`deconv3d.errors.recorded_warnings` (the PSF modules warn through it),
and ``_warn_of_an_offset`` warns of a flat background under a measured PSF, or of its noise clipped at
zero (``_warn_of_clipped_noise``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from deconv3d._arrays import as_numpy, refuse_complex, refuse_empty, refuse_file_name, refuse_non_numeric
from deconv3d.errors import InputError, note_warning

#: Negative PSF values down to this share of its peak are round-off (an FFT's, a resampling's undershoot).
NEGATIVE_TOLERANCE = 1e-6


def _positive_ints(values, what: str) -> tuple[int, ...]:
    """``values`` as 2 or 3 positive ints; 9.7 (silently 9 before), strings and bools are refused."""
    try:
        whole = all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                    or isinstance(v, (float, np.floating)) and float(v).is_integer() for v in values)
        ints = tuple(int(v) for v in values) if whole else None
    except (TypeError, ValueError, OverflowError):
        ints = None
    if ints is None or len(ints) not in (2, 3) or min(ints) < 1:
        raise InputError(f"{what} must be 2 or 3 positive integers, got {values!r}")
    return ints


def _psf_array(psf) -> np.ndarray:
    """``psf`` (an array, a tensor, nested lists) as a numpy array of real numbers, refused in one line
    naming the PSF where it is a file name, ragged lists, not numbers or complex: the first check of
    every PSF function here (numpy's "could not convert string to float" or pad's "`pad_width` must be of
    integral type" had reached users of some of them)."""
    refuse_file_name(psf, "deconv3d.io.read_psf(path).data")
    try:
        psf = as_numpy(psf)
    except (ValueError, TypeError):  # ragged nested lists
        raise InputError(f"cannot make an array of numbers from the PSF ({type(psf).__name__}): give a numeric "
                         "array") from None
    refuse_non_numeric(psf.dtype, "the PSF")  # (None was "PSF sum is not positive")
    refuse_complex(psf.dtype, "the PSF")  # (was named "the input")
    return psf


def validate_psf(psf) -> np.ndarray:
    """Check that an array can serve as a PSF.

    Parameters
    ----------
    psf : array_like
        2D or 3D array.

    Returns
    -------
    numpy.ndarray
        The PSF as float32 (not normalised).

    Raises
    ------
    InputError
        If the PSF is a file name or not real numbers, is not 2D/3D, is empty, has NaN/Inf, has
        values beyond float32's range (3.4e38) or only below its smallest normal number (1.2e-38),
        has negative values below ``-1e-6 * max`` or is all zero.
    """
    psf = _psf_array(psf)
    if psf.dtype.kind == "f" and psf.size and np.isfinite(psf).all():
        largest = float(np.abs(psf).max())
        if largest > float(np.finfo(np.float32).max):
            raise InputError(f"PSF values up to {largest:.3g} are too large for float32 (3.4e38): "
                             "rescale the PSF (e.g. divide by its maximum)")
        if 0 < largest < float(np.finfo(np.float32).tiny):  # (float64 values of 1e-45 became float32 0s and 1.4e-45s)
            raise InputError(f"PSF values up to {largest:.3g} are too small for float32 (1.2e-38): "
                             "rescale the PSF (e.g. divide by its maximum)")
    psf = as_numpy(psf, dtype=np.float32)
    if psf.ndim not in (2, 3) or psf.size == 0:
        raise InputError(f"PSF must be a non-empty 2D or 3D array, got shape {psf.shape}: check the PSF file")
    if not np.isfinite(psf).all():
        raise InputError("PSF contains NaN or Inf values: check the PSF file or regenerate it")
    peak = float(psf.max())
    if peak == 0 and float(psf.min()) == 0:
        raise InputError("PSF is all zero: check the PSF file or regenerate it")
    if float(psf.min()) < -NEGATIVE_TOLERANCE * max(peak, 0.0):
        raise InputError(
            f"PSF has negative values (min {float(psf.min()):.3g}, max {peak:.3g}): "
            "subtract the background and clip at zero, or regenerate it"
        )
    return psf


def _warn(text: str, stacklevel: int) -> None:
    """Issue ``text`` as a RuntimeWarning, noted for :func:`deconv3d.errors.recorded_warnings`."""
    message = RuntimeWarning(text)
    note_warning(message)
    warnings.warn(message, stacklevel=stacklevel)


#: :func:`prepare_psf` warns when a PSF's faces, flat, exceed this share of its peak. Generated
#: widefield PSFs' lowest values stayed below 0.0034 (psfmodels' vectorial and Gibson-Lanni models, NA 1.4, boxes
#: from 9x15x15 to 63x31x31, 0 and 5 µm deep); a bead crop keeping a camera offset of 100 counts
#: under a 2756-count peak (3.6%) had deconvolved intensities come out 2.7x too high.
OFFSET_LEVEL = 0.01


#: :func:`_warn_of_an_offset` reads no floor on a face with a voxel at this share of the PSF's peak or more
#: (the core's, as :func:`deconv3d.psf.center_crop.center_psf` takes it): the box cuts the core there.
CORE_FACE_LEVEL = 0.5


def _warn_of_an_offset(psf: np.ndarray) -> None:
    """Warn of a flat floor under a (measured) PSF: unit-sum normalisation counts it as the PSF's light.

    The floor is the 5th percentile of the box's faces (robust to shot noise), and flat: at least
    0.8 of their median (a Gaussian cut close to its core, e.g. 3x3x3 with sigma 1 voxel, has its
    corners at 0.6 of the faces' median). Only the faces the core does not reach count (none of their
    voxels at :data:`CORE_FACE_LEVEL` of the peak): a generated PSF of 3 x 3 x 3 voxels (vectorial,
    NA 1.2, 0.2 / 0.1 µm) had faces at 36 % of its peak or more, all its own light, and was warned of
    as a camera offset to subtract. A floor above half the peak is taken for a flat kernel
    given on purpose (a box blur). 3D PSFs only: in a small 2D box the first Airy ring can lie
    evenly along the edges (7 of 147 generated 2D PSFs were flagged).
    """
    if psf.ndim != 3:
        return
    planes = [np.take(psf, i, axis=a) for a in range(psf.ndim) for i in (0, -1)]
    peak = float(psf.max())
    clear = [f.ravel() for f in planes if float(f.max()) < CORE_FACE_LEVEL * peak]
    low = float(np.percentile(np.concatenate(clear), 5)) if clear else 0.0
    if clear and OFFSET_LEVEL < low / peak <= 0.5 and low >= 0.8 * float(np.median(np.concatenate(clear))):
        _warn(f"the PSF's faces sit at {low / peak:.1%} of its peak or more, a flat background (a camera "
              "offset?) that deconvolution takes for light of the PSF: subtract it from the PSF, or distill "
              "the PSF from beads with 'deconv3d psf distill'", stacklevel=4)
    _warn_of_clipped_noise(psf, np.concatenate([f.ravel() for f in planes]))


#: :func:`_warn_of_clipped_noise` looks at faces with at least this share of zero voxels ...
CLIPPED_ZEROS = 0.15
#: ... of which at least this share lie beside a positive voxel of their face (speckle, not a region) ...
CLIPPED_SPECKLE = 0.6
#: ... and warns when the faces' mean, over the whole box, comes to this share of the PSF's light or more.
CLIPPED_SHARE = 0.05


def _warn_of_clipped_noise(psf: np.ndarray, faces: np.ndarray) -> None:
    """Warn of a bead's noise clipped at zero (what the refusal of negative values asks for): its
    positive half is a floor that unit-sum normalisation counts as the PSF's light, and that no
    crop to 99.9 % of the light removes. A Gibson-Lanni bead of peak 1000 over a background of 100,
    background subtracted and clipped, had 69 % of its light in the floor and a prepared peak 0.32
    of the true one, without a word: its faces were 49 % zeros, 93 % of them beside a positive voxel.
    The faces of generated PSFs hold no zero, or zeros in regions (a Gaussian's underflow: at most
    27 % of them beside a positive voxel where they were 14 % of the faces); those of distilled
    PSFs were at most 11 % zeros, or 41 % with 24 % beside a positive voxel. A raw photon-counting
    confocal bead (background 0.3-1 photons, 37-74 % zeros) is warned about too: its zeros are
    Poisson, not clipped, but its noise is a floor of the same kind (found by the review of this stop)."""
    from scipy import ndimage

    zeros = faces <= 0
    if zeros.mean() < CLIPPED_ZEROS:
        return
    cross = ndimage.generate_binary_structure(2, 1)
    planes = [np.take(psf, i, axis=a) for a in range(psf.ndim) for i in (0, -1)]
    speckled = sum(int(((f <= 0) & ndimage.binary_dilation(f > 0, cross)).sum()) for f in planes) / zeros.sum()
    share = float(faces.mean(dtype=np.float64)) * psf.size / float(psf.sum(dtype=np.float64))
    if speckled >= CLIPPED_SPECKLE and share >= CLIPPED_SHARE:
        _warn(f"the PSF's faces are {zeros.mean():.0%} zeros scattered among positive values, noise clipped at zero "
              f"(or a bead of few photons) whose positive part deconvolution takes for light of the PSF (the faces' "
              f"level over the whole box comes to {share:.0%} of its light): distill the PSF from beads with "
              "'deconv3d psf distill', which averages the noise of the tails out", stacklevel=5)


def normalize_psf(psf) -> np.ndarray:
    """Return ``psf / psf.sum()`` as float32.

    Parameters
    ----------
    psf : array_like
        The PSF, any shape (a tensor is taken too); summed and divided in float64, so a PSF in
        large units (a sum beyond float32's 3.4e38, as summed bead boxes of peak 1e37 reach) is
        normalised too: divided in float32, by a sum cast to inf, it came out all zero.

    Returns
    -------
    numpy.ndarray
        float32 array of unit sum.

    Raises
    ------
    InputError
        If the PSF is a file name, not numbers or empty, has NaN or Inf values, or its sum is not
        positive, or too large for float64.
    """
    psf = _psf_array(psf)
    refuse_empty(psf.shape, "PSF")
    psf = as_numpy(psf, dtype=np.float64)
    with np.errstate(over="ignore"):
        total = float(psf.sum())
    if np.isinf(total) and np.isfinite(psf).all():
        raise InputError("PSF values are too large to sum in float64: rescale the PSF (e.g. divide by its maximum)")
    if not np.isfinite(total):  # (NaN or Inf values were "PSF sum is not positive")
        raise InputError("PSF contains NaN or Inf values: check the PSF file or regenerate it")
    if not total > 0:
        raise InputError("PSF sum is not positive: check the PSF file or regenerate it")
    return (psf / total).astype(np.float32)
