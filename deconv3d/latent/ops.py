"""Blur synthesis and deblurring by linear arithmetic on autoencoder latents.

With ``E`` the encoder and ``D`` the decoder of a linear-latent autoencoder
(:mod:`deconv3d.latent.model`), a plane a fraction ``a`` of the way from the most
blurred plane ``x_far`` to the sharp plane ``x_near`` is synthesised as

    x_a = D((1 - a) E(x_far) + a E(x_near)),

and a plane ``x_k`` whose latent is modelled as ``E(x_k) = alpha E(x_far) + (1 - alpha)
z_near`` is deblurred by extrapolation:

    x_near = D(E(x_k) / (1 - alpha) - alpha E(x_far) / (1 - alpha)).

Here ``alpha`` is the paper's triplet weight ``(b - m) / (b - a)`` for the levels ``a`` of
``x_far``, ``m`` of ``x_k`` and ``b`` of focus: the weight of the far latent, i.e. the
distance from ``x_k`` to focus as a fraction of the distance from ``x_far`` to focus
(``alpha`` near 1: ``x_k`` is almost as blurred as ``x_far``). A plane synthesised at
fraction ``a`` has ``alpha = 1 - a``.

Inputs are 2D numpy arrays of equal shape in any intensity scale. Each plane is min-max
normalised to [0, 1] on its own (as in training); the output, decoded in [0, 1], is mapped
back to an intensity range obtained by applying the same linear combination to the
inputs' (min, max); where that range would be empty or inverted (strong extrapolation),
the range of the input nearest to the output is used instead. Sizes that are not
multiples of the network's divisor are reflect-padded and the output cropped back
(``fit="pad"``, the default), or refused (``fit="error"``).

The model is put in eval mode. Any object with ``encode``, ``decode`` and ``divisor``
works (a latent is a tensor or a tuple of tensors), which is how the arithmetic is tested
with a linear toy encoder.

This module holds the public operations, the choice of the form (plain or residual) a
network is applied in, and the pixel-space references; the plane handling and latent
arithmetic they share (normalisation, padding, encoding, decoding, :func:`lincomb`) are in
:mod:`deconv3d.latent.encoding`, and re-exported here.

References
----------
.. [1] P. Mazilu, H. Wang, S. Dummer, R. Veldhuis, C. Brune and N. Strisciuglio,
   "Defocus blur synthesis and deblurring via interpolation and extrapolation in latent
   space", CAIP 2023, arXiv:2307.15461.
"""

from __future__ import annotations

import numbers
import os
import warnings
from typing import Optional

import numpy as np
import torch

from deconv3d._arrays import as_numpy
from deconv3d.errors import InputError
from deconv3d.latent.encoding import (as_plane_pair, decode_latents, encode_planes, interior_fractions, interpolate,
                                      lincomb, minmax_normalise, restore_range, select_sample, warn_of_hot_pixels)

__all__ = ["lincomb", "interpolate", "interior_fractions", "synthesize_blur", "deblur",
           "blend_pixels", "extrapolate_pixels", "encode_planes", "linearity_scores", "FormWarning"]

FRACTION_LIMITS = (-10.0, 11.0)  # synthesize_blur's fractions, as deconv3d blur synth --range allows
#: The largest alpha :func:`deblur` takes: its weight 1 / (1 - alpha) reaches FRACTION_LIMITS' 11 there
#: (0.9999 wrote a plane of mean -0.065 from one of mean 0.17).
MAX_DEBLUR_ALPHA = 1 - 1 / FRACTION_LIMITS[1]


# ------------------------------------------------------------------ public operations


