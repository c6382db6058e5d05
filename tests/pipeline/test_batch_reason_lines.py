"""A batch's failure lines name the input before the reason: a refusal that names the input file gives the
batch its reason said of "the image" (InputError.without_file), so the name is not repeated; a single
deconvolve's line is as it was."""

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run
from deconv3d.errors import BeyondFloat32, InputError, naming_image
from deconv3d.io import write_tiff
from .conftest import gaussian_psf

VOXEL = (0.3, 0.1, 0.1)
PLANE_FIX = "a 2D image needs a 2D PSF: the in-focus plane of a 3D one, or a plane made by 'deconv3d psf --shape 63 63 " \
    "--voxel-size DY DX ...'"
THIN_FIX = "2 z-planes are too few for a 3D PSF: image a thicker stack, or deconvolve each plane as a 2D image with a 2D PSF"
NEGATIVE = "has no positive values, so rl would return only zeros: add the subtracted offset back"
REASONS = {  # each file's reason in the batch's lines
    "a.tif": f"PSF psf.tif (9, 5, 5) is larger than the image (2, 24, 24) along z (in the image's voxels): {THIN_FIX}",
    "b.tif": f"PSF psf.tif is 3D but the image is 2D: {PLANE_FIX}",
    "c.tif": f"the image {NEGATIVE}",
}
DECONVOLVE = {  # each file's line from a single deconvolve
    "a.tif": f"PSF psf.tif (9, 5, 5) is larger than the image IN/a.tif (2, 24, 24) along z (in the image's voxels): "
             f"{THIN_FIX}",
    "b.tif": f"PSF psf.tif is 3D but IN/b.tif is 2D: {PLANE_FIX}",
    "c.tif": f"IN/c.tif {NEGATIVE}",
}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((9, 5, 5)), voxel_size=VOXEL)
    (tmp_path / "IN").mkdir()
    volume = np.random.default_rng(0).uniform(1, 2, (8, 24, 24)).astype(np.float32)
    write_tiff(tmp_path / "IN" / "a.tif", volume[:2], voxel_size=VOXEL)  # 2 planes: thinner than the PSF
    write_tiff(tmp_path / "IN" / "b.tif", volume[0], voxel_size=VOXEL[1:])  # 2D, a 3D PSF
    write_tiff(tmp_path / "IN" / "c.tif", -volume, voxel_size=VOXEL)  # no positive value
    return tmp_path


def test_a_batchs_lines_and_report_name_the_input_once(folder, capsys):
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif"], capsys)
    assert code == 3, err
    failed = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert failed == [f"failed  IN/{name}: {reason}" for name, reason in REASONS.items()]
    assert [line for line in err.splitlines() if line.startswith("deconv3d: failed: ")] == [
        f"deconv3d: failed: IN/{name}: {reason}" for name, reason in REASONS.items()]
    rows = json.loads((folder / "OUT" / "batch_report.json").read_text())["files"]
    assert {row["file"]: row["reason"] for row in rows} == {
        str(folder / "IN" / name): reason for name, reason in REASONS.items()}


@pytest.mark.parametrize("name", sorted(DECONVOLVE))
def test_a_single_deconvolve_still_names_the_input(folder, capsys, name):
    code, _, err = run(["deconvolve", f"IN/{name}", "-o", "out.zarr", "--psf", "psf.tif"], capsys)
    assert code == 2
    assert err == f"deconv3d: error: {DECONVOLVE[name]}\n"
    assert not (folder / "out.zarr").exists()


def test_the_refusal_keeps_its_line_without_the_file_through_pickling():
    """A file's refusal crosses processes (the processes scheduler, dask.distributed) with without_file."""
    refusal = naming_image(lambda image: f"{image} is 2D: give a 2D PSF", "IN/b.tif")
    assert (str(refusal), refusal.without_file) == ("IN/b.tif is 2D: give a 2D PSF", "the image is 2D: give a 2D PSF")
    for again in (pickle.loads(pickle.dumps(refusal)), copy.copy(refusal)):
        assert type(again) is InputError
        assert (str(again), again.without_file) == (str(refusal), refusal.without_file)
    plain = pickle.loads(pickle.dumps(InputError("bad")))
    assert (str(plain), plain.without_file) == ("bad", None)


