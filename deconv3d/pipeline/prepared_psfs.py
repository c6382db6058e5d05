"""The PSFs a batch prepares for its files, and the cache that keeps them while it runs.

:func:`load_psfs_for` and :func:`load_psf_for` read a PSF file or generate one from a model, then
prepare it for an image's shape and voxel size; within :func:`sharing_prepared_psfs` (as
:func:`~deconv3d.pipeline.batch.run_batch` runs) the most recently prepared ones are kept, bounded
by :data:`PSF_CACHE_ENTRIES` and :data:`PSF_CACHE_BYTES`, so that a batch's files of one shape share
one. :func:`check_model_voxel` refuses a generated PSF for an image whose voxel size is not known.
"""

from __future__ import annotations

import contextlib
import threading
import warnings as _warnings

from deconv3d._lru import drop_oldest
from deconv3d._paths import file_identity
from deconv3d.errors import InputError
from deconv3d.pipeline.settings import Settings
from deconv3d.pipeline.settings_checks import _many

__all__ = ["load_psfs_for", "load_psf_for", "sharing_prepared_psfs", "check_model_voxel", "PSF_CACHE_ENTRIES",
           "PSF_CACHE_BYTES"]


def load_psfs_for(settings: Settings, spatial_shape, voxel, fit_image: bool = True, image=None,
                  warnings: list | None = None) -> list:
    """The PSFs of the settings, prepared for the image: one, or one per channel. ``image``, the image
    file's path, is named with the PSF file's where a PSF is larger than the image; ``warnings``: as
    :func:`load_psf_for`'s."""
    if settings.psf:
        return [load_psf_for(settings, spatial_shape, voxel, psf=f, fit_image=fit_image, image=image,
                             warnings=warnings) for f in _many(settings.psf)]
    return [load_psf_for(settings, spatial_shape, voxel, wavelength=w, warnings=warnings)
            for w in _many(settings.wavelength)]


#: How many prepared PSFs :func:`load_psf_for` keeps (the most recently used) while a batch runs: a
#: batch's files of one shape and voxel size share one, per channel.
PSF_CACHE_ENTRIES = 4
#: And how many bytes of them at most: the most recently used is kept whatever its size, alone where
#: larger (as :data:`deconv3d.fft.OTF_CACHE_BYTES`). Four large prepared PSFs were held until the batch ended.
PSF_CACHE_BYTES = 256 * 2**20
_PSF_CACHE: dict = {}  # key -> (prepared PSF, the warnings its preparation issued, the PSF file's lines), oldest first
_PSF_CACHE_LOCK = threading.Lock()
_PSF_CACHE_USERS = 0  # the batches running (in any thread) that keep prepared PSFs: see sharing_prepared_psfs


@contextlib.contextmanager
def sharing_prepared_psfs():
    """Keep the PSFs :func:`load_psf_for` prepares while this runs (a batch), and drop them when the
    last such block still running ends. While none runs in the process, each call prepares its PSF and keeps
    nothing; while one runs (in any thread), other callers' PSFs are kept too, and dropped with the batch's.
    Kept after the batch, a 64 x 512 x 512 PSF's four entries held 267 MB in a long-lived process
    (a notebook, a viewer), counted in its later runs' memory baseline."""
    global _PSF_CACHE_USERS
    with _PSF_CACHE_LOCK:
        _PSF_CACHE_USERS += 1
    try:
        yield
    finally:
        with _PSF_CACHE_LOCK:
            _PSF_CACHE_USERS -= 1
            if not _PSF_CACHE_USERS:
                _PSF_CACHE.clear()


