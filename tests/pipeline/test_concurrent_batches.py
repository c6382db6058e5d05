"""Several batch runs over one output folder (found by the review of concurrent runs): a Slurm
array job launching the same command N times computed every file N times, the last report
written hid the others' files and failures, and a relaunch with other settings mixed its
outputs into the first run's."""

import json
import os
import subprocess
import sys
import time

import pytest

from cli_helpers import assert_one_line_error, run
from deconv3d.io import write_tiff
from deconv3d.pipeline.batch import RECORD_DIR, make_settings
from deconv3d.pipeline.locks import BUSY, file_lock

from .conftest import blurred_beads, gaussian_psf
from .test_batch_resume import SLOW_CLI

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock locks")


@pytest.fixture
def folder(tmp_path):
    psf = gaussian_psf()
    (tmp_path / "in").mkdir()
    for i in range(3):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((12, 24, 24), psf, seed=i),
                   voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def _report(out):
    return {os.path.basename(r["file"]): r for r in json.loads((out / "batch_report.json").read_text())["files"]}


def test_a_file_another_live_run_holds_is_left_to_it_and_keeps_its_row(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    argv = ["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2"]
    (folder / "out" / RECORD_DIR).mkdir(parents=True)
    # the other run's report so far: it failed img1 (its row must survive this run's "busy" one)
    other_row = {"file": "in/img1.tif", "status": "failed", "seconds": 1.0, "output": "out/img1.zarr",
                 "reason": "cannot read in/img1.tif"}
    (folder / "out" / "batch_report.json").write_text(json.dumps({"summary": {}, "files": [other_row]}))
    with file_lock(folder / "out" / RECORD_DIR / "img1.zarr.lock") as held:  # the other run, on img1
        assert held is True
        code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "1 skipped" in out and not (folder / "out" / "img1.zarr").exists()
    report = _report(folder / "out")
    assert [report[f"img{i}.tif"]["status"] for i in (0, 2)] == ["done", "done"]
    assert report["img1.tif"]["status"] == "failed" and report["img1.tif"]["reason"] == other_row["reason"]
    code, out, err = run(argv, capsys)  # the lock released: a rerun takes it
    assert code == 0 and (folder / "out" / "img1.zarr").exists() and _report(folder / "out")["img1.tif"]["status"] \
        == "done"


def test_a_busy_file_without_an_earlier_row_is_reported_as_left_to_another_run(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "out" / RECORD_DIR).mkdir(parents=True)
    with file_lock(folder / "out" / RECORD_DIR / "img0.zarr.lock"):
        code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2"], capsys)
    assert code == 0, err
    row = _report(folder / "out")["img0.tif"]
    assert row["status"] == "skipped" and row["reason"] == BUSY


def test_a_run_with_other_settings_is_refused_while_one_runs_and_one_with_the_same_is_not(folder, capsys,
                                                                                          monkeypatch):
    monkeypatch.chdir(folder)
    record_dir = folder / "out" / RECORD_DIR
    record_dir.mkdir(parents=True)
    running = make_settings({"psf": "psf.tif", "iterations": 2}).fingerprint()
    with file_lock(record_dir / f"settings-{running}.runlock", shared=True):  # a live run, 2 iterations
        code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "5"], capsys)
        assert_one_line_error(code, err, "another batch with other settings", "another output folder")
        assert not list((folder / "out").glob("*.zarr"))
        code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2"], capsys)
        assert code == 0, err
    code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "5"], capsys)
    assert code == 0, err  # that run has ended: its settings file alone refuses nothing


