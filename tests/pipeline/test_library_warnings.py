"""The library's warnings are Python warnings located at the caller (a GUI or a logging handler
can catch them), naming keyword arguments; the command line prints them as its own lines, naming
its options, as before."""

import os
import warnings

import numpy as np
import pytest

from deconv3d.io import write_tiff
from deconv3d.pipeline.files import deconvolve_file
from deconv3d.pipeline.settings import Settings

from .conftest import blurred_beads, gaussian_psf


@pytest.fixture
def bare(tmp_path):
    """An image that carries no voxel size, and a calibrated PSF."""
    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(tmp_path / "bare.tif", blurred_beads((8, 16, 16), psf, seed=1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def test_deconvolve_file_warns_with_python_warnings_at_the_caller_naming_the_keyword(bare, capfd):
    """It printed "deconv3d: warning: ... (pass --voxel-size to set it)" to stderr, which
    warnings.catch_warnings could not capture, naming an option an API user has not got."""
    from deconv3d.errors import OptionWarning

    with pytest.warns(RuntimeWarning, match=r"carries no voxel size; assuming the PSF's .*pass voxel_size") as caught:
        deconvolve_file(bare / "bare.tif", bare / "out.zarr", Settings(psf=str(bare / "psf.tif"), iterations=2))
    assert capfd.readouterr().err == ""
    (warning,) = [w for w in caught if "voxel size" in str(w.message)]
    assert warning.filename == __file__ and isinstance(warning.message, OptionWarning)
    assert "--voxel-size" in warning.message.command_line
    collected = []  # the command line's way: lines collected to print once the input is checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deconvolve_file(bare / "bare.tif", bare / "again.zarr", Settings(psf=str(bare / "psf.tif"), iterations=2),
                        warnings=collected)
    assert collected and collected[0].startswith(f"deconv3d: warning: {bare / 'bare.tif'} carries no voxel size")


def test_each_call_warns_as_the_printed_line_did(bare):
    """Python's once-per-location default would have said it for the first file of a loop only."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own: once per location
        for name in ("a.zarr", "b.zarr"):
            deconvolve_file(bare / "bare.tif", bare / name, Settings(psf=str(bare / "psf.tif"), iterations=2))
    assert sum("carries no voxel size" in str(w.message) for w in caught) == 2


def test_the_command_line_prints_them_in_its_own_words(bare, capsys):
    """A batch passes no list: its warnings go through the command line's warning hook."""
    from cli_helpers import run

    (bare / "in").mkdir()
    (bare / "bare.tif").rename(bare / "in" / "bare.tif")
    code, _, err = run(["batch", bare / "in", "-o", bare / "res", "--psf", bare / "psf.tif", "--iterations", 2],
                       capsys)
    assert code == 0, err
    assert (f"deconv3d: warning: {bare / 'in' / 'bare.tif'} carries no voxel size; assuming the PSF's (0.3, 0.1, "
            "0.1) µm (pass --voxel-size to set it)\n") in err



@pytest.mark.parametrize("setting", ["ignore", "error"])
def test_the_command_line_prints_them_whatever_pythonwarnings_says(bare, capsys, monkeypatch, setting):
    """As Python warnings they followed PYTHONWARNINGS in the command line too: 'ignore' hid the
    lines it had always printed, and 'error' failed every file of a batch (exit 3)."""
    from cli_helpers import run

    (bare / "in").mkdir()
    (bare / "bare.tif").rename(bare / "in" / "bare.tif")
    with warnings.catch_warnings():
        warnings.simplefilter(setting)  # what PYTHONWARNINGS sets before main() runs
        code, _, err = run(["batch", bare / "in", "-o", bare / "res", "--psf", bare / "psf.tif", "--iterations", 2],
                           capsys)
    assert code == 0, err
    assert f"deconv3d: warning: {bare / 'in' / 'bare.tif'} carries no voxel size" in err



def test_the_command_line_prints_the_library_s_other_warnings_whatever_pythonwarnings_says(bare, capsys):
    """Not only errors.warn's lines: a PSF's flat floor (prepare_psf's RuntimeWarning) under
    PYTHONWARNINGS=error failed the run as an internal error, and 'ignore' dropped it."""
    import numpy as np
    from cli_helpers import run

    floored = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0)) + np.float32(0.02)
    write_tiff(bare / "floor.tif", floored / floored.sum(), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(bare / "in.tif", blurred_beads((8, 16, 16), gaussian_psf(), seed=2), voxel_size=(0.3, 0.1, 0.1))
    for setting in ("error", "ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter(setting)
            code, _, err = run(["deconvolve", bare / "in.tif", "-o", bare / f"{setting}.tif", "--psf",
                                bare / "floor.tif", "--iterations", 2], capsys)
        assert code == 0 and "deconv3d: warning: the PSF's faces sit at" in err, err


def test_a_batch_prints_a_repeated_warning_once_and_keeps_each_file_s_in_its_report_row(tmp_path, capsys):
    """A batch printed every file's warnings: a PSF file without a voxel size gave the same line once
    per file (800 lines for 800 files), a folder of images without one a line per file that differed
    only by its name, and none of them was in batch_report.json."""
    import csv
    import json

    from cli_helpers import run

    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "bare_psf.tif", psf)
    for folder in ("bare", "calibrated"):
        (tmp_path / folder).mkdir()
    for i in range(5):
        write_tiff(tmp_path / "bare" / f"a{i}.tif", blurred_beads((8, 32, 32), psf, seed=i, count=20))
        write_tiff(tmp_path / "calibrated" / f"c{i}.tif", blurred_beads((8, 32, 32), psf, seed=i, count=20),
                   voxel_size=(0.3, 0.1, 0.1))
    per_file = str(tmp_path / "bare" / "a{}.tif") + (" carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1) µm "
                                                     "(pass --voxel-size to set it)")
    in_row = per_file.replace(str(tmp_path / "bare" / "a{}.tif"), "the image")  # (the row names the file)
    shared = ("the PSF file {} carries no voxel size; taking it as sampled like the image (0.3 0.1 0.1 µm)"
              .format(tmp_path / "bare_psf.tif"))
    out = tmp_path / "out"
    out.mkdir()
    old = {"file": str(tmp_path / "psf.tif"), "status": "done", "seconds": 1.0, "output": "psf.zarr", "reason": ""}
    (out / "batch_report.json").write_text(json.dumps({"files": [old]}))  # an earlier version's: no warnings
    for folder, psf_file, expected, printed in (
            ("bare", "psf.tif", [[in_row]] * 5, [per_file.format(i) for i in range(3)]),
            ("calibrated", "bare_psf.tif", [[shared]] * 5, [shared])):
        code, _, err = run(["batch", tmp_path / folder, "-o", out, "--psf", tmp_path / psf_file, "--method",
                            "wiener"], capsys)
        assert code == 0, err
        assert err.splitlines() == [f"deconv3d: warning: {line}" for line in printed] + [
            f"deconv3d: warning: 5 file(s) drew warnings: each file's are in the warnings of its row in "
            f"{out / 'batch_report.json'}"]
        rows = json.loads((out / "batch_report.json").read_text())["files"]
        assert [r["warnings"] for r in rows if folder in r["file"]] == expected
        with open(out / "batch_report.csv", encoding="utf-8-sig", newline="") as fh:
            table = list(csv.DictReader(fh))
        assert list(table[0]) == ["file", "status", "seconds", "output", "reason", "warnings"]
        assert [[r["warnings"]] for r in table if folder in r["file"]] == expected
    assert [r["warnings"] for r in rows if r["file"] == old["file"]] == [[]]


def test_a_file_a_rerun_skips_as_finished_keeps_the_warnings_of_its_earlier_row(tmp_path, capsys, monkeypatch):
    """A rerun, or the run resuming after Ctrl-C, reported every file it skipped as finished with no
    warnings: the lines its output was made with were erased from the report."""
    import json

    import deconv3d.pipeline.files as files
    from cli_helpers import run
    from deconv3d.pipeline.batch import write_reports

    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "in").mkdir()
    for i in range(3):
        write_tiff(tmp_path / "in" / f"a{i}.tif", blurred_beads((8, 32, 32), psf, seed=i, count=20))
    # (said of "the image" in the row, which names the file)
    line = "the image carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1) µm (pass --voxel-size to set it)"
    argv = ["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf", tmp_path / "psf.tif", "--method", "wiener"]
    real = files.deconvolve_file

    def interrupted_at_a1(path, *args, **kwargs):
        if path.name == "a1.tif":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    def report():
        return [(r["status"], r["warnings"]) for r in json.loads((tmp_path / "out" / "batch_report.json").read_text())
                ["files"]]

    monkeypatch.setattr(files, "deconvolve_file", interrupted_at_a1)
    assert run(argv, capsys)[0] == 130
    assert report() == [("done", [line]), ("failed", [])]
    monkeypatch.setattr(files, "deconvolve_file", real)
    for statuses in (("skipped", "done", "done"), ("skipped",) * 3):  # resumed, then run again
        code, _, err = run(argv, capsys)
        assert code == 0, err
        assert report() == [(status, [line]) for status in statuses]
    # A row of other settings than the skipping run's is not its output's: its warnings are not kept.
    rows = json.loads((tmp_path / "out" / "batch_report.json").read_text())["files"]
    write_reports(tmp_path / "out", [{**rows[0], "warnings": ["another run's"], "settings": "other"}])
    write_reports(tmp_path / "out", [{**rows[0], "warnings": []}])
    assert report()[0] == ("skipped", [])


