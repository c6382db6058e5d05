"""File names that are not valid UTF-8 (``lat\\xe9.tif``, written by Latin-1 era software): Python
reads them with a lone surrogate, which hashing, TIFF properties and the CSV report could not
encode (internal errors after the whole computation, and a batch without its report)."""

import csv
import json
import os
import sys

import pytest
import tifffile
from cli_helpers import run

from deconv3d.io import write_tiff

from .conftest import blurred_beads, gaussian_psf

LATIN1 = os.fsdecode(b"lat\xe9.tif")  # as os.listdir gives it: "lat\udce9.tif"
SHOWN = "lat\\xe9.tif"  # as reports and provenance hold it


@pytest.fixture
def folder(tmp_path):
    if sys.platform in ("darwin", "win32"):
        pytest.skip("these file systems hold only valid Unicode names")
    psf = gaussian_psf((5, 5, 5))
    (tmp_path / "in").mkdir()
    try:
        write_tiff(tmp_path / "in" / LATIN1, blurred_beads((8, 16, 16), psf, seed=1), voxel_size=(0.3, 0.1, 0.1))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    write_tiff(tmp_path / "in" / "plain.tif", blurred_beads((8, 16, 16), psf, seed=2), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


@pytest.mark.parametrize("output, extra", [("o.tif", []), ("o.tif", ["--chunks", 8, 8, 8]), ("o.zarr", [])])
def test_deconvolve_reads_and_records_a_name_that_is_not_utf8(folder, capsys, output, extra):
    code, _, err = run(["deconvolve", folder / "in" / LATIN1, "-o", folder / output, "--psf", folder / "psf.tif",
                        "--iterations", 2, *extra], capsys)
    assert code == 0, err
    if output.endswith(".tif"):
        with tifffile.TiffFile(folder / output) as tif:  # closed: an open file warned under -W error
            recorded = tif.imagej_metadata["Properties"]["input"]
    else:
        recorded = json.loads((folder / output / "zarr.json").read_text(encoding="utf-8"))["attributes"]
        recorded = recorded["deconv3d"]["input"]["path"]
    assert recorded.endswith(SHOWN)


@pytest.mark.parametrize("output_format", ["zarr", "tif"])
def test_a_batch_with_a_name_that_is_not_utf8_writes_its_report_and_resumes(folder, capsys, output_format):
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--iterations", 2,
            "--output-format", output_format]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert (out / f"{LATIN1[:-4]}.{output_format}").exists() and SHOWN in stdout
    if output_format == "zarr":  # its multiscales name too: a lone surrogate is no JSON a strict parser takes
        text = (out / f"{LATIN1[:-4]}.zarr" / "zarr.json").read_text(encoding="utf-8")
        assert "\\udc" not in text and json.loads(text)["attributes"]["ome"]["multiscales"][0]["name"] == SHOWN[:-4]

    def report():
        with open(out / "batch_report.csv", encoding="utf-8-sig", newline="") as fh:
            rows = {os.path.basename(r["file"]): r["status"] for r in csv.DictReader(fh)}
        text = (out / "batch_report.json").read_bytes().decode("utf-8")
        assert "\\udc" not in text  # no lone surrogate in the JSON
        assert {os.path.basename(r["file"]): r["status"] for r in json.loads(text)["files"]} == rows
        return rows

    assert report() == {SHOWN: "done", "plain.tif": "done"}
    assert run(argv, capsys)[0] == 0
    assert report() == {SHOWN: "skipped", "plain.tif": "skipped"}  # its completion record matched
    # a run that does not see it keeps its row (the file, named by the report's text, still exists)
    assert run([*argv, "--pattern", "plain.tif"], capsys)[0] == 0
    assert report() == {SHOWN: "skipped", "plain.tif": "skipped"}


def test_a_strict_terminal_prints_such_an_output_name_instead_of_failing(folder):
    """With a strict stdout (a UTF-8 locale other than C), "wrote out\\udce9.tif" failed to encode:
    an internal error, exit 1, after the output had been written. The name is shown as the reports
    spell it (path_text: the byte that is not UTF-8 as \\xe9)."""
    import subprocess

    output = folder / os.fsdecode(b"out\xe9.tif")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    done = subprocess.run([sys.executable, "-m", "deconv3d", "deconvolve", folder / "in" / LATIN1, "-o", output,
                           "--psf", folder / "psf.tif", "--iterations", "2"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert b"out\\xe9.tif: rl on" in done.stdout and output.is_file()
