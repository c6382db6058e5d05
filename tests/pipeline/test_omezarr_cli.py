"""OME-Zarr round trip, ome-zarr-py reading our output, and the out-of-core CLI (deconvolve, batch)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import assert_one_line_error, full_disk_probe, run
from deconv3d.io import write_tiff
from deconv3d.metrics import psnr
from deconv3d.omezarr import open_lazy, read_ome_zarr, write_ome_zarr

from .conftest import blurred_beads, gaussian_psf


def test_round_trip_keeps_data_axes_scale_and_pyramid(tmp_path):
    data = np.random.default_rng(0).random((2, 20, 32, 32)).astype(np.float32)
    write_ome_zarr(tmp_path / "a.zarr", data, axes="CZYX", voxel_size=(0.5, 0.2, 0.1), chunks=(1, 8, 16, 16),
                   provenance={"method": "rl"}, pyramid_levels=1)
    back, voxel, axes, attrs = read_ome_zarr(tmp_path / "a.zarr")
    np.testing.assert_array_equal(back, data)
    assert axes == "CZYX" and voxel == pytest.approx((0.5, 0.2, 0.1))
    assert attrs["ome"]["version"] == "0.5" and attrs["deconv3d"] == {"method": "rl"}
    level1, voxel1, _, _ = read_ome_zarr(tmp_path / "a.zarr", level=1)
    assert level1.shape == (2, 10, 16, 16) and voxel1 == pytest.approx((1.0, 0.4, 0.2))
    np.testing.assert_allclose(level1[0, 0, 0, 0], data[0, :2, :2, :2].mean(), rtol=1e-5)
    # level 1's first voxel sits at the centre of the 2x2x2 level-0 voxels it averages
    transforms = attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    assert transforms[1] == {"type": "translation", "translation": pytest.approx([0.0, 0.25, 0.1, 0.05])}


def test_reads_ome_zarr_v04(tmp_path):
    import zarr

    data = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    group = zarr.open_group(str(tmp_path / "v4.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=data, chunks=(2, 6, 8))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "nanometer"}
                                                               for a in "zyx"],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [300.0, 100.0, 100.0]}]}]}]
    lazy = open_lazy(tmp_path / "v4.zarr")
    assert lazy.axes == "ZYX" and lazy.voxel_size == pytest.approx((0.3, 0.1, 0.1))
    np.testing.assert_array_equal(lazy.data.compute(), data.astype(np.float32))


def test_tiff_opens_lazily(tmp_path):
    import dask.array as da

    data = np.random.default_rng(1).random((6, 20, 24)).astype(np.float32)
    write_tiff(tmp_path / "s.tif", data, voxel_size=(0.4, 0.2, 0.2))
    lazy = open_lazy(tmp_path / "s.tif")
    assert isinstance(lazy.data, da.Array) and lazy.data.chunksize == (1, 20, 24)
    assert lazy.voxel_size == pytest.approx((0.4, 0.2, 0.2)) and lazy.axes == "ZYX"
    np.testing.assert_array_equal(lazy.data[2:4].compute(), data[2:4])


def test_ome_zarr_py_reads_our_output(tmp_path):
    reader = pytest.importorskip("ome_zarr.reader", reason="ome-zarr (ome-zarr-py) is not installed")
    from ome_zarr.io import parse_url

    data = np.random.default_rng(2).random((8, 16, 16)).astype(np.float32)
    write_ome_zarr(tmp_path / "b.zarr", data, voxel_size=(0.5, 0.25, 0.25), pyramid_levels=1)
    node = list(reader.Reader(parse_url(str(tmp_path / "b.zarr")))())[0]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[0][0]["scale"] == pytest.approx([0.5, 0.25, 0.25])
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert node.metadata["name"] == "b"  # not the temporary folder it was written in


@pytest.fixture
def folder(tmp_path):
    psf = gaussian_psf()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        write_tiff(inputs / f"img{i}.tif", blurred_beads((12, 24, 24), psf, seed=i), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def batch_argv(d, out, *extra):
    return ["batch", d / "in", "-o", out, "--psf", d / "psf.tif", "--iterations", 3, "--chunks", 12, 12, 12, *extra]


def test_batch_failing_file_exit_3_others_complete_and_resume(folder, capsys):
    (folder / "in" / "broken.tif").write_bytes(b"not a tiff")
    code, out, err = run(batch_argv(folder, folder / "out"), capsys)
    assert code == 3, err
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    status = {r["file"].split("/")[-1]: r["status"] for r in report["files"]}
    assert status == {"broken.tif": "failed", "img0.tif": "done", "img1.tif": "done", "img2.tif": "done"}
    assert "broken.tif" in err and (folder / "out" / "batch_report.csv").exists()
    first = read_ome_zarr(folder / "out" / "img1.zarr")[0]
    code, _, _ = run(batch_argv(folder, folder / "out"), capsys)
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    assert code == 3 and sorted(r["status"] for r in report["files"]) == ["failed", "skipped", "skipped", "skipped"]
    np.testing.assert_array_equal(read_ome_zarr(folder / "out" / "img1.zarr")[0], first)


def test_a_batch_names_a_failed_file_alike_in_its_line_and_at_the_end(folder, capsys, monkeypatch):
    """The per-file line named sub/broken.tif by its base name, the line at the end by its absolute path:
    both now name it as the input folder given joined with its path in it, as --help says."""
    (folder / "in" / "sub").mkdir()
    (folder / "in" / "sub" / "broken.tif").write_bytes(b"not a tiff")
    monkeypatch.chdir(folder)
    code, out, err = run(["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", 1, "--pattern", "*.tif",
                          "--pattern", "*/*.tif"], capsys)
    shown = os.path.join("in", "sub", "broken.tif")
    assert code == 3 and f"[4/4] failed  {shown}: " in out, out
    assert err.startswith(f"deconv3d: failed: {shown}: "), err
    assert out.splitlines()[0] == f"[1/4] done    {os.path.join('in', 'img0.tif')}", out
    with pytest.raises(SystemExit):
        run(["batch", "--help"], capsys)
    assert "joined with its path in that folder" in " ".join(capsys.readouterr().out.split())


def test_a_batch_input_with_no_path_from_the_folder_is_named_as_the_report_holds_it(monkeypatch):
    """os.path.relpath raises ValueError on Windows for a file on another drive than the folder: the
    line naming the file raised, ending the batch with a traceback. It names the file as recorded."""
    import ntpath

    from deconv3d.cli.batch import shown_input

    monkeypatch.setattr(os.path, "relpath", ntpath.relpath)  # (Windows' rule for drives)
    assert shown_input("D:\\data\\a.tif", "C:\\in") == "D:\\data\\a.tif"


@pytest.mark.parametrize("argv, words", [
    (["batch", "missing_dir", "-o", "out", "--psf", "psf.tif"], ["input folder not found"]),
    (["batch", "in", "-o", "out", "--psf", "psf.tif", "--scheduler", "bogus"], ["unknown scheduler"]),
    # an address without its port passed the check, then failed in distributed: an internal error, "ValueError:
    # missing port number in address '127.0.0.1'"
    (["batch", "in", "-o", "out", "--psf", "psf.tif", "--scheduler", "tcp://127.0.0.1/"],
     ["scheduler address tcp://127.0.0.1/ gives no port", "e.g. tcp://127.0.0.1:8786"]),
    (["batch", "in", "-o", "out", "--psf", "psf.tif", "--memory-limit", "lots"], ["memory limit"]),
    (["batch", "in", "-o", "out", "--method", "rl"], ["PSF is needed"]),
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.zarr", "--memory-limit", "1kB"],
     ["too small", "of it the program's own (Python, torch", "--memory-limit"]),
    (["deconvolve", "in/img0.tif", "-o", "x.zarr", "--method", "ssl", "--model", "psf.tif", "--train-steps", "2"],
     ["--model or --train-steps", "not both"]),
    (["batch", "in", "-o", "out", "--psf", "psf.tif", "--method", "ssl"], ["needs model", "or train_steps"]),
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.zarr", "--pyramid-levels", "-1"],
     ["--pyramid-levels", "0 or more"]),
    (["deconvolve", "empty.zarr", "--psf", "psf.tif", "-o", "x.zarr"], ["as OME-Zarr", "image group"]),
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.xyz"], ["'.xyz'", "use .tif, .tiff or .zarr"]),
    (["batch", "in", "-o", "in/x.zarr", "--psf", "psf.tif"], ["would be read as an input"]),
    (["batch", "in", "-o", "out", "--psf", "psf.tif", "--iterations", "many"], ["--iterations", "whole number or auto"]),
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.zarr", "--chunks", 12, 24, 24, "--memory-limit",
      "100MB"], ["above the memory limit 100MB", "no chunks fit it", "use --memory-limit"]),  # the limit was ignored with --chunks
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.zarr", "--method", "rl-tv", "--tv-weight", 0.7],
     ["error: --method rl-tv needs a positive --tv-weight below 0.5"]),  # was 'batch configuration: ... tv_weight'
    (["batch", "in", "-o", "out", "--psf", "psf.tif", "--method", "rl-tv", "--tv-weight", 0.7],
     ["batch configuration: method rl-tv needs a positive tv_weight"]),  # a config's keys: their names
    # each image's own limit (voxel size 0.3 0.1 0.1), up front: 0.4 passed the check above, then every
    # block refused it as 'tv_weight must be a number in [0, 0.214)', the Python name; so did a run in memory
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.zarr", "--method", "rl-tv", "--tv-weight", 0.4,
      "--chunks", 12, 12, 12],
     ["--tv-weight 0.4 is too large for in", "img0.tif: RL-TV needs it below 0.214", "0.3 0.1 0.1"]),
    (["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "x.tif", "--method", "rl-tv", "--tv-weight", 0.3],
     ["--tv-weight 0.3 is too large for in", "img0.tif: RL-TV needs it below 0.214"]),
    (["deconvolve", "in/img0.tif", "--psf", "chunks/psf.tif", "-o", "x.zarr", "--chunks", 12, 12, 12],
     ["PSF file not found: chunks/psf.tif"]),  # the option names were put into the path too
    # an OME-Zarr PSF folder was 'PSF file not found' out of core, a TIFF reader's complaint in memory
    (["deconvolve", "in/img0.tif", "--psf", "empty.zarr", "-o", "x.zarr"],
     ["PSF empty.zarr is an OME-Zarr folder", "PSFs are read from TIFF files only", "give a .tif"]),
    (["deconvolve", "in/img0.tif", "--psf", "empty.zarr", "-o", "x.tif"],
     ["PSF empty.zarr is an OME-Zarr folder", "PSFs are read from TIFF files only", "give a .tif"]),
    (["deconvolve", "in/img0.tif", "--psf", "nope.tif", "-o", "x.tif"], ["PSF file not found: nope.tif"]),
])
def test_bad_input_one_line_exit_2(folder, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(folder)
    (folder / "empty.zarr").mkdir()
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deconv3d: error: "), err
    for word in words:
        assert word.lower() in lines[0].lower()
    assert not (folder / "x.zarr").exists() and not list(folder.glob(".x.zarr*"))


def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_an_output_inside_the_input_or_holding_it_is_refused(folder, capsys, monkeypatch):
    """An output .zarr inside an input .zarr changed the input; an output .zarr holding the
    input (or the PSF) deleted it when the finished output replaced the folder (an output holding
    what deconv3d did not write there is refused as such first, naming it)."""
    monkeypatch.chdir(folder)
    write_ome_zarr("a.zarr", blurred_beads((12, 24, 24), gaussian_psf(), seed=0), voxel_size=(0.3, 0.1, 0.1))
    write_ome_zarr("a.zarr/inner.zarr", blurred_beads((12, 24, 24), gaussian_psf(), seed=1))
    before = _tree(folder / "a.zarr")
    holds = "holds entries it did not write (inner.zarr)"
    for argv, words in ((["deconvolve", "a.zarr", "-o", "a.zarr/out.zarr", "--psf", "psf.tif"], "one inside the other"),
                        (["deconvolve", "a.zarr/inner.zarr", "-o", "a.zarr", "--psf", "psf.tif"], holds),
                        (["deconvolve", "in/img0.tif", "-o", "a.zarr", "--psf", "a.zarr/inner.zarr/zarr.json"], holds)):
        code, _, err = run(argv + ["--iterations", 2], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert _tree(folder / "a.zarr") == before


def test_batch_into_a_subfolder_of_the_input_that_no_pattern_finds(folder, capsys):
    """data/ -> data/deconvolved/ is a common layout: the default patterns do not look inside
    subfolders, so its outputs are never read as inputs (only an output folder that matches a
    pattern, like in/x.zarr, is refused)."""
    for _ in range(2):
        code, out, err = run(batch_argv(folder, folder / "in" / "deconvolved"), capsys)
        assert code == 0, err
    assert "skipped" in out and (folder / "in" / "deconvolved" / "img0.zarr").is_dir()


def test_batch_into_an_input_zarr_is_refused_and_a_suffixless_zarr_is_read(folder, capsys, monkeypatch):
    """in/a.zarr is an input: an output folder inside it would change it on every run. And an
    OME-Zarr folder without the .zarr suffix is an input for any output format."""
    monkeypatch.chdir(folder)
    write_ome_zarr("in/a.zarr", blurred_beads((12, 24, 24), gaussian_psf(), seed=4), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", "in", "-o", "in/a.zarr/out", "--psf", "psf.tif", "--iterations", 2], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "would be read as an input" in lines[0], err
    write_ome_zarr("sample", blurred_beads((12, 24, 24), gaussian_psf(), seed=5), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", "sample", "-o", "sample_out.tif", "--psf", "psf.tif", "--iterations", 2], capsys)
    assert code == 0, err


def test_batch_into_a_link_to_an_input_zarr_is_refused(folder, capsys, monkeypatch):
    """An output folder given as a link to an input (olink -> in/raw.zarr) passed the check on
    the path as given, and the batch wrote its outputs, reports and records into that input."""
    monkeypatch.chdir(folder)
    write_ome_zarr("in/raw.zarr", blurred_beads((12, 24, 24), gaussian_psf(), seed=4), voxel_size=(0.3, 0.1, 0.1))
    Path("olink").symlink_to(Path("in/raw.zarr").resolve(), target_is_directory=True)
    before = _tree(folder / "in" / "raw.zarr")
    code, _, err = run(["batch", "in", "-o", "olink", "--psf", "psf.tif", "--iterations", 2], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "would be read as an input" in lines[0], err
    assert _tree(folder / "in" / "raw.zarr") == before


def test_batch_into_the_target_of_a_linked_subfolder_is_refused(folder, capsys, monkeypatch):
    """raw/day2 -> /abs/day2, then 'batch raw -o day2 --pattern */*.tif' wrote day2/a.tif, which the
    pattern reads through the link: the rerun failed ("day1/a.tif and day2/a.tif would both write
    a.tif"). The output folder is tested through the links the pattern follows too, as -o raw/day2 is."""
    from deconv3d.cli.batch_output_folder import _found_as_input

    monkeypatch.chdir(folder)
    (folder / "raw" / "day1").mkdir(parents=True)
    (folder / "in" / "img0.tif").rename(folder / "raw" / "day1" / "a.tif")
    (folder / "day2").mkdir()
    (folder / "raw" / "day2").symlink_to(folder / "day2", target_is_directory=True)  # absolute
    for out in ("day2", "raw/day2"):
        code, _, err = run(["batch", "raw", "-o", out, "--pattern", "*/*.tif", "--output-format", "tif",
                            "--psf", "psf.tif", "--iterations", 2], capsys)
        assert_one_line_error(code, err, f"output folder {out} would be read as an input")
    assert list((folder / "day2").iterdir()) == []
    raw = Path("raw")
    assert _found_as_input(Path("day2"), raw, ["*/*.TIF"])  # (the batch's search ignores case)
    assert _found_as_input(Path("day2/sub"), raw, ["*/*/*.tif"])  # inside the link's target
    assert _found_as_input(Path("day2"), raw, ["day2/*.tif"])  # a pattern naming the link
    (raw / "all").symlink_to(folder, target_is_directory=True)  # a link to a folder above the output
    assert _found_as_input(Path("res"), raw, ["all/*/*.tif"])
    # folders the patterns do not read through the links
    assert not any(_found_as_input(Path(out), raw, [pattern]) for out, pattern in
                   (("day2/sub", "*/*.tif"), ("day2", "day1/*.tif"), ("day2", "*.tif"), ("res", "*/*.tif")))


@pytest.fixture
def unresolved_alias(folder, monkeypatch):
    """``IN``: a second spelling of the folder ``in`` that :meth:`Path.resolve` keeps as given, as
    macOS's resolve keeps another case of a name on its case-insensitive disk (or any system a bind
    mount): a link that resolve is made not to follow, while ``os.stat`` follows it."""
    monkeypatch.chdir(folder)
    Path("IN").symlink_to(folder / "in", target_is_directory=True)
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.abspath(self)))
    return folder


