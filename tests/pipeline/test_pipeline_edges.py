"""Edge cases of the out-of-core pipeline: output names, per-channel halos, calibration, file layouts."""

import json
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from cli_helpers import assert_one_line_error, run
from deconv3d.errors import InputError
from deconv3d.io import read_image, write_tiff
from deconv3d.metrics import psnr
from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr
from deconv3d.pipeline import RichardsonLucyBlock, plan_chunks, run_blocks, run_chunked
from deconv3d.pipeline.batch import make_settings, run_batch
from deconv3d.pipeline.batch_inputs import output_for
from deconv3d.pipeline.graph import blockwise, store_blocks
from deconv3d.pipeline.output import remove_stale_temporaries

from .conftest import blurred_beads, gaussian_psf


def settings_with_a_psf(folder):
    write_tiff(folder / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    return make_settings({"psf": str(folder / "psf.tif")})


def test_batch_output_names_keep_inner_dots(tmp_path):
    settings = settings_with_a_psf(tmp_path)
    names = {n: output_for(tmp_path / n, tmp_path, settings).name
             for n in ("cell.t001.tif", "cell.t002.TIF", "x.ome.tif", "y.ome.zarr", "z.zarr", "w.tiff")}
    assert names == {"cell.t001.tif": "cell.t001.zarr", "cell.t002.TIF": "cell.t002.zarr", "x.ome.tif": "x.zarr",
                     "y.ome.zarr": "y.zarr", "z.zarr": "z.zarr", "w.tiff": "w.zarr"}


def test_batch_refuses_two_inputs_with_one_output_before_writing(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.tif", "a.tiff"):
        tifffile.imwrite(tmp_path / "in" / name, np.zeros((4, 4, 4), np.float32), photometric="minisblack")
    called = []
    with pytest.raises(InputError, match="a.tif and a.tiff would both write a.zarr"):
        run_batch(tmp_path / "in", tmp_path / "out", settings_with_a_psf(tmp_path),
                  lambda *args: called.append(args))
    assert called == [] and not (tmp_path / "out").exists()


def test_batch_names_clashing_inputs_by_their_folder_and_lists_every_clash(tmp_path, capsys):
    """With --pattern '**/*.tif', pos01/t1.tif and pos02/t1.tif were refused as "t1.tif and t1.tif
    would both write t1.zarr" (no folders), and only the first of several clashes was named."""
    for rel in ("pos01/t1.tif", "pos01/t2.tif", "pos01/t3.tif", "pos01/t4.tif", "pos01/t5.tif", "pos02/t1.tif",
                "pos02/t2.tif", "pos02/t3.tif", "pos02/t4.tif", "pos02/t5.tif", "pos03/t1.tif", "pos03/u.tif"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "in" / rel, np.zeros((4, 4, 4), np.float32), photometric="minisblack")
    settings_with_a_psf(tmp_path)
    code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf", tmp_path / "psf.tif",
                        "--pattern", "**/*.tif"], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == (
        "deconv3d: error: pos01/t1.tif, pos02/t1.tif and pos03/t1.tif would all write t1.zarr; pos01/t2.tif and "
        "pos02/t2.tif would both write t2.zarr; pos01/t3.tif and pos02/t3.tif would both write t3.zarr; and 2 more "
        "such clash(es): rename one or narrow --pattern")
    assert not (tmp_path / "out").exists()


def test_batch_refuses_two_inputs_whose_outputs_differ_only_in_case(tmp_path):
    """Cell.tif and cell.tiff write Cell.zarr and cell.zarr: one folder on a macOS (APFS) or
    Windows disk, where the second replaced the first and a rerun skipped the first as done
    (found by the portability review)."""
    (tmp_path / "in").mkdir()
    for name in ("Cell.tif", "cell.tiff"):
        tifffile.imwrite(tmp_path / "in" / name, np.zeros((4, 4, 4), np.float32), photometric="minisblack")
    called = []
    with pytest.raises(InputError, match=r"Cell.tif and cell.tiff would both write cell.zarr \(as Cell.zarr: one name"):
        run_batch(tmp_path / "in", tmp_path / "out", settings_with_a_psf(tmp_path),
                  lambda *args: called.append(args))
    assert called == []


def test_per_channel_functions_share_the_widest_halo(tmp_path):
    narrow, wide = gaussian_psf((9, 9, 9), (0.8, 0.8, 0.8)), gaussian_psf((15, 15, 15), (2.0, 2.0, 2.0))
    image = np.stack([blurred_beads((24, 48, 48), p, seed=c) for c, p in enumerate((narrow, wide))])
    fns = [RichardsonLucyBlock(narrow, 4), RichardsonLucyBlock(wide, 4)]
    info = run_chunked(image, fns, tmp_path / "c.zarr", axes="CZYX", chunks=(12, 24, 24))
    assert info.halo == tuple(max(a, b) for a, b in zip(fns[0].halo(), fns[1].halo())) == fns[1].halo()
    data = read_ome_zarr(tmp_path / "c.zarr")[0]
    for c in range(2):
        assert psnr(fns[c](image[c]), data[c]) >= 70, c  # the wide channel had seams at 57 dB with the narrow halo


def test_unknown_voxel_size_is_read_back_as_unknown(tmp_path):
    run_chunked(np.ones((4, 8, 8), np.float32), lambda b: b, tmp_path / "u.zarr", voxel_size=None)
    axes = json.loads((tmp_path / "u.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes) and open_lazy(tmp_path / "u.zarr").voxel_size is None
    run_chunked(np.ones((4, 8, 8), np.float32), lambda b: b, tmp_path / "k.zarr", voxel_size=(1.0, 1.0, 1.0))
    assert open_lazy(tmp_path / "k.zarr").voxel_size == (1.0, 1.0, 1.0)  # 1 µm with its unit is known
    write_ome_zarr(tmp_path / "s.zarr", np.ones((4, 8, 8), np.float32), voxel_size=(0.5, 0.2, 0.2))
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    for axis in meta["attributes"]["ome"]["multiscales"][0]["axes"]:
        axis.pop("unit", None)  # another tool's calibrated file without units
    (tmp_path / "s.zarr" / "zarr.json").write_text(json.dumps(meta))
    assert open_lazy(tmp_path / "s.zarr").voxel_size == pytest.approx((0.5, 0.2, 0.2))


def test_run_blocks_reads_a_plain_array_block_by_block(tmp_path):
    import zarr

    x = np.arange(1, 10, dtype=np.float32)
    _, _, zarr_chunks = plan_chunks((9,), (4,), (0,))
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(9,), chunks=zarr_chunks, dtype="float32", fill_value=np.nan)
    assert run_blocks(x, lambda b: b * 2, tmp_path / "a.zarr", chunks=(4,), halo=(0,), workers=2) == 3
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"))[...], 2 * x)


def test_store_blocks_shares_the_cores_between_workers(tmp_path):
    import torch
    import zarr

    seen, lock = [], threading.Lock()

    def fn(block):
        with lock:
            seen.append(torch.get_num_threads())
        return block

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        data = np.ones((8, 16, 16), np.float32)
        result, _ = blockwise(da.from_array(data), fn, chunks=(8, 8, 8), halo=(0, 0, 0))
        zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=(8, 8, 8), dtype="float32")
        assert store_blocks(result, tmp_path / "s.zarr", workers=2) == 4
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {2}


def test_run_blocks_gives_fewer_blocks_than_workers_the_cores(tmp_path):
    """One block with two workers keeps all of torch's threads: halving them left a core idle."""
    import torch
    import zarr

    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        def fn(block):
            seen.append(torch.get_num_threads())
            return block

        x = np.ones((6, 8), np.float32)
        for name in ("one.zarr", "two.zarr"):
            zarr.create_array(str(tmp_path / name), shape=x.shape, chunks=(3, 8), dtype="float32")
        assert run_blocks(x, fn, tmp_path / "one.zarr", chunks=(6, 8), halo=(0, 0), workers=2) == 1
        assert run_blocks(x, fn, tmp_path / "two.zarr", chunks=(3, 8), halo=(0, 0), workers=2) == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [4, 2, 2]


def test_stale_temporaries_of_a_bracketed_name_only(tmp_path):
    mine, other = tmp_path / ".img[1].zarr.0123abcd.tmp", tmp_path / ".img1.zarr.89abcdef.tmp"
    mine.mkdir()
    other.mkdir()
    assert remove_stale_temporaries(tmp_path / "img[1].zarr") == [mine]
    assert other.exists() and not mine.exists()


def test_tiff_output_scratch_is_a_leftover_the_sweep_finds(files, monkeypatch):
    import deconv3d.pipeline as pipeline
    from deconv3d.pipeline.files import deconvolve_file

    scratch = []

    def killed(data, fn, output, **kwargs):  # stands for a run killed midway: its scratch stays behind
        Path(output).mkdir()
        scratch.append(Path(output))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_chunked", killed)
    with pytest.raises(KeyboardInterrupt):
        deconvolve_file(files / "in.tif", files / "out.tif", make_settings({"psf": str(files / "psf.tif")}))
    scratch[0].mkdir()  # as a hard kill would leave it (the finally clause removed it here)
    assert remove_stale_temporaries(files / "out.tif") == scratch


@pytest.mark.parametrize("windows", [False, True])
def test_the_sweep_spares_a_temporary_a_running_process_writes(tmp_path, monkeypatch, windows):
    """On Windows os.kill(pid, 0) sends CTRL_C_EVENT, and for a dead pid raises OSError (WinError 87),
    which ended every later batch in an internal error (found by the portability review)."""
    import os
    import signal
    import subprocess

    real_kill = os.kill
    if windows:
        def windows_kill(pid, sig):
            raise OSError(22, "The parameter is incorrect")

        monkeypatch.setattr("deconv3d._paths.temporaries._ON_WINDOWS", True)
        monkeypatch.setattr(os, "kill", windows_kill)
        # psutil asks Windows itself; here it would call the os.kill above, so ask /proc instead
        monkeypatch.setattr("psutil.pid_exists", lambda pid: os.path.exists(f"/proc/{pid}"))
    alive = subprocess.Popen(["sleep", "30"])
    finished = subprocess.Popen(["true"])
    finished.wait()
    try:
        live = tmp_path / f".img.zarr.{alive.pid}-0123abcd.tmp"
        dead = tmp_path / f".img.zarr.{finished.pid}-89abcdef.tmp"
        live.mkdir()
        dead.mkdir()
        assert remove_stale_temporaries(tmp_path / "img.zarr") == [dead]
        assert live.exists()
    finally:
        real_kill(alive.pid, signal.SIGKILL)
        alive.wait()
    assert remove_stale_temporaries(tmp_path / "img.zarr") == [live]


def test_the_sweep_leaves_another_machines_temporary_until_it_is_old(tmp_path):
    """Jobs on two cluster nodes writing into one folder deleted each other's temporaries (a pid
    cannot be asked about on another machine); a recent one from elsewhere is now left alone."""
    import os
    import time

    from deconv3d._paths import host_tag, temporary_name
    from deconv3d._paths import OTHER_HOST_STALE_AGE

    mine = temporary_name(tmp_path / "img.zarr")
    assert mine.name.startswith(f".img.zarr.{host_tag()}@{os.getpid()}-")
    other = tmp_path / f".img.zarr.{host_tag()}x@1-0123abcd.tmp"  # another host, its pid meaningless here
    old = tmp_path / f".img.zarr.{host_tag()}y@1-89abcdef.tmp"
    here_gone = tmp_path / f".img.zarr.{host_tag()}@999999999-aaaabbbb.tmp"  # this host, no such process
    for entry in (other, old, here_gone):
        entry.mkdir()
    busy = tmp_path / f".img.zarr.{host_tag()}z@1-cccc0000.tmp"  # old top folder, a chunk written just now
    (busy / "0" / "c").mkdir(parents=True)
    (busy / "0" / "c" / "5").write_bytes(b"chunk")
    stale = time.time() - OTHER_HOST_STALE_AGE - 60
    for entry in (old, busy, busy / "0", busy / "0" / "c"):
        os.utime(entry, (stale, stale))
    assert remove_stale_temporaries(tmp_path / "img.zarr") == sorted([old, here_gone])
    assert other.exists() and busy.exists()


def test_a_chunked_deconvolve_sweeps_what_a_killed_run_left(files):
    """Only batch swept leftovers; a killed deconvolve left a hidden copy as large as its output."""
    import subprocess

    from deconv3d.pipeline.files import deconvolve_file

    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = files / f".out.zarr.{gone.pid}-0123abcd.tmp"
    (leftover / "0").mkdir(parents=True)
    deconvolve_file(files / "in.tif", files / "out.zarr", make_settings({"psf": str(files / "psf.tif"),
                                                                        "iterations": 2}))
    assert (files / "out.zarr").is_dir() and not leftover.exists()


def test_imagej_hyperstack_z_before_c_is_reordered(tmp_path):
    data = np.random.default_rng(0).random((5, 2, 6, 7)).astype(np.float32)  # ImageJ order: Z, C, Y, X
    tifffile.imwrite(tmp_path / "zc.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    lazy = open_lazy(tmp_path / "zc.tif")
    want = data.transpose(1, 0, 2, 3)
    assert lazy.axes == "CZYX" and lazy.reader.shape == want.shape
    np.testing.assert_array_equal(np.asarray(lazy.data), want)
    np.testing.assert_array_equal(lazy.reader.read((1, slice(1, 4), slice(2, None))), want[1, 1:4, 2:])
    np.testing.assert_array_equal(lazy.reader.read((slice(None), 3)), want[:, 3])


def test_imagej_hyperstack_of_one_row_keeps_its_channel_axis(tmp_path):
    """A (4, 2, 1, 10) ZCYX file (one row) opened as ZYX (4, 2, 10): its two channels deconvolved as
    a y axis, as read_image read it too. The plane is the last two spatial axes, Z and X: open_lazy
    gives CZX at (z step, pixel size), and read_image refuses the channel axis as for any hyperstack."""
    data = np.random.default_rng(0).random((4, 2, 1, 10)).astype(np.float32)
    tifffile.imwrite(tmp_path / "zc.tif", data, imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZCYX", "unit": "um", "spacing": 0.3})
    lazy = open_lazy(tmp_path / "zc.tif")
    want = data[:, :, 0].transpose(1, 0, 2)
    assert (lazy.axes, lazy.reader.shape) == ("CZX", want.shape)
    assert lazy.voxel_size == pytest.approx((0.3, 0.1))
    np.testing.assert_array_equal(np.asarray(lazy.data), want)
    np.testing.assert_array_equal(lazy.reader.read((1, slice(1, 3), slice(2, 7))), want[1, 1:3, 2:7])
    with pytest.raises(InputError, match="channel axis"):
        read_image(tmp_path / "zc.tif")
    tifffile.imwrite(tmp_path / "line.tif", data[:1], imagej=True, metadata={"axes": "ZCYX"})  # (2, 10): CX
    with pytest.raises(InputError, match="1 of them spatial"):
        open_lazy(tmp_path / "line.tif")
    with pytest.raises(InputError, match="channel axis"):
        read_image(tmp_path / "line.tif")


@pytest.fixture
def files(tmp_path):
    psf = gaussian_psf()
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "in.tif", blurred_beads((12, 24, 24), psf), voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def test_zarr_output_is_replaced_on_a_rerun_but_a_plain_folder_is_not(files, capsys):
    argv = ["deconvolve", files / "in.tif", "--psf", files / "psf.tif", "--iterations", 2]
    for _ in range(2):
        code, _, err = run([*argv, "-o", files / "out.zarr"], capsys)
        assert code == 0, err
    assert read_ome_zarr(files / "out.zarr")[0].shape == (12, 24, 24)
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(".")) == []
    (files / "plain.zarr").mkdir()
    (files / "plain.zarr" / "notes.txt").write_text("keep me")
    code, _, err = run([*argv, "-o", files / "plain.zarr"], capsys)
    assert_one_line_error(code, err, "directory")
    assert (files / "plain.zarr" / "notes.txt").read_text() == "keep me"


def test_chunks_on_a_2d_image_use_y_and_x(tmp_path, capsys):
    from deconv3d.classical import richardson_lucy

    psf = gaussian_psf((7, 7), (1.2, 1.2))
    image = blurred_beads((40, 40), psf)
    write_tiff(tmp_path / "in.tif", image, voxel_size=(0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--psf", tmp_path / "psf.tif",
                        "--iterations", 3, "--no-accelerate", "--chunks", 1, 20, 20], capsys)
    assert code == 0, err
    assert psnr(richardson_lucy(image, psf, 3, device="cpu"), read_image(tmp_path / "out.tif").data) >= 50


def test_singleton_time_and_channel_axes_can_go_to_tiff(files, capsys):
    from deconv3d.classical import richardson_lucy

    image, psf = read_image(files / "in.tif").data, read_image(files / "psf.tif").data
    write_ome_zarr(files / "tc.zarr", image[None, None], axes="TCZYX", voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", files / "tc.zarr", "-o", files / "tc.tif", "--psf", files / "psf.tif",
                        "--iterations", 2, "--no-accelerate"], capsys)
    assert code == 0, err
    result = read_image(files / "tc.tif")
    assert result.data.shape == image.shape and result.voxel_size == pytest.approx((0.3, 0.1, 0.1))
    assert psnr(richardson_lucy(image, psf / psf.sum(), 2, device="cpu"), result.data) >= 50


def test_one_block_runs_accelerated_rl_once_with_its_own_steps(tmp_path, monkeypatch):
    import deconv3d.classical.rl as rl
    from deconv3d.classical import richardson_lucy

    psf = gaussian_psf()
    image = blurred_beads((12, 24, 24), psf)
    # (what measuring the steps runs: RichardsonLucyBlock.prepare_with_output calls it)
    monkeypatch.setattr(rl, "_schedule_and_estimate", lambda *a, **k: pytest.fail("one block needs no schedule"))
    run_chunked(image, RichardsonLucyBlock(psf, 6, accelerate=True), tmp_path / "one.zarr")
    whole = richardson_lucy(image, psf, 6, accelerate=True, device="cpu")
    np.testing.assert_array_equal(read_ome_zarr(tmp_path / "one.zarr")[0], whole)


def test_a_cluster_budgets_each_worker_process_not_the_whole_cluster(tmp_path, monkeypatch):
    """--memory-limit budgets one process: with 2 single-threaded worker processes, each holds
    one block, so the plan is for 1 block in flight (it was planned for 2, halving the blocks)."""
    from deconv3d.pipeline import planning

    class FakeClient:
        def nthreads(self):
            return {"tcp://a": 1, "tcp://b": 1}

    seen = []

    def planned(shape, fns, chunks, halo, limit, model, workers, local=True, cap=None):
        seen.append(workers)
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr(planning, "spatial_plan", planned)
    volume = np.ones((8, 16, 16), np.float32)
    for client, workers, expected in ((FakeClient(), 2, 1), (None, 3, 3)):
        with pytest.raises(KeyboardInterrupt):
            run_chunked(volume, RichardsonLucyBlock(gaussian_psf()), tmp_path / "o.zarr", client=client,
                        workers=workers, memory_limit="2GB")
        assert seen[-1] == expected

    class Silent:
        def nthreads(self):
            raise OSError("no answer")

    assert planning.threads_per_worker(Silent()) == 1


def test_the_sweep_finds_a_tiff_outputs_nested_scratch(tmp_path):
    """A TIFF output is first written as an OME-Zarr under a temporary name, which run_chunked
    writes under a temporary name of its own: '..out.tif.<pid>-<id>.tmp.<pid>-<id>.tmp'."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    nested = tmp_path / f"..out.tif.{gone.pid}-0123abcd.tmp.{gone.pid}-89abcdef.tmp"
    (nested / "0").mkdir(parents=True)
    assert remove_stale_temporaries(tmp_path / "out.tif") == [nested]


def _count_in_a_new_thread() -> int:
    """torch's thread count in a thread started now (the default new threads get)."""
    import torch

    found = []
    thread = threading.Thread(target=lambda: found.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return found[0]


def test_overlapping_runs_leave_every_thread_s_count_and_the_default_as_they_were(tmp_path):
    """Runs from two background threads that overlap (a GUI's calls), the first ending first.
    Found by the review of process-global state: the count was lowered in the calling thread and
    restored by the last run out in its own thread only, so the other caller stayed at 1 thread
    for good (and so did later runs it started, which saved that). Now the callers' counts are
    never changed, every block gets the share of the count found before the first run, and threads
    started afterwards get that count again."""
    import torch

    from deconv3d.pipeline.threads_and_memory import _SHARED_CORES

    seen, lock = [], threading.Lock()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def fn(block):
        with lock:
            seen.append(torch.get_num_threads())
        return block

    x = np.ones((8, 8), np.float32)

    def caller(name, gate_in, gate_out):
        counts = [torch.get_num_threads()]
        zarr_path = tmp_path / f"{name}.zarr"
        import zarr

        zarr.create_array(str(zarr_path), shape=x.shape, chunks=(4, 8), dtype="float32")

        def waiting(block):
            gate_in.set()
            gate_out.wait(10)
            return fn(block)

        run_blocks(x, waiting, zarr_path, chunks=(4, 8), halo=(0, 0), workers=2)
        counts.append(torch.get_num_threads())
        results[name] = counts

    results, before = {}, torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        a = threading.Thread(target=caller, args=("a", first_in, second_in))
        a.start()
        assert first_in.wait(10)
        b = threading.Thread(target=caller, args=("b", second_in, first_out))
        b.start()  # b starts while a's blocks run; a ends first, b last
        a.join(20)
        first_out.set()
        b.join(20)
        assert _SHARED_CORES.active == 0
        assert results == {"a": [4, 4], "b": [4, 4]} and seen and set(seen) == {2}
        assert torch.get_num_threads() == 4
        fresh = [_count_in_a_new_thread()]
        assert fresh == [4]  # the default of new threads, which the blocks' threads had set to 2
    finally:
        torch.set_num_threads(before)


def test_a_one_worker_run_beside_a_two_worker_run_keeps_the_process_count(tmp_path):
    """Found by the review of this session's diff: the share was one process-wide value, so a
    one-worker run's blocks took the share of a two-worker run in progress, and left it as the
    default of new threads for good. The share now comes with each run's own tasks."""
    import torch

    a_running, a_release, a_done, seen = threading.Event(), threading.Event(), threading.Event(), []

    def a_fn(block):
        a_running.set()
        a_release.wait(10)
        return block

    def b_fn(block):
        seen.append(torch.get_num_threads())
        if len(seen) == 1:  # B's first block overlaps A; A then ends
            a_release.set()
            a_done.wait(10)
        return block

    image, before = np.ones((8, 8, 16), np.float32), torch.get_num_threads()
    try:
        torch.set_num_threads(4)

        def a():
            run_chunked(image, a_fn, tmp_path / "a.zarr", chunks=(8, 8, 8), halo=(0, 0, 0), workers=2)
            a_done.set()

        thread = threading.Thread(target=a)
        thread.start()
        assert a_running.wait(10)
        run_chunked(image, b_fn, tmp_path / "b.zarr", chunks=(8, 8, 8), halo=(0, 0, 0), workers=1)
        thread.join(10)
        fresh = [_count_in_a_new_thread()]
        assert seen == [4, 4] and torch.get_num_threads() == 4 and fresh == [4]
    finally:
        torch.set_num_threads(before)


def test_without_per_thread_setters_blocks_still_get_their_share_and_the_default_comes_back(tmp_path, monkeypatch):
    """Where torch's OpenMP and MKL cannot be set per thread (another platform or build), a
    worker sets torch's count, and the default of new threads is put back right after."""
    import torch
    import zarr

    from deconv3d.pipeline import threads_and_memory

    monkeypatch.setattr(threads_and_memory, "_thread_setters", lambda: None)
    seen, before = [], torch.get_num_threads()
    x = np.ones((8, 8), np.float32)
    zarr.create_array(str(tmp_path / "s.zarr"), shape=x.shape, chunks=(4, 8), dtype="float32")
    try:
        torch.set_num_threads(4)
        run_blocks(x, lambda b: seen.append(torch.get_num_threads()) or b, tmp_path / "s.zarr", chunks=(4, 8),
                   halo=(0, 0), workers=2)
        fresh = [_count_in_a_new_thread()]
        assert seen == [2, 2] and torch.get_num_threads() == 4 and fresh == [4]
    finally:
        torch.set_num_threads(before)


def test_run_info_names_the_largest_block_when_a_short_remainder_is_merged(tmp_path, capsys):
    """64 voxels in chunks of 30 with a halo of 5: the remainder of 4 joins the block before it
    (30 + 4 = 34), which the CLI's summary reports instead of the chunk asked for."""
    from deconv3d.pipeline import run_chunked

    image = np.random.default_rng(0).random((4, 64, 64)).astype(np.float32)
    info = run_chunked(image, lambda block: block, tmp_path / "o.zarr", chunks=(4, 30, 30), halo=(0, 5, 5))
    assert info.chunks == (4, 30, 30) and info.largest_block == (4, 34, 34) and info.blocks == 4
    np.testing.assert_array_equal(read_ome_zarr(tmp_path / "o.zarr")[0], image)
    write_tiff(tmp_path / "in.tif", image, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", np.ones((3, 3, 3), np.float32) / 27, voxel_size=(0.3, 0.1, 0.1))
    code, out, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o",
                          tmp_path / "c.zarr", "--chunks", 4, 30, 30, "--iterations", 1], capsys)
    assert code == 0, err
    assert "block(s) of at most (4, " in out


def test_batch_glob_does_not_enter_hidden_folders_its_pattern_does_not_name(tmp_path, monkeypatch):
    """The batch's glob walked hidden folders (a file server's .snapshot tree, whole, for '**/*.tif')
    and dropped what it found there afterwards: they are not entered now, unless the pattern names
    them. What is found is what Python 3.11's Path.glob found less what glob_hides drops, as before, on
    every Python: '**' matches folders only (Python 3.13's Path.glob matches files too)."""
    import os

    from deconv3d.pipeline.batch_inputs import find_inputs

    folder = tmp_path / "in"
    for rel in ("a.tif", "B.TIF", ".c.tif", "d.zarr/zarr.json", "sub/e.tif", "sub/.f.tif", "sub/deep/g.tif",
                "sub/.snap/h.tif", ".snapshot/hourly/day/i.tif", ".snapshot/j.tif", ".raw/k.tif", ".raw/x/l.tif",
                ".raw/.t/m.tif", "2024/n.tif"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"")
    (folder / "link").symlink_to(folder / "sub", target_is_directory=True)
    expected = {  # (a link to a folder: not followed by '**')
        "*.tif": ["B.TIF", "a.tif"], "**/*.tif": ["2024/n.tif", "B.TIF", "a.tif", "sub/deep/g.tif", "sub/e.tif"],
        "*/*.tif": ["2024/n.tif", "link/e.tif", "sub/e.tif"], "**": [".", "2024", "d.zarr", "sub", "sub/deep"],
        "*/": ["2024", "d.zarr", "link", "sub"], "*": ["2024", "B.TIF", "a.tif", "d.zarr", "link", "sub"],
        ".raw/*.tif": [".raw/k.tif"], ".RAW/**/*.tif": [".raw/k.tif", ".raw/x/l.tif"],
        "**/.snap/*.tif": ["sub/.snap/h.tif"], ".*/*.tif": [".raw/k.tif", ".snapshot/j.tif"],
        "2024/*.tif": ["2024/n.tif"], "sub/": ["sub"], "**/*.zarr": ["d.zarr"], "sub/**": ["sub", "sub/deep"]}
    scanned = []
    real_scandir = os.scandir

    def recording(path="."):
        scanned.append(Path(path).relative_to(folder).as_posix())
        return real_scandir(path)

    for pattern in expected:
        scanned.clear()
        with monkeypatch.context() as m:
            m.setattr(os, "scandir", recording)
            found = find_inputs(folder, [pattern])
        assert [p.relative_to(folder).as_posix() for p in found] == expected[pattern], pattern
        entered = [d for d in scanned if any(part.startswith(".") for part in Path(d).parts)]
        names = {".raw/*.tif": [".raw"], ".RAW/**/*.tif": [".raw", ".raw/x"], ".*/*.tif": [".raw", ".snapshot"],
                 "**/.snap/*.tif": ["sub/.snap"]}
        assert sorted(set(entered)) == names.get(pattern, []), pattern
    assert [p.relative_to(folder).as_posix() for p in find_inputs(folder, [".raw/*.tif", "**/.snap/*.tif"])] == [
        ".raw/k.tif", "sub/.snap/h.tif"]


def test_batch_glob_skips_a_folder_it_may_not_look_into(tmp_path, monkeypatch):
    """A folder another user keeps to themselves (lost+found, mode 700) ended the batch's glob in a
    PermissionError where a pattern named a part inside it ('**/2024/*.tif', '*/5678/*.tif'); Path.glob
    skipped it. (Running as root passes any mode, so the refusal is made here.)"""
    import os

    from deconv3d.pipeline.batch_inputs import find_inputs

    folder = tmp_path / "in"
    for rel in ("cells/2024/a.tif", "cells/5678/b.tif", "c.tif"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"")
    closed = folder / "lost+found"
    closed.mkdir()
    real_stat, real_scandir = Path.stat, os.scandir

    def refuse(path):
        if Path(path).is_relative_to(closed) and Path(path) != closed:
            raise PermissionError(13, "Permission denied", str(path))

    def stat(self, **kwargs):
        refuse(self)
        return real_stat(self, **kwargs)

    def scandir(path="."):
        refuse(Path(path) / "x")
        return real_scandir(path)

    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError):
        (closed / "2024").is_dir()
    found = {pattern: [p.relative_to(folder).as_posix() for p in find_inputs(folder, [pattern])]
             for pattern in ("**/2024/*.tif", "*/5678/*.tif", "*/*/*.tif", "**/*.tif")}
    assert found == {"**/2024/*.tif": ["cells/2024/a.tif"], "*/5678/*.tif": ["cells/5678/b.tif"],
                     "*/*/*.tif": ["cells/2024/a.tif", "cells/5678/b.tif"],
                     "**/*.tif": ["c.tif", "cells/2024/a.tif", "cells/5678/b.tif"]}

