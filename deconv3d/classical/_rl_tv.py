"""The total-variation term of Richardson-Lucy (:mod:`~deconv3d.classical.rl`): its set-up for a
problem (:func:`_tv_for`) and its default intensity scale (:func:`_default_tv_scale`), which the
chunked pipeline also takes of a whole volume."""

from __future__ import annotations

import numpy as np
import torch

from deconv3d.classical._iterate import _TV
from deconv3d.classical._problem import _float_times_power_of_two, _is_number
from deconv3d.errors import InputError


def _scaled(tv_weight: float, tv_scale) -> bool:
    """Whether :func:`_tv_for` takes a default TV scale: a TV term, and no ``tv_scale`` given."""
    return tv_weight != 0 and tv_scale is None


def _tv_for(problem, tv_weight, voxel_size, tv_scale, image: torch.Tensor, keep=None, smoothing: str = "local",
            differences: str = "symmetric", exponent: int = 0):
    """The TV term (None for weight 0) at ``tv_scale`` (checked, refused unless a positive finite
    number; in the caller's units, divided here by ``2**exponent`` as the data were), by default
    :func:`_default_tv_scale` of ``image`` where ``keep > 0`` (the voxels the zero boundary leaves
    unfitted included: see ``tv_scale`` in :func:`~deconv3d.classical.rl.richardson_lucy`); ``smoothing``,
    ``differences``: ε's rule and ``|∇u|``'s (:class:`~deconv3d.classical._iterate._TV`)."""
    if tv_scale is not None and not (_is_number(tv_scale) and tv_scale > 0):
        raise InputError(f"tv_scale must be a positive finite number (the volume's largest value), got {tv_scale!r}")
    if tv_weight == 0:
        return None
    if tv_scale is None:
        tv_scale = _default_tv_scale(image if keep is None else image[keep > 0])
    else:
        tv_scale = _float_times_power_of_two(float(tv_scale), -exponent)
    return _TV.for_problem(problem, tv_weight, voxel_size, float(tv_scale), smoothing, differences)


def _default_tv_scale(values) -> float:
    """The TV term's default intensity scale: the largest value of ``values`` (:func:`_largest_value`),
    1e-12 where none is positive (RL returns zeros there).

    One definition for both paths: a whole-image run takes it of the image, a chunked one of the
    whole volume, slab by slab (:func:`deconv3d.pipeline.volume_statistics.volume_peak`), and hands it to
    every block. The largest value, not the largest absolute one: RL sets negative values to zero
    before fitting. The chunked path took the largest absolute value, and on a volume whose most
    extreme voxel was negative its blocks agreed with a whole run to 71 dB (108 dB now). Not at
    least 1e-12: the blocks of a volume of peak 1e-30, which run divided by a power of two
    (:func:`~deconv3d.classical._problem._working_exponent`), got a scale 1e18 times too large."""
    peak = _largest_value(values)
    return peak if peak > 0 else 1e-12


def _largest_value(values) -> float:
    """The largest value of a tensor (checked finite) or of an array whose NaN and Inf are skipped
    (blocks refuse them by name); at least 0 for an array."""
    if isinstance(values, torch.Tensor):
        return float(values.max())
    values = np.asarray(values)
    return float(np.max(values, initial=0.0, where=np.isfinite(values)))