def test_an_output_folder_spelled_otherwise_than_the_input_is_refused(unresolved_alias, capsys):
    """``batch same -o SAME`` on macOS wrote its outputs and reports among the inputs: the folders
    were compared as resolved text. Told by device and inode now, inside the input too."""
    from deconv3d._paths import OUTPUT_SUFFIXES, check_output_path
    from deconv3d.cli.batch_output_folder import _found_as_input
    from deconv3d.errors import InputError

    before = sorted(p.name for p in Path("in").iterdir())
    code, _, err = run(["batch", "in", "-o", "IN", "--psf", "psf.tif", "--iterations", 2], capsys)
    assert_one_line_error(code, err, "the output folder is the input folder")
    code, _, err = run(["batch", "in", "-o", "IN/x.zarr", "--psf", "psf.tif", "--iterations", 2], capsys)
    assert_one_line_error(code, err, "would be read as an input")
    assert sorted(p.name for p in Path("in").iterdir()) == before
    assert not _found_as_input(Path("IN/deconvolved"), Path("in"), ("*.tif",))  # a subfolder no pattern reaches
    with pytest.raises(InputError, match="one inside the other"):
        check_output_path(Path("IN/out.zarr"), inputs=[Path("in")], suffixes=OUTPUT_SUFFIXES)
    check_output_path(Path("out.zarr"), inputs=[Path("in")], suffixes=OUTPUT_SUFFIXES)  # beside it: fine


def test_batch_into_a_subfolder_whose_files_a_pattern_finds_is_refused(folder, capsys):
    """--pattern '*/*.tif' with the output in in/out: the first run went through, and its
    outputs were inputs of the next (the rerun was refused: "c.tif and c.tif would both write
    c.tif"). Refused before the first run now; a subfolder the pattern does not reach is fine."""
    (folder / "in" / "day1").mkdir()
    (folder / "in" / "img0.tif").rename(folder / "in" / "day1" / "img0.tif")
    argv = batch_argv(folder, folder / "in" / "Out", "--pattern", "*/*.TIF", "--output-format", "tif")
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "would be read as an input" in lines[0], err
    assert not (folder / "in" / "Out").exists()
    argv = batch_argv(folder, folder / "in" / "day1" / "out", "--pattern", "*/*.tif", "--output-format", "tif")
    for _ in range(2):
        code, out, err = run(argv, capsys)
        assert code == 0, err
    assert "skipped" in out and (folder / "in" / "day1" / "out" / "img0.tif").is_file()


@pytest.mark.parametrize("pattern, on_windows", [("*\\*.tif", True), ("*/*.tif", True), ("out\\", True),
                                                 ("day?\\*.tif", False), ("*.zarr", False)])
def test_a_pattern_is_split_as_the_batch_s_search_splits_it(tmp_path, pattern, on_windows):
    r"""The batch's search takes a pattern's parts as ``Path(pattern).parts``, which on Windows split
    at "\" too; the check of the output folder split at "/" alone, so ``--pattern "*\*.tif"`` with the
    output in ``in\out`` was not refused there while ``*/*.tif`` was. Windows' rule is tried with its
    pure paths; this system's against what the batch's own search finds in the output folder."""
    from pathlib import PureWindowsPath

    from deconv3d._paths import glob_shown
    from deconv3d.cli.batch_output_folder import _pattern_reaches

    base = PureWindowsPath("C:/data/in")
    assert _pattern_reaches(base / "out", base, [pattern]) is on_windows
    (tmp_path / "in" / "out").mkdir(parents=True)
    (tmp_path / "in" / "out" / "a.tif").write_bytes(b"")
    found = any(p.is_relative_to(tmp_path / "in" / "out") for p in glob_shown(tmp_path / "in", pattern))
    assert _pattern_reaches(tmp_path / "in" / "out", tmp_path / "in", [pattern]) is found


def test_batch_with_a_recursive_pattern_reads_nothing_in_hidden_folders(tmp_path, capsys):
    """'**/*.tif' searched hidden folders: the rerun of a batch into in/.out read its own outputs as
    inputs (exit 2, "a.tif and a.tif would both write a.tif"), a file server's .snapshot copy clashed
    with its original, and a file in .Trash-1000 was deconvolved. An output folder in a hidden folder
    deeper down (in/day1/.res) was refused as one the pattern would read."""
    from deconv3d.pipeline.batch_inputs import find_inputs

    psf = gaussian_psf((5, 5, 5))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    inputs = tmp_path / "in"
    for seed, rel in enumerate(("day1/a.tif", "day1/sub/b.tif", ".snapshot/hourly.0/day1/a.tif",
                                ".Trash-1000/files/old.tif", "day1/.hidden.tif")):
        (inputs / rel).parent.mkdir(parents=True, exist_ok=True)
        write_tiff(inputs / rel, blurred_beads((8, 32, 32), psf, seed=seed, count=20), voxel_size=(0.3, 0.1, 0.1))
    found = find_inputs(inputs, ["**/*.tif"])
    assert [p.relative_to(inputs).as_posix() for p in found] == ["day1/a.tif", "day1/sub/b.tif"]
    for out, runs in ((inputs / ".out", 2), (inputs / "day1" / ".res", 1)):
        argv = ["batch", inputs, "-o", out, "--psf", tmp_path / "psf.tif", "--method", "wiener", "--pattern",
                "**/*.tif", "--output-format", "tif"]
        for number in range(runs):
            code, out_text, err = run(argv, capsys)
            assert code == 0, err
            assert f"batch: {2 * (number == 0)} done, {2 * (number == 1)} skipped, 0 failed" in out_text, out_text
        assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "b.tif"]


