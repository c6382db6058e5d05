"""Focal stacks, blur levels and training triplets for the linear-latent autoencoder.

A focal stack is an array ``(n_levels, H, W)`` of planes of one field of view at known
blur levels; a set of stacks is ``(n_images, n_levels, H, W)``. Following Mazilu et al.,
level values grow towards focus: with the paper's levels 0, 2, ..., 16, level 16 is in
focus and level 0 the most blurred. Every plane is min-max normalised to [0, 1] on its own.

Built-in synthetic stacks make everything work offline: sharp phantoms (nuclei, filaments,
beads from :mod:`deconv3d.synthetic`, or planes you supply) are blurred with the lateral
planes of a widefield PSF (:func:`deconv3d.psf.generate_psf`) at increasing axial defocus,
then get Poisson-Gaussian noise. Real sharp planes work the same way: e.g. the in-focus
planes of the confocal nuclei stack (``deconv3d.sample_data.nuclei()``, read by the caller)
passed to :func:`focal_stacks_from_images`.

Training triplets ``(x1, x2, x3)`` sit at levels ``a < m < b`` with
``alpha = (b - m) / (b - a)``, the weight of ``z1`` in ``z2' = alpha z1 + (1 - alpha) z3``.
The paper's midpoint triplets (0,16,8), (0,8,4), (8,16,12), (0,4,2), (4,8,6), (8,12,10),
(12,16,14) are the dyadic subdivision of the level range (:func:`dyadic_triplets`).

References
----------
.. [1] P. Mazilu, H. Wang, S. Dummer, R. Veldhuis, C. Brune and N. Strisciuglio,
   "Defocus blur synthesis and deblurring via interpolation and extrapolation in latent
   space", CAIP 2023, arXiv:2307.15461.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from deconv3d import synthetic
from deconv3d._arrays import as_numpy
from deconv3d.errors import InputError
from deconv3d.psf import generate_psf

__all__ = ["PAPER_LEVELS", "Triplet", "check_levels", "triplet_alpha", "dyadic_triplets", "all_triplets",
           "defocus_psfs", "focal_stacks_from_images", "synthetic_focal_stacks", "normalize_planes",
           "split_by_image", "tile_stacks", "ten_crop_positions", "fixed_triplet_crops", "TripletSampler"]

#: The paper's blur levels: 0 (most blurred) to 16 (in focus) in steps of 2.
PAPER_LEVELS = tuple(range(0, 17, 2))

DEFAULT_NOISE = (2e-4, 2e-3)  # (a, sigma) of add_noise_gaussian_poisson


@dataclass(frozen=True)
class Triplet:
    """Indices into the level axis of a training triplet and the weight of the lower end."""

    low: int
    mid: int
    high: int
    alpha: float  # (b - m) / (b - a) for level values a, m, b


# ------------------------------------------------------------------ levels and triplets


def check_levels(levels, n: int | None = None) -> np.ndarray:
    """Level values as a float64 array: finite, strictly increasing, at least 3 (and ``n``)."""
    try:
        lv = np.asarray(levels, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InputError(f"levels must be a sequence of numbers, got {levels!r}") from None
    if lv.size < 3 or not np.isfinite(lv).all() or np.any(np.diff(lv) <= 0):
        raise InputError(f"levels must be at least 3 finite, strictly increasing values, got {lv.tolist()}")
    if n is not None and lv.size != n:
        raise InputError(f"got {lv.size} level values for stacks with {n} planes: give one level per plane")
    return lv


def triplet_alpha(a: float, m: float, b: float) -> float:
    """``(b - m) / (b - a)``, the weight of the level-``a`` latent that reproduces level ``m``.

    Examples
    --------
    >>> triplet_alpha(0, 4, 16)
    0.75
    """
    if not a < m < b:
        raise InputError(f"triplet levels must satisfy a < m < b, got ({a}, {m}, {b})")
    return (b - m) / (b - a)


def _triplet(levels: np.ndarray, i: int, j: int, k: int) -> Triplet:
    return Triplet(i, j, k, triplet_alpha(levels[i], levels[j], levels[k]))


def dyadic_triplets(levels) -> list[Triplet]:
    """Midpoint triplets of the recursive halving of the level range, coarsest first.

    The range ``[lo, hi]`` of level indices gives ``(lo, (lo + hi) // 2, hi)``, then both
    halves are split the same way while they hold an interior level. For the paper's
    levels 0, 2, ..., 16 these are its seven triplets (all with ``alpha = 0.5``).

    Examples
    --------
    >>> [(PAPER_LEVELS[t.low], PAPER_LEVELS[t.mid], PAPER_LEVELS[t.high]) for t in dyadic_triplets(PAPER_LEVELS)][:3]
    [(0, 8, 16), (0, 4, 8), (8, 12, 16)]
    """
    lv = check_levels(levels)
    out, queue = [], [(0, lv.size - 1)]
    while queue:
        lo, hi = queue.pop(0)
        if hi - lo < 2:
            continue
        mid = (lo + hi) // 2
        out.append(_triplet(lv, lo, mid, hi))
        queue += [(lo, mid), (mid, hi)]
    return out


def all_triplets(levels) -> list[Triplet]:
    """Every triplet ``a < m < b`` of the levels, with its ``alpha``.

    Examples
    --------
    >>> len(all_triplets([0, 1, 2, 3]))
    4
    """
    lv = check_levels(levels)
    return [_triplet(lv, i, j, k) for i, j, k in itertools.combinations(range(lv.size), 3)]


# ------------------------------------------------------------------ synthetic stacks


def defocus_psfs(levels, *, focus: float | None = None, um_per_level: float = 0.125, pixel_um: float = 0.1,
                 na: float = 0.8, wavelength: float = 0.52, ni: float = 1.33, model: str = "gibson-lanni",
                 size: int | None = None) -> np.ndarray:
    """Lateral widefield PSF planes at the defocus of each level, each with unit sum.

    Parameters
    ----------
    levels : sequence of int
        Integer level values; level ``focus`` (default: the largest) is in focus and
        level ``l`` is ``(focus - l) * um_per_level`` micrometres out of focus.
    um_per_level : float, optional
        Defocus per level unit in micrometres.
    pixel_um, na, wavelength, ni, model : optional
        Pixel size, numerical aperture, emission wavelength (um), immersion and sample
        index, and psfmodels model (see :func:`deconv3d.psf.generate_psf`).
    size : int, optional
        Odd side of the PSF planes; by default the geometric defocus radius plus two
        Airy radii.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(n_levels, size, size)``.
    """
    lv = check_levels(levels)
    focus = float(lv[-1] if focus is None else focus)
    offsets = focus - lv
    if not np.allclose(offsets, np.round(offsets)) or um_per_level <= 0 or pixel_um <= 0:
        raise InputError("synthetic stacks need integer levels and positive um_per_level and pixel_um")
    offsets = np.round(offsets).astype(int)
    reach = int(np.abs(offsets).max())
    if size is None:
        cone = math.tan(math.asin(min(na / ni, 0.99))) * reach * um_per_level
        size = 2 * math.ceil((cone + 2 * 0.61 * wavelength / na) / pixel_um) + 1
    psf = generate_psf(model, (2 * reach + 1, int(size) | 1, int(size) | 1), (um_per_level, pixel_um, pixel_um),
                       na=na, wavelength=wavelength, ni=ni, ns=ni)
    planes = psf[reach + offsets]
    return (planes / planes.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def _blur_plane(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Blur with a reflect-padded border so that no dark frame appears at the edges."""
    r = psf.shape[-1] // 2
    padded = np.pad(image, r, mode="reflect" if min(image.shape) > r else "edge")
    return synthetic.blur(padded, psf)[r:r + image.shape[0], r:r + image.shape[1]]


def focal_stacks_from_images(images, levels=PAPER_LEVELS, *, noise=DEFAULT_NOISE, seed=0, **psf_options
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Focal stacks made from sharp planes by defocus blur and noise.

    Parameters
    ----------
    images : array_like
        Sharp planes ``(n_images, H, W)`` (or one ``(H, W)`` plane), any intensity scale.
    levels : sequence of int, optional
        Level values; the largest is in focus (see :func:`defocus_psfs`).
    noise : (float, float) or None, optional
        ``(a, sigma)`` of :func:`deconv3d.synthetic.add_noise_gaussian_poisson` applied to
        the blurred planes (sharp planes scaled to [0, 1]); ``None`` for no noise.
    seed : int or numpy.random.Generator, optional
        Source of the noise.
    **psf_options
        Passed to :func:`defocus_psfs`.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Stacks ``(n_images, n_levels, H, W)`` float32, each plane min-max normalised to
        [0, 1], and the level values (float32).
    """
    images = as_numpy(images, dtype=np.float32)
    images = images[None] if images.ndim == 2 else images
    if images.ndim != 3 or images.size == 0 or not np.isfinite(images).all():
        raise InputError(f"images must be finite (n, H, W) sharp planes, got shape {images.shape}")
    lv = check_levels(levels)
    psfs = defocus_psfs(lv, **psf_options)
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    stacks = np.empty((images.shape[0], lv.size) + images.shape[1:], np.float32)
    for i, sharp in enumerate(normalize_planes(images)):
        for j, psf in enumerate(psfs):
            plane = _blur_plane(sharp, psf)
            if noise is not None:
                plane = synthetic.add_noise_gaussian_poisson(plane, a=noise[0], sigma=noise[1], bits=12, seed=rng)
            stacks[i, j] = plane
    return normalize_planes(stacks), lv.astype(np.float32)


def synthetic_focal_stacks(n_images: int = 8, shape=(64, 64), levels=PAPER_LEVELS, *, seed=0,
                           noise=DEFAULT_NOISE, **psf_options) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic focal stacks of fluorescence phantoms (nuclei, filaments and beads).

    Parameters
    ----------
    n_images : int, optional
        Number of fields of view.
    shape : (int, int), optional
        Plane size.
    levels, noise, **psf_options
        See :func:`focal_stacks_from_images`.
    seed : int, optional
        Seeds the phantoms and the noise.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Stacks ``(n_images, n_levels, H, W)`` float32 in [0, 1] and the level values.

    Examples
    --------
    >>> stacks, levels = synthetic_focal_stacks(2, (32, 32), levels=(0, 4, 8), seed=0)
    >>> stacks.shape, levels.tolist()
    ((2, 3, 32, 32), [0.0, 4.0, 8.0])
    """
    if int(n_images) < 1:
        raise InputError(f"n_images must be a positive integer, got {n_images}")
    if np.ndim(shape) != 1 or len(shape) != 2:
        raise InputError(f"shape must be the plane's (height, width), got {shape!r}")
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**63 - 1, size=int(n_images))
    sharp = np.stack([synthetic.phantom(tuple(shape), seed=int(s)) for s in seeds])
    return focal_stacks_from_images(sharp, levels, noise=noise, seed=rng, **psf_options)


# ------------------------------------------------------------------ normalisation and split


def normalize_planes(planes) -> np.ndarray:
    """Min-max normalise every 2D plane (last two axes) to [0, 1]; constant planes become 0."""
    x = as_numpy(planes, dtype=np.float32)
    lo = x.min(axis=(-2, -1), keepdims=True)
    span = x.max(axis=(-2, -1), keepdims=True) - lo
    return ((x - lo) / np.where(span > 0, span, 1)).astype(np.float32)


def split_by_image(stacks, test_fraction: float = 0.25, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Random split of ``(n_images, ...)`` stacks into (train, test) by whole image.

    At least one image goes to each side when ``test_fraction > 0`` (``n_images >= 2``).
    """
    stacks = as_numpy(stacks)
    n = stacks.shape[0]
    if not 0 <= test_fraction < 1:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = 0 if test_fraction == 0 else min(max(1, round(test_fraction * n)), n - 1)
    if test_fraction > 0 and n < 2:
        raise InputError("a train/validation split needs at least 2 stacks: add stacks or train without one, with "
                         "LatentTrainConfig(val_fraction=0) (--val-fraction 0 on the command line)")
    order = np.random.default_rng(seed).permutation(n)
    return stacks[np.sort(order[n_test:])], stacks[np.sort(order[:n_test])]


def tile_stacks(stacks, tile: int, max_per_axis: int = 2) -> np.ndarray:
    """Cut ``(n, L, H, W)`` stacks into up to ``max_per_axis**2`` non-overlapping tiles.

    Tiles are at least ``tile`` pixels on a side; they let one field of view supply
    separate images for :func:`split_by_image`. Stacks too small to tile come back as is.

    Examples
    --------
    >>> tile_stacks(np.zeros((1, 3, 40, 20)), 16).shape
    (2, 3, 20, 20)
    """
    stacks = as_numpy(stacks)
    h, w = stacks.shape[-2:]
    ny, nx = (max(1, min(int(max_per_axis), n // int(tile))) for n in (h, w))
    if ny * nx == 1:
        return stacks
    th, tw = h // ny, w // nx
    tiles = [stacks[..., i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(ny) for j in range(nx)]
    return np.ascontiguousarray(np.concatenate(tiles))


# ------------------------------------------------------------------ crops


def ten_crop_positions(h: int, w: int, crop: int) -> list[tuple[int, int, bool]]:
    """Ten-crop positions ``(y, x, flip)``: four corners and the centre, unflipped and mirrored.

    Duplicates (planes not larger than the crop) are removed.
    """
    if crop > min(h, w):
        raise InputError(f"crop {crop} is larger than the planes ({h}, {w}): use a smaller crop")
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
    return list(dict.fromkeys((y, x, flip) for flip in (False, True) for y, x in corners))


def fixed_triplet_crops(stacks, triplets, crop: int) -> tuple[np.ndarray, ...]:
    """Every ten-crop of every triplet of every stack: ``(x1, x2, x3, alpha)`` arrays.

    The planes are ``(N, 1, crop, crop)`` float32, ``alpha`` is ``(N,)`` float32.
    """
    stacks = as_numpy(stacks, dtype=np.float32)
    positions = ten_crop_positions(stacks.shape[-2], stacks.shape[-1], crop)
    planes, alphas = [], []
    for stack, t, (y, x, flip) in itertools.product(stacks, triplets, positions):
        tri = stack[[t.low, t.mid, t.high], y:y + crop, x:x + crop]
        planes.append(tri[..., ::-1] if flip else tri)
        alphas.append(t.alpha)
    arr = np.ascontiguousarray(np.stack(planes)[:, :, None])
    return arr[:, 0], arr[:, 1], arr[:, 2], np.asarray(alphas, np.float32)


class TripletSampler:
    """Random training batches of triplet crops, reproducible from ``seed``.

    Parameters
    ----------
    stacks : numpy.ndarray
        ``(n_images, n_levels, H, W)`` normalised planes (moved once to ``device``).
    triplets : list of Triplet
    crop : int
        Side of the square crops (the same window in the three planes).
    seed : int, optional
        Seeds a numpy Generator that draws image, triplet, position and augmentation.
    device : torch.device or str, optional
    augment : bool, optional
        Random rot90 and mirror, the same for the three planes of a triplet.
    """

    def __init__(self, stacks, triplets, crop: int, *, seed: int = 0, device="cpu", augment: bool = True):
        stacks = as_numpy(stacks, dtype=np.float32)
        if crop > min(stacks.shape[-2:]):
            raise InputError(f"crop {crop} is larger than the planes {stacks.shape[-2:]}: use a smaller crop")
        if not triplets:
            raise InputError("no training triplets: the stacks need at least 3 levels")
        self.stacks = torch.from_numpy(np.ascontiguousarray(stacks)).to(device)
        self.triplets, self.crop, self.augment = list(triplets), int(crop), augment
        self.rng = np.random.default_rng(seed)
        self.device = self.stacks.device

    def _one(self) -> tuple[torch.Tensor, float]:
        n, _, h, w = self.stacks.shape
        t = self.triplets[self.rng.integers(len(self.triplets))]
        i, y, x = self.rng.integers(n), self.rng.integers(h - self.crop + 1), self.rng.integers(w - self.crop + 1)
        tri = self.stacks[i, [t.low, t.mid, t.high], y:y + self.crop, x:x + self.crop]
        if self.augment:
            k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            tri = torch.rot90(tri.flip(-1) if flip else tri, k, (-2, -1))
        return tri, t.alpha

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x1, x2, x3, alpha)``: planes ``(batch, 1, crop, crop)`` and ``alpha`` ``(batch,)``."""
        items = [self._one() for _ in range(int(batch))]
        planes = torch.stack([p for p, _ in items]).unsqueeze(2)
        alpha = torch.tensor([a for _, a in items], dtype=torch.float32, device=self.device)
        return planes[:, 0], planes[:, 1], planes[:, 2], alpha