def test_batch_finds_image_files_whatever_the_case_of_their_suffix(tmp_path, capsys):
    """.TIF and .Tiff (Windows tools, vendors) were skipped without a word, exit 0."""
    from deconv3d.pipeline.batch_inputs import _any_case, find_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    image = np.random.default_rng(0).random((6, 20, 20)).astype(np.float32)
    for name in ("a.tif", "B.TIF", "c.Tiff"):
        write_tiff(folder / name, image, voxel_size=(0.3, 0.1, 0.1))
    (folder / "d.txt").write_text("not an image")
    assert [p.name for p in find_inputs(folder, ["*.tif", "*.tiff"])] == ["B.TIF", "a.tif", "c.Tiff"]
    assert _any_case("[ab]x*.tif") == "[ab][xX]*.[tT][iI][fF]"
    write_tiff(tmp_path / "psf.tif", np.ones((3, 3, 3), np.float32) / 27, voxel_size=(0.3, 0.1, 0.1))
    code, out, err = run(["batch", folder, "-o", tmp_path / "out", "--psf", tmp_path / "psf.tif", "--iterations", 1],
                         capsys)
    assert code == 0 and "3 done" in out, (out, err)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.zarr")) == ["B.zarr", "a.zarr", "c.zarr"]


def test_a_chunked_result_that_overflows_float32_is_refused_like_an_in_memory_one(tmp_path, capsys):
    """Values near float32's limit: the in-memory run refused its Inf result, the chunked run wrote
    an all-Inf OME-Zarr and exited 0. (Data of peak 1e36, whose transforms overflowed, deconvolve
    now: RL runs them divided by a power of two. A result of peak 1.4 x 3.4e38 float32 cannot hold.)"""
    image = blurred_beads((8, 24, 24), gaussian_psf())
    image = (image / image.max() * np.float32(3.4e38)).astype(np.float32)
    write_tiff(tmp_path / "huge.tif", image, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    for out, extra in (("h.zarr", []), ("h.tif", ["--chunks", 8, 12, 12])):
        code, _, err = run(["deconvolve", tmp_path / "huge.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / out,
                            "--iterations", 5, "--device", "cpu"] + extra, capsys)
        assert code == 2 and "result overflowed torch.float32" in err and "rescale it" in err, err
        assert not (tmp_path / out).exists()


def test_a_damaged_chunk_of_a_zarr_input_is_named_not_an_internal_error(tmp_path, capsys):
    write_ome_zarr(tmp_path / "in.zarr", blurred_beads((8, 24, 24), gaussian_psf()), voxel_size=(0.3, 0.1, 0.1),
                   chunks=(4, 12, 12))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    chunk = next(p for p in sorted((tmp_path / "in.zarr").rglob("*")) if p.is_file() and "c" in p.parts[-4:-1])
    chunk.write_bytes(b"\x00\x01")
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.zarr",
                        "--iterations", 1, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "in.zarr", "is damaged: its bytes do not decode")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("text", ["1e400", "0", "-5MB"])