def test_batch_reads_a_hidden_folder_its_pattern_names(tmp_path, capsys):
    """--pattern '.raw/*.tif' found nothing ("no input files ... match", exit 2) once the batch skipped
    every hidden folder: only what a wildcard reaches in one is skipped now, and an output folder
    the named pattern would read (in/.raw) is refused, as any other."""
    from deconv3d.pipeline.batch_inputs import find_inputs

    psf = gaussian_psf((5, 5, 5))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    inputs = tmp_path / "in"
    for seed, rel in enumerate((".raw/a.tif", ".raw/day1/b.tif", ".raw/day1/.trash/c.tif", "d.tif")):
        (inputs / rel).parent.mkdir(parents=True, exist_ok=True)
        write_tiff(inputs / rel, blurred_beads((8, 32, 32), psf, seed=seed, count=20), voxel_size=(0.3, 0.1, 0.1))
    found = {pattern: [p.relative_to(inputs).as_posix() for p in find_inputs(inputs, [pattern])]
             for pattern in (".raw/*.tif", ".RAW/**/*.tif", "**/*.tif", "*/*.tif")}
    assert found == {".raw/*.tif": [".raw/a.tif"], ".RAW/**/*.tif": [".raw/a.tif", ".raw/day1/b.tif"],
                     "**/*.tif": ["d.tif"], "*/*.tif": []}
    argv = ["batch", inputs, "--psf", tmp_path / "psf.tif", "--method", "wiener", "--pattern", ".raw/*.tif"]
    code, out_text, err = run([*argv, "-o", tmp_path / "out"], capsys)
    assert code == 0 and "batch: 1 done, 0 skipped, 0 failed" in out_text, err
    assert [p.name for p in (tmp_path / "out").glob("*.zarr")] == ["a.zarr"]
    code, _, err = run([*argv, "-o", inputs / ".raw", "--output-format", "tif"], capsys)
    assert_one_line_error(code, err, "would be read as an input")


def test_deconvolve_replaces_its_own_zarr_output_but_not_a_foreign_zarr_image(folder, capsys, monkeypatch):
    """-o raw.zarr replaced any zarr group: an acquisition deconv3d did not write was deleted.
    Only a folder that deconv3d's attribute marks (its earlier output) is replaced now."""
    import zarr

    monkeypatch.chdir(folder)
    raw = zarr.open_group("raw.zarr", mode="w-", zarr_format=3)
    raw.create_array("0", data=np.ones((4, 8, 8), np.uint16))
    raw.attrs["ome"] = {"version": "0.5"}
    before = _tree(folder / "raw.zarr")
    argv = ["deconvolve", "in/img0.tif", "-o", "raw.zarr", "--psf", "psf.tif", "--iterations", 2]
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not a zarr image deconv3d wrote" in lines[0], err
    assert _tree(folder / "raw.zarr") == before
    argv[3] = "ours.zarr"
    for iterations in (2, 3):  # the second run replaces the first's output
        argv[-1] = iterations
        code, _, err = run(argv, capsys)
        assert code == 0, err
    assert read_ome_zarr("ours.zarr")[3]["deconv3d"]["parameters"]["iterations"] == 3


def test_chunks_a_memory_limit_chose_are_not_checked_again(tmp_path, monkeypatch):
    """The limit's own choice was re-checked against a second reading of the process size, and
    could be refused (with advice to drop the --chunks the user never gave)."""
    from deconv3d.pipeline import MemoryModel, RichardsonLucyBlock, planning, run_chunked

    readings = iter([500_000_000])  # the first reading; any later one finds the process far larger
    monkeypatch.setattr(planning, "planning_baseline", lambda: next(readings, 5_000_000_000))
    volume = blurred_beads((16, 48, 48), gaussian_psf())
    model = MemoryModel("rl", gaussian_psf().shape)
    limit = 500_000_000 + model.peak_bytes((8, 24, 24), (4, 4, 4), (16, 48, 48))  # fits a few blocks
    info = run_chunked(volume, RichardsonLucyBlock(gaussian_psf(), iterations=2), tmp_path / "o.zarr",
                       memory_limit=limit, model=model, halo=(4, 4, 4))
    assert info.blocks > 1


