"""PSFs generated from microscope parameters through psfmodels (Gaussian, Gibson-Lanni, vectorial).

The models, what deconv3d does around them, and their references: :func:`generate_psf`.
"""

from __future__ import annotations

import threading

import numpy as np

from deconv3d._voxel import checked_voxel_size, format_sizes, refuse_nanometres
from deconv3d.errors import WARNINGS_LOCK, InputError
from deconv3d.psf.center_crop import _core_centroid
from deconv3d.psf.prepare import _centred_zoom, _voxel_integrated
from deconv3d.psf.validate import _positive_ints, normalize_psf

#: Names accepted by :func:`generate_psf`, mapped to the psfmodels model names.
PSF_MODELS = {"gaussian": "gaussian", "gibson-lanni": "scalar", "vectorial": "vectorial"}


def generate_psf(model, shape, voxel_size, na, wavelength, ni=1.515, ns=1.33, depth=0.0) -> np.ndarray:
    """Compute a widefield PSF with psfmodels.

    Parameters
    ----------
    model : {"gaussian", "gibson-lanni", "vectorial"}
        ``"gibson-lanni"`` is the scalar model of Gibson & Lanni [1]_,
        ``"vectorial"`` the vectorial model of Aguet et al. [2]_, ``"gaussian"``
        a Gaussian approximation [4]_; all computed by psfmodels [3]_.
    shape : tuple of int
        ``(z, y, x)`` or ``(y, x)`` in voxels; the PSF's core sits at index ``(n - 1) // 2``
        along each axis: the point source laterally, and along z its best focus, which with
        ``depth`` above 0 and ``ns != ni`` lies away from the source's nominal focus (the focal
        shift; see Notes). Along z the focus moves away from the coverslip, deeper into the
        sample, as the index grows (psfmodels' focal positions); for a stack whose first plane is
        the deepest, flip the PSF along z (``psf[::-1]``). With ``depth`` above 0 and ``ns != ni``
        the two directions differ.
    voxel_size : float or tuple of float
        Voxel size in micrometres, one per axis of ``shape``, or one number for isotropic voxels.
    na : float
        Numerical aperture; ``0 < na < ni``.
    wavelength : float
        Emission wavelength in micrometres (e.g. 0.52).
    ni : float, optional
        Refractive index of the immersion medium (design and actual).
    ns : float, optional
        Refractive index of the sample (not read by ``"gaussian"``, which has no sample index).
    depth : float, optional
        Depth of the point source below the coverslip in micrometres; with
        ``ns != ni`` it adds the depth-dependent spherical aberration (not
        modelled by ``"gaussian"``, which refuses a depth above 0).

    Returns
    -------
    numpy.ndarray
        float32 PSF of ``shape`` with unit sum.  A 2D shape gives the plane of best focus.

    Raises
    ------
    InputError
        For an unknown model or a non-physical parameter, and for a PSF nearly flat across its box
        in its plane of best focus (:data:`FLAT_LEVEL`; voxel sizes in other units than µm).
    GridTooLarge
        (an :class:`InputError`) For a shape computed on more than :data:`MAX_GENERATED_VOXELS` voxels, and
        when the computation runs out of memory (a MemoryError, as pybind11 raises psfmodels'
        ``std::bad_alloc``): it names the shape, its grid and the memory estimated for it.

    Notes
    -----
    The Gibson-Lanni model [1]_ is scalar diffraction through a stratified medium: with
    ``k = 2π / wavelength`` and ``ρ`` the normalised radius in the objective's pupil, the
    intensity at lateral distance ``r`` and focal position ``z`` is

    ``h(r, z) = |∫_0^1 J_0(k NA r ρ) exp(i k OPD(ρ, z)) ρ dρ|^2``,

    where ``OPD`` is the optical path difference, along the ray through ``ρ``, between the
    actual layers (sample of index ``ns`` down to the source's ``depth``, coverslip, immersion
    of index ``ni``) and the objective's design conditions; defocus enters through the
    immersion layer's thickness. A sample index that differs from the immersion index makes
    the sample layer's term a spherical aberration that grows with ``depth``. The vectorial
    model [2]_ keeps the same optical path difference but computes the components of the
    electric field in the focal region instead of a scalar amplitude (polarisation matters at
    high NA) and sums their intensities. The Gaussian model is a 3D Gaussian whose lateral and
    axial widths come from NA, ``ni`` and the wavelength through Zhang et al.'s fits [4]_
    (paraxial below NA 0.7, non-paraxial above); it ignores ``ns``, and a ``depth`` above 0
    is refused for it.

    deconv3d calls ``psfmodels.make_psf`` [3]_ with the design immersion index equal to
    ``ni``, psfmodels' default coverslip (170 µm of index 1.515, as designed) and working
    distance (150 µm), and its default 3x oversampling, which approximates integration over a
    pixel in the scalar and vectorial models. The model is computed on a square lateral grid
    at the finer of the two lateral voxel sizes, one voxel wider than the requested field on
    each side (where the lateral voxel sizes differ, at a third of it without psfmodels'
    oversampling, and with room for a voxel's width: :data:`PIXEL_SUBSAMPLES`), with the
    requested number of planes rounded up to odd (``z`` step
    ``voxel_size[0]``, source at ``depth``), centred on the core: with ``depth`` above 0 and
    ``ns != ni`` the brightest focus lies away from the nominal one (1.65 µm deeper for a
    source 30 µm deep in water under oil, NA 1.3), found on the axis first (:func:`_focal_shift`);
    where the stack's core then lies more than :data:`CORE_OFFSET_TOLERANCE` planes off its centre
    plane, the planes are computed again about the core.
    When the
    lateral voxel sizes differ, the volume is averaged over each voxel's extent along both
    lateral axes (the scalar and vectorial models; the Gaussian is point-sampled, as psfmodels
    computes it) and resampled onto them by cubic-spline interpolation about the centre;
    otherwise it is cropped. The result is cut to ``shape``
    with the source at ``(n - 1) // 2``, clamped at 0 (interpolation can undershoot) and
    scaled to unit sum.

    References
    ----------
    .. [1] S. F. Gibson and F. Lanni, "Experimental test of an analytical model of
       aberrations in an oil-immersion objective lens used in three-dimensional light
       microscopy", J. Opt. Soc. Am. A 8(10), 1601-1613 (1991); also J. Opt. Soc. Am. A
       9(1), 154-166 (1992), the version psfmodels cites.
    .. [2] F. Aguet, S. Geissbühler, I. Märki, T. Lasser and M. Unser, "Super-resolution
       orientation estimation and localization of fluorescent dipoles using 3-D steerable
       filters", Opt. Express 17(8), 6829-6848 (2009); F. Aguet, "Super-resolution
       fluorescence microscopy based on physical models", EPFL thesis 4418 (2009).
    .. [3] T. Lambert, psfmodels: scalar and vectorial models of the microscope PSF,
       https://github.com/tlambert03/PSFmodels (Python bindings of F. Aguet's C++ code).
    .. [4] B. Zhang, J. Zerubia and J.-C. Olivo-Marin, "Gaussian approximations of
       fluorescence microscope point-spread function models", Appl. Opt. 46(10),
       1819-1829 (2007).

    Examples
    --------
    >>> psf = generate_psf("gaussian", (17, 33, 33), (0.2, 0.1, 0.1), na=1.2, wavelength=0.52)
    >>> psf.shape, round(float(psf.sum()), 4)
    ((17, 33, 33), 1.0)
    """
    model_name, shape3, voxel3 = _check_generate_args(model, shape, voxel_size, na, wavelength, ni, ns, depth)
    nz, ny, nx = shape3
    dz, dy, dx = voxel3
    fine, dxy, step, n_gen = _lateral_grid(model_name, ny, nx, dy, dx)
    voxels = (nz | 1) * n_gen**2
    _refuse_a_huge_grid(shape, voxel3[-len(shape):], voxels)
    def planes_about(shift):  # the stack's planes centred ``shift`` µm below the nominal focus
        return _make_psf(model_name, _focal_positions(nz | 1, dz, depth + shift), n_gen, dxy, na, wavelength, ni, ns,
                         depth, oversample=3 if fine == 1 else 1)

    def computed():
        shift = _focal_shift(model_name, na, wavelength, ni, ns, depth)
        psf = planes_about(shift)
        if shift and nz > 1 and abs(error := _core_offset(psf)) > CORE_OFFSET_TOLERANCE:
            psf = planes_about(shift + error * dz)
        if fine > 1:
            psf = _voxel_integrated(psf, step)
        return _centred_zoom(psf, step, (nz, ny, nx), order=3)

    try:
        psf = computed()
    except MemoryError:  # (psfmodels' std::bad_alloc too)
        raise _out_of_memory(shape, voxel3[-len(shape):], voxels) from None
    psf = np.clip(psf, 0, None)
    _refuse_a_flat_psf(psf, model, voxel3, na, wavelength)
    if len(shape) == 2:
        psf = psf[0]
    return normalize_psf(psf)



