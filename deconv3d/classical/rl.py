"""Richardson-Lucy deconvolution: the public entry point and the replayable acceleration schedule."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from deconv3d._fft_shapes import kernel_origin
from deconv3d._tensors import checked_result, resolve_device
from deconv3d.classical._iterate import _run
from deconv3d.classical._problem import (_build_problem, _check_accelerate, _check_inputs, _check_options,
                                         _censor, _check_clipped, _check_weights, _holdout_problem,
                                         _times_power_of_two, _working_data)
from deconv3d.classical._rl_tv import _default_tv_scale, _largest_value, _scaled, _tv_for
from deconv3d.errors import InputError

# _default_tv_scale and _largest_value, moved to _rl_tv with the TV term, stay importable from here (the pipeline's).
__all__ = ["Callback", "richardson_lucy", "rl_alpha_schedule", "_default_tv_scale", "_largest_value"]

Callback = Callable[[int, torch.Tensor], Optional[bool]]


def richardson_lucy(
    image,
    psf,
    iterations: int = 20,
    *,
    boundary: str = "bertero",
    tv_weight: float = 0.0,
    accelerate: bool | Sequence[float] = False,
    tol: float | None = None,
    callback: Callback | None = None,
    voxel_size: Sequence[float] | None = None,
    device="auto",
    dtype: torch.dtype = torch.float32,
    extended: bool = False,
    weights=None,
    tv_scale: float | None = None,
    clipped=None,
):
    """Richardson-Lucy deconvolution with optional TV regularisation and acceleration.

    Parameters
    ----------
    image : array_like or torch.Tensor
        2D or 3D image (intensities, not normalised) of any real dtype: integers (uint8, uint16
        ...), bool, float16/32/64, either byte order, views and read-only arrays are cast to
        ``dtype`` in a copy, never written; complex values are refused. Negative values are set to
        zero (see Notes).
    psf : array_like or torch.Tensor
        PSF with the image's dimensionality, of any real dtype as the image; scaled to unit sum
        here if it is not (a PSF's total only scales the result).
    iterations : int
        Maximum number of iterations, a whole number of 0 or more (``3.0`` is taken, ``2.5``,
        ``True`` and negative counts are refused). 0 returns the flat start: the data's mean
        (negative values set to zero) everywhere (``"reflect"``: the mirrored field's mean),
        where scikit-image's ``num_iter=0`` returns 0.5.
    boundary : {"bertero", "zero", "reflect", "periodic"}
        ``"zero"`` treats the object as zero outside the image (identical to
        :func:`skimage.restoration.richardson_lucy` with ``clip=False`` for odd PSF sides;
        for an even side scikit-image's mirrored "same" convolution is one voxel off the
        adjoint, which deconv3d uses); ``"reflect"``
        mirrors the data across the image border by the PSF half-size and runs the Bertero
        model on that mirrored field (costlier than ``"bertero"``: its FFT is a PSF size
        longer per axis), so that no domain edge of the mirrored field rings into the image
        (on 2D data that follow the mirror model, its border error came within 1% of that of
        RL with the exact mirror model, forward ``H P u`` and adjoint ``P^T H^T``; zero-boundary
        RL on the mirrored field had 1.1-2.1x the interior's); ``"bertero"`` (default) estimates the
        object on a domain extended by the PSF size, compares with the data inside the
        image only and normalises by ``H^T 1``, which removes ringing at the borders [3]_
        (a feature sharper than the PSF on the border itself, such as a hot pixel, is then
        explained by light from outside the field and comes back dim: remove hot pixels
        first, or use ``"reflect"``);
        ``"periodic"`` wraps the image around (circulant model at the image shape, the
        fastest and the one RedLionfish's CPU path uses; it rings at the borders).
    tv_weight : float
        Weight λ of the total-variation term [2]_; 0 disables it. Must be below
        ``1 / sum_i(2 / s_i)`` (``s_i`` the voxel spacing relative to the finest axis;
        1/6 for isotropic 3D) so that the update stays positive. In practice keep it at
        0.001-0.01: on a 100-photon phantom (zero boundary, 60 iterations) plain RL scored
        32.0 dB, the TV term 32.7 dB at 0.002 and 33.0 at 0.01, but 32.3 at 0.03 and 31.4 at
        0.1 (smoother than the object). The TV step does not keep the total intensity, as RL
        does: RL-TV's total came out below RL's by 0.1-0.4 % at 0.002, 0.5-1.5 % at 0.01,
        1.4-3.5 % at 0.03 and 3-8 % at 0.1 (Poisson phantoms in 2D and 3D, the demo's data),
        so measure total intensities on plain RL's result.
    tv_scale : float, optional
        The intensity scale of the TV term: ``|∇u|`` is regularised by at least
        ``1e-3 * tv_scale`` so that flat areas stay finite (see Notes). Default: the image's
        largest value (over the voxels of positive ``weights``); not the largest absolute one:
        RL sets negative values to zero, so a negative outlier does not set it. It includes the
        voxels that the zero boundary leaves out of the fit (the faces a one-sided PSF sends no
        light to), so a bright voxel there sets it too; the chunked pipeline knows the volume's
        values only, and takes the same definition for every block. A block
        of a larger volume passes the volume's (the chunked pipeline does): with its own, a
        dim block was regularised otherwise than in a whole-volume run (up to 2 % of its
        peak apart at TV weight 0.002, with a step at the seams).
    accelerate : bool or sequence of float
        Biggs-Andrews vector extrapolation [4]_: same result in fewer iterations, with the
        adaptive step held to at least 0.65 (``deconv3d.classical._iterate.ALPHA_FLOOR``: plain
        RL's 20-iteration quality up to three iterations sooner, never later, than from Biggs &
        Andrews' own step, which lags after the flat start). A sequence
        gives a fixed step schedule ``α_1, α_2, ...`` (see :func:`rl_alpha_schedule`) instead
        of the adaptive one (iterations past its end take plain RL steps, ``α = 0``): every voxel's
        update is then local, so chunked runs over blocks of one volume agree with a whole-volume run
        (the adaptive α depends on the whole image).
    tol : float, optional
        Stop when ``||u_k+1 - u_k|| / ||u_k||`` falls below ``tol``, measured on the image's
        field, not on Bertero's margins (also with ``extended=True``) or the mirrored copies of
        ``reflect``. With adaptive acceleration the change is not monotone, as the step varies
        from one iteration to the next, and a ``tol`` can stop the run where it dips (on an
        8 x 32 x 32 Poisson phantom, iterations 16-30 changed by 7.1e-3 to 3.1e-2 while the
        estimate was still 61 % from converged; before the step had its floor, it reset to 0 now
        and then, and the change dipped to one plain iteration's). For a stop at
        convergence, take a smaller ``tol`` or ``accelerate=False``.
    callback : callable, optional
        ``callback(iteration, estimate)`` after every iteration (1-based); returning
        ``True`` stops early (use it for progress bars and cancel buttons). Any true value
        stops it (1, a non-empty string): so does ``lambda i, e: bar.update()`` with tqdm, whose
        ``update`` returns True when it redraws, which ended a 20-iteration run after the
        first; end such a callback with ``return None``. An exception it raises ends the call. ``estimate`` is
        a torch tensor on ``device`` (also for array input) that views the working estimate
        on the image's field, without a copy per iteration: it is valid during the call only,
        so copy it to keep it (``estimate.clone()``, or ``estimate.cpu().numpy().copy()``),
        and do not write to it (that changes the run). For an image whose peak lies beyond
        ``2**±32``, which runs divided by a power of two (see Notes), it is a copy in the image's units.
    voxel_size : float or sequence of float, optional
        Voxel size, one value per image axis ((z, y, x) for 3D, (y, x) for 2D) or one number for
        isotropic voxels; used to weight the TV gradient of anisotropic data.
    device : {"auto", "cpu", "cuda"} or torch.device
    dtype : torch.dtype
        Working precision (float32 by default). It also sets the dynamic range kept: where
        the data stay below about 1e-6 of their peak in float32 (2e-15 in float64), the FFT's
        round-off level, the estimate fades; use float64 for fainter structure next to a
        much brighter object.
    extended : bool
        Bertero boundary only: return the estimate on the whole extended domain, of shape
        ``image.shape + psf.shape - 1``, with the image's field starting at index
        ``k - 1 - origin`` per axis (:func:`deconv3d.fft.kernel_origin`): the object that
        sends light into the field from outside it, whose ``"valid"`` convolution with the
        PSF is the predicted image. That prediction keeps the field's total (within 1e-7 of the
        data's), but the margins' own values are loosely bound: a margin voxel that sends little light
        into the field can hold much light at little cost to the fit, so the farthest margins grow
        with the iterations (on a 12 x 32 x 32 crop of a bead scene the extended estimate's total was
        2.2x the data's after 10 iterations and 11x after 300, its peak in a margin corner 35x the
        field's): read the margins as light from outside, not as intensities to measure.
    weights : array_like, optional
        Per-voxel data weights with the image's shape, in [0, 1]: 0 leaves a voxel out of
        the fit (dead pixels, voxels held out for validation; clipped ones: ``clipped``), 1 (the default
        everywhere) uses it. The back-projection ``H^T(y / H u)`` becomes
        ``H^T(w y / H u) H^T(1) / H^T(w)`` (the weighted Poisson likelihood's update, with
        the boundary's own normalisation kept), so weights of 1 give plain RL and the
        estimate never depends on the value of a voxel of weight 0. A voxel whose light lands
        less than 10 % on kept voxels (``H^T([w > 0]) < 0.1 H^T(1)``: deep inside a left-out region
        wider than the PSF, whatever its own weight, and a lone voxel of weight 0 where the PSF's
        centre holds over 90 % of the light) is not estimated and comes out 0; normalised by so little data, its
        update grew without bound (accelerated RL on an object clipped at the data's 90th
        percentile: RMS error 278 against 110 with no weights, 108.5 with the 10 % rule).
    clipped : array_like of bool, optional
        With the image's shape: True where the detector clipped (saturated) the value, which then
        says only that the intensity was at least that value. Those data are fitted as lower bounds
        (right-censored Poisson data): the E-step of EM [6]_ replaces a clipped count by its
        expectation given that it is at least the value, taken as ``max(y, H u)``, so the ratio in the
        back-projection is ``max(y / H u, 1)`` there. Where the prediction is below the clipped value it
        pushes the estimate up; where it is above, the datum agrees with it and neither pushes nor pulls.
        Every voxel is estimated, with the normal update and normalisation. Leaving clipped voxels out
        instead (``weights`` 0) lets the few unclipped voxels around a wide clipped region carry its
        whole fit. RMS error against the truth (accelerated, Bertero, 20 iterations), with ``clipped``,
        fitting the clipped values as data, and with ``weights`` 0 there and the clipped value kept where
        RL did not estimate (what ``deconvolve --saturation`` did before): three seeded phantoms clipped
        at their 99th percentile 14.9-21.4, 17.2-21.9 and 18.1-22.6; an ellipsoid clipped at its 90th
        percentile 85, 108 and 116; where only bead cores were clipped (99.5th percentile) leaving
        them out did best (33-35, 52-58 and 28-29), by converging faster: at 80 iterations 21.9 with
        ``clipped`` against 21.4 (one seed). With the zero boundary, clipped regions at the
        image's faces are fitted worse than as data (the three phantoms: 36.1-54.1 against 29.2-48.3):
        light from outside the field must come from the faces' voxels, and clipped data never pull
        them down; use ``"bertero"`` there. Combined with ``weights``, a clipped voxel's bound counts
        with its weight.

    Returns
    -------
    ndarray or torch.Tensor
        Non-negative estimate with the image's shape (extended as above with ``extended``):
        an ndarray (float32 unless ``dtype`` says otherwise) for array input, a tensor on
        ``device`` for tensor input.

    Raises
    ------
    InputError
        For an image or PSF that is not 2D/3D numbers of matching dimensionality, has NaN or
        Inf values, a PSF that is negative, all zero or larger than the image, or an invalid
        option; the message names the fix.

    Warns
    -----
    RuntimeWarning
        For an image with negative values and no positive one (background subtracted past
        zero): it comes back all zeros.

    Notes
    -----
    Negative data values (read noise around a zero background) are set to zero first: the
    Poisson model behind RL has no negative counts. RL is scale-equivariant, ``u(m y) = m u(y)``,
    and so is this function at any intensity the working dtype holds (1e-30 to 1e30 times the
    data agree to float32's round-off; adaptive acceleration amplifies round-off, see below): an
    image whose peak (over the voxels of positive ``weights``)
    lies beyond ``2**±32`` is deconvolved divided by a power of two, which changes no bit of the
    arithmetic, and the result multiplied back, so that no absolute guard (the ratio's floor, the TV
    term's least ε) and no float32 overflow of ``|∇u|²`` shapes it.
    The update is ``u_{k+1} = u_k / (1 - λ div(∇u_k / |∇u_k|_ε)) · H^T(y / (H u_k))`` [1]_ [2]_,
    with ``H`` the convolution with the PSF and ``H^T`` its transpose (correlation). The
    Bertero boundary replaces ``H^T(·)`` by ``H^T(M ·) / H^T(M 1)`` with ``M`` the image
    mask on the extended domain. ``|∇u|_ε = sqrt(|∇u|² + ε²)`` with, per voxel,
    ``ε = max(1e-3 · tv_scale, λ u Σ_i 4 / s_i²)``: the second term keeps the explicit TV
    step stable on flat areas, which with ``1e-3 · tv_scale`` alone became a checkerboard
    flipping every iteration (±0.5 % of a flat image at λ = 0.002, ±2.5 % at 0.01).

    Intensities stay in the data's units. With the zero boundary the estimate's total is that of
    the data (negative values set to zero), as for every EM step of RL with a unit-sum PSF [5]_
    (within 1e-7 in float32). With Bertero's boundary the predicted field keeps the data's total,
    but the estimate on the field need not, as light crosses the field's faces both ways: it held
    1.016-1.030x the data's total on a 12 x 32 x 32 bead volume, and 0.94-0.98x the true object's
    on crops of a larger bead scene (whose data held 0.99-1.01x it); with ``"reflect"`` the mirrored
    copies take part of the light (0.97-0.99x the data's on that volume, 0.99-1.08x the true
    object's on the crops). Adaptive acceleration amplifies round-off: accelerated runs at two
    scales, or on two channels one a multiple of the other, agreed to 4e-6 to 4e-4 of the peak after
    20-30 iterations (1e-6 without acceleration), as did a run on data changed by one ulp, and to
    4e-4 to 1e-3 with a PSF changed by 1e-5 of its peak (4e-5 without acceleration); compare intensities
    across channels or scales with ``accelerate=False`` where that matters.

    References
    ----------
    .. [1] W. H. Richardson, "Bayesian-based iterative method of image restoration",
       J. Opt. Soc. Am. 62, 55-59 (1972); L. B. Lucy, Astron. J. 79, 745 (1974).
    .. [2] N. Dey et al., "Richardson-Lucy algorithm with total variation regularization
       for 3D confocal microscope deconvolution", Microsc. Res. Tech. 69, 260-266 (2006).
    .. [3] M. Bertero and P. Boccacci, "A simple method for the reduction of boundary
       effects in the Richardson-Lucy approach to image deconvolution", A&A 437 (2005).
    .. [4] D. S. C. Biggs and M. Andrews, "Acceleration of iterative image restoration
       algorithms", Appl. Opt. 36, 1766-1775 (1997).
    .. [5] L. A. Shepp and Y. Vardi, "Maximum likelihood reconstruction for emission tomography",
       IEEE Trans. Med. Imaging 1, 113-122 (1982).
    .. [6] A. P. Dempster, N. M. Laird and D. B. Rubin, "Maximum likelihood from incomplete data via
       the EM algorithm", J. R. Stat. Soc. B 39, 1-38 (1977).

    Examples
    --------
    >>> import numpy as np
    >>> from deconv3d.classical import richardson_lucy
    >>> psf = np.ones((3, 3, 3), np.float32) / 27
    >>> image = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)
    >>> richardson_lucy(image, psf, iterations=5, device="cpu").shape
    (8, 16, 16)
    """
    return _richardson_lucy(image, psf, iterations, boundary=boundary, tv_weight=tv_weight, accelerate=accelerate,
                            tol=tol, callback=callback, voxel_size=voxel_size, device=device, dtype=dtype,
                            extended=extended, weights=weights, tv_scale=tv_scale, clipped=clipped)


def _richardson_lucy(image, psf, iterations: int, *, boundary: str = "bertero", tv_weight: float = 0.0,
                     accelerate=False, tol=None, callback=None, voxel_size=None, device="auto",
                     dtype: torch.dtype = torch.float32, extended: bool = False, weights=None, tv_scale=None,
                     tv_smoothing: str = "local", tv_differences: str = "symmetric", clipped=None):
    """:func:`richardson_lucy`, and the rules of the TV term's ε (``tv_smoothing``, one of
    :data:`~deconv3d.classical._iterate.TV_SMOOTHING`) and differences (``tv_differences``, one of
    :data:`~deconv3d.classical._iterate.TV_DIFFERENCES`): kept out of the public signature, since only
    the references of residual networks trained under the old rules need them
    (:class:`deconv3d.selfsup.config.Reference`)."""
    y, h, iterations = _checked(image, psf, iterations, boundary, tv_weight, tol, voxel_size, device, dtype)
    accelerate = _check_accelerate(accelerate)
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be a function callback(iteration, estimate), got {callback!r}")
    if not isinstance(extended, (bool, np.bool_)):  # ("no" returned the extended domain)
        raise InputError(f"extended must be True or False, got {extended!r}")
    if extended and boundary != "bertero":
        raise InputError(f"extended=True needs boundary='bertero' (the only one that estimates the object beyond "
                         f"the image), got {boundary!r}")
    problem, tv, exponent = _set_up(y, h, boundary, tv_weight, voxel_size, tv_scale, weights, clipped,
                                    tv_smoothing, tv_differences)
    if exponent and callback is not None and getattr(callback, "reads_estimate", True):
        callback = _in_callers_units(callback, exponent)
    estimate = _run(problem, iterations, tv, accelerate, tol, callback)
    if extended:  # the margins wrap around the end of the buffer: roll them in front of the image
        before = [k - 1 - o for k, o in zip(h.shape, kernel_origin(h.shape))]
        box = tuple(slice(0, n + k - 1) for n, k in zip(y.shape, h.shape))
        result = torch.roll(estimate, before, problem.dims)[box].clamp_min(0)
    else:
        result = estimate[problem.result_crop].clamp_min(0)  # a compact copy, not a view of a workspace
    checked_result(_times_power_of_two(result, exponent, inplace=True))
    return result if isinstance(image, torch.Tensor) else result.cpu().numpy()


def _checked(image, psf, iterations, boundary: str, tv_weight, tol, voxel_size, device, dtype: torch.dtype):
    """The image and PSF as tensors on ``device`` (checked), and the number of iterations (checked with the
    other options): the checks :func:`richardson_lucy` and :func:`rl_alpha_schedule` begin with."""
    y, h = _check_inputs(image, psf, resolve_device(device), dtype, "Richardson-Lucy")
    return y, h, _check_options(iterations, boundary, tv_weight, tol, y.ndim, voxel_size)


def _set_up(y: torch.Tensor, h: torch.Tensor, boundary: str, tv_weight, voxel_size, tv_scale, weights, clipped,
            tv_smoothing: str = "local", tv_differences: str = "symmetric"):
    """RL's problem on the checked image ``y`` and PSF ``h`` with ``weights`` and ``clipped`` (checked here), its
    TV term (:func:`~deconv3d.classical._rl_tv._tv_for`), and the power of two the data run divided by
    (:func:`~deconv3d.classical._problem._working_data`). A scaled copy of the data is not kept past the
    set-up (the problem holds its clamped copy), nor the flags (reflect: the problem holds them mirrored)."""
    keep = None if weights is None else _check_weights(weights, y)
    flags = None if clipped is None else _check_clipped(clipped, y)
    work, exponent = _working_data(y, keep)  # extreme intensities run divided by a power of two
    problem, scaled_by = _problem_for(work, h, boundary, keep, flags, _scaled(tv_weight, tv_scale))
    tv = _tv_for(problem, tv_weight, voxel_size, tv_scale, work, scaled_by, tv_smoothing, tv_differences, exponent)
    return problem, tv, exponent


def _in_callers_units(callback: Callback, exponent: int) -> Callback:
    """``callback`` handed the estimate of a run on data divided by ``2**exponent`` in the image's units
    (a copy, scaled back: for data of extreme intensities only, see
    :func:`~deconv3d.classical._problem._working_exponent`)."""
    return lambda it, estimate: callback(it, _times_power_of_two(estimate, exponent))


def _ignores_estimate(callback):
    """``callback`` (a function) marked as one that does not read the estimate it is given (a progress
    bar, a cancel check): a run on data divided by a power of two hands it the working estimate,
    without the scaled copy per iteration that :func:`_in_callers_units` makes for any other."""
    callback.reads_estimate = False
    return callback


def rl_alpha_schedule(image, psf, iterations: int = 20, *, boundary: str = "bertero", tv_weight: float = 0.0,
                      voxel_size: Sequence[float] | None = None, device="auto",
                      dtype: torch.dtype = torch.float32, tv_scale: float | None = None) -> list[float]:
    """The adaptive Biggs-Andrews steps ``α_1..α_n`` that accelerated RL takes on ``image``.

    Pass the list as ``accelerate=`` to :func:`richardson_lucy` to replay the same steps on
    other images, e.g. on every block of a large volume after measuring them on a
    representative crop (:mod:`deconv3d.pipeline`).

    Parameters
    ----------
    image, psf, iterations, boundary, tv_weight, voxel_size, device, dtype, tv_scale
        As for :func:`richardson_lucy` (with ``accelerate=True``).

    Returns
    -------
    list of float
        ``iterations`` steps in [0, 1); the first two are 0 (Biggs & Andrews extrapolate from
        the third iteration on), the others at least ``ALPHA_FLOOR`` (0.65). Replayed on
        ``image``, they give the adaptive run's result.
    """
    return _schedule_and_estimate(image, psf, iterations, boundary=boundary, tv_weight=tv_weight,
                                  voxel_size=voxel_size, device=device, dtype=dtype, tv_scale=tv_scale)[0]


def _schedule_and_estimate(image, psf, iterations: int, *, boundary: str, tv_weight: float, voxel_size, device,
                           dtype: torch.dtype = torch.float32, tv_scale: float | None = None, weights=None,
                           clipped=None):
    """:func:`rl_alpha_schedule`'s steps and the estimate of that run (an ndarray): the result of
    ``richardson_lucy(image, psf, iterations, accelerate=True, ...)`` (with its ``weights`` and
    ``clipped``), which replaying the steps on ``image`` reproduces."""
    y, h, iterations = _checked(image, psf, iterations, boundary, tv_weight, None, voxel_size, device, dtype)
    problem, tv, exponent = _set_up(y, h, boundary, tv_weight, voxel_size, tv_scale, weights, clipped)  # as RL's
    record: list[float] = []
    estimate = _run(problem, iterations, tv, True, None, None, record=record)
    result = estimate[problem.result_crop].clamp_min(0)
    checked_result(_times_power_of_two(result, exponent, inplace=True))
    return record, result.cpu().numpy()


def _problem_for(work: torch.Tensor, h: torch.Tensor, boundary: str, keep, flags, scaled: bool = True):
    """RL's problem on ``work`` with the voxels' weights ``keep`` (or None) and the clipped voxels' ``flags``
    (:func:`~deconv3d.classical._problem._check_clipped`'s, or None: see
    :func:`~deconv3d.classical._problem._censor`), and the weights the TV term's default scale is taken
    under (:func:`~deconv3d.classical._rl_tv._tv_for`); with flags and not ``scaled``
    (:func:`~deconv3d.classical._rl_tv._scaled`), None: they are not computed."""
    problem = _build_problem(work, h, boundary) if keep is None else _holdout_problem(work, h, boundary, keep)
    return (problem, keep) if flags is None else _censor(problem, flags, h, boundary, keep, scaled)