def synthesize_blur(model, far, near, fractions, *, fit: str = "pad", residual: Optional[bool] = None) -> np.ndarray:
    """Planes between (or beyond) a blurred and a sharp plane by latent interpolation.

    Parameters
    ----------
    model : Autoencoder, TrainedAutoencoder or LatentTrainResult
        A trained linear-latent autoencoder (or any object with ``encode``/``decode``), or
        what :func:`~deconv3d.latent.train.train` or
        :func:`~deconv3d.latent.checkpoint.load_checkpoint` returns, which also carries the
        training config.
    far : array_like
        The most blurred plane (fraction 0).
    near : array_like
        The sharp, in-focus plane (fraction 1); same shape as ``far``.
    fractions : sequence of float
        Positions ``a`` of the planes to synthesise; values outside [0, 1] extrapolate, up to
        ``FRACTION_LIMITS`` (-10 to 11, as ``deconv3d blur synth --range``): further out the
        latent arithmetic only amplifies noise and overflows float32 (NaN planes).
    fit : {"pad", "error"}, optional
        What to do with sizes that are not multiples of ``model.divisor``.
    residual : bool, optional
        Beyond the paper: decode only a correction on top of pixel blending,
        ``x_a = (1 - a) x_far + a x_near + s_a (D(z_a) - [(1 - a) D(z_far) + a D(z_near)])``,
        the blend in the planes' own intensities and the network's terms in its min-max
        normalised units, scaled by the blended span ``s_a = (1 - a) s_far + a s_near`` of
        the two planes (max - min, 0 for a constant plane) or, where extrapolation leaves
        ``s_a`` not positive, by the nearer plane's span (the other's where that one is
        constant), so the output follows any affine change of the planes' intensities. The
        network then contributes only how its interpolation departs
        from blending its own reconstructions, so its reconstruction error cancels, the end
        planes are returned exactly, and a network whose latents are exactly linear returns
        pixel blending itself, whatever the planes' intensity ranges. (Until this form, the
        blend was taken in normalised units and mapped back with the blended range, which
        is pixel blending only when the planes span equal ranges: on
        ``benchmarks/bench_latent.py``, seed 0, both scored 36.21 dB.) ``None``
        (default): the form the model was trained in (``LatentTrainConfig.residual``,
        residual by default) where it knows it: a model that carries its training config, or
        the ``.model`` of one (``Autoencoder.residual``, set by ``train`` and
        ``load_checkpoint``), as ``deconv3d blur synth`` does; the paper's plain form for a
        network that does not know how it was trained. A form other than the trained one
        warns (:class:`FormWarning`).

    Returns
    -------
    numpy.ndarray
        ``float32`` stack ``(len(fractions), H, W)``.

    Notes
    -----
    ``z_a = (1 - a) E(x_far) + a E(x_near)``, decoded; intensity scale as in the module
    docstring. See Mazilu et al. [1]_, Sect. 3.

    Examples
    --------
    >>> class Identity:
    ...     divisor = 1
    ...     encode = decode = staticmethod(lambda x: x)
    >>> far, near = np.zeros((4, 4)), np.eye(4)
    >>> synthesize_blur(Identity(), far + 0.5 * near, near, [0.5]).shape
    (1, 4, 4)
    """
    model, residual = _network_and_form(model, residual)
    far, near = as_plane_pair(far, near, ("far plane", "near plane"))
    warn_of_hot_pixels((far, near), ("far plane", "near plane"))
    a = np.asarray(fractions, dtype=np.float64).reshape(-1)
    lo, hi = FRACTION_LIMITS
    if a.size == 0 or not np.isfinite(a).all() or not ((a >= lo) & (a <= hi)).all():
        raise InputError(f"fractions must be a non-empty list of finite numbers from {lo:g} to {hi:g} "
                         f"(0 is the far plane, 1 the near one), got {a.tolist()[:8]}")
    z, shape = encode_planes(model, np.stack([far, near]), fit=fit)
    device = (z[0] if isinstance(z, (tuple, list)) else z).device
    t = torch.as_tensor(a, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
    y = decode_latents(model, lincomb([1 - t, t], [select_sample(z, 0), select_sample(z, 1)]), shape)
    ranges = [minmax_normalise(far)[1:], minmax_normalise(near)[1:]]
    if residual:  # pixel blending in the planes' own intensities, plus the network's departure from it
        ends = decode_latents(model, z, shape)  # the reconstructions D(E(x_far)), D(E(x_near))
        w = a.reshape(-1, 1, 1).astype(np.float32)
        spans = [hi - lo for lo, hi in ranges]  # a constant plane spans 0, in any intensity scale
        span = (1 - w) * spans[0] + w * spans[1]  # the correction's scale: blended like the planes
        nearer = np.where(w >= 0.5, spans[1], spans[0])  # not positive: the nearer plane's span, else the other's
        span = np.where(span > 0, span, np.where(nearer > 0, nearer, max(spans))).astype(np.float32)
        correction = y - (1 - w) * ends[0] - w * ends[1]
        return ((1 - w) * far + w * near + span * correction).astype(np.float32)
    return np.stack([restore_range(yk, (1 - ak, ak), ranges, int(ak >= 0.5)) for yk, ak in zip(y, a)])


def deblur(model, far, plane, alpha: float, *, fit: str = "pad", residual: Optional[bool] = None) -> np.ndarray:
    """Sharp plane extrapolated from a blurred plane and the most blurred one.

    Parameters
    ----------
    model : Autoencoder, TrainedAutoencoder or LatentTrainResult
        A trained linear-latent autoencoder (or any object with ``encode``/``decode``), or a
        trained model with its config, as in :func:`synthesize_blur`.
    far : array_like
        The most blurred plane (fraction 0).
    plane : array_like
        The plane to deblur, between ``far`` and focus.
    alpha : float
        Weight of ``E(far)`` in ``E(plane)``, in (0, :data:`MAX_DEBLUR_ALPHA` = 10/11]:
        ``(b - m) / (b - a)`` for the levels ``a`` of ``far``, ``m`` of ``plane`` and ``b`` of
        focus (the distance from ``plane`` to focus as a fraction of the distance from ``far``
        to focus).
    fit : {"pad", "error"}, optional
        What to do with sizes that are not multiples of ``model.divisor``.
    residual : bool, optional
        Beyond the paper: add back the detail the autoencoder failed to reconstruct in
        ``plane``, ``x_near = D(z_near) + [x_k - D(E(x_k))]`` (planes min-max normalised).
        The decoder's reconstruction ceiling otherwise caps the output below the input's
        own detail; the residual of ``far`` is left out, since extrapolation would multiply
        it (and its noise) by ``alpha / (1 - alpha)``. On the held-out synthetic stacks of
        ``benchmarks/bench_latent.py`` (default 2000 training steps) it lifted the gain from
        level 8 from +2.7 to +3.5 dB (explicit) and from +2.5 to +3.1 dB (skip); weighting
        the residual by 0.5 or 2, or carrying both planes' residuals with the extrapolation
        weights, scored lower on earlier checkpoints. ``None`` (default): as the model was
        trained, where it knows (plain for a network that does not); a form other than the
        trained one warns, as in :func:`synthesize_blur`.

    Returns
    -------
    numpy.ndarray
        ``float32`` plane ``(H, W)``.

    Notes
    -----
    ``z_near = E(x_k) / (1 - alpha) - alpha / (1 - alpha) E(x_far)``, decoded
    (Mazilu et al. [1]_, Sect. 3); it inverts ``E(x_k) = alpha E(x_far) + (1 - alpha) z_near``.

    The decoded plane is in min-max normalised units; it is mapped back to the extrapolated
    range ``(lo_k - alpha lo_far, hi_k - alpha hi_far) / (1 - alpha)`` (module docstring), in
    both forms. Unlike :func:`synthesize_blur`'s residual form, this does not reduce to pixel
    extrapolation (:func:`extrapolate_pixels`) for a network whose latents are exactly linear
    unless the two planes span equal ranges: the sharp plane's own range is unknown. The form
    that would (extrapolated pixels plus the network's departure from extrapolating its own
    reconstructions) carries ``x_far``'s noise times ``alpha / (1 - alpha)``: on
    ``benchmarks/bench_latent.py`` (explicit variant, 2000 steps, seed 0) it scored 27.8 dB
    mean against 29.0 dB for the residual form here, and pixel extrapolation itself 25.4 dB.

    Examples
    --------
    >>> class Identity:
    ...     divisor = 1
    ...     encode = decode = staticmethod(lambda x: x)
    >>> deblur(Identity(), np.zeros((4, 4)), np.eye(4), 0.5).shape
    (4, 4)
    """
    model, residual = _network_and_form(model, residual)
    far, plane = as_plane_pair(far, plane, ("far plane", "plane to deblur"))
    warn_of_hot_pixels((far, plane), ("far plane", "plane to deblur"))
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        raise InputError(f"alpha must be a number between 0 and 1 (the weight of the far plane), got {alpha!r}")
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie strictly between 0 and 1 (the weight of the far plane), got {alpha}: "
                         "use (b - m) / (b - a) for the far level a, the plane's level m and the focus level b")
    if alpha > MAX_DEBLUR_ALPHA:
        raise InputError(f"alpha {alpha!r} extrapolates {1 / (1 - alpha):.4g}-fold, past the {FRACTION_LIMITS[1]:g} "
                         f"that blur synthesis allows (noise only, then NaN): the plane is almost as blurred as the far "
                         f"one; deblur a plane nearer focus, or give a FAR plane further from focus (alpha "
                         f"(b - m) / (b - a) at most 10/11, {MAX_DEBLUR_ALPHA:.5f})")
    coeffs = (-alpha / (1 - alpha), 1 / (1 - alpha))
    z, shape = encode_planes(model, np.stack([far, plane]), fit=fit)
    y = decode_latents(model, lincomb(list(coeffs), [select_sample(z, 0), select_sample(z, 1)]), shape)[0]
    if residual:
        y = y + (minmax_normalise(plane)[0] - decode_latents(model, select_sample(z, 1), shape)[0])
    return restore_range(y, coeffs, [minmax_normalise(far)[1:], minmax_normalise(plane)[1:]], 1)