UNITS = "pass --voxel-size DZ DY DX (in µm)"
TIFF = "as a TIFF image: not a TIFF file: header=b'not ': check that it is one, or export it again"
ZARR = ("as OME-Zarr (its metadata is not valid JSON: Expecting property name enclosed in double quotes at line 1 column "
        "2): give an OME-Zarr image group, e.g. one written by deconv3d or bioformats2raw")
BARE = ("is a bare zarr array, without the OME-Zarr metadata that gives its axes and voxel size: save it as an OME-Zarr "
        "image (deconv3d.omezarr.write_ome_zarr) or as TIFF")
HUGE = "has values up to 1e+300, beyond the float32 range (3.4e38) deconv3d computes in: rescale the image and save it again"
NO_VOXEL = "carries no voxel size; assuming the PSF's (0.3, 0.1, 0.1) µm (pass --voxel-size to set it)"
#: Inputs the readers refuse (in_/unit.tif: the voxel unit; bad.tif to complex.tif: open_lazy; huge.tif: a block
#: read): the line of a single deconvolve (the file's name for {}), and the reason in a batch's line.
READ = {
    "bad.tif": (f"cannot read {{}} {TIFF}", f"cannot read it {TIFF}"),
    "bare.zarr": (f"{{}} {BARE}", f"the image {BARE}"),
    "complex.tif": ("image {} has complex values: save the intensity (magnitude) instead",
                    "the image has complex values: save the intensity (magnitude) instead"),
    "huge.tif": (f"image {{}} {HUGE}", f"the image {HUGE}"),
    "in_µm.tif": (f"{{}} records a voxel size of -0.3 µm, which is not a positive size: {UNITS}",
                  f"the image records a voxel size of -0.3 µm, which is not a positive size: {UNITS}"),
    "json.zarr": (f"cannot open {{}} {ZARR}", f"cannot open it {ZARR}"),
    "unit.tif": (f"{{}} records its voxel size in 'furlong', a unit deconv3d cannot convert to µm: {UNITS}",
                 f"the image records its voxel size in 'furlong', a unit deconv3d cannot convert to µm: {UNITS}"),
    "units.zarr": (f"{{}} records its voxel size in 'furlong', a unit deconv3d cannot convert to µm: {UNITS}",
                  f"the image records its voxel size in 'furlong', a unit deconv3d cannot convert to µm: {UNITS}"),
}


@pytest.fixture
def unreadable(tmp_path, monkeypatch):
    """IN/: a file that deconvolves (a.tif) and one of each input of READ; the PSF psf.tif beside it."""
    import tifffile
    import zarr

    from deconv3d.omezarr import write_ome_zarr

    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=VOXEL)
    folder = tmp_path / "IN"
    folder.mkdir()
    volume = np.random.default_rng(0).uniform(1, 2, (8, 24, 24)).astype(np.float32)
    write_tiff(folder / "a.tif", volume, voxel_size=VOXEL)
    (folder / "bad.tif").write_bytes(b"not a TIFF " * 10)
    zarr.open_array(str(folder / "bare.zarr"), mode="w", shape=volume.shape, dtype="f4")[:] = volume
    tifffile.imwrite(folder / "complex.tif", volume.astype(np.complex64))
    huge = volume.astype(np.float64)
    huge[3, 4, 5] = 1e300
    tifffile.imwrite(folder / "huge.tif", huge)  # (no voxel size: it draws a warning too)
    for name, unit, spacing in (("in_µm.tif", "um", -0.3), ("unit.tif", "furlong", 0.3)):
        tifffile.imwrite(folder / name, volume, imagej=True, resolution=(10, 10),
                         metadata={"spacing": spacing, "unit": unit, "axes": "ZYX"})
    (folder / "json.zarr").mkdir()
    (folder / "json.zarr" / "zarr.json").write_text("{not JSON")
    write_ome_zarr(folder / "units.zarr", volume, voxel_size=VOXEL)
    attributes = json.loads((folder / "units.zarr" / "zarr.json").read_text())
    for axis in attributes["attributes"]["ome"]["multiscales"][0]["axes"]:
        axis["unit"] = "furlong" if axis.get("type") == "space" else axis.get("unit")
    (folder / "units.zarr" / "zarr.json").write_text(json.dumps(attributes))
    return tmp_path


