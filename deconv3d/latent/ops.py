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
from typing import Optional, Sequence

import numpy as np
import torch

from deconv3d._arrays import as_numpy
from deconv3d.errors import InputError

__all__ = ["lincomb", "interpolate", "interior_fractions", "synthesize_blur", "deblur",
           "blend_pixels", "extrapolate_pixels", "encode_planes", "linearity_scores", "FormWarning"]

_DECODE_CHUNK = 16
FRACTION_LIMITS = (-10.0, 11.0)  # synthesize_blur's fractions, as deconv3d blur synth --range allows
#: The largest alpha :func:`deblur` takes: its weight 1 / (1 - alpha) reaches FRACTION_LIMITS' 11 there
#: (0.9999 wrote a plane of mean -0.065 from one of mean 0.17).
MAX_DEBLUR_ALPHA = 1 - 1 / FRACTION_LIMITS[1]


# ------------------------------------------------------------------ latent arithmetic


def lincomb(coeffs: Sequence, latents: Sequence):
    """Linear combination ``sum_i coeffs[i] * latents[i]`` applied to every latent tensor.

    Parameters
    ----------
    coeffs : sequence of float or torch.Tensor
        One coefficient per latent; tensors broadcast (e.g. shape ``(N, 1, 1, 1)`` for a
        coefficient per sample).
    latents : sequence of latents
        Each a tensor (or array) or a tuple/list of tensors of matching shapes.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        Same structure as the latents.

    Examples
    --------
    >>> z = lincomb([0.25, 0.75], [(torch.zeros(2),), (torch.ones(2),)])
    >>> z[0].tolist()
    [0.75, 0.75]
    """
    if len(coeffs) != len(latents) or not latents:
        raise InputError(f"need one coefficient per latent, got {len(coeffs)} and {len(latents)}")
    if not isinstance(latents[0], (tuple, list)):
        return _weighted_sum(coeffs, latents)
    n = len(latents[0])
    if any(not isinstance(z, (tuple, list)) or len(z) != n for z in latents):
        raise InputError("latents to combine must all be tuples with the same number of tensors")
    return tuple(_weighted_sum(coeffs, [z[k] for z in latents]) for k in range(n))


def _weighted_sum(coeffs, tensors):
    total = coeffs[0] * tensors[0]
    for c, t in zip(coeffs[1:], tensors[1:]):
        total = total + c * t
    return total


def interpolate(z_a, z_b, t):
    """``(1 - t) z_a + t z_b`` for latents (tensors or tuples of tensors)."""
    return lincomb([1 - t, t], [z_a, z_b])


def interior_fractions(n: int) -> np.ndarray:
    """``n`` evenly spaced fractions strictly between 0 and 1 (e.g. 3 -> 0.25, 0.5, 0.75)."""
    if int(n) < 1:
        raise InputError(f"the number of levels must be a positive integer, got {n}")
    return np.linspace(0.0, 1.0, int(n) + 2)[1:-1]


# ------------------------------------------------------------------ plane handling


def _as_plane(x, name: str) -> np.ndarray:
    x = as_numpy(x, dtype=np.float32)
    if x.ndim != 2 or x.size == 0:
        raise InputError(f"{name} must be a non-empty 2D plane, got shape {x.shape}: pass one plane of the stack")
    if not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or Inf values: clean the plane first")
    return x


