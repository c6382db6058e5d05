"""The benchmark scripts' own logic (parsing, warm-up, aggregation, targets) on tiny or stubbed
work: the measurements themselves live in benchmarks/ and are not run here."""

import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench_pipeline  # noqa: E402


@pytest.mark.parametrize("line, plan", [
    ("wrote o.zarr: rl in 12 block(s) of at most (32, 128, 256) + halo (8, 8, 8) in 3.1 s",
     "12 blocks of at most (32, 128, 256) + halo (8, 8, 8)"),
    ("wrote o.zarr: rl in 3 block(s) of (16, 48, 48) + halo (4, 4, 4) in 1.0 s",
     "3 blocks of (16, 48, 48) + halo (4, 4, 4)"),
    ("no plan here", "?"),
])
def test_the_pipeline_bench_reads_the_block_plan_of_the_cli(line, plan):
    assert bench_pipeline.block_plan("progress...\n" + line + "\nVMHWM 123\n") == plan


def test_the_pipeline_bench_runs_each_variant_once_untimed_first(monkeypatch, tmp_path):
    """The first run pays the process's one-time costs: it must not be one of the timed runs."""
    import deconv3d.classical
    import deconv3d.pipeline

    calls = {"whole": 0, "chunked": 0}
    shape = (8, 24, 24)

    def counted(name, fn):
        def run(image, *args, **kwargs):
            calls[name] += image.shape == shape  # richardson_lucy on the whole image, not on a block
            return fn(image, *args, **kwargs)
        return run

    monkeypatch.setattr(deconv3d.classical, "richardson_lucy", counted("whole", deconv3d.classical.richardson_lucy))
    monkeypatch.setattr(deconv3d.pipeline, "run_chunked", counted("chunked", deconv3d.pipeline.run_chunked))
    args = bench_pipeline.parse_args(["--shape", *map(str, shape), "--chunks", "4", "12", "12", "--iterations", "2",
                                      "--psf-size", "5", "--repeats", "2"])
    result = bench_pipeline.part_throughput(args, tmp_path)
    assert calls == {"whole": 3, "chunked": 3}
    assert [len(t) for t in result["times"].values()] == [2, 2]
    assert list(tmp_path.iterdir()) == []  # every chunked output removed


def test_the_rl_bench_states_issue_2s_targets_the_way_round_they_are_set():
    """The table's column is other / deconv3d (the floor 0.84x); the floor target is deconv3d / floor."""
    import bench_rl

    line = bench_rl.target_line({"ours": 10.0, "floor": 8.4, "skimage": 40.0, "redlionfish": 9.0})
    assert "deconv3d / FFT floor 1.19x (target <= 1.2x: met)" in line
    assert "scikit-image / deconv3d 4.00x (target >= 3.5x: met)" in line
    assert "RedLionfish / deconv3d 0.90x (target > 1x: MISSED)" in line
    slow = bench_rl.target_line({"ours": 10.0, "floor": 5.0, "skimage": 30.0})
    assert "deconv3d / FFT floor 2.00x (target <= 1.2x: MISSED)" in slow and "3.00x (target >= 3.5x: MISSED)" in slow
    assert "RedLionfish" not in slow  # not installed: no row, no target


def test_the_rl_bench_s_equal_cost_ratio_is_set_up_plus_the_iterations_share():
    import bench_rl

    # 0.1 s set-up, 20 plain iterations of 0.05 s: 9 of them and the set-up are 0.55 of 1.1 s
    assert bench_rl.equal_cost_ratio(0.1, 1.1, 9, 20) == pytest.approx(0.55 / 1.1)
    assert bench_rl.equal_cost_ratio(0.0, 2.0, 10, 20) == pytest.approx(0.5)  # no set-up: the iterations' share


def _stub_runs(monkeypatch, module, values):
    """Replace the module's one-process run with ``values`` in turn; returns the list of calls."""
    calls = []

    def run_case(*case):
        calls.append(case[:-1])
        return values[len(calls) - 1]

    monkeypatch.setattr(module, "run_case", run_case)
    return calls


