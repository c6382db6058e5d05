import subprocess
import sys

import pytest

CORE = "import deconv3d.classical, deconv3d.fft, deconv3d.psf"
LIBRARY = ("import deconv3d, deconv3d.classical, deconv3d.fft, deconv3d.psf, deconv3d.io, deconv3d.cli, "
           "deconv3d.metrics, deconv3d.synthetic")


def loaded_modules(*stages: str) -> list[set[str]]:
    """The modules one fresh interpreter holds after each stage of imports, in order (one process for
    all: each start imports torch, seconds on a busy machine). A later stage's set includes the
    earlier ones', as that stage's imports alone would load them too."""
    probe = "import sys\n" + "".join(f"{code}\nprint('\\n'.join(sys.modules)); print('-- stage --')\n"
                                     for code in stages)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return [set(part.split()) for part in out.stdout.split("-- stage --")[:-1]]


@pytest.fixture(scope="module")
def imports():
    """{"core": modules after importing the numeric core alone, "library": after the whole library}."""
    return dict(zip(("core", "library"), loaded_modules(CORE, LIBRARY)))


def test_library_imports_no_gui_toolkit(imports):
    gui = {m for m in imports["library"] if m.split(".")[0] in {"napari", "magicgui", "qtpy", "PyQt5", "PyQt6",
                                                                "PySide2", "PySide6"}}
    assert "deconv3d.cli" in imports["library"] and not gui, gui


def test_numeric_core_is_free_of_file_formats(imports):
    mods = imports["core"]
    assert "deconv3d.psf" in mods and not {m for m in mods if m.split(".")[0] in {"tifffile", "zarr", "dask"}}


def test_public_api():
    import deconv3d

    assert deconv3d.__version__
    for name in deconv3d.__all__:
        assert getattr(deconv3d, name) is not None


def test_one_cancelled_exception_under_every_name():
    """A chunked run raised pipeline.Cancelled, the network selfsup.Cancelled: two classes, so a GUI
    catching one missed the other (a network's blocks could raise either)."""
    import deconv3d
    import deconv3d.pipeline
    import deconv3d.selfsup
    from deconv3d.errors import Cancelled
    from deconv3d.pipeline.chunked import Cancelled as chunked
    from deconv3d.selfsup.predict import Cancelled as predict

    assert deconv3d.Cancelled is Cancelled and "Cancelled" in deconv3d.__all__
    for name in (deconv3d.pipeline.Cancelled, deconv3d.selfsup.Cancelled, chunked, predict):
        assert name is Cancelled


def test_richardson_lucy_and_wiener_do_not_import_scipy_ndimage():
    """``import deconv3d.classical`` imported scipy.ndimage (0.3-1.2 s) through deconv3d.psf's prepare
    and distill modules, though Richardson-Lucy and Wiener never call it; the PSF functions that use it
    now import it when they run."""
    run = ("import numpy as np\nfrom deconv3d.classical import richardson_lucy, wiener\n"
           "y = np.random.default_rng(0).random((8, 16, 16), dtype=np.float32) + 0.1\n"
           "h = np.ones((3, 3, 3), np.float32)\n"
           "for boundary in ('bertero', 'reflect', 'zero'):\n"
           "    richardson_lucy(y, h, 3, boundary=boundary, device='cpu')\n"
           "wiener(y, h, 0.01, device='cpu')")
    resample = "from deconv3d.psf import resample_psf\nresample_psf(h, (1, 1, 1), (1, 0.5, 0.5))"
    after_run, after_resample = loaded_modules(run, resample)
    assert "deconv3d.psf" in after_run and "scipy.ndimage" not in after_run
    assert "scipy.ndimage" in after_resample  # imported where it is used


def test_help_and_version_do_not_import_numpy():
    """``deconv3d --help`` and ``--version`` imported numpy (0.14-0.16 s of a 0.3-0.4 s start) through
    the blur commands and the voxel-size check, which now import it where they use it."""
    def asked(argv):
        return ("import contextlib, io\nfrom deconv3d.cli import main\n"
                f"with contextlib.redirect_stdout(io.StringIO()) as shown:\n    try:\n        main({argv!r})\n"
                "    except SystemExit as done:\n        assert done.code == 0 and shown.getvalue(), done.code")
    help_, version, check = loaded_modules(asked(["--help"]), asked(["--version"]),
                                           "from deconv3d._voxel import checked_voxel_size\n"
                                           "assert checked_voxel_size(0.2, 2) == (0.2, 0.2)")
    assert "deconv3d.cli.blur" in help_ and "numpy" not in help_
    assert "numpy" not in version
    assert "numpy" in check  # imported where it is used