def test_memory_limits_that_overflow_or_are_not_positive_name_the_fix(text):
    from deconv3d.pipeline.system_memory import parse_memory

    with pytest.raises(InputError, match="write it like 4GB"):
        parse_memory(text)


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("4 GiB", 4 * 2**30), ("512M", 512 * 10**6),
                                            ("4gb", 4 * 10**9), ("4G", 4 * 10**9), ("1e9", 10**9), ("0.5kB", 500),
                                            ("", "cannot read"), (" ", "cannot read"), ("GB", "cannot read"),
                                            ("kb", "cannot read"), ("0.5", "below 1 byte"), ("1e-3", "below 1 byte"),
                                            ("0", "must be positive"), ("-0.5GB", "must be positive")])
def test_a_memory_limit_starts_with_a_number_of_at_least_one_byte(text, expected):
    """Found by the out-of-core review: dask's parser reads a missing number as 1, so '' and ' ' were
    1 byte, 'GB' 1e9 (a run with --memory-limit GB succeeded and recorded "GB") and 'kb' 1000, while
    '0.5' (truncated to 0 bytes) was told it must be positive."""
    from deconv3d.pipeline.system_memory import parse_memory

    if isinstance(expected, int):
        assert parse_memory(text) == expected
        return
    with pytest.raises(InputError, match=f"{expected}.*: write it like 4GB") as caught:
        parse_memory(text)
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_a_memory_limit_without_a_number_stops_the_command(tmp_path, capsys):
    """--memory-limit GB ran (as 1e9 bytes) and recorded "GB"; it stops before any work, with exit status 2."""
    write_tiff(tmp_path / "img.tif", blurred_beads((8, 24, 24), gaussian_psf()), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "img.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.tif",
                        "--iterations", 1, "--device", "cpu", "--memory-limit", "GB"], capsys)
    assert_one_line_error(code, err, "cannot read memory limit 'GB'", "write it like 4GB")
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("chunks", [(12, 24, 24), (12, 12, 24)])
def test_chunks_above_the_limit_are_told_the_halo_they_run_with(tmp_path, chunks):
    """Found by the out-of-core review: --chunks equal to the whole volume were refused as needing
    their memory "with their halo (10, 7, 7)", while the run records halo (0, 0, 0): one block has
    none. The message names the halo the blocks get (none along an axis held whole)."""
    from deconv3d.pipeline import MemoryModel

    psf = gaussian_psf()
    volume, block = blurred_beads((12, 24, 24), psf, seed=4), RichardsonLucyBlock(psf, 1, accelerate=False)
    model = MemoryModel("rl", psf.shape)
    ran = run_chunked(volume, block, tmp_path / "o.zarr", chunks=chunks, memory_limit="100GB", model=model)
    if chunks == volume.shape:  # one block: no halo
        assert ran.blocks == 1 and ran.halo == (0, 0, 0)
    else:  # two blocks along y: a halo along y alone
        assert ran.blocks == 2 and ran.halo[0] == ran.halo[2] == 0 < ran.halo[1]
    with pytest.raises(InputError, match="above the memory limit 1MB") as caught:
        run_chunked(volume, block, tmp_path / "small.zarr", chunks=chunks, memory_limit="1MB", model=model)
    assert f"with their halo {tuple(ran.halo)}, above" in str(caught.value), str(caught.value)
    assert ran.execution["halo"] == list(ran.halo)


