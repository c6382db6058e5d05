"""The ``batch`` command's run (its arguments are registered in :mod:`deconv3d.cli.pipeline`):
the checks before any file (the run options, the output folder, whose checks are in
:mod:`deconv3d.cli.batch_output_folder`, the shared PSF or model files, the options the method
ignores), the run over the folder with a line per file, the warnings of each file kept for its
report row (:class:`_BatchWarnings`), and the report written at the end or when the run is stopped."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from deconv3d._paths import line_text
from deconv3d.errors import InputError, always_show_own_warnings

from ._common import Terminated
from .batch_output_folder import _check_output_folder
from .pipeline import OPTICS, _bar, _setting_values, _trainer, run_option_warnings, settings_from_args, writing_bar
from .printing import hashed, print_warnings, say_last, show_warning, warning_text


def _as_read_before(args, config: dict, settings) -> tuple:
    """The fingerprints of ``settings`` as the versions before read this batch command: a --psf
    given here replaced the config's psf-model only and kept its microscope's parameters, which,
    unused, were still in some of those hashes (several wavelengths). Their completion records
    mean these settings: without this, ``--config cfg.toml --psf psf.tif`` redid every file."""
    import dataclasses

    kept = {k: config[k] for k in OPTICS if k in config and getattr(args, k, None) is None}
    if getattr(args, "psf", None) is None or not kept:
        return ()
    try:
        return dataclasses.replace(settings, **kept).finished_fingerprints()
    except InputError:  # (values those versions refused too: no record of theirs holds them)
        return ()


def _check_shared_files(settings) -> None:
    """An unreadable model or a bad PSF file would fail every file of the batch: refuse it up front."""
    from deconv3d.io import read_psf
    from deconv3d.pipeline.settings_checks import _many
    from deconv3d.psf import validate_psf

    if settings.method == "ssl" and settings.model:
        from deconv3d.selfsup import load_checkpoint

        for model in _many(settings.model):
            load_checkpoint(model, device="cpu")
    else:
        for psf in _many(settings.psf):
            data = read_psf(psf).data  # its errors name the file
            try:
                validate_psf(data)
            except InputError as exc:
                raise InputError(f"{psf}: {exc}") from None


def cmd_batch(args: argparse.Namespace) -> int:
    from deconv3d.pipeline.batch import load_config, run_batch
    from deconv3d.pipeline.batch_report import report_as_files_finish
    from deconv3d.pipeline.cluster import gpu_count, scheduler_client

    config = load_config(args.config) if args.config else {}
    settings, output_dir = _checked_run(args, config)
    start = time.perf_counter()
    gpus = gpu_count(settings.run_device) if args.scheduler == "processes" else 0
    rows: list[dict] = []
    warned = _BatchWarnings()
    try:
        with warned.shown(), scheduler_client(args.scheduler, args.workers, gpus=gpus) as client:
            workers = gpus or args.workers or 1
            one = _file_runner(settings, client, workers, warned)
            run_batch(args.input_dir, output_dir, settings, one, progress=_progress_printer(args.input_dir), rows=rows,
                      also_finished_as=_as_read_before(args, config, settings),
                      report=report_as_files_finish(output_dir, fill=warned.fill),  # (a killed run's too)
                      hash_input=_hashed_with_a_bar(args.input_dir))
    except KeyboardInterrupt as exc:
        return _stopped(exc, rows, output_dir, warned)
    except BrokenPipeError:  # stdout piped into a reader that stopped (| head): the whole report, then main's 141
        with contextlib.suppress(Exception):  # (the one written as files finish may lag: its writes are spaced)
            _write_reports(output_dir, warned.fill([row for row in rows if row["status"]]))
        raise
    return _finished(rows, output_dir, warned, start, args.input_dir)


def _checked_run(args: argparse.Namespace, config: dict):
    """The batch's settings and output folder, once its options, input folder, output folder and shared files
    are checked (a missing input named before the output folder's problems); the options' warnings printed."""
    from deconv3d.pipeline.batch_inputs import check_input_folder
    from deconv3d.pipeline.cluster import check_scheduler

    _take_run_options(args, config)
    check_scheduler(args.scheduler)
    given = _setting_values(args, config)
    settings = settings_from_args(args, config)
    output_dir = Path(args.output)
    check_input_folder(args.input_dir)  # (before the output folder's checks: a missing input is named first)
    _check_output_folder(output_dir, args.input_dir, settings.pattern)
    _check_shared_files(settings)
    print_warnings(_unused_settings_warnings(settings, given, [k for k in config if getattr(args, k, None) is None])
                   + run_option_warnings(args))
    return settings, output_dir


def _file_runner(settings, client, workers: int, warned: _BatchWarnings):
    """The batch's ``process_one``: deconvolve one file on ``client``, its warnings kept for its row, with a
    progress bar of its blocks (:func:`~deconv3d.cli.pipeline._bar`) and one of a TIFF output's copy
    (:func:`~deconv3d.cli.pipeline.writing_bar`)."""
    from deconv3d._paths import path_text
    from deconv3d.pipeline.files import deconvolve_file

    from .selfsup import training_defaults

    training = argparse.Namespace(**{**training_defaults(), "steps": settings.train_steps,
                                         "seed": settings.seed, "amp": settings.amp,
                                         "device": settings.run_device})

    def one(path, output, input_sha256):
        warned.file = path
        chooser = _choosing_for(path) if settings.iterations == "auto" else None
        # a bar of the file's blocks, as deconvolve's: a large file ran for minutes with no line until its own
        bar, blocks_done = _bar(line_text(f"{settings.method} {path_text(path)}"), "block")
        try:
            with bar, writing_bar(output) as writing:
                deconvolve_file(path, output, settings, client=client, workers=workers, checksum=input_sha256,
                                trainer=_trainer(training, []), sweep=False,  # (run_batch swept the folder)
                                iterations_chooser=chooser, progress=blocks_done, writing=writing)
        finally:
            warned.file = None

    return one


def _choosing_for(path):
    """``iterations = "auto"``: deconvolve's chooser (:func:`~deconv3d.cli.iteration_choice._choose_iterations`) for
    the file ``path``, whose 'chose N iterations for FILE' lines (``for channel 1 (RFP) of FILE`` where it
    has several) come before the file's own '[N/TOTAL]' line, printed as it ends."""
    from deconv3d._paths import path_text

    from .iteration_choice import _choose_iterations

    def choose(crop, psf, params, voxel, device, clipped=None, where="", note=""):
        named = f"{where} of {path_text(path)}" if where else path_text(path)
        return _choose_iterations(crop, psf, params, voxel, device, clipped, line_text(named), note)

    return choose


def _hashed_with_a_bar(input_dir):
    """``hash_input(path)`` for :func:`~deconv3d.pipeline.batch.run_batch`: the file's SHA-256, with a bar
    where it is large (:func:`~deconv3d.cli.printing.hashed`; a file of 100 GB took a minute or more).
    The batch hashes one file at a time, in this thread (its workers run each file's blocks), so one
    bar at a time."""
    from deconv3d._paths import recorded_path

    def hash_input(path) -> str:
        return hashed(path, line_text(f"batch: hashing {shown_input(recorded_path(path), input_dir)}"))

    return hash_input


def shown_input(file: str, input_dir) -> str:
    """A batch input as its terminal lines name it: the input folder as given, joined with the file's
    path inside it (``in/day2/a.tif``; ``a.tif`` for the folder ``.``), from the row's ``file`` (absolute,
    as the report holds it). That is the path the batch found and gave the run of the file, so the
    library's messages, which name an input by the path they were given, name it alike. The
    per-file line named ``day2/a.tif`` as ``a.tif`` and the failures at the end as the absolute path.
    Where the file has no path relative to the folder (on Windows, another drive), it is ``file``."""
    from deconv3d._paths import path_text

    try:
        inside = os.path.relpath(file, path_text(Path(input_dir).absolute()))
    except ValueError:  # (os.path.relpath across drives on Windows)
        return file
    return path_text(Path(os.fsdecode(input_dir)) / inside)


def _progress_printer(input_dir):
    """The line a batch prints as each file ends: ``[N/TOTAL] STATUS FILE[: reason]``."""
    def progress(number, total, row) -> None:
        reason = f": {row['reason']}" if row["reason"] else ""
        print(line_text(f"[{number}/{total}] {row['status']:<7} {shown_input(row['file'], input_dir)}{reason}"),
              flush=True)

    return progress


def _stopped(exc: KeyboardInterrupt, rows, output_dir: Path, warned: _BatchWarnings) -> int:
    """A batch stopped by Ctrl-C, SIGTERM or SIGHUP: the report written, its last line said, its exit status."""
    from deconv3d.pipeline.batch_report import status_counts

    how = f"terminated ({exc.name})" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
    for row in rows:  # the file in progress: its earlier output, if any, no longer matches a record
        if not row["status"]:
            row.update(status="failed", reason=f"{how}: rerun to redo it")
    counts = status_counts(rows)
    json_path = _write_reports(output_dir, warned.fill(rows)) if rows else None  # over an earlier report's rows
    with contextlib.suppress(OSError):  # (a terminal gone: see say_last)
        warned.summary(json_path)
    said = how if isinstance(exc, Terminated) else "interrupted"  # (the signal named)
    say_last(f"deconv3d: {said} at file {len(rows)} ({counts['done']} done, {counts['skipped']} "
             f"skipped, {counts['failed']} failed or interrupted); finished outputs are kept"
             + (f" (report {json_path})" if json_path else "") + ": rerun the same command to resume")
    return exc.status if isinstance(exc, Terminated) else 130


def _finished(rows, output_dir: Path, warned: _BatchWarnings, start: float, input_dir) -> int:
    """A batch run to its end: the report written, the summary and failures printed, its exit status."""
    from deconv3d.pipeline.batch_report import status_counts

    json_path = _write_reports(output_dir, warned.fill(rows))
    if json_path is None:
        warned.summary(None)
        return 3
    failed = [r for r in rows if r["status"] == "failed"]
    counts = status_counts(rows)
    print(f"batch: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed in "
          f"{time.perf_counter() - start:.1f} s; report {json_path}")
    for row in failed:
        print(line_text(f"deconv3d: failed: {shown_input(row['file'], input_dir)}: {row['reason']}"), file=sys.stderr)
    warned.summary(json_path)
    return 3 if failed else 0


#: How many files a batch prints a warning for that differs from file to file only by the file's name.
WARNINGS_SHOWN = 3


class _BatchWarnings:
    """The command line's warnings during a batch (installed by :meth:`shown`): each file's are kept
    for its report row (:meth:`fill`), said of "the image" where they name the file, as the row names it; a
    line already printed is not printed again (a shared PSF's "carries no voxel size" came once per file, 800
    times), and of a line that differs from file to file only by the file's name ("in/p7.tif carries no voxel
    size") the first :data:`WARNINGS_SHOWN` files' are printed. :meth:`summary` then says how many files drew
    warnings and where all of them are."""

    def __init__(self):
        self.file: Path | None = None  # the input in progress (set by the batch's process_one)
        self.by_file: dict[str, list[str]] = {}  # a row's "file" -> the file's warnings
        self.printed: set[str] = set()
        self.kinds: dict[str, int] = {}  # a line less the file's name -> the files it was printed for

    @contextlib.contextmanager
    def shown(self):
        import warnings

        with warnings.catch_warnings():
            warnings.showwarning = self
            # Every time, for each file's row: main's 'default' passed a plain warnings.warn of the library
            # (a PSF's flat floor) once per place, to the first file's row only (a repeat prints once here).
            always_show_own_warnings()
            yield

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        from deconv3d._paths import path_text, recorded_path

        text = warning_text(message)
        kind = text
        if self.file is not None:  # (the row names the file: its warnings say "the image")
            without_file = getattr(message, "command_line_without_file", None) or \
                getattr(message, "without_file", None)
            self.by_file.setdefault(recorded_path(self.file), []).append(path_text(without_file or text))
            kind = text.replace(str(self.file), "\0").replace(self.file.name, "\0")
        if text in self.printed or (kind != text and self.kinds.get(kind, 0) >= WARNINGS_SHOWN):
            return
        if kind != text:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.printed.add(text)
        show_warning(text)

    def fill(self, rows: list[dict]) -> list[dict]:
        """``rows`` (the batch's), each with its file's warnings."""
        for row in rows:
            row["warnings"] = self.by_file.get(row["file"], row.get("warnings", []))
        return rows

    def summary(self, report) -> None:
        """One line, where some file drew warnings, saying how many did and where the report
        (``report``: None where it could not be written) lists them: a line printed once stood for
        many files, and one not printed for any."""
        if self.by_file:
            where = f": each file's are in the warnings of its row in {report}" if report else \
                " (the report that lists them could not be written)"
            show_warning(f"{len(self.by_file)} file(s) drew warnings{where}")


def _unused_settings_warnings(settings, given, keys=()) -> list[str]:
    """``deconvolve``'s warnings about options the method ignores, for a batch's settings (its
    options and its config's keys alike): --iterations with --method wiener redid every finished
    file without a word (such settings are no longer in the fingerprint, see Settings.fingerprint).
    ``given``: the names of the settings given (:func:`_setting_values`), warned about at their
    default values too. ``keys``: the settings the config alone gave; ``ns`` among them is named as
    its key (the gaussian model's warning that it does not read it)."""
    from .classical import _unused_option_warnings

    s = settings
    as_options = argparse.Namespace(
        method=s.method, iterations=s.iterations, no_accelerate=not s.accelerate, boundary=s.boundary,
        saturation=s.saturation,
        tv_weight=s.tv_weight, balance=s.balance, tta=s.tta, band_limit=s.band_limit, seed=s.seed, amp=s.amp,
        model=s.model, psf_model=s.psf_model, na=s.na, wavelength=s.wavelength, ni=s.ni, ns=s.ns, depth=s.depth,
        pyramid_levels=s.pyramid_levels, output=f"output.{s.output_format}")
    # (batch's --accelerate/--no-accelerate is deconvolve's --no-accelerate)
    as_options._given_options = {"no_accelerate" if name == "accelerate" else name for name in given}
    as_options._flag_names = {"no_accelerate": "--accelerate/--no-accelerate", "tta": "--tta/--no-tta",
                              **({"ns": "ns"} if "ns" in keys else {})}
    return _unused_option_warnings(as_options)


def _write_reports(output_dir: Path, rows) -> Path | None:
    """Write the batch report; when that fails (a full disk), say so in one line with what the
    run did, and return None. The generic message for a failed write ("nothing was written") was
    wrong here: the finished files' outputs are complete. The line names the report file missing
    (the JSON is written first: when the CSV is missing, the JSON was written), and advises freeing
    disk space only where space ran out (else checking that the folder may be written)."""
    from deconv3d._paths import out_of_space
    from deconv3d.pipeline.batch_report import status_counts, write_reports

    try:
        return write_reports(output_dir, rows)[0]
    except OSError as exc:
        counts = status_counts(rows)
        missing = Path(exc.filename).name if isinstance(exc.filename, str) else "the batch report"
        written = " (batch_report.json was)" if missing == "batch_report.csv" else ""
        kept = ": their outputs are complete and kept" if counts["done"] else ""
        fix = "free disk space" if out_of_space(exc) else f"check that {output_dir} may be written"
        print(f"deconv3d: error: {missing} could not be written in {output_dir} ({exc.strerror or exc}){written}; "
              f"{counts['done']} file(s) done, {counts['skipped']} skipped, {counts['failed']} failed{kept}: {fix}, "
              "then rerun the same command to write the report", file=sys.stderr)
        return None


def _take_run_options(args, config: dict) -> None:
    """Move ``scheduler`` and ``workers`` from ``config`` onto ``args`` where the command line did not
    give them (then the defaults), checked: a config can hold any TOML value."""
    from deconv3d.pipeline.batch import RUN_KEYS

    for key in RUN_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, config.get(key))
        config.pop(key, None)
    if args.scheduler is not None and not (isinstance(args.scheduler, str) and args.scheduler.strip()):
        raise InputError(f"scheduler must be threads, processes or tcp://HOST:PORT, got {args.scheduler!r}")
    args.scheduler = args.scheduler or "threads"
    workers = args.workers
    if workers is not None and (isinstance(workers, bool) or not (isinstance(workers, int) and workers >= 1)):
        raise InputError(f"workers must be a positive whole number, got {workers!r}")
