"""The settings of a batch run: one validated configuration for every file, read from a TOML file
(:mod:`~deconv3d.pipeline.batch_config`) or given as a dict (keys are the long option names of
``deconv3d deconvolve``). This module holds the :class:`Settings` object, the checks of its values
and of its sources (model, PSF files or PSF model), and :func:`make_settings`; its fingerprint is in
:mod:`~deconv3d.pipeline.settings_fingerprint`, the tests of a value and the wording of a refusal in
:mod:`~deconv3d.pipeline.settings_checks`."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from deconv3d._arrays import is_whole
from deconv3d._paths import special_file_problem
from deconv3d._saturation import method_problem, parse_saturation
from deconv3d._voxel import NANOMETRE_LIKE, format_sizes
from deconv3d.errors import InputError, naming_image
from deconv3d.pipeline.settings_checks import (_check, _is_number, _many, _n, _positive, _shown, _sized,
                                               check_ssl_only, settings_as_options)
from deconv3d.pipeline.settings_fingerprint import Fingerprinted, tv_term_rule

# (tv_term_rule: its home is settings_fingerprint, kept importable from here)
__all__ = ["Settings", "make_settings", "channel_count", "METHODS", "tv_term_rule"]

METHODS = ("rl", "rl-tv", "wiener", "ssl")
BOUNDARIES = ("bertero", "zero", "reflect")
PSF_MODELS = ("gaussian", "gibson-lanni", "vectorial")
OUTPUT_FORMATS = ("zarr", "tif")
#: Above every image's limit on the RL-TV weight (1 / sum(2 / s_i), s_i the spacing relative to the finest axis);
#: each file's own is checked once its voxel size is known (:func:`check_tv_weight`).
TV_WEIGHT_MAX = 0.5


class _NotGiven(str):
    """A setting's default that the method decides: equal to the value it stands for (and hashed as it),
    but told apart by its type from the same value given."""


#: The boundary of Settings that give none: RL's, bertero; for method wiener its own, reflect. A bertero
#: given with method wiener is refused, as the command line and a batch config refuse it.
DEFAULT_BOUNDARY = _NotGiven("bertero")


@dataclass(frozen=True)
class Settings(Fingerprinted):
    """One deconvolution configuration, shared by all files of a batch (keys: long option names); its
    fingerprint methods (:meth:`fingerprint`, :meth:`finished_fingerprints`) are those of
    :class:`~deconv3d.pipeline.settings_fingerprint.Fingerprinted`."""

    method: str = "rl"
    psf: Optional[str | tuple] = None  # one file, or one per channel
    psf_model: Optional[str] = None
    na: Optional[float] = None
    wavelength: Optional[float | tuple] = None  # one emission wavelength, or one per channel
    ni: float = 1.515
    ns: float = 1.33
    depth: float = 0.0
    iterations: int | str = 20  # RL's count, or "auto": each file's chosen (the chunked deconvolve_file's chooser)
    tv_weight: float = 0.002
    accelerate: bool = True
    boundary: str = DEFAULT_BOUNDARY  # (not given: bertero, Wiener's reflect for method wiener)
    saturation: float | str = "none"  # a level (voxels at or above it are fitted as clipped), "auto" or "none"
    balance: float = 1e-3
    voxel_size: Optional[tuple] = None
    device: Optional[str] = None  # None: not given, which runs as "auto" (see run_device)
    model: Optional[str | tuple] = None  # one network file, or one per channel
    train_steps: Optional[int] = None  # ssl without a model: train on each image first (deconv3d train's recipe)
    seed: int = 0  # of that training
    amp: bool = True  # mixed precision of the network, in that training and in inference (bfloat16 on a CPU with AMX)
    tta: bool = False
    band_limit: float = 0.0  # deconv3d.selfsup.BAND_LIMIT: off; an eps > 0 turns it on
    chunks: Optional[tuple] = None
    memory_limit: Optional[str] = None
    pyramid_levels: int = 0
    output_format: str = "zarr"
    pattern: tuple = ("*.tif", "*.tiff", "*.zarr")

    def __post_init__(self):
        self._normalise()
        self._check_numbers()
        self._check_values()
        self._check_memory_limit()
        self._check_sources()

    def _normalise(self) -> None:
        for name in ("psf", "wavelength", "model"):  # a list of one is the single value
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, value[0] if len(value) == 1 else tuple(value))
        try:  # 4095 and 4095.0, "AUTO" and "auto" alike (as the fingerprint holds them)
            object.__setattr__(self, "saturation", parse_saturation(self.saturation, _n("saturation")))
        except InputError as exc:
            _check(False, str(exc))
        if self.method == "wiener" and isinstance(self.boundary, _NotGiven):  # (RL's default: Wiener's own)
            from deconv3d.classical.wiener import RUN_BOUNDARIES

            object.__setattr__(self, "boundary", RUN_BOUNDARIES[0])
        if isinstance(self.iterations, str) and self.iterations.strip().lower() == "auto":  # ("Auto" in a TOML)
            object.__setattr__(self, "iterations", "auto")
        if isinstance(self.pattern, (str, list)):
            pattern = (self.pattern,) if isinstance(self.pattern, str) else tuple(self.pattern)
            object.__setattr__(self, "pattern", pattern)

    def _check_values(self) -> None:
        self._check_method_values()
        self._check_options()
        self._check_sizes()
        # Checked here, before any file runs: each of a night's files failed on them one by one.
        for name in ("accelerate", "amp"):
            _check(isinstance(getattr(self, name), bool), f"{_n(name)} must be true or false, got {getattr(self, name)!r}")
        from deconv3d._tensors import resolve_device

        resolve_device(self.run_device)

    def _check_method_values(self) -> None:
        """The method, its boundary, output format, iterations, balance, saturation and RL-TV weight."""
        _check(self.method in METHODS, f"{_n('method')} must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "wiener":  # (bertero, RL's, refused in the command line's words)
            from deconv3d.classical.wiener import run_boundary_problem

            problem = run_boundary_problem(self.boundary, _n("boundary"))
            _check(problem is None, problem)
        _check(self.boundary in BOUNDARIES, f"{_n('boundary')} must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")
        _check(self.output_format in OUTPUT_FORMATS, f"{_n('output_format')} must be zarr or tif, got {self.output_format!r}")
        _check(self.iterations == "auto" or (isinstance(self.iterations, int) and not isinstance(self.iterations, bool)
                                             and self.iterations >= 1),
               f"{_n('iterations')} must be a positive integer or \"auto\", got {self.iterations!r}")
        _check(_positive(self.balance), f"{_n('balance')} must be positive, got {self.balance!r}")
        # (refused, not ignored: so a method other than RL's never has it in its fingerprint either)
        problem = method_problem(self.method, self.saturation, _n("method"), _n("saturation"))
        _check(problem is None, problem)
        _check(self.method != "rl-tv" or (_positive(self.tv_weight) and self.tv_weight < TV_WEIGHT_MAX),
               f"{_n('method')} rl-tv needs a positive {_n('tv_weight')} below {TV_WEIGHT_MAX}, and below 1/6 for "
               f"isotropic 3D voxels (try 0.002), got {self.tv_weight!r}")

    def _check_options(self) -> None:
        """The file-name patterns, pyramid levels, test-time augmentation and band limit."""
        _check(isinstance(self.pattern, tuple) and self.pattern
               and all(isinstance(p, str) and p.strip() and not Path(p).is_absolute() and ".." not in Path(p).parts
                       and Path(p).parts for p in self.pattern),  # ("." or "./": the input folder itself)
               f"{_n('pattern')} needs file-name patterns inside the input folder, like \"*.tif\", got {self.pattern!r}")
        _check(is_whole(self.pyramid_levels) and self.pyramid_levels >= 0,
               f"{_n('pyramid_levels')} must be a whole number >= 0, got {self.pyramid_levels!r}")
        _check(isinstance(self.tta, bool), f"{_n('tta')} must be true or false, got {self.tta!r}")
        _check(isinstance(self.band_limit, (int, float)) and 0 <= self.band_limit < float("inf"),
               f"{_n('band_limit')} must be a number >= 0, got {self.band_limit!r}")

    def _check_sizes(self) -> None:
        """The voxel size (in micrometres, not nanometres) and the chunks."""
        _check(self.voxel_size is None or (_sized(self.voxel_size) and len(self.voxel_size) in (2, 3)
                                           and all(_positive(v) for v in self.voxel_size)),
               f"{_n('voxel_size')} needs 3 positive numbers in µm (Z Y X; Y X for 2D images), like [0.3, 0.1, 0.1], "
               f"got {self.voxel_size!r}")
        if self.voxel_size is not None:  # (it failed each file of the batch in turn, exit 3)
            _check(max(self.voxel_size) <= NANOMETRE_LIKE, f"{_n('voxel_size')} {format_sizes(self.voxel_size)} "
                   "looks like nanometres: give it in micrometres")
        _check(self.chunks is None or (_sized(self.chunks) and len(self.chunks) in (2, 3)
                                       and all(_positive(v) and isinstance(v, int) for v in self.chunks)),
               f"{_n('chunks')} needs 3 positive whole numbers (Z Y X; Y X for 2D images), like [32, 256, 256], "
               f"got {self.chunks!r}")

    def _check_numbers(self) -> None:
        """Settings that take a number get one: a TOML ``true`` (a bool is an int in Python) ran as 1."""
        for name in ("na", "ni", "ns", "depth", "tv_weight", "balance", "band_limit"):
            value = getattr(self, name)
            _check(value is None or _is_number(value), f"{_n(name)} must be a number, got {value!r}")
        _check(all(_is_number(w) for w in _many(self.wavelength)),
               f"{_n('wavelength')} must be a number in micrometres, or one per channel, got {self.wavelength!r}")

    def _check_memory_limit(self) -> None:
        # A bare number is bytes for the Python API (as run_chunked takes); a small one is a config's
        # "memory_limit = 500" that meant megabytes, refused rather than read as 500 bytes.
        _check(self.memory_limit is None or isinstance(self.memory_limit, str)
               or (isinstance(self.memory_limit, numbers.Integral) and not isinstance(self.memory_limit, bool)
                   and self.memory_limit >= 2**20),
               f"{_n('memory_limit')} needs a unit, like \"4GB\" or \"512MiB\", got {self.memory_limit!r}")
        if self.memory_limit is not None:
            from deconv3d.pipeline.system_memory import parse_memory

            parse_memory(self.memory_limit)

    def _check_sources(self) -> None:
        """The model, PSF files or PSF model: present, and usable by every file."""
        self._check_training()
        if self.method == "ssl":
            _check(self.model is None or self.train_steps is None,
                   f"give {_n('model')} or {_n('train_steps')} for {_n('method')} ssl, not both")
            _check(self.model is not None or self.train_steps is not None,
                   f"{_n('method')} ssl needs {_n('model')} (a .ckpt from 'deconv3d train') or {_n('train_steps')} "
                   "(train on each image first)")
            if self.model is not None:
                self._check_models()
                if self.psf is not None:  # (a model carries its PSF; one given beside it is checked against it)
                    self._check_psf_files()
                return
        if self.psf is None:
            self._check_psf_model()
        else:
            self._check_psf_files()

    def _check_training(self) -> None:
        """The model and training steps (ssl only), the training steps and the seed."""
        check_ssl_only(self.method, self.model, self.train_steps)  # (deconvolve's options are checked by it too)
        _check(self.train_steps is None or (is_whole(self.train_steps) and self.train_steps >= 1),
               f"{_n('train_steps')} must be a positive whole number, got {self.train_steps!r}")
        _check(is_whole(self.seed) and 0 <= self.seed < 2**63, f"{_n('seed')} must be a whole number >= 0, "
               f"got {self.seed!r}")

    def _check_models(self) -> None:
        """The model files: names of existing files, one or one per channel, as many as the PSFs give."""
        _check(all(isinstance(m, (str, os.PathLike)) for m in _many(self.model)),
               f"{_n('model')} must be a file name, or one per channel, got {_shown(self.model)}")
        for model in _many(self.model):
            problem = special_file_problem(model, "model")
            _check(problem is None, problem)
            _check(Path(model).is_file(), f"model file not found: {model}: check the path")
        counts = {len(_many(v)) for v in (self.model, self.psf, self.psf_model and self.wavelength)} - {0, 1}
        _check(len(counts) < 2, f"{_n('model')} and the PSFs give one per channel for different numbers of "
               "channels: give as many of each, or one for all")

    def _check_psf_model(self) -> None:
        """Without a PSF file: a PSF model with positive NA and wavelengths, and optics it can generate."""
        _check(self.psf_model in PSF_MODELS, f"a PSF is needed: set {_n('psf')} = \"PSF.tif\" or {_n('psf_model')} "
               f"with {_n('na')} and {_n('wavelength')}")
        _check(_positive(self.na) and _many(self.wavelength) and all(_positive(w) for w in _many(self.wavelength)),
               f"{_n('psf_model')} needs positive {_n('na')} and {_n('wavelength')} (one, or one per channel)")
        from deconv3d.psf.generate import check_optics

        for wavelength in _many(self.wavelength):
            check_optics(self.psf_model, self.na, wavelength, self.ni, self.ns, self.depth)

    def _check_psf_files(self) -> None:
        """The PSF files: no PSF model beside them, file names (one or one per channel) of usable files."""
        _check(self.psf_model is None, f"give either {_n('psf')} or {_n('psf_model')}, not both")
        _check(bool(_many(self.psf)) and all(isinstance(p, (str, os.PathLike)) for p in _many(self.psf)),
               f"{_n('psf')} needs a file name, or one per channel, got {_shown(self.psf)}"
               + (" (save it with deconv3d.io.write_tiff first)" if hasattr(self.psf, "shape") else ""))
        from deconv3d.io import psf_path_problem

        for psf in _many(self.psf):
            problem = psf_path_problem(psf)
            _check(problem is None, problem)

    @property
    def run_device(self) -> str:
        """The device to run on: the one given, else ``auto`` (CUDA where there is a GPU), as for
        ``deconvolve``."""
        return self.device or "auto"

    def device_kind(self) -> str:
        """``"cpu"`` or ``"cuda"``: the kind of device the run gets, as the fingerprint holds it.

        A device not given, ``auto`` and the device it picks are one setting (``--device auto``
        redid a batch that ran without ``--device``, and was refused as other settings while it
        ran); ``cuda:0`` and ``cuda:1`` compute alike. Records of the old default (``cpu``, and
        written for a device not given) still match on a machine without a GPU.
        """
        device = str(self.run_device)
        if device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return device.split(":")[0]

    def precision(self) -> str:
        """The dtype method ssl's network runs (and trains) in: ``amp`` on this machine's kind of
        device (bfloat16 only on a CPU with AMX, see :func:`deconv3d._torch_common.amp_dtype`); as
        :func:`deconv3d.selfsup.predict.inference_precision`, but for the kind of device only, which
        need not be here (a driver without a GPU may plan a cluster's CUDA run)."""
        import torch

        from deconv3d._torch_common import precision_name

        return precision_name(self.amp, torch.device(self.device_kind()))

    def accelerated_rl(self) -> bool:
        """Whether the method runs accelerated Richardson-Lucy (``rl`` or ``rl-tv``), whose chunked output
        changed when its blocks came to be written from the measuring run
        (:func:`~deconv3d.pipeline.completion_records.is_finished`). Not with ``iterations = "auto"``, whose
        chosen counts run without acceleration."""
        return self.method in ("rl", "rl-tv") and bool(self.accelerate) and self.iterations != "auto"


def channel_count(settings: Settings) -> int:
    """How many PSFs the settings give: 1, or one per channel. Wavelengths count only where a PSF
    is generated from them: beside a PSF file they are ignored (and warned about), yet had failed
    every single-channel file for "2 PSFs"."""
    wavelengths = len(_many(settings.wavelength)) if settings.psf_model is not None else 0
    return max(len(_many(settings.psf)), wavelengths, 1)


def check_tv_weight(tv_weight: float, ndim: int, voxel, image: str) -> None:
    """Refuse, before any work, an RL-TV weight at or above ``image``'s own limit, ``1 / Σ_i 2 / s_i``
    (``s_i`` its voxel spacing relative to the finest axis; :func:`deconv3d.classical.richardson_lucy`),
    naming the command's option. :data:`TV_WEIGHT_MAX` bounds every image's limit, not this one's:
    with ``--chunks`` a weight of 0.4 passed it, then every block refused it by its Python name.
    Called once the PSF's checks have passed, which may refuse an image without a voxel size
    (``voxel`` None, taken as isotropic here) on other grounds."""
    from deconv3d.classical._problem import _tv_limit

    limit = _tv_limit(ndim, voxel)
    if not tv_weight < limit:
        sizes = f"voxel size {format_sizes(voxel)} µm" if voxel is not None else "no voxel size (taken as isotropic)"
        raise naming_image(lambda name: f"--tv-weight {tv_weight:g} is too large for {name}: RL-TV needs it below "
                           f"{limit:.3g} for a {ndim}D image with {sizes}: lower it (try 0.002)", image)


def make_settings(values: dict, options: bool = False) -> Settings:
    """Validated :class:`Settings` from a dict; wrong types become an InputError.

    ``options``: the values came from a command's options (``deconvolve`` on the chunked path):
    a refusal names them as options (``--tv-weight``), without the "batch configuration" of a
    batch, whose TOML keys and options both take the settings' names.
    """
    with settings_as_options(options):
        try:
            return Settings(**values)
        except TypeError as exc:
            raise InputError(f"batch configuration: {exc}") from exc
