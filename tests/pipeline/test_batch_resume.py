"""Batch crash safety: a batch killed (SIGKILL) in the middle of a file resumes to the same outputs.

The crashing run is a real ``deconv3d batch`` in a subprocess. To kill it reliably while a file
is half written, the subprocess wraps the block task of :mod:`deconv3d.pipeline.chunked` (read,
compute and write one block) so that it pauses after every written block (a test-side hook; the
package has none). The test polls for a written chunk inside the second file's hidden temporary
output and kills then.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deconv3d.cli import main
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr

from .conftest import blurred_beads, gaussian_psf

NAMES = ("img0", "img1", "img2")

# Runs the CLI with a pause of argv[1] seconds after each block is written into the zarr store.
# (It must wrap the function the batch really calls: a stale hook leaves a race the poll may lose.)
SLOW_CLI = """
import sys, time
import deconv3d.pipeline.chunked as chunked
from deconv3d.cli import main

_task, _delay = chunked._block_task, float(sys.argv[1])

def slow_task(*args, **kwargs):
    out = _task(*args, **kwargs)
    time.sleep(_delay)
    return out

chunked._block_task = slow_task
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def folder(tmp_path):
    psf = gaussian_psf()
    (tmp_path / "in").mkdir()
    for i, name in enumerate(NAMES):
        write_tiff(tmp_path / "in" / f"{name}.tif", blurred_beads((12, 24, 24), psf, seed=i),
                   voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def argv(d, out):
    return ["batch", d / "in", "-o", out, "--psf", d / "psf.tif", "--iterations", 3, "--chunks", 12, 12, 12]


def checksums(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "in").iterdir())}


def statuses(out):
    report = json.loads((out / "batch_report.json").read_text())
    return {os.path.basename(r["file"]): r["status"] for r in report["files"]}


def status(out, folder):
    """The report's status of ``folder``/cell.tif (the report keeps the rows of every earlier run)."""
    report = json.loads((out / "batch_report.json").read_text())
    return {r["status"] for r in report["files"] if os.path.basename(os.path.dirname(r["file"])) == folder}.pop()


def run_cli(d, out, capsys):
    code = main([str(a) for a in argv(d, out)])
    capsys.readouterr()
    return code


