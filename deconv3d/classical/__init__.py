"""Classical deconvolution against a known PSF: Richardson-Lucy family and Wiener/Tikhonov.

Everything runs in torch on the CPU or a GPU, float32 by default, with the PSF's OTF
computed once per run (:mod:`deconv3d.fft`) and no allocation inside the iteration loop. On
the CPU, Richardson-Lucy's FFTs go through FFTW when the optional ``fftw`` extra is installed
(:mod:`deconv3d._fftw`), and its element-wise passes are fused into numba loops when the
optional ``numba`` extra is (:mod:`deconv3d._rl_ops`); otherwise they are torch operations.

Modules: :mod:`~deconv3d.classical.rl` (:func:`richardson_lucy`, :func:`rl_alpha_schedule`),
:mod:`~deconv3d.classical.iterations` (:func:`choose_iterations`),
:mod:`~deconv3d.classical.wiener` (:func:`wiener`); the iteration and its geometry live in
``_iterate`` and ``_problem``.
"""

from deconv3d.classical._problem import BOUNDARIES
from deconv3d.classical.iterations import IterationChoice, choose_iterations, holdout_mask
from deconv3d.classical.rl import Callback, richardson_lucy, rl_alpha_schedule
from deconv3d.classical.wiener import REGULARIZERS, WIENER_BOUNDARIES, wiener

__all__ = ["richardson_lucy", "rl_alpha_schedule", "choose_iterations", "holdout_mask", "IterationChoice",
           "wiener", "BOUNDARIES", "WIENER_BOUNDARIES", "REGULARIZERS", "Callback"]
