"""``as_numpy``: what the public functions that work in numpy take their arrays through."""

from __future__ import annotations

import numpy as np

from deconv3d.errors import InputError


def as_numpy(x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array of ``dtype``; a torch tensor (on a GPU, or one that requires grad,
    which ``np.asarray`` refuses with "Can't call numpy() on Tensor that requires grad") goes
    through ``detach().cpu()``. Complex values asked for as a real ``dtype`` are refused
    (:func:`refuse_complex_values`), as Richardson-Lucy refuses them, rather than cast with only
    numpy's ComplexWarning. Does not import torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    if dtype is not None and np.dtype(dtype).kind != "c":
        x = np.asarray(x)
        refuse_complex_values(x)
    return np.asarray(x, dtype=dtype)


def refuse_complex_values(x) -> None:
    """Refuse a complex array (numpy, or a dask array by its dtype) where real intensities are
    needed (one line naming the fix)."""
    if np.iscomplexobj(x):
        raise InputError("got complex values where real intensities are needed: give real ones (e.g. the magnitude, "
                         "numpy.abs)")
