"""What the block callables of every method (:mod:`~deconv3d.pipeline.methods`,
:mod:`~deconv3d.pipeline.network_block`) share: the per-iteration callback that stops a block of an
abandoned run, the refusal of a block that overflowed float32, and the loading of what the blocks'
Richardson-Lucy runs use before the memory baseline is measured."""

from __future__ import annotations

import numpy as np

from deconv3d.classical.rl import _ignores_estimate
from deconv3d.errors import refuse_non_finite
from deconv3d.pipeline.run_flags import abandoned


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


def _preload(device, fft_shape=None) -> None:
    """What the blocks' Richardson-Lucy runs load on ``device`` for FFTs up to ``fft_shape`` (None:
    any) (:func:`deconv3d._rl_ops.preload`)."""
    import torch

    from deconv3d._rl_ops import preload
    from deconv3d._tensors import resolve_device

    preload(resolve_device(device), torch.float32, fft_shape)