def test_two_runs_launched_together_share_the_files(folder):
    """Two real processes (each block slowed so that they overlap): every file is computed once,
    and the folder's report, merged by both, shows every file done."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", SLOW_CLI, "0.3", "batch", str(folder / "in"), "-o", str(folder / "out"),
            "--psf", str(folder / "psf.tif"), "--iterations", "2", "--chunks", "12", "12", "12"]
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.2)
    runs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [r.communicate(timeout=240) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    done = [int(out.split("batch: ")[1].split(" done")[0]) for out, _ in outputs]
    assert sum(done) == 3, outputs  # each file once (without the claims: 6)
    assert {r["status"] for r in _report(folder / "out").values()} == {"done"}


def test_outputs_published_at_once_by_several_writers_end_as_one_complete_output(tmp_path):
    """Moving the old output aside and renaming the new one in were two steps: a writer publishing
    the same .zarr in between failed with ENOTEMPTY or ENOENT (73-96 of 3000 in the review's
    stress run) and left the moved-aside output behind."""
    import threading

    from deconv3d.pipeline.output import atomic_output

    target, errors = tmp_path / "out.zarr", []

    def writer(n):
        for i in range(150):
            try:
                with atomic_output(target) as tmp:
                    tmp.mkdir()
                    (tmp / "zarr.json").write_text(f'{{"attributes": {{"deconv3d": {{}}}}, "tag": "{n}-{i}"}}')
            except Exception as exc:  # noqa: BLE001 - any failure (an InputError of a folder moved aside meanwhile too)
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]  # nothing moved aside left behind
    assert json.loads((target / "zarr.json").read_text())["tag"].endswith("-149")  # one writer's last output, whole


def test_a_run_with_another_memory_limit_is_refused_while_one_runs(folder, capsys, monkeypatch):
    """Runs let in with another memory limit (left out of the guard's comparison) did not keep
    each other's outputs, whose records hold the limit: every file was computed by both, each
    replacing the other's output (found by the second review of this session's diff). The guard
    compares what the records compare, and says so."""
    monkeypatch.chdir(folder)
    record_dir = folder / "out" / RECORD_DIR
    record_dir.mkdir(parents=True)
    running = make_settings({"psf": "psf.tif", "iterations": 2, "memory_limit": "4GB"}).fingerprint()
    with file_lock(record_dir / f"settings-{running}.runlock", shared=True):
        code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2",
                            "--memory-limit", "8GB"], capsys)
        assert_one_line_error(code, err, "other settings", "memory limit", "give the same options")
        code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2",
                            "--memory-limit", "4GB"], capsys)
        assert code == 0, err


def test_a_run_testing_another_s_lock_for_a_moment_is_not_taken_for_a_live_run(folder, capsys, monkeypatch):
    """Starting runs test the other settings' lock files by taking them for a moment: two runs
    with the same settings starting together refused each other now and then (1772 of 100000
    in the review's loop). A lock held briefly is waited out."""
    import threading

    monkeypatch.chdir(folder)
    record_dir = folder / "out" / RECORD_DIR
    record_dir.mkdir(parents=True)
    old = record_dir / "settings-0000000000000000.runlock"  # an earlier batch's, now free
    release = threading.Event()

    def tester():  # another starting run, testing it for a moment
        with file_lock(old):
            release.wait(0.3)

    thread = threading.Thread(target=tester)
    thread.start()
    time.sleep(0.05)
    code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2"], capsys)
    thread.join()
    assert code == 0, err


def test_the_report_matches_rows_by_input_and_drops_deleted_inputs(folder, capsys, monkeypatch):
    """Runs naming the folder relatively and absolutely doubled every row; a deleted input's old
    failure stayed in the report (its summary 'failed: 1' after a run with exit 0); a file another
    run finished while this one ran had its 'done' row replaced by 'skipped' (found by the review
    of this session's diff)."""
    from deconv3d.pipeline.batch import write_reports

    monkeypatch.chdir(folder)
    argv = ["-o", "out", "--psf", "psf.tif", "--iterations", "2"]
    assert run(["batch", "in", *argv], capsys)[0] == 0
    assert run(["batch", str(folder / "in"), *argv[2:], "-o", str(folder / "out")], capsys)[0] == 0
    rows = json.loads((folder / "out" / "batch_report.json").read_text())["files"]
    assert sorted(os.path.basename(r["file"]) for r in rows) == ["img0.tif", "img1.tif", "img2.tif"]
    assert all(os.path.isabs(r["file"]) and os.path.isabs(r["output"]) for r in rows)
    gone = {"file": str(folder / "in" / "gone.tif"), "status": "failed", "seconds": 0.1,
            "output": str(folder / "out" / "gone.zarr"), "reason": "bad"}
    legacy = {**gone, "file": "elsewhere/old.tif"}  # relative, from another directory: cannot be checked
    other = {**_report(folder / "out")["img1.tif"], "status": "done", "seconds": 7.5}
    write_reports(folder / "out", [gone, legacy, other])
    mine = {"file": str(folder / "in" / "img1.tif"), "status": "skipped", "seconds": 0.0,
            "output": str(folder / "out" / "img1.tif"), "reason": "finished by another run"}  # (as .tif)
    write_reports(folder / "out", [mine])
    report = _report(folder / "out")
    assert "gone.tif" not in report and "old.tif" in report and report["img1.tif"]["seconds"] == 7.5
    assert len(json.loads((folder / "out" / "batch_report.json").read_text())["files"]) == 4  # img0-2, old


def test_a_batch_lists_its_output_folder_once_to_sweep_leftovers(folder, capsys, monkeypatch):
    """Each file's sweep listed the whole output folder: 6.3 s over 2000 files, growing with their
    square (found by the scale review). The folder is swept once, before the first file."""
    from deconv3d import _paths
    from deconv3d.pipeline import batch as batch_module

    monkeypatch.chdir(folder)
    (folder / "out").mkdir()
    left = folder / "out" / f".img1.zarr.{_paths.host_tag()}@999999999-0123abcd.tmp"  # a killed run's
    (left / "0").mkdir(parents=True)
    theirs = [folder / "out" / ".notes.tmp", folder / "out" / f".other.zarr.{_paths.host_tag()}@999999999-0123abcd.tmp"]
    for entry in theirs:  # not a temporary of this batch's outputs: left alone
        entry.write_text("keep")
    per_output, per_folder = [], []
    real_in = batch_module.remove_stale_temporaries_in
    for module in (_paths, __import__("deconv3d.pipeline.output", fromlist=["x"])):
        monkeypatch.setattr(module, "remove_stale_temporaries", lambda path: per_output.append(path) or [])
    monkeypatch.setattr(batch_module, "remove_stale_temporaries_in",
                        lambda f, names: per_folder.append(f) or real_in(f, names))
    code, _, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "2"], capsys)
    assert code == 0, err
    assert per_output == [] and len(per_folder) == 1 and not left.exists()
    assert all(entry.read_text() == "keep" for entry in theirs)


