"""Deconvolve every image of a folder with one validated configuration: resumable and crash-safe.

Each output is written under a temporary name and renamed when complete; then a completion
record (``OUTPUT_DIR/.deconv3d-batch/NAME.json``) notes the input's size, modification time and
SHA-256 and a hash of the settings (with the PSF and model files as that file's run read them). A
rerun skips an input whose record, output and settings still match (see :func:`is_finished`), and
redoes everything else (stale temporaries are removed first). Inputs are only read.
A failing file is recorded with its reason and the batch goes on; a JSON and a CSV report list
every file's status, time, output and warnings.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import errno
import json
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

from deconv3d._paths import (_same_file, check_name_length, create_temporary, file_identity, glob_shown, image_stem,
                             recorded_path, remove_stale_temporaries_in, special_file_problem)
from deconv3d._lru import drop_oldest
from deconv3d._voxel import recorded_voxel
from deconv3d.errors import InputError
from deconv3d.pipeline.locks import (BUSY, DEFERRING, DONE_ELSEWHERE, claim, note_writer, noted_writers, report_lock,
                                     settings_guard)
from deconv3d.pipeline.records import path_text
from deconv3d.pipeline.row_warnings import warnings_into
from deconv3d.pipeline.settings import (OUTPUT_FORMATS, RUN_KEYS, Settings, _many, channel_count, load_config,
                                       make_settings, tv_term_rule)

__all__ = ["Settings", "load_config", "make_settings", "channel_count", "RUN_KEYS", "find_inputs", "run_batch",
           "build_block_fn", "load_psf_for", "write_reports", "report_as_files_finish", "status_counts", "RECORD_DIR"]

RECORD_DIR = ".deconv3d-batch"
ALWAYS_HASH_BYTES = 256 * 2**20  # inputs up to this size are re-hashed on every skip check


def find_inputs(input_dir, patterns) -> list[Path]:
    """Files (and .zarr folders) in ``input_dir`` matching any glob pattern, sorted; hidden ones excluded,
    and everything in a hidden folder below ``input_dir`` (an output folder ``.out`` kept inside it, a
    file server's ``.snapshot``, a ``.Trash-1000``), which a ``**`` pattern reaches too, except where the
    pattern names the hidden part (``.raw/*.tif``; see :func:`~deconv3d._paths.glob_hides`); such folders
    are not entered (:func:`~deconv3d._paths.glob_shown`)."""
    input_dir = Path(input_dir)
    if input_dir.is_file():
        raise InputError(f"input {input_dir} is a file: batch takes a folder (every image in it that matches the "
                         "pattern); use 'deconv3d deconvolve' for one file")
    if not input_dir.is_dir():
        raise InputError(f"input folder not found: {input_dir}: check the path")
    found = {p for pattern in patterns for p in glob_shown(input_dir, _any_case(pattern))}
    return sorted(found)


def _any_case(pattern: str) -> str:
    """``pattern`` matching letters in either case (``*.tif`` -> ``*.[tT][iI][fF]``): microscope
    software and Windows tools write ``.TIF``, which a batch skipped without a word, exit 0.
    Letters inside a ``[...]`` set are left as given."""
    out, inside = [], False
    for ch in pattern:
        if ch == "[" and not inside:
            inside = True
        elif ch == "]" and inside:
            inside = False
        elif ch.isalpha() and not inside and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
            continue
        out.append(ch)
    return "".join(out)


def output_for(input_path: Path, output_dir: Path, settings: Settings) -> Path:
    """``output_dir/NAME.FORMAT``, NAME the input's name less its image suffix only.

    ``cell.t001.tif`` gives ``cell.t001.zarr``: dots inside a name are kept, so that a time
    series of files does not collapse onto one output.
    """
    return output_dir / f"{image_stem(input_path)}.{settings.output_format}"


def _outputs_for(inputs, input_dir: Path, output_dir: Path, settings: Settings) -> list[Path]:
    """Each input's output; inputs that would write the same output are refused up front, in one
    line that names them by their path in ``input_dir`` (day1/a.tif and day2/a.tif) and lists every
    such clash, or the first :data:`CLASHES_SHOWN` and how many more."""
    outputs, owners = [], {}
    for path in inputs:
        output = output_for(path, output_dir, settings)
        # Cell.tif and cell.tiff: one folder on macOS's and Windows' disks
        owners.setdefault(str(output).casefold(), []).append((path, output))
        outputs.append(output)
    clashes = [_clash(group, Path(input_dir)) for group in owners.values() if len(group) > 1]
    if clashes:
        more = len(clashes) - CLASHES_SHOWN
        raise InputError("; ".join(clashes[:CLASHES_SHOWN]) + (f"; and {more} more such clash(es)" if more > 0 else "")
                         + ": rename one or narrow --pattern")
    return outputs


#: How many clashing output names the error of :func:`_outputs_for` spells out.
CLASHES_SHOWN = 3


def _clash(group: list, input_dir: Path) -> str:
    """"a/x.tif and b/x.tif would both write x.zarr" for the (input, output) pairs of one output."""
    names = [str(path.relative_to(input_dir)) for path, _ in group]
    output = group[-1][1]
    others = [o.name for o in dict.fromkeys(o for _, o in group) if o != output]
    case = f" (as {', '.join(others)}: one name on macOS and Windows disks)" if others else ""
    who = f"{names[0]} and {names[1]} would both" if len(names) == 2 else \
        f"{', '.join(names[:-1])} and {names[-1]} would all"
    return f"{who} write {output.name}{case}"


def load_psfs_for(settings: Settings, spatial_shape, voxel, fit_image: bool = True) -> list:
    """The PSFs of the settings, prepared for the image: one, or one per channel."""
    if settings.psf:
        return [load_psf_for(settings, spatial_shape, voxel, psf=f, fit_image=fit_image) for f in _many(settings.psf)]
    return [load_psf_for(settings, spatial_shape, voxel, wavelength=w) for w in _many(settings.wavelength)]


#: How many prepared PSFs :func:`load_psf_for` keeps (the most recently used) while a batch runs: a
#: batch's files of one shape and voxel size share one, per channel.
PSF_CACHE_ENTRIES = 4
#: And how many bytes of them at most: the most recently used is kept whatever its size, alone where
#: larger (as :data:`deconv3d.fft.OTF_CACHE_BYTES`). Four large prepared PSFs were held until the batch ended.
PSF_CACHE_BYTES = 256 * 2**20
_PSF_CACHE: dict = {}  # key -> (prepared PSF, the warnings its preparation issued), oldest first
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


def load_psf_for(settings: Settings, spatial_shape, voxel, *, psf=None, wavelength=None, fit_image: bool = True):
    """The PSF for an image of ``spatial_shape`` and ``voxel`` size (file or generated), prepared.

    ``psf`` (a file) or ``wavelength`` pick one channel's entry of a per-channel setting.
    ``fit_image=False`` accepts a PSF file larger than the image (an ssl model checks it against its own).

    Within :func:`sharing_prepared_psfs` (as a batch runs), the last :data:`PSF_CACHE_ENTRIES` prepared
    PSFs, at most :data:`PSF_CACHE_BYTES` of them (the last whatever its size), are kept, each under what it depends on: the
    model's parameters, or the file's identity (:func:`deconv3d._paths.file_identity`: its path, inode,
    size, and modification and change times; a file changed since is read again), and the image's spatial shape and voxel size. A batch prepared
    the same PSF again for every file (a generated vectorial one for 64 x 512 x 512 took 0.13 s to
    generate and 0.41 s to prepare; a PSF file was read again). The warnings its preparation issued
    are issued again each time it is handed out, as preparing it anew would (one per file's row).
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

        with recorded_warnings() as issued:
            prepared = _prepared_psf(settings, spatial_shape, voxel, psf, wavelength, fit_image)
        kept = (prepared, tuple(issued))
        with _PSF_CACHE_LOCK:
            if not _PSF_CACHE_USERS:  # (no batch running: nothing is kept)
                return prepared
            _PSF_CACHE.pop(key, None)  # (kept meanwhile by another thread: this one is the newest)
            _PSF_CACHE[key] = kept
            drop_oldest(_PSF_CACHE, _kept_bytes, PSF_CACHE_BYTES, count=PSF_CACHE_ENTRIES)
        return prepared.copy()
    for message in kept[1]:  # each as it was (its category: a filter or the report treats it alike)
        warnings.warn(message)  # (from here, where preparing it warned too)
    return kept[0].copy()


def _kept_bytes(kept: tuple) -> int:
    return kept[0].nbytes


def _prepared_psf(settings: Settings, spatial_shape, voxel, psf, wavelength, fit_image: bool):
    """:func:`load_psf_for`'s PSF, read or generated, then prepared."""
    from deconv3d.io import psf_voxel_size, read_psf
    from deconv3d.psf import generate_psf, prepare_psf
    from deconv3d.psf.generate import generated_psf_shape

    if psf:
        image = read_psf(psf)
        return prepare_psf(image.data, tuple(spatial_shape), psf_voxel=psf_voxel_size(image, voxel), image_voxel=voxel,
                           fit_image=fit_image)
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


def build_block_fn(settings: Settings, psf, voxel, ndim: Optional[int] = None, trained=None, model_file=None):
    """(block callable, memory model, parameters) for ``settings`` and a prepared PSF.

    For ``ssl`` the PSF is optional; the model (``trained``, else loaded from ``model_file`` or
    ``settings.model``; ``model_file`` is the file recorded, one channel's of several) is checked
    against it, ``voxel`` and the image's dimensionality ``ndim`` (when given) before the block is built.
    """
    from deconv3d.pipeline.memory import MemoryModel
    from deconv3d.pipeline.methods import NetworkBlock, RichardsonLucyBlock, WienerBlock

    if settings.method == "ssl":
        from deconv3d.selfsup import load_checkpoint

        model_file = model_file or settings.model
        trained = load_checkpoint(model_file, device="cpu") if trained is None else trained
        trained.check_compatible(trained.unet.ndim if ndim is None else ndim, psf, voxel)
        block = NetworkBlock(trained, device=settings.run_device, tta=settings.tta, amp=settings.amp,
                             band_limit=settings.band_limit or None)
        model = network_memory_model(block)
        # a model file's recipe as the checkpoint holds it; else the network was trained in the run (its record)
        source = {**trained.record(), "model": recorded_path(model_file)} if model_file else {}
        # (the inference precision on this machine, as fingerprinted: a cluster's workers on other CPUs may differ)
        return block, model, {**source, "tta": settings.tta, "band_limit": settings.band_limit, "amp": settings.amp,
                              "inference_precision": settings.precision()}
    if settings.method == "wiener":
        return (WienerBlock(psf, settings.balance, settings.run_device), MemoryModel("wiener", psf.shape),
                {"balance": settings.balance})
    tv = settings.tv_weight if settings.method == "rl-tv" else 0.0
    params = {"iterations": settings.iterations, "boundary": settings.boundary, "accelerate": settings.accelerate,
              "tv_weight": tv}
    block = RichardsonLucyBlock(psf, settings.iterations, settings.boundary, tv, settings.accelerate, voxel,
                                settings.run_device)
    return block, MemoryModel(settings.method, psf.shape, accelerate=settings.accelerate,
                              boundary=settings.boundary), params


def network_memory_model(block):
    """The memory model of a :class:`~deconv3d.pipeline.methods.NetworkBlock` (its network's width,
    weights and the context its windows reach)."""
    from deconv3d.pipeline.memory import MemoryModel

    trained = block.trained
    weights = sum(p.numel() * 4 for p in trained.model.parameters())
    return MemoryModel("ssl", tuple(trained.psf.shape), base_channels=trained.unet.base_channels,
                       weights_bytes=weights, context=block.reach())


def _record_path(output_dir: Path, input_path: Path) -> Path:
    return output_dir / RECORD_DIR / f"{input_path.name}.json"


def input_state(path: Path) -> dict:
    """Size and latest modification time of a file, or of all files under a folder (an OME-Zarr)."""
    path = Path(path)
    if not path.is_dir():
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return {"size": sum(st.st_size for st in stats),
            "mtime_ns": max([st.st_mtime_ns for st in stats] + [path.stat().st_mtime_ns])}


def _read_record(record_path: Path) -> dict:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_finished(input_path: Path, output: Path, record_path: Path, settings_hash, block_steps: bool = False,
                symmetric_as: tuple = ()) -> bool:
    """True when a completion record matches this input, these settings (``settings_hash``: one
    fingerprint, or several that all mean them) and an existing output.

    ``block_steps``: the settings run accelerated Richardson-Lucy, whose blocks are written from its
    measuring run since the versions that list ``outputs`` in their records (:func:`_older_blocks`): an
    earlier version's output run in blocks is not finished (it is redone once).
    ``symmetric_as``: fingerprints that also match where the output's provenance records the symmetric
    TV rule (:meth:`~deconv3d.pipeline.settings.Settings.fingerprints_without_tv_rule`).

    The input must still have the recorded size and SHA-256. The hash is recomputed when the
    modification time differs from the record's (a touched or copied file that is unchanged is
    still finished; the record is then refreshed, where it can be written) and always for inputs up to
    :data:`ALWAYS_HASH_BYTES`; a large input with the recorded size and time is trusted unread.
    """
    from deconv3d.omezarr import file_sha256

    record = _read_record(record_path)
    hashes = (settings_hash,) if isinstance(settings_hash, str) else tuple(settings_hash)
    if record.get("settings") in symmetric_as and _recorded(output, "parameters", "reference", "tv_differences") \
            == tv_term_rule():
        hashes += (record["settings"],)
    if not (record.get("settings") in hashes and record.get("output") == output.name and output.exists()):
        return False
    if block_steps and _older_blocks(record, output):
        return False
    recorded, state = record.get("input_state") or {}, input_state(input_path)
    if recorded.get("size") != state["size"] or not record.get("input_sha256"):
        return False
    if recorded.get("mtime_ns") == state["mtime_ns"] and state["size"] > ALWAYS_HASH_BYTES:
        return True
    if file_sha256(input_path) != record["input_sha256"]:
        return False
    if recorded.get("mtime_ns") != state["mtime_ns"]:
        try:
            _write_json_atomic(record_path, {**record, "input_state": state})
        except OSError:  # (a full disk, say) the output is still complete: the next run hashes the input again
            pass
    return True


def _recorded(output: Path, *keys):
    """The value at ``keys`` in an OME-Zarr ``output``'s provenance (its ``deconv3d`` attributes), or
    None where it does not say: a TIFF output, one not read, or a key missing."""
    try:
        value = json.loads((output / "zarr.json").read_text())["attributes"]["deconv3d"]
        for key in keys:
            value = value[key]
        return value
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _older_blocks(record: dict, output: Path) -> bool:
    """Whether ``output`` may hold accelerated Richardson-Lucy run in blocks by a version before its
    blocks were written from the measuring run (their results differ by up to 3.4e-2 of the peak). The
    records of the versions after that change list their ``outputs``, those of the versions before do
    not (the 26 versions between, whose records do not list them, count as before). An output whose
    provenance says it ran as one block is the same in both (only an OME-Zarr output's says so)."""
    if isinstance(record.get("outputs"), list):
        return False
    # (a TIFF output, or provenance not read: redone, as a wrong skip mixes outputs silently)
    return _recorded(output, "execution", "blocks") != 1


def _write_json_atomic(path: Path, payload) -> None:
    from deconv3d.pipeline.output import atomic_output

    # (made with its mode, before the text: a private report was readable by all while rewritten)
    with atomic_output(path) as tmp, open(create_temporary(path, tmp), "w") as fh:
        fh.write(json.dumps(payload, indent=2))


STATUSES = ("done", "skipped", "failed")  # of a file in the batch report
REPORT_FIELDS = ("file", "status", "seconds", "output", "reason", "warnings")  # (warnings: added last, a list)


def run_batch(input_dir, output_dir, settings: Settings, process_one, *, progress=None,
              rows: list | None = None, also_finished_as: tuple = (), report=None) -> list[dict]:
    """Run ``process_one(input_path, output_path, input_sha256)`` for every unfinished input.

    ``process_one`` writes the output (atomically) or raises; an InputError or any other
    exception marks the file failed with its one-line reason, and the batch continues.
    ``input_sha256`` is the input's hash, taken before the work starts (for provenance records).
    Returns one row per file, appended to ``rows`` when given (so that a caller interrupted
    midway still has the rows of the files finished); a row's ``warnings`` lists the text of each
    warning shown while its file's ``process_one`` ran, in its thread or in worker threads
    (:func:`~deconv3d.pipeline.row_warnings.warnings_into`: batches may run in several threads at
    once); the command line puts its own wording of them, naming its options, in their place. A
    completion record counts as finished when it holds one of :meth:`Settings.finished_fingerprints`
    or of ``also_finished_as`` (the hashes of these settings as earlier versions read the command
    that gave them).
    Each output is written under a lock that runs into the folder share: a file whose output another
    live run is writing is skipped (:data:`~deconv3d.pipeline.locks.BUSY`) and tried again after the
    last file, when it is processed if that run has ended (killed), or failed if another input now owns
    its output; ``progress`` is then called for it again.
    ``report(rows)``, when given, is called with the rows settled so far each time a file is settled,
    after ``progress``: pass :func:`report_as_files_finish` so that a run killed outright leaves a
    report of the files it finished.
    """
    output_dir = Path(output_dir)
    # the PSF (or model) kept among the images it applies to is not one of them (it was deconvolved too)
    shared = [Path(f) for f in (*_many(settings.psf), *_many(settings.model)) if f]
    inputs = [p for p in find_inputs(input_dir, settings.pattern) if not any(_same_file(p, f) for f in shared)]
    if not inputs:
        raise InputError(f"no input files in {input_dir} match {', '.join(settings.pattern)}: check --pattern")
    outputs = _outputs_for(inputs, input_dir, output_dir, settings)
    _refuse_report_folders(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RECORD_DIR).mkdir(exist_ok=True)
    settings_hash, started = settings.fingerprint(), time.time()
    finished_as = tuple(dict.fromkeys((*settings.finished_fingerprints(), *also_finished_as)))  # (earlier versions')
    symmetric_as = settings.fingerprints_without_tv_rule()  # (hashed once, as finished_as: see is_finished)
    rows = [] if rows is None else rows
    # Runs of one folder share it when they would keep each other's outputs: the same fingerprint.
    with settings_guard(output_dir / RECORD_DIR, settings_hash), sharing_prepared_psfs():
        # killed runs' (live runs' are kept), in either output format: a run of the other one left them too
        remove_stale_temporaries_in(output_dir, [o.with_suffix(f".{f}").name for o in outputs for f in OUTPUT_FORMATS])
        listed = _record_names(output_dir / RECORD_DIR)  # (once: what runs write meanwhile, their claims note)
        busy = []
        for number, (path, output) in enumerate(zip(inputs, outputs), 1):
            # (names as text a report can hold: a name that is not UTF-8 failed the CSV report's writing)
            row = {"file": recorded_path(path), "output": recorded_path(output), "status": "", "seconds": 0.0,
                   "reason": "", "warnings": [], "settings": settings_hash, EQUIVALENT: finished_as}
            rows.append(row)  # before the work: an interrupted file shows as the row left without a status
            if _settle(path, output, output_dir, started, (finished_as, symmetric_as), settings, process_one, row,
                       listed) is False:
                busy.append((number, path, output, row))  # (who owns its output is asked once, below)
            _progress_then_report(progress, report, number, len(inputs), row, rows)
        # The files another run held: it may have been killed (its lock is then free), or its input may
        # own their output now. A file still held by a live run stays skipped.
        for number, path, output, row in busy:
            if _settle(path, output, output_dir, started, (finished_as, symmetric_as), settings, process_one, row,
                       listed, again=True) is not False:
                _progress_then_report(progress, report, number, len(inputs), row, rows)
    return rows


def _refuse_report_folders(output_dir: Path) -> None:
    """Refuse, before the first file, a folder where the batch writes its report (``batch_report.json``
    or ``.csv`` in ``output_dir``): it was refused only when the report was written, after every file
    had run, as "a directory that is not a zarr image deconv3d wrote"."""
    for name in ("batch_report.json", "batch_report.csv"):
        if (output_dir / name).is_dir() and not (output_dir / name).is_symlink():
            raise InputError(f"{output_dir / name} is a folder, where the batch writes its report: move it away or "
                             "write to another output folder")


def _progress_then_report(progress, report, number, total, row, rows) -> None:
    """A settled file's progress line, then the report (which never raises): the line first (a report
    that could not be written had stopped the batch before it), the report also where the line fails
    (stdout a closed pipe: the finished file was missing from the report)."""
    try:
        if progress is not None:
            progress(number, total, row)
    finally:
        if report is not None:
            report(rows)


def _settle(path, output, output_dir, started, finished, settings, process_one, row, listed, again=False):
    """Skip, fail or process one input under the lock of its output (:func:`~deconv3d.pipeline.locks.claim`),
    updating its ``row``. Returns False where another run holds the lock and the row says so (skipped),
    else None. ``finished``: the ``settings_hash`` and ``symmetric_as`` of :func:`is_finished`.
    ``listed``: the record folder's :func:`_record_names` at the start. ``again``: a file held
    at the first try, now failed where another existing input owns its output (the holder's record
    names it) and, where the lock is free, settled as any file (a killed run's temporary removed first)."""
    record_dir = output_dir / RECORD_DIR
    record = _record_path(output_dir, path)
    with claim(record_dir, output, path) as mine:
        by_another = _written_since(record, started)  # (before is_finished refreshes a touched file's)
        if mine is False:  # another run of this folder is writing this output
            owners = _output_owners(record_dir, output, listed, record.name) if again else {}
            other = _owned_by_another(owners, output, path) if again else None
            if other is None:
                row.update(status="skipped", reason=BUSY)
                return False
            row.update(status="failed", reason=path_text(_owned_reason(output, other)))
            return None
        if again:
            row.update(status="", reason="")  # (interrupted now, it shows as the file in progress)
            remove_stale_temporaries_in(output_dir, [output.with_suffix(f".{f}").name for f in OUTPUT_FORMATS])
        finished_as, symmetric_as = finished
        if is_finished(path, output, record, finished_as, block_steps=settings.accelerated_rl(),
                       symmetric_as=symmetric_as):
            row.update(status="skipped", reason=DONE_ELSEWHERE if by_another else "")
        else:
            # read with the lock held: another run's input may have taken this output since this run began
            owners = _output_owners(record_dir, output, listed, record.name)
            if (other := _owned_by_another(owners, output, path)) is not None:
                row.update(status="failed", reason=_owned_reason(output, other))
            elif _in_the_way(output) and output.name.casefold() not in owners:
                row.update(status="failed", reason=f"{output.name} is already in {output_dir} and no batch into "
                           "this folder wrote it: move it away, or write to another output folder")
            else:
                _process(path, output, record, settings, process_one, row)
        row["reason"] = path_text(row["reason"])
    return None


def _owned_reason(output: Path, other: Path) -> str:
    return (f"{output.name} holds the result of {other}, another file of this name: write the results of this "
            "folder to another output folder")


def _record_names(record_dir: Path) -> list[tuple[str, str]]:
    """The completion records in ``record_dir``, (case-folded name, name) in order: listed once a batch."""
    try:
        with os.scandir(record_dir) as entries:
            return sorted((e.name.casefold(), e.name) for e in entries if e.name.endswith(".json"))
    except OSError:
        return []


def _output_owners(record_dir: Path, output: Path, listed: list, own: str) -> dict[str, Optional[str]]:
    """The outputs named by the completion records of a folder that may name ``output`` (case-folded),
    each with the input recorded for it (None where a record of an earlier version names none). An
    output in the folder that no record names is not the batch's to replace: a user's own file of that
    name was overwritten without a word. Read for each file not finished, under its output's lock (a
    table read at the start missed another run's input taking the output meanwhile). Opened are the
    records ``listed`` at the start (:func:`_record_names`) of inputs whose name begins with the
    output's (every input that can write it), those noted in the output's lock since
    (:func:`~deconv3d.pipeline.locks.note_writer`) and the input's ``own`` (another input of its name
    writes that one): each file listing the whole folder made a batch's bookkeeping grow with the
    square of its files (3000 files: 6.3 s, then 17-22 s)."""
    owners, prefix = {}, output.stem.casefold()
    names = {own, *noted_writers(record_dir, output)}
    for folded, name in listed[bisect.bisect_left(listed, (prefix,)):]:
        if not folded.startswith(prefix):
            break
        names.add(name)
    for name in sorted(names):
        record = _read_record(record_dir / name)
        given = record.get("input")
        given = given if isinstance(given, str) and os.path.isabs(given) else None
        for written in _outputs_written(record):
            owners[written.casefold()] = given
    return owners


def _outputs_written(record: dict) -> list[str]:
    """Every output name a record's input has been written to (``outputs``: one per output format a
    run used; a run in the other format and back had left the first output no record named, and
    every file failed), with the current ``output``."""
    listed = record.get("outputs")
    names = [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
    current = record.get("output")
    return names + [current] if isinstance(current, str) and current not in names else names


def _in_the_way(output: Path) -> bool:
    """Whether something is at ``output`` that its replacement would lose (an empty folder is not).
    Nothing is at a name past the file system's limit (an input of 252 to 255 bytes named an output
    longer than 255): :func:`_process` fails that file as its input's name too long, where looking
    at it raised "File name too long" and ended the batch in an internal error."""
    try:
        if output.is_dir() and not output.is_symlink():
            return next(output.iterdir(), None) is not None
        return output.exists() or output.is_symlink()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def _owned_by_another(owners: dict, output: Path, path: Path) -> Optional[Path]:
    """The input whose result ``output`` holds, by the folder's records, when that is another file
    that still exists: one of the same output name in another folder (day1/a.tif, then day2/a.tif
    or day2/a.tiff), whose result this input's would replace. A recorded input that is gone (moved,
    renamed) is not in the way, nor an unknown one (an earlier version's relative path)."""
    given = owners.get(output.name.casefold())
    other = Path(given) if given is not None else None
    return other if other is not None and other.exists() and not _same_file(other, path) else None


def _process(path, output, record, settings, process_one, row) -> None:
    from deconv3d.omezarr import file_sha256

    start, finishing = time.perf_counter(), False
    try:
        # (named by the input: a name too long is the input's to shorten, to what both names allow)
        check_name_length(output, record, renamed=path, scratch=True)  # (a TIFF: built by deconvolve_file's scratch)
        if (problem := special_file_problem(path)) is not None:  # (hashing a named pipe waited forever)
            raise InputError(problem)
        # Not finished, but the output stays this input's (an interrupted run's next one may replace it).
        names = sorted(set(_outputs_written(_read_record(record))) | {output.name})
        note_writer(record.parent, output, record.name)  # (where runs into this folder find it: _output_owners)
        _write_json_atomic(record, {"input": str(path.absolute()), "output": output.name, "outputs": names,
                                    "settings": None})
        state, digest = input_state(path), file_sha256(path)  # before reading: a change meanwhile shows
        # The PSF and model files as this file's run reads them (each file's run loads them again, and one
        # replaced during the batch had its outputs recorded under the first one's hash), then the
        # fingerprint that holds them: a file replaced before the fingerprint or during the run fails it.
        shared = _shared_hashes(settings)
        settings_hash = settings.fingerprint()

        def finish():
            nonlocal finishing
            _check_unchanged(shared, settings, path)
            row["settings"] = settings_hash
            finishing = True
            # In the try: a record that cannot be written (a full disk) fails this file, not the batch; the
            # unfinished record above stays, so that a rerun redoes the output.
            _write_json_atomic(record, {"input": str(path.absolute()), "input_state": state,
                                        "input_sha256": digest, "settings": settings_hash, "output": output.name,
                                        "outputs": names, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

        with warnings_into(row):
            try:
                process_one(path, output, digest)
            except KeyboardInterrupt as exc:
                # The signal came as the output was put in place (deconv3d._paths.publishing): it is complete, and
                # recorded as finished before the batch stops (a rerun redid it, the row said failed).
                if not _published(exc, output):
                    raise
                with contextlib.suppress(Exception):  # (not recorded: failed, as any interrupted file)
                    finish()
                    row["status"] = "done"
                row["seconds"] = round(time.perf_counter() - start, 3)
                raise
        finish()
    except KeyboardInterrupt as exc:
        if finishing and _published(exc, record):  # the finished record is in place: the row says so
            row.update(status="done", seconds=round(time.perf_counter() - start, 3))
        raise
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - one failing file must not stop the batch
        row.update(status="failed", reason=_reason(exc))
    else:
        row["status"] = "done"
    row["seconds"] = round(time.perf_counter() - start, 3)


def _published(exc: BaseException, path: Path) -> bool:
    """Whether the signal ``exc`` was raised once ``path`` was put in place (its ``published``)."""
    published = getattr(exc, "published", None)
    return published is not None and Path(published).absolute() == Path(path).absolute()


def _shared_hashes(settings: Settings) -> dict[str, str]:
    """The SHA-256 of each PSF and model file of the settings."""
    from deconv3d.omezarr.writing import unchanged_file_sha256

    return {f: unchanged_file_sha256(f) for f in (*_many(settings.psf), *_many(settings.model)) if f}


def _check_unchanged(shared: dict, settings: Settings, path: Path) -> None:
    """Refuse to record ``path`` finished when a PSF or model file of the settings is no longer as
    ``shared`` (:func:`_shared_hashes`) held it before its run: which one the run read is not known."""
    changed = [f for f, digest in _shared_hashes(settings).items() if shared.get(f) != digest]
    if changed:
        raise InputError(f"{', '.join(map(str, changed))} changed while {path.name} was processed (which version the "
                         "run read is not known): rerun the batch to redo it with the file as it is now")


def _reason(exc: Exception) -> str:
    """A failed file's reason in one line: an OS error as "FILE: what happened" (not "[Errno 28] ...")."""
    from deconv3d._paths import out_of_space

    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}" + (": free disk space, then rerun the batch" if out_of_space(exc) else "")
    return " ".join(str(exc).split()) or type(exc).__name__


def status_counts(rows) -> dict[str, int]:
    """How many rows of a batch report are done, skipped and failed."""
    return {status: sum(r["status"] == status for r in rows) for status in STATUSES}


def write_reports(output_dir, rows) -> tuple[Path, Path]:
    """Write ``batch_report.json`` and ``batch_report.csv`` into ``output_dir``: ``rows`` in place
    of the same files' rows of the report already there (other runs' and earlier runs' files keep
    theirs; a file this run left to another live run keeps that run's row), one run at a time."""
    output_dir = Path(output_dir)
    with report_lock(output_dir / RECORD_DIR):
        return _write_reports(output_dir, _merged_rows(output_dir, rows))


#: The share of a batch's time that :func:`report_as_files_finish` may spend writing its report at most.
REPORT_SHARE = 0.05


def report_as_files_finish(output_dir, fill=None):
    """A ``report`` for :func:`run_batch` that writes the batch report (:func:`write_reports`, merged
    with the report there) with the rows settled so far: the report was written only when the batch
    ended, and a run killed outright (SIGKILL at a time limit, out of memory, a node lost) left none, so
    that its rerun listed the files it had finished as skipped in 0.0 s, their warnings lost.
    ``fill(rows)`` gives the rows as written (the command line puts its wording of the warnings in).
    One thread writes at a time (other runs wait for the report's lock), and the writes are spaced to
    take at most :data:`REPORT_SHARE` of the batch's time (3000 rows take about 0.2 s to merge and
    write): a file settled just before a kill may be missing from the report (its output and
    completion record are not). These writes do not replace the report at the batch's end, which the
    caller must still write (``write_reports(output_dir, rows)``, as the command line and
    examples/slurm_jobqueue.py do): one of them that fails (a full disk) is silent and the batch goes
    on, and it is the write at the end that reports the problem."""
    import threading

    lock, due = threading.Lock(), [0.0]

    def report(rows) -> None:
        with lock:
            start = time.monotonic()
            if start < due[0]:
                return
            settled = [r for r in rows if r["status"]]  # (not the file in progress)
            # Any error (a full disk; a folder named batch_report.json: an InputError) must not stop the batch,
            # which stopped after its first file: the caller's write at the batch's end reports it.
            with contextlib.suppress(Exception):
                write_reports(output_dir, fill(settled) if fill is not None else settled)
            due[0] = start + (time.monotonic() - start) / REPORT_SHARE

    return report


def _written_since(record: Path, moment: float) -> bool:
    """Whether the completion record was written after ``moment`` (by another run, during this one)."""
    try:
        return record.stat().st_mtime > moment
    except OSError:
        return False


#: A row's fingerprints that mean its settings (this version's and earlier ones'): not written.
EQUIVALENT = "equivalent_settings"


def _merged_rows(output_dir: Path, rows: list[dict]) -> list[dict]:
    """``rows`` over the folder's report: a row replaces the earlier row of the same input (by its
    absolute path), except one deferring to another run's row; earlier rows whose input, named by
    an absolute path, no longer exists are dropped (a deleted file's failure no longer counts; a
    relative path, from a report of an older version, cannot be checked and is kept). An earlier
    row of a file done with other settings than this run's is marked skipped, its output not
    this run's result (a run with new settings, interrupted, had reported the old outputs done). A file
    this run skipped as finished keeps the warnings of its earlier row where that row's settings are
    this run's (its output is the one they were drawn for; a rerun had emptied every finished file's)."""
    try:
        earlier = json.loads((output_dir / "batch_report.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return rows
    if not isinstance(earlier, list):
        return rows

    def key(row):  # (as text: a name that is not UTF-8 is in the report with its bytes as \xNN)
        return path_text(os.path.abspath(row["file"]))

    earlier = [{k: r.get(k, "") for k in (*REPORT_FIELDS, "settings")} for r in earlier
               if isinstance(r, dict) and isinstance(r.get("file"), str) and r.get("status") in STATUSES]
    for row in earlier:  # (a report of an earlier version has no warnings)
        listed = row["warnings"] if isinstance(row["warnings"], list) else []
        row["warnings"] = [w for w in listed if isinstance(w, str)]
    mine, merged = {key(r): r for r in rows}, []
    current = {r.get("settings") for r in rows} - {None, ""}
    same = {h for r in rows for h in r.get(EQUIVALENT, ())} | current  # (an earlier version's hash of them)
    for row in earlier:
        if len(current) == 1 and row["settings"] not in ("", *same) and row["status"] != "failed":
            row.update(status="skipped", reason=OTHER_SETTINGS)
        own, exists = mine.pop(key(row), None), not os.path.isabs(row["file"]) or _exists(row["file"])
        if own is not None and (own["reason"] not in DEFERRING or not exists):
            if _kept_as_finished(own, row):
                own = {**own, "warnings": row["warnings"]}
            merged.append(own)
        elif exists:  # another run's row that this run's defers to, or a file this run did not see
            merged.append(row)
    return merged + list(mine.values())


def _kept_as_finished(own: dict, earlier: dict) -> bool:
    """Whether ``own``, a row of this run, is its file skipped as finished, with no warnings of its own,
    and the ``earlier`` row of that file was not a failure and was made with the same settings."""
    return (own["status"], own["reason"]) == ("skipped", "") and not own.get("warnings") \
        and earlier["status"] != "failed" and earlier["settings"] not in ("", None) \
        and earlier["settings"] in (own.get("settings"), *own.get(EQUIVALENT, ()))


def _exists(text: str) -> bool:
    """Whether the file a report names exists: by its text, or with the ``\\xNN`` that
    :func:`~deconv3d.pipeline.records.path_text` wrote for the bytes of a name not UTF-8 as bytes."""
    if os.path.exists(text):
        return True
    raw = re.sub(r"\\x([89a-f][0-9a-f])", lambda m: chr(0xDC00 + int(m.group(1), 16)), text)
    return raw != text and os.path.exists(raw)


#: The reason of an earlier run's row whose output was made with other settings (see _merged_rows).
OTHER_SETTINGS = "its output was made with other settings by an earlier run: rerun the batch to redo it"


#: What separates a file's warnings in the CSV report's one cell (the JSON report lists them).
WARNINGS_JOINED = " | "


def _write_reports(output_dir: Path, rows) -> tuple[Path, Path]:
    """Write the JSON report, then the CSV; an OSError names the report file it did not write."""
    summary = status_counts(rows)
    json_path, csv_path = output_dir / "batch_report.json", output_dir / "batch_report.csv"
    with _naming(json_path):
        _write_json_atomic(json_path, {"summary": summary, "files": [{k: v for k, v in r.items() if k != EQUIVALENT}
                                                                     for r in rows]})
    from deconv3d.pipeline.output import atomic_output

    # UTF-8 with a byte order mark: without one Excel on Windows read it as cp1252 ("PrÃ¤parat", "Âµm");
    # read it as "utf-8-sig", which takes files without the mark (of earlier versions) too
    # (made with its mode, before the rows: a private report was readable by all while rewritten)
    with _naming(csv_path), atomic_output(csv_path) as tmp, \
            open(create_temporary(csv_path, tmp), "w", newline="", encoding="utf-8-sig") as fh:  # any file name
        writer = csv.DictWriter(fh, fieldnames=list(REPORT_FIELDS), extrasaction="ignore")  # (settings: JSON only)
        writer.writeheader()
        writer.writerows({**r, "warnings": WARNINGS_JOINED.join(r.get("warnings") or ())} for r in rows)
    return json_path, csv_path


@contextlib.contextmanager
def _naming(path: Path):
    """Give an OSError raised in the block the file name ``path`` (not a temporary's, or none)."""
    try:
        yield
    except OSError as exc:
        exc.filename = str(path)
        raise


def spatial_voxel(settings: Settings, lazy) -> Optional[tuple]:
    """The voxel size to use: the configured one, else the file's."""
    if settings.voxel_size is not None:
        spatial = sum(a in "ZYX" for a in lazy.axes)
        if len(settings.voxel_size) < spatial:
            raise InputError(f"voxel size {tuple(settings.voxel_size)} gives {len(settings.voxel_size)} values but "
                             f"{Path(lazy.path).name} is {spatial}D: give DZ DY DX")
        return tuple(float(v) for v in settings.voxel_size)[-spatial:]  # (nanometres: refused by Settings)
    return recorded_voxel(lazy, "--voxel-size DZ DY DX")