def test_batch_into_a_folder_it_cannot_write_is_a_clean_error(folder, capsys, monkeypatch):
    """As root every folder is writable, so the refusal of os.access is simulated."""
    import os

    locked = folder / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    code, _, err = run(batch_argv(folder, locked / "out"), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "locked is not writable" in lines[0], err
    assert not (locked / "out").exists()


@pytest.mark.parametrize("output", ["/proc/out", "/sys/x/y"])
def test_batch_into_a_folder_that_takes_no_file_is_a_clean_error(folder, capsys, output):
    """As root os.access passes /proc and /sys, where no file can be created: the batch ended in an internal
    error (FileNotFoundError, exit 1). The folder is tried with a file first."""
    root = "/" + output.split("/")[1]
    if not Path(root).is_dir():
        pytest.skip(f"no {root} on this system")
    code, _, err = run(batch_argv(folder, Path(output)), capsys)
    assert_one_line_error(code, err, f"cannot create or write the output folder {output} ({root} is not writable)")


def test_batch_into_a_full_disk_names_it_as_full(folder, capsys, monkeypatch):
    """Found by the second review of this stop: a full disk (the probe's file refused with ENOSPC) was called "not
    writable", and the reason was dropped."""
    full = folder / "full"
    full.mkdir()
    full_disk_probe(monkeypatch, full)
    code, _, err = run(batch_argv(folder, full / "out"), capsys)
    assert_one_line_error(code, err, f"cannot create or write the output folder {full / 'out'} ({full} is full: No "
                          "space left on device): free space there or choose another location")
    assert list(full.iterdir()) == []


@pytest.mark.parametrize("missing", ["absent", "img0.tif"], ids=["no-folder", "a-file"])
def test_batch_names_a_missing_input_folder_before_an_unwritable_output_folder(folder, capsys, monkeypatch, missing):
    """The output folder's checks came first: with one that takes no file ('-o /proc/out' as root, since
    f8f5ada), an input folder that does not exist was not named (597deea named it). The refusal of the
    output folder is simulated, as it is for other users than root."""
    import os

    locked = folder / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    argv = batch_argv(folder, locked / "out")
    argv[1] = folder / "in" / missing
    code, _, err = run(argv, capsys)
    said = "input folder not found" if missing == "absent" else "is a file: batch takes a folder"
    assert_one_line_error(code, err, said)


def test_batch_ssl_applies_the_band_limit_option(folder, capsys):
    """``batch --method ssl``: the band limit is off by default, ``--band-limit 0.01`` turns it on,
    and the chunked output matches the whole-volume inference with the same setting."""
    from deconv3d.io import read_image
    from deconv3d.pipeline.batch import Settings
    from deconv3d._torch_common import cpu_has_amx
    from deconv3d.selfsup import BAND_LIMIT, apply_model, load_checkpoint

    assert Settings.band_limit == BAND_LIMIT  # batch repeats the library default as a literal
    model = folder / "m.ckpt"
    code, _, err = run(["train", folder / "in" / "img0.tif", "--psf", folder / "psf.tif", "-o", model,
                        "--steps", 2, "--patch", 8, "--batch", 1, "--base-channels", 4, "--unet-depth", 2,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    trained = load_checkpoint(model)
    image = read_image(folder / "in" / "img1.tif").data
    outputs = {}
    for extra, eps in (([], None), (["--band-limit", 0.01], 0.01)):
        out = folder / f"out-{eps}"
        code, _, err = run(["batch", folder / "in", "-o", out, "--method", "ssl", "--model", model,
                            "--pattern", "img1.tif", "--chunks", 12, 12, 12, *extra], capsys)
        assert code == 0, err
        data, _, _, attrs = read_ome_zarr(out / "img1.zarr")
        params = attrs["deconv3d"]["parameters"]
        assert params["band_limit"] == (eps or 0)
        assert params["model"] == str(model) and params["train_steps"] == 2 and params["training"]["patch"] == 8
        assert params["amp"] is True  # the network's inference in bfloat16 on a CPU with AMX
        assert params["inference_precision"] == ("bfloat16" if cpu_has_amx() else "float32")
        whole = apply_model(trained, image, device="cpu", band_limit=eps)
        assert psnr(whole, data) >= 50
        outputs[eps] = np.asarray(data)
    assert np.abs(outputs[0.01] - outputs[None]).max() > 1e-3 * outputs[None].max()
    # A wavelength without --psf-model generates no PSF: warned about as ignored, it failed every
    # file ("unsupported operand type(s) for /: 'float' and 'NoneType'").
    code, _, err = run(["batch", folder / "in", "-o", folder / "out-wl", "--method", "ssl", "--model", model,
                        "--pattern", "img1.tif", "--wavelength", 0.5], capsys)
    assert code == 0 and "--wavelength" in err and "ignored" in err, err


def test_batch_gives_each_channel_its_own_psf(tmp_path, capsys):
    """A 2-channel OME-Zarr with ``--psf A B``: channel c is deconvolved with PSF c (checked against
    whole-volume RL per channel), and a file whose channel count does not match fails (exit 3)."""
    from deconv3d.classical import richardson_lucy

    psfs = [gaussian_psf((7, 7, 7), (1.0, 0.8, 0.8)), gaussian_psf((9, 9, 9), (2.0, 1.6, 1.6))]
    channels = np.stack([blurred_beads((16, 32, 32), p, seed=c) for c, p in enumerate(psfs)])
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_ome_zarr(inputs / "two.zarr", channels, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    write_tiff(inputs / "one.tif", channels[0], voxel_size=(0.3, 0.1, 0.1))
    for c, p in enumerate(psfs):
        write_tiff(tmp_path / f"psf{c}.tif", p, voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", inputs, "-o", tmp_path / "out", "--psf", tmp_path / "psf0.tif",
                        tmp_path / "psf1.tif", "--iterations", 5, "--no-accelerate", "--chunks", 16, 16, 16], capsys)
    assert code == 3 and "one.tif" in err and "2 PSFs" in err
    data, _, axes, attrs = read_ome_zarr(tmp_path / "out" / "two.zarr")
    assert axes.upper() == "CZYX" and len(attrs["deconv3d"]["parameters"]["per_channel_psf_sha256_16"]) == 2
    for c, p in enumerate(psfs):
        whole = richardson_lucy(channels[c], p, 5, device="cpu")
        assert psnr(whole, data[c]) >= 50
        other = richardson_lucy(channels[c], psfs[1 - c], 5, device="cpu")
        assert psnr(other, data[c]) < 40  # the other channel's PSF would give a different result


def test_deconvolve_gives_each_channel_its_own_psf_or_wavelength(tmp_path, capsys):
    """Issue 5 asks for one PSF per channel; only batch took several (deconvolve's --psf took one
    file, used for every channel without a word). Channel c is deconvolved with PSF c, a TIFF
    output is refused for several, and one generated PSF per wavelength reaches the provenance."""
    from deconv3d.classical import richardson_lucy

    psfs = [gaussian_psf((7, 7, 7), (1.0, 0.8, 0.8)), gaussian_psf((9, 9, 9), (2.0, 1.6, 1.6))]
    channels = np.stack([blurred_beads((16, 32, 32), p, seed=c) for c, p in enumerate(psfs)])
    write_ome_zarr(tmp_path / "two.zarr", channels, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    for c, p in enumerate(psfs):
        write_tiff(tmp_path / f"psf{c}.tif", p, voxel_size=(0.3, 0.1, 0.1))
    argv = ["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / "out.zarr", "--psf", tmp_path / "psf0.tif",
            tmp_path / "psf1.tif", "--iterations", 5, "--no-accelerate"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    data = read_ome_zarr(tmp_path / "out.zarr")[0]
    for c, p in enumerate(psfs):
        assert psnr(richardson_lucy(channels[c], p, 5, device="cpu"), data[c]) >= 50
        assert psnr(richardson_lucy(channels[c], psfs[1 - c], 5, device="cpu"), data[c]) < 40
    argv[3] = tmp_path / "out.tif"  # the same channels in a TIFF hyperstack
    code, _, err = run(argv, capsys)
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), data.transpose(1, 0, 2, 3))  # (ZCYX)
    code, _, err = run(["deconvolve", tmp_path / "two.zarr", "-o", tmp_path / "gen.zarr", "--psf-model", "gaussian",
                        "--na", 0.8, "--wavelength", 0.5, 0.65, "--iterations", 2], capsys)
    assert code == 0, err
    parameters = read_ome_zarr(tmp_path / "gen.zarr")[3]["deconv3d"]["parameters"]
    assert len(set(parameters["per_channel_psf_sha256_16"])) == 2


def test_channel_names_and_colours_reach_the_output(tmp_path):
    """Found by the OME-Zarr review: an input's omero channels (DAPI, GFP, their colours) were
    dropped, so viewers showed the output's channels unnamed and grey. They are kept, with display
    windows of the output's own intensity range (the input's described other intensities), and
    the metadata still validates as OME-Zarr 0.5."""
    import zarr

    from deconv3d.pipeline import RichardsonLucyBlock, run_chunked

    psf = gaussian_psf()
    image = np.stack([blurred_beads((8, 16, 16), psf, seed=c) for c in range(2)]) * np.array([1, 3])[:, None, None, None]
    write_ome_zarr(tmp_path / "in.zarr", image, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["omero"] = {"channels": [
        {"label": "DAPI", "color": "0000FF", "active": True, "window": {"min": 0, "max": 9, "start": 1, "end": 5}},
        {"label": "GFP", "color": "green", "window": {"min": 0, "max": 9, "start": 1, "end": 5}}]}
    group.attrs.update(attrs)
    lazy = open_lazy(tmp_path / "in.zarr")
    assert lazy.channels == ({"label": "DAPI", "color": "0000FF", "active": True}, {"label": "GFP", "color": "green"})
    run_chunked(lazy, RichardsonLucyBlock(psf, iterations=2), tmp_path / "out.zarr", chunks=(8, 8, 8), workers=2)
    data, _, _, out_attrs = read_ome_zarr(tmp_path / "out.zarr")
    channels = out_attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == ["DAPI", "GFP"] and channels[0]["active"] is True
    assert [c["color"] for c in channels] == ["0000FF", "FFFFFF"]  # "green" is no hex colour: white
    for c, channel in enumerate(channels):
        lo, hi = float(data[c].min()), float(data[c].max())
        assert channel["window"] == {"min": lo, "max": hi, "start": lo, "end": hi}
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(str(tmp_path / "out.zarr"), mode="r"))
    # An input without them, or with a count that does not match its channels, gives none.
    write_ome_zarr(tmp_path / "plain.zarr", image, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    assert open_lazy(tmp_path / "plain.zarr").channels is None
    attrs["ome"]["omero"]["channels"].pop()
    group.attrs.update(attrs)
    assert open_lazy(tmp_path / "in.zarr").channels is None


def test_omero_entries_beyond_the_channels_are_ignored_with_one_warning(tmp_path, capsys, monkeypatch):
    """Found by review: an omero list longer than the image's channels was dropped whole, without a word. The
    entries of the image's channels are kept, and one line says how many were ignored: a batch's row says it
    of "the image"."""
    import warnings

    import zarr

    from deconv3d.errors import Deconv3dWarning

    monkeypatch.chdir(tmp_path)
    write_tiff("psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    image = np.stack([blurred_beads((8, 16, 16), gaussian_psf(), seed=c) for c in range(2)])
    Path("IN").mkdir()
    write_ome_zarr("IN/a.zarr", image, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    group = zarr.open_group("IN/a.zarr", mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["omero"] = {"channels": [{"label": "DAPI"}, {"label": "GFP"}, {"label": "RFP"}, {"label": "Cy5"}]}
    group.attrs.update(attrs)
    said = "omero metadata lists 4 channels but the image has 2: the 2 extra entries are ignored"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lazy = open_lazy(Path("IN/a.zarr"))
    assert [(w.category, str(w.message), w.message.without_file) for w in caught] == [
        (Deconv3dWarning, f"IN/a.zarr's {said}", f"the image's {said}")]
    assert lazy.channels == ({"label": "DAPI"}, {"label": "GFP"})
    code, _, err = run(["deconvolve", "IN/a.zarr", "-o", "out.zarr", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 0 and err.splitlines() == [f"deconv3d: warning: IN/a.zarr's {said}"], err
    assert [c["label"] for c in read_ome_zarr(tmp_path / "out.zarr")[3]["ome"]["omero"]["channels"]] == ["DAPI", "GFP"]
    # one PSF per channel and a TIFF output: the channels were counted on a look of their own, which warned too
    code, _, err = run(["deconvolve", "IN/a.zarr", "-o", "out.tif", "--psf", "psf.tif", "psf.tif", "--method",
                        "wiener"], capsys)
    assert code == 0 and err.splitlines() == [f"deconv3d: warning: IN/a.zarr's {said}"], err
    code, _, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 0 and f"deconv3d: warning: IN/a.zarr's {said}" in err.splitlines(), err
    rows = json.loads((tmp_path / "OUT" / "batch_report.json").read_text())["files"]
    assert [row["warnings"] for row in rows] == [[f"the image's {said}"]]


def test_the_omero_warning_is_given_once_where_a_nan_is_refused(tmp_path, capsys, monkeypatch):
    """Found by the review of this stop's diff: the NaN refusal's look for chunks never stored opened the image
    again, and the omero warning was printed twice before the error (a batch's row listed it twice)."""
    import zarr

    monkeypatch.chdir(tmp_path)
    write_tiff("psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    image = np.stack([blurred_beads((8, 16, 16), gaussian_psf(), seed=c) for c in range(2)])
    image[0, 0, 0, 5] = np.nan
    write_ome_zarr("a.zarr", image, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    group = zarr.open_group("a.zarr", mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["omero"] = {"channels": [{"label": "DAPI"}, {"label": "GFP"}, {"label": "RFP"}]}
    group.attrs.update(attrs)
    code, _, err = run(["deconvolve", "a.zarr", "-o", "out.zarr", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 2 and [line.split(":")[1] for line in err.splitlines()] == [" warning", " error"], err
    assert "omero metadata lists 3 channels but the image has 2" in err and "NaN" in err, err


def test_config_per_channel_psfs_resolve_relative_to_the_file(tmp_path):
    from deconv3d.errors import InputError
    from deconv3d.pipeline.batch import channel_count, load_config, make_settings

    for name in ("a.tif", "b.tif"):
        write_tiff(tmp_path / name, gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "batch.toml").write_text('psf = ["a.tif", "b.tif"]\niterations = 4\n')
    settings = make_settings(load_config(tmp_path / "batch.toml"))
    assert settings.psf == (str(tmp_path / "a.tif"), str(tmp_path / "b.tif")) and channel_count(settings) == 2
    assert make_settings({"psf": [str(tmp_path / "a.tif")]}).psf == str(tmp_path / "a.tif")
    with pytest.raises(InputError, match="wavelength"):
        make_settings({"psf_model": "gaussian", "na": 1.2, "wavelength": [0.5, -1]})


def test_config_keys_are_the_long_option_names_and_the_command_line_wins(tmp_path):
    """no-accelerate (the flag's name) works as a key, and so do batch's own scheduler and workers; a PSF
    source given on the command line replaces the config's other kind, and --accelerate undoes the
    config's accelerate = false (both were refused or impossible)."""
    from deconv3d.cli import build_parser
    from deconv3d.cli.pipeline import settings_from_args
    from deconv3d.pipeline.batch import load_config

    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    (tmp_path / "batch.toml").write_text('psf = "psf.tif"\nno-accelerate = true\nscheduler = "threads"\nworkers = 2\n'
                                         'no-amp = true\nno-tta = false\n')
    config = load_config(tmp_path / "batch.toml")
    assert config["accelerate"] is False and (config["scheduler"], config["workers"]) == ("threads", 2)
    assert config["amp"] is False and config["tta"] is True
    parse = build_parser().parse_args
    base = {k: v for k, v in config.items() if k not in ("scheduler", "workers")}
    settings = settings_from_args(parse(["batch", str(tmp_path), "-o", str(tmp_path / "o")]), base)
    assert settings.accelerate is False and settings.psf == str(tmp_path / "psf.tif")
    settings = settings_from_args(parse(["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--accelerate",
                                         "--psf-model", "gaussian", "--na", "1.2", "--wavelength", "0.5"]), base)
    assert settings.accelerate is True and settings.psf is None and settings.psf_model == "gaussian"
    assert settings.amp is False  # the config's no-amp; --amp undoes it
    assert settings_from_args(parse(["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--amp"]), base).amp is True
    settings = settings_from_args(parse(["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--psf",
                                         str(tmp_path / "psf.tif")]), {"psf_model": "gaussian", "na": 1.2,
                                                                        "wavelength": 0.5})
    assert settings.psf_model is None and settings.psf == str(tmp_path / "psf.tif")


def test_a_batch_runs_with_scheduler_and_workers_from_its_config(folder, capsys):
    (folder / "batch.toml").write_text('workers = 2\nscheduler = "threads"\niterations = 2\n')
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--config",
                        folder / "batch.toml"], capsys)
    assert code == 0, err
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["done"] * 3
    for bad, word in (("workers = 0", "workers"), ("scheduler = 3", "scheduler"), ('scheduler = ""', "scheduler"),
                      ('no-accelerate = "true"', "true or false")):
        (folder / "bad.toml").write_text(bad + "\n")
        code, _, err = run(["batch", folder / "in", "-o", folder / "out2", "--psf", folder / "psf.tif", "--config",
                            folder / "bad.toml"], capsys)
        assert code == 2 and word in err and "internal" not in err and not (folder / "out2").exists(), (bad, err)


def test_chunked_deconvolve_to_tiff_matches_whole_and_leaves_no_scratch(folder, capsys):
    from deconv3d.classical import richardson_lucy
    from deconv3d.io import read_image

    out = folder / "out.tif"
    code, _, err = run(["deconvolve", folder / "in" / "img0.tif", "-o", out, "--psf", folder / "psf.tif",
                        "--iterations", 4, "--no-accelerate", "--chunks", 12, 12, 12], capsys)
    assert code == 0, err
    result = read_image(out)
    assert result.voxel_size == pytest.approx((0.3, 0.1, 0.1))
    image, psf = read_image(folder / "in" / "img0.tif").data, read_image(folder / "psf.tif").data
    whole = richardson_lucy(image, psf / psf.sum(), 4, device="cpu")
    assert psnr(whole, result.data) >= 50
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_chunked_and_batch_ssl_check_the_model_first(folder, capsys):
    """A PSF given with ``--model`` must be the training PSF on the chunked path too, and an
    unreadable model is refused before a batch starts (exit 2, no output folder)."""
    model = folder / "m.ckpt"
    code, _, err = run(["train", folder / "in" / "img0.tif", "--psf", folder / "psf.tif", "-o", model,
                        "--steps", 1, "--patch", 8, "--batch", 1, "--base-channels", 4, "--unet-depth", 2,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    write_tiff(folder / "other.tif", gaussian_psf(sigma=(1.5, 2.0, 2.0)), voxel_size=(0.3, 0.1, 0.1))
    for out in (folder / "x.zarr", folder / "x.tif"):
        code, _, err = run(["deconvolve", folder / "in" / "img0.tif", "-o", out, "--method", "ssl", "--model", model,
                            "--psf", folder / "other.tif", "--chunks", 12, 12, 12, "--device", "cpu"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "another PSF" in lines[0], err
        assert not out.exists()
    (folder / "text.ckpt").write_text("not a model")
    code, _, err = run(["batch", folder / "in", "-o", folder / "bout", "--method", "ssl", "--model",
                        folder / "text.ckpt"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "text.ckpt" in lines[0], err
    assert not (folder / "bout").exists()


@pytest.mark.parametrize("translation", [None, [60.0, 0.0, 0.0, 0.0], [60.0, 1.2, 2.0, 3.0]])
def test_the_time_axis_keeps_its_step_unit_and_origin(tmp_path, capsys, translation):
    """A TZYX OME-Zarr input with a 30 s time step: the output (and its pyramid) says so too; and
    its T translation (a series that starts at 60 s), which was dropped (the output's said 0),
    with or without a spatial origin beside it."""
    import zarr

    psf = gaussian_psf()
    stack = np.stack([blurred_beads((12, 24, 24), psf, seed=s) for s in (0, 1)])
    write_ome_zarr(tmp_path / "in.zarr", stack, voxel_size=(0.3, 0.1, 0.1), axes="TZYX")
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["multiscales"][0]["axes"][0]["unit"] = "second"
    transforms = attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    transforms[0]["scale"][0] = 30.0
    transforms += [{"type": "translation", "translation": translation}] if translation else []
    group.attrs.update(attrs)
    expected = (30.0, "second") + ((60.0,) if translation else ())
    assert open_lazy(tmp_path / "in.zarr").time_axis == expected
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "-o", tmp_path / "out.zarr", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2, "--pyramid-levels", 1], capsys)
    assert code == 0, err
    ms = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["axes"][0] == {"name": "t", "type": "time", "unit": "second"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert len(scales) == 2 and all(s[0] == 30.0 for s in scales)
    assert scales[0][1:] == pytest.approx([0.3, 0.1, 0.1])
    assert open_lazy(tmp_path / "out.zarr").time_axis == expected
    if translation:
        shifts = [d["coordinateTransformations"][1]["translation"] for d in ms["datasets"]]
        assert shifts[0] == pytest.approx(translation) and shifts[1][0] == 60.0


@pytest.mark.parametrize("kind, expected", [("imagej", (5.0, "second")), ("ome", (2.0, "millisecond")),
                                            ("plain", None)])
def test_a_tiff_time_step_reaches_the_output(tmp_path, capsys, kind, expected):
    """ImageJ's frame interval and OME-TIFF's TimeIncrement were dropped (the output said 1)."""
    import tifffile
    import zarr

    psf = gaussian_psf()
    stack = np.stack([blurred_beads((12, 24, 24), psf, seed=s) for s in (0, 1)])
    path = tmp_path / "in.tif"
    if kind == "imagej":
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TZYX", "finterval": 5.0})
    elif kind == "ome":
        tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TZYX", "TimeIncrement": 2.0,
                                                          "TimeIncrementUnit": "ms"})
    else:
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TZYX"})
    assert open_lazy(path).time_axis == expected
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", path, "-o", tmp_path / "out.zarr", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2, "--voxel-size", 0.3, 0.1, 0.1], capsys)
    assert code == 0, err
    ms = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    step = ms["datasets"][0]["coordinateTransformations"][0]["scale"][0]
    assert (step, ms["axes"][0].get("unit")) == (expected or (1.0, None))


def test_a_2d_image_stored_as_5d_ome_zarr_is_deconvolved_as_2d(tmp_path, capsys):
    """bioformats2raw writes every image as T, C, Z, Y, X: a single plane has Z = 1, which was
    kept as a 1-plane 3D image that no PSF fitted."""
    from deconv3d.classical import richardson_lucy

    rng = np.random.default_rng(0)
    plane = rng.random((40, 36)).astype(np.float32) + 0.1
    grids = np.meshgrid(*[np.arange(-3, 4)] * 2, indexing="ij")
    psf = np.exp(-sum(g**2 for g in grids) / 3).astype(np.float32)
    write_tiff(tmp_path / "psf.tif", psf / psf.sum(), voxel_size=(0.1, 0.1))
    write_ome_zarr(tmp_path / "b2r.zarr", plane[None, None, None], axes="TCZYX", voxel_size=(0.5, 0.1, 0.1))
    lazy = open_lazy(tmp_path / "b2r.zarr")
    assert lazy.axes == "TCYX" and lazy.voxel_size == pytest.approx((0.1, 0.1))
    np.testing.assert_array_equal(lazy.reader.read((0, 0, slice(2, 5))), plane[2:5])
    code, _, err = run(["deconvolve", tmp_path / "b2r.zarr", "-o", tmp_path / "out.zarr", "--psf", tmp_path / "psf.tif",
                        "--iterations", 4, "--no-accelerate", "--chunks", 1, 20, 18], capsys)
    assert code == 0, err
    out, voxel, axes, _ = read_ome_zarr(tmp_path / "out.zarr")
    assert axes == "TCYX" and voxel == pytest.approx((0.1, 0.1))
    whole = richardson_lucy(plane, psf / psf.sum(), 4, device="cpu")
    assert psnr(whole, out[0, 0]) > 60


def test_ctrl_c_in_a_batch_keeps_and_reports_the_files_finished(folder, capsys, monkeypatch):
    """It said "interrupted; no output was written" and wrote no report, though files were done."""
    import deconv3d.pipeline.files as files

    real, calls = files.deconvolve_file, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "deconvolve_file", interrupted_on_the_second)
    code, _, err = run(batch_argv(folder, folder / "out"), capsys)
    assert code == 130 and "interrupted at file 2 (1 done, 0 skipped, 1 failed or interrupted)" in err, err
    assert "rerun" in err
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["done", "failed"] and (folder / "out" / "img0.zarr").is_dir()
    assert "interrupted" in report["files"][1]["reason"]
    # A full run, then one interrupted again: the report keeps the rows of the files not reached.
    monkeypatch.setattr(files, "deconvolve_file", real)
    assert run(batch_argv(folder, folder / "out"), capsys)[0] == 0
    (folder / "in" / "img0.tif").touch()  # content unchanged: skipped, not redone
    calls.clear()
    write_tiff(folder / "in" / "img1.tif", blurred_beads((12, 24, 24), gaussian_psf(), seed=9),
               voxel_size=(0.3, 0.1, 0.1))  # changed: redone, and interrupted there
    monkeypatch.setattr(files, "deconvolve_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, _, err = run(batch_argv(folder, folder / "out"), capsys)
    assert code == 130 and "interrupted at file 2 (0 done, 1 skipped, 1 failed or interrupted)" in err, err
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    assert [(r["file"].split("/")[-1], r["status"]) for r in report["files"]] == [
        ("img0.tif", "skipped"), ("img1.tif", "failed"), ("img2.tif", "done")]  # img2 from the full run
    # A report this version does not write (an extra column, a row without a status) is no crash.
    (folder / "out" / "batch_report.json").write_text(json.dumps({"files": [{"file": "x", "note": 1}, 5]}))
    code, _, err = run(batch_argv(folder, folder / "out"), capsys)
    assert code == 130 and "interrupted at file 2" in err, err


@pytest.mark.parametrize("line, words", [('accelerate = "no"', "accelerate must be true or false"),
                                         ('amp = "no"', "amp must be true or false"),
                                         ('no-amp = 1', "no-amp must be true or false"),
                                         ("amp = false\nno-amp = false", "'amp' and 'no-amp' both set amp"),
                                         ("no-tta = true\ntta = true", "'no-tta' and 'tta' both set tta"),
                                         ("tv-weight = 0.01\ntv_weight = 0.02", "both set tv_weight: keep one"),
                                         ('device = "gpu"', "unknown device 'gpu'"),
                                         ("memory_limit = 500", "memory_limit needs a unit"),
                                         ("chunks = [8.5, 16, 16]", "positive whole numbers"),
                                         ("voxel-size = [300, 100, 100]", "looks like nanometres")])
def test_bad_config_values_are_refused_before_any_file_runs(folder, capsys, line, words):
    """Each of these passed the up-front check and then failed every file of the batch in turn (exit 3)."""
    from cli_helpers import assert_one_line_error

    (folder / "batch.toml").write_text(f'iterations = 2\n{line}\n')
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--config",
                        folder / "batch.toml"], capsys)
    assert_one_line_error(code, err, words)
    assert not (folder / "out").exists() or not any((folder / "out").iterdir())


def test_a_bare_zarr_array_is_named_as_one(tmp_path, capsys):
    """Found by the pipeline review: zarr's "an array already exists" read as a clash with an output."""
    import zarr

    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(8, 24, 24), dtype="f4")[:] = 1
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "plain.zarr", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / "o.tif"], capsys)
    assert_one_line_error(code, err, "plain.zarr is a bare zarr array", "save it as an OME-Zarr image")
    assert "already exists" not in err and not (tmp_path / "o.tif").exists()


def test_reads_a_bioformats2raw_folder_and_its_image_group(tmp_path, capsys):
    """bioformats2raw (OME-Zarr v0.4, zarr v2) puts the image in a series group '0' under a root that
    has only 'bioformats2raw.layout': the root was 'not an OME-Zarr image' and the group, without a
    .zarr suffix or a zarr.json, an 'unsupported input format'."""
    import zarr

    data = np.random.default_rng(0).random((10, 16, 16)).astype(np.float32)
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    series = root.create_group("0")
    series.create_array("0", data=data, chunks=(5, 16, 16))
    series.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "micrometer"}
                                                                for a in "zyx"],
                                    "datasets": [{"path": "0", "coordinateTransformations": [
                                        {"type": "scale", "scale": [0.3, 0.1, 0.1]}]}]}]
    for path in (tmp_path / "b2r.zarr", tmp_path / "b2r.zarr" / "0"):
        lazy = open_lazy(path)
        assert lazy.path == path  # messages name the input given, not its series "0"
        assert lazy.axes == "ZYX" and lazy.voxel_size == pytest.approx((0.3, 0.1, 0.1))
        np.testing.assert_array_equal(lazy.data.compute(), data)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "b2r.zarr" / "0", "-o", tmp_path / "o.zarr", "--psf",
                        tmp_path / "psf.tif", "--iterations", 2], capsys)
    assert code == 0, err
    assert read_ome_zarr(tmp_path / "o.zarr")[0].shape == data.shape


@pytest.mark.parametrize("kind", ["plate", "well"])
def test_an_hcs_plate_or_well_is_refused_with_one_of_its_fields(tmp_path, capsys, kind):
    """An OME-Zarr high-content screening plate (bioformats2raw writes plates so) or well holds images but is none:
    the line was 'not an OME-Zarr image ... give an image group', naming no group to give."""
    import zarr

    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w", zarr_format=2)
    root.attrs.update({"bioformats2raw.layout": 3, "plate": {"wells": [{"path": "B/3", "rowIndex": 1,
                                                                        "columnIndex": 2}]}} if kind == "plate" else
                      {"well": {"images": [{"path": "1"}]}})
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "p.zarr", "-o", tmp_path / "o.zarr", "--psf", tmp_path / "psf.tif"],
                       capsys)
    field = tmp_path / "p.zarr" / ("B/3/0" if kind == "plate" else "1")
    assert_one_line_error(code, err, f"p.zarr is an OME-Zarr high-content screening {kind}, not an image: give one of "
                          f"its fields, e.g. {field}")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_plates_field_is_named_as_its_well_names_its_first_image(tmp_path, capsys, zarr_format):
    """The field a plate's refusal names is its first well's first image as the well's metadata gives it (here
    '2'), not a field '0' the well may not hold."""
    import zarr

    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w", zarr_format=zarr_format)
    plate, well = {"plate": {"wells": [{"path": "B/3"}]}}, {"well": {"images": [{"path": "2"}]}}
    root.attrs.update({"ome": {"version": "0.5", **plate}} if zarr_format == 3 else plate)
    root.create_group("B/3").attrs.update({"ome": {"version": "0.5", **well}} if zarr_format == 3 else well)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "p.zarr", "-o", tmp_path / "o.zarr", "--psf", tmp_path / "psf.tif"],
                       capsys)
    assert_one_line_error(code, err, "p.zarr is an OME-Zarr high-content screening plate, not an image: give one of "
                          f"its fields, e.g. {tmp_path / 'p.zarr' / 'B' / '3' / '2'}")
    assert not (tmp_path / "o.zarr").exists()


