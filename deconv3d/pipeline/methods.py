"""Per-block callables for each deconvolution method.

These, with the network's (:class:`~deconv3d.pipeline.network_block.NetworkBlock`, in
:mod:`deconv3d.pipeline.network_block` and importable from here), are the only pieces of
:mod:`deconv3d.pipeline` that know about a method; the chunked executor
(:mod:`deconv3d.pipeline.chunked`) takes any ``block -> block`` callable. The callables
are small picklable objects, so they travel to dask.distributed workers. What every method's
callable shares is in :mod:`deconv3d.pipeline.block_common`.

The halo each method's blocks need, and the rules behind it, are in
:mod:`deconv3d.pipeline.halo_rules`; the statistics that blocks of one volume share (the TV
scale, the saturation level) in :mod:`deconv3d.pipeline.volume_statistics`.

Biggs-Andrews acceleration picks its step from the whole image, which blocks cannot share:
the pipeline measures the adaptive steps once on a box near the centre (under a memory limit the
whole volume when the memory model says it fits:
``deconv3d.pipeline.planning.measuring_box_shape``; that run is then the result, and the volume
runs as one block instead)
(:func:`deconv3d.classical.rl_alpha_schedule`) and replays them on every block
(:meth:`RichardsonLucyBlock.with_alpha_schedule`); adaptive steps per block cap the seam
PSNR at about 46 dB whatever the halo. The blocks that box holds, a halo inside its faces,
are written from the measuring run (:meth:`RichardsonLucyBlock.prepare_with_output`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np

from deconv3d._spectral import psf_rms_width
from deconv3d.pipeline.block_common import _finite, _preload, _stop_if_abandoned
from deconv3d.pipeline.halo_rules import chunk_multiple_for, halo_for, rl_halo, wiener_halo
from deconv3d.pipeline.network_block import NetworkBlock
from deconv3d.pipeline.records import method_fft_shapes
from deconv3d.pipeline.run_flags import block_run
from deconv3d.pipeline.volume_statistics import volume_top_two
from deconv3d.psf import fit_psf

__all__ = ["RichardsonLucyBlock", "WienerBlock", "NetworkBlock", "halo_for", "psf_rms_width", "rl_halo",
           "wiener_halo", "chunk_multiple_for"]


def centred_box(shape: Sequence[int], box) -> tuple[slice, ...]:
    """``box`` as slices of an array of ``shape``: slices as they are, a shape as the centred box of
    that shape (cut to the array)."""
    if all(isinstance(b, slice) for b in box):
        return tuple(box)
    start = [max(0, (n - int(b)) // 2) for n, b in zip(shape, box)]
    return tuple(slice(s, s + int(b)) for s, b in zip(start, box))


@dataclass
class RichardsonLucyBlock:
    """``block -> richardson_lucy(block, psf, ...)``; the parameters are those of the function."""

    psf: np.ndarray
    iterations: int = 20
    boundary: str = "bertero"
    tv_weight: float = 0.0
    accelerate: Union[bool, Sequence[float]] = False
    voxel_size: Optional[Sequence[float]] = None
    device: str = "cpu"
    tv_scale: Optional[float] = None  # the volume's, set by prepare (see richardson_lucy)
    #: Voxels at or above this level are fitted as clipped (lower bounds); "auto": the volume's plateau
    #: (:func:`deconv3d._saturation.plateau_level`), resolved to a level by prepare; "none": all fitted.
    saturation: Union[float, str] = "none"
    #: The voxels at or above the level, where prepare's pass over the volume or the blocks counted them
    #: (for the record: :meth:`counts_at`, :meth:`counted`).
    saturated_voxels: Optional[int] = None

    def __post_init__(self):
        """The options checked as :func:`~deconv3d.classical.richardson_lucy` checks them, here rather than
        in the first block (iterations=-1 failed there, in the halo rule, with "math domain error")."""
        from deconv3d._saturation import parse_saturation
        from deconv3d.classical._problem import _check_accelerate, _check_options

        self.iterations = _check_options(self.iterations, self.boundary, self.tv_weight, None,
                                         max(1, np.ndim(self.psf)), self.voxel_size)
        _check_accelerate(self.accelerate)
        self.saturation = parse_saturation(self.saturation, "saturation")

    def _clipped(self, block: np.ndarray):
        """The voxels of ``block`` RL fits as clipped (None: none): a pointwise function of its values
        (halo included), so that blocks flag the voxels a whole-volume run flags. ``auto`` not yet
        resolved (a volume run as one block, which prepare does not see) takes the block's own plateau:
        the volume's."""
        from deconv3d._saturation import clipped_voxels, saturation_level

        return clipped_voxels(block, saturation_level(block, self.saturation))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """RL on ``block``; the OTF and Bertero weight of one block shape are kept for the next
        blocks of the run (:mod:`deconv3d.classical._reuse`; run_blocks hands blocks over grouped by shape)."""
        from deconv3d.classical import richardson_lucy
        from deconv3d.classical._reuse import reusing_setup

        if (block <= 0).all():  # a dark block (background subtracted): RL's zeros, without its warning; NaN: RL refuses
            return np.zeros(block.shape, np.float32)
        clipped = self._clipped(block)
        if clipped is not None and clipped.all():  # saturated throughout: nothing measured, its values kept
            return np.asarray(block, np.float32)
        with reusing_setup(block_run()):
            result = richardson_lucy(block, fit_psf(self.psf, block.shape), self.iterations, boundary=self.boundary,
                                     tv_weight=self.tv_weight, accelerate=self.accelerate, voxel_size=self.voxel_size,
                                     device=self.device, callback=_stop_if_abandoned, tv_scale=self.tv_scale,
                                     clipped=clipped)
        return _finite(result, block)

    def halo(self) -> tuple[int, ...]:
        """:func:`rl_halo`, half as wide again for accelerated runs with the zero or reflect boundary.

        Extrapolated steps carry the artefacts of a block's outer faces further in, and more so
        there than with the Bertero boundary: on a 48 x 160 x 160 bead image (PSF 7 x 9 x 9, 10
        iterations, one replayed schedule, 40-voxel blocks) :func:`rl_halo` left seams of 1.3e-2
        of the peak with the zero boundary (66 dB from the whole-volume run), 4.9e-3 with reflect
        (73 dB) and 2.1e-3 with Bertero (81 dB); 1.5x the halo gave 8.2e-4 (88 dB), 3.3e-4 (92 dB)
        and 2.0e-4 (98 dB). Bertero keeps the plain halo: 1.5x cost 1.6x the time of a
        64 x 256 x 256 run for 78 -> 88 dB. (Measured before the step's floor, ALPHA_FLOOR, which moved
        such figures by about 1 dB or less on a rebuilt bead image: zero 63.4 -> 63.1 dB, 1.5x 87.7 -> 86.8.)
        """
        from deconv3d.classical._problem import _check_accelerate

        halo = rl_halo(self.psf, self.iterations)
        steps = _check_accelerate(self.accelerate)  # True/False (numpy's too), or a replayed schedule
        # Biggs-Andrews extrapolates from the third iteration on: before, True changes nothing
        accelerated = (steps is True and self.iterations >= 3) or (isinstance(steps, tuple) and any(steps))
        if accelerated and self.boundary in ("zero", "reflect"):
            halo = tuple(math.ceil(1.5 * h) for h in halo)
        return halo

    def load(self, spatial_shape=None) -> None:
        """Load what every block will use, before the memory baseline is measured: the numba
        element-wise passes hold about 110 MB once loaded, which no block-size model counts (on a
        GPU: the CUDA context). With the volume's ``spatial_shape``, not the passes that no block of
        it is large enough to use (:data:`deconv3d._rl_ops.FUSED_MIN_VOXELS`)."""
        from deconv3d.classical._problem import rl_fft_shape

        largest = None if spatial_shape is None else rl_fft_shape(spatial_shape, np.shape(self.psf), self.boundary)
        _preload(self.device, largest)

    def with_alpha_schedule(self, data, box) -> "RichardsonLucyBlock":
        """A copy that replays the acceleration steps measured on the ``box`` of ``data`` (a tuple
        of slices, or a shape: the centred box of that shape). run_chunked passes, under a memory
        limit, the largest box that fits, the whole volume if it can; one block otherwise.

        Without acceleration (or with a schedule already) the block is returned unchanged.
        ``data`` may be a dask array: only the box is read.
        """
        return self._measure(data, box)[0]

    def _measure(self, data, box):
        """:meth:`with_alpha_schedule`'s copy, and the adaptive run's result on the box (None where
        nothing was run)."""
        if not (isinstance(self.accelerate, bool) and self.accelerate):
            return self, None
        from deconv3d.classical.rl import _schedule_and_estimate

        crop = np.asarray(data[centred_box(data.shape, box)], dtype=np.float32)
        clipped = self._clipped(crop)
        if (crop <= 0).all():  # nothing to measure on: no extrapolation (NaN: RL refuses), and RL's zeros
            return replace(self, accelerate=(0.0,) * self.iterations), np.zeros(crop.shape, np.float32)
        if clipped is not None and clipped.all():  # saturated throughout: as the blocks, its values kept
            return replace(self, accelerate=(0.0,) * self.iterations), crop
        schedule, result = _schedule_and_estimate(crop, fit_psf(self.psf, crop.shape), self.iterations,
                                                  boundary=self.boundary, tv_weight=self.tv_weight,
                                                  voxel_size=self.voxel_size, device=self.device,
                                                  tv_scale=self.tv_scale, clipped=clipped)
        return replace(self, accelerate=tuple(schedule)), _finite(result, crop)

    def prepare(self, data, box) -> "RichardsonLucyBlock":
        """The hook :func:`deconv3d.pipeline.run_chunked` calls before a run of several blocks
        (:meth:`prepare_with_output` without the output)."""
        return self.prepare_with_output(data, box)[0]

    def prepare_with_output(self, data, box):
        """With TV or saturation ``auto``, the volume's statistics for every block (a pass over ``data``:
        :meth:`_with_volume_statistics`); then :meth:`with_alpha_schedule`. Returns the prepared copy
        and, where the steps were measured, RL's result on ``box``, which run_chunked writes for the
        blocks the box covers instead of running them again."""
        fn = self._with_volume_statistics(data) if self._reads_volume() else self
        return fn._measure(data, box)

    def _reads_volume(self) -> bool:
        """Whether a run of several blocks first makes a pass over the volume (:meth:`prepare_with_output`):
        for the TV scale, or the ``auto`` level."""
        return (self.tv_weight > 0 and self.tv_scale is None) or self.saturation == "auto"

    def counts_clip(self) -> Optional[str]:
        """The method a clip warning names (``rl``, ``rl-tv``) where the blocks look for a clip as they run
        (every voxel fitted, and no pass over the volume before them: :func:`~deconv3d.pipeline.run_chunked`
        warns once they are written), else None (that pass warned)."""
        if self.saturation != "none" or self._reads_volume():
            return None
        return "rl-tv" if self.tv_weight > 0 else "rl"

    def counts_at(self) -> Optional[float]:
        """The level at or above which the blocks count the voxels of their cores as they run, where a
        level is given and no pass over the volume counts them (plain RL, or a TV scale given:
        :meth:`_reads_volume`), for the record and the command's line of what was fitted as clipped
        (:func:`~deconv3d.pipeline.run_chunked` sums them per volume and records :meth:`counted`'s
        :meth:`decided`); else None."""
        if not isinstance(self.saturation, float) or self._reads_volume() or self.saturated_voxels is not None:
            return None
        return self.saturation

    def counts_near_faces(self) -> Optional[tuple]:
        """``(level, reach)`` where the boundary is zero and voxels are fitted as clipped: the blocks then count
        the voxels of their cores at or above ``level`` that lie within ``reach`` of the volume's faces
        (:func:`~deconv3d._saturation.face_reach` of the PSF, as an in-memory run counts them:
        :func:`~deconv3d._saturation.clipped_at_faces`), for :func:`~deconv3d.pipeline.run_chunked` to warn of
        them once the output is written (:func:`~deconv3d._saturation.zero_boundary_warning`). ``level`` is
        ``"auto"`` until prepare resolves it (blocks count only a level); None with another boundary, or
        every voxel fitted as measured."""
        from deconv3d._saturation import face_reach

        if self.boundary != "zero" or self.saturation == "none":
            return None
        return self.saturation, face_reach(np.shape(self.psf))

    def counted(self, voxels: int) -> "RichardsonLucyBlock":
        """A copy that records ``voxels`` at or above its level (the blocks' count: :meth:`counts_at`)."""
        return replace(self, saturated_voxels=int(voxels))

    def prepare_whole(self, data) -> "RichardsonLucyBlock":
        """The hook :func:`deconv3d.pipeline.run_chunked` calls before a volume run as one block: where it
        needs them (the TV scale, ``auto``'s level), the volume's statistics
        (:meth:`_with_volume_statistics`, a clip warned about as in memory), without the measuring run,
        which that block would repeat; else itself (its block looks for a clip: :meth:`counts_clip`, or
        counts the voxels at or above a level given: :meth:`counts_at`), so that the volume is not read
        one more time."""
        if self._reads_volume():
            return self._with_volume_statistics(data)
        return self

    def _with_volume_statistics(self, data) -> "RichardsonLucyBlock":
        """A copy with the volume's saturation level (``auto``: its plateau, else ``none``) and the
        voxels at or above it, and TV scale (the largest value it fits, as a whole-volume run takes it:
        :func:`volume_peak`), from one pass over ``data``. With saturation ``none`` it warns where the
        volume looks clipped, as an in-memory run warns (where the pass is made: a run whose TV scale
        or ``auto`` level needs it; other runs warn once written, from their blocks' values:
        :meth:`counts_clip`)."""
        from deconv3d._saturation import plateau_level, warn_if_clipped

        level = self.saturation if isinstance(self.saturation, float) else None
        top, below, above = volume_top_two(data, level)
        fn = self if level is None else replace(self, saturated_voxels=above)
        if self.saturation == "auto":
            level = plateau_level(top)
            fn, below = replace(fn, saturation="none" if level is None else level), top[2]  # (the value below it)
            fn = fn if level is None else replace(fn, saturated_voxels=top[1])  # (the level is the maximum)
        elif self.saturation == "none":
            warn_if_clipped(top, "rl-tv" if self.tv_weight > 0 else "rl", view=data)
        peak = top[0]
        if self.tv_weight > 0 and self.tv_scale is None:
            from deconv3d.classical.rl import _default_tv_scale

            fn = replace(fn, tv_scale=_default_tv_scale([peak if level is None else below]))
        return fn

    def decided(self) -> dict:
        """What the run took from the volume, for its record: the saturation level (``auto``'s plateau,
        or the level given) and the voxels at or above it where counted, under the names an in-memory
        run records them by (:func:`deconv3d._saturation.saturation_record`); empty without a level."""
        if not isinstance(self.saturation, float):
            return {}
        counted = {} if self.saturated_voxels is None else {"saturated_voxels": self.saturated_voxels}
        return {"saturation_level": self.saturation, **counted}

    def prepare_runs_method(self) -> bool:
        """Whether :meth:`prepare` runs RL on its box (adaptive acceleration): where that box is the
        whole volume, run_chunked runs the volume as one block instead of running it twice."""
        return isinstance(self.accelerate, bool) and self.accelerate

    def fft_shapes(self, block_shape) -> list:
        """The shapes of RL's FFTs on a block of ``block_shape``, for the run's record of their backend."""
        return method_fft_shapes("rl", block_shape, self.psf.shape, self.boundary)


