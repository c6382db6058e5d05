"""One file of a batch, run and recorded: the completion record that claims its output before the run
(not finished), the run with its warnings into the file's report row, the record that says it finished
(with the input's state and hash, and the settings' fingerprint with the PSF and model files as the run
read them), and the one-line reason of a file that failed. Which files run, and under which locks, is
:func:`~deconv3d.pipeline.batch.run_batch`'s."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from deconv3d._paths import check_name_length, refuse_special_file
from deconv3d.errors import InputError, NonFiniteValues, naming_image
from deconv3d.pipeline.completion_records import (input_state, outputs_written, read_completion_record,
                                                  write_json_atomic)
from deconv3d.pipeline.locks import note_writer
from deconv3d.pipeline.records import path_text
from deconv3d.pipeline.row_warnings import warnings_into
from deconv3d.pipeline.settings import Settings
from deconv3d.pipeline.settings_checks import _many


def _process(path, output, record, settings, process_one, row, hash_input=None) -> None:
    start, finishing = time.perf_counter(), False
    try:
        names, state, digest, shared, settings_hash = _claimed(path, output, record, settings, hash_input)

        def finish():
            nonlocal finishing
            _check_unchanged(shared, settings, path)
            row["settings"] = settings_hash
            finishing = True
            # In the try: a record that cannot be written (a full disk) fails this file, not the batch; the
            # unfinished record (_claimed) stays, so that a rerun redoes the output.
            _record_finished(path, output, record, names, state, digest, settings_hash)

        _run_one(path, output, digest, process_one, row, finish, start)
        finish()
    except KeyboardInterrupt as exc:
        if finishing and _published(exc, record):  # the finished record is in place: the row says so
            row.update(status="done", seconds=round(time.perf_counter() - start, 3))
        raise
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - one failing file must not stop the batch
        row.update(status="failed", reason=_reason(exc, path))
    else:
        row["status"] = "done"
    row["seconds"] = round(time.perf_counter() - start, 3)


def _claimed(path, output, record, settings, hash_input=None) -> tuple:
    """(the outputs the record lists, the input's state, its SHA-256 by ``hash_input`` (default
    :func:`~deconv3d.omezarr.file_sha256`), the PSF and model files' hashes, the settings' fingerprint) once
    the output is recorded as the input's, not finished (:func:`_record_unfinished`)."""
    from deconv3d.omezarr import file_sha256

    names = _record_unfinished(path, output, record)
    state, digest = input_state(path), (hash_input or file_sha256)(path)  # before reading: a change meanwhile shows
    # The PSF and model files as this file's run reads them (each file's run loads them again, and one
    # replaced during the batch had its outputs recorded under the first one's hash), then the
    # fingerprint that holds them: a file replaced before the fingerprint or during the run fails it.
    shared = _shared_hashes(settings)
    return names, state, digest, shared, settings.fingerprint()


def _record_unfinished(path, output, record) -> list:
    """Check the output's names and the input, then record the output as this input's, not finished;
    returns the outputs that record lists."""
    # (named by the input: a name too long is the input's to shorten, to what both names allow)
    check_name_length(output, record, renamed=path, scratch=True)  # (a TIFF: built by deconvolve_file's scratch)
    refuse_special_file(path)  # (hashing a named pipe waited forever)
    # Not finished, but the output stays this input's (an interrupted run's next one may replace it).
    names = sorted(set(outputs_written(read_completion_record(record))) | {output.name})
    note_writer(record.parent, output, record.name)  # (where runs into this folder find it: output_owners)
    write_json_atomic(record, {"input": str(path.absolute()), "output": output.name, "outputs": names,
                                "settings": None})
    return names


def _record_finished(path, output, record, names, state, digest, settings_hash) -> None:
    """Write the completion record that says the output is finished, with the input's state and hash."""
    write_json_atomic(record, {"input": str(path.absolute()), "input_state": state,
                                "input_sha256": digest, "settings": settings_hash, "output": output.name,
                                "outputs": names, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _run_one(path, output, digest, process_one, row, finish, start) -> None:
    """Run ``process_one`` with its warnings into the row; interrupted as the output was put in place,
    record it finished (``finish``) before the interruption goes on."""
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
        raise naming_image(lambda image: f"{', '.join(map(str, changed))} changed while {image} was processed (which "
                           "version the run read is not known): rerun the batch to redo it with the file as it is now",
                           path_text(path))


def _reason(exc: Exception, path=None) -> str:
    """A failed file's reason in one line: an OS error as "FILE: what happened" (not "[Errno 28] ..."; FILE left
    out where it is the input ``path``, which the line names); a refusal that names the input file as said of
    "the image" (``without_file``, set where it is worded), as the line names the file; any other as it is."""
    from deconv3d._paths import out_of_space

    if isinstance(exc, OSError) and exc.strerror:  # (not "IN/b.tif: IN/b.tif: No such file or directory")
        input_file = isinstance(exc.filename, (str, os.PathLike)) and path is not None and \
            os.path.abspath(exc.filename) == os.path.abspath(path)
        where = f"{exc.filename}: " if exc.filename and not input_file else ""
        return f"{where}{exc.strerror}" + (": free disk space, then rerun the batch" if out_of_space(exc) else "")
    if isinstance(exc, NonFiniteValues):  # (the batch's lines name the file before the reason)
        return exc.line(with_file=False)
    if isinstance(exc, InputError) and exc.without_file:  # (as said of "the image": not naming it twice)
        return " ".join(exc.without_file.split())
    return " ".join(str(exc).split()) or type(exc).__name__