def test_the_generic_block_mappers_pass_non_finite_results_through(tmp_path):
    """Only the deconvolution blocks refuse an overflowed result; a user's own block function may
    return Inf through blockwise and run_blocks as before."""
    import zarr

    def to_inf(block):
        return np.full_like(block, -np.inf)

    data = np.zeros((4, 8, 8), np.float32)
    zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(4, 4, 4), dtype="float32")
    result, _ = blockwise(da.from_array(data), to_inf, chunks=(4, 4, 4), halo=(0, 0, 0))
    assert np.isneginf(result.compute(scheduler="sync")).all()
    assert run_blocks(data, to_inf, tmp_path / "a.zarr", chunks=(4, 4, 4), halo=(0, 0, 0)) == 4
    assert np.isneginf(zarr.open_array(str(tmp_path / "a.zarr"))[...]).all()


def test_dark_blocks_of_background_subtracted_data_run_without_a_word(tmp_path):
    """Blocks that are all below zero (background around the sample, an offset subtracted) are RL's
    zeros: they neither stop the run nor warn, though the image as a whole is checked."""
    import warnings

    from deconv3d.omezarr import read_ome_zarr
    from deconv3d.pipeline import RichardsonLucyBlock, run_chunked
    from deconv3d.selfsup.config import Reference

    from .conftest import gaussian_psf

    psf = gaussian_psf()
    volume = np.full((12, 48, 48), -1.0, np.float32)
    volume[4:8, 30:40, 30:40] = 50.0  # the sample, in one corner block
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for accelerate in (False, True):
            info = run_chunked(volume, RichardsonLucyBlock(psf, iterations=3, accelerate=accelerate),
                               tmp_path / f"o{accelerate}.zarr", chunks=(12, 16, 16))
            out = read_ome_zarr(tmp_path / f"o{accelerate}.zarr")[0]
            assert info.blocks == 9 and not out[:, :16, :16].any() and out[:, 30:40, 30:40].max() > 0
        reference = Reference(iterations=3)
        assert reference.estimate(volume[:, :16, :16], psf).shape == (12, 16, 16)
        assert reference.estimate(volume[:, :16, :16], psf, extended=True).shape == tuple(
            n + k - 1 for n, k in zip((12, 16, 16), psf.shape))


