"""Batch crash safety: a batch killed (SIGKILL) in the middle of a file resumes to the same outputs.

The crashing run is a real ``deconv3d batch`` in a subprocess. To kill it reliably while a file
is half written, the subprocess wraps the block task of :mod:`deconv3d.pipeline.chunked` (read,
compute and write one block) so that it pauses after every written block (a test-side hook; the
package has none). The test polls for a written chunk inside the second file's hidden temporary
output and kills then.
"""

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
    assert not (out / "img2.zarr").exists() and not (out / ".deconv3d-batch" / "img1.tif.json").exists()

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
