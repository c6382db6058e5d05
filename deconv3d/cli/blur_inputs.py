"""The input files of the ``blur`` commands, read and checked: the through-focus stacks of ``blur train``
(:func:`_read_stacks`) and the planes of ``blur synth`` and ``blur deblur`` (:func:`_read_pair`), each
with the one (y, x) pixel size the files record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deconv3d.errors import InputError

if TYPE_CHECKING:  # numpy is imported where it is used: --help and --version do without it
    import numpy as np


def _pixel_size(image, path) -> tuple | None:
    """The (y, x) pixel size a file records (None when it records none); a bad one is refused."""
    problem = getattr(image, "voxel_problem", None)
    if problem:
        raise InputError(f"{problem}: fix the file's calibration (in Fiji: Image > Properties) and save it again")
    return None if image.voxel_size is None else tuple(float(v) for v in image.voxel_size)[-2:]


def _common_pixel_size(sizes: dict) -> tuple | None:
    """The one pixel size of ``{path: size or None}``, None when none is known; refuses a mismatch."""
    import numpy as np

    known = {p: s for p, s in sizes.items() if s is not None}
    if not known:
        return None
    (first, size), *rest = known.items()
    for path, other in rest:
        if not np.allclose(other, size, rtol=1e-3):
            raise InputError(f"{path} has pixel size {other} µm but {first} has {size} µm: give planes of one "
                             "sampling (resample one of them first)")
    return size



def _read_stacks(paths) -> tuple[np.ndarray, tuple | None]:
    """The stacks, and their common (y, x) pixel size (None when no file records one)."""
    import numpy as np

    from deconv3d.io import read_image

    stacks, sizes, seen = [], {}, {}
    for path in paths:
        identity = _file_identity(path)
        if identity is not None and identity in seen:
            raise InputError(f"{path} is given twice (also as {seen[identity]}): give each stack once (a repeated "
                             "stack is trained on twice as often, and a copy held out for validation scores the model "
                             "on what it trained on)")
        seen[identity] = path
        try:
            image = read_image(path)
        except InputError:
            _refuse_synthesised_levels(path)  # (its time axis's refusal spoke of time data)
            _refuse_squeezed_planes(path, _STACKS_NEEDED)
            raise
        data = image.data
        sizes[path] = _pixel_size(image, path)
        if data.ndim == 2 and image.axes[0] == "Z":  # (its planes are one pixel high or wide: that axis was dropped)
            side = "high" if image.axes[1] == "X" else "wide"
            raise InputError(f"{path} holds {data.shape[0]} planes only 1 pixel {side}: {_STACKS_NEEDED}")
        if data.ndim != 3 or data.shape[0] < 3:
            planes = 1 if data.ndim == 2 else data.shape[0]
            raise InputError(f"{path} holds {planes} plane(s): blur train needs through-focus stacks of at "
                             "least 3 planes, ordered by blur")
        if stacks and data.shape != stacks[0].shape:
            raise InputError(f"{path} has shape {data.shape} but {paths[0]} has {stacks[0].shape}: "
                             "give stacks with the same number of planes of the same size")
        stacks.append(data)
    return np.stack(stacks), _common_pixel_size(sizes)


def _file_identity(path):
    """What tells the same file under two names (a path, a symlink, ./): its device and inode; None for a path
    that cannot be looked at (missing: the reader refuses it as such)."""
    import os

    try:
        info = os.stat(path)
    except OSError:  # (missing: the reader's own refusal says so)
        return None
    return info.st_dev, info.st_ino


_STACKS_NEEDED = "blur train needs through-focus stacks of 2D planes, at least 2 pixels a side"


def _refuse_squeezed_planes(path, needs: str) -> None:
    """Refuse an ImageJ TIFF of planes 1 pixel wide as what it is, not as "truncated or corrupt" (the reader's
    word for it): tifffile writes a (3, 1, 1) or (3, 2, 1) stack as one (3, 1) or (3, 2) page, its length-1
    axis dropped, under a header that lists 3 images. Return for any other file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            images = (tif.imagej_metadata or {}).get("images")
            shape = tif.pages[0].shape if len(tif.pages) == 1 else None
    except Exception:  # noqa: BLE001 - unreadable: the reader's own refusal says why
        return
    if isinstance(images, int) and images > 1 and shape is not None and len(shape) == 2 and shape[0] == images:
        side = "high and wide" if shape[1] == 1 else "high or wide"
        raise InputError(f"{path} holds {images} planes only 1 pixel {side}: {needs}")


def _refuse_synthesised_levels(path) -> None:
    """Refuse a ``blur synth`` output given to ``blur train`` as what it is (levels the model made, written as
    frames: :data:`~deconv3d.cli.blur_synth_deblur.FIRST_AXIS`), not as time data; return for any other file."""
    import tifffile

    from deconv3d._tiff_metadata import tiff_properties

    from .blur_synth_deblur import FIRST_AXIS

    try:
        with tifffile.TiffFile(path) as tif:
            properties = tiff_properties(tif)  # (an ImageJ TIFF's or an OME-TIFF's)
    except Exception:  # noqa: BLE001 - unreadable: the reader's own refusal says why
        return
    if properties.get("first_axis") == FIRST_AXIS:
        raise InputError(f"{path} holds blur levels that 'blur synth' made, not a through-focus stack: train on "
                         "recorded stacks (their planes ordered by blur)")


def _read_plane(path, role: str) -> tuple[np.ndarray, tuple | None]:
    from deconv3d.io import read_image

    try:
        image = read_image(path)
    except InputError:
        _refuse_squeezed_planes(path, f"give {role} as a single 2D plane, at least 2 pixels a side")
        raise
    if image.data.ndim != 2:
        raise InputError(f"{role} {path} holds {image.data.shape[0]} planes: give a single 2D plane "
                         "(extract it from the stack first)")
    return image.data, _pixel_size(image, path)


#: What the plane given after FAR is, for the refusal of one file given as both.
_ROLES = {"NEAR": "the in-focus one", "LEVEL": "the one to deblur"}


def _read_pair(far_path, other_path, other_role: str):
    """The FAR plane and another plane of the same shape, with their common pixel size (or None). One file given
    as both (also as ./a.tif and a.tif, or through a symlink) is refused: synth and deblur worked on the plane
    paired with itself, without a word."""
    identity = _file_identity(far_path)
    if identity is not None and identity == _file_identity(other_path):
        raise InputError(f"FAR {far_path} and {other_role} {other_path} are the same file: give two planes of one "
                         f"field of view, FAR the most blurred and {other_role} {_ROLES[other_role]}")
    far, far_pixel = _read_plane(far_path, "FAR")
    other, other_pixel = _read_plane(other_path, other_role)
    if far.shape != other.shape:
        raise InputError(f"FAR {far_path} {far.shape} and {other_role} {other_path} {other.shape} differ in shape: "
                         "give two planes of one field of view")
    return far, other, _common_pixel_size({far_path: far_pixel, other_path: other_pixel})