def test_a_memory_limit_in_bytes_is_still_taken_from_the_python_api(folder):
    from deconv3d.errors import InputError
    from deconv3d.pipeline.batch import make_settings

    assert make_settings({"psf": str(folder / "psf.tif"), "memory_limit": 2**30}).memory_limit == 2**30
    assert make_settings({"psf": str(folder / "psf.tif"), "memory_limit": np.int64(2**32)}).memory_limit == 2**32
    with pytest.raises(InputError, match="memory_limit needs a unit"):
        make_settings({"psf": str(folder / "psf.tif"), "memory_limit": 500})


PSF_LINE = 'psf = "psf.tif"'


@pytest.mark.parametrize("lines, words", [
    ([PSF_LINE, "pattern = 5"], "pattern needs file-name patterns"),
    ([PSF_LINE, 'pattern = ["*.tif", 5]'], "pattern needs file-name patterns"),
    ([PSF_LINE, 'pattern = "/tmp/*.tif"'], "pattern needs file-name patterns"),
    ([PSF_LINE, 'pattern = "../*.tif"'], "pattern needs file-name patterns"),
    ([PSF_LINE, 'pattern = ""'], "pattern needs file-name patterns"),
    (["psf = 5"], "psf must be a file name in quotes"),
    (["psf = []"], "psf needs a file name, or one per channel"),
    (['psf_model = "gaussian"', "na = 0.5", "wavelength = []"], "psf_model needs positive na and wavelength"),
    (['psf_model = "gibson-lanni"', "na = 1.2", "wavelength = 520"], "looks like nanometres"),
    (['psf_model = "gibson-lanni"', "na = 1.2", "wavelength = 0.52", 'ni = "abc"'], "ni must be a number"),
    ([PSF_LINE, "iterations = true"], "iterations must be a positive integer"),
    ([PSF_LINE, 'method = "rl-tv"', "tv_weight = 1e9"], "positive tv_weight below 0.5"),
    (['psf = "nan_psf.tif"'], "nan_psf.tif contains NaN or Inf"),
    (['psf = "negative_psf.tif"'], "negative_psf.tif: PSF has negative values"),
])
def test_settings_every_file_would_fail_on_are_refused_up_front(folder, capsys, lines, words):
    """A review's config fuzzing: each was an internal error (exit 1) or failed every file in turn
    (exit 3), or, for iterations = true, ran one iteration."""
    from cli_helpers import assert_one_line_error

    import tifffile

    for name, value in (("nan", np.nan), ("negative", -1.0)):
        psf = np.asarray(gaussian_psf(), np.float32)
        psf[0, 0, 0] = value
        # (tifffile: write_tiff refuses NaN)
        tifffile.imwrite(folder / f"{name}_psf.tif", psf, imagej=True, resolution=(10.0, 10.0),
                         metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um"})
    (folder / "batch.toml").write_text("\n".join(lines) + "\n")
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--config", folder / "batch.toml"], capsys)
    assert_one_line_error(code, err, words)
    assert not (folder / "out").exists()


@pytest.mark.parametrize("pattern", [".", "./", "./."])
def test_a_pattern_naming_the_input_folder_itself_is_refused(folder, capsys, pattern):
    """--pattern . (or ./) made the input folder itself the batch's one input, which failed as "a folder
    but not a zarr image", exit 3, as '..' was refused: exit 2, naming the fix, nothing written."""
    from cli_helpers import assert_one_line_error

    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--pattern",
                        pattern], capsys)
    assert_one_line_error(code, err, "pattern needs file-name patterns inside the input folder, like \"*.tif\"")
    assert not (folder / "out").exists()


