import subprocess
import sys


def loaded_modules(code: str) -> set[str]:
    probe = f"import sys; {code}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_library_imports_no_gui_toolkit():
    mods = loaded_modules("import deconv3d, deconv3d.classical, deconv3d.fft, deconv3d.psf, deconv3d.io, "
                          "deconv3d.cli, deconv3d.metrics, deconv3d.synthetic")
    gui = {m for m in mods if m.split(".")[0] in {"napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2",
                                                  "PySide6"}}
    assert not gui, gui


def test_numeric_core_is_free_of_file_formats():
    mods = loaded_modules("import deconv3d.classical, deconv3d.fft, deconv3d.psf")
    assert not {m for m in mods if m.split(".")[0] in {"tifffile", "zarr", "dask"}}


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
