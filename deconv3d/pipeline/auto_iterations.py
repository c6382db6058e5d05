"""``deconvolve --iterations auto`` on the chunked route: each channel's RL iteration count chosen on a
centred crop of its first time point, read alone from the lazy image (never the whole volume)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from deconv3d._auto_cap import AUTO_MAX_ITERATIONS

__all__ = ["AUTO_MAX_ITERATIONS", "AUTO_CROP_VOXELS", "crop_box", "crop_voxels", "chosen_settings"]

#: Voxels of the crop on which a chunked ``--iterations auto`` chooses each channel's count: a volume of
#: at most this many is taken whole. The search holds the crop in memory with its working arrays: a
#: 64 x 512 x 512 crop (this many voxels) with a 15 x 31 x 31 PSF raised the peak resident memory of a
#: CPU run by 1.0 GiB (about 65 bytes per voxel; 110 for a 64 x 256 x 256 crop, where fixed costs weigh more).
AUTO_CROP_VOXELS = 16 * 2**20
#: What the search holds beyond the memory model's count for an RL block of the crop's shape: measured 63 MiB
#: over the model's 978 on a 64 x 512 x 512 crop and 156 over its 285 on 64 x 256 x 256 (PSF 15 x 31 x 31).
CHOICE_OVERHEAD = 160 * 2**20


def crop_box(shape, psf_shape, voxels: int | None = None) -> tuple[slice, ...]:
    """The centred box of about ``voxels`` (default :data:`AUTO_CROP_VOXELS`) voxels of a volume of
    ``shape``: the whole volume where it has no more, else a box keeping its proportions as far as
    it can, each side at least twice the PSF's (``psf_shape``) where the volume allows (a thin
    stack keeps its z whole); the box may exceed ``voxels`` where those floors do."""
    voxels = AUTO_CROP_VOXELS if voxels is None else voxels
    shape = tuple(int(n) for n in shape)
    sides = list(shape)
    if math.prod(shape) > voxels:
        floors = [min(n, 2 * int(k)) for n, k in zip(shape, psf_shape)]
        free = list(range(len(shape)))
        while free:
            fixed = math.prod(sides[i] for i in range(len(shape)) if i not in free)
            scale = (voxels / fixed / math.prod(shape[i] for i in free)) ** (1 / len(free))
            low = [i for i in free if int(shape[i] * scale) < floors[i]]
            for i in low or free:  # the sides under their floor take it, and the rest share what is left
                sides[i] = floors[i] if low else max(1, int(shape[i] * scale))
            free = [i for i in free if i not in low] if low else []
    return tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, sides))


def crop_voxels(shape, psf_shape, method: str, memory_limit) -> int:
    """The most voxels of the crop to choose on: :data:`AUTO_CROP_VOXELS`, or under ``memory_limit`` (the
    run's ``--memory-limit``) the largest of it halved until the search on :func:`crop_box`'s box fits
    what the limit leaves above the process's baseline, counted as the memory model counts an RL block of
    that shape (``method``, no acceleration) plus :data:`CHOICE_OVERHEAD`. Past the box's floors (twice the
    PSF) it shrinks no further: the blocks, already planned under the limit, are not smaller."""
    if memory_limit is None:
        return AUTO_CROP_VOXELS
    from deconv3d.pipeline.memory_model import MemoryModel
    from deconv3d.pipeline.system_memory import parse_memory, planning_baseline

    budget = parse_memory(memory_limit) - planning_baseline()
    model = MemoryModel(method, tuple(psf_shape), accelerate=False)
    voxels = AUTO_CROP_VOXELS
    while voxels > 1:
        sides = [s.stop - s.start for s in crop_box(shape, psf_shape, voxels)]
        if model.block_bytes(sides) + CHOICE_OVERHEAD <= budget:
            break
        voxels //= 2
    return voxels


def _first_index(lazy, channel: int) -> tuple:
    """Channel ``channel``'s first time point: its index along the leading (T, C) axes of ``lazy``."""
    return tuple(channel if a == "C" else 0 for a in lazy.axes if a in "TC")


def _read_crop(lazy, index: tuple, box):
    """The volume at ``index`` of the leading axes of ``lazy`` within ``box`` (float32), read alone."""
    from deconv3d.pipeline.readers import as_reader

    lead = tuple(slice(i, i + 1) for i in index)
    return as_reader(lazy).read(lead + tuple(box)).reshape([s.stop - s.start for s in box])


def _volume_name(lazy, index: tuple) -> str:
    """The volume at ``index`` as :func:`~deconv3d.pipeline.run_chunked` names it in its refusals
    (``channel 1 (RFP) at time point 0``; "" for an image of one volume)."""
    from deconv3d.pipeline.negatives import _index_names

    return " at ".join(_index_names(lazy.axes[:len(index)], lazy.data.shape, index, lazy.channels))


