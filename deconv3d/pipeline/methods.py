"""Per-block callables for each deconvolution method, and the halo each one needs.

These are the only pieces of :mod:`deconv3d.pipeline` that know about a method; the chunked
executor (:mod:`deconv3d.pipeline.chunked`) takes any ``block -> block`` callable. The callables
are small picklable objects, so they travel to dask.distributed workers.

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
* Biggs-Andrews acceleration picks its step from the whole image, which blocks cannot share:
  the pipeline measures the adaptive steps once on a box near the centre (under a memory limit the
  whole volume when the memory model says it fits:
  ``deconv3d.pipeline.planning.measuring_box_shape``; that run is then the result, and the volume
  runs as one block instead)
  (:func:`deconv3d.classical.rl_alpha_schedule`) and replays them on every block
  (:meth:`RichardsonLucyBlock.with_alpha_schedule`); adaptive steps per block cap the seam
  PSNR at about 46 dB whatever the halo. The blocks that box holds, a halo inside its faces,
  are written from the measuring run (:meth:`RichardsonLucyBlock.prepare_with_output`).
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
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Union

import numpy as np

from deconv3d._spectral import psf_rms_width
from deconv3d.classical.rl import _ignores_estimate
from deconv3d.errors import refuse_non_finite
from deconv3d.pipeline.block_geometry import Placement
from deconv3d.pipeline.records import method_fft_shapes
from deconv3d.pipeline.run_flags import abandoned, block_run
from deconv3d.psf import fit_psf

__all__ = ["RichardsonLucyBlock", "WienerBlock", "NetworkBlock", "halo_for", "psf_rms_width", "rl_halo",
           "wiener_halo", "chunk_multiple_for"]


@_ignores_estimate  # Richardson-Lucy on data of extreme intensities hands it no scaled copy per iteration
def _stop_if_abandoned(*_progress) -> bool:
    """A per-iteration (per-tile) callback of a block's loop: True, to stop it, once the run is
    abandoned (:func:`deconv3d.pipeline.run_flags.abandoned`): an interrupted run then ends after one
    more iteration or tile, not the whole block."""
    return abandoned()


def _finite(result: np.ndarray, block: np.ndarray) -> np.ndarray:
    """A deconvolved block, refused when float32 overflowed in it (values near 3.4e38), as an in-memory
    run refuses its result: an all-Inf output was written before."""
    if not np.isfinite(result).all():  # the peak is named only then: no extra pass over every block
        refuse_non_finite(result, "result", f"(the image's values reach {float(np.abs(block).max()):.3g} in this "
                          "block): rescale the image to a smaller range and run again")
    return result


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
    #: Voxels at or above this level are left out of the fit (weight 0); "auto": the volume's plateau
    #: (:func:`deconv3d._saturation.plateau_level`), resolved to a level by prepare; "none": all fitted.
    saturation: Union[float, str] = "none"

    def __post_init__(self):
        """The options checked as :func:`~deconv3d.classical.richardson_lucy` checks them, here rather than
        in the first block (iterations=-1 failed there, in the halo rule, with "math domain error")."""
        from deconv3d._saturation import parse_saturation
        from deconv3d.classical._problem import _check_accelerate, _check_options

        self.iterations = _check_options(self.iterations, self.boundary, self.tv_weight, None,
                                         max(1, np.ndim(self.psf)), self.voxel_size)
        _check_accelerate(self.accelerate)
        self.saturation = parse_saturation(self.saturation, "saturation")

    def _weights(self, block: np.ndarray):
        """RL's data weights on ``block``: a pointwise function of its values (halo included), so that
        blocks leave out the voxels a whole-volume run leaves out. ``auto`` not yet resolved (a volume
        run as one block, which prepare does not see) takes the block's own plateau: the volume's."""
        from deconv3d._saturation import saturation_level, saturation_weights

        return saturation_weights(block, saturation_level(block, self.saturation))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """RL on ``block``; the OTF and Bertero weight of one block shape are kept for the next
        blocks of the run (:mod:`deconv3d.classical._reuse`; run_blocks hands blocks over grouped by shape)."""
        from deconv3d.classical import richardson_lucy
        from deconv3d.classical._reuse import reusing_setup

        if (block <= 0).all():  # a dark block (background subtracted): RL's zeros, without its warning; NaN: RL refuses
            return np.zeros(block.shape, np.float32)
        from deconv3d._saturation import keep_clipped_values_where_unseen

        weights = self._weights(block)
        if weights is not None and not weights.any():  # saturated throughout: no voxel to fit, its values kept
            return np.asarray(block, np.float32)
        with reusing_setup(block_run()):
            result = richardson_lucy(block, fit_psf(self.psf, block.shape), self.iterations, boundary=self.boundary,
                                     tv_weight=self.tv_weight, accelerate=self.accelerate, voxel_size=self.voxel_size,
                                     device=self.device, callback=_stop_if_abandoned, tv_scale=self.tv_scale,
                                     weights=weights)
        return keep_clipped_values_where_unseen(_finite(result, block), block, weights)

    def halo(self) -> tuple[int, ...]:
        """:func:`rl_halo`, half as wide again for accelerated runs with the zero or reflect boundary.

        Extrapolated steps carry the artefacts of a block's outer faces further in, and more so
        there than with the Bertero boundary: on a 48 x 160 x 160 bead image (PSF 7 x 9 x 9, 10
        iterations, one replayed schedule, 40-voxel blocks) :func:`rl_halo` left seams of 1.3e-2
        of the peak with the zero boundary (66 dB from the whole-volume run), 4.9e-3 with reflect
        (73 dB) and 2.1e-3 with Bertero (81 dB); 1.5x the halo gave 8.2e-4 (88 dB), 3.3e-4 (92 dB)
        and 2.0e-4 (98 dB). Bertero keeps the plain halo: 1.5x cost 1.6x the time of a
        64 x 256 x 256 run for 78 -> 88 dB.
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
        from deconv3d._saturation import keep_clipped_values_where_unseen
        from deconv3d.classical.rl import _schedule_and_estimate

        crop = np.asarray(data[centred_box(data.shape, box)], dtype=np.float32)
        weights = self._weights(crop)
        if (crop <= 0).all():  # nothing to measure on: no extrapolation (NaN: RL refuses), and RL's zeros
            return replace(self, accelerate=(0.0,) * self.iterations), np.zeros(crop.shape, np.float32)
        if weights is not None and not weights.any():  # saturated throughout: as the blocks, its values kept
            return replace(self, accelerate=(0.0,) * self.iterations), crop
        schedule, result = _schedule_and_estimate(crop, fit_psf(self.psf, crop.shape), self.iterations,
                                                  boundary=self.boundary, tv_weight=self.tv_weight,
                                                  voxel_size=self.voxel_size, device=self.device,
                                                  tv_scale=self.tv_scale, weights=weights)
        return replace(self, accelerate=tuple(schedule)), keep_clipped_values_where_unseen(_finite(result, crop), crop,
                                                                                           weights)

    def prepare(self, data, box) -> "RichardsonLucyBlock":
        """The hook :func:`deconv3d.pipeline.run_chunked` calls before a run of several blocks
        (:meth:`prepare_with_output` without the output)."""
        return self.prepare_with_output(data, box)[0]

    def prepare_with_output(self, data, box):
        """With TV or saturation ``auto``, the volume's statistics for every block (a pass over ``data``:
        :meth:`_with_volume_statistics`); then :meth:`with_alpha_schedule`. Returns the prepared copy
        and, where the steps were measured, RL's result on ``box``, which run_chunked writes for the
        blocks the box covers instead of running them again."""
        fn = self
        if (self.tv_weight > 0 and self.tv_scale is None) or self.saturation == "auto":
            fn = self._with_volume_statistics(data)
        return fn._measure(data, box)

    def _with_volume_statistics(self, data) -> "RichardsonLucyBlock":
        """A copy with the volume's saturation level (``auto``: its plateau, else ``none``) and TV scale
        (the largest value it fits, as a whole-volume run takes it: :func:`volume_peak`), from one pass
        over ``data``. With saturation ``none`` it warns where the volume looks clipped, as an in-memory
        run warns (only here: the pass is made for the TV scale anyway)."""
        from deconv3d._saturation import plateau_level, saturated_warning
        from deconv3d.errors import warn

        level = self.saturation if isinstance(self.saturation, float) else None
        top, below = volume_top_two(data, level)
        fn = self
        if self.saturation == "auto":
            level = plateau_level(top)
            fn, below = replace(fn, saturation="none" if level is None else level), top[2]  # (the value below it)
        elif self.saturation == "none" and plateau_level(top) is not None:
            warn(saturated_warning(top[1], top[0], "rl-tv" if self.tv_weight > 0 else "rl"))
        peak = top[0]
        if self.tv_weight > 0 and self.tv_scale is None:
            from deconv3d.classical.rl import _default_tv_scale

            fn = replace(fn, tv_scale=_default_tv_scale([peak if level is None else below]))
        return fn

    def prepare_runs_method(self) -> bool:
        """Whether :meth:`prepare` runs RL on its box (adaptive acceleration): where that box is the
        whole volume, run_chunked runs the volume as one block instead of running it twice."""
        return isinstance(self.accelerate, bool) and self.accelerate

    def fft_shapes(self, block_shape) -> list:
        """The shapes of RL's FFTs on a block of ``block_shape``, for the run's record of their backend."""
        return method_fft_shapes("rl", block_shape, self.psf.shape, self.boundary)


