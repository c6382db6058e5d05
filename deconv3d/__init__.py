"""deconv3d: deconvolution of 3D fluorescence microscopy.

Public API (stable names; everything else is internal)::

    richardson_lucy, wiener          classical deconvolution (deconv3d.classical)
    choose_iterations                RL's iteration count from held-out voxels (deconv3d.classical)
    FFTConvolver, fft_convolve       cached-OTF FFT convolution (deconv3d.fft)
    generate_psf, prepare_psf        PSF generation and preparation (deconv3d.psf)
    read_image, write_tiff           TIFF I/O with voxel sizes (deconv3d.io)
    InputError                       raised for bad user input
    Cancelled                        raised where a caller cancels a run that returns nothing
                                     (also deconv3d.pipeline.Cancelled, deconv3d.selfsup.Cancelled)
"""

__version__ = "0.1.0"

from deconv3d.errors import Cancelled, InputError

__all__ = [
    "__version__",
    "InputError",
    "Cancelled",
    "richardson_lucy",
    "wiener",
    "choose_iterations",
    "FFTConvolver",
    "fft_convolve",
    "generate_psf",
    "prepare_psf",
    "read_image",
    "write_tiff",
]

_LAZY = {
    "richardson_lucy": "deconv3d.classical",
    "wiener": "deconv3d.classical",
    "choose_iterations": "deconv3d.classical",
    "FFTConvolver": "deconv3d.fft",
    "fft_convolve": "deconv3d.fft",
    "generate_psf": "deconv3d.psf",
    "prepare_psf": "deconv3d.psf",
    "read_image": "deconv3d.io",
    "write_tiff": "deconv3d.io",
}


def __getattr__(name):
    # Lazy imports keep `import deconv3d` (and `deconv3d --help`) fast: torch is
    # loaded only when a numeric function is first used.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deconv3d' has no attribute {name!r}")
