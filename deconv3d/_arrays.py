"""``as_numpy``: what the public functions that work in numpy take their arrays through."""

from __future__ import annotations

import numpy as np


def as_numpy(x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array of ``dtype``; a torch tensor (on a GPU, or one that requires grad,
    which ``np.asarray`` refuses with "Can't call numpy() on Tensor that requires grad") goes
    through ``detach().cpu()``. Does not import torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