def test_chunked_and_batch_refuse_an_image_with_no_positive_value(folder, capsys, monkeypatch):
    """Background subtracted past zero: RL's output is non-negative, so the chunked path wrote an
    all-zero output with exit 0 where the in-memory path refuses; Wiener still runs on it."""
    image = -2.0 - blurred_beads((12, 24, 24), gaussian_psf(), seed=5)
    write_tiff(folder / "below.tif", image, voxel_size=(0.3, 0.1, 0.1))
    monkeypatch.chdir(folder)
    for out, method in (("x.zarr", "rl"), ("x.tif", "rl"), ("x.zarr", "rl-tv")):
        code, _, err = run(["deconvolve", "below.tif", "--psf", "psf.tif", "-o", out, "--chunks", 12, 12, 12,
                            "--method", method], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and f"below.tif has no positive values, so {method} " in lines[0], err
        assert "offset back" in lines[0] and "wiener" not in lines[0]
        assert not (folder / out).exists() and not list(folder.glob(f".{out}*"))
    code, _, err = run(["deconvolve", "below.tif", "--psf", "psf.tif", "-o", "w.zarr", "--chunks", 12, 12, 12,
                        "--method", "wiener"], capsys)
    # Found by the user-journey review: Wiener, which the message suggested, wrote its ringing clipped at 0
    assert code == 2 and "so wiener's output, clipped at 0, would hold only ringing" in err, err
    assert not (folder / "w.zarr").exists()
    (folder / "in" / "below.tif").write_bytes((folder / "below.tif").read_bytes())
    code, _, err = run(batch_argv(folder, folder / "out"), capsys)
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    status = {r["file"].split("/")[-1]: r["status"] for r in report["files"]}
    assert code == 3 and status["below.tif"] == "failed" and "has no positive values" in err
    assert not (folder / "out" / "below.zarr").exists() and status["img0.tif"] == "done"


def test_the_positive_value_scan_stops_at_the_first_slab_with_one(monkeypatch):
    """An ordinary image costs a plane of reading and a sample for the negative share, not a pass
    over the file."""
    from deconv3d.errors import InputError
    from deconv3d.pipeline import negatives
    from deconv3d.pipeline.readers import ArrayReader

    reads = []

    class Counting(ArrayReader):
        def read(self, key):
            reads.append(key)
            return super().read(key)

    monkeypatch.setattr(negatives, "SCAN_SLAB_BYTES", 4 * 8 * 8 * 2)  # two planes of 8 x 8 per slab
    monkeypatch.setattr(negatives, "SHARE_SAMPLE_BYTES", 4 * 8 * 8)  # one plane beyond the slab
    data = np.full((10, 8, 8), -1.0, np.float32)
    data[5, 3, 3] = 0.5
    with pytest.warns(RuntimeWarning, match="of img's voxels in a sample are negative"):
        negatives.check_has_positive(Counting(data), "img", "rl")
    # a plane, then slabs up to the one with a positive voxel, then a plane halfway through the rest
    assert [k[0] for k in reads] == [slice(0, 1), slice(1, 3), slice(3, 5), slice(5, 7), slice(8, 9)]
    data[5, 3, 3], data[1, 0, 0] = 0.0, 0.5
    reads.clear()
    with pytest.warns(RuntimeWarning, match="are negative"):
        negatives.check_has_positive(Counting(data), "img", "rl")
    assert [k[0] for k in reads] == [slice(0, 1), slice(1, 3), slice(6, 7)]
    data[1, 0, 0] = 0.0
    with pytest.raises(InputError, match="img has no positive values, so rl would"):
        negatives.check_has_positive(Counting(data), "img", "rl")
    negatives.check_has_positive(np.zeros((3, 4, 4), np.float32), "img", "rl")  # all zero: zeros come back
    data[:] = -1.0
    data[8:] = 0.0  # negative, then empty planes at the end: still no positive value
    with pytest.raises(InputError, match="no positive values"):
        negatives.check_has_positive(Counting(data), "img", "rl")
    # A time series (and a plane larger than a slab) is cut below its first axis: a whole time
    # point was read at once, however large.
    for shape in ((2, 10, 8, 8), (1, 2, 64, 8)):
        reads.clear()
        series = np.full(shape, -1.0, np.float32)
        with pytest.raises(InputError, match="no positive values"):
            negatives.check_has_positive(Counting(series), "img", "rl")
        sizes = [series[k].nbytes for k in reads]
        assert max(sizes) <= negatives.SCAN_SLAB_BYTES and sum(sizes) == series.nbytes, (shape, sizes)


def test_intensity_statistics_read_each_channel_whole_or_a_bounded_spread_sample(monkeypatch):
    """The scale check of a model applied chunk by chunk: per-channel mean and SD equal numpy's
    for a channel that fits SAMPLE_BYTES, and otherwise come from that many bytes of whole chunks
    (planes of a TIFF) drawn over the whole image: not the stack's first and last planes (the
    first version's evenly spaced planes), and no chunk decoded twice (a zarr volume's
    single-plane reads had decoded each 64-plane chunk four times, 4x the volume)."""
    import dask.array as da

    from deconv3d.pipeline import file_networks
    from deconv3d.pipeline.readers import ArrayReader, DaskReader

    reads = []

    class Counting(ArrayReader):
        def read(self, key):
            reads.append(key)
            return super().read(key)

    class CountingChunks(DaskReader):
        def read(self, key):
            reads.append(key)
            return super().read(key)

    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 1.0, (3, 2, 10, 16, 20)).astype(np.float32)
    data[:, 1] *= 100
    data[:, :, 6:] += 2  # a brighter bottom of the stack
    for c, (mean, std, sampled) in enumerate(file_networks.intensity_statistics(data, "TCZYX")):
        assert not sampled and mean == pytest.approx(data[:, c].mean(dtype=np.float64), rel=1e-9)
        assert std == pytest.approx(data[:, c].std(dtype=np.float64), rel=1e-9)
    plane = 4 * 16 * 20
    monkeypatch.setattr(file_networks, "SAMPLE_BYTES", plane * 6)  # 6 of each channel's 30 planes
    statistics = file_networks.intensity_statistics(Counting(data), "TCZYX")
    assert len(reads) == 12 and all(data[k].nbytes == plane for k in reads)
    picks = [(k[0].start, k[2].start) for k in reads]
    assert picks[:6] == picks[6:] and len(set(picks)) == 6  # the same 6 planes of each channel, drawn
    assert len({t for t, _ in picks}) > 1 and {z < 5 for _, z in picks} == {True, False}  # over t and z
    for c, (mean, std, sampled) in enumerate(statistics):
        assert sampled and mean == pytest.approx(data[:, c].mean(), rel=0.15) and std == pytest.approx(
            data[:, c].std(), rel=0.15)
    reads.clear()
    chunks = (1, 1, 5, 8, 10)
    monkeypatch.setattr(file_networks, "SAMPLE_BYTES", 4 * 5 * 8 * 10 * 4)
    file_networks.intensity_statistics(CountingChunks(da.from_array(data, chunks=chunks)), "TCZYX")
    assert len(reads) == 8 and len({tuple((s.start, s.stop) for s in k) for k in reads}) == 8
    assert all(k[i].start % n == 0 and k[i].stop - k[i].start == n for k in reads for i, n in enumerate(chunks))
    # over the lateral chunks too (the middles of runs in C order had all been in one column)
    assert len({(k[3].start, k[4].start) for k in reads}) > 1 and len({k[4].start for k in reads}) > 1
    reads.clear()
    monkeypatch.setattr(file_networks, "SAMPLE_BYTES", 4 * 20 * 11)
    [(mean, std, sampled)] = file_networks.intensity_statistics(Counting(data[0, 1, 0][None]), "CYX")  # 11 of 16 rows
    assert sampled and [(k[1].start, k[1].stop) for k in reads] == [(2, 13)]
    assert mean == pytest.approx(data[0, 1, 0, 2:13].mean(dtype=np.float64), rel=1e-9)