def _two_folders(tmp_path, theirs, mine):
    """Folders ``day1`` (the other run's: ``theirs``) and ``day2`` (``a2.tif`` and ``mine``), with
    contents that differ: inputs named to write one output, ``img0.zarr``."""
    for folder, names in (("day1", [theirs]), ("day2", ["a2.tif", mine])):
        (tmp_path / folder).mkdir()
        for seed, name in enumerate(names):
            (tmp_path / folder / name).write_bytes(bytes([seed + len(folder + name)]) * 64)
    return tmp_path / "day1" / theirs, tmp_path / "day2"


def _write_output(path, output, input_sha256):
    output.mkdir()
    (output / "zarr.json").write_text(json.dumps({"input": str(path)}))


@pytest.mark.parametrize("mine", ["img0.tif", "img0.tiff"])
@pytest.mark.parametrize("state", ["writing", "finished"])
def test_an_output_another_run_s_input_takes_during_the_batch_fails_the_file(folder, mine, state):
    """Two batches of folders holding img0.tif and img0.tiff (or img0.tif twice) into one output
    folder both wrote img0.zarr, each reported done (the claim was named by the input, the owners
    of the outputs read once at the start), or the second said "in progress in another run", exit 0
    (found by the review of concurrent runs). As run one after the other, the second fails its file:
    img0.zarr holds the other input's result."""
    import contextlib

    from deconv3d.pipeline.batch import run_batch
    from deconv3d.pipeline.locks import claim, note_writer

    theirs, day2 = _two_folders(folder, "img0.tif", mine)
    out, settings = folder / "out", make_settings({"psf": str(folder / "psf.tif"), "iterations": 2})
    other_run = contextlib.ExitStack()

    def process_one(path, output, input_sha256):
        if path.name == "a2.tif":  # meanwhile the other run (day1) takes img0.zarr
            assert other_run.enter_context(claim(out / RECORD_DIR, out / "img0.zarr", theirs)) is True
            note_writer(out / RECORD_DIR, out / "img0.zarr", "img0.tif.json")  # (as its run notes its record)
            record = {"input": str(theirs), "output": "img0.zarr", "outputs": ["img0.zarr"], "settings": None}
            if state == "finished":
                other_run.close()
                _write_output(theirs, out / "img0.zarr", "")
                record.update(settings=settings.fingerprint(), input_sha256="0" * 64)
            (out / RECORD_DIR / "img0.tif.json").write_text(json.dumps(record))
        _write_output(path, output, input_sha256)

    with other_run:
        rows = {os.path.basename(r["file"]): r for r in run_batch(day2, out, settings, process_one)}
    assert rows["a2.tif"]["status"] == "done"
    assert rows[mine]["status"] == "failed", rows[mine]
    assert f"img0.zarr holds the result of {theirs}" in rows[mine]["reason"]
    assert json.loads((out / RECORD_DIR / "img0.tif.json").read_text())["input"] == str(theirs)
    assert not (out / "img0.zarr").exists() or json.loads((out / "img0.zarr" / "zarr.json").read_text()) \
        == {"input": str(theirs)}