def test_a_batch_keeps_a_plain_library_warning_in_every_file_s_row(tmp_path, capsys):
    """A warning the library gives with warnings.warn (a PSF's flat floor), which the command line
    passes once per place, reached the first file's row only; the other files' rows listed none."""
    import json

    import numpy as np
    from cli_helpers import run

    floored = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0)) + np.float32(0.02)
    write_tiff(tmp_path / "floor.tif", floored / floored.sum(), voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "in").mkdir()
    for i in range(3):
        write_tiff(tmp_path / "in" / f"a{i}.tif", blurred_beads((8, 32, 32), gaussian_psf(), seed=i, count=20),
                   voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf", tmp_path / "floor.tif",
                        "--method", "wiener"], capsys)
    assert code == 0, err
    assert err.count("the PSF's faces sit at") == 1, err  # printed once
    rows = json.loads((tmp_path / "out" / "batch_report.json").read_text())["files"]
    assert len(rows) == 3 and all(len(r["warnings"]) == 1 and r["warnings"][0].startswith(
        "the PSF's faces sit at 23.6% of its peak or more, a flat background") for r in rows), rows


def test_a_batch_ends_with_the_count_of_files_that_drew_warnings_whenever_one_did(tmp_path, capsys):
    """README promised a closing line counting the files that drew warnings; it was printed only
    where some line had been withheld, so a batch whose every warning was printed ended without it."""
    from cli_helpers import run

    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    for folder, voxel in (("bare", None), ("calibrated", (0.3, 0.1, 0.1))):
        (tmp_path / folder).mkdir()
        for i in range(2):
            write_tiff(tmp_path / folder / f"a{i}.tif", blurred_beads((8, 32, 32), psf, seed=i, count=20),
                       voxel_size=voxel)
    line = str(tmp_path / "bare" / "a{}.tif") + (" carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1) µm "
                                                 "(pass --voxel-size to set it)")
    for folder, expected in (("bare", [f"deconv3d: warning: {line.format(i)}" for i in range(2)] + [
            f"deconv3d: warning: 2 file(s) drew warnings: each file's are in the warnings of its row in "
            f"{tmp_path / 'bare' / 'out' / 'batch_report.json'}"]), ("calibrated", [])):
        code, _, err = run(["batch", tmp_path / folder, "-o", tmp_path / folder / "out", "--psf",
                            tmp_path / "psf.tif", "--method", "wiener"], capsys)
        assert code == 0 and err.splitlines() == expected, err