def test_chunked_runs_name_what_is_wrong_with_odd_files_as_in_memory_runs_do(tmp_path, capsys, monkeypatch):
    """Found by the real-world-files review, each on the chunked path (a .zarr output):
    a z-stack Fiji labelled as channels got 'PSF is 3D but image is 2D' without the relabel
    hint; a 2D image with --psf-model was told to 'set voxel_size'; float64 values past float32
    drew a numpy overflow warning, then 'contains NaN or Inf'; a header-only TIFF was 'list
    index out of range'."""
    monkeypatch.chdir(tmp_path)
    psf = gaussian_psf()
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    stack = blurred_beads((8, 32, 32), psf, seed=3)
    tifffile.imwrite(tmp_path / "cyx.tif", stack.astype(np.uint16), imagej=True)  # no axes: Fiji reads CYX
    tifffile.imwrite(tmp_path / "plane.tif", stack[4], imagej=True, resolution=(10, 10), metadata={"unit": "um"})
    huge = stack.astype(np.float64)
    huge[4, 16, 16] = 1e300
    tifffile.imwrite(tmp_path / "huge.tif", huge)
    (tmp_path / "empty.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")
    cases = [("cyx.tif", ["--psf", "psf.tif"], [f"3D but {tmp_path / 'cyx.tif'} is 2D", "axes CYX", "relabel"]),
             ("plane.tif", ["--psf-model", "gaussian", "--na", "1.2", "--wavelength", "0.5"],
              ["generates 3D PSFs", f"{tmp_path / 'plane.tif'} is 2D", "--shape 63 63 --voxel-size DY DX"]),
             ("huge.tif", ["--psf", "psf.tif"], ["up to 1e+300", "beyond the float32 range"]),
             ("empty.tif", ["--psf", "psf.tif"], ["holds no image", "TIFF header"])]
    for name, psf_args, words in cases:
        code, _, err = run(["deconvolve", tmp_path / name, "-o", tmp_path / "out.zarr", *psf_args], capsys)
        assert_one_line_error(code, err, *words)
        assert "warning" not in err and not (tmp_path / "out.zarr").exists()
    (tmp_path / "in").mkdir()
    (tmp_path / "plane.tif").rename(tmp_path / "in" / "plane.tif")
    code, out, err = run(["batch", tmp_path / "in", "-o", tmp_path / "res", "--psf", tmp_path / "psf.tif"], capsys)
    # (the line names the file before the reason, which says "the image")
    assert code == 3 and f"failed  {tmp_path / 'in' / 'plane.tif'}: PSF" in out and "3D but the image is 2D" in out, out
    assert "voxel size" not in out + err  # no false warning