def test_a_batch_lists_its_record_folder_as_often_for_many_files_as_for_few(tmp_path, monkeypatch):
    """Each file not finished listed the whole record folder for the records naming its output:
    3000 files' bookkeeping went from 6.3 s to 17-22 s, growing with their square (found by the
    review of concurrent runs). The folder is listed once a batch; the records that name an output
    are then opened by name (those a run writes meanwhile, as its claim notes them)."""
    from deconv3d.pipeline.batch import run_batch

    real_scandir, real_listdir = os.scandir, os.listdir
    listings = []
    monkeypatch.setattr(os, "scandir", lambda p=".": listings.append(os.fspath(p)) or real_scandir(p))
    monkeypatch.setattr(os, "listdir", lambda p=".": listings.append(os.fspath(p)) or real_listdir(p))
    (tmp_path / "psf.tif").write_bytes(b"psf")
    settings = make_settings({"psf": str(tmp_path / "psf.tif"), "iterations": 2})
    counts = {}
    for files in (2, 6):
        (tmp_path / f"in{files}").mkdir()
        for i in range(files):
            (tmp_path / f"in{files}" / f"img{i}.tif").write_bytes(bytes([i]) * 64)
        out = tmp_path / f"out{files}"
        listings.clear()
        rows = run_batch(tmp_path / f"in{files}", out, settings, _write_output)
        assert [r["status"] for r in rows] == ["done"] * files
        counts[files] = listings.count(os.fspath(out / RECORD_DIR))
    assert counts[2] == counts[6] <= 2, counts


def test_an_output_another_run_is_writing_is_left_to_it_whatever_the_input_s_name(folder):
    """The claim is the output's, case-folded: a run writing img0.zarr for day1/img0.tif (its record
    not written yet) kept day3/IMG0.TIFF, which writes it too, from writing it at the same time."""
    from deconv3d.pipeline.batch import run_batch

    _, day2 = _two_folders(folder, "img0.tif", "IMG0.TIFF")
    out, written = folder / "out", []
    (out / RECORD_DIR).mkdir(parents=True)
    with file_lock(out / RECORD_DIR / "img0.zarr.lock") as held:
        assert held is True
        rows = run_batch(day2, out, make_settings({"psf": str(folder / "psf.tif"), "iterations": 2}),
                         lambda path, output, sha: written.append(path.name) or _write_output(path, output, sha))
    assert written == ["a2.tif"]
    assert {os.path.basename(r["file"]): (r["status"], r["reason"]) for r in rows} == {"a2.tif": ("done", ""),
                                                                                     "IMG0.TIFF": ("skipped", BUSY)}
    assert not (out / "IMG0.zarr").exists()


def test_a_file_a_run_of_an_earlier_version_holds_is_left_to_it(folder):
    """Earlier versions locked a file by its input's name (img1.tif.lock), this one by its output's:
    a run of each in one folder (a job array whose environment was upgraded midway) processed the
    same file. The claim holds the input's lock too, after the output's, and releases both."""
    from deconv3d.pipeline.batch import run_batch
    from deconv3d.pipeline.locks import claim

    out, written = folder / "out", []
    (out / RECORD_DIR).mkdir(parents=True)
    settings = make_settings({"psf": str(folder / "psf.tif"), "iterations": 2})
    with file_lock(out / RECORD_DIR / "img1.tif.lock") as held:  # the earlier version's run, on img1
        assert held is True
        rows = run_batch(folder / "in", out, settings,
                         lambda path, output, sha: written.append(path.name) or _write_output(path, output, sha))
    assert written == ["img0.tif", "img2.tif"]
    assert [(r["status"], r["reason"]) for r in rows] == [("done", ""), ("skipped", BUSY), ("done", "")]
    assert not (out / "img1.zarr").exists()

    with claim(out / RECORD_DIR, out / "img1.zarr", folder / "in" / "img1.tif") as mine:  # this version's run
        assert mine is True
        with file_lock(out / RECORD_DIR / "img1.tif.lock") as theirs:
            assert theirs is False  # an earlier version's run skips the file
    for name in ("img1.zarr.lock", "img1.tif.lock"):  # both released
        with file_lock(out / RECORD_DIR / name) as free:
            assert free is True
    with claim(out / RECORD_DIR, out / "img1.tif", folder / "in" / "img1.tif") as mine:  # one lock file for both
        assert mine is True