def test_run_batch_from_python_lists_each_file_s_warnings_in_its_row(bare):
    """run_batch called from Python returned rows whose warnings were always empty: only the command
    line filled them. The warning still reaches the caller, as the same Python warning."""
    from deconv3d.pipeline.batch import make_settings, run_batch

    (bare / "in").mkdir()
    (bare / "bare.tif").rename(bare / "in" / "bare.tif")
    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    write_tiff(bare / "in" / "calibrated.tif", blurred_beads((8, 16, 16), psf, seed=2), voxel_size=(0.3, 0.1, 0.1))
    settings = make_settings({"psf": str(bare / "psf.tif"), "method": "wiener"})
    hook = warnings.showwarning
    with pytest.warns(RuntimeWarning) as caught:
        rows = run_batch(bare / "in", bare / "out", settings,
                         lambda path, output, digest: deconvolve_file(path, output, settings, checksum=digest))
    line = (f"{bare / 'in' / 'bare.tif'} carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1) µm (pass "
            "voxel_size to set it)")
    assert [str(w.message) for w in caught] == [line]
    in_row = line.replace(str(bare / "in" / "bare.tif"), "the image")  # (the row names the file)
    assert {os.path.basename(r["file"]): (r["status"], r["warnings"]) for r in rows} == {
        "bare.tif": ("done", [in_row]), "calibrated.tif": ("done", [])}
    assert warnings.showwarning is hook