def test_chunked_and_batch_warn_when_many_voxels_are_negative(folder, capsys, monkeypatch):
    """Background-subtracted data (noise around 0): the in-memory path warned that RL counts the
    negative voxels as 0; the chunked path and batch said nothing. The share is measured on a
    sample (where the scan found a positive voxel, and planes spread over the rest) and is close
    to the whole image's."""
    from deconv3d.errors import NEGATIVE_SHARE
    from deconv3d.pipeline import negatives

    rng = np.random.default_rng(3)
    beads = blurred_beads((12, 24, 24), gaussian_psf(), seed=5)
    image = (beads - np.median(beads) + rng.normal(0, 1, beads.shape)).astype(np.float32)  # offset subtracted
    share = float(np.mean(image < 0))
    assert 0.2 < share < 0.6
    write_tiff(folder / "sub.tif", image, voxel_size=(0.3, 0.1, 0.1))
    monkeypatch.chdir(folder)
    code, _, err = run(["deconvolve", "sub.tif", "--psf", "psf.tif", "-o", "s.zarr", "--chunks", 12, 12, 12], capsys)
    assert code == 0 and f"{share:.0%} of sub.tif's voxels are negative" in err, err
    assert "counts them as 0" in err and "offset back" in err
    code, _, err = run(["deconvolve", "in/img0.tif", "--psf", "psf.tif", "-o", "i.zarr", "--chunks", 12, 12, 12], capsys)
    assert code == 0 and "negative" not in err, err
    (folder / "in" / "sub.tif").write_bytes((folder / "sub.tif").read_bytes())
    code, _, err = run(batch_argv(folder, folder / "out"), capsys)
    assert code == 0 and "sub.tif's voxels are negative" in err and err.count("are negative") == 1, err
    low = np.abs(image) + 0.1
    flat, n = low.reshape(-1), int(NEGATIVE_SHARE * low.size)
    flat[:n] *= -1  # at the share, not above it: quiet
    found = []
    negatives.check_has_positive(low, "low", "rl", found)
    assert found == []
    flat[:n + 10] = -np.abs(flat[:n + 10])
    negatives.check_has_positive(low, "low", "rl", found)
    assert len(found) == 1 and "1% of low's voxels are negative" in found[0]
    # A sample: the first plane (it has a positive voxel), then 2 planes spread over the other 11.
    monkeypatch.setattr(negatives, "SCAN_SLAB_BYTES", 4 * 24 * 24 * 2)
    monkeypatch.setattr(negatives, "SHARE_SAMPLE_BYTES", 4 * 24 * 24 * 2)
    found.clear()
    negatives.check_has_positive(image, "sub", "rl", found)
    # (the 2 sampled planes count for the 11 after the first)
    sampled = (np.sum(image[0] < 0) + np.sum(image[[3, 9]] < 0) * 11 / 2) / image.size
    assert len(found) == 1 and f"{sampled:.0%} of sub's voxels in a sample are negative" in found[0], found
    # Empty planes before the stack (no positive voxel by construction) are not part of the sample:
    # counted, they diluted a 40 % share to 2 % (and so did an empty middle slab when the data
    # started past it).
    for empty in (12, 30):
        found.clear()
        negatives.check_has_positive(np.concatenate([np.zeros((empty, 24, 24), np.float32), image]), "padded", "rl", found)
        # where the scan stopped (less the empty plane in its slab), and spread over the rest
        assert len(found) == 1 and f"{sampled:.0%} of padded's voxels in a sample" in found[0], found


def _hand_made(path, axes, scale, shape, dtype="float32", transforms=None):
    """A one-level OME-Zarr v0.5 image written by hand, as another tool might."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=np.ones(shape, dtype), chunks=shape)
    tr = transforms if transforms is not None else [{"type": "scale", "scale": scale}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": {"t": "time", "c": "channel"}.get(a, "space")} | (
            {"unit": "micrometer"} if a in "zyx" else {}) for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": tr}]}]}
    return path


@pytest.mark.parametrize("axes, shape, words", [
    ("xyz", (8, 10, 12), ["axes xyz are not in t, c, z, y, x order", "reorder"]),  # ran, PSF axis along x
    ("zcyx", (8, 2, 10, 12), ["axes zcyx are not in"]),  # ran each plane's CYX as a volume
    ("ctzyx", (2, 2, 8, 10, 12), ["axes ctzyx are not in"]),
    ("zyy", (8, 10, 12), ["axes zyy are not in"]),
])
def test_ome_zarr_axes_out_of_order_are_refused(tmp_path, axes, shape, words):
    """OME-NGFF orders axes time, channel, space, with unique names; read by position these ran."""
    from deconv3d.errors import InputError

    image = _hand_made(tmp_path / "a.zarr", axes, [1.0] * len(axes), shape)
    with pytest.raises(InputError) as caught:
        open_lazy(image)
    for word in words:
        assert word in str(caught.value)
    assert open_lazy(_hand_made(tmp_path / "b.zarr", "tczyx", [1.0] * 5, (1, 2, 8, 10, 12))).axes == "TCZYX"


@pytest.mark.parametrize("axes, kinds, shape", [("zyx", {"z": "time"}, (8, 10, 12)), ("cyx", {"c": "space"}, (2, 10, 12))])
def test_ome_zarr_axes_of_the_wrong_type_are_refused(tmp_path, axes, kinds, shape):
    """An axis named z but typed time (or c typed space) was read by its name alone."""
    import zarr

    from deconv3d.errors import InputError

    image = _hand_made(tmp_path / "a.zarr", axes, [1.0] * len(axes), shape)
    group = zarr.open_group(str(image), mode="r+")
    attrs = dict(group.attrs)
    for axis in attrs["ome"]["multiscales"][0]["axes"]:
        axis["type"] = kinds.get(axis["name"], axis["type"])
    group.attrs.update(attrs)
    name, kind = next(iter(kinds.items()))
    with pytest.raises(InputError, match=f"axis '{name}' has type '{kind}'"):
        open_lazy(image)


def test_a_2d_image_stored_as_5d_keeps_its_yx_origin(tmp_path):
    """bioformats2raw writes a 2D image as t, c, z of length 1: z is dropped, and its translation
    with it (kept, the origin landed on the wrong axes: (1, 2) instead of (2, 3))."""
    image = _hand_made(tmp_path / "a.zarr", "tczyx", None, (1, 1, 1, 24, 24), transforms=[
        {"type": "scale", "scale": [1.0, 1.0, 0.5, 0.1, 0.1]}, {"type": "translation", "translation": [0, 0, 1, 2, 3]}])
    lazy = open_lazy(image)
    assert lazy.data.shape == (1, 1, 24, 24) and lazy.origin == pytest.approx((2.0, 3.0))


@pytest.mark.parametrize("transforms, words", [
    ([{"type": "scale", "scale": [0.3, 0.1]}], ["scale [0.3, 0.1], not 3 positive numbers"]),  # blamed the PSF
    ([{"type": "scale", "scale": None}], ["scale None"]),  # a TypeError
    ([{"type": "scale", "scale": [0, 0.1, 0.1]}], ["not 3 positive numbers"]),  # ran as 'no voxel size'
    ([{"type": "scale", "path": "s.bin"}], ["outside the metadata", "'s.bin'"]),  # ignored: 1 µm voxels
    ([{"type": "scale", "scale": [float("inf"), 0.1, 0.1]}], ["not 3 positive numbers"]),  # an infinite voxel
    ([{"type": "scale", "scale": [float("nan"), 0.1, 0.1]}], ["not 3 positive numbers"]),  # read as 'no voxel size'
    ([{"type": "scale", "scale": [1, 1, 1]}, {"type": "translation", "translation": [float("nan"), 0, 0]}],
     ["translation [nan, 0, 0], not 3 numbers"]),  # a NaN origin written to the output
])
def test_ome_zarr_scales_that_cannot_be_read_are_refused(tmp_path, transforms, words):
    from deconv3d.errors import InputError

    image = _hand_made(tmp_path / "a.zarr", "zyx", None, (8, 10, 12), transforms=transforms)
    with pytest.raises(InputError) as caught:
        open_lazy(image)
    assert "level '0'" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_complex_ome_zarr_and_a_root_of_several_series_are_refused(tmp_path):
    """A complex array lost its imaginary part with exit 0 (the TIFF reader refuses it); a
    bioformats2raw root of several images opened its first without a word."""
    import zarr

    from deconv3d.errors import InputError

    with pytest.raises(InputError, match="has complex values"):
        open_lazy(_hand_made(tmp_path / "c.zarr", "zyx", [1.0] * 3, (4, 5, 6), dtype="complex64"))
    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    for i in "01":
        _hand_made(tmp_path / "r.zarr" / i, "zyx", [1.0] * 3, (4, 5, 6))
    with pytest.raises(InputError, match=r"holds 2 images \(bioformats2raw series 0, 1\): give one, e\.g\. .*r\.zarr/0"):
        open_lazy(tmp_path / "r.zarr")
    assert open_lazy(tmp_path / "r.zarr" / "1").data.shape == (4, 5, 6)


def test_pyramid_levels_name_their_method_and_chunks_fit_them(tmp_path):
    import zarr

    write_ome_zarr(tmp_path / "one.zarr", np.ones((20, 32, 32), np.float32), pyramid_levels=1)
    assert zarr.open_group(str(tmp_path / "one.zarr"), mode="r").attrs["ome"]["multiscales"][0]["type"] == "mean"
    write_ome_zarr(tmp_path / "none.zarr", np.ones((20, 32, 32), np.float32))
    assert "type" not in zarr.open_group(str(tmp_path / "none.zarr"), mode="r").attrs["ome"]["multiscales"][0]

    write_ome_zarr(tmp_path / "p.zarr", np.ones((20, 32, 32), np.float32), chunks=(20, 32, 32), pyramid_levels=2)
    ms = zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["type"] == "mean" and "mean" in ms["metadata"]["description"]
    level2 = zarr.open_array(str(tmp_path / "p.zarr" / "2"), mode="r")
    assert level2.shape == (10, 8, 8) and level2.chunks == (10, 8, 8)  # was (20, 32, 32)


def test_a_chunked_runs_pyramid_averages_as_many_chunks_at_once_as_it_ran_blocks(tmp_path, monkeypatch):
    """Found by the memory review: the pyramid was written on dask's pool, one thread per core (on 16
    cores, 20 % over a limit the blocks had kept); it now gets the run's ``workers``."""
    import dask.array as da
    import zarr

    from deconv3d.pipeline import RichardsonLucyBlock, run_chunked

    from .conftest import blurred_beads, gaussian_psf

    seen, store = [], da.Array.store

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("num_workers"))
        return store(self, *args, **kwargs)

    monkeypatch.setattr(da.Array, "store", spy)
    psf = gaussian_psf()
    run_chunked(blurred_beads((20, 32, 32), psf), RichardsonLucyBlock(psf, iterations=2), tmp_path / "a.zarr",
                chunks=(10, 16, 16), workers=1, pyramid_levels=1)
    assert seen == [1] and zarr.open_array(str(tmp_path / "a.zarr" / "1"), mode="r").shape == (10, 16, 16)