def test_batch_reads_its_config_and_writes_its_report_in_utf8_whatever_the_locale(tmp_path, capsys, monkeypatch):
    """Under Windows' default text encoding (cp1252) a UTF-8 config naming 'psfs é/psf é.tif' read
    as 'psfs Ã©/...', and a file named in Cyrillic ended the finished batch in an internal error
    while writing the CSV report (found by the portability review). Emulated here by making
    text-mode open() default to cp1252."""
    import builtins
    import io

    real_open = io.open

    def cp1252_open(file, mode="r", buffering=-1, encoding=None, *args, **kwargs):
        if "b" not in mode and encoding in (None, "locale"):
            encoding = "cp1252"
        return real_open(file, mode, buffering, encoding, *args, **kwargs)

    (tmp_path / "psfs é").mkdir()
    (tmp_path / "in").mkdir()
    psf = gaussian_psf((5, 5, 5))
    write_tiff(tmp_path / "psfs é" / "psf é.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "in" / "клетка.tif", blurred_beads((8, 24, 24), psf), voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "batch.toml").write_text('psf = "psfs é/psf é.tif"\niterations = 2\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", cp1252_open)
    monkeypatch.setattr(io, "open", cp1252_open)
    code, out, err = run(["batch", "in", "-o", "out", "--config", "batch.toml"], capsys)
    monkeypatch.undo()
    assert code == 0, err
    report = (tmp_path / "out" / "batch_report.csv").read_text(encoding="utf-8-sig")
    assert "клетка.tif" in report and (tmp_path / "out" / "клетка.zarr").is_dir()