def _folders_of_one_file(base, names):
    """A folder per name holding one (never read) file, and a PSF file, for run_batch with a stand-in
    ``process_one``."""
    for name in names:
        (base / f"in{name}").mkdir()
        (base / f"in{name}" / f"{name.lower()}.tif").write_bytes(name.encode() * 64)
    (base / "psf.tif").write_bytes(b"psf")
    from deconv3d.pipeline.batch import make_settings

    return make_settings({"psf": str(base / "psf.tif"), "iterations": 2})


def _finished(output):
    output.mkdir()
    (output / "zarr.json").write_text("{}")


def test_two_batches_in_two_threads_keep_their_own_warnings_and_the_caller_s_hook(tmp_path):
    """Each file's run swapped the process's warnings.showwarning and restored it: two batches run in two
    threads crossed rows (A's warning in B's row, B's in none), left a hook installed for good, and a
    later, unrelated warning landed in A's finished row."""
    import threading

    from deconv3d.pipeline.batch import run_batch

    settings = _folders_of_one_file(tmp_path, "AB")
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()

    def process_a(path, output, digest):
        a_in.set()
        assert b_in.wait(10)  # B's run listens too
        warnings.warn("warning from A", RuntimeWarning)
        _finished(output)

    def process_b(path, output, digest):
        b_in.set()
        assert a_done.wait(10)  # A's run has ended
        warnings.warn("warning from B", RuntimeWarning)
        _finished(output)

    rows = {}

    def run_a():
        try:
            rows["A"] = run_batch(tmp_path / "inA", tmp_path / "outA", settings, process_a)
        finally:
            a_done.set()

    def run_b():
        assert a_in.wait(10)
        rows["B"] = run_batch(tmp_path / "inB", tmp_path / "outB", settings, process_b)

    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = caller = lambda message, *rest: shown.append(str(message))
        filters = list(warnings.filters)
        threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [r["warnings"] for r in rows["A"]] == [["warning from A"]]
        assert [r["warnings"] for r in rows["B"]] == [["warning from B"]]
        assert warnings.showwarning is caller and shown == ["warning from A", "warning from B"]
        assert warnings.filters == filters
        warnings.warn("a later, unrelated warning", RuntimeWarning)
    assert [r["warnings"] for r in rows["A"]] == [["warning from A"]] and shown[-1] == "a later, unrelated warning"


def test_a_warning_from_a_block_worker_thread_goes_to_the_one_file_running(tmp_path):
    """A file's blocks run in worker threads: their warnings belong to the one row listening. With two
    batches running, a worker's warning belongs to neither row for sure, and is only shown."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from deconv3d.pipeline.batch import run_batch

    settings = _folders_of_one_file(tmp_path, "AB")
    a_in, b_done = threading.Event(), threading.Event()

    def in_a_worker(text):
        with ThreadPoolExecutor(1) as pool:
            pool.submit(warnings.warn, text, RuntimeWarning).result()

    def process_a(path, output, digest):
        in_a_worker("from A's block")
        a_in.set()
        assert b_done.wait(10)
        in_a_worker("from A's block, B done")
        _finished(output)

    def process_b(path, output, digest):
        in_a_worker("from a block while A and B run")
        _finished(output)

    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest: shown.append(str(message))
        rows = {}
        thread = threading.Thread(target=lambda: rows.setdefault(
            "A", run_batch(tmp_path / "inA", tmp_path / "outA", settings, process_a)))
        thread.start()
        assert a_in.wait(10)
        rows["B"] = run_batch(tmp_path / "inB", tmp_path / "outB", settings, process_b)
        b_done.set()
        thread.join(30)
    assert [r["warnings"] for r in rows["A"]] == [["from A's block", "from A's block, B done"]]
    assert [r["warnings"] for r in rows["B"]] == [[]]
    assert shown == ["from A's block", "from a block while A and B run", "from A's block, B done"]


def test_a_warning_that_two_files_draw_under_the_default_filters_is_in_both_rows(tmp_path):
    """Python's default filters show a warning once per place: a PSF's flat floor, drawn by both files,
    was listed in the first file's row only. The caller's filters are as they were after the batch."""
    from deconv3d.pipeline.batch import make_settings, run_batch

    psf = gaussian_psf((5, 5, 5))
    floor = gaussian_psf((9, 9, 9))
    write_tiff(tmp_path / "psf.tif", floor + 0.05 * floor.max(), voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((12, 20, 20), psf, seed=i),
                   voxel_size=(0.3, 0.1, 0.1))
    settings = make_settings({"psf": str(tmp_path / "psf.tif"), "method": "wiener"})
    shown = []
    with warnings.catch_warnings():
        warnings.resetwarnings()  # Python's defaults: RuntimeWarnings once per place
        warnings.simplefilter("default")
        warnings.filterwarnings("always", module=r"deconv3d(\.|$)", append=True)  # (an equal one, not first)
        warnings.showwarning = lambda message, *rest: shown.append(str(message))
        before = list(warnings.filters)
        rows = run_batch(tmp_path / "in", tmp_path / "out", settings,
                         lambda path, output, digest: deconvolve_file(path, output, settings, checksum=digest))
        assert warnings.filters == before
    floor_warning = [w for w in shown if w.startswith("the PSF's faces sit at")]
    assert len(floor_warning) == 2 and floor_warning[0] == floor_warning[1]
    assert [r["warnings"] for r in rows] == [floor_warning[:1], floor_warning[1:]]


def _flat_floor_batch(folder, name, warn):
    """A run_batch over two tiny files whose processing calls ``warn(path)`` (no PSF work)."""
    from deconv3d.pipeline.batch import run_batch

    (folder / "in").mkdir(exist_ok=True)
    for n in "ab":
        write_tiff(folder / "in" / f"{n}.tif", np.ones((4, 8, 8), np.float32), voxel_size=(0.3, 0.1, 0.1))

    def process_one(path, output, digest):
        warn(path)
        write_tiff(output, np.ones((4, 8, 8), np.float32), voxel_size=(0.3, 0.1, 0.1))

    settings = Settings(psf_model="gaussian", na=1.2, wavelength=0.5, output_format="tif")
    return run_batch(folder / "in", folder / name, settings, process_one)


def _own_warning(text):
    """A warning as deconv3d's own modules issue it (the filters match it by module)."""
    return lambda path: warnings.warn_explicit(f"{text} {path.name}", RuntimeWarning, "/x/deconv3d/psf/model.py", 10,
                                               module="deconv3d.psf.model")


