"""Review of this stop's own commits, on putting an output in place (deconv3d.pipeline.output):
a signal between the two renames of a zarr output, with a caller's own Ctrl-C handler or with the
earlier output moved aside; a private report while it is rewritten; a name whose temporary names
are too long, through the library's writers."""

import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

from deconv3d.cli import _terminate_as_interrupt
from deconv3d.errors import InputError
from deconv3d.pipeline import output


def _zarr_like(path: Path, text: str) -> None:
    (path / "0").mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"deconv3d": {"version": "x"}}}))
    (path / "0" / "c0").write_text(text)


def _signal_after_moving_aside(monkeypatch, out: Path, signum: int) -> None:
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(src) == out:  # the earlier output moved aside, the new one not yet in place
            signal.raise_signal(signum)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("signum, caught", [(signal.SIGTERM, KeyboardInterrupt), (signal.SIGINT, RuntimeError)])
def test_a_signal_between_the_renames_leaves_the_new_output_and_not_the_earlier_one(tmp_path, monkeypatch,
                                                                                    signum, caught):
    """SIGTERM there left the earlier output, moved aside, beside the new one (twice the disk space);
    Ctrl-C under a caller's own SIGINT handler (napari's, Qt's) was not deferred at all: both gone."""
    def callers_handler(s, frame):
        raise RuntimeError("the caller's Ctrl-C")

    previous = signal.signal(signal.SIGINT, callers_handler)
    try:
        out = tmp_path / "out.zarr"
        _zarr_like(out, "earlier")
        _signal_after_moving_aside(monkeypatch, out, signum)
        with pytest.raises(caught) as raised, _terminate_as_interrupt():
            with output.atomic_output(out, folder=True) as tmp:
                _zarr_like(tmp, "new")
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is callers_handler  # (given back)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert raised.value.published == str(out)
    assert (out / "0" / "c0").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.zarr"]


def test_a_private_report_is_private_while_it_is_rewritten(tmp_path, monkeypatch):
    from deconv3d._paths import keep_mode, temporaries
    from deconv3d.pipeline.batch_report import _write_reports

    modes = []
    real = os.replace

    def replace(src, dst):  # the temporary's mode just before it is put in place, its text all written
        modes.append(stat.S_IMODE(os.stat(src).st_mode))
        real(src, dst)

    rows = [{"file": "a.tif", "status": "done", "seconds": 1.0, "output": "a.zarr", "reason": "", "warnings": []}]
    for name in ("batch_report.json", "batch_report.csv"):
        (tmp_path / name).write_text("{}")
        os.chmod(tmp_path / name, 0o600)
    written = []
    monkeypatch.setattr(temporaries, "keep_mode", lambda path, tmp: (written.append(os.path.getsize(tmp)),
                                                                        keep_mode(path, tmp)))  # (create_temporary's)
    monkeypatch.setattr(os, "replace", replace)
    _write_reports(tmp_path, rows)
    monkeypatch.undo()
    assert written == [0, 0]  # the mode set before any text went in
    assert modes == [0o600, 0o600]
    assert all(stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
               for name in ("batch_report.json", "batch_report.csv"))


@pytest.mark.parametrize("writer", ["write_ome_zarr", "run_chunked"])
def test_a_name_whose_temporary_names_are_too_long_is_refused_by_the_library_writers(tmp_path, writer):
    """235 bytes fit the file system, not the temporary name beside it: a raw OSError(36), no file named."""
    from deconv3d.omezarr import write_ome_zarr
    from deconv3d.pipeline import run_chunked

    path = tmp_path / ("a" * 235 + ".zarr")
    data = np.ones((4, 8, 8), np.float32)
    with pytest.raises(InputError, match="shorten it to"):
        if writer == "write_ome_zarr":
            write_ome_zarr(path, data)
        else:
            run_chunked(data, lambda block: block, str(path))
    assert os.listdir(tmp_path) == []