def test_the_sweep_goes_on_past_a_temporary_it_cannot_remove(tmp_path, monkeypatch):
    """A leftover held open (Windows) or not ours to delete is left for a later sweep; the run goes on."""
    from deconv3d._paths import temporaries

    held, gone = (tmp_path / f".img.zarr.999999999-{tag}.tmp" for tag in ("0123abcd", "89abcdef"))
    held.mkdir()
    gone.mkdir()
    real_remove = temporaries._remove

    def remove(path):
        if path == held:
            raise PermissionError(13, "The process cannot access the file", str(path))
        real_remove(path)

    monkeypatch.setattr(temporaries, "_remove", remove)
    assert remove_stale_temporaries(tmp_path / "img.zarr") == [gone]
    assert held.exists() and not gone.exists()


def test_a_temporary_from_another_pid_namespace_of_this_host_is_not_taken_for_this_process_s(tmp_path, monkeypatch):
    """Two containers on one host share its name while their process ids overlap: both runs were
    process 1, and the second removed the first's temporary as its own leftover, failing that run
    (found by the review of concurrent runs). The pid namespace is now part of the host's tag."""
    import os

    from deconv3d._paths import temporaries

    monkeypatch.setattr(temporaries, "_pid_namespace", lambda: "4026532175")
    mine = temporaries.host_tag()
    monkeypatch.setattr(temporaries, "_pid_namespace", lambda: "4026532999")
    assert temporaries.host_tag() != mine and temporaries.host_tag().startswith(mine.split("-ns")[0])
    other_container = tmp_path / f".img.zarr.{mine}@{os.getpid()}-0123abcd.tmp"  # its pid equals ours
    other_container.mkdir()
    # Versions before the namespace named the bare host: a live run of one in another container has a
    # pid this one cannot ask about (taking it for this machine's removed it: review of this session's
    # commits), so it is kept as another machine's would be.
    older_version = tmp_path / f".img.zarr.{mine.split('-ns')[0]}@999999999-4567cdef.tmp"
    older_version.mkdir()
    assert remove_stale_temporaries(tmp_path / "img.zarr") == []
    assert other_container.exists() and older_version.exists()