#: How deep :class:`WienerBlock` mirrors a block's faces inside the volume: the PSF's size (ebc6823; twice
#: the filter's reach before, as at the volume's faces). Batch fingerprints hold it, as they hold
#: :data:`~deconv3d.classical.wiener.MIRROR_DEPTH`, so that outputs of the earlier blocks are redone.
INNER_MIRROR = "psf-size"


@dataclass
class WienerBlock:
    """``block -> wiener(block, psf, balance, boundary=boundary)``, its reflect boundary (the default) mirroring
    the block's faces at the volume's faces as deep as a whole image's, and those inside the volume, beyond
    the halo, the PSF's size deep (:func:`~deconv3d.classical.wiener.mirror_box`'s ``inner``: as close to
    the whole volume's result, and faster); ``boundary`` one of
    :data:`~deconv3d.classical.wiener.RUN_BOUNDARIES`."""

    psf: np.ndarray
    balance: float = 1e-3
    device: str = "cpu"
    boundary: str = "reflect"
    placed = True  # (called with its Placement: which of the block's faces lie inside the volume)

    def __post_init__(self):
        """The balance checked as :func:`~deconv3d.classical.wiener` checks it, here rather than in the
        halo rule (0 raised ZeroDivisionError there, -1 "math domain error"), and the boundary."""
        from deconv3d.classical.wiener import check_balance, check_run_boundary

        check_balance(self.balance)
        check_run_boundary(self.boundary, "boundary")

    def __call__(self, block: np.ndarray, placement=None) -> np.ndarray:
        """Wiener on ``block``, whose ``placement`` (a :class:`~deconv3d.pipeline.block_geometry.Placement`)
        tells its faces inside the volume (where the core stops short of the block's edge); the OTF of one FFT
        shape is kept for the next blocks of the run (:mod:`deconv3d.classical._reuse`, as
        :class:`RichardsonLucyBlock` keeps its set-up)."""
        from deconv3d.classical._reuse import reusing_setup
        from deconv3d.classical.wiener import wiener

        faces = ((False, False),) * block.ndim if placement is None else \
            tuple((c.start > 0, c.stop < n) for c, n in zip(placement.core, block.shape))
        with reusing_setup(block_run()):
            result = wiener(block, fit_psf(self.psf, block.shape), self.balance, boundary=self.boundary,
                            device=self.device, inner=faces)  # (wiener's defaults otherwise: identity, clipped, float32)
        return _finite(result, block)

    def halo(self) -> tuple[int, ...]:
        return wiener_halo(self.psf, self.balance)

    def counts_clip(self) -> str:
        """Its blocks look for a clip as they run (as :meth:`RichardsonLucyBlock.counts_clip`)."""
        return "wiener"
