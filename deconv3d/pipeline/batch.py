"""Deconvolve every image of a folder with one validated configuration: resumable and crash-safe.

Each output is written under a temporary name and renamed when complete; then a completion
record (``OUTPUT_DIR/.deconv3d-batch/NAME.json``) notes the input's size, modification time and
SHA-256 and a hash of the settings (with the PSF and model files as that file's run read them). A
rerun skips an input whose record, output and settings still match (see
:func:`~deconv3d.pipeline.completion_records.is_finished`), and redoes everything else (stale
temporaries are removed first). Inputs are only read.
A failing file is recorded with its reason and the batch goes on; a JSON and a CSV report list
every file's status, time, output and warnings.

This module runs the loop over a batch's files and settles each (skipped, failed or run, under the
lock of its output); the inputs and their outputs are found in :mod:`~deconv3d.pipeline.batch_inputs`,
one file is run and recorded in :mod:`~deconv3d.pipeline.batch_file_run`, the completion records and
the output ownership they give are in :mod:`~deconv3d.pipeline.completion_records`, the report in
:mod:`~deconv3d.pipeline.batch_report`, and the PSFs the batch prepares (and keeps) in
:mod:`~deconv3d.pipeline.prepared_psfs`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Optional

from deconv3d._paths import _same_file, recorded_path, remove_stale_temporaries_in
from deconv3d._voxel import recorded_voxel
from deconv3d.errors import InputError, naming_image
from deconv3d.pipeline.batch_config import RUN_KEYS, load_config
from deconv3d.pipeline.batch_file_run import _process
from deconv3d.pipeline.batch_inputs import _outputs_for, find_inputs, output_for
from deconv3d.pipeline.batch_report import EQUIVALENT, report_as_files_finish, status_counts, write_reports
from deconv3d.pipeline.completion_records import (RECORD_DIR, completion_record_names, completion_record_path,
                                                  in_the_way, is_finished, output_owners, owned_by_another,
                                                  owned_reason)
from deconv3d.pipeline.locks import BUSY, DONE_ELSEWHERE, claim, settings_guard
from deconv3d.pipeline.prepared_psfs import load_psf_for, sharing_prepared_psfs
from deconv3d.pipeline.records import path_text
from deconv3d.pipeline.settings import OUTPUT_FORMATS, Settings, channel_count, make_settings
from deconv3d.pipeline.settings_checks import _many

__all__ = ["Settings", "load_config", "make_settings", "channel_count", "RUN_KEYS", "find_inputs", "output_for",
           "run_batch", "build_block_fn", "load_psf_for", "write_reports", "report_as_files_finish", "status_counts",
           "RECORD_DIR"]



def build_block_fn(settings: Settings, psf, voxel, ndim: Optional[int] = None, trained=None, model_file=None):
    """(block callable, memory model, parameters) for ``settings`` and a prepared PSF.

    For ``ssl`` the PSF is optional; the model (``trained``, else loaded from ``model_file`` or
    ``settings.model``; ``model_file`` is the file recorded, one channel's of several) is checked
    against it, ``voxel`` and the image's dimensionality ``ndim`` (when given) before the block is built.
    """
    from deconv3d._saturation import saturation_record
    from deconv3d.pipeline.memory_model import MemoryModel
    from deconv3d.pipeline.methods import RichardsonLucyBlock, WienerBlock

    if settings.method == "ssl":
        return _network_block_fn(settings, psf, voxel, ndim, trained, model_file)
    if settings.method == "wiener":
        from deconv3d.classical.wiener import wiener_reach

        model = MemoryModel("wiener", psf.shape, reach=wiener_reach(psf, settings.balance),  # (its mirror's depth)
                            boundary=settings.boundary)  # (zero: the PSF's size of zeros, more than a thin mirror)
        block = WienerBlock(psf, settings.balance, settings.run_device, settings.boundary)
        return block, model, {"balance": settings.balance, "boundary": settings.boundary}
    tv = settings.tv_weight if settings.method == "rl-tv" else 0.0
    params = {"iterations": settings.iterations, "boundary": settings.boundary, "accelerate": settings.accelerate,
              "tv_weight": tv, **saturation_record(settings.saturation)}
    block = RichardsonLucyBlock(psf, settings.iterations, settings.boundary, tv, settings.accelerate, voxel,
                                settings.run_device, saturation=settings.saturation)
    return block, MemoryModel(settings.method, psf.shape, accelerate=settings.accelerate,
                              boundary=settings.boundary, saturation=settings.saturation != "none"), params


def _network_block_fn(settings: Settings, psf, voxel, ndim: Optional[int], trained, model_file):
    """:func:`build_block_fn` for ``ssl``: the network's block, checked against ``psf``, ``voxel`` and ``ndim``."""
    from deconv3d.pipeline.network_block import NetworkBlock
    from deconv3d.selfsup import load_checkpoint

    model_file = model_file or settings.model
    trained = load_checkpoint(model_file, device="cpu") if trained is None else trained
    # (Another PSF is refused for the whole batch first where the model records its voxel size: per file here
    # where the PSF is resampled to each file's own, _refuse_a_model_for_another_psf)
    _check_compatible(trained, trained.unet.ndim if ndim is None else ndim, psf, voxel, model_file, settings)
    block = NetworkBlock(trained, device=settings.run_device, tta=settings.tta, amp=settings.amp,
                         band_limit=settings.band_limit or None)
    model = network_memory_model(block)
    # a model file's recipe as the checkpoint holds it; else the network was trained in the run (its record)
    source = {**trained.record(), "model": recorded_path(model_file)} if model_file else {}
    # (the inference precision on this machine, as fingerprinted: a cluster's workers on other CPUs may differ)
    return block, model, {**source, "tta": settings.tta, "band_limit": settings.band_limit, "amp": settings.amp,
                          "inference_precision": settings.precision()}


def network_memory_model(block):
    """The memory model of a :class:`~deconv3d.pipeline.network_block.NetworkBlock` (its network's width,
    weights and the context its windows reach)."""
    from deconv3d.pipeline.memory_model import MemoryModel

    trained = block.trained
    weights = sum(p.numel() * 4 for p in trained.model.parameters())
    return MemoryModel("ssl", tuple(trained.psf.shape), base_channels=trained.unet.base_channels,
                       weights_bytes=weights, context=block.reach())


def run_batch(input_dir, output_dir, settings: Settings, process_one, *, progress=None,
              rows: list | None = None, also_finished_as: tuple = (), report=None, hash_input=None) -> list[dict]:
    """Run ``process_one(input_path, output_path, input_sha256)`` for every unfinished input.

    ``process_one`` writes the output (atomically) or raises; an InputError or any other
    exception marks the file failed with its one-line reason, and the batch continues.
    ``input_sha256`` is the input's hash, taken before the work starts (for provenance records), by
    ``hash_input(path)`` where given (the command line's shows a bar while it hashes a large file),
    else by :func:`~deconv3d.omezarr.file_sha256`.
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
    inputs, outputs = _inputs_and_outputs(input_dir, output_dir, settings)
    _refuse_report_folders(output_dir)
    _refuse_a_model_for_another_psf(settings)
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
        # (once: what runs write meanwhile, their claims note)
        settle = functools.partial(_settle, output_dir=output_dir, started=started, finished=(finished_as, symmetric_as),
                                   settings=settings, process_one=process_one,
                                   listed=completion_record_names(output_dir / RECORD_DIR), hash_input=hash_input)
        busy = []
        for number, (path, output) in enumerate(zip(inputs, outputs), 1):
            row = _new_row(path, output, settings_hash, finished_as)
            rows.append(row)  # before the work: an interrupted file shows as the row left without a status
            if settle(path, output, row=row) is False:
                busy.append((number, path, output, row))  # (who owns its output is asked once, below)
            _progress_then_report(progress, report, number, len(inputs), row, rows)
        # The files another run held: it may have been killed (its lock is then free), or its input may
        # own their output now. A file still held by a live run stays skipped.
        for number, path, output, row in busy:
            if settle(path, output, row=row, again=True) is not False:
                _progress_then_report(progress, report, number, len(inputs), row, rows)
    return rows


def _refuse_a_model_for_another_psf(settings: Settings) -> None:
    """Refuse, before any file runs, an ``ssl`` batch whose model (each, one per channel) was trained with
    another PSF than the PSF file given for it (each channel's, where one model is given with a PSF per
    channel): each file's run compares the PSF resampled to the voxel size it runs at, and a run at another
    voxel size than the model's is refused for that first. So where every model records its voxel size, the
    PSF compared is the same for every file that could run, and the refusal is the batch's, one line, as a
    single deconvolve's. Left to each file's run: a model without a voxel size (the PSF is resampled to each
    file's own), a generated PSF (``psf_model``: sampled on each file's grid), a model that does not load
    and a PSF that cannot be prepared for it (refused there with the file's name)."""
    models, psfs = _many(settings.model), _many(settings.psf)
    if settings.method != "ssl" or not models or not psfs or settings.psf_model is not None or \
            len(psfs) > 1 and len(models) > 1 and len(psfs) != len(models):
        return
    from deconv3d.pipeline.prepared_psfs import load_psf_for

    networks = {model: _network_or_none(model) for model in dict.fromkeys(models)}  # (each file read once)
    for number in range(max(len(models), len(psfs))):  # (channel by channel, as each file's run pairs them)
        model = models[number % len(models)]
        network = networks[model]
        voxel = None if network is None else network.voxel_size
        if voxel is None:
            continue
        try:
            psf = load_psf_for(settings, (1,) * network.unet.ndim, tuple(voxel), psf=psfs[number % len(psfs)],
                               fit_image=False, warnings=[])  # (fit_image False: the shape only gives the ndim)
        except InputError:
            continue
        _check_compatible(network, network.unet.ndim, psf, voxel, model, settings)


def _network_or_none(model):
    """The network in the file ``model``, None where it does not load (left to each file's run, which
    refuses it with the file's name)."""
    from deconv3d.selfsup import load_checkpoint

    try:
        return load_checkpoint(model, device="cpu")
    except InputError:
        return None


def _check_compatible(trained, ndim: int, psf, voxel, model_file, settings: Settings) -> None:
    """Refuse the network ``trained`` (read from ``model_file``, None for one trained in the run) for a PSF,
    voxel size or dimensionality other than its own (its ``check_compatible``); where the settings give one
    model of several (one per channel), the line names which."""
    try:
        trained.check_compatible(ndim, psf, voxel)
    except InputError as exc:
        if model_file and len(_many(settings.model)) > 1:
            raise InputError(f"model {path_text(model_file)}: {exc}") from None
        raise


def _inputs_and_outputs(input_dir, output_dir: Path, settings: Settings):
    """(the batch's input files, their outputs), refused where no file matches the pattern. The PSF (or
    model) kept among the images it applies to is not one of them (it was deconvolved too)."""
    shared = [Path(f) for f in (*_many(settings.psf), *_many(settings.model)) if f]
    inputs = [p for p in find_inputs(input_dir, settings.pattern) if not any(_same_file(p, f) for f in shared)]
    if not inputs:
        _refuse_an_image_as_the_folder(Path(input_dir))
        raise InputError(f"no input files in {input_dir} match {', '.join(settings.pattern)}: check --pattern")
    return inputs, _outputs_for(inputs, input_dir, output_dir, settings)


def _refuse_an_image_as_the_folder(input_dir: Path) -> None:
    """Where the input folder is itself an OME-Zarr image or a bioformats2raw folder (a zarr group, in which no
    pattern finds an input), say so and which folder to give: "check --pattern" sent the user the wrong way."""
    from deconv3d.omezarr.reading import bioformats2raw_series, is_zarr_folder

    if not is_zarr_folder(input_dir):
        return
    series, resolved = bioformats2raw_series(input_dir), input_dir.resolve()  # ("." has no name of its own)
    what = (f"a bioformats2raw folder of {len(series)} images" if len(series) > 1
            else "an image (zarr), not a folder of images")
    raise InputError(f"input {input_dir} is {what}: give the folder that holds it ({resolved.parent}) to batch, "
                     f"with --pattern '{resolved.name}' to take it alone, or use 'deconv3d deconvolve' for one image")


def _new_row(path, output, settings_hash: str, finished_as: tuple) -> dict:
    """The report row of one input, before its work (names as text a report can hold: a name that is
    not UTF-8 failed the CSV report's writing)."""
    return {"file": recorded_path(path), "output": recorded_path(output), "status": "", "seconds": 0.0,
            "reason": "", "warnings": [], "settings": settings_hash, EQUIVALENT: finished_as}


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


def _settle(path, output, output_dir, started, finished, settings, process_one, row, listed, again=False,
            hash_input=None):
    """Skip, fail or process one input under the lock of its output (:func:`~deconv3d.pipeline.locks.claim`),
    updating its ``row``. Returns False where another run holds the lock and the row says so (skipped),
    else None. ``finished``: the ``settings_hash`` and ``symmetric_as`` of :func:`is_finished`.
    ``listed``: the record folder's :func:`completion_record_names` at the start. ``again``: a file held
    at the first try, now failed where another existing input owns its output (the holder's record
    names it) and, where the lock is free, settled as any file (a killed run's temporary removed first).
    ``hash_input``: :func:`run_batch`'s."""
    record_dir = output_dir / RECORD_DIR
    record = completion_record_path(output_dir, path)
    with claim(record_dir, output, path) as mine:
        by_another = _written_since(record, started)  # (before is_finished refreshes a touched file's)
        if mine is False:  # another run of this folder is writing this output
            owners = output_owners(record_dir, output, listed, record.name) if again else {}
            other = owned_by_another(owners, output, path) if again else None
            if other is None:
                row.update(status="skipped", reason=BUSY)
                return False
            row.update(status="failed", reason=path_text(owned_reason(output, other)))
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
            owners = output_owners(record_dir, output, listed, record.name)
            if (other := owned_by_another(owners, output, path)) is not None:
                row.update(status="failed", reason=owned_reason(output, other))
            elif in_the_way(output) and output.name.casefold() not in owners:
                row.update(status="failed", reason=f"{output.name} is already in {output_dir} and no batch into "
                           "this folder wrote it: move it away, or write to another output folder")
            else:
                _process(path, output, record, settings, process_one, row, hash_input)
        row["reason"] = path_text(row["reason"])
    return None



def _written_since(record: Path, moment: float) -> bool:
    """Whether the completion record was written after ``moment`` (by another run, during this one)."""
    try:
        return record.stat().st_mtime > moment
    except OSError:
        return False


def spatial_voxel(settings: Settings, lazy) -> Optional[tuple]:
    """The voxel size to use: the configured one, else the file's."""
    if settings.voxel_size is not None:
        spatial = sum(a in "ZYX" for a in lazy.axes)
        if len(settings.voxel_size) < spatial:
            raise naming_image(lambda image: f"voxel size {tuple(settings.voxel_size)} gives "
                               f"{len(settings.voxel_size)} values but {image} is {spatial}D: give DZ DY DX",
                               path_text(lazy.path))
        return tuple(float(v) for v in settings.voxel_size)[-spatial:]  # (nanometres: refused by Settings)
    try:
        return recorded_voxel(lazy)
    except InputError as exc:  # a unit the reader cannot read: the reader's line said of "the image" too
        problem, said = getattr(lazy, "voxel_problem", None), getattr(lazy, "voxel_problem_without_file", None)
        if exc.without_file is None and problem and said and str(exc).startswith(problem):
            exc.without_file = said + str(exc)[len(problem):]
        raise