def test_a_chunked_tiff_outputs_scratch_is_no_wider_than_the_tiff_it_replaces(files, capsys, monkeypatch):
    """A chunked run writes a TIFF's result to a hidden scratch zarr first: it was made with the umask's
    mode (0755 under umask 022), and held the whole result of a ``chmod 600`` TIFF while it was
    rewritten. The scratch (and its own temporary, as it is made) is no wider than the TIFF: 0700."""
    import os
    import stat

    import deconv3d.io

    out = files / "out.tif"
    argv = ["deconvolve", files / "in.tif", "--psf", files / "psf.tif", "--iterations", 2, "--chunks", 12, 16, 16,
            "-o", out]
    write_tiff(out, np.zeros((2, 4, 4), np.float32))  # an earlier result, made private
    out.chmod(0o600)
    made, mkdir, write = {}, os.mkdir, deconv3d.io.write_tiff

    def watched_mkdir(path, *args, **kwargs):  # each temporary folder beside the output, as it is made
        mkdir(path, *args, **kwargs)
        if Path(path).parent == files and Path(path).name.endswith(".tmp"):
            made[Path(path).name] = stat.S_IMODE(os.stat(path).st_mode)

    def watched_write(path, *args, **kwargs):  # the scratch, complete, as the TIFF is written from it
        made.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in files.iterdir() if p.name.endswith(".tmp")})
        return write(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", watched_mkdir)
    monkeypatch.setattr(deconv3d.io, "write_tiff", watched_write)
    umask = os.umask(0o022)
    try:
        code, _, err = run(argv, capsys)
    finally:
        os.umask(umask)
    monkeypatch.undo()
    assert code == 0, err
    assert len(made) >= 2 and {oct(mode) for mode in made.values()} == {oct(0o700)}, made  # (scratch, its temporary)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert read_image(out).data.shape == (12, 24, 24)  # (replaced by this run's)
    assert sorted(p.name for p in files.iterdir()) == ["in.tif", "out.tif", "psf.tif"]