class FormWarning(UserWarning):
    """A network applied in another form (``residual``) than the one it was trained in."""


def _network_and_form(model, residual: Optional[bool]):
    """The network inside ``model`` and the form to apply it in: the form it was trained in where
    that is known (a trained model's ``.config.residual``, or ``.residual`` of a network that
    :func:`~deconv3d.latent.train.train` or :func:`~deconv3d.latent.checkpoint.load_checkpoint`
    returned) unless ``residual`` says otherwise, which warns (:class:`FormWarning`); a network
    that does not know its form plainly unless told."""
    if isinstance(model, (str, bytes, os.PathLike)):
        raise InputError(f"got the file name {os.fsdecode(model)!r} where a trained autoencoder is needed: load it "
                         "first with deconv3d.latent.load_checkpoint(path)")
    config = getattr(model, "config", None)
    if hasattr(model, "model") and hasattr(config, "residual"):
        model, trained = model.model, config.residual
    else:
        trained = getattr(model, "residual", None)
    if trained is None or residual is None:
        return model, bool(residual if trained is None else trained)
    if bool(residual) != bool(trained):
        warnings.warn(f"the network was trained in the {_FORMS[bool(trained)]} form and is applied in the "
                      f"{_FORMS[bool(residual)]} one (residual={bool(residual)}), which it was not trained for: leave "
                      "residual unset (no --residual/--no-residual) to apply it as trained", FormWarning, stacklevel=3)
    return model, bool(residual)