def _pair(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_plane(a, names[0]), _as_plane(b, names[1])
    if a.shape != b.shape:
        raise InputError(f"{names[0]} {a.shape} and {names[1]} {b.shape} differ in shape: give planes of one stack")
    return a, b


#: A plane's maximum is taken for a hot pixel when it stands over this many times both its brightest
#: neighbour and the brightest pixel beyond them, all above the plane's minimum.
HOT_PIXEL_RATIO = 2.0


def _warn_of_hot_pixels(planes, names) -> None:
    """Warn where one pixel sets a plane's range: each plane is min-max normalised, so a hot pixel
    10x the in-focus maximum squeezed the rest into [0, 0.1], and the residual form scales its
    correction by that range (blur synthesis 34.5 -> 15.8 dB in the review). Only a pixel that
    stands alone over the whole plane counts: a noise maximum or one of several narrow beads has
    its like elsewhere (a rule on neighbours alone flagged 37 % of photon-limited planes)."""
    for plane, name in zip(planes, names):
        lo = float(plane.min())
        y, x = np.unravel_index(int(np.argmax(plane)), plane.shape)
        peak = float(plane[y, x]) - lo
        rest = plane.copy()
        rest[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = lo
        around = plane[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].copy()
        around[min(y, 1), min(x, 1)] = lo
        beyond, near = float(rest.max()) - lo, float(around.max()) - lo
        if peak > 0 and peak > HOT_PIXEL_RATIO * max(beyond, near):
            warnings.warn(f"the {name}'s brightest pixel, at (y={y}, x={x}), is {peak / max(beyond, near, 1e-30):.3g}x "
                          "its neighbours and the rest of the plane above its minimum (a hot pixel?): it sets the "
                          "intensity range the plane is normalised by, which degrades the result: remove it first "
                          "(e.g. a 3x3 median filter)", RuntimeWarning, stacklevel=3)


def _minmax(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(x.min()), float(x.max())
    scale = hi - lo if hi > lo else 1.0
    return ((x - lo) / scale).astype(np.float32), lo, hi


def _pad_to_divisor(planes: np.ndarray, divisor: int, fit: str) -> np.ndarray:
    """Reflect-pad ``(N, H, W)`` planes at the bottom/right to multiples of ``divisor``."""
    h, w = planes.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    if (ph or pw) and fit == "error":
        raise InputError(f"plane size ({h}, {w}) is not a multiple of the model's divisor {divisor}: "
                         "crop the planes or use fit='pad'")
    if fit not in ("pad", "error"):
        raise InputError(f"fit must be 'pad' or 'error', got {fit!r}")
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(planes, ((0, 0), (0, ph), (0, pw)), mode=mode) if ph or pw else planes


def _device(model) -> torch.device:
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    return params[0].device if params else torch.device("cpu")


def encode_planes(model, planes, *, fit: str = "pad"):
    """Latent of ``(N, H, W)`` planes, each min-max normalised; returns ``(latent, (H, W))``."""
    planes = as_numpy(planes, dtype=np.float32)
    normed = np.stack([_minmax(p)[0] for p in planes])
    padded = _pad_to_divisor(normed, int(getattr(model, "divisor", 1)), fit)
    if hasattr(model, "eval"):
        model.eval()
    x = torch.from_numpy(np.ascontiguousarray(padded)).unsqueeze(1).to(_device(model))
    with torch.no_grad():
        return model.encode(x), planes.shape[-2:]


def _decode(model, z, shape) -> np.ndarray:
    """Decode a batched latent in chunks; ``(N, H, W)`` cropped to ``shape``."""
    parts = z if isinstance(z, (tuple, list)) else (z,)
    n = parts[0].shape[0]
    out = []
    with torch.no_grad():
        for s in range(0, n, _DECODE_CHUNK):
            chunk = tuple(t[s:s + _DECODE_CHUNK] for t in parts)
            y = model.decode(chunk if isinstance(z, (tuple, list)) else chunk[0])
            out.append(y[:, 0, :shape[0], :shape[1]].float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _select(z, index: int):
    """Sample ``index`` of a batched latent, keeping a batch axis of 1."""
    if isinstance(z, (tuple, list)):
        return tuple(t[index:index + 1] for t in z)
    return z[index:index + 1]


def _restore(y: np.ndarray, coeffs, ranges, fallback: int) -> np.ndarray:
    """Map a [0, 1] plane to the range ``sum c_i (lo_i, hi_i)`` (or ``ranges[fallback]``)."""
    lo = sum(c * r[0] for c, r in zip(coeffs, ranges))
    hi = sum(c * r[1] for c, r in zip(coeffs, ranges))
    if not hi > lo:
        lo, hi = ranges[fallback]
    return (lo + (hi - lo) * y).astype(np.float32)


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
    far, near = _pair(far, near, ("far plane", "near plane"))
    _warn_of_hot_pixels((far, near), ("far plane", "near plane"))
    a = np.asarray(fractions, dtype=np.float64).reshape(-1)
    lo, hi = FRACTION_LIMITS
    if a.size == 0 or not np.isfinite(a).all() or not ((a >= lo) & (a <= hi)).all():
        raise InputError(f"fractions must be a non-empty list of finite numbers from {lo:g} to {hi:g} "
                         f"(0 is the far plane, 1 the near one), got {a.tolist()[:8]}")
    z, shape = encode_planes(model, np.stack([far, near]), fit=fit)
    device = (z[0] if isinstance(z, (tuple, list)) else z).device
    t = torch.as_tensor(a, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
    y = _decode(model, lincomb([1 - t, t], [_select(z, 0), _select(z, 1)]), shape)
    ranges = [_minmax(far)[1:], _minmax(near)[1:]]
    if residual:  # pixel blending in the planes' own intensities, plus the network's departure from it
        ends = _decode(model, z, shape)  # the reconstructions D(E(x_far)), D(E(x_near))
        w = a.reshape(-1, 1, 1).astype(np.float32)
        spans = [hi - lo for lo, hi in ranges]  # a constant plane spans 0, in any intensity scale
        span = (1 - w) * spans[0] + w * spans[1]  # the correction's scale: blended like the planes
        nearer = np.where(w >= 0.5, spans[1], spans[0])  # not positive: the nearer plane's span, else the other's
        span = np.where(span > 0, span, np.where(nearer > 0, nearer, max(spans))).astype(np.float32)
        correction = y - (1 - w) * ends[0] - w * ends[1]
        return ((1 - w) * far + w * near + span * correction).astype(np.float32)
    return np.stack([_restore(yk, (1 - ak, ak), ranges, int(ak >= 0.5)) for yk, ak in zip(y, a)])


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
    far, plane = _pair(far, plane, ("far plane", "plane to deblur"))
    _warn_of_hot_pixels((far, plane), ("far plane", "plane to deblur"))
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
    y = _decode(model, lincomb(list(coeffs), [_select(z, 0), _select(z, 1)]), shape)[0]
    if residual:
        y = y + (_minmax(plane)[0] - _decode(model, _select(z, 1), shape)[0])
    return _restore(y, coeffs, [_minmax(far)[1:], _minmax(plane)[1:]], 1)


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
    far, near = _pair(far, near, ("far plane", "near plane"))
    a = np.asarray(fractions, dtype=np.float32).reshape(-1, 1, 1)
    return ((1 - a) * far + a * near).astype(np.float32)


def extrapolate_pixels(far, plane, alpha: float) -> np.ndarray:
    """Pixel-space reference for :func:`deblur`: ``(x_k - alpha x_far) / (1 - alpha)``.

    Examples
    --------
    >>> float(extrapolate_pixels(np.zeros((2, 2)), np.ones((2, 2)), 0.5)[0, 0])
    2.0
    """
    far, plane = _pair(far, plane, ("far plane", "plane to deblur"))
    _warn_of_hot_pixels((far, plane), ("far plane", "plane to deblur"))
    if not 0 < float(alpha) < 1:
        raise InputError(f"alpha must lie strictly between 0 and 1 (the weight of the far plane), got {alpha}")
    return ((plane - np.float32(alpha) * far) / np.float32(1 - alpha)).astype(np.float32)


def linearity_scores(model, stack, levels=None, *, fit: str = "pad") -> dict[str, float]:
    """LDS and APD (:mod:`deconv3d.metrics`) of the latents of one focal stack.

    Parameters
    ----------
    model : Autoencoder
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

    stack = as_numpy(stack, dtype=np.float32)
    if stack.ndim != 3 or stack.shape[0] < 3:
        raise InputError(f"stack must be (n_levels >= 3, H, W), got shape {stack.shape}")
    z, _ = encode_planes(model, stack, fit=fit)
    latents = [_select(z, i) for i in range(stack.shape[0])]
    return {"lds": latent_lds(latents), "apd": latent_apd(latents, levels)}
