"""The demo on a shrunken problem: every method's row, stacks and the figure are written."""

import numpy as np

from deconv3d import demo
from deconv3d.io import read_image


def test_demo_writes_rows_stacks_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SHAPE", (16, 32, 32))
    monkeypatch.setattr(demo, "DEMO_PSF_SHAPE", (9, 11, 11))
    monkeypatch.setattr(demo, "DEMO_ITERATIONS", 3)
    monkeypatch.setattr(demo, "DEMO_SSL_SECONDS", 1.0)
    rows = demo.run_demo(tmp_path, device="cpu")
    assert [r["method"] for r in rows] == ["input", "wiener", "rl", "rl-tv", "ssl"]
    assert all(np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in rows)
    for name in ("truth", "input", "wiener", "rl", "rl-tv", "ssl", "psf"):
        stack = read_image(tmp_path / f"{name}.tif")
        assert stack.voxel_size is not None and stack.data.dtype == np.float32
    assert read_image(tmp_path / "ssl.tif").data.shape == (16, 32, 32)
    assert (tmp_path / "demo.png").stat().st_size > 1000
