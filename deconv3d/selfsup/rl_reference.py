"""The Richardson-Lucy reference of self-supervised training: the estimate that the warm start
regresses the network onto, the anchor keeps it near, or the residual network corrects. Its
iteration count (and TV weight) are chosen from held-out voxels, within a share of the time budget.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, Optional

import numpy as np

from deconv3d._fft_shapes import kernel_origin
from deconv3d._tensors import psf_fingerprint
from deconv3d.errors import Cancelled, OptionWarning, outside_stacklevel
from deconv3d.psf.center_crop import fit_shape
from deconv3d.selfsup.config import Reference, TrainConfig
from deconv3d.selfsup.forward_model import ForwardModel
from deconv3d.selfsup.patches import _PatchSampler

__all__ = ["warm_start_target", "chosen_reference", "search_cap", "REFERENCE_SHARE", "WARM_TV_WEIGHTS",
           "SMALL_IMAGE_ITERATIONS", "SEARCH_ITERATIONS"]


#: Share of ``TrainConfig.time_budget`` that the search for the RL reference may take.
REFERENCE_SHARE = 0.5


WARM_TV_WEIGHTS = (0.0, 0.002, 0.01, 0.03, 0.06, 0.1)  # the TV weights TrainConfig(warm_tv="auto") chooses from
#: The reference's RL count for an image too small for choose_iterations (richardson_lucy's default).
SMALL_IMAGE_ITERATIONS = 20
#: The most RL iterations the search tries for each TV weight (choose_iterations' ``max_iterations``). Not
#: ``deconvolve --iterations auto``'s 400 (:mod:`deconv3d._auto_cap`): the search runs it for each of six weights,
#: with no deadline unless a time budget is given, and a budget's share would then go to the first weights. On the
#: demo's input (``deconv3d demo``) weight 0 stopped at 100 here and at 264 with 400 (by patience; RL there 33.47 dB
#: against the truth instead of 32.66), and weight 0.002 ran to 400; bench_selfsup's microtubules and nuclei at
#: sigma 0.01 (weight 0) stopped at 53 and 14 with either cap.
SEARCH_ITERATIONS = 100


def search_cap(tv_weight: float | str = 0.0) -> int:
    """The most RL iterations the search for the reference runs (and reports to its callback) for
    ``tv_weight`` as :func:`warm_start_target` takes it: :data:`SEARCH_ITERATIONS` for each TV weight
    searched (all of :data:`WARM_TV_WEIGHTS` for ``"auto"``). The search usually stops before: each
    weight's once its held-out error has risen for ``choose_iterations``' patience, and all at a deadline."""
    return SEARCH_ITERATIONS * (len(WARM_TV_WEIGHTS) if tv_weight == "auto" else 1)


def warm_start_target(image: np.ndarray, psf: np.ndarray, device="cpu", tv_weight: float | str = 0.0,
                      extended: bool = False, deadline: float | None = None,
                      callback: Callable[[int, float], Optional[bool]] | None = None) -> tuple[np.ndarray, Reference]:
    """The warm-start target: Bertero RL (RL-TV for ``tv_weight`` > 0) at the count chosen from held-out voxels.

    ``tv_weight="auto"`` takes the weight of :data:`WARM_TV_WEIGHTS` whose chosen count has the
    lowest held-out error. Returns ``(estimate, reference)``, where ``reference`` holds the
    count (:func:`deconv3d.classical.choose_iterations`) and the weight and reproduces the estimate.
    ``extended`` returns the estimate on Bertero's extended domain (``richardson_lucy(extended=True)``).
    ``deadline`` (a ``time.perf_counter()`` value) ends the search early: the best count and weight
    found by then are used (at least one iteration of the first weight is always measured).
    ``callback(iteration, risk)`` is called after every iteration of the search
    (:func:`~deconv3d.classical.choose_iterations`'); returning ``True`` cancels:
    :class:`~deconv3d.Cancelled` is raised.
    """
    with _one_setup():
        reference = chosen_reference(image, psf, device, tv_weight, deadline, callback)
        return reference.estimate(image, psf, device, extended), reference


class _Search:
    """The owner of the set-up that one search's held-out fits and its reference's RL run share."""


@contextlib.contextmanager
def _one_setup():
    """Within, the RL set-up (the OTF and Bertero's ``1 / H^T 1``, which depend on the PSF and shape alone) is
    built once and kept (:func:`deconv3d.classical._reuse.reusing_setup`) for every held-out fit of the search and
    for RL at the chosen count, and dropped on the way out. Each fit built the OTF twice and the weight once (the
    reference's RL both again): 13 builds of each for ``warm_tv="auto"``, where one of each serves."""
    from deconv3d.classical._reuse import drop_setup, reusing_setup

    owner = _Search()
    try:
        with reusing_setup(owner):
            yield
    finally:
        drop_setup(owner)


def chosen_reference(image: np.ndarray, psf: np.ndarray, device="cpu", tv_weight: float | str = 0.0,
                     deadline: float | None = None,
                     callback: Callable[[int, float], Optional[bool]] | None = None) -> Reference:
    """The :class:`Reference` (count and TV weight) that :func:`warm_start_target` runs RL with, chosen
    as it says (same arguments), without running it."""
    asked = []  # holds True once the callback cancelled

    def late(*progress) -> bool:
        if callback is not None and progress and not asked and callback(*progress):
            asked.append(True)
        return bool(asked) or (deadline is not None and time.perf_counter() >= deadline)

    weights = WARM_TV_WEIGHTS if tv_weight == "auto" else (float(tv_weight),)
    if _too_small_to_search(image):
        warnings.warn(f"the training image ({np.size(image)} voxels) is too small to choose the Richardson-Lucy "
                      f"reference's iteration count by held-out voxels: it runs {SMALL_IMAGE_ITERATIONS}",
                      RuntimeWarning, stacklevel=outside_stacklevel())
        return Reference(SMALL_IMAGE_ITERATIONS, weights[0])
    reference = _searched_reference(image, psf, device, weights, late, asked)
    if late():  # (a 0.5 s budget kept 1 iteration where the search picks 21: a reference blurrier than the data)
        said = (f"the time budget ended the search for the reference's Richardson-Lucy count at {reference.iterations} "
                "iteration(s): give a larger {} (or none) to let it finish")
        warnings.warn(OptionWarning(said.format("TrainConfig.time_budget"), said.format("--time-budget")),
                      stacklevel=outside_stacklevel())
    return reference


def _too_small_to_search(image) -> bool:
    """Whether ``image`` holds too few held-out voxels for choose_iterations (its defaults: it refuses). The
    mask is drawn only for an image expecting under 4x the minimum (80 of 1600 voxels, 7 SD above it): for
    any other a full-size draw on every training run would only repeat the search's own."""
    from deconv3d.classical import holdout_mask
    from deconv3d.classical.iterations import MIN_HELD_OUT

    expected = np.size(image) * 0.05
    return expected < 4 * MIN_HELD_OUT and int(holdout_mask(np.shape(image), 0.05).sum()) < MIN_HELD_OUT


def _searched_reference(image, psf, device, weights, late, asked: list) -> Reference:
    """The :class:`Reference` of the TV weight in ``weights`` whose chosen count has the lowest held-out error,
    searching the next weight only while ``late()`` says there is time. ``late(iteration, risk)`` is the
    search's callback; once it has cancelled (``asked`` not empty), :class:`~deconv3d.Cancelled` is raised."""
    from deconv3d.classical import choose_iterations

    choices = []
    for w in weights:
        if choices and late():
            break
        choices.append((choose_iterations(image, psf, SEARCH_ITERATIONS, tv_weight=w, device=device, callback=late), w))
    if asked:
        raise Cancelled("the search for the Richardson-Lucy reference's iteration count was cancelled")
    choice, weight = min(choices, key=lambda c: min(c[0].risk))
    return Reference(int(choice.iterations), float(weight))


def _set_reference(img, psf, forward: ForwardModel, sampler: _PatchSampler, config: TrainConfig, device, started: float,
                   mean_std, callback: Callable[[int, float], Optional[bool]] | None = None,
                   chosen: Callable[[Reference], None] | None = None) -> tuple:
    """Richardson-Lucy's estimate that the warm start regresses onto, the anchor keeps the network
    near, or the residual network corrects, set as ``sampler``'s target (standardised by
    ``mean_std``). Returns (fingerprint of the image, the estimate, its :class:`Reference`), or
    Nones when the recipe needs none. :func:`~deconv3d.selfsup.train`'s ``callback`` gets ``(0, risk)`` per iteration
    of the search for RL's count; its cancel raises :class:`~deconv3d.Cancelled`. ``chosen(reference)`` is called
    once the search has chosen, before RL runs at that count."""
    if not (config.warm_steps or config.residual or config.anchor_weight):  # (an anchor alone needs it too)
        return None, None, None
    # The residual base spans the fields' PSF halo with RL's estimate of the object outside the image,
    # so that H(T) explains the light entering the field from outside from the start.
    # Under a time budget the search for RL's count and weight takes at most half of it.
    deadline = None if config.time_budget is None else started + REFERENCE_SHARE * config.time_budget
    image_key = psf_fingerprint(img)  # of the data RL runs on (a caller may change the array while training)
    searching = None if callback is None else (lambda _iteration, risk: callback(0, risk))
    with _one_setup():
        reference = chosen_reference(img, psf, device, config.warm_tv, deadline=deadline, callback=searching)
        if chosen is not None:
            chosen(reference)
        target = reference.estimate(img, psf, device, config.residual)
    margin = (forward.halo_before, forward.halo_after) if config.residual else None
    mean, std = mean_std
    sampler.set_target((target - np.float32(mean)) / np.float32(std), margin)
    return image_key, target, reference


def _reference_on_field(image_key: str, image_shape, psf: np.ndarray, extended: np.ndarray) -> tuple[str, np.ndarray]:
    """The residual base on the image's field (cut from the extended estimate of the same RL run, so
    ``Reference.estimate(img, psf)`` up to float32 rounding), keyed by the fingerprint of the image RL ran on."""
    shape = fit_shape(psf.shape, image_shape)
    start = [k - 1 - o for k, o in zip(shape, kernel_origin(shape))]
    field_box = tuple(slice(s, s + n) for s, n in zip(start, image_shape))
    return image_key, np.ascontiguousarray(extended[field_box])
