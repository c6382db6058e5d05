"""Provenance records of a run: what it did (method, parameters, PSF and where it came from),
on what (the input and its checksum), how (the execution plan and the environment), for OME-Zarr
attributes and TIFF properties alike."""

from __future__ import annotations

import os

import numpy as np

from deconv3d._environment import run_environment, timestamp
from deconv3d._paths import path_text, recorded_path

__all__ = ["psf_summary", "psf_source", "run_environment", "provenance", "method_fft_shapes", "run_fft_environment",
           "tiff_properties"]


def psf_summary(psf) -> dict:
    """Shape, sum, peak position and fingerprint of a PSF, for provenance records."""
    from deconv3d._tensors import psf_fingerprint
    from deconv3d.pipeline.methods import psf_rms_width

    psf = np.asarray(psf, dtype=np.float32)
    return {"shape": list(psf.shape), "sum": float(psf.sum()),
            "peak_index": [int(i) for i in np.unravel_index(int(np.argmax(psf)), psf.shape)],
            "rms_width_voxels": [round(w, 4) for w in psf_rms_width(psf)], "sha256_16": psf_fingerprint(psf)}


def psf_source(options) -> dict | None:
    """Where a run's PSF came from, for its provenance, from its ``options`` (batch
    :class:`~deconv3d.pipeline.settings.Settings` or ``deconvolve``'s parsed arguments: ``psf``,
    ``psf_model``, ``na``, ``wavelength``, ``ni``, ``ns``, ``depth``): the PSF file(s), by absolute path
    and SHA-256 (the summary holds the PSF as prepared for the image: resampled, cropped), or the
    model and the microscope parameters it was generated from. None when neither is given (a
    network's own PSF)."""
    from deconv3d.omezarr.writing import unchanged_file_sha256

    files = options.psf
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files or [])
    if options.psf_model is None and files:
        return {"files": [recorded_path(f) for f in files], "sha256": [unchanged_file_sha256(f) for f in files]}
    if options.psf_model:
        return _jsonable({"model": options.psf_model, "na": options.na, "wavelength": options.wavelength,
                          "ni": options.ni, "ns": options.ns, "depth": options.depth})
    return None


def provenance(method: str, parameters: dict, *, psf=None, input_path=None, checksum: bool | str = True,
               model_hash: str | list | None = None, extra: dict | None = None, source: dict | None = None,
               device=None, fft_shapes=()) -> dict:
    """The ``deconv3d`` provenance block stored with every OME-Zarr output.

    ``checksum``: True hashes ``input_path``; a string is the input's SHA-256, already known.
    ``psf``: the PSF as used, or a list of one per channel: the summary's keys are then channel 0's
    (as a record of one PSF holds them) and ``per_channel`` lists every channel's summary.
    ``source``: where the PSF came from (:func:`psf_source`), kept in the PSF's summary.
    ``model_hash``: the SHA-256 of the network file, or a list of one per channel.
    ``device`` and ``fft_shapes`` (:func:`method_fft_shapes`): the run's, for its :func:`run_environment`
    (a chunked run records its blocks' instead: :func:`~deconv3d.pipeline.run_chunked`).
    """
    from deconv3d import __version__
    from deconv3d.omezarr import file_sha256

    record = {"software": "deconv3d", "version": __version__, "method": method,
              "parameters": _jsonable(parameters), "created": timestamp()}
    if psf is not None:
        psfs = psf if isinstance(psf, list) else [psf]
        record["psf"] = psf_summary(psfs[0])
        if len(psfs) > 1:  # (the keys above alone described channel 0's PSF as the run's)
            record["psf"]["per_channel"] = [psf_summary(p) for p in psfs]
        if source:
            record["psf"]["source"] = _jsonable(source)
    if input_path is not None:
        record["input"] = {"path": recorded_path(input_path)}
        if checksum:
            record["input"]["sha256"] = checksum if isinstance(checksum, str) else file_sha256(input_path)
    if model_hash:
        record["model_sha256"] = model_hash
    if device is not None:
        record["environment"] = run_environment(device, fft_shapes)
    if extra:
        record.update(_jsonable(extra))
    return record


def method_fft_shapes(method: str, shape, psf_shape, boundary: str = "bertero", residual: bool = False) -> list:
    """The shapes of a run's transforms that may go through FFTW, for its record
    (:func:`~deconv3d._environment.fft_record`): Richardson-Lucy's on an image (or block) of ``shape``
    for rl and rl-tv, and for ssl with a ``residual`` network its reference's
    (:func:`~deconv3d.selfsup.config.reference_fft_shape`); none for Wiener or a plain network, whose
    transforms are torch's. The PSF is cut to the image, as RL's is."""
    from deconv3d.classical._problem import rl_fft_shape

    if method in ("rl", "rl-tv"):
        return [rl_fft_shape(shape, psf_shape, boundary)]
    if method == "ssl" and residual:
        from deconv3d.selfsup.config import reference_fft_shape

        return [reference_fft_shape(shape, psf_shape)]
    return []


def run_fft_environment(environment: dict, shapes) -> dict:
    """``environment`` (:func:`run_environment`) with the FFT backend and element-wise passes of a run
    whose Richardson-Lucy transforms had ``shapes`` (a chunked run's blocks and measuring box)."""
    from deconv3d._environment import TRANSFORMS_KEYS, transforms_record

    kept = {k: v for k, v in environment.items() if k not in TRANSFORMS_KEYS}
    return {**kept, **transforms_record(environment["device"], shapes)}


def tiff_properties(record: dict, execution: dict | None = None) -> dict:
    """A :func:`provenance` record as a TIFF output's ImageJ properties: flat keys (unknown values
    None, which the writer leaves out), and the run's ``execution`` when it ran in blocks. ``psf`` is
    the PSF's whole summary, as an OME-Zarr output records it (sum, peak, RMS width, every channel's:
    a TIFF kept only its shape, fingerprint and source, which stay beside it as they were)."""
    psf, source = record.get("psf", {}), record.get("input", {})
    return {"deconv3d": record["version"], "method": record["method"], "parameters": record["parameters"],
            "input": source.get("path"), "input_sha256": source.get("sha256"), "psf": psf or None,
            "psf_shape": psf.get("shape"), "psf_sha256_16": psf.get("sha256_16"), "psf_source": psf.get("source"),
            "model_sha256": record.get("model_sha256"), "environment": record.get("environment"),
            "execution": execution, "created": record.get("created")}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, str):
        return path_text(value)  # (a model's or PSF's file name)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return path_text(value) if isinstance(value, os.PathLike) else str(value)