def _crop_note(box, shape, frames: int) -> str:
    """``, on a centred 32 x 256 x 256 crop`` (``, on the whole volume`` where the box is all of ``shape``),
    of the first time point where there are several."""
    sides = [s.stop - s.start for s in box]
    what = "the whole volume" if tuple(sides) == tuple(shape) else f"a centred {' x '.join(map(str, sides))} crop"
    return f", on {what}" + (" of the first time point" if frames > 1 else "")


def _refuse_nothing_to_choose_by(crop, clipped, level, where: str, note: str) -> None:
    """Refuse a crop (:func:`chosen_settings`') that holds nothing to choose the count by: no voxel above 0
    (a count chosen on nothing: 1, whatever the later time points hold), or every voxel flagged clipped
    (``clipped``, at or above ``level``), of which no held-out voxel is data to predict (choose_iterations'
    "too few held-out voxels" refusal, which named neither the crop nor the saturation level)."""
    from deconv3d.errors import InputError

    of, crop_name = f" for {where}" if where else "", note.removeprefix(", on ")
    if not (crop > 0).any():
        raise InputError(f"--iterations auto has nothing to choose the count by{of}: {crop_name} holds no voxel "
                         "above 0: give the count as --iterations N")
    if clipped is not None and clipped.all():
        raise InputError(f"--iterations auto has nothing to choose the count by{of}: every voxel of {crop_name}, "
                         f"the part it chooses on, is at or above --saturation {level:g}: give the count as "
                         "--iterations N, or a higher --saturation level")


def chosen_settings(lazy, psfs, voxel, settings, chooser) -> tuple[list, dict]:
    """Each channel's settings for its RL blocks, with the count ``chooser`` chose on its crop and
    acceleration off, and the parameters to record: ``iterations`` (one value, or one per channel where
    there are several), ``accelerate`` and ``iterations_chosen_by`` (likewise).

    ``chooser(crop, psf, params, voxel, device, clipped, where, note)`` returns the parameters of one
    channel's choice (``iterations``, ``accelerate``, ``iterations_chosen_by``): ``crop`` is the channel's
    first time point within :func:`crop_box`, ``psf`` its PSF (entry c of ``psfs``, or the one for all),
    ``params`` the run's ``boundary`` and ``tv_weight``, ``clipped`` the crop's voxels at or above the
    ``settings.saturation`` level (for ``auto``, the crop's own plateau:
    :func:`~deconv3d._saturation.saturation_level`; None: none), ``where`` the channel's name where there
    are several (``channel 1 (RFP)``, else "") and ``note`` where the crop lies (:func:`_crop_note`).
    A crop that is its whole volume with every voxel at or above the level is refused as the run would
    refuse it (:func:`~deconv3d._saturation.refuse_all_flagged`), before the search; a smaller crop with
    every voxel at or above it, and a crop with no voxel above 0 (a channel dark at its first time point),
    on which the search would settle on 1, by :func:`_refuse_nothing_to_choose_by`."""
    from deconv3d._saturation import clipped_voxels, refuse_all_flagged, saturation_level
    from deconv3d.errors import NonFiniteValues
    from deconv3d.pipeline.chunked import located
    from deconv3d.pipeline.volume_runs import _channel_name

    sizes = dict(zip(lazy.axes, lazy.data.shape))
    channels, shape = sizes.get("C", 1), tuple(sizes[a] for a in lazy.axes if a in "ZYX")
    params = {"boundary": settings.boundary, "tv_weight": settings.tv_weight if settings.method == "rl-tv" else 0.0}
    choices = []
    for c in range(channels):
        psf = psfs[c % len(psfs)]
        box = crop_box(shape, psf.shape, crop_voxels(shape, psf.shape, settings.method, settings.memory_limit))
        index = _first_index(lazy, c)
        crop = _read_crop(lazy, index, box)
        where = _channel_name(lazy.data, index, lazy.axes, lazy.channels)  # (as the run's other lines name it)
        note = _crop_note(box, shape, sizes.get("T", 1))
        try:
            level = saturation_level(crop, settings.saturation)
            clipped = clipped_voxels(crop, level)
            if clipped is not None and tuple(crop.shape) == shape:  # the whole volume: refused as the run refuses it
                refuse_all_flagged(int(np.count_nonzero(clipped)), clipped.size, level, _volume_name(lazy, index))
            _refuse_nothing_to_choose_by(crop, clipped, level, where, note)
            choices.append(chooser(crop, psf, params, voxel, settings.run_device, clipped, where, note))
        except NonFiniteValues as exc:  # NaN or Inf in the crop: where the first lies, in which volume
            raise located(exc, crop, [b.start for b in box]).with_details(
                letters=lazy.axes[len(index):], volume=_volume_name(lazy, index)) from None
    runs = [dataclasses.replace(settings, iterations=c["iterations"], accelerate=False) for c in choices]
    counts, chosen_by = [c["iterations"] for c in choices], [c["iterations_chosen_by"] for c in choices]
    return runs, {"iterations": counts[0] if channels == 1 else counts, "accelerate": False,
                  "iterations_chosen_by": chosen_by[0] if len(set(chosen_by)) == 1 else chosen_by}
