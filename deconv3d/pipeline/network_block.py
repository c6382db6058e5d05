"""The per-block callable of the self-supervised network (:class:`NetworkBlock`): its inference on a
block, predicting the core from the halo's context on the whole volume's pooling grid, and its halo,
chunk multiple and FFT shapes for the run's planning and record."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

import numpy as np

from deconv3d.pipeline.block_common import _finite, _preload, _stop_if_abandoned
from deconv3d.pipeline.block_geometry import Placement
from deconv3d.pipeline.halo_rules import rl_halo
from deconv3d.pipeline.records import method_fft_shapes
from deconv3d.pipeline.volume_statistics import volume_peak

__all__ = ["NetworkBlock"]


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
        ``spatial_shape``, as :meth:`~deconv3d.pipeline.methods.RichardsonLucyBlock.load`: not where that
        run's FFTs (:func:`~deconv3d.selfsup.config.reference_fft_shape`) are too small for them."""
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
        from deconv3d.selfsup.tiling import volume_phase

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

    def counts_clip(self) -> str:
        """Its blocks look for a clip as they run (as
        :meth:`~deconv3d.pipeline.methods.RichardsonLucyBlock.counts_clip`): :meth:`prepare`'s pass for a
        residual network's TV scale does not."""
        return "ssl"

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