_FORMS = {True: "residual", False: "plain"}


def blend_pixels(far, near, fractions) -> np.ndarray:
    """Pixel-space reference for :func:`synthesize_blur`: ``(1 - a) x_far + a x_near``.

    Examples
    --------
    >>> float(blend_pixels(np.zeros((2, 2)), np.ones((2, 2)), [0.25])[0, 0, 0])
    0.25
    """
    far, near = as_plane_pair(far, near, ("far plane", "near plane"))
    a = np.asarray(fractions, dtype=np.float32).reshape(-1, 1, 1)
    return ((1 - a) * far + a * near).astype(np.float32)


def extrapolate_pixels(far, plane, alpha: float) -> np.ndarray:
    """Pixel-space reference for :func:`deblur`: ``(x_k - alpha x_far) / (1 - alpha)``.

    Examples
    --------
    >>> float(extrapolate_pixels(np.zeros((2, 2)), np.ones((2, 2)), 0.5)[0, 0])
    2.0
    """
    far, plane = as_plane_pair(far, plane, ("far plane", "plane to deblur"))
    warn_of_hot_pixels((far, plane), ("far plane", "plane to deblur"))
    if not 0 < float(alpha) < 1:
        raise InputError(f"alpha must lie strictly between 0 and 1 (the weight of the far plane), got {alpha}")
    return ((plane - np.float32(alpha) * far) / np.float32(1 - alpha)).astype(np.float32)


def linearity_scores(model, stack, levels=None, *, fit: str = "pad") -> dict[str, float]:
    """LDS and APD (:mod:`deconv3d.metrics`) of the latents of one focal stack.

    Parameters
    ----------
    model : Autoencoder, TrainedAutoencoder or LatentTrainResult
        A trained linear-latent autoencoder (or any object with ``encode``), or a trained
        model with its config, as in :func:`synthesize_blur`.
    stack : array_like
        ``(n_levels, H, W)`` planes ordered by level (at least 3).
    levels : sequence of float, optional
        Level values (default: evenly spaced).

    Returns
    -------
    dict
        ``{"lds": float, "apd": float}``.
    """
    from deconv3d.metrics import latent_apd, latent_lds

    model, _ = _network_and_form(model, None)  # (the latents do not depend on the form)
    stack = as_numpy(stack, dtype=np.float32)
    if stack.ndim != 3 or stack.shape[0] < 3:
        raise InputError(f"stack must be (n_levels >= 3, H, W), got shape {stack.shape}")
    z, _ = encode_planes(model, stack, fit=fit)
    latents = [select_sample(z, i) for i in range(stack.shape[0])]
    return {"lds": latent_lds(latents), "apd": latent_apd(latents, levels)}