def _lateral_grid(model_name: str, ny: int, nx: int, dy: float, dx: float) -> tuple:
    """``(fine, dxy, step, n_gen)``: the lateral grid the PSF of ``ny`` x ``nx`` voxels of ``dy`` x ``dx`` µm
    is computed on, ``n_gen`` (odd) points a side ``dxy`` µm apart, ``step`` the voxel in grid steps per axis.
    Unequal lateral voxels: a grid ``fine`` = PIXEL_SUBSAMPLES times finer without psfmodels' own
    oversampling, then averaged over each voxel (scalar and vectorial models; psfmodels' Gaussian is
    point-sampled at any pixel size)."""
    fine = PIXEL_SUBSAMPLES if not np.isclose(dy, dx, rtol=1e-6, atol=0) and model_name != "gaussian" else 1
    dxy = min(dy, dx) / fine
    step = (1.0, dy / dxy, dx / dxy)
    half = max((ny - 1) // 2 * dy, (nx - 1) // 2 * dx) / dxy
    margin = 1 if fine == 1 else int(np.ceil(max(step) / 2)) + 1  # the integration reaches half a voxel past the box
    return fine, dxy, step, 2 * (int(np.ceil(half - 1e-9)) + margin) + 1


def _out_of_memory(shape, voxel, voxels: int) -> "GridTooLarge":
    """The refusal of a PSF of ``shape`` at ``voxel`` µm whose grid of ``voxels`` points ran out of memory."""
    return GridTooLarge(f"not enough memory to compute a PSF of shape {' x '.join(map(str, shape))} at "
                        f"{format_sizes(voxel)} µm on {voxels:.3g} voxels (up to "
                        f"{voxels * GENERATED_BYTES_PER_VOXEL / 1e9:.3g} GB at {GENERATED_BYTES_PER_VOXEL} bytes a "
                        "voxel)")


def _refuse_a_flat_psf(psf: np.ndarray, model, voxel, na, wavelength) -> None:
    """Refuse a PSF whose plane of best focus is nearly flat across its box: a voxel beside the
    centre, on a Y or X side of 3 or more, at :data:`FLAT_LEVEL` of its peak or more. Voxel sizes
    given in millimetres (0.0002 0.0001 0.0001) made such a block of a 31 x 63 x 63 box, written
    without a word, which deconvolution then took for a box blur."""
    plane = psf[int(np.unravel_index(np.argmax(psf), psf.shape)[0])]
    if min(plane.shape) < 3:
        return
    side = max(float(plane[[0, -1]].max()), float(plane[:, [0, -1]].max())) / float(plane.max())
    if side >= FLAT_LEVEL:
        ny, nx = plane.shape
        raise InputError(f"the {model} PSF for NA {na} and wavelength {wavelength} µm is nearly flat across its "
                         f"{ny} x {nx} voxel box ({ny * voxel[1]:.3g} x {nx * voxel[2]:.3g} µm; its sides at "
                         f"{side:.0%} of its peak): give the voxel size in micrometres (e.g. 0.1 laterally), or more "
                         "voxels along Y and X")


#: :func:`generate_psf` refuses a PSF whose in-focus sides reach this share of its peak: its box holds
#: only the top of its core. (A well-sampled widefield PSF's neighbours of the centre voxel are at about half
#: the peak: NA 1.2 at 0.1 µm, 0.56; an NA 0.5 PSF in a box of 3 x 3 voxels of 0.1 µm, narrower than its
#: core, 0.91.)
FLAT_LEVEL = 0.9


#: The most voxels :func:`generate_psf` computes a PSF on (512^3, as :data:`~deconv3d.psf.prepare.MAX_RESAMPLED_VOXELS`):
#: psfmodels took 40 (vectorial) to 115 (gaussian) bytes a voxel at 61 x 257 x 257, and a shape of 2001
#: on each side ended in "not enough memory for this run ... use smaller sizes (batch, widths, levels,
#: chunks) or set --memory-limit", options 'deconv3d psf' does not have.
MAX_GENERATED_VOXELS = 512**3
#: The most memory a voxel of the grid took psfmodels (gaussian, 61 x 257 x 257; :data:`MAX_GENERATED_VOXELS`):
#: the estimate :class:`GridTooLarge` gives when the computation runs out of memory.
GENERATED_BYTES_PER_VOXEL = 115


class GridTooLarge(InputError):
    """:func:`generate_psf`'s refusal of a grid it cannot compute (over :data:`MAX_GENERATED_VOXELS` voxels, or
    out of memory). ``problem`` says so without a fix, for a caller that chose the shape itself to name its
    own (``deconvolve --psf-model``); the message adds "give a smaller shape"."""

    def __init__(self, problem: str, shape_name: str = "shape"):
        self.problem = problem
        super().__init__(f"{problem}: give a smaller {shape_name}, a few times the PSF's extent (e.g. 31 63 63 at "
                         "0.2 0.1 0.1 µm)")


def _refuse_a_huge_grid(shape, voxel, voxels: int) -> None:
    """Refuse, before psfmodels allocates it, a grid of more than :data:`MAX_GENERATED_VOXELS`."""
    if voxels > MAX_GENERATED_VOXELS:
        raise GridTooLarge(f"a PSF of shape {' x '.join(map(str, shape))} at {format_sizes(voxel)} µm is computed on "
                           f"{voxels:.3g} voxels, more than the {MAX_GENERATED_VOXELS:.3g} deconv3d computes")


_PSFMODELS_LOCK = threading.Lock()

#: Samples per finer lateral voxel over which :func:`generate_psf` averages a PSF with unequal lateral voxel
#: sizes (psfmodels' own oversampling of square pixels is 3). Computed at the finer voxel size and sampled at
#: the coarser voxels' centres, a PSF with 0.1 x 0.5 µm pixels had held 97 % of its light in its central column
#: instead of 91 %, as narrow as a point sample (L1 error 0.17 against psfmodels on a 0.01 µm grid summed
#: over each pixel; 0.25 with 0.1 x 0.2 µm pixels).
PIXEL_SUBSAMPLES = 3


def _focal_positions(n: int, dz: float, centre: float) -> np.ndarray:
    """``n`` focal positions ``dz`` apart about ``centre`` (µm from the coverslip), as psfmodels
    spaces them when given a plane count."""
    half = (n - 1) * dz / 2
    return np.linspace(centre - half, centre + half, n)


#: Focal positions along the axis that :func:`_focal_shift` computes the on-axis intensity at.
FOCAL_SCAN_POSITIONS = 401


def _focal_shift(model, na, wavelength, ni, ns, depth) -> float:
    """How far (µm, positive deeper) the PSF's core lies from the source's nominal focal position.

    With ``ns != ni`` the sample layer's spherical aberration moves the brightest focus away from
    the nominal one, by a fair share of ``depth · |1 - ns/ni|`` (1.65 µm at 30 µm deep, NA 1.3,
    water in oil). psfmodels centres its planes on the nominal position, so a box sized for the
    image lost the light on one side of the core when :func:`~deconv3d.psf.center_crop.center_psf`
    moved the core to the centre (8 empty planes of 23). Measured on the axis, over ``±(2 depth
    |1 - ns/ni|`` plus four widefield depths of field ``λ ni / NA²)``: the intensity-weighted
    centroid of the samples above half the peak around it, as ``center_psf`` measures the core.
    """
    if depth == 0 or ns == ni:
        return 0.0
    reach = 2 * depth * abs(1 - ns / ni) + 4 * wavelength * ni / na**2
    z = np.linspace(-reach, reach, FOCAL_SCAN_POSITIONS)
    axial = _make_psf(model, depth + z, 1, 0.1, na, wavelength, ni, ns, depth)[:, 0, 0]
    peak = int(np.argmax(axial))
    low, high = peak, peak
    while low > 0 and axial[low - 1] >= axial[peak] / 2:
        low -= 1
    while high < len(axial) - 1 and axial[high + 1] >= axial[peak] / 2:
        high += 1
    core = axial[low:high + 1]
    return float(np.dot(core, z[low:high + 1]) / core.sum())


#: Planes by which :func:`generate_psf` lets the core's centroid lie off the centre plane before it
#: computes the planes again about the core (up to half a plane, where a bead happens to sit, as
#: :func:`~deconv3d.psf.center_crop.center_psf` takes it): the on-axis estimate (:func:`_focal_shift`) put the
#: core 0.6 planes off at 100 µm deep (Gibson-Lanni, NA 1.3, 0.1 µm planes, water under oil) and 1.8
#: planes off at 500 µm (NA 1.4, 0.2 µm planes), where centring it moved 7 % of the light out of the box.
CORE_OFFSET_TOLERANCE = 0.5


def _core_offset(psf: np.ndarray) -> float:
    """Planes (positive deeper) from a PSF stack's centre plane to its core's centroid, as
    :func:`~deconv3d.psf.center_crop.center_psf` measures it (the voxels above half the peak)."""
    return float(_core_centroid(psf)[0]) - (psf.shape[0] - 1) / 2


def _make_psf(model, zv, nxy, dxy, na, wavelength, ni, ns, depth, oversample: int = 3) -> np.ndarray:
    """Call psfmodels at the focal positions ``zv`` (µm from the coverslip; imported lazily: it
    is slow to import), with ``oversample`` samples per pixel along each lateral axis."""
    import warnings

    import psfmodels

    # One call at a time: two threads making the first call at once hung the whole process
    # (inside psfmodels, holding the interpreter lock), and warning filters are process-wide.
    with _PSFMODELS_LOCK, WARNINGS_LOCK, warnings.catch_warnings():  # its RuntimeWarnings would precede our error
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            psf = psfmodels.make_psf(
                zv, nxy, dxy=dxy, pz=depth, NA=na, wvl=wavelength,
                ns=ns, ni=ni, ni0=ni, model=model, oversample_factor=oversample,
            )
        except (ArithmeticError, ValueError, np.linalg.LinAlgError):
            psf = np.full(1, np.nan)  # refused below, with the parameters
    if not np.isfinite(psf).all() or not psf.max() > 0:
        raise InputError(f"psfmodels could not compute a {model} PSF for NA {na}, wavelength {wavelength} µm, "
                         f"ni {ni}, ns {ns}, depth {depth} µm: check these parameters")
    return psf


#: The largest refractive index accepted for the immersion medium and the sample (diamond's is 2.42).
REFRACTIVE_INDEX_MAX = 2.5


def _check_generate_args(model, shape, voxel_size, na, wavelength, ni, ns, depth):
    """Validate :func:`generate_psf` arguments; return (psfmodels name, 3D shape, 3D voxel)."""
    check_optics(model, na, wavelength, ni, ns, depth)
    shape = _positive_ints(shape, "PSF shape")
    voxel = checked_voxel_size(voxel_size, len(shape))
    refuse_nanometres(voxel, "give it in micrometres (e.g. 0.3 0.1 0.1)")  # such a PSF would be one voxel
    if len(shape) == 2:
        shape, voxel = (1, *shape), (voxel[0], *voxel)
    return PSF_MODELS[model], shape, voxel


#: Emission wavelengths (µm) that generate_psf accepts: ultraviolet to short-wave infrared.
WAVELENGTH_RANGE = (0.2, 2.0)


def check_optics(model, na, wavelength, ni=1.515, ns=1.33, depth=0.0) -> None:
    """Refuse a PSF model or microscope parameters that :func:`generate_psf` cannot use, with a
    one-line :class:`~deconv3d.errors.InputError` naming the fix (also run on a batch
    configuration before its first file)."""
    if model not in PSF_MODELS:
        raise InputError(f"unknown PSF model {model!r}: choose one of {', '.join(PSF_MODELS)}")
    for name, value in (("NA", na), ("wavelength", wavelength), ("ni", ni), ("ns", ns), ("depth", depth)):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise InputError(f"{name} must be a number, got {value!r}")
    for name, value in (("NA", na), ("wavelength", wavelength), ("ni", ni), ("ns", ns)):
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number, got {value}")
    for name, value in (("ni", ni), ("ns", ns)):
        if not 1.0 <= value <= REFRACTIVE_INDEX_MAX:
            raise InputError(f"{name} {value:g} is not the refractive index of an immersion medium or a sample: give "
                             f"one from 1 to {REFRACTIVE_INDEX_MAX:g} (water 1.33, glycerol 1.47, oil 1.515)")
    if na >= ni:
        raise InputError(f"NA {na} must be below the immersion index ni={ni}: lower the NA or set --ni")
    if wavelength >= 100:
        raise InputError(f"wavelength {wavelength} looks like nanometres: give it in micrometres (e.g. 0.52)")
    if not WAVELENGTH_RANGE[0] <= wavelength <= WAVELENGTH_RANGE[1]:  # 0.052 for 0.52: a PSF of one voxel
        raise InputError(f"wavelength {wavelength} µm is not an emission wavelength: give one from "
                         f"{WAVELENGTH_RANGE[0]:g} to {WAVELENGTH_RANGE[1]:g} µm (e.g. 0.52 for green)")
    if not (np.isfinite(depth) and depth >= 0):
        raise InputError(f"depth must be >= 0 micrometres below the coverslip, got {depth}")
    if model == "gaussian" and depth > 0:
        raise InputError(f"the gaussian PSF model has no depth-dependent aberration (depth {depth} µm given): "
                         "use the gibson-lanni or vectorial model, or drop --depth")


def generated_psf_shape(image_shape, voxel, na, wavelength) -> tuple[int, ...]:
    """The box of a PSF generated for a 3D image: odd sides, about 8 Airy radii laterally, the
    image's depth axially, never larger than the image."""
    airy = 0.61 * wavelength / na
    lateral = [2 * int(round(8 * airy / d)) + 1 for d in voxel[1:]]
    wanted = [image_shape[0]] + lateral
    return tuple(min(w, n if n % 2 else n - 1) for w, n in zip(wanted, image_shape))
