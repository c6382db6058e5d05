"""A batch's report: ``batch_report.json`` and ``batch_report.csv`` in its output folder.

One row per file (status, time, output, reason, warnings), merged with the report already there
(other runs' and earlier runs' rows are kept: :func:`write_reports`), written at the batch's end
and, through :func:`report_as_files_finish`, as its files are settled, so that a run killed
outright leaves a report of the files it finished. :func:`status_counts` sums the rows up.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import time
from pathlib import Path

from deconv3d._paths import create_temporary
from deconv3d.pipeline.completion_records import RECORD_DIR, write_json_atomic
from deconv3d.pipeline.locks import DEFERRING, report_lock
from deconv3d.pipeline.records import path_text

__all__ = ["STATUSES", "REPORT_FIELDS", "EQUIVALENT", "status_counts", "write_reports", "report_as_files_finish",
           "REPORT_SHARE"]

STATUSES = ("done", "skipped", "failed")  # of a file in the batch report
REPORT_FIELDS = ("file", "status", "seconds", "output", "reason", "warnings")  # (warnings: added last, a list)


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
    """A ``report`` for :func:`~deconv3d.pipeline.batch.run_batch` that writes the batch report
    (:func:`write_reports`, merged with the report there) with the rows settled so far: the report was written only when the batch
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
        write_json_atomic(json_path, {"summary": summary, "files": [{k: v for k, v in r.items() if k != EQUIVALENT}
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
