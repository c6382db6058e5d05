"""Point-spread functions: generate, validate, normalise, centre, crop, resample, distil.

Everything here works on arrays (numpy, float32 out); loading a PSF file is the
caller's job (:func:`deconv3d.io.read_image`).  Shapes and voxel sizes are
``(z, y, x)`` for 3D and ``(y, x)`` for 2D, voxel sizes and wavelengths in
micrometres.  The centre of an array of length ``n`` is index ``(n - 1) // 2``.

Modules: :mod:`~deconv3d.psf.generate` (psfmodels), :mod:`~deconv3d.psf.validate` (validate, normalise),
:mod:`~deconv3d.psf.center_crop` (centre, crop), :mod:`~deconv3d.psf.prepare` (resample, prepare) and
:mod:`~deconv3d.psf.distill` (beads, with :mod:`~deconv3d.psf.bead_detection` and
:mod:`~deconv3d.psf.bead_boxes`).
"""

from deconv3d.psf.center_crop import CROP_SLACK, center_psf, crop_psf, fit_psf
from deconv3d.psf.distill import distill_psf
from deconv3d.psf.generate import PSF_MODELS, generate_psf
from deconv3d.psf.prepare import prepare_psf, resample_psf
from deconv3d.psf.validate import normalize_psf, validate_psf

__all__ = [
    "PSF_MODELS",
    "generate_psf",
    "validate_psf",
    "normalize_psf",
    "center_psf",
    "crop_psf",
    "resample_psf",
    "prepare_psf",
    "distill_psf",
    "fit_psf",
    "CROP_SLACK",
]