def test_a_batch_names_an_input_the_readers_refuse_once(unreadable, capsys):
    """Before: 'failed  IN/unit.tif: IN/unit.tif records its voxel size in ...', 'failed  IN/bad.tif: cannot read
    IN/bad.tif as a TIFF image ...', 'failed  IN/huge.tif: image /ABSOLUTE/IN/huge.tif has values up to ...': a
    reader's refusal names the file it reads, and a batch's line names it before the reason. The huge.tif row's
    warning is said of the image too; the warning printed names the file."""
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 3, err
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert lines == ["done    IN/a.tif"] + [f"failed  IN/{name}: {READ[name][1]}" for name in sorted(READ)], out
    assert [line for line in err.splitlines() if line.startswith("deconv3d: failed: ")] == [
        f"deconv3d: failed: IN/{name}: {READ[name][1]}" for name in sorted(READ)]
    assert f"deconv3d: warning: IN/huge.tif {NO_VOXEL}" in err.splitlines(), err
    rows = {os.path.basename(row["file"]): row for row in
            json.loads((unreadable / "OUT" / "batch_report.json").read_text())["files"]}
    assert {name: row["reason"] for name, row in rows.items() if name != "a.tif"} == {
        name: batch for name, (_, batch) in READ.items()}
    assert [(name, row["warnings"]) for name, row in rows.items() if row["warnings"]] == [
        ("huge.tif", [f"the image {NO_VOXEL}"])]


@pytest.mark.parametrize("name", sorted(READ))
def test_a_single_deconvolve_names_an_input_the_readers_refuse_as_given(unreadable, capsys, name):
    """The chunked route (a .zarr output) as before, but for huge.tif, named by its absolute path there (its block
    reader's), as given now, as the route's other read errors name it and as the in-memory route (a .tif
    output) does."""
    for output in ("out.zarr", "out.tif"):
        code, _, err = run(["deconvolve", f"IN/{name}", "-o", output, "--psf", "psf.tif", "--method", "wiener"],
                           capsys)
        assert code == 2 and err == f"deconv3d: error: {READ[name][0].format(f'IN/{name}')}\n", (output, err)
        assert not (unreadable / output).exists()