def test_the_network_memory_bench_runs_each_case_in_several_processes(monkeypatch, capsys):
    """One process's peak swings by +-20 %: the table gives median, range and the largest ratio."""
    import bench_network_memory

    counted = 195_000_000
    calls = _stub_runs(monkeypatch, bench_network_memory, [(m * 1_000_000, counted) for m in (160, 205, 229, 160)])
    bench_network_memory.main(["--shapes", "512x512", "--runs", "4"])
    out = capsys.readouterr().out
    assert calls == [((512, 512),)] * 4
    assert "| 512x512 | 182 (160-229) | 195 | 0.94 (0.82-1.17) | 1.17 |" in out
    assert "largest measured / model over all runs: 1.17" in out


def test_the_block_memory_bench_runs_each_case_in_several_processes(monkeypatch, capsys):
    import bench_block_memory

    mb = 1_000_000
    calls = _stub_runs(monkeypatch, bench_block_memory, [(90 * mb, 95 * mb, 100 * mb, 40 * mb),
                                                         (110 * mb, 120 * mb, 100 * mb, 42 * mb),
                                                         (80 * mb, 80 * mb, 100 * mb, 41 * mb)])
    bench_block_memory.main(["--methods", "rl", "--psfs", "15", "--shapes", "32x128x128", "--runs", "3"])
    out = capsys.readouterr().out
    assert calls == [("rl", (32, 128, 128), 15)] * 3
    assert "| rl | 32x128x128 | 15^3 | 90 (80-110) | 100 | 0.90 (0.80-1.10) | 1.10 | 1.20 | 41 |" in out
    assert "largest measured / model over all runs: 1.10" in out


def test_the_memory_benches_quick_smoke_test_runs_each_case_once(monkeypatch, capsys):
    """Found by review: --quick kept --runs 5, so the smoke test started 30 and 10 fresh processes and
    took minutes. --quick now runs one process per case unless --runs is given."""
    import bench_block_memory
    import bench_network_memory

    mb = 1_000_000
    calls = _stub_runs(monkeypatch, bench_block_memory, [(90 * mb, 95 * mb, 100 * mb, 40 * mb)] * 12)
    bench_block_memory.main(["--quick"])
    assert calls == [(m, (8, 32, 32), 5) for m in bench_block_memory.METHODS]  # 6 cases, one run each
    calls.clear()
    bench_block_memory.main(["--quick", "--methods", "rl", "--runs", "2"])
    assert calls == [("rl", (8, 32, 32), 5)] * 2
    calls = _stub_runs(monkeypatch, bench_network_memory, [(10 * mb, 12 * mb)] * 4)
    bench_network_memory.main(["--quick"])
    assert calls == [((64, 64),), ((8, 32, 32),)]
    assert "1 fresh process(es) per case" in capsys.readouterr().out