def start_slow_batch(d, out, delay=0.5):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(delay), *map(str, argv(d, out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_partial(proc, out, name, timeout=120.0):
    """Poll until a chunk of ``name``'s hidden temporary output is on disk; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.is_file() for tmp in out.glob(f".{name}.zarr.*.tmp") for p in (tmp / "0" / "c").rglob("*")):
            return True
        time.sleep(0.02)
    return False


def test_batch_killed_mid_file_resumes_to_identical_outputs(folder, capsys):
    before = checksums(folder)
    assert run_cli(folder, folder / "ref", capsys) == 0  # the uninterrupted run
    out = folder / "out"
    proc = start_slow_batch(folder, out)
    try:
        assert wait_for_partial(proc, out, "img1"), proc.stderr.read().decode() if proc.poll() is not None else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # img0 finished before the kill, img1 is half written under its hidden name, img2 not started.
    assert (out / "img0.zarr").is_dir() and (out / ".deconv3d-batch" / "img0.tif.json").is_file()
    assert not (out / "img1.zarr").exists() and list(out.glob(".img1.zarr.*.tmp"))
    # img1's record names its output (the batch's to replace), but no settings: not finished
    started = json.loads((out / ".deconv3d-batch" / "img1.tif.json").read_text())
    assert started["settings"] is None and started["output"] == "img1.zarr" and "input_sha256" not in started
    assert not (out / "img2.zarr").exists() and not (out / ".deconv3d-batch" / "img2.tif.json").exists()

    assert run_cli(folder, out, capsys) == 0
    assert statuses(out) == {"img0.tif": "skipped", "img1.tif": "done", "img2.tif": "done"}
    assert not list(out.glob(".*.tmp"))
    for name in NAMES:
        assert np.array_equal(read_ome_zarr(out / f"{name}.zarr")[0], read_ome_zarr(folder / "ref" / f"{name}.zarr")[0])
    assert checksums(folder) == before  # inputs never modified


def test_batch_redoes_a_changed_input_and_skips_a_touched_one(folder, capsys):
    out = folder / "out"
    assert run_cli(folder, out, capsys) == 0
    record = json.loads((out / ".deconv3d-batch" / "img1.tif.json").read_text())
    assert record["input_sha256"] == hashlib.sha256((folder / "in" / "img1.tif").read_bytes()).hexdigest()
    first = read_ome_zarr(out / "img1.zarr")[0]

    touched = folder / "in" / "img0.tif"  # same content, new time: still finished
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    changed = folder / "in" / "img1.tif"  # new content of the same size and time: redone
    st = changed.stat()
    write_tiff(changed, blurred_beads((12, 24, 24), gaussian_psf(), seed=7), voxel_size=(0.3, 0.1, 0.1))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert changed.stat().st_size == st.st_size and changed.stat().st_mtime_ns == st.st_mtime_ns

    assert run_cli(folder, out, capsys) == 0
    assert statuses(out) == {"img0.tif": "skipped", "img1.tif": "done", "img2.tif": "skipped"}
    assert not np.array_equal(read_ome_zarr(out / "img1.zarr")[0], first)
    refreshed = json.loads((out / ".deconv3d-batch" / "img0.tif.json").read_text())
    assert refreshed["input_state"]["mtime_ns"] == touched.stat().st_mtime_ns


@pytest.fixture
def one_image(tmp_path):
    """One small image and its PSF file: a batch of a single file."""
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "img0.tif", blurred_beads((12, 24, 24), gaussian_psf(), seed=3),
               voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def run_one(d, out, capsys, *extra):
    code = main([str(a) for a in ["batch", d / "in", "-o", out, "--psf", d / "psf.tif", *extra]])
    capsys.readouterr()
    assert code == 0
    return statuses(out)["img0.tif"], read_ome_zarr(out / "img0.zarr")[0]


def test_batch_redoes_a_finished_file_when_the_settings_change(one_image, capsys):
    """The completion record holds the settings' hash: other iterations redo the file, the same ones skip it."""
    out = one_image / "out"
    assert run_one(one_image, out, capsys, "--iterations", 2)[0] == "done"
    status, same = run_one(one_image, out, capsys, "--iterations", 2)
    assert status == "skipped"
    status, redone = run_one(one_image, out, capsys, "--iterations", 5)
    assert status == "done"
    fresh = run_one(one_image, one_image / "fresh", capsys, "--iterations", 5)[1]  # new settings, new folder
    np.testing.assert_array_equal(redone, fresh)
    assert not np.allclose(redone, same)  # 2 and 5 iterations really differ


def test_chunked_accelerated_rl_finished_by_a_version_before_its_block_rule_is_redone_once(tmp_path, capsys):
    """Block-by-block accelerated RL writes the blocks its measuring box holds from that run since the
    versions whose records list their ``outputs``; batches an earlier version finished (record without
    ``outputs``) were skipped, their outputs differing from this version's."""
    from deconv3d.pipeline.completion_records import _older_blocks

    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "img0.tif", blurred_beads((8, 40, 40), gaussian_psf(), seed=3),
               voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    chunked = ("--iterations", 2, "--chunks", 8, 20, 20)
    for out, extra, redone in [(tmp_path / "acc", chunked, True),
                               (tmp_path / "plain", (*chunked, "--no-accelerate"), False)]:  # no box: unchanged
        first = run_one(tmp_path, out, capsys, *extra)[1]
        record = out / ".deconv3d-batch" / "img0.tif.json"
        older = {k: v for k, v in json.loads(record.read_text()).items() if k != "outputs"}
        record.write_text(json.dumps(older))  # as an earlier version wrote it: no outputs list
        assert json.loads((out / "img0.zarr" / "zarr.json").read_text())["attributes"]["deconv3d"][
            "execution"]["blocks"] == 4
        status, again = run_one(tmp_path, out, capsys, *extra)
        assert status == ("done" if redone else "skipped"), out.name
        np.testing.assert_array_equal(again, first)  # (this version's result either way)
        assert run_one(tmp_path, out, capsys, *extra)[0] == "skipped"  # redone once only
    whole = tmp_path / "whole.zarr"  # an output its provenance says ran as one block is the same in both
    (whole / "zarr.json").parent.mkdir()
    (whole / "zarr.json").write_text(json.dumps({"attributes": {"deconv3d": {"execution": {"blocks": 1}}}}))
    assert not _older_blocks(older, whole) and _older_blocks(older, tmp_path / "whole.tif")


def test_batch_redoes_a_finished_file_when_the_psf_file_is_edited_in_place(one_image, capsys):
    """The settings' hash covers the PSF file's contents, not only its name."""
    out = one_image / "out"
    first = run_one(one_image, out, capsys, "--iterations", 3)[1]
    write_tiff(one_image / "psf.tif", gaussian_psf(sigma=(2.0, 1.5, 0.7)), voxel_size=(0.3, 0.1, 0.1))  # same name
    status, redone = run_one(one_image, out, capsys, "--iterations", 3)
    assert status == "done"
    fresh = run_one(one_image, one_image / "fresh", capsys, "--iterations", 3)[1]
    np.testing.assert_array_equal(redone, fresh)
    assert not np.allclose(redone, first)


def test_batch_never_replaces_a_folder_of_the_users_files_named_like_an_output(folder, capsys):
    """Found by the review of filesystem edge cases: a folder out/a.zarr holding the user's notes
    was moved aside by the batch, replaced by a's output and deleted (exit 0). It is now that file's
    failure, its folder untouched; an empty folder of that name is replaced."""
    out = folder / "out"
    (out / "img0.zarr").mkdir(parents=True)
    (out / "img0.zarr" / "notes.txt").write_text("keep")
    (out / "img1.zarr").mkdir()
    code = main([str(a) for a in argv(folder, out)])
    _, err = capsys.readouterr()
    assert code == 3 and "img0.zarr is already in" in err and "no batch into this folder wrote it" in err
    assert statuses(out) == {"img0.tif": "failed", "img1.tif": "done", "img2.tif": "done"}
    assert sorted(p.name for p in (out / "img0.zarr").iterdir()) == ["notes.txt"]
    assert (out / "img0.zarr" / "notes.txt").read_text() == "keep"
    assert read_ome_zarr(out / "img1.zarr")[0].shape == (12, 24, 24)


def test_a_file_of_the_same_name_from_another_folder_does_not_replace_a_result(one_image, capsys, monkeypatch):
    """Found by the pipeline review: a batch of day1/ and then one of day2/ into one output folder, each
    holding cell.tif, replaced day1's result with day2's, and the report called both done (exit 0).
    The second is now that file's failure, day1's result kept; the same content, or day1's file moved
    away, is no conflict."""
    d, psf = one_image, gaussian_psf()
    for day, seed in (("day1", 1), ("day2", 2), ("copy", 1)):
        (d / day).mkdir()
        write_tiff(d / day / "cell.tif", blurred_beads((12, 24, 24), psf, seed=seed), voxel_size=(0.3, 0.1, 0.1))

    def batch(day):
        code = main([str(a) for a in ["batch", d / day, "-o", d / "out", "--psf", d / "psf.tif", "--iterations", 2]])
        return code, capsys.readouterr().err

    assert batch("day1")[0] == 0
    first = read_ome_zarr(d / "out" / "cell.zarr")[0]
    code, err = batch("day2")
    assert code == 3 and "cell.zarr holds the result of " in err and "day1" in err and "another output folder" in err
    assert status(d / "out", "day2") == "failed"
    np.testing.assert_array_equal(read_ome_zarr(d / "out" / "cell.zarr")[0], first)
    assert batch("copy")[0] == 0 and status(d / "out", "copy") == "skipped"  # the same image
    (d / "day1" / "cell.tif").unlink()
    assert batch("day2")[0] == 0 and status(d / "out", "day2") == "done"  # day1's file is gone
    assert not np.array_equal(read_ome_zarr(d / "out" / "cell.zarr")[0], first)
    # An earlier version recorded the input relative to its run's folder, unknown here: no conflict.
    write_tiff(d / "day1" / "cell.tif", blurred_beads((12, 24, 24), psf, seed=1), voxel_size=(0.3, 0.1, 0.1))
    record = d / "out" / ".deconv3d-batch" / "cell.tif.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "input": "cell.tif"}))
    monkeypatch.chdir(d / "day2")  # where another cell.tif lies
    assert batch("day1")[0] == 0 and status(d / "out", "day1") == "done"


def test_a_batch_replaces_only_the_outputs_it_wrote(one_image, capsys):
    """Found by the review of batch runs: an output folder holding the user's own img0.tif (or a zarr
    image of theirs) had it replaced by a batch's result of another img0 without a word (exit 0).
    It is now that file's failure, the file untouched; the batch's own outputs are still replaced
    when the settings change, also after a run killed between its record and its output."""
    d = one_image
    mine = d / "mine"
    mine.mkdir()
    write_tiff(mine / "img0.tif", np.ones((4, 8, 8), np.float32))
    kept = (mine / "img0.tif").read_bytes()
    code = main([str(a) for a in ["batch", d / "in", "-o", mine, "--psf", d / "psf.tif", "--iterations", 2,
                                  "--output-format", "tif"]])
    err = capsys.readouterr().err
    assert code == 3 and "img0.tif is already in" in err and "no batch into this folder wrote it" in err
    assert (mine / "img0.tif").read_bytes() == kept
    out = d / "out"
    run_one(d, out, capsys, "--iterations", 2)
    record = out / ".deconv3d-batch" / "img0.tif.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "settings": None}))  # killed mid-file
    assert run_one(d, out, capsys, "--iterations", 3)[0] == "done"
    # A run in the other output format and back: the record names the TIFF, the zarr is still the
    # batch's (every file failed after such a switch, diff review).
    tif = ["batch", d / "in", "-o", out, "--psf", d / "psf.tif", "--iterations", 2, "--output-format", "tif"]
    assert main([str(a) for a in tif]) == 0
    assert run_one(d, out, capsys, "--iterations", 2)[0] == "done"
    # ... but only the formats it wrote: a user's own zarr beside a TIFF-only batch stays theirs.
    tif_only = d / "tif_only"
    assert main([str(a) for a in tif[:3] + [tif_only] + tif[4:]]) == 0
    from deconv3d.omezarr import write_ome_zarr

    write_ome_zarr(tif_only / "img0.zarr", np.ones((4, 8, 8), np.float32))
    capsys.readouterr()
    assert main([str(a) for a in ["batch", d / "in", "-o", tif_only, "--psf", d / "psf.tif", "--iterations", 2]]) == 3
    assert "img0.zarr is already in" in capsys.readouterr().err
    assert read_ome_zarr(tif_only / "img0.zarr")[0].shape == (4, 8, 8)


def test_an_input_of_another_suffix_does_not_replace_a_result(one_image, capsys):
    """Found by the review of batch runs: day1/a.tif, then day2/a.tiff into one output folder (one
    output name, two records) replaced day1's result, and day1's next run called the other file's
    result finished. The second is now refused, as for inputs of one name."""
    d, psf = one_image, gaussian_psf()
    for day, name, seed in (("day1", "a.tif", 1), ("day2", "a.tiff", 2), ("day3", "a.ome.tif", 3)):
        (d / day).mkdir()
        write_tiff(d / day / name, blurred_beads((12, 24, 24), psf, seed=seed), voxel_size=(0.3, 0.1, 0.1))

    def batch(day):
        code = main([str(a) for a in ["batch", d / day, "-o", d / "out", "--psf", d / "psf.tif", "--iterations", 2,
                                      "--pattern", "a.*"]])
        return code, capsys.readouterr().err

    assert batch("day1")[0] == 0
    first = read_ome_zarr(d / "out" / "a.zarr")[0]
    for day in ("day2", "day3"):
        code, err = batch(day)
        assert code == 3 and "a.zarr holds the result of " in err and "day1" in err, err
        np.testing.assert_array_equal(read_ome_zarr(d / "out" / "a.zarr")[0], first)
    assert batch("day1")[0] == 0 and status(d / "out", "day1") == "skipped"


def test_a_killed_run_of_the_other_output_format_leaves_no_temporary(one_image, capsys):
    """Found by the review of batch runs: a --output-format tif run killed mid-file left its hidden
    temporary, which runs writing zarr never removed."""
    d, out = one_image, one_image / "out"
    out.mkdir()
    from deconv3d._paths import host_tag

    stale = out / f".img0.tif.{host_tag()}@999999999-0000abcd.tmp"  # of a writer that is gone
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    run_one(d, out, capsys, "--iterations", 2)
    assert not stale.exists()


def test_the_report_does_not_count_outputs_of_other_settings_as_done(folder, capsys):
    """Found by the review of batch runs: a run with new settings, interrupted (here: narrowed to one
    file), left the earlier run's rows saying "done" for outputs made with the old settings."""
    out = folder / "out"
    base = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif"]
    assert main([str(a) for a in base + ["--iterations", 2]]) == 0
    assert main([str(a) for a in base + ["--iterations", 3, "--pattern", "img0.tif"]]) == 0
    capsys.readouterr()
    report = json.loads((out / "batch_report.json").read_text())
    rows = {os.path.basename(r["file"]): r for r in report["files"]}
    assert rows["img0.tif"]["status"] == "done" and report["summary"]["done"] == 1
    for name in ("img1.tif", "img2.tif"):
        assert rows[name]["status"] == "skipped" and "made with other settings" in rows[name]["reason"]
    assert "settings" not in (out / "batch_report.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert main([str(a) for a in base + ["--iterations", 2]]) == 0  # img1, img2 finished with these: skipped
    capsys.readouterr()
    assert statuses(out) == {"img0.tif": "done", "img1.tif": "skipped", "img2.tif": "skipped"}
    assert "other settings" not in (out / "batch_report.json").read_text()


def test_the_csv_report_starts_with_a_byte_order_mark_and_an_older_report_is_merged(tmp_path):
    """batch_report.csv was UTF-8 without a byte order mark, which Excel on Windows reads as cp1252:
    "PrÃ¤parat", "Âµm". It starts with the mark now; a report an earlier version wrote, without it,
    is still merged, and a reader taking "utf-8-sig" gets the header's first key as 'file'."""
    import codecs
    import csv

    from deconv3d.pipeline.batch_report import REPORT_FIELDS, write_reports

    out = tmp_path / "out"
    out.mkdir()
    old, new = tmp_path / "Präparat 5µm.tif", tmp_path / "b.tif"
    for f in (old, new):
        f.write_bytes(b"")

    def row(path, status):
        return {"file": str(path), "status": status, "seconds": 1.5, "output": str(out / f"{path.stem}.zarr"),
                "reason": "", "warnings": []}
    (out / "batch_report.json").write_text(json.dumps({"summary": {}, "files": [row(old, "done")]}))
    (out / "batch_report.csv").write_text(f"{','.join(REPORT_FIELDS)}\n{old},done,1.5,x,,\n", encoding="utf-8")
    write_reports(out, [row(new, "failed")])
    raw = (out / "batch_report.csv").read_bytes()
    assert raw.startswith(codecs.BOM_UTF8) and raw.count(codecs.BOM_UTF8) == 1
    assert "Präparat 5µm.tif" in raw[len(codecs.BOM_UTF8):].decode("utf-8")
    with open(out / "batch_report.csv", encoding="utf-8-sig", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(REPORT_FIELDS)
    assert [(r["file"], r["status"], r["output"]) for r in table] == [
        (str(old), "done", str(out / "Präparat 5µm.zarr")), (str(new), "failed", str(out / "b.zarr"))]


def test_publishing_refuses_a_folder_that_appeared_during_the_run(tmp_path):
    """The last guard: a folder that is not a zarr image, created at the output path while the
    output was written, is refused and kept, not moved aside and deleted."""
    from deconv3d.errors import InputError
    from deconv3d.pipeline.output import atomic_output

    target = tmp_path / "res.zarr"
    with pytest.raises(InputError, match="not a zarr image"):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "zarr.json").write_text("{}")
            target.mkdir()
            (target / "data.csv").write_text("1,2")
    assert [p.name for p in tmp_path.iterdir()] == ["res.zarr"]  # no temporary left
    assert (target / "data.csv").read_text() == "1,2"
    (target / "data.csv").unlink()
    ours = '{"zarr_format": 3, "node_type": "group", "attributes": {"deconv3d": {"version": "0"}}}'
    with atomic_output(target) as tmp:  # an empty folder is replaced
        tmp.mkdir()
        (tmp / "zarr.json").write_text(ours)
    with atomic_output(target) as tmp:  # and a previous zarr output, as before
        tmp.mkdir()
        (tmp / "zarr.json").write_text(ours.replace('"0"', '"1"'))
    assert '"1"' in (target / "zarr.json").read_text()
    foreign = '{"zarr_format": 3, "node_type": "group", "attributes": {"ome": {}}}'
    (target / "zarr.json").write_text(foreign)  # a zarr image deconv3d did not write: kept
    with pytest.raises(InputError, match="not a zarr image deconv3d wrote"):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "zarr.json").write_text(ours)
    assert (target / "zarr.json").read_text() == foreign


def test_a_report_that_cannot_be_written_is_not_called_nothing_written(folder, capsys, monkeypatch):
    """Found by the review of filesystem edge cases: with the disk full by the time of the report,
    batch said "nothing was written" (exit 2) though its outputs were complete."""
    import errno

    from deconv3d.pipeline import batch_report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch_report, "write_reports", full)
    out = folder / "out"
    code = main([str(a) for a in argv(folder, out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3 and "nothing was written" not in err
    assert "report could not be written" in err and "3 file(s) done" in err and "rerun the same command" in err
    assert "their outputs are complete and kept" in err
    assert all(read_ome_zarr(out / f"{n}.zarr")[0].shape == (12, 24, 24) for n in NAMES)


def test_a_report_that_cannot_be_written_mid_batch_does_not_stop_it(folder, capsys, monkeypatch):
    """Found by the review of the report written as files finish: with a folder named batch_report.json
    (whose write raises an InputError, not an OSError) the batch stopped after its first file, exit 2,
    its other files never run. They run, and the error comes at the end, as before that report existed;
    a file's progress line comes before the report's write. (Such a folder there before the batch
    starts is refused before its first file.)"""
    from deconv3d.pipeline import batch_report

    write = batch_report.write_reports

    def noted(output_dir, rows):
        (out / "batch_report.json").mkdir(exist_ok=True)  # (a folder of that name a user or a tool made meanwhile)
        print("report written")
        return write(output_dir, rows)

    monkeypatch.setattr(batch_report, "write_reports", noted)
    out = folder / "out"
    code = main([str(a) for a in argv(folder, out)])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert code == 2 and "batch_report.json" in captured.err.strip().splitlines()[-1]
    assert lines[0].startswith("[1/3] done") and lines[1] == "report written"
    assert [line.split()[:2] for line in lines if line.startswith("[")] == [[f"[{n}/3]", "done"] for n in (1, 2, 3)]
    assert all(read_ome_zarr(out / f"{n}.zarr")[0].shape == (12, 24, 24) for n in NAMES)


@pytest.mark.parametrize("name", ["batch_report.json", "batch_report.csv"])
def test_a_folder_where_the_report_goes_is_refused_before_the_first_file(folder, capsys, name):
    """Review of file-system semantics: a folder named batch_report.json in the output folder was
    refused only when the report was written, after every file had run (exit 2, as "a directory
    that is not a zarr image deconv3d wrote"); it is refused before any work, naming the report."""
    out = folder / "out"
    (out / name).mkdir(parents=True)
    code = main([str(a) for a in argv(folder, out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (f"deconv3d: error: {out / name} is a folder, where the batch writes its report: move it "
                            "away or write to another output folder\n")
    assert os.listdir(out) == [name] and os.listdir(out / name) == []  # no output, no record, the folder kept


@pytest.mark.parametrize("error, fix", [(OSError(errno.ENOSPC, "No space left on device"), "free disk space"),
                                        (PermissionError(errno.EACCES, "Permission denied"), "check that {} may be "
                                                                                             "written")])
def test_a_report_error_names_the_file_missing_and_keeps_no_output_of_a_batch_that_did_none(folder, capsys,
                                                                                         monkeypatch, error, fix):
    """With 0 files done the line said their outputs "are complete and kept", and it said the report
    "could not be written" where only batch_report.csv was not (batch_report.json was). A report
    refused for permissions (EACCES) was advised "free disk space" too."""
    import csv

    from deconv3d.errors import InputError
    from deconv3d.pipeline import files

    def fails(path, *args, **kwargs):
        raise InputError(f"{path.name} is broken")

    def full(self, rows):
        raise error

    monkeypatch.setattr(files, "deconvolve_file", fails)
    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    out = folder / "out"
    assert main([str(a) for a in argv(folder, out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"deconv3d: error: batch_report.csv could not be written in {out} ({error.strerror}) "
                   f"(batch_report.json was); 0 file(s) done, 0 skipped, 3 failed: {fix.format(out)}, then rerun the "
                   "same command to write the report")
    assert statuses(out) == {f"{n}.tif": "failed" for n in NAMES} and not (out / "batch_report.csv").exists()


def test_a_failed_file_s_os_error_reads_as_a_sentence(folder, capsys, monkeypatch):
    import errno

    from deconv3d.pipeline import files

    deconvolve_file = files.deconvolve_file

    def img1_on_a_full_disk(path, output, *args, **kwargs):
        if path.name == "img1.tif":
            raise OSError(errno.ENOSPC, "No space left on device", str(output))
        return deconvolve_file(path, output, *args, **kwargs)

    monkeypatch.setattr(files, "deconvolve_file", img1_on_a_full_disk)
    out = folder / "out"
    assert main([str(a) for a in argv(folder, out)]) == 3
    capsys.readouterr()
    rows = {os.path.basename(r["file"]): r for r in json.loads((out / "batch_report.json").read_text())["files"]}
    assert rows["img1.tif"]["reason"] == f"{out / 'img1.zarr'}: No space left on device: free disk space, then rerun " \
                                         "the batch"
    assert [rows[n]["status"] for n in ("img0.tif", "img2.tif")] == ["done", "done"]


def test_a_completion_record_that_cannot_be_written_fails_that_file_and_the_batch_goes_on(folder, capsys,
                                                                                          monkeypatch):
    """The disk filled while img0's completion record was saved: the batch stopped with a false
    "nothing was written" (exit 2), img1 and img2 never tried and no report. That file fails, the
    others are done, and its record stays unfinished (a rerun redoes its output)."""
    import errno

    from deconv3d.pipeline import batch, batch_file_run

    write_json_atomic = batch_file_run.write_json_atomic

    def full_at_img0_s_record(path, payload):
        if path.name == "img0.tif.json" and payload.get("finished"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_json_atomic(path, payload)

    monkeypatch.setattr(batch_file_run, "write_json_atomic", full_at_img0_s_record)
    out = folder / "out"
    assert main([str(a) for a in argv(folder, out)]) == 3
    assert "nothing was written" not in capsys.readouterr().err
    assert statuses(out) == {"img0.tif": "failed", "img1.tif": "done", "img2.tif": "done"}
    record = json.loads((out / batch.RECORD_DIR / "img0.tif.json").read_text())
    assert record["output"] == "img0.zarr" and record["settings"] is None  # unfinished: a rerun redoes it


def test_a_finished_file_whose_record_cannot_be_refreshed_is_still_skipped(tmp_path, capsys, monkeypatch):
    """A touched input (same content) has its completion record refreshed; with the disk full then,
    that write ended the whole batch (exit 2, "nothing was written"), the other files never looked
    at and no report. The file stays finished (its output is complete) and the batch goes on."""
    import errno

    from deconv3d.pipeline import completion_records

    (tmp_path / "in").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((8, 16, 16), gaussian_psf(), seed=i),
                   voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    out = tmp_path / "out"
    command = [str(a) for a in ["batch", tmp_path / "in", "-o", out, "--psf", tmp_path / "psf.tif", "--iterations", 2]]
    assert main(command) == 0
    touched = tmp_path / "in" / "img0.tif"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    write_json_atomic = completion_records.write_json_atomic

    def full_at_records(path, payload):
        if path.parent.name == completion_records.RECORD_DIR and payload.get("finished"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_json_atomic(path, payload)

    monkeypatch.setattr(completion_records, "write_json_atomic", full_at_records)
    (out / "batch_report.json").unlink()
    assert main(command) == 0
    assert "nothing was written" not in capsys.readouterr().err
    assert statuses(out) == {"img0.tif": "skipped", "img1.tif": "skipped"}


def test_a_batch_leaves_out_the_psf_kept_among_its_images_and_names_a_file_given_as_the_folder(folder, capsys):
    """The PSF kept in the input folder was deconvolved as one more image (review of filesystem
    edge cases); a file given as the input folder was called "not found"."""
    (folder / "in" / "psf.tif").write_bytes((folder / "psf.tif").read_bytes())
    out = folder / "out"
    args = [str(a) for a in argv(folder, out)]
    args[args.index("--psf") + 1] = str(folder / "in" / "psf.tif")
    assert main(args) == 0
    capsys.readouterr()
    assert statuses(out) == {f"{n}.tif": "done" for n in NAMES} and not (out / "psf.zarr").exists()
    args[1] = str(folder / "in" / "img0.tif")
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "img0.tif is a file: batch takes a folder" in err and "deconv3d deconvolve" in err


def test_a_folder_that_may_not_be_replaced_is_refused_before_any_work(tmp_path):
    """run_chunked onto a zarr folder deconv3d did not write (an earlier API output without the
    marker, another tool's image) did all the work and then refused to publish it."""
    import numpy as np
    import zarr

    from deconv3d.errors import InputError
    from deconv3d.pipeline import RichardsonLucyBlock, run_chunked

    target = tmp_path / "out.zarr"
    zarr.open_group(str(target), mode="w-", zarr_format=3).create_array("0", data=np.ones((2, 2), np.float32))
    calls = []

    class Counting(RichardsonLucyBlock):
        def __call__(self, block):
            calls.append(1)
            return super().__call__(block)

    psf = np.ones((3, 3, 3), np.float32) / 27
    with pytest.raises(InputError, match="not a zarr image deconv3d wrote"):
        run_chunked(np.ones((8, 8, 8), np.float32), Counting(psf, iterations=1), target, chunks=(4, 8, 8))
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


class _Killed(BaseException):
    """A kill, as the run sees it: nothing of it handles this (not KeyboardInterrupt, not Exception),
    so no end-of-batch or interrupted-batch report is written."""


def test_a_batch_killed_after_a_file_leaves_a_report_of_it_with_its_warnings(tmp_path, capsys, monkeypatch):
    """Found by the cluster review: the report was written when the batch ended only, so a batch killed
    outright (SIGKILL at a time limit, out of memory) left none, and its rerun listed the file it had
    finished as skipped in 0.0 s with no warnings (the killed run's were lost)."""
    from deconv3d.pipeline import files

    (tmp_path / "in").mkdir()
    for i, name in enumerate(("a", "b")):  # no voxel size recorded: each file draws a warning
        write_tiff(tmp_path / "in" / f"{name}.tif", blurred_beads((8, 16, 16), gaussian_psf(), seed=i))
    write_tiff(tmp_path / "psf.tif", gaussian_psf())
    out, real = tmp_path / "out", files.deconvolve_file

    def killed_at_b(path, *args, **kwargs):
        if path.name == "b.tif":
            raise _Killed
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "deconvolve_file", killed_at_b)
    command = [str(a) for a in ["batch", tmp_path / "in", "-o", out, "--psf", tmp_path / "psf.tif", "--iterations", 1]]
    with pytest.raises(_Killed):
        main(command)
    (row,) = json.loads((out / "batch_report.json").read_text())["files"]
    assert (os.path.basename(row["file"]), row["status"]) == ("a.tif", "done") and row["seconds"] > 0
    assert len(row["warnings"]) == 1 and "voxel size" in row["warnings"][0]
    assert row["warnings"][0].startswith("neither the image nor the PSF file")  # (the row names the file)
    assert "voxel size" in (out / "batch_report.csv").read_text(encoding="utf-8-sig")

    monkeypatch.setattr(files, "deconvolve_file", real)
    assert main(command) == 0
    capsys.readouterr()
    rows = {os.path.basename(r["file"]): r for r in json.loads((out / "batch_report.json").read_text())["files"]}
    assert {name: r["status"] for name, r in rows.items()} == {"a.tif": "skipped", "b.tif": "done"}
    assert rows["a.tif"]["warnings"] == row["warnings"]


def test_the_report_as_files_finish_leaves_out_the_file_in_progress_and_spaces_its_writes(tmp_path, monkeypatch):
    """Written after every file, a report of 3000 rows (0.2 s to merge and write) cost a batch of small
    files minutes: writes are spaced to take at most REPORT_SHARE of the time (a clock of our own here)."""
    import types

    from deconv3d.pipeline import batch_report

    clock, written = [0.0], []

    def write_reports(output_dir, rows):
        written.append((clock[0], [r["file"] for r in rows]))
        clock[0] += 1.0  # each write takes a second

    monkeypatch.setattr(batch_report, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(batch_report, "write_reports", write_reports)
    report = batch_report.report_as_files_finish(tmp_path,
                                                 fill=lambda rows: [{**r, "file": r["file"].upper()} for r in rows])
    rows = [{"file": "a", "status": "done"}, {"file": "b", "status": ""}]
    report(rows)  # at 0 s: written (b, in progress, is not), the next write due at 1 / REPORT_SHARE = 20 s
    for now in (5.0, 19.9, 20.0):
        clock[0] = now
        report(rows)
    assert batch_report.REPORT_SHARE == 0.05 and written == [(0.0, ["A"]), (20.0, ["A"])]


# Runs the CLI with the report written as files finish at most once a day (its writes are spaced to a
# share of the batch's time: a slow write, 0.2 s for 3000 rows, holds the next one back for seconds).
LAGGING_REPORT_CLI = """
import sys
import deconv3d.pipeline.batch_report as batch_report
batch_report.REPORT_SHARE = 1e-9
from deconv3d.cli import main
sys.argv = ["deconv3d", *sys.argv[1:]]
sys.exit(main())
"""


def test_a_batch_whose_output_pipe_closes_ends_quietly_and_reports_what_it_finished(folder):
    """Found by the reviews of the progress-then-report order: ``deconv3d batch ... | head`` stopped
    at its next progress line with "internal error: BrokenPipeError", exit 1, and the file it had just
    finished was missing from the report (also where the report written as files finish lagged). It
    ends as a program a SIGPIPE ends (141, no line), and the report lists the files it finished."""
    out = folder / "out"
    proc = subprocess.Popen([sys.executable, "-c", LAGGING_REPORT_CLI, *map(str, argv(folder, out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=folder)
    first = proc.stdout.readline().decode()
    proc.stdout.close()  # as "| head -1" does: the next progress line (img1's) finds no reader
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith("[1/3] done") and "internal error" not in err and "Traceback" not in err, err
    rows = json.loads((out / "batch_report.json").read_text(encoding="utf-8"))["files"]
    assert [(os.path.basename(r["file"]), r["status"]) for r in rows] == [("img0.tif", "done"), ("img1.tif", "done")]


def test_a_batch_whose_output_socket_closes_ends_quietly(folder):
    """Standard output a socket whose peer has gone (sshd without a terminal): poll says POLLHUP,
    not a pipe's POLLERR, and the run ended as "internal error: BrokenPipeError", exit 1."""
    import socket

    ours, theirs = socket.socketpair()
    theirs.close()
    try:
        proc = subprocess.run([sys.executable, "-m", "deconv3d", *map(str, argv(folder, folder / "out"))],
                              stdout=ours.fileno(), stderr=subprocess.PIPE, cwd=folder, timeout=120)
    finally:
        ours.close()
    assert proc.returncode == 141 and b"internal error" not in proc.stderr, proc.stderr.decode()
