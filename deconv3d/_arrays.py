"""``as_numpy``: what the public functions that work in numpy take their arrays through; and the
checks of their inputs shared across the package (:func:`refuse_complex`, :func:`is_whole`)."""

from __future__ import annotations

import numbers
import os

import numpy as np

from deconv3d.errors import InputError


def as_numpy(x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array of ``dtype``; a torch tensor (on a GPU, or one that requires grad,
    which ``np.asarray`` refuses with "Can't call numpy() on Tensor that requires grad") goes
    through ``detach().cpu()``. Complex values asked for as a real ``dtype`` are refused
    (:func:`refuse_complex`), as Richardson-Lucy refuses them, rather than cast with only
    numpy's ComplexWarning. Does not import torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    if dtype is not None and np.dtype(dtype).kind != "c":
        x = np.asarray(x)
        refuse_complex(x)
    return np.asarray(x, dtype=dtype)


def refuse_file_name(x, reader: str = "deconv3d.io.read_image(path).data") -> None:
    """Refuse a path given where an array is needed, in one line saying how to read it with ``reader``
    (numpy made a 0D array of the string, refused as "could not convert string to float")."""
    if isinstance(x, (str, bytes, os.PathLike)):
        raise InputError(f"got the file name {os.fsdecode(x)!r} where an array is needed: read it first, e.g. {reader}")


def refuse_empty(shape, name: str, unit: str = "voxel") -> None:
    """Refuse an array of ``shape`` with no element, in one line naming ``name`` (an empty image was told
    to crop its PSF; an empty kernel convolved as all zero)."""
    if 0 in tuple(shape):
        raise InputError(f"{name} is empty (shape {tuple(shape)}): give one with at least one {unit} along each axis")


def refuse_complex(x, name: str = "the input", fix: str = "give real intensities (e.g. the magnitude, numpy.abs)"
                   ) -> None:
    """Refuse complex values where real intensities are needed, in one line naming ``name`` and
    ``fix``: ``x`` a numpy, dask or zarr array (by its dtype: nothing computed), a torch tensor or
    a dtype. The one check of the functions that take arrays and of the image readers."""
    if isinstance(x, np.dtype):
        complex_values = x.kind == "c"
    elif callable(getattr(x, "is_complex", None)):  # a torch tensor (torch is not imported here)
        complex_values = bool(x.is_complex())
    else:
        complex_values = np.iscomplexobj(x)
    if complex_values:
        raise InputError(f"{name} has complex values: {fix}")


def refuse_non_numeric(dtype, name: str = "the input") -> None:
    """Refuse a dtype that holds no numbers (strings, bytes, objects, structured records, dates), in
    one line naming ``name``: read as far as the blocks, they were called damaged chunks."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc":
        raise InputError(f"{name} has non-numeric values (dtype {dtype}): save it as numbers (integers or floats)")


def is_whole(value, least: int | None = None) -> bool:
    """Whether ``value`` is a whole number (a Python or numpy integer, not a bool: 2.5 ran as 2,
    True as 1), of at least ``least`` when given. The one test of the options that count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) \
        and (least is None or bool(value >= least))