def load_psf_for(settings: Settings, spatial_shape, voxel, *, psf=None, wavelength=None, fit_image: bool = True,
                 image=None, warnings: list | None = None):
    """The PSF for an image of ``spatial_shape`` and ``voxel`` size (file or generated), prepared.

    ``psf`` (a file) or ``wavelength`` pick one channel's entry of a per-channel setting.
    ``fit_image=False`` accepts a PSF file larger than the image (an ssl model checks it against its own);
    a larger one is otherwise refused naming the PSF file and ``image``, the image file's path
    (:func:`deconv3d.io.psf_size_problem`).

    Within :func:`sharing_prepared_psfs` (as a batch runs), the last :data:`PSF_CACHE_ENTRIES` prepared
    PSFs, at most :data:`PSF_CACHE_BYTES` of them (the last whatever its size), are kept, each under
    what it depends on: the model's parameters, or the file's identity
    (:func:`deconv3d._paths.file_identity`: its path, inode, size, and modification and change times;
    a file changed since is read again), and the image's spatial shape and voxel size. A batch prepared
    the same PSF again for every file (a generated vectorial one for 64 x 512 x 512 took 0.13 s to
    generate and 0.41 s to prepare; a PSF file was read again). The warnings its preparation issued
    are issued again each time it is handed out, as preparing it anew would (one per file's row).
    The PSF file's own warning (its z step assumed: :func:`deconv3d.io.psf_voxel_size`) is appended to
    ``warnings`` where given, with the run's other warnings, as an in-memory run collects it; else
    issued.
    """
    psf = psf if psf is not None else (_many(settings.psf) or (None,))[0]
    wavelength = wavelength if wavelength is not None else (_many(settings.wavelength) or (None,))[0]
    if psf:
        source = ("file", *file_identity(psf), fit_image)
    else:
        source = ("model", settings.psf_model, settings.na, wavelength, settings.ni, settings.ns, settings.depth)
    key = (source, tuple(int(n) for n in spatial_shape), None if voxel is None else tuple(float(v) for v in voxel))
    with _PSF_CACHE_LOCK:
        kept = _PSF_CACHE.pop(key, None)
        if kept is not None:
            _PSF_CACHE[key] = kept  # (the most recently used last)
    if kept is None:
        from deconv3d.errors import recorded_warnings

        notes: list[str] = []
        with recorded_warnings() as issued:
            prepared = _prepared_psf(settings, spatial_shape, voxel, psf, wavelength, fit_image, notes, image)
        kept = (prepared, tuple(issued), tuple(notes))
        _note(notes, warnings)
        with _PSF_CACHE_LOCK:
            if not _PSF_CACHE_USERS:  # (no batch running: nothing is kept)
                return prepared
            _PSF_CACHE.pop(key, None)  # (kept meanwhile by another thread: this one is the newest)
            _PSF_CACHE[key] = kept
            drop_oldest(_PSF_CACHE, _kept_bytes, PSF_CACHE_BYTES, count=PSF_CACHE_ENTRIES)
        return prepared.copy()
    for message in kept[1]:  # each as it was (its category: a filter or the report treats it alike)
        _warnings.warn(message)  # (from here, where preparing it warned too)
    _note(kept[2], warnings)
    return kept[0].copy()


def _note(lines, warnings: list | None) -> None:
    """The PSF file's warnings, into ``warnings`` where given, else issued (:func:`deconv3d.errors.warn`)."""
    from deconv3d.errors import warn

    for line in lines:
        warn(line, warnings)


def _kept_bytes(kept: tuple) -> int:
    return kept[0].nbytes


def _prepared_psf(settings: Settings, spatial_shape, voxel, psf, wavelength, fit_image: bool, notes: list,
                  image=None):
    """:func:`load_psf_for`'s PSF, read or generated, then prepared; the PSF file's warning into ``notes``."""
    from deconv3d.io import naming_psf_and_image, psf_voxel_size, read_psf
    from deconv3d.psf import generate_psf, prepare_psf
    from deconv3d.psf.generate import generated_psf_shape

    if psf:
        read = read_psf(psf)
        with naming_psf_and_image(psf, image if image is not None else "being deconvolved"):
            return prepare_psf(read.data, tuple(spatial_shape), psf_voxel=psf_voxel_size(read, voxel, psf, notes),
                               image_voxel=voxel, fit_image=fit_image)
    check_model_voxel(voxel)  # (a 2D image is refused before: files._check_psf_dimensions)
    shape = generated_psf_shape(tuple(spatial_shape), voxel, settings.na, wavelength)
    psf = generate_psf(settings.psf_model, shape, voxel, settings.na, wavelength, ni=settings.ni,
                       ns=settings.ns, depth=settings.depth)
    return prepare_psf(psf, tuple(spatial_shape), psf_voxel=voxel, image_voxel=voxel)


def check_model_voxel(voxel) -> None:
    """Refuse to generate a PSF (``psf_model``) for an image whose voxel size is not known: the
    model is sampled at it. Checked before any work too, ahead of the checks that assume it."""
    if voxel is None or len(voxel) != 3:
        raise InputError("--psf-model needs the image's voxel size, which it does not record: pass --voxel-size "
                         "DZ DY DX (in µm), or give a --psf file")