def test_a_file_whose_run_was_killed_is_done_before_the_batch_ends(folder):
    """A run holding img0 was killed while another ran: the other skipped img0 as "in progress in
    another run", reported 0 failed with exit 0, and left no img0.zarr (found by the review of
    concurrent runs). The files skipped as busy are tried again after the last one: a free lock's
    is processed (the killed run's temporary removed first)."""
    import contextlib

    from deconv3d import _paths
    from deconv3d.pipeline.batch import run_batch
    from deconv3d.pipeline.locks import claim

    out, settings = folder / "out", make_settings({"psf": str(folder / "psf.tif"), "iterations": 2})
    (out / RECORD_DIR).mkdir(parents=True)
    killed, seen = contextlib.ExitStack(), []
    left = out / f".img0.zarr.{_paths.host_tag()}@999999999-0123abcd.tmp"  # what the killed run was writing

    def process_one(path, output, input_sha256):
        if path.name == "img1.tif":  # the run holding img0 is killed
            left.mkdir()
            killed.close()
        _write_output(path, output, input_sha256)

    with killed:
        assert killed.enter_context(claim(out / RECORD_DIR, out / "img0.zarr", folder / "in" / "img0.tif")) is True
        rows = run_batch(folder / "in", out, settings, process_one,
                         progress=lambda n, total, row: seen.append((n, row["status"], row["reason"])))
    assert [r["status"] for r in rows] == ["done"] * 3
    assert seen == [(1, "skipped", BUSY), (2, "done", ""), (3, "done", ""), (1, "done", "")]
    assert (out / "img0.zarr" / "zarr.json").exists() and not left.exists()


def test_each_file_s_record_holds_the_psf_its_run_read(folder):
    """A PSF (or model) replaced during a batch: each file's run loads it again, so the later outputs
    were made with the new one, yet every record held the first one's fingerprint, and a rerun with
    the first one skipped them all (found by the review of concurrent runs). Each record holds the
    fingerprint of the file as its run read it; one replaced during a file's run fails that file."""
    from deconv3d.pipeline.batch import run_batch

    psf, out = folder / "psf.tif", folder / "out"
    settings = make_settings({"psf": str(psf), "iterations": 2})
    first, first_hash = psf.read_bytes(), settings.fingerprint()
    write_tiff(folder / "new.tif", gaussian_psf(sigma=(1.5, 1.2, 1.2)), voxel_size=(0.3, 0.1, 0.1))
    new = (folder / "new.tif").read_bytes()
    psf.write_bytes(new)
    new_hash = settings.fingerprint()
    psf.write_bytes(first)
    assert new_hash != first_hash
    read = {}

    def process_one(path, output, input_sha256):
        read[path.name] = psf.read_bytes()  # what the run loads
        if path.name == "img2.tif":  # the first again, while this one runs
            (folder / "first.tif").write_bytes(first)
            (folder / "first.tif").replace(psf)
        _write_output(path, output, input_sha256)

    def progress(number, total, row):
        if number == 1:  # a new PSF, once img0 is done
            (folder / "new.tif").replace(psf)

    rows = run_batch(folder / "in", out, settings, process_one, progress=progress)
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert rows[2]["reason"] == (f"{psf} changed while the image was processed (which version the run read is not "
                                 "known): rerun the batch to redo it with the file as it is now")  # (the row names it)
    records = {i: json.loads((out / RECORD_DIR / f"img{i}.tif.json").read_text())["settings"] for i in range(3)}
    assert read["img0.tif"] == first and read["img1.tif"] == new
    assert records == {0: first_hash, 1: new_hash, 2: None}  # (img2: unfinished, redone by a rerun)
    assert [r["settings"] for r in rows[:2]] == [first_hash, new_hash]