def test_the_cluster_examples_stacks_are_not_taken_for_background_subtracted_data(tmp_path):
    """Read noise on a zero background made 44 % of the voxels negative, and every run warned."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import local_cluster

    from deconv3d.errors import warn_negative_share
    from deconv3d.io import read_image

    local_cluster.make_inputs(tmp_path, 1)
    data = read_image(tmp_path / "raw" / "stack00.tif").data
    warnings = []
    warn_negative_share(float((data < 0).mean()), "stack00.tif", "rl", warnings)
    assert warnings == []


def test_the_cluster_example_counts_one_stack_in_the_singular():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import local_cluster

    assert local_cluster.inputs_line(1, 0.25) == f"wrote 1 stack of {local_cluster.SHAPE} and a PSF in 0.2 s"
    assert local_cluster.inputs_line(3, 2.0) == f"wrote 3 stacks of {local_cluster.SHAPE} and a PSF in 2.0 s"


@pytest.mark.parametrize("methods", [("ssi", "before"), ("before", "ssi")])
def test_the_selfsup_bench_sets_the_network_rows_against_issue_3s_targets(monkeypatch, capsys, methods):
    """At sigma 0.1: 0.5 dB above the best classical row, and before-PSF 0.5 dB above SSI's same row
    (ssi runs first whatever the order given: before-PSF's SSI target had been dropped)."""
    from types import SimpleNamespace

    import numpy as np

    import bench_selfsup

    volume = np.ones((4, 8, 8), np.float32)
    psnrs = iter([25.2, 25.3, 25.8, 25.6])  # ssi, ssi band-limited, before, before band-limited
    result = SimpleNamespace(seconds=1.0, steps_done=3, precision="float32", warm_steps=0, reference=None,
                             config=SimpleNamespace(precondition=0.0))
    monkeypatch.setattr(bench_selfsup, "bench_psf", lambda: volume[:3, :3, :3] / 27)
    monkeypatch.setattr(bench_selfsup, "make_volume", lambda *a, **k: (volume, volume, volume))
    monkeypatch.setattr(bench_selfsup, "baselines", lambda *a: (25.0, 0.8))  # the best oracle rl / rl-tv row
    monkeypatch.setattr(bench_selfsup, "train", lambda *a, **k: result)
    monkeypatch.setattr(bench_selfsup, "apply_model", lambda *a, **k: volume)
    monkeypatch.setattr(bench_selfsup, "score", lambda truth, out: (next(psnrs), 0.5))
    bench_selfsup.main(["--quick", "--volumes", "bars", "--sigmas", "0.1", "--methods", *methods, "--no-tta"])
    rows = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ssl")}
    classical = ">= 25.50 (best classical 25.00 + 0.5)"
    assert rows["ssl ssi"] == ""  # issue 3 sets targets for the before-PSF rows only
    assert rows["ssl before"] == classical + ": met; >= 25.70 (ssi 25.20 + 0.5): met"
    assert rows["ssl before (band limit 0.01)"] == classical + ": met; >= 25.80 (ssi 25.30 + 0.5): missed"


def test_the_selfsup_targets_at_low_noise_ask_for_no_loss_and_elsewhere_for_nothing():
    import bench_selfsup

    low = bench_selfsup.Targets(0.01, 28.5)
    assert low.note("ssi", (0, ""), 27.0) == ""  # (no target for other rows)
    assert low.note("before", (0, ""), 28.5) == ">= 28.50 (best classical 28.50 + 0): met"  # no SSI target
    assert bench_selfsup.Targets(0.05, 28.5).note("before", (0, ""), 30.0) == ""
    assert bench_selfsup.Targets(0.1, None).note("before", (0, ""), 30.0) == ""  # --no-baselines, no SSI row


def test_the_cluster_examples_quoted_command_line_makes_its_settings(tmp_path, monkeypatch):
    """Found by review: examples/README.md called `deconv3d batch RAW -o OUT --psf PSF.tif --scheduler
    processes --workers 2` the command-line form of local_cluster.py, but the script runs 20
    iterations in blocks of 16x48x48 and that command ran the whole volume at the default count."""
    import re
    import shlex

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
    import local_cluster

    from deconv3d.cli import build_parser
    from deconv3d.cli.pipeline import settings_from_args
    from deconv3d.io import write_tiff
    from deconv3d.pipeline.batch import make_settings

    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "PSF.tif", np.full((3, 3, 3), 1 / 27, np.float32), voxel_size=(0.3, 0.1, 0.1))
    examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    readme = Path(examples, "README.md").read_text(encoding="utf-8")
    quoted = re.search(r"`(deconv3d batch [^`]*)` *\nis the command-line form of `local_cluster.py`", readme).group(1)
    args = build_parser().parse_args(shlex.split(quoted)[1:])
    assert (args.scheduler, args.workers) == ("processes", 2)
    assert settings_from_args(args, {}) == make_settings({**local_cluster.SETTINGS, "psf": "PSF.tif"})