def test_an_input_changed_during_its_run_is_named_once_in_a_batch(tmp_path, capsys, monkeypatch):
    """Before: 'failed  IN/b.tif: /ABSOLUTE/IN/b.tif was changed, moved or deleted during the run ...'. A single
    deconvolve's line is as it was. The batch's line comes from the refusal's without_file."""
    import deconv3d.pipeline.files as files
    from deconv3d.pipeline import chunked

    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=VOXEL)
    (tmp_path / "IN").mkdir()
    for i, name in enumerate(("a.tif", "b.tif")):
        write_tiff(tmp_path / "IN" / name, np.random.default_rng(i).uniform(1, 2, (8, 24, 24)).astype(np.float32),
                   voxel_size=VOXEL)
    a_tif, folder = (tmp_path / "IN" / "a.tif").read_bytes(), tmp_path
    running, apply, deconvolve_file = [], chunked._apply, files.deconvolve_file

    def rewritten_as_b_runs(fn, block, placement=None):
        if running == ["b.tif"]:
            running.append("rewritten")
            (folder / "IN" / "b.tif").write_bytes(a_tif)
        return apply(fn, block, placement)

    def noting(path, *args, **kwargs):
        running[:] = [Path(path).name]
        return deconvolve_file(path, *args, **kwargs)

    monkeypatch.setattr(chunked, "_apply", rewritten_as_b_runs)
    monkeypatch.setattr(files, "deconvolve_file", noting)
    changed = ("was changed, moved or deleted during the run: nothing was written; run again once the image is "
               "complete and left in place")
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 3 and running == ["b.tif", "rewritten"], err
    assert out.splitlines()[:2] == ["[1/2] done    IN/a.tif", f"[2/2] failed  IN/b.tif: the image {changed}"], out
    assert err.splitlines()[-1] == f"deconv3d: failed: IN/b.tif: the image {changed}", err
    running[:] = ["b.tif"]
    code, _, err = run(["deconvolve", "IN/b.tif", "-o", "out.zarr", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 2 and running == ["b.tif", "rewritten"]
    assert err == f"deconv3d: error: {folder / 'IN' / 'b.tif'} {changed}\n"


def test_a_beyond_float32_refusal_keeps_its_fields_through_pickling():
    refusal = BeyondFloat32("image /abs/a.tif", 1e300)
    for again in (pickle.loads(pickle.dumps(refusal)), copy.copy(refusal)):
        assert type(again) is BeyondFloat32 and str(again) == str(refusal) == f"image /abs/a.tif {HUGE}"
        assert again.said_of("the image") == f"the image {HUGE}"


def test_an_input_gone_before_its_run_is_named_once_in_a_batch(tmp_path, capsys, monkeypatch):
    """Before: 'failed  IN/b.tif: IN/b.tif: No such file or directory' (removed while a.tif ran)."""
    import deconv3d.pipeline.files as files

    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=VOXEL)
    (tmp_path / "IN").mkdir()
    for name in ("a.tif", "b.tif"):
        write_tiff(tmp_path / "IN" / name, np.ones((8, 24, 24), np.float32), voxel_size=VOXEL)
    deconvolve_file = files.deconvolve_file

    def removing_b(path, *args, **kwargs):
        (tmp_path / "IN" / "b.tif").unlink(missing_ok=True)
        return deconvolve_file(path, *args, **kwargs)

    monkeypatch.setattr(files, "deconvolve_file", removing_b)
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 3 and out.splitlines()[:2] == [
        "[1/2] done    IN/a.tif", "[2/2] failed  IN/b.tif: No such file or directory"], out + err


def test_the_readers_refusals_and_warnings_say_the_image_themselves(unreadable, capsys):
    """The batch's lines and rows above: each reader's refusal and each warning about the input carries its
    text said of "the image" (without_file), set where it is worded."""
    import tifffile

    tifffile.imwrite(unreadable / "IN" / "neg.tif", np.random.default_rng(1).uniform(-1, 0.5, (8, 24, 24))
                     .astype(np.float32))
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif", "--method", "wiener"], capsys)
    assert code == 3, err
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert [line for line in lines if line.startswith("failed")] == [
        f"failed  IN/{name}: {READ[name][1]}" for name in sorted(READ)], out
    rows = {os.path.basename(row["file"]): row for row in
            json.loads((unreadable / "OUT" / "batch_report.json").read_text())["files"]}
    negative = ("of the image's voxels are negative (a subtracted offset?); Wiener's output is clipped at 0, which "
                "raises its mean: add the subtracted offset back")
    assert rows["huge.tif"]["warnings"] == [f"the image {NO_VOXEL}"]
    first, second = rows["neg.tif"]["warnings"]
    assert first == f"the image {NO_VOXEL}" and second.split("% ", 1)[1] == negative, rows["neg.tif"]


def test_a_warning_about_the_input_keeps_its_text_without_the_file_in_both_wordings():
    """The API's wording (voxel_size) for a row of batch(), the command line's (--voxel-size) for its rows."""
    from deconv3d.errors import OptionWarning, warning_naming_image

    with pytest.warns(OptionWarning) as record:
        warning_naming_image(lambda image: f"deconv3d: warning: {image} carries no voxel size (pass --voxel-size to "
                             "set it)", "IN/b.tif")
    warning = record[0].message
    assert (str(warning), warning.command_line) == ("IN/b.tif carries no voxel size (pass voxel_size to set it)",
                                                    "IN/b.tif carries no voxel size (pass --voxel-size to set it)")
    assert (warning.without_file, warning.command_line_without_file) == (
        "the image carries no voxel size (pass voxel_size to set it)",
        "the image carries no voxel size (pass --voxel-size to set it)")


def test_a_check_run_on_the_input_gives_its_refusal_said_of_the_image_too():
    from deconv3d._arrays import refuse_complex
    from deconv3d.errors import refusing_image

    refusing_image(lambda image: refuse_complex(np.dtype("f4"), image), "image IN/b.tif")  # (passes: nothing raised)
    with pytest.raises(InputError) as refused:
        refusing_image(lambda image: refuse_complex(np.dtype("c8"), image, "save the magnitude"), "image IN/b.tif")
    assert (str(refused.value), refused.value.without_file) == (
        "image IN/b.tif has complex values: save the magnitude", "the image has complex values: save the magnitude")