def test_a_psf_or_model_file_is_hashed_again_only_when_it_changed(tmp_path, monkeypatch):
    """The batch hashes the PSF and model files around every input's run; a file whose status
    did not change is not read again, and one rewritten in place or replaced is."""
    import hashlib
    import os
    import time
    from types import SimpleNamespace

    from deconv3d.omezarr import writing

    path = tmp_path / "model.ckpt"
    path.write_bytes(b"a" * 1000)
    calls = []
    real = writing.file_sha256
    monkeypatch.setattr(writing, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    later = SimpleNamespace(time_ns=lambda: time.time_ns() + 10**10)
    monkeypatch.setattr(writing, "time", later)  # (hashed 10 s after its last change: a settled file)

    first = writing.unchanged_file_sha256(path)
    assert writing.unchanged_file_sha256(path) == first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(calls) == 1  # the second call used the kept hash

    with open(path, "r+b") as fh:  # rewritten in place, same size: new modification time
        fh.write(b"b" * 1000)
    stamp = os.stat(path).st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))  # (coarse file-system clocks: make the change show)
    assert writing.unchanged_file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()

    other = tmp_path / "new.ckpt"
    other.write_bytes(b"c" * 1000)
    os.utime(other, ns=(stamp, stamp))  # same size and modification time: another inode
    os.replace(other, path)
    assert writing.unchanged_file_sha256(path) == hashlib.sha256(b"c" * 1000).hexdigest()
    assert len(calls) == 3


def test_a_file_changed_within_two_seconds_of_its_hashing_is_hashed_again(tmp_path, monkeypatch):
    """A coarse file-system clock (ext4 before Linux 6.13, ramfs, network file systems) can leave a
    same-size rewrite in place with the times the file had: a hash is kept only for a file whose
    times were 2 s older than the moment it was hashed (git's racily-clean rule)."""
    import hashlib
    import os
    import time
    from types import SimpleNamespace

    from deconv3d.omezarr import writing

    path = tmp_path / "psf.bin"
    path.write_bytes(b"a" * 4096)
    times = {"ns": time.time_ns()}  # the file's times as a coarse clock shows them, now
    real_stat = os.stat

    def coarse_stat(p, *args, **kwargs):
        st = real_stat(p, *args, **kwargs)
        if os.fspath(p) != os.fspath(path):
            return st
        fields = ("st_mode", "st_dev", "st_ino", "st_size")
        return SimpleNamespace(**{f: getattr(st, f) for f in fields}, st_mtime_ns=times["ns"], st_ctime_ns=times["ns"])

    monkeypatch.setattr(os, "stat", coarse_stat)
    calls = []
    real = writing.file_sha256
    monkeypatch.setattr(writing, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    assert writing.unchanged_file_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    with open(path, "r+b") as fh:  # rewritten in place within the same tick: the same status
        fh.write(b"b" * 4096)
    assert writing.unchanged_file_sha256(path) == hashlib.sha256(b"b" * 4096).hexdigest()
    assert len(calls) == 2

    times["ns"] -= 3 * 10**9  # times 3 s older than the hashing: the hash is kept
    assert writing.unchanged_file_sha256(path) == writing.unchanged_file_sha256(path)
    assert len(calls) == 3


def test_a_file_s_kept_hash_serves_its_other_names_and_goes_with_a_same_size_rewrite(tmp_path, monkeypatch):
    """The kept hash is keyed by deconv3d._paths.file_identity, as the batch's kept PSFs are: a
    symbolic link to the file is the same file (hashed once), and a same-size rewrite in place,
    through either name, is hashed again."""
    import hashlib
    import os
    import time
    from types import SimpleNamespace

    from deconv3d.omezarr import writing

    path, link = tmp_path / "psf.bin", tmp_path / "link.bin"
    path.write_bytes(b"a" * 512)
    link.symlink_to(path)
    calls = []
    real = writing.file_sha256
    monkeypatch.setattr(writing, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    monkeypatch.setattr(writing, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + 10**10))  # (settled)
    assert writing.unchanged_file_sha256(path) == writing.unchanged_file_sha256(link) == \
        hashlib.sha256(b"a" * 512).hexdigest()
    assert calls == [path]
    with open(path, "r+b") as fh:
        fh.write(b"b" * 512)
    stamp = os.stat(path).st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))  # (coarse file-system clocks: make the change show)
    assert writing.unchanged_file_sha256(link) == hashlib.sha256(b"b" * 512).hexdigest()
    assert len(calls) == 2
