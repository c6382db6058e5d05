"""The halo (voxels of context on every side of a block's core) each deconvolution method needs for
its blocks to agree with a whole-volume run.

Halo rules (voxels per axis, from the PSF's RMS width ``sigma`` along the axis, i.e. the square
root of its second central moment; see :func:`rl_halo`, :func:`wiener_halo`):

* Richardson-Lucy (rl, rl-tv): each iteration convolves with the PSF and correlates back, so after
  ``n`` iterations a voxel can feel data up to ``2 n r`` voxels away (``r`` the PSF half-size), but
  that influence decays fast and spreads like a random walk, as ``sigma * sqrt(2 n + 1)``. The halo
  is ``ceil(sigma * (4 + 0.5 * sqrt(2 n + 1)))``, capped at ``2 n r``: four widths for the PSF
  itself plus half a diffusion width. Measured on a Poisson-noisy bead volume (40 x 128 x
  128, sigma 1.5/1.2/1.2, 20 iterations, chunks 16 x 48 x 48): this rule's halo (11, 9, 9) gives
  92 dB against the whole-volume result; a flat halo of 3, 5, 8 and 12 voxels gives 58, 67, 83
  and 102 dB; at 100 iterations a halo of 3 still gives 50 dB. A widefield PSF's faint defocus
  cone inflates its RMS width (8-12 voxels for a 31 x 65 x 65 kernel), so the rule asked for
  halos of 58-111 voxels, blocks several times the chunks and runs up to 6x slower than the
  whole volume. Where the RMS width exceeds the core's (:func:`psf_core_width`, the half-maximum
  width) the halo is therefore also capped at the larger of the PSF's size ``2 r`` and the rule on
  the core's width; compact PSFs (Gaussian, cropped at 1.3-2 sigma) keep the rule (a plain
  ``2 r`` cap had dropped them to 40-49 dB at 50-300 iterations). With the cap (30, 64, 64),
  phantoms of 48 x 160-192^2 with chunks 16 x 64 x 64 came within 80.6 dB (vectorial NA 1.4, 20 iterations) and 87.9 dB (Gibson-Lanni
  NA 1.2, 50 iterations) of the whole-volume result; at the half-size, 47 and 53 dB.
  tests/pipeline/test_seams.py asserts >= 50 dB for rl, rl-tv and accelerated rl.
* Wiener: a regularised inverse filter, whose impulse response lengthens as the balance
  ``lambda`` falls; the halo is ``ceil(sigma * (6 + log10(1 / lambda)))``. Measured as above: a
  halo of 8 voxels gives 72/62/56 dB at lambda 1e-2/1e-3/1e-4, 12 voxels 77/65/59 dB.
* Self-supervised network: the context of an in-memory run's tiles
  (:func:`deconv3d.selfsup.default_context`: 32 voxels for the default 3D network, at least
  the PSF half-size), rounded up to whole pooling cells (``2**depth``): blocks then agree with
  the in-memory run as its tiles agree with each other (94 dB on a trained network in float32,
  86 dB with bfloat16 inference; see there).
  The network's whole receptive field (:func:`deconv3d.selfsup.unet.receptive_radius`: 52
  voxels, 56 in whole cells), the halo before, made blocks equal a pass with that context, which
  no in-memory run makes (73 dB from it), at 2.7-3.7x the time. Told where its block lies
  (:class:`Placement`), the network predicts only the core, with the halo as its context, on the
  whole volume's pooling grid (on a volume that is not a multiple of ``2**depth``, blocks that
  computed on their own grid differed from a whole-volume pass by up to a quarter of the range,
  and from each other at the seams).
"""

from __future__ import annotations

import math

import numpy as np

from deconv3d._spectral import psf_rms_width

__all__ = ["rl_halo", "psf_core_width", "wiener_halo", "chunk_multiple_for", "halo_for", "psf_rms_width"]


def rl_halo(psf, iterations: int) -> tuple[int, ...]:
    """The Richardson-Lucy halo per axis: ``ceil(sigma (4 + 0.5 sqrt(2n + 1)))``, at most ``2 n r``;
    where the RMS width exceeds the core's (:func:`psf_core_width`, heavy tails), at most the
    larger of the PSF's size ``2 r`` and the same rule on the core's width."""
    psf = np.asarray(psf)
    growth = 4 + 0.5 * math.sqrt(2 * iterations + 1)
    halo = []
    for s, core, k in zip(psf_rms_width(psf), psf_core_width(psf), psf.shape):
        tails = max(2 * (k // 2), math.ceil(core * growth))  # the cap for tails beyond the core
        halo.append(int(max(0, min(math.ceil(s * growth), tails, 2 * iterations * (k // 2)))))
    return tuple(halo)


def psf_core_width(psf) -> tuple[float, ...]:
    """Per axis, the width at half maximum of the PSF's profile along the line through its peak, as
    a Gaussian's sigma (FWHM / 2.355, linear interpolation between samples; the whole axis where it
    stays above half). Unlike the RMS width it ignores faint tails: a widefield PSF's defocus cone
    made the RMS width 8-12 voxels for a core of 1-3 (its projection along z is flat: every plane
    holds the same light, so the line, not the projection)."""
    h = np.clip(np.asarray(psf, dtype=np.float64), 0, None)
    centre = np.unravel_index(int(np.argmax(h)), h.shape)
    widths = []
    for axis in range(h.ndim):
        profile = h[tuple(slice(None) if a == axis else c for a, c in enumerate(centre))]
        peak = int(np.argmax(profile))
        half = profile[peak] / 2
        left, right = float(peak), float(peak)
        i = peak
        while i > 0 and profile[i - 1] >= half:
            i -= 1
        left = i - (profile[i] - half) / (profile[i] - profile[i - 1]) if i > 0 else -0.5
        i = peak
        while i < profile.size - 1 and profile[i + 1] >= half:
            i += 1
        right = i + (profile[i] - half) / (profile[i] - profile[i + 1]) if i < profile.size - 1 else profile.size - 0.5
        widths.append((right - left) / (2 * math.sqrt(2 * math.log(2))))
    return tuple(widths)


def wiener_halo(psf, balance: float) -> tuple[int, ...]:
    """The Wiener halo per axis: ``ceil(sigma (6 + log10(1 / balance)))``, the filter's reach
    (:func:`deconv3d.classical.wiener.wiener_reach`, which also sets its reflect boundary's depth)."""
    from deconv3d.classical.wiener import wiener_reach

    return wiener_reach(psf, balance)


def chunk_multiple_for(block_fn) -> int:
    """The multiple that core chunk sides must be (its ``chunk_multiple()`` method), else 1."""
    get = getattr(block_fn, "chunk_multiple", None)
    return max(1, int(get())) if get is not None else 1


def halo_for(block_fn) -> tuple[int, ...]:
    """The halo a block callable asks for (its ``halo()`` method), or no halo."""
    get = getattr(block_fn, "halo", None)
    return tuple(get()) if get is not None else ()
