"""Memory model of chunked execution: the bytes one block of a method needs, and the predicted peak.

Peak resident memory of a run is modelled as ::

    peak = baseline + workers * block_bytes(core + 2 * halo)

``baseline`` is the process before any block runs (Python, torch, dask: measured at run time),
and ``block_bytes`` is what one block needs while its method runs. The blocks of an OME-Zarr input
may keep decoded chunks for one another, which the chunks are not chosen to make room for: the
cache takes what the blocks leave under the limit and is added to the predicted peak, with what
the blocks' reads hold beside it while they decode (:func:`deconv3d.pipeline.readers.chunk_cache_budget`). For the classical methods it
is the arrays that coexist at the method's peak (float32 = 4 bytes, complex64 half spectra = 8
bytes per element), times :data:`ARRAY_SAFETY`, plus :data:`BLOCK_OVERHEAD`:

Richardson-Lucy, Bertero boundary (:mod:`deconv3d.classical`), with ``F`` the voxels of the FFT
shape ``fast_shape(block + psf - 1)``, ``S`` the half-spectrum elements (about ``F / 2``) and
``B`` the block's voxels. The peak is in the loop, where the problem and the workspace coexist:

* real arrays of FFT shape: ``1 / H^T 1``, the workspace's two zero-margined FFT inputs (the
  estimate ``u`` lives in the first, ``y / H u`` is written into the second) and its output: 4 F;
  torch's transforms (:class:`deconv3d._fftw.TorchTransforms`, where pyFFTW is missing or the FFT
  is small) compute an inverse into a fresh array before copying it to the output: 1 F more.
  Biggs-Andrews adds ``x``, ``x_prev`` and numba's one step vector, 3 F (torch's passes: two step
  vectors and a scratch, 5 F; a replayed schedule keeps one step vector fewer, counted as the
  adaptive run that measures it); TV adds ``ndim`` gradients, the norm and the divergence:
  (ndim + 2) F;
* half spectra: the problem's OTF, the workspace spectrum, the conjugate OTF and, with FFTW, the
  OTF scaled by FFTW's normalisation (torch instead copies the spectrum that its inverse
  destroys): 4 S complex;
* block-sized arrays: the block read from the source and its clamped copy: 2 B. (``y / H u`` is
  written into the workspace's second input, and the returned crop is allocated once the
  workspace is gone. A block whose peak lies beyond ``2**±32`` runs divided by a power of two:
  that scaled copy is dropped before the loop, and the block's callback, which reads no
  estimate, gets no scaled copy of it per iteration, so such a block holds no more.)

The set-up of ``1 / H^T 1`` and of the OTF holds less, and is freed before the workspace exists.
Between blocks the last block's OTF and ``1 / H^T 1`` stay for a next block of its shape
(:mod:`deconv3d.classical._reuse`): 1 F real and 1 S complex, less than that block held, dropped
by a block of another shape before it builds its own, and during a block of that shape its own
(counted above). So they add to no block's count.
The zero and periodic boundaries need smaller FFTs, so the Bertero count bounds them. The
reflect boundary runs the Bertero model on the block mirrored by the PSF half-size: ``F`` from
``block + 2 (psf - 1)``, and its data arrays are that mirrored block's size.

Wiener: the padded block (``F`` the box of :func:`deconv3d.classical.wiener.mirror_box`: the block
mirrored by the PSF's size or twice the filter's reach, whichever is deeper, at most ``2 (n - 1)`` per
axis; given the core, one face of each axis where the block is longer than its core the PSF's size deep, as
the run mirrors a block's faces inside the volume: a block of the largest side may have its halo on one side
only, the other face the volume's, and one with a halo on both sides has a smaller box; with
``boundary="zero"`` the block with the PSF's size of zeros on each side, which the period box of a block
hardly deeper than the PSF does not bound: 48 against 30 planes for 16 planes and a PSF of 15), the OTF,
the quotient spectrum, the
copy of it that the inverse FFT destroys and the inverse's output (the result is a view of it):
2 F real + 3 S complex, and the block, 1 B. Between blocks the last block's OTF stays for a next
block of its FFT shape (:mod:`deconv3d.classical._reuse`, as RL's set-up): 1 S complex, less than
that block held, dropped by a block of another shape before it builds its own, and during a block
of that shape its own OTF (counted above). So it adds to no block's count, as RL's does not.
With the mirror twice the reach deep, one block's peak RSS growth measured 0.73-0.89 of this count
(``benchmarks/bench_block_memory.py``'s measurement, counted with the reach at a balance of 1e-3,
3 fresh processes per case: 32 x 128^2 and 64 x 256^2 blocks, PSFs 5^3 and 15^3).

Measured (``benchmarks/bench_block_memory.py``: peak RSS growth of one block in a fresh process
after the pipeline's set-up, 2 torch threads, PSF 15^3 and 31^3, blocks 32 x 128^2 to 96 x 384^2
and 64 x 512^2, FFTW and numba, torch's FFTs, torch's passes): these arrays plus 17-19 MB for
blocks whose arrays are above the mmap threshold (each is its own mapping: no allocator slack
in proportion), up to 45 MB for smaller ones (torch's first-call tables and code, arrays below the
threshold kept in the heap). With the factor and the overhead: 0.77-0.96 of ``block_bytes``
(0.52-1.03 down to 16 x 64 x 64 blocks, the excess within :data:`RESIDENT_ALLOWANCE`). The old
count (5 F real, 9 S complex, 4 B, Wiener's 2 S real more, all times 1.25) measured 0.42-0.83
(up to 1.9 on the smallest blocks). End to end (``run_chunked`` on 64 x 512^2, 20 iterations,
limits of 0.6-1.5 GB) the peak came to 0.87-0.93 of the limit with one worker and 0.80-0.88 with
two, against 0.67-0.75 with the old count.

Network inference: inputs and outputs of a tile (4 B) plus activations: in the UNet the widest
level holds ``base_channels`` channels at full resolution and every level below it half as
many voxels per channel, so with the skip tensors kept for the decoder the peak is about
``(3 + 4/3) * base_channels * B`` floats (``B`` the padded window), plus the weights; times
:data:`SAFETY`.

The model holds for one block in a fresh heap; that it also holds after hundreds of blocks needs
the allocator to give freed arrays back
(:func:`~deconv3d.pipeline.allocator.return_large_allocations`, and ``malloc_trim`` after every
block in :mod:`deconv3d.pipeline.chunked`): otherwise heap fragments pile up block after block.
End to end (``benchmarks/bench_pipeline.py``, CLI, RL 20 iterations, two torch threads,
``--memory-limit 512MB``, with the old count): peak 476 MB for a 0.25 GiB volume and 477 MB for
1 GiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from deconv3d.errors import InputError

__all__ = ["MemoryModel", "largest_block", "SAFETY", "ARRAY_SAFETY", "BLOCK_OVERHEAD", "RESIDENT_ALLOWANCE"]

SAFETY = 1.25  # the network's count (derived from the layers, not from the arrays one by one)
# The classical counts are the arrays that coexist at the peak: measured, one block holds them plus
# a constant (17-45 MB: torch's first-call tables and code, arrays below the mmap threshold kept in
# the heap), not a share of them. A few % for FFTW's plans and the allocator's pages.
ARRAY_SAFETY = 1.05
BLOCK_OVERHEAD = 40 * 10**6
# Memory that stays resident once the first block has run (torch's per-thread FFT plans and
# scratch, allocator arenas): ~50 MB measured with two torch threads on a 256 MiB volume, where
# the model without it fell 4-7 % short of the measured peak. Added once to every prediction.
RESIDENT_ALLOWANCE = 64 * 2**20
_F32, _C64 = 4, 8


def _rl_backends(shape: Sequence[int]) -> tuple[bool, bool]:
    """Whether the CPU Richardson-Lucy loop on ``shape`` (before rounding to a fast FFT size)
    transforms with FFTW (:func:`deconv3d._fftw.backend_for`) and runs numba's fused passes
    (:func:`deconv3d._rl_ops.fused_planned`, which asks without importing numba)."""
    import torch

    from deconv3d._fftw import backend_for
    from deconv3d._rl_ops import fused_planned
    from deconv3d._fft_shapes import fast_shape

    cpu, fft = torch.device("cpu"), fast_shape(shape)
    return backend_for(fft, cpu, torch.float32) == "fftw", fused_planned(cpu, torch.float32, fft)


def _fft_sizes(shape: Sequence[int]) -> tuple[int, int]:
    from deconv3d._fft_shapes import fast_shape

    fft = fast_shape(shape)
    half = math.prod(fft[:-1]) * (fft[-1] // 2 + 1)
    return math.prod(fft), half


@dataclass(frozen=True)
class MemoryModel:
    """Bytes one block needs for a method (see the module notes for the counts).

    Parameters
    ----------
    method : {"rl", "rl-tv", "wiener", "ssl"}
    psf_shape : tuple of int
    accelerate : bool
        Biggs-Andrews buffers (rl, rl-tv).
    base_channels : int
        UNet width (ssl).
    weights_bytes : int
        Size of the network's parameters (ssl).
    context : int
        Voxels of context around each tile of the region the network predicts (ssl:
        :meth:`~deconv3d.pipeline.network_block.NetworkBlock.reach`): the core's tiles, grown by that
        much on every side (taken from the halo, or mirrored at the volume border).
    boundary : str
        RL boundary (rl, rl-tv): ``"reflect"`` mirrors the block before the Bertero model; Wiener's
        ``"zero"`` pads it with zeros, any other its reflect boundary.
    saturation : bool
        RL fits saturated voxels as clipped (``--saturation``): counted as 1 B + 1 F float32, room for
        the clipped voxels' bounds held through the loop (1 B; reflect: mirrored, larger) and the
        copies their set-up makes. Measured on 64 x 512^2 with a clipped block of 20 x 200 x 200, PSF
        9^3, accelerated, 3 iterations, in memory: peak RSS +89 MB (Bertero), +81 MB (zero), +99 MB
        (reflect) over the run without it, where 1 B is 67 MB and 1 F 78-89 MB. (When ``--saturation``
        left the voxels out of the fit, with weights and their normalisation, that was +20, +202 and
        +152 MB.)
    reach : tuple of int
        Wiener's reach per axis (:func:`~deconv3d.classical.wiener.wiener_reach` of the PSF and the
        balance), which sets how deep its reflect boundary mirrors a block. Left empty, a block's halo
        beyond its core stands for it (the halo of a chunked Wiener run is that reach), and a block
        without a halo is counted with the reach of the widest PSF of ``psf_shape`` (RMS width
        ``(k - 1) / 2``) at the default balance of 1e-3: more than most PSFs need (1.5x and 2x the
        arrays of 64 x 512^2 and 64 x 256^2 blocks with a 15^3 Gaussian), less than a balance below 1e-3
        may.
    """

    method: str
    psf_shape: tuple
    accelerate: bool = False
    base_channels: int = 16
    weights_bytes: int = 0
    boundary: str = "bertero"
    context: int = 0
    saturation: bool = False
    reach: tuple = ()

    def block_bytes(self, block_shape: Sequence[int], core_shape: Sequence[int] | None = None) -> int:
        """Bytes for one block of ``block_shape`` (core and halo) whose core is ``core_shape``
        (default: the whole block, which has no halo)."""
        if self.method in ("rl", "rl-tv"):
            return self._rl_bytes(block_shape)
        if self.method == "wiener":
            return self._wiener_bytes(block_shape, core_shape)
        if self.method != "ssl":
            raise InputError(f"no memory model for method {self.method!r}")
        return int(SAFETY * self._network_bytes(block_shape, core_shape))

    def _rl_bytes(self, block_shape: Sequence[int]) -> int:
        """:meth:`block_bytes` of rl and rl-tv."""
        block = math.prod(block_shape)
        if self.boundary == "reflect":
            block_shape = [n + k - 1 for n, k in zip(block_shape, self.psf_shape)]
            block = math.prod(block_shape)
        fft = [n + k - 1 for n, k in zip(block_shape, self.psf_shape)]
        full, half = _fft_sizes(fft)
        fftw, fused = _rl_backends(fft)
        reals = 4 + (not fftw) + (3 if fused else 5) * bool(self.accelerate)
        reals += (len(block_shape) + 2) * (self.method == "rl-tv")
        total = reals * full * _F32 + 4 * half * _C64 + 2 * block * _F32
        total += (block + full) * _F32 * bool(self.saturation)
        return int(ARRAY_SAFETY * total + BLOCK_OVERHEAD)

    def _wiener_bytes(self, block_shape: Sequence[int], core_shape: Sequence[int] | None) -> int:
        """:meth:`block_bytes` of Wiener."""
        from deconv3d.classical.wiener import mirror_box, reach_for_widths

        block = math.prod(block_shape)
        reach = self.reach
        if not reach and core_shape is not None:  # a chunked run's halo is Wiener's reach (wiener_halo)
            reach = tuple((n - c) // 2 for n, c in zip(block_shape, core_shape))
        if not any(reach):  # the widest PSF of this size (RMS width (k - 1) / 2) at the default balance
            reach = reach_for_widths([(k - 1) / 2 for k in self.psf_shape], 1e-3)
        if self.boundary == "zero":  # the PSF's size of zeros on each side (wiener._wiener_extend)
            box = [n + 2 * k for n, k in zip(block_shape, self.psf_shape)]
        else:  # (a face the run mirrors the PSF's size deep: one, on each axis where the block has a halo)
            inner = None if core_shape is None else tuple((False, n > c) for n, c in zip(block_shape, core_shape))
            box = mirror_box(block_shape, self.psf_shape, reach, inner)[0]
        full, half = _fft_sizes(box)
        total = 2 * full * _F32 + 3 * half * _C64 + block * _F32
        return int(ARRAY_SAFETY * total + BLOCK_OVERHEAD)

    def _network_bytes(self, block_shape: Sequence[int], core_shape: Sequence[int] | None) -> float:
        """:meth:`block_bytes` of ssl, before its ``SAFETY`` factor."""
        block = math.prod(block_shape)
        # The activations scale with the window the network sees: a tile of the core (all of
        # it when it fits predict_tiled's budget) plus the context on every side. Counted on
        # the block alone, a 2 GB limit was exceeded 2.85 times (context 56 around 88-voxel
        # cores, when the network also mirrored context around the whole block).
        # Per window voxel and channel: 4 full-resolution activations, and the coarser levels'
        # sum(r**l), r = 2 / 2**ndim (channels double as each level halves every axis): 4/3 in
        # 3D, 2 in 2D. Measured with base 16 and context 56 (predict_tiled's peak RSS growth
        # against this count with SAFETY): 16x128x128 0.86, 1536^2 0.80, 1024^2 0.84-0.87, 512^2 0.96-1.02
        # (0.77 with RESIDENT_ALLOWANCE); with 3 + 4/3 in both, 1.02 (3D) and 1.09-1.30 (2D).
        ratio = 2 / 2 ** len(block_shape)
        per_channel = 4 + 1 / (1 - ratio)
        window = _network_window(block_shape if core_shape is None else core_shape, self.context)
        return 4 * block * _F32 + per_channel * self.base_channels * window * _F32 + self.weights_bytes

    def array_bytes(self, block_shape: Sequence[int], core_shape: Sequence[int] | None = None) -> int:
        """:meth:`block_bytes` less the constant a classical block adds whatever its size
        (``BLOCK_OVERHEAD``): the part that grows with the block."""
        constant = BLOCK_OVERHEAD if self.method in ("rl", "rl-tv", "wiener") else 0
        return self.block_bytes(block_shape, core_shape) - constant

    def peak_bytes(self, chunks: Sequence[int], halo: Sequence[int], shape: Sequence[int], *,
                   workers: int = 1, baseline: int = 0) -> int:
        """Predicted peak: ``baseline + RESIDENT_ALLOWANCE + workers * block_bytes(largest block)``."""
        from deconv3d.pipeline.block_geometry import plan_chunks

        core = tuple(max(c) for c in plan_chunks(shape, chunks, halo)[0])
        block = self.block_bytes(largest_block(shape, chunks, halo), core)
        return int(baseline + RESIDENT_ALLOWANCE + workers * block)


def _network_window(core_shape: Sequence[int], context: int) -> int:
    """Voxels of the largest window :func:`deconv3d.selfsup.predict.predict_tiled` feeds the network
    for a block's core: its default tile (the core, or a part of it) plus ``context`` on every side."""
    from deconv3d.selfsup.tiling import default_tile_shape

    tile = default_tile_shape(core_shape, 1)
    return math.prod(min(n, t) + 2 * int(context) for n, t in zip(core_shape, tile))


def largest_block(shape, chunks, halo) -> tuple[int, ...]:
    """Largest block (core plus halo on both sides) of the plan :func:`plan_chunks` makes."""
    from deconv3d.pipeline.block_geometry import plan_chunks

    dask_chunks, depth, _ = plan_chunks(shape, chunks, halo)
    return tuple(min(n, max(c) + 2 * h) for n, c, h in zip(shape, dask_chunks, depth))