@pytest.mark.parametrize("action", ["ignore", "error"])
def test_a_callers_ignore_or_error_filter_still_decides_during_a_batch(tmp_path, action):
    """The filter that shows deconv3d's warnings every time was put first while a batch ran, and
    overrode a caller's "ignore" (the warning printed and listed) and "error" (the file done)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.filterwarnings(action, message="flat floor")
        shown = []
        warnings.showwarning = lambda message, *rest: shown.append(str(message))
        before = list(warnings.filters)
        rows = _flat_floor_batch(tmp_path, "out", _own_warning("flat floor"))
        assert warnings.filters == before
    assert not shown
    if action == "ignore":
        assert [(r["status"], r["warnings"]) for r in rows] == [("done", []), ("done", [])]
    else:
        assert [(r["status"], r["reason"]) for r in rows] == [("failed", "flat floor a.tif"),
                                                               ("failed", "flat floor b.tif")]


def test_a_batch_begun_inside_a_recorder_while_another_runs_keeps_both_hooks(tmp_path):
    """A batch begun inside the caller's catch_warnings(record=True) while another ran in a thread took
    Python's plain hook (which record=True puts in place) as the one to restore, and the other batch's
    end installed it for good: the GUI's hook lost the first batch's warnings and every later one. A
    batch begun after the recorder closed, the first still running, printed its warnings instead of
    passing them to the GUI's hook (review of this session's commits)."""
    import threading

    gui, running, b_done = [], threading.Event(), threading.Event()

    def hook(message, *rest):
        gui.append(str(message))

    def slow(path):
        running.set()
        assert b_done.wait(30)
        _own_warning("A")(path)

    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.showwarning = hook
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = threading.Thread(target=_flat_floor_batch, args=(tmp_path / "a", "out", slow))
        first.start()
        assert running.wait(30)  # the first batch's first file is running
        with warnings.catch_warnings(record=True) as recorded:
            rows = _flat_floor_batch(tmp_path / "b", "out", _own_warning("B"))
        (tmp_path / "c").mkdir()  # the recorder closed, the first batch still running: to the GUI's hook
        rows_c = _flat_floor_batch(tmp_path / "c", "out", _own_warning("C"))
        b_done.set()
        first.join()
        warnings.warn("later")
        assert warnings.showwarning is hook
    assert [str(w.message) for w in recorded] == ["B a.tif", "B b.tif"]
    assert [r["warnings"] for r in rows] == [["B a.tif"], ["B b.tif"]]
    assert [r["warnings"] for r in rows_c] == [["C a.tif"], ["C b.tif"]]
    assert gui == ["C a.tif", "C b.tif", "A a.tif", "A b.tif", "later"]
