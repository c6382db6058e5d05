"""Planes to autoencoder latents and back, and the linear arithmetic on latents.

The helpers behind :mod:`deconv3d.latent.ops` (blur synthesis and deblurring): linear
combinations of latents (:func:`lincomb`, also the interpolation that
:mod:`deconv3d.latent.train` trains on), the checks on the 2D planes given, the warning of a
hot pixel that sets a plane's range, each plane's min-max normalisation and the mapping of
a decoded plane back to an intensity range, reflect-padding to the network's divisor, and
encoding and chunked decoding of a batch of planes. The intensity scale and padding rules
are described in the module docstring of :mod:`deconv3d.latent.ops`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from deconv3d._arrays import as_numpy
from deconv3d.errors import InputError

__all__ = ["lincomb", "interpolate", "interior_fractions", "encode_planes", "decode_latents", "select_sample",
           "as_plane_pair", "warn_of_hot_pixels", "minmax_normalise", "restore_range", "HOT_PIXEL_RATIO"]

_DECODE_CHUNK = 16


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


def as_plane_pair(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_plane(a, names[0]), _as_plane(b, names[1])
    if a.shape != b.shape:
        raise InputError(f"{names[0]} {a.shape} and {names[1]} {b.shape} differ in shape: give planes of one stack")
    return a, b


#: A plane's maximum is taken for a hot pixel when it stands over this many times both its brightest
#: neighbour and the brightest pixel beyond them, all above the plane's minimum.
HOT_PIXEL_RATIO = 2.0


def warn_of_hot_pixels(planes, names) -> None:
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


def minmax_normalise(x: np.ndarray) -> tuple[np.ndarray, float, float]:
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
    normed = np.stack([minmax_normalise(p)[0] for p in planes])
    padded = _pad_to_divisor(normed, int(getattr(model, "divisor", 1)), fit)
    if hasattr(model, "eval"):
        model.eval()
    x = torch.from_numpy(np.ascontiguousarray(padded)).unsqueeze(1).to(_device(model))
    with torch.no_grad():
        return model.encode(x), planes.shape[-2:]


def decode_latents(model, z, shape) -> np.ndarray:
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


def select_sample(z, index: int):
    """Sample ``index`` of a batched latent, keeping a batch axis of 1."""
    if isinstance(z, (tuple, list)):
        return tuple(t[index:index + 1] for t in z)
    return z[index:index + 1]


def restore_range(y: np.ndarray, coeffs, ranges, fallback: int) -> np.ndarray:
    """Map a [0, 1] plane to the range ``sum c_i (lo_i, hi_i)`` (or ``ranges[fallback]``)."""
    lo = sum(c * r[0] for c, r in zip(coeffs, ranges))
    hi = sum(c * r[1] for c, r in zip(coeffs, ranges))
    if not hi > lo:
        lo, hi = ranges[fallback]
    return (lo + (hi - lo) * y).astype(np.float32)
