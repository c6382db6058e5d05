"""Hints for a stack of 2D planes that may be a z-stack whose slices were labelled frames or channels
(an ImageJ stack saved with frames instead of slices): the note that a PSF's refusal gets, and the
warning of a run that deconvolves such planes one by one."""

from __future__ import annotations

from deconv3d._paths import path_text
from deconv3d._tiff_channels import MANY_CHANNELS
from deconv3d.errors import warn

__all__ = ["relabel_note", "warn_of_planes_that_may_be_z", "MANY_CHANNELS"]


def _relabel(kind: str) -> str:
    """How to make a stack's ``kind`` ("frames", "channels") its z-slices."""
    return f"if its {kind} are z-slices, relabel them as slices: Fiji's Image > Properties"


def relabel_note(name: str, axes: str) -> str:
    """" (NAME has axes TYX: if its frames are z-slices, relabel them ...)" for an image ``name`` of
    ``axes`` with channels or frames and no z, else ""."""
    if "Z" in axes or not ("C" in axes or "T" in axes):
        return ""
    return f" ({name} has axes {axes}: {_relabel('channels' if 'C' in axes else 'frames')})"


def warn_of_planes_that_may_be_z(lazy, ndim: int, warnings) -> None:
    """Warn (into ``warnings``, :func:`deconv3d.errors.warn`) where the image ``lazy``, ``ndim``-D in
    space, is a stack of 2D planes deconvolved one by one that looks like a z-stack labelled frames or
    channels: frames with no frame interval recorded, or more than :data:`MANY_CHANNELS` channels with
    no names. A time-lapse that records its interval is not warned about."""
    axes, shape = lazy.axes, lazy.data.shape
    if ndim != 2 or "Z" in axes:
        return
    frames = shape[axes.index("T")] if "T" in axes and lazy.time_axis is None else 1
    # names, not colours: an ImageJ stack's grey lookup tables read as the colour FFFFFF
    named = any(channel.get("label") for channel in lazy.channels or ())
    channels = shape[axes.index("C")] if "C" in axes and not named else 1
    if frames > 1:
        what, kind = f"{frames} frames and no frame interval", "frames"
    elif channels > MANY_CHANNELS:
        what, kind = f"{channels} channels and no channel names", "channels"
    else:
        return
    warn(f"deconv3d: warning: {path_text(lazy.path)} has axes {axes}, {what}: each plane is deconvolved as a 2D "
         f"image; {_relabel(kind)}, and give a 3D PSF", warnings)
