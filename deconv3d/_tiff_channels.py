"""Channel names and colours from TIFF metadata (OME-XML ``Channel`` elements, ImageJ ``Labels`` and
``LUTs``), as OME-Zarr's ``omero`` entries; shared by :mod:`deconv3d.omezarr` and the TIFF writer."""

from __future__ import annotations

import re

import numpy as np
import tifffile

from deconv3d._tiff_metadata import _ome_pixels


def ome_channels(tif: tifffile.TiffFile, count: int) -> tuple | None:
    """The name and colour of each of the ``count`` channels that an OME-TIFF's first image records
    (``Channel`` ``Name`` and ``Color``), as OME-Zarr's ``omero`` ``label`` and ``color`` (six hex
    digits, RGB of OME's signed RGBA integer), or None where it does not give one ``Channel`` per
    channel: without them an OME-Zarr output's channels were unnamed and grey in viewers."""
    pixels = _ome_pixels(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
    found = [el for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"] if pixels is not None else []
    if len(found) != count:
        return None
    channels = []
    for element in found:
        entry = {"label": element.get("Name")} if element.get("Name") else {}
        try:
            entry["color"] = f"{(int(element.get('Color')) & 0xFFFFFFFF) >> 8:06X}"
        except (TypeError, ValueError):  # none recorded, or not an integer
            pass
        channels.append(entry)
    return tuple(channels) if any(channels) else None


def omero_color(color) -> str:
    """A channel colour as OME-Zarr's ``omero`` metadata holds it: ``color`` where it is six hex digits
    (RRGGBB), as text, else white (``"FFFFFF"``). Used by the ``omero`` channels deconv3d writes and the
    ImageJ lookup tables of its TIFF hyperstacks, which agree on a colour so."""
    return str(color) if re.fullmatch(r"[0-9A-Fa-f]{6}", str(color)) else "FFFFFF"


#: More channels than this, with no names recorded, in a stack of planes draw the warning of
#: :func:`deconv3d.pipeline.axis_hints.warn_of_planes_that_may_be_z`: fluorescence images rarely have
#: more than a few. Such a stack's per-plane labels that number its planes are not channel names
#: (:func:`imagej_channels`).
MANY_CHANNELS = 8


def imagej_channels(tif: tifffile.TiffFile, count: int) -> tuple | None:
    """The name and colour of each of the ``count`` channels of an ImageJ hyperstack, as
    :func:`ome_channels` gives them, or None where it records neither: a channel's name is its
    planes' ``Labels`` entry where every plane of that channel has the same one (slice labels that
    vary along z or t name planes, not channels), its colour the end of its ``LUTs`` entry where
    that runs from black to one colour (as Fiji's channel colours do; not a LUT such as Fire).
    A composite saved from Fiji, or deconv3d's TIFF output, lost its names and colours on the way.

    Labels are not names either where they look like slice labels (:func:`_numbered_planes`): more
    than :data:`MANY_CHANNELS` channels of one plane each, labelled with one text whose number counts
    the planes (``z001``, ``z002``, ...; ``z010``, ``z009``, ...; an image sequence's file names).
    Taken as names, they silenced the hint that such a stack may be z-slices labelled as channels.
    Fewer channels, numbered channel names (``Ch1`` ... ``Ch12``), or labels that are not so
    numbered (``GFP``, ``RFP``; markers; wavelengths in steps of 10 nm), are kept as names."""
    ij = tif.imagej_metadata or {}
    labels, luts = ij.get("Labels"), ij.get("LUTs")
    labels = [labels] if isinstance(labels, str) else labels
    channels = [{} for _ in range(count)]
    if isinstance(labels, list) and len(labels) == count > MANY_CHANNELS and _numbered_planes(labels):
        labels = None
    if isinstance(labels, list) and labels and len(labels) % count == 0:
        for c, entry in enumerate(channels):
            names = set(labels[c::count])
            if len(names) == 1 and isinstance(labels[c], str) and labels[c]:
                entry["label"] = labels[c]
    luts = [luts] if isinstance(luts, np.ndarray) else luts
    if isinstance(luts, list) and len(luts) == count:
        for entry, lut in zip(channels, luts):
            if np.shape(lut) == (3, 256):
                end = lut[:, 255].astype(np.float64)
                if np.all(np.abs(lut - np.outer(end, np.arange(256)) / 255) <= 1):  # a ramp from black
                    entry["color"] = "".join(f"{int(v):02X}" for v in end)
    return tuple(channels) if any(channels) else None


#: Words that, right before a label's number, say what it counts. A channel's (Ch1, C01, Channel 3;
#: MetaMorph's wavelength numbers w1, w2, ...) keeps numbered labels as names; a slice's, frame's or plane's (z001, t12, slice 5) makes them slice
#: labels however they are numbered (z010, z009, ...; every other slice).
CHANNEL_WORDS = frozenset({"c", "ch", "chan", "channel", "w", "wavelength"})
SLICE_WORDS = frozenset({"z", "slice", "plane", "section", "t", "frame"})
#: A label that ends so is a file name (Fiji's File > Import > Image Sequence labels each slice with
#: its file's name; its "step" option skips files).
_FILE_NAME = re.compile(r"\.(tiff?|png|jpe?g|bmp|gif|dcm)$", re.IGNORECASE)


def _numbered_planes(labels: list) -> bool:
    """Whether ``labels`` are slice labels: one text with one number that changes from each label to
    the next, always up or always down (every other number the same in all), where

    - the number is a position out of a total (``z:3/12``, ``c:3/12 - name``: Bio-Formats' labels; not
      ``500/10 nm``, a band's centre and width, whose second number is smaller), or
    - a slice word stands right before it (:data:`SLICE_WORDS`: ``z010``, ``z009``; ``z001``, ``z003``)
      or the labels are file names (``img_0001.tif``, ``img_0003.tif``), however it steps, or
    - no channel word stands before it (:data:`CHANNEL_WORDS`: ``Ch1``, ``C01``) and it steps by one
      (``1``, ``2``; ``img_0009``, ``img_0010``).

    Numbers that step by more, or go up and down, and no slice word (``500nm``, ``510nm``: a spectral
    stack's wavelengths), are names."""
    if not all(isinstance(label, str) for label in labels):
        return False
    parts = [re.split(r"(\d+)", label) for label in labels]
    shape = [len(p) for p in parts]
    if len(set(shape)) != 1 or shape[0] < 2:
        return False
    texts = {tuple(p[0::2]) for p in parts}
    numbers = [[int(n) for n in p[1::2]] for p in parts]
    varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
    if len(texts) != 1 or len(varying) != 1:
        return False
    counted = [n[varying[0]] for n in numbers]
    steps = {b - a for a, b in zip(counted, counted[1:])}
    if not (all(step > 0 for step in steps) or all(step < 0 for step in steps)):
        return False
    text = parts[0][0::2]
    before, after = text[varying[0]], text[varying[0] + 1]
    word = (re.findall(r"[a-z]+", before.lower()) or [""])[-1]
    total = numbers[0][varying[0] + 1] if varying[0] + 1 < len(numbers[0]) else 0
    if after.strip() == "/" and total >= max(counted):  # z:3/12; not 500/10 nm, a band's centre and width
        return True
    if word in SLICE_WORDS or _FILE_NAME.search(labels[0]):
        return True
    return word not in CHANNEL_WORDS and steps in ({1}, {-1})

