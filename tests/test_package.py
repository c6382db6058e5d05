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
