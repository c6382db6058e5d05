"""Richardson-Lucy's iteration count chosen from the image alone, by held-out prediction."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from deconv3d._tensors import resolve_device
from deconv3d.classical._iterate import _Workspace, _blur, _initial_estimate, _rl_update
from deconv3d.classical._problem import (MIN_KEPT_SHARE, _build_geometry, _censor, _check_clipped, _check_inputs,
                                         _check_options, _check_weights, _float_times_power_of_two, _holdout_problem,
                                         _Problem, _transpose_of, _transpose_of_ones, _working_data)
from deconv3d.classical.rl import _scaled, _tv_for
from deconv3d.errors import InputError


@dataclass(frozen=True)
class IterationChoice:
    """Outcome of :func:`choose_iterations`.

    ``iterations`` is the count with the lowest held-out prediction error; ``risk[k - 1]`` is
    that error (mean squared, in the image's units: Inf or 0 where float64 cannot hold it, errors
    beyond about 1e154 or below 1e-162 in a float64 run, whose count is chosen all the same) after
    ``k`` iterations; ``holdout`` is the fraction of voxels held out and ``stopped`` why the
    search ended: ``"patience"`` (the error rose for ``patience`` iterations past its minimum),
    ``"max_iterations"`` or ``"cancelled"``.
    """

    iterations: int
    risk: tuple[float, ...]
    holdout: float
    stopped: str


def holdout_mask(shape: Sequence[int], fraction: float, seed: int = 0) -> torch.Tensor:
    """The voxels :func:`choose_iterations` holds out: a seeded uniform random subset.

    Parameters
    ----------
    shape : sequence of int
        The image's shape.
    fraction : float
        Expected share of the voxels held out, in (0, 0.5].
    seed : int, optional
        Seeds a CPU ``torch.Generator``: a given seed and shape give the same mask.

    Returns
    -------
    torch.Tensor
        Boolean mask of ``shape`` on the CPU, True where a voxel is held out.
    """
    if not (isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) and 0 < fraction <= 0.5):
        raise InputError(f"holdout fraction must be a number in (0, 0.5], got {fraction!r}: try 0.05")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(tuple(shape), generator=generator) < float(fraction)


#: :func:`choose_iterations` refuses an image with fewer held-out voxels than this: their mean
#: error would rank the counts by a handful of noisy values.
MIN_HELD_OUT = 20


def choose_iterations(
    image,
    psf,
    max_iterations: int = 100,
    *,
    boundary: str = "bertero",
    tv_weight: float = 0.0,
    holdout: float = 0.05,
    patience: int = 10,
    seed: int = 0,
    callback: Callable[[int, float], Optional[bool]] | None = None,
    voxel_size: Sequence[float] | None = None,
    device="auto",
    dtype: torch.dtype = torch.float32,
    weights=None,
    clipped=None,
) -> IterationChoice:
    """Choose Richardson-Lucy's iteration count from the image alone, by held-out prediction.

    A random ``holdout`` fraction of the voxels is left out of the data fit (their weight in
    the RL ratio is 0 and the update is normalised by ``H^T`` of the kept-voxel mask), so the
    estimate never sees them; after each iteration the blurred estimate predicts them, and
    the mean squared error of that prediction is recorded. Noise at a held-out voxel is
    independent of the estimate, so the error equals the error against the noise-free
    blurred image plus the noise variance: its minimum is where RL stops fitting signal and
    starts fitting noise. This is the J-invariant calibration of Batson & Royer [1]_ applied
    to RL's stopping time: a cross-validation of the regularisation, as in [2]_. Run
    :func:`richardson_lucy` on the whole image with the returned ``iterations`` (it then
    fits ``1 / (1 - holdout)`` times more data, so its best count can be a little higher).
    The count that predicts the blurred data best is not always the one that restores the
    object best. Against the truth-picked count on seeded phantoms (16 x 64 x 64 and 64 x 64,
    review of this function): 0.00-0.13 dB lost from 300 to 30000 photons per voxel at the
    peak (rl and rl-tv, 2D and 3D), but 0.03-1.9 dB over nine 3D phantoms at 30 photons (4 of 9
    over 0.5 dB, 3 stopped by ``max_iterations`` where 20 was best); on another phantom 1.5 dB
    at 10 photons (38 iterations instead of 7). The held-out error is nearly flat around its
    minimum (differences under 1 %), so the count also depends on which voxels are held out:
    over eight ``seed`` values a 64 x 64 image at 300 photons got 11 to 100 iterations. The count
    tends to be late: on 32 x 96 x 96 and 192 x 192 phantoms (Gibson-Lanni PSF at NA 1.3 or Gaussian
    at NA 1.4, 30 to 10^4 photons, three seeds each; audit of this function) it was above the truth-picked one
    in 57 of the 67 runs where neither reached its cap, a median 1.26 times with the ``bertero``
    boundary and 1.1 to 5.8 times with ``zero``. From 300 photons up it lost 0.12-0.20 dB at 300
    (``max_iterations`` 400), up to 0.41 dB at 1000 (Gaussian PSF) and up to 1.06 dB with ``zero``;
    and where the best count lies past ``max_iterations`` (past 200 there with the Gibson-Lanni
    PSF from 1000 photons up) the count returned is the cap: 100 lost 0.93-2.6 dB. On a 32 x 96 x 96
    phantom so blurred (seed 0, Poisson noise only) a cap of 400 instead of 100 gained 1.8 dB at 1000
    photons (371 iterations, stopped by ``patience``; truth-picked 329) and 3.9 dB at 10^4 (the error
    still fell at 1000 iterations, 1.3 dB better again), the search and run taking 83 s instead of 31 s
    and 132 s instead of 21 s (2 threads on a shared 2-core CPU); ``deconvolve --iterations auto`` tries
    400 (:data:`deconv3d.pipeline.auto_iterations.AUTO_MAX_ITERATIONS`). The search keeps no array per
    iteration (only the errors): a higher cap costs time, not memory. It also lets the late bias run further
    with ``zero``: on 24 x 64 x 64 Gaussian-blurred phantoms whose object reached the faces, 400 instead of 100
    lost 1.11-1.41 dB (count 400, truth-picked 10-11), where ``bertero`` gained 1.30 dB. An
    image of fewer than :data:`MIN_HELD_OUT` held-out voxels (of positive ``weights``, not
    ``clipped``) is refused.

    Parameters
    ----------
    image, psf
        As for :func:`richardson_lucy` (no acceleration: the count is for plain RL).
    max_iterations : int
        Search up to this many iterations.
    boundary, tv_weight, voxel_size, device, dtype
        As for :func:`richardson_lucy`; pass the ones the final run will use.
    holdout : float
        Fraction of voxels held out, in (0, 0.5].
    patience : int
        Stop once the error has stayed above its minimum for this many iterations.
    seed : int
        Seed of the held-out voxels (:func:`holdout_mask`).
    callback : callable, optional
        ``callback(iteration, risk)`` after every iteration; returning ``True`` cancels
        (the best count so far is returned).
    weights : array_like, optional
        As for :func:`richardson_lucy`: per-voxel data weights in [0, 1] with the image's shape
        (0 leaves a voxel out, e.g. a dead pixel; clipped ones: ``clipped``); pass the ones the final run will use. The
        held-out fit then weights the data by ``weights`` times the held-out mask, and the error
        is taken only at held-out voxels of positive weight (a value left out is not the data to
        predict). A voxel whose light lands less than 10 % on voxels of positive ``weights`` is
        not estimated, as in :func:`richardson_lucy`.
    clipped : array_like of bool, optional
        As for :func:`richardson_lucy`: True where the detector clipped the value; pass the ones the
        final run will use. The held-out fit fits the clipped voxels it keeps as lower bounds, and
        the error is taken only at held-out voxels that are not clipped (a clipped value is not the
        data to predict).

    Returns
    -------
    IterationChoice
        ``.iterations`` is the count to pass to :func:`richardson_lucy`.

    Raises
    ------
    InputError
        For the inputs :func:`richardson_lucy` refuses, and for invalid options of its own.

    Notes
    -----
    The held-out set ``M`` is :func:`holdout_mask`: each voxel is in it with probability
    ``holdout``, drawn from a CPU torch generator seeded with ``seed``, so a given seed and
    shape always hold out the same voxels. The kept voxels get weight ``w = 1`` and the held-out
    ones ``w = 0``, and plain RL (no acceleration; with the TV term for ``tv_weight`` > 0) runs
    from a flat start on the data with the weighted update of ``richardson_lucy(weights=w)``,
    ``u_{k+1} = u_k · H^T(w y / H u_k) · H^T(1) / H^T(w)`` (times the boundary's own
    normalisation). After iteration ``k`` the blurred estimate predicts the held-out voxels,
    and the risk is

    ``R(k) = (1 / |M|) sum_{i in M} ((H u_k)_i - max(y_i, 0))^2``.

    With ``weights`` ``W``, the fit's weights are ``w = (1 - M) W``, ``M`` in ``R(k)`` is the
    held-out voxels with ``W > 0``, and a voxel of the estimate whose light lands less than 10 %
    on voxels of ``W > 0`` gets factor 0 (the held-out voxels themselves count as landed on).

    The search stops after ``max_iterations``, when ``patience`` iterations have passed since
    the lowest risk so far, or when ``callback`` returns ``True``; the count returned is the
    first ``k`` with the lowest ``R(k)`` (compared in RL's working units, ``R(k) / 4**e`` for data
    run divided by ``2**e``, where they neither over- nor underflow), and ``risk`` holds every
    ``R(k)`` computed.

    References
    ----------
    .. [1] J. Batson and L. Royer, "Noise2Self: blind denoising by self-supervision",
       ICML 2019 (J-invariant calibration of denoisers).
    .. [2] G. Wahba, "Practical approximate solutions to linear operator equations when the
       data are noisy", SIAM J. Numer. Anal. 14, 651-667 (1977) (cross-validation of the
       regularisation of an inverse problem).

    Examples
    --------
    >>> import numpy as np
    >>> from deconv3d.classical import choose_iterations, richardson_lucy
    >>> rng = np.random.default_rng(0)
    >>> psf = np.ones((3, 5, 5), np.float32) / 75
    >>> image = rng.poisson(50, (8, 32, 32)).astype(np.float32)
    >>> choice = choose_iterations(image, psf, 30, device="cpu")
    >>> restored = richardson_lucy(image, psf, choice.iterations, device="cpu")
    >>> 1 <= choice.iterations <= 30 and len(choice.risk) >= choice.iterations
    True
    """
    dev = resolve_device(device)
    y, h = _check_inputs(image, psf, dev, dtype, "Richardson-Lucy")
    max_iterations = _check_options(max_iterations, boundary, tv_weight, None, y.ndim, voxel_size)
    _check_search_options(max_iterations, patience, seed, callback)
    w = None if weights is None else _check_weights(weights, y)
    flags = None if clipped is None else _check_clipped(clipped, y)
    held = holdout_mask(y.shape, holdout, seed).to(dev)
    scored = _scored_voxels(held, w, flags, y.numel(), holdout)
    keep = (~held).to(dtype) if w is None else (~held).to(dtype) * w
    # as richardson_lucy runs it, but over every voxel of positive weight: the held-out ones are the risk's targets,
    # which a power of two set by the kept ones alone could overflow; the risk is scaled back by 4**exponent
    y, exponent = _working_data(y, w)
    problem, tv = _censored_holdout_fit(y, h, boundary, keep, w, flags, tv_weight, voxel_size)
    del flags
    predictions = _holdout_predictions(problem, int(max_iterations), tv)
    return _search(predictions, y, scored, exponent, patience, callback, holdout)


def _check_search_options(max_iterations: int, patience, seed, callback) -> None:
    """Refuse :func:`choose_iterations`'s own options where invalid (``max_iterations`` already checked
    as :func:`richardson_lucy` checks it)."""
    if max_iterations < 1:
        raise InputError(f"max_iterations must be at least 1, got {max_iterations}")
    if not (isinstance(patience, numbers.Integral) and not isinstance(patience, bool) and patience >= 1):
        raise InputError(f"patience must be a positive integer, got {patience!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise InputError(f"seed must be a whole number, got {seed!r}")
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be a function callback(iteration, risk), got {callback!r}")


def _scored_voxels(held: torch.Tensor, w, flags, voxels: int, holdout: float) -> torch.Tensor:
    """The held-out voxels whose error is scored: those of positive weight ``w`` and not clipped (``flags``
    0), where given. Fewer than :data:`MIN_HELD_OUT` (of the image's ``voxels``) are refused."""
    scored = held if w is None else held & (w > 0)  # a voxel of weight 0 (a dead pixel) is no truth to predict
    scored = scored if flags is None else scored & (flags == 0)  # nor is a clipped value
    if int(scored.sum()) < MIN_HELD_OUT:  # a 3 x 3 image held out none, and "chose" 1 iteration at zero risk
        kinds = ([] if w is None else ["with positive weights"]) + ([] if flags is None else ["not clipped"])
        of_weight = f" {', '.join(kinds)} ({int(held.sum())} held out in all)" if kinds else ""
        raise InputError(f"only {int(scored.sum())} of the image's {voxels} voxels are held out{of_weight} (holdout "
                         f"{holdout:g}), too few to judge the iteration count by (at least {MIN_HELD_OUT}): give the "
                         "count yourself (--iterations N on the command line), or hold out more")
    return scored


def _search(predictions, y: torch.Tensor, scored: torch.Tensor, exponent: int, patience: int, callback,
            holdout) -> IterationChoice:
    """Score each of ``predictions`` (``(k, H u_k)`` of the working data ``y``, run divided by ``2**exponent``) at
    the ``scored`` voxels until ``patience`` or ``callback`` stops the search or they run out."""
    target, count = y.clamp_min(0)[scored], max(int(scored.sum()), 1)
    # the choice compares the risks in the working units (their order is the image units' order), where
    # float64 holds them: in the image's, those of a float64 run of peak 1e160 overflow, of 5e-170 underflow
    working: list[float] = []
    risk: list[float] = []
    stopped = "max_iterations"
    for it, prediction in predictions:
        working.append(float(torch.sum((prediction[scored] - target) ** 2)) / count)
        risk.append(_float_times_power_of_two(working[-1], 2 * exponent))
        if callback is not None and callback(it, risk[-1]):
            stopped = "cancelled"
            break
        if it - (working.index(min(working)) + 1) >= patience:
            stopped = "patience"
            break
    return IterationChoice(working.index(min(working)) + 1, tuple(risk), float(holdout), stopped)


def _holdout_fit(y: torch.Tensor, h: torch.Tensor, boundary: str, keep: torch.Tensor, weights=None) -> _Problem:
    """The held-out fit's problem: RL on ``y · keep`` (``keep`` 0 at the held-out voxels, else 1 or
    ``weights``), every held-out voxel estimated however narrow the PSF (one whose centre holds 95 %
    of the light puts each isolated held-out voxel under :data:`MIN_KEPT_SHARE`: on such beads the
    count chosen was 11, not 3). With ``weights``, a voxel whose light lands less than
    :data:`MIN_KEPT_SHARE` on voxels of positive ``weights`` (held-out ones included) is not
    estimated (factor 0), as in ``richardson_lucy(weights=weights)``, the run whose count is chosen."""
    problem = _holdout_problem(y, h, boundary, keep, min_share=0.0)
    if weights is not None:
        fitted = _build_geometry((weights > 0).to(weights.dtype), h, boundary, weight=False).data
        unseen = _transpose_of(problem, fitted) < MIN_KEPT_SHARE * _transpose_of_ones(problem, h)
        problem.inv_weight.masked_fill_(unseen, 0.0)
    return problem


def _censored_holdout_fit(y: torch.Tensor, h: torch.Tensor, boundary: str, keep: torch.Tensor, weights, flags,
                          tv_weight: float, voxel_size) -> tuple:
    """(problem, TV term) of the held-out fit (:func:`_holdout_fit`) of the working data ``y``: the
    clipped voxels it keeps (``flags``, where given) fitted as lower bounds, and the TV term
    :func:`richardson_lucy` would use with these weights."""
    problem = _holdout_fit(y, h, boundary, keep, weights)
    problem, scaled_by = (problem, keep) if flags is None else _censor(problem, flags, h, boundary, keep,
                                                                       _scaled(tv_weight, None))
    return problem, _tv_for(problem, tv_weight, voxel_size, None, y, scaled_by)


def _holdout_predictions(p: _Problem, iterations: int, tv):
    """Plain RL on a hold-out problem, yielding ``(k, H u_k)`` on the image after each iteration.

    The prediction is the blur the next iteration starts from (one transform pair per
    iteration, as plain RL): a view into the workspace, to be read before the next step.
    """
    ws = _Workspace(p)
    u = _initial_estimate(p, out=ws.estimate_in)
    _blur(p, ws, u)
    for it in range(1, iterations + 1):
        _rl_update(p, ws, u, u, tv, blurred=True)
        yield it, _blur(p, ws, u)[p.result_crop]
