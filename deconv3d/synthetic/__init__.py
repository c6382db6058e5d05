"""Synthetic fluorescence data: ground-truth phantoms, blur and microscope noise.

Everything here is plain numpy/scipy (independent of the torch FFT code it is
used to test), returns ``float32`` arrays and draws all randomness from an
explicit ``seed`` (an ``int`` or a ``numpy.random.Generator``), so a result is
reproducible from its arguments alone.

Lengths are in voxels of the finest axis; pass ``voxel_size`` (z, y, x) to make
objects physically isotropic on an anisotropic grid.

Modules: :mod:`~deconv3d.synthetic.phantoms` (ground truths) and :mod:`~deconv3d.synthetic.imaging`
(blur and noise).
"""

from deconv3d.synthetic.imaging import add_noise, add_noise_gaussian_poisson, blur, degrade
from deconv3d.synthetic.phantoms import Seed, beads, filaments, microtubules, nuclei, phantom

__all__ = [
    "phantom",
    "beads",
    "filaments",
    "nuclei",
    "microtubules",
    "blur",
    "add_noise",
    "add_noise_gaussian_poisson",
    "degrade",
    "Seed",
]
