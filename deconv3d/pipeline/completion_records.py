"""A batch's completion records, which make it resumable, and the output ownership they give.

Each input has a record (``OUTPUT_DIR/.deconv3d-batch/NAME.json``, :func:`completion_record_path`)
that notes its output, its state (:func:`input_state`) and SHA-256, and the settings' hash;
:func:`is_finished` says from it whether a rerun may skip the input. The records also say which
input each output of the folder holds, so that runs of one folder, and inputs of one name in
different folders, do not replace each other's results (:func:`output_owners`,
:func:`owned_by_another`, :func:`in_the_way`). Records are written atomically
(:func:`write_json_atomic`).
"""

from __future__ import annotations

import bisect
import errno
import json
import os
from pathlib import Path
from typing import Optional

from deconv3d._paths import _same_file, create_temporary
from deconv3d.pipeline.locks import noted_writers
from deconv3d.pipeline.settings_fingerprint import tv_term_rule

__all__ = ["RECORD_DIR", "ALWAYS_HASH_BYTES", "completion_record_path", "input_state", "read_completion_record",
           "is_finished", "write_json_atomic", "completion_record_names", "output_owners", "outputs_written",
           "in_the_way", "owned_by_another", "owned_reason"]

RECORD_DIR = ".deconv3d-batch"
ALWAYS_HASH_BYTES = 256 * 2**20  # inputs up to this size are re-hashed on every skip check


def completion_record_path(output_dir: Path, input_path: Path) -> Path:
    from deconv3d.pipeline.batch_inputs import record_name  # (a bioformats2raw series is named with its folder)

    return output_dir / RECORD_DIR / f"{record_name(input_path)}.json"


def input_state(path: Path) -> dict:
    """Size and latest modification time of a file, or of all files under a folder (an OME-Zarr)."""
    path = Path(path)
    if not path.is_dir():
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return {"size": sum(st.st_size for st in stats),
            "mtime_ns": max([st.st_mtime_ns for st in stats] + [path.stat().st_mtime_ns])}


def read_completion_record(record_path: Path) -> dict:
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

    record = read_completion_record(record_path)
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
            write_json_atomic(record_path, {**record, "input_state": state})
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


def write_json_atomic(path: Path, payload) -> None:
    from deconv3d.pipeline.output import atomic_output

    # (made with its mode, before the text: a private report was readable by all while rewritten)
    with atomic_output(path) as tmp, open(create_temporary(path, tmp), "w") as fh:
        fh.write(json.dumps(payload, indent=2))


def owned_reason(output: Path, other: Path) -> str:
    return (f"{output.name} holds the result of {other}, another file of this name: write the results of this "
            "folder to another output folder")


def completion_record_names(record_dir: Path) -> list[tuple[str, str]]:
    """The completion records in ``record_dir``, (case-folded name, name) in order: listed once a batch."""
    try:
        with os.scandir(record_dir) as entries:
            return sorted((e.name.casefold(), e.name) for e in entries if e.name.endswith(".json"))
    except OSError:
        return []


def output_owners(record_dir: Path, output: Path, listed: list, own: str) -> dict[str, Optional[str]]:
    """The outputs named by the completion records of a folder that may name ``output`` (case-folded),
    each with the input recorded for it (None where a record of an earlier version names none). An
    output in the folder that no record names is not the batch's to replace: a user's own file of that
    name was overwritten without a word. Read for each file not finished, under its output's lock (a
    table read at the start missed another run's input taking the output meanwhile). Opened are the
    records ``listed`` at the start (:func:`completion_record_names`) of inputs whose name begins with the
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
        record = read_completion_record(record_dir / name)
        given = record.get("input")
        given = given if isinstance(given, str) and os.path.isabs(given) else None
        for written in outputs_written(record):
            owners[written.casefold()] = given
    return owners


def outputs_written(record: dict) -> list[str]:
    """Every output name a record's input has been written to (``outputs``: one per output format a
    run used; a run in the other format and back had left the first output no record named, and
    every file failed), with the current ``output``."""
    listed = record.get("outputs")
    names = [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
    current = record.get("output")
    return names + [current] if isinstance(current, str) and current not in names else names


def in_the_way(output: Path) -> bool:
    """Whether something is at ``output`` that its replacement would lose (an empty folder is not).
    Nothing is at a name past the file system's limit (an input of 252 to 255 bytes named an output
    longer than 255): :func:`~deconv3d.pipeline.batch_file_run._process` fails that file as its input's name
    too long, where looking at it raised "File name too long" and ended the batch in an internal error."""
    try:
        if output.is_dir() and not output.is_symlink():
            return next(output.iterdir(), None) is not None
        return output.exists() or output.is_symlink()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def owned_by_another(owners: dict, output: Path, path: Path) -> Optional[Path]:
    """The input whose result ``output`` holds, by the folder's records, when that is another file
    that still exists: one of the same output name in another folder (day1/a.tif, then day2/a.tif
    or day2/a.tiff), whose result this input's would replace. A recorded input that is gone (moved,
    renamed) is not in the way, nor an unknown one (an earlier version's relative path)."""
    given = owners.get(output.name.casefold())
    other = Path(given) if given is not None else None
    return other if other is not None and other.exists() and not _same_file(other, path) else None