@dataclass
class WienerBlock:
    """``block -> wiener(block, psf, balance)`` with reflect extension at the block's outer faces."""

    psf: np.ndarray
    balance: float = 1e-3
    device: str = "cpu"

    def __post_init__(self):
        """The balance checked as :func:`~deconv3d.classical.wiener` checks it, here rather than in the
        halo rule (0 raised ZeroDivisionError there, -1 "math domain error")."""
        from deconv3d.classical.wiener import check_balance

        check_balance(self.balance)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Wiener on ``block``; the OTF of one FFT shape is kept for the next blocks of the run
        (:mod:`deconv3d.classical._reuse`, as :class:`RichardsonLucyBlock` keeps its set-up)."""
        from deconv3d.classical import wiener
        from deconv3d.classical._reuse import reusing_setup

        with reusing_setup(block_run()):
            result = wiener(block, fit_psf(self.psf, block.shape), self.balance, device=self.device)
        return _finite(result, block)

    def halo(self) -> tuple[int, ...]:
        return wiener_halo(self.psf, self.balance)


@dataclass
class NetworkBlock:
    """``block -> apply_model(trained, block)``: the self-supervised network's inference.

    ``band_limit`` is passed on (``"default"``: apply_model's own default, resolved once here;
    None or 0 turns it off), and so is ``amp`` (default on, as :func:`~deconv3d.selfsup.apply_model`'s).
    """

    trained: object  # deconv3d.selfsup.TrainedModel
    device: str = "cpu"
    tta: bool = False
    context: Optional[int] = field(default=None)
    band_limit: Union[float, str, None] = "default"
    amp: bool = True
    tv_scale: Optional[float] = None  # the volume's, for a residual network's RL-TV (set by prepare)

    def __post_init__(self):
        from deconv3d.selfsup import BAND_LIMIT, TrainedModel, default_context

        if self.band_limit == "default":
            self.band_limit = BAND_LIMIT
        if not isinstance(self.trained, TrainedModel):
            self.trained = TrainedModel.from_result(self.trained)
        if self.context is None:  # an in-memory run's, in whole pooling cells (they keep the phase)
            divisor = self.trained.unet.divisor
            self.context = -(-default_context(self.trained) // divisor) * divisor

    def load(self, spatial_shape=None) -> None:
        """Before the memory baseline is measured: CUDA on a GPU, and on the CPU the numba passes
        of the Richardson-Lucy run a residual network adds its correction to (a network without
        one never runs them: loading them cost 0.4 s and 110 MB for nothing). With the volume's
        ``spatial_shape``, as :meth:`RichardsonLucyBlock.load`: not where that run's FFTs
        (:func:`~deconv3d.selfsup.config.reference_fft_shape`) are too small for them."""
        from deconv3d._tensors import resolve_device

        if self.trained.reference is not None or resolve_device(self.device).type == "cuda":
            largest = None
            if spatial_shape is not None and self.trained.reference is not None:
                from deconv3d.selfsup.config import reference_fft_shape

                largest = reference_fft_shape(spatial_shape, np.shape(self.trained.psf))
            _preload(self.device, largest)

    #: :func:`~deconv3d.pipeline.chunked.run_blocks` passes where each block lies (a :class:`Placement`).
    placed = True

    def __call__(self, block: np.ndarray, placement: "Placement | None" = None) -> np.ndarray:
        """The network's estimate of ``block``. With its ``placement`` in the volume, only the
        core (grown by the band limit's reach) is predicted, the halo serving as the network's
        context instead of context mirrored around the whole block, on the whole volume's
        pooling grid: the cores then equal one pass over the volume, whatever its size. Outside
        that region the result holds no prediction (the halo is trimmed)."""
        from deconv3d.selfsup import apply_model
        from deconv3d.selfsup.predict import volume_phase

        if placement is None:
            return _finite(apply_model(self.trained, block, device=self.device, tta=self.tta, context=self.context,
                                       band_limit=self.band_limit, callback=_stop_if_abandoned, amp=self.amp,
                                       tv_scale=self.tv_scale), block)
        region = tuple(slice(max(0, c.start - r), min(n, c.stop + r))
                       for c, r, n in zip(placement.core, self._band_reach(), block.shape))
        whole = volume_phase(placement.shape, self.trained.unet.divisor, self.context)
        phase = tuple(p - s for p, s in zip(whole, placement.start))
        out = apply_model(self.trained, block, device=self.device, tta=self.tta, context=self.context,
                          band_limit=None, region=region, phase=phase, callback=_stop_if_abandoned, amp=self.amp,
                          tv_scale=self.tv_scale)
        if self.band_limit:  # on the region alone (mirrored at its edges): around it the block holds no prediction
            from deconv3d._spectral import band_limit

            out[region] = band_limit(out[region], self.trained.psf, self.band_limit,
                                      device=self.device).clamp_min_(0).cpu().numpy()
        return _finite(out, block)

    def prepare(self, data, block_shape) -> "NetworkBlock":
        """The hook :func:`deconv3d.pipeline.run_chunked` calls before a run of several blocks: a
        residual network's RL-TV reference gets the volume's intensity scale (:func:`volume_peak`)
        on every block, as a whole-volume run has it (with each block's own, blocks of a dim
        region differed from that run by 2.3 % of the peak)."""
        reference = self.trained.reference
        if reference is None or not reference.tv_weight or self.tv_scale is not None:
            return self
        return replace(self, tv_scale=volume_peak(data))

    def _band_reach(self) -> tuple[int, ...]:
        """How far the band limit (when on) reaches, per axis: the network predicts that much around a core."""
        if not self.band_limit:
            return (0,) * int(self.trained.unet.ndim)
        from deconv3d._spectral import band_limit_halo

        return tuple(band_limit_halo(self.trained.psf))

    def reach(self) -> int:
        """Voxels the network's windows reach past a block's core: the context around the
        region it predicts (the core grown by the band limit's reach)."""
        return int(self.context) + max(self._band_reach())

    def halo(self) -> tuple[int, ...]:
        """The network's context (or a residual network's RL reach where larger), plus the band limit's reach."""
        ndim = int(self.trained.unet.ndim)
        reach = (int(self.context),) * ndim
        reference = self.trained.reference
        if reference is not None:  # the residual network's output adds RL of the block
            reach = tuple(max(c, r) for c, r in zip(reach, rl_halo(self.trained.psf, reference.iterations)))
        reach = tuple(c + b for c, b in zip(reach, self._band_reach()))
        d = int(self.trained.unet.divisor)  # whole pooling cells, as the chunks
        return tuple(-(-c // d) * d for c in reach)

    def fft_shapes(self, block_shape) -> list:
        """The shapes of the FFTs of a residual network's RL reference on a block of ``block_shape``
        (none for a plain network), for the run's record of their backend."""
        residual = self.trained.reference is not None
        return method_fft_shapes("ssl", block_shape, self.trained.psf.shape, residual=residual)

    def chunk_multiple(self) -> int:
        """``2**depth``: chunk sides in whole pooling cells (the pooling grid itself comes with each
        block's :class:`Placement`, so that blocks agree with a whole-volume pass either way)."""
        return int(self.trained.unet.divisor)


#: Bytes of a volume that :func:`volume_peak` reads at a time.
PEAK_SLAB_BYTES = 64 * 2**20


def volume_peak(data) -> float:
    """The TV term's scale (:func:`deconv3d.classical.richardson_lucy`'s ``tv_scale``) of ``data``
    (an array or a reader's view of one volume), that every block of a chunked run then shares:
    the default a whole-volume run takes (its largest value; 1e-12 where none is positive), here over slabs. Read
    in boxes of whole chunks (whole planes of a TIFF) of at most :data:`PEAK_SLAB_BYTES`
    (:func:`~deconv3d.pipeline.readers.storage_boxes`), so that each chunk is decoded once."""
    from deconv3d.classical.rl import _default_tv_scale, _largest_value
    from deconv3d.pipeline.readers import storage_boxes, storage_unit

    # NaN and Inf are left to the blocks, which refuse them by name
    boxes = storage_boxes(tuple(data.shape), storage_unit(data), PEAK_SLAB_BYTES)
    return _default_tv_scale([_largest_value(np.asarray(data[box])) for box in boxes])


def volume_top_two(data, level: float | None = None):
    """:func:`deconv3d._saturation.top_two` of ``data`` (as :func:`volume_peak` reads it) and, for a
    ``level``, the largest value below it (at least 0), which is the TV scale of a run that leaves
    the voxels at or above it out."""
    from deconv3d._saturation import merge_top_two, top_two
    from deconv3d.classical.rl import _largest_value
    from deconv3d.pipeline.readers import storage_boxes, storage_unit

    parts, below = [], 0.0
    for box in storage_boxes(tuple(data.shape), storage_unit(data), PEAK_SLAB_BYTES):
        slab = np.asarray(data[box])
        parts.append(top_two(slab))
        if level is not None:
            below = max(below, _largest_value(slab[slab < level]))
    return merge_top_two(parts), below


def _preload(device, fft_shape=None) -> None:
    """What the blocks' Richardson-Lucy runs load on ``device`` for FFTs up to ``fft_shape`` (None:
    any) (:func:`deconv3d._rl_ops.preload`)."""
    import torch

    from deconv3d._rl_ops import preload
    from deconv3d._tensors import resolve_device

    preload(resolve_device(device), torch.float32, fft_shape)


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
    """The Wiener halo per axis: ``ceil(sigma (6 + log10(1 / balance)))``."""
    factor = 6 + max(0.0, math.log10(1.0 / balance))
    return tuple(math.ceil(s * factor) for s in psf_rms_width(psf))


def chunk_multiple_for(block_fn) -> int:
    """The multiple that core chunk sides must be (its ``chunk_multiple()`` method), else 1."""
    get = getattr(block_fn, "chunk_multiple", None)
    return max(1, int(get())) if get is not None else 1


def halo_for(block_fn) -> tuple[int, ...]:
    """The halo a block callable asks for (its ``halo()`` method), or no halo."""
    get = getattr(block_fn, "halo", None)
    return tuple(get()) if get is not None else ()