def test_the_input_origin_reaches_the_output_and_its_pyramid(tmp_path, capsys):
    """A tile's level-0 translation (here in nanometres, with a multiscale-wide scale as well) was
    dropped: the output no longer overlaid its input in a viewer."""
    import zarr

    image = _hand_made(tmp_path / "t.zarr", "zyx", None, (12, 24, 24), transforms=[
        {"type": "scale", "scale": [150.0, 50.0, 50.0]}, {"type": "translation", "translation": [1500.0, 2500.0, 3500.0]}])
    group = zarr.open_group(str(image), mode="r+")
    attrs = dict(group.attrs)
    for axis in attrs["ome"]["multiscales"][0]["axes"]:
        axis["unit"] = "nanometer"
    attrs["ome"]["multiscales"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]
    group.attrs.update(attrs)
    lazy = open_lazy(image)
    assert lazy.voxel_size == pytest.approx((0.3, 0.1, 0.1)) and lazy.origin == pytest.approx((3.0, 5.0, 7.0))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", image, "-o", tmp_path / "o.zarr", "--psf", tmp_path / "psf.tif",
                        "--iterations", 2, "--pyramid-levels", 1], capsys)
    assert code == 0, err
    out = open_lazy(tmp_path / "o.zarr")
    assert out.voxel_size == pytest.approx((0.3, 0.1, 0.1)) and out.origin == pytest.approx((3.0, 5.0, 7.0))
    datasets = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    assert datasets[1]["coordinateTransformations"][1]["translation"] == pytest.approx([3.0, 5.05, 7.05])


@pytest.mark.parametrize("voxel, translation, units", [
    ([], [10.0, 200.0, 300.0], False),  # kept in the input's own units, its voxels
    (["--voxel-size", 0.3, 0.1, 0.1], [3.0, 20.0, 30.0], True),  # calibrated here: those voxels in micrometres
])
def test_an_uncalibrated_inputs_origin_reaches_the_output(tmp_path, capsys, voxel, translation, units):
    """An image with no units and scale 1 lost its translation: only a micrometre one was read."""
    import zarr

    image = _hand_made(tmp_path / "u.zarr", "zyx", None, (6, 16, 16), transforms=[
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}, {"type": "translation", "translation": [10.0, 200.0, 300.0]}])
    group = zarr.open_group(str(image), mode="r+")
    attrs = dict(group.attrs)
    for axis in attrs["ome"]["multiscales"][0]["axes"]:
        del axis["unit"]
    group.attrs.update(attrs)
    lazy = open_lazy(image)
    assert lazy.voxel_size is None and lazy.origin == pytest.approx((10.0, 200.0, 300.0))
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 5, 5)))
    code, _, err = run(["deconvolve", image, "-o", tmp_path / "o.zarr", "--psf", tmp_path / "psf.tif",
                        "--method", "wiener", *voxel], capsys)
    assert code == 0, err
    ms = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == pytest.approx(translation)
    assert all(("unit" in axis) == units for axis in ms["axes"])


def test_a_2d_tiff_output_is_read_back_one_chunk_at_a_time(tmp_path, monkeypatch):
    """The 2D result was read back from the scratch zarr before zarr was held to one chunk in
    flight: a 4096^2 Wiener run went 5-10 % over --memory-limit there."""
    import zarr

    from deconv3d.pipeline.batch import Settings
    from deconv3d.pipeline.files import deconvolve_file

    psf = gaussian_psf((5, 5), (1.0, 1.0))
    write_tiff(tmp_path / "flat.tif", blurred_beads((48, 40), psf, seed=1), voxel_size=(0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.1, 0.1))
    seen, getitem = [], zarr.Array.__getitem__

    def spy(self, key):
        if "out.tif" in str(self.store_path):  # the scratch zarr of the output (not the input's blocks)
            seen.append(zarr.config.get("async.concurrency"))
        return getitem(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    settings = Settings(method="wiener", psf=str(tmp_path / "psf.tif"), chunks=(24, 20))
    deconvolve_file(tmp_path / "flat.tif", tmp_path / "out.tif", settings)
    assert (tmp_path / "out.tif").exists() and seen and set(seen) == {1}, seen


def test_more_pyramid_levels_than_the_shape_holds_are_said_to_be_fewer(tmp_path, capsys):
    """Found by the options review: --pyramid-levels 20 on a 16 x 32 x 32 image wrote 5 levels
    (y and x halve from 32 to 1) without a word. The levels the shape holds are written, with a
    warning saying how many; as many as it holds draw none."""
    import warnings

    from deconv3d.errors import Deconv3dWarning

    data = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    with pytest.warns(Deconv3dWarning, match=r"pyramid_levels 20 is more than a \(16, 32, 32\) image holds: wrote 5, "
                                             r"the last of \(8, 1, 1\) voxels"):
        write_ome_zarr(tmp_path / "a.zarr", data, pyramid_levels=20)
    datasets = read_ome_zarr(tmp_path / "a.zarr")[3]["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3", "4", "5"]
    assert read_ome_zarr(tmp_path / "a.zarr", level=5)[0].shape == (8, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_ome_zarr(tmp_path / "b.zarr", data, pyramid_levels=5)
    write_tiff(tmp_path / "in.tif", data, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3)), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["deconvolve", tmp_path / "in.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.zarr",
                        "--iterations", 1, "--pyramid-levels", 6], capsys)
    assert code == 0 and err.strip().splitlines() == [
        "deconv3d: warning: --pyramid-levels 6 is more than a (16, 32, 32) image holds: wrote 5, the last of "
        "(8, 1, 1) voxels (each level halves y and x, down to 1 voxel)"], err


def test_the_link_check_looks_only_at_folders_not_at_each_input_file(tmp_path, monkeypatch):
    """The batch's test of links in the input folder statted every file the patterns find: 0.3-2.2 s
    for 20,000 TIFF files in one folder (a round trip each on a file server). A file is never the
    output folder nor above it, so only folders and links to them are looked at; a link the pattern
    follows to the output is still found."""
    from deconv3d.cli.batch_output_folder import _found_as_input

    monkeypatch.chdir(tmp_path)
    raw = Path("raw")
    raw.mkdir()
    for i in range(20):
        (raw / f"img{i}.tif").write_bytes(b"")
    Path("day2").mkdir()
    (raw / "day2").symlink_to(tmp_path / "day2", target_is_directory=True)
    statted = []
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        statted.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert not _found_as_input(Path("out"), raw, ["*.tif", "*.zarr"])
    assert _found_as_input(Path("day2"), raw, ["*/*.tif"])  # through the link
    monkeypatch.undo()
    assert statted and not [p for p in statted if p.endswith(".tif")]


@pytest.mark.parametrize("dtype, shown", [("str", ""), ([("a", "f4"), ("b", "i2")], "[('a', '<f4')")])
def test_ome_zarr_of_non_numeric_values_is_refused_up_front(tmp_path, capsys, dtype, shown):
    """An array of strings was read as far as its blocks and called damaged ("a chunk is damaged");
    one of records stopped with an internal TypeError."""
    import warnings

    with warnings.catch_warnings():  # (zarr: records have no Zarr v3 specification yet)
        warnings.simplefilter("ignore")
        image = _hand_made(tmp_path / "s.zarr", "zyx", [1.0] * 3, (4, 5, 6), dtype=dtype)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((3, 3, 3), (1.0, 1.0, 1.0)))
    code, _, err = run(["deconvolve", image, "-o", tmp_path / "o.tif", "--psf", tmp_path / "psf.tif"], capsys)
    assert_one_line_error(code, err, f"image {image} has non-numeric values (dtype {shown}",
                          "save it as numbers (integers or floats)")
