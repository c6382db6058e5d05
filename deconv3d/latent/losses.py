"""Training losses of the linear-latent autoencoder (pure functions of tensors).

A training triplet holds planes ``x1, x2, x3`` at blur levels ``a < m < b`` with
``alpha = (b - m) / (b - a)``; ``z_i = E(x_i)``, ``y_i = D(z_i)`` and the interpolated
latent ``z2' = alpha z1 + (1 - alpha) z3`` decodes to ``y2' = D(z2')``. Mazilu et al.
define three objectives:

* baseline  ``L_b = 1/2 [MSE(y1, x1) + MSE(y3, x3)]`` (a plain autoencoder);
* implicit  ``L_i = L_b + MSE(y2', x2)`` (the interpolation must decode to ``x2``);
* explicit  ``L_d = L_i + w dist(z2', E(x2))`` (it must also match the encoding of ``x2``),
  with ``dist`` the mean squared error (the authors' code) or the mean absolute error
  (the paper's figure), and ``w`` the latent weight (1 in the paper; a parameter here).
  Beyond the paper, the latent term can be taken relative to the distance being
  interpolated, ``dist(z2', E(x2)) / dist(E(x1), E(x3))`` (``latent_norm="endpoints"``):
  the absolute term also falls when the encoder merely shrinks all its latents, which the
  decoder undoes, while the relative one only falls when the latents become more linear.

Latents are tuples of tensors (:mod:`deconv3d.latent.model`); the latent distance is the
mean over all their elements together, i.e. over the concatenation of the flattened tensors.

References
----------
.. [1] P. Mazilu, H. Wang, S. Dummer, R. Veldhuis, C. Brune and N. Strisciuglio,
   "Defocus blur synthesis and deblurring via interpolation and extrapolation in latent
   space", CAIP 2023, arXiv:2307.15461.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deconv3d.errors import InputError

__all__ = ["VARIANTS", "DISTANCES", "LATENT_NORMS", "latent_distance", "baseline_loss", "implicit_loss",
           "explicit_loss"]

VARIANTS = ("baseline", "implicit", "explicit")
DISTANCES = ("mse", "l1")
LATENT_NORMS = ("none", "endpoints")


def _value(t: torch.Tensor) -> float:
    return float(t.detach())


def _parts(z) -> tuple:
    return tuple(z) if isinstance(z, (tuple, list)) else (z,)


def latent_distance(z_a, z_b, dist: str = "mse") -> torch.Tensor:
    """Mean squared (``"mse"``) or absolute (``"l1"``) difference over all latent elements.

    Examples
    --------
    >>> float(latent_distance((torch.zeros(2), torch.zeros(2)), (torch.ones(2), 3 * torch.ones(2)), "l1"))
    2.0
    """
    if dist not in DISTANCES:
        raise InputError(f"dist must be one of {', '.join(DISTANCES)}, got {dist!r}")
    a, b = _parts(z_a), _parts(z_b)
    if len(a) != len(b):
        raise InputError(f"latents have {len(a)} and {len(b)} tensors: they must have the same structure")
    total, count = 0.0, 0
    for ta, tb in zip(a, b):
        diff = ta - tb
        total = total + (diff.square().sum() if dist == "mse" else diff.abs().sum())
        count += diff.numel()
    return total / count


def baseline_loss(x1, x3, y1, y3) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_b = 1/2 [MSE(y1, x1) + MSE(y3, x3)]``: reconstruction of the triplet's ends.

    Parameters
    ----------
    x1, x3 : torch.Tensor
        Planes at the lower and upper level.
    y1, y3 : torch.Tensor
        Their reconstructions ``D(E(x1))``, ``D(E(x3))``.

    Returns
    -------
    (torch.Tensor, dict)
        The scalar loss and its terms as floats (``"recon"``, ``"total"``).

    Examples
    --------
    >>> x, y = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    >>> baseline_loss(x, x, y, x)[1]["total"]
    0.5
    """
    recon = 0.5 * (F.mse_loss(y1, x1) + F.mse_loss(y3, x3))
    return recon, {"recon": _value(recon), "total": _value(recon)}


def implicit_loss(x1, x2, x3, y1, y2_interp, y3) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_i = L_b + MSE(D(z2'), x2)``: the interpolated latent must decode to the middle plane.

    Parameters
    ----------
    x1, x2, x3 : torch.Tensor
        The triplet's planes (levels ``a < m < b``).
    y1, y2_interp, y3 : torch.Tensor
        ``D(z1)``, ``D(alpha z1 + (1 - alpha) z3)`` and ``D(z3)``.

    Returns
    -------
    (torch.Tensor, dict)
        The scalar loss and its terms (``"recon"``, ``"interp"``, ``"total"``).
    """
    recon, terms = baseline_loss(x1, x3, y1, y3)
    interp = F.mse_loss(y2_interp, x2)
    total = recon + interp
    return total, {**terms, "interp": _value(interp), "total": _value(total)}


def explicit_loss(x1, x2, x3, y1, y2_interp, y3, z2_interp, z2, dist: str = "mse", weight: float = 1.0,
                  z_ends=None) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_d = L_i + w dist(z2', E(x2))``: the interpolated latent must also equal ``E(x2)``.

    Parameters
    ----------
    x1, x2, x3, y1, y2_interp, y3 : torch.Tensor
        As in :func:`implicit_loss`.
    z2_interp : tuple of torch.Tensor
        ``z2' = alpha z1 + (1 - alpha) z3``.
    z2 : tuple of torch.Tensor
        ``E(x2)``.
    dist : {"mse", "l1"}, optional
        Latent distance (:func:`latent_distance`).
    weight : float, optional
        ``w``, the latent term's weight (the paper's 1 by default).
    z_ends : (z1, z3), optional
        ``E(x1)`` and ``E(x3)``: when given, the latent term is divided by ``dist(z1, z3)``,
        which makes it independent of the latents' scale (beyond the paper; module docstring).

    Returns
    -------
    (torch.Tensor, dict)
        The scalar loss and its terms (``"recon"``, ``"interp"``, ``"latent"`` unweighted,
        ``"total"``).

    Examples
    --------
    Scaling every latent by the same factor leaves the relative term unchanged:

    >>> z1, z3, z2, zi = (torch.zeros(2),), (torch.full((2,), 2.0),), (torch.ones(2),), (torch.full((2,), 1.5),)
    >>> x = torch.zeros(1, 1, 1, 2)
    >>> rel = [explicit_loss(x, x, x, x, x, x, tuple(s * t for t in zi), tuple(s * t for t in z2),
    ...                      z_ends=(tuple(s * t for t in z1), tuple(s * t for t in z3)))[1]["latent"]
    ...        for s in (1.0, 0.1)]
    >>> [round(v, 6) for v in rel]  # 0.25 / 4
    [0.0625, 0.0625]
    """
    implicit, terms = implicit_loss(x1, x2, x3, y1, y2_interp, y3)
    latent = latent_distance(z2_interp, z2, dist)
    if z_ends is not None:
        latent = latent / latent_distance(z_ends[0], z_ends[1], dist).clamp_min(1e-12)
    total = implicit + weight * latent
    return total, {**terms, "latent": _value(latent), "total": _value(total)}
