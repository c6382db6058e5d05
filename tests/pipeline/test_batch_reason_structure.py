"""Each reader's refusal of an input gives a batch its reason said of "the image" itself (InputError.without_file,
set where it is worded; nothing rewords a line that names the input's path), and so does each warning about the
input in the input's row (Deconv3dWarning.without_file). The folder's name has spaces and brackets; a single
deconvolve's lines are checked in test_batch_reason_lines and the reader's own tests."""

import contextlib
import io
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from deconv3d.io import write_tiff
from .conftest import gaussian_psf

VOXEL = (0.3, 0.1, 0.1)
FOLDER = "d a(t)+[1]"
AXES = "deconv3d reads that order (spatial axes z, y, x); reorder the image's axes"
#: Each input's file name, and its reason in a batch's line (after "failed  FOLDER/NAME: ").
REASONS = {
    "plate.zarr": "the image is an OME-Zarr high-content screening plate, not an image: give one of its fields, e.g. "
                  f"{FOLDER}/plate.zarr/A/1/0",
    "nomulti.zarr": "the image is not an OME-Zarr image (no 'multiscales' metadata): give an image group",
    "malformed.zarr": "the image's zarr.json: ome.multiscales[0].axes is \"zyx\", not a list of 3 axes ({\"name\": "
                      "\"z\", \"type\": \"space\", ...}), one per dimension of the image's 3D array: fix that entry of "
                      "the image's OME-Zarr metadata, or export the image again",
    "axesnames.zarr": "the image: unsupported OME-Zarr axes ['q', 'y', 'x']: deconv3d reads t, c, z, y, x",
    "axistype.zarr": "the image: OME-Zarr axis 'z' has type 'time', not 'space': fix the image's axes metadata",
    "axesorder.zarr": f"the image: OME-Zarr axes xyz are not in t, c, z, y, x order: {AXES}",
    "outside.zarr": "the image: level '0' keeps its scale outside the metadata ('s.bin'), which deconv3d does not "
                    "read: write the scale values into the image's metadata",
    "badscale.zarr": "the image: level '0' has scale [1, -1, 1], not 3 positive numbers (one per axis): fix the "
                     "image's coordinateTransformations",
    "level.zarr": "cannot read level '0' of the image (its metadata is not valid JSON: Expecting property name "
                  "enclosed in double quotes at line 1 column 2): export the image again, e.g. with deconv3d or "
                  "bioformats2raw",
    "folder.tif": "the image is a folder but not a zarr image (no zarr.json or .zgroup in it): give a TIFF file or an "
                  "OME-Zarr folder",
    "header.tif": "the image holds no image, only a TIFF header (a save that was interrupted?): export or copy it again",
    "two.tif": "the image holds 2 separate images (shapes (8, 24, 24) float32, (8, 10, 24) float32): save the one to "
               "deconvolve as its own file (Fiji: open it with Bio-Formats, then File > Save As)",
    "samples.tif": "the image has 2 grey-level samples per pixel (axes YXS): they are channels; save one per file and "
                   "pick it",
    "palette.tif": "the image is an indexed-colour (palette) TIFF: its pixel values are entries of a colour table, not "
                   "intensities; if it is 8-bit data shown with a colour lookup table, give it a grey one and save it "
                   "again (Fiji: Image > Lookup Tables > Grays, then File > Save As > Tiff); a colour picture (Fiji's "
                   "8-bit Color) holds no intensities to deconvolve",
    "cut.tif": "page 0 of the image has pixel data past the end of the file (a strip of 18432 bytes at byte 272, in a "
               "file of 9975): the file is truncated or damaged; copy or export it again",
    "planes.tif": "the image is truncated or corrupt (its ImageJ header lists 9 planes but 8 could be read): copy or "
                  "export it again",
    "line.tif": "the image is 1D once its axes of length 1 are dropped (shape (1, 1, 24)): a 2D or 3D image is needed",
    "rgb.tif": "the image is an RGB/colour image (axes YXS): convert it to greyscale or split the channels and keep one "
               "(Fiji: Image > Color > Split Channels)",
    "text.zarr": "the image has non-numeric values (dtype <U1): save it as numbers (integers or floats)",
    "cal_poly.tif": "the image has an ImageJ intensity calibration (function 1) that is not a straight line: "
                    "deconvolution needs values linear in the light; remove it in Fiji (Analyze > Calibrate..., "
                    "Function: None) and save again",
    "cal_bad.tif": "the image has an ImageJ intensity calibration with coefficients c0=-32768.0, c1=0.0: fix or remove "
                   "it in Fiji (Analyze > Calibrate...)",
    "headcut.tif": "cannot read it as a TIFF image: unpack requires a buffer of 4 bytes: check that it is one, or "
                   "export it again",
    "plane.tif": "PSF psf.tif is 3D but the image is 2D: a 2D image needs a 2D PSF: the in-focus plane of a 3D one, or "
                 "a plane made by 'deconv3d psf --shape 63 63 --voxel-size DY DX ...'",
    "small.tif": "PSF psf.tif (5, 5, 5) is larger than the image (3, 4, 4) along z, y, x (in the image's voxels): use a "
                 "PSF made for this image, e.g. 'deconv3d psf --shape 3 3 3 --voxel-size ...' at its voxel size (or the "
                 "PSF cropped to that), or image a larger volume",
    "nan.tif": "the image contains NaN or Inf values (one at z-y-x (2, 3, 4)): replace them (e.g. with 0) and save it "
               "again",
    "parsec.zarr": "the image records its voxel size in 'parsec', a unit deconv3d cannot convert to µm: pass "
                   "--voxel-size DZ DY DX (in µm)",
    "bare_line.tif": "the image is 1D once its axes of length 1 are dropped (shape (24,)): a 2D or 3D image is needed",
    "rgb_stack.tif": "the image is an RGB/colour image (axes QYXS): convert it to greyscale or split the channels and "
                     "keep one (Fiji: Image > Color > Split Channels)",
    "vanished.tif": "not found: check the path",
}
if hasattr(os, "mkfifo"):
    REASONS["pipe.tif"] = "the image is a named pipe, not a regular file: save the image to a file and give that"
#: Each input that runs with a warning about it (its time unit, its z step), and that warning in its row (the file's
#: name left out).
ROW_WARNINGS = {
    "fortnight.tif": "the image records its time step in 'fortnight', a unit deconv3d cannot name: the t axis keeps "
                     "the step 2.5 without a unit (use sec, min, hr, day, ms, us or ns)",
    "frame.zarr": "the image records its time step in 'frame', a unit deconv3d cannot name: the t axis keeps the step "
                  "2.5 without a unit (use second, minute, hour, millisecond, microsecond or nanosecond)",
    "noz.tif": "the image records no z step, so ImageJ's default is taken, as Fiji takes it: 1 µm (the voxel size the "
               "run and its output take); pass --voxel-size DZ DY DX if its planes are not 1 µm apart",
}


def _ome_zarr(folder, name, edit, volume):
    from deconv3d.omezarr import write_ome_zarr

    write_ome_zarr(folder / name, volume, voxel_size=VOXEL)
    attributes = json.loads((folder / name / "zarr.json").read_text())
    edit(attributes["attributes"]["ome"])
    (folder / name / "zarr.json").write_text(json.dumps(attributes))


def _plate(ome):
    ome.pop("multiscales")
    ome["plate"] = {"wells": [{"path": "A/1"}]}


def _swap_z_and_x(ome):
    axes = ome["multiscales"][0]["axes"]
    axes[0], axes[2] = axes[2], axes[0]


def _level_transforms(transforms):
    return lambda ome: ome["multiscales"][0]["datasets"][0].__setitem__("coordinateTransformations", transforms)


ZARR_EDITS = {
    "plate.zarr": _plate,
    "nomulti.zarr": lambda ome: ome.pop("multiscales"),
    "malformed.zarr": lambda ome: ome["multiscales"][0].__setitem__("axes", "zyx"),
    "axesnames.zarr": lambda ome: ome["multiscales"][0]["axes"][0].__setitem__("name", "q"),
    "axistype.zarr": lambda ome: ome["multiscales"][0]["axes"][0].__setitem__("type", "time"),
    "axesorder.zarr": _swap_z_and_x,
    "outside.zarr": _level_transforms([{"type": "scale", "path": "s.bin"}]),
    "badscale.zarr": _level_transforms([{"type": "scale", "scale": [1, -1, 1]}]),
    "level.zarr": lambda ome: None,  # (its array's metadata is damaged below)
    "parsec.zarr": lambda ome: ome["multiscales"][0]["axes"][0].__setitem__("unit", "parsec"),
}


def _refused_tiffs(folder, stack):
    """TIFFs of a header only, two images (``stack``, and a part of it), grey-level samples and a palette."""
    import tifffile

    (folder / "header.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")
    with tifffile.TiffWriter(folder / "two.tif") as tif:
        tif.write(stack)
        tif.write(stack[:, :10])
    tifffile.imwrite(folder / "samples.tif", np.ones((*stack.shape[1:], 2), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(folder / "palette.tif", np.ones(stack.shape[1:], np.uint8), photometric="palette",
                     colormap=np.random.default_rng(1).integers(0, 65535, (3, 256)).astype(np.uint16))


def _tiffs(folder, volume):
    import tifffile

    (folder / "folder.tif").mkdir()
    (folder / "folder.tif" / "x").write_text("x")
    _refused_tiffs(folder, volume)
    tifffile.imwrite(folder / "cut.tif", volume)
    whole = (folder / "cut.tif").read_bytes()
    (folder / "cut.tif").write_bytes(whole[:len(whole) // 2])
    tifffile.imwrite(folder / "planes.tif", volume, imagej=True)
    (folder / "planes.tif").write_bytes((folder / "planes.tif").read_bytes().replace(b"images=8", b"images=9"))
    tifffile.imwrite(folder / "line.tif", np.ones((1, 1, 24), np.float32))
    tifffile.imwrite(folder / "rgb.tif", np.ones((24, 24, 3), np.uint8), photometric="rgb")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.tif")
    tifffile.imwrite(folder / "fortnight.tif", np.stack([volume, volume]), imagej=True,
                     metadata={"axes": "TZYX", "finterval": 2.5, "tunit": "fortnight", "spacing": VOXEL[0]},
                     resolution=(1 / VOXEL[1], 1 / VOXEL[2]))
    tifffile.imwrite(folder / "noz.tif", volume, imagej=True, resolution=(10, 10),
                     metadata={"unit": "um", "axes": "ZYX"})
    for name, calibration in (("cal_poly.tif", {"cf": 1, "c2": 0.1}), ("cal_bad.tif", {"c1": 0.0})):
        tifffile.imwrite(folder / name, np.full(volume.shape, 32868, np.uint16), imagej=True, resolution=(10, 10),
                         metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um", "cf": 0, "c0": -32768.0, "c1": 1.0,
                                   **calibration})


def _more_kinds(folder, volume):
    """A TIFF cut short in its header, a plane and a stack too small for the 3D PSF, NaN values, a bare line, an RGB
    stack, and a file that vanishes before its run (removed by the batch_lines fixture)."""
    import tifffile

    write_tiff(folder / "headcut.tif", volume, voxel_size=VOXEL)
    (folder / "headcut.tif").write_bytes((folder / "headcut.tif").read_bytes()[:6])
    write_tiff(folder / "plane.tif", volume[0], voxel_size=VOXEL[1:])
    write_tiff(folder / "small.tif", volume[:3, :4, :4], voxel_size=VOXEL)
    with_nan = volume.copy()
    with_nan[2, 3, 4] = np.nan
    tifffile.imwrite(folder / "nan.tif", with_nan, imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "spacing": VOXEL[0], "unit": "um"})
    tifffile.imwrite(folder / "bare_line.tif", np.ones(24, np.float32))
    tifffile.imwrite(folder / "rgb_stack.tif", np.ones((4, 24, 24, 3), np.uint8), photometric="rgb")
    write_tiff(folder / "vanished.tif", volume, voxel_size=VOXEL)


def _zarrs_of_other_kinds(folder, volume):
    """An OME-Zarr of strings, and one whose t axis is in frames."""
    import warnings

    import zarr

    from deconv3d.omezarr import write_ome_zarr

    with warnings.catch_warnings():  # (zarr: strings have no Zarr v3 specification yet)
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(folder / "text.zarr"), mode="w")
        group.create_array("0", data=np.ones((4, 5, 6), "str"), chunks=(4, 5, 6))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 3}]}]}]}
    write_ome_zarr(folder / "frame.zarr", np.stack([volume, volume]), axes="TZYX", voxel_size=VOXEL)
    attributes = json.loads((folder / "frame.zarr" / "zarr.json").read_text())
    ome = attributes["attributes"]["ome"]
    ome["multiscales"][0]["axes"][0]["unit"] = "frame"
    for dataset in ome["multiscales"][0]["datasets"]:
        dataset["coordinateTransformations"][0]["scale"][0] = 2.5
    (folder / "frame.zarr" / "zarr.json").write_text(json.dumps(attributes))


@pytest.fixture(scope="module")
def batch_lines(tmp_path_factory):
    """The batch's lines over a folder of one input of each of REASONS (and a.tif and those of ROW_WARNINGS, which
    run): the printed lines, and each report row by name."""
    from deconv3d.cli import main
    from deconv3d.pipeline import batch_file_run

    root = tmp_path_factory.mktemp("reasons")
    folder = root / FOLDER
    folder.mkdir()
    write_tiff(root / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=VOXEL)
    volume = np.random.default_rng(0).uniform(1, 2, (8, 24, 24)).astype(np.float32)
    write_tiff(folder / "a.tif", volume, voxel_size=VOXEL)
    for name, edit in ZARR_EDITS.items():
        _ome_zarr(folder, name, edit, volume)
    (folder / "level.zarr" / "0" / "zarr.json").write_text("{bad")
    _tiffs(folder, volume)
    _zarrs_of_other_kinds(folder, volume)
    _more_kinds(folder, volume)
    out, err = io.StringIO(), io.StringIO()
    run_one = batch_file_run._run_one

    def vanishing(path, *args):  # (listed by the batch, gone when its run opens it)
        if path.name == "vanished.tif":
            path.unlink()
        return run_one(path, *args)

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(root)
        patch.setattr(batch_file_run, "_run_one", vanishing)
        code = main(["batch", FOLDER, "-o", "OUT", "--psf", "psf.tif", "--method", "wiener"])
    assert code == 3, err.getvalue()
    said = {"out": out.getvalue().splitlines(), "err": err.getvalue().splitlines()}
    rows = json.loads((root / "OUT" / "batch_report.json").read_text())["files"]
    return said, {os.path.basename(row["file"]): row for row in rows}


@pytest.mark.parametrize("name", sorted(REASONS))
def test_a_batch_line_says_the_refused_input_is_the_image(batch_lines, name):
    said, rows = batch_lines
    line = f"failed  {FOLDER}/{name}: {REASONS[name]}"
    assert [text.split("] ", 1)[1] for text in said["out"] if f"/{name}: " in text] == [line], said["out"]
    assert f"deconv3d: failed: {FOLDER}/{name}: {REASONS[name]}" in said["err"], said["err"]
    assert rows[name]["reason"] == REASONS[name]


@pytest.mark.parametrize("name", sorted(ROW_WARNINGS))
def test_a_warning_about_the_input_is_listed_in_the_row_of_the_image(batch_lines, name):
    """Its line names the file as the batch gives it (a TIFF's time unit named its base name alone, so that the
    row, too, kept "fortnight.tif records its time step ..."); its row says "the image"."""
    said, rows = batch_lines
    assert rows[name]["status"] == "done" and rows[name]["warnings"] == [ROW_WARNINGS[name]], rows[name]
    assert f"deconv3d: warning: {FOLDER}/{name} {ROW_WARNINGS[name].removeprefix('the image ')}" in said["err"]


def test_a_psf_changed_during_a_files_run_is_said_of_the_image():
    from deconv3d.errors import InputError
    from deconv3d.pipeline import batch_file_run

    settings = SimpleNamespace(psf="psf.tif", model=None)
    tail = ("was processed (which version the run read is not known): rerun the batch to redo it with the file as it "
            "is now")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch_file_run, "_shared_hashes", lambda settings: {"psf.tif": "new"})
        with pytest.raises(InputError) as refused:
            batch_file_run._check_unchanged({"psf.tif": "old"}, settings, f"{FOLDER}/b.tif")
        assert str(refused.value) == f"psf.tif changed while {FOLDER}/b.tif {tail}"
        assert batch_file_run._reason(refused.value, f"{FOLDER}/b.tif") == f"psf.tif changed while the image {tail}"


def test_a_model_voxel_size_taken_for_an_input_warns_of_the_image_too():
    """The ssl run's warning for an input without a voxel size: its row in a batch says "the image"."""
    from deconv3d.errors import OptionWarning
    from deconv3d.selfsup.checkpoint import TrainedModel

    with pytest.warns(OptionWarning) as record:
        taken = TrainedModel.voxel_for(SimpleNamespace(voxel_size=VOXEL), None, 3, f"{FOLDER}/b.tif")
    assert taken == VOXEL and len(record) == 1
    said = "carries no voxel size; assuming the model's (0.3, 0.1, 0.1) µm (pass {} to check it)"
    warning = record[0].message
    assert warning.command_line == f"{FOLDER}/b.tif {said.format('--voxel-size DZ DY DX')}"
    assert warning.command_line_without_file == f"the image {said.format('--voxel-size DZ DY DX')}"
    assert warning.without_file == f"the image {said.format('voxel_size DZ DY DX')}"


def test_a_psf_s_intensity_calibration_is_refused_of_the_psf_only(tmp_path):
    """The calibration check words its refusal for an image and a PSF alike: a PSF's carries no text said of "the
    image", which a batch's line would have given as the input's."""
    import tifffile

    from deconv3d.errors import InputError
    from deconv3d.io import read_image, read_psf

    tifffile.imwrite(tmp_path / "cal.tif", np.full((4, 8, 8), 32868, np.uint16), imagej=True,
                     metadata={"spacing": 0.3, "unit": "um", "cf": 1, "c0": -32768.0, "c1": 1.0})
    said = ("has an ImageJ intensity calibration (function 1) that is not a straight line: deconvolution needs values "
            "linear in the light; remove it in Fiji (Analyze > Calibrate..., Function: None) and save again")
    for read, line, without_file in ((read_image, f"{tmp_path / 'cal.tif'} {said}", f"the image {said}"),
                                     (read_psf, f"PSF {tmp_path / 'cal.tif'} {said}", None)):
        with pytest.raises(InputError) as refused:
            read(tmp_path / "cal.tif")
        assert (str(refused.value), refused.value.without_file) == (line, without_file)


def test_open_lazy_s_own_refusals_are_said_of_the_image_too(tmp_path):
    """Refusals a batch does not reach (it gives each series of a bioformats2raw folder as an input of its own, and
    refuses a named pipe before opening it), said of "the image" where they are worded all the same."""
    import zarr

    from deconv3d.errors import InputError
    from deconv3d.omezarr import open_lazy

    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    for series in "01":
        root.create_group(series).create_array("0", data=np.ones((2, 4, 4), np.float32))
    refusals = {tmp_path / "b2r.zarr": ("{} holds 2 images (bioformats2raw series 0, 1): give one, e.g. "
                                        f"{tmp_path / 'b2r.zarr' / '0'}")}
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.tif")
        refusals[tmp_path / "pipe.tif"] = ("{} is a named pipe, not a regular file: save the image to a file and give "
                                           "that")
    for path, say in refusals.items():
        with pytest.raises(InputError) as refused:
            open_lazy(path)
        named = say.format(f"input {path}" if path.name == "pipe.tif" else path)
        assert (str(refused.value), refused.value.without_file) == (named, say.format("the image"))


def _bad_psfs(folder):
    """PSF files the TIFF checks refuse, by name."""
    import tifffile

    psf = gaussian_psf((5, 12, 12))
    _refused_tiffs(folder, psf)
    (folder / "headcut.tif").write_bytes(b"II*\x00")
    tifffile.imwrite(folder / "cut.tif", np.ones((5, 50, 50), np.float32))
    (folder / "cut.tif").write_bytes((folder / "cut.tif").read_bytes()[:25000])
    tifffile.imwrite(folder / "planes.tif", psf, imagej=True)
    (folder / "planes.tif").write_bytes((folder / "planes.tif").read_bytes().replace(b"images=5", b"images=6"))
    tifffile.imwrite(folder / "rgb.tif", np.ones((5, 5, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(folder / "line.tif", np.ones((1, 1, 5), np.float32))
    return sorted(p.name for p in folder.iterdir())


def test_a_psf_s_tiff_refusals_are_said_of_the_psf_only(tmp_path):
    """The TIFF checks word a refusal for an image and a PSF alike (_tiff_checks._refusal): a PSF's names the PSF
    and carries no text said of "the image", which a batch's line would give as the input's."""
    from deconv3d.errors import InputError
    from deconv3d.io import read_psf

    for name in _bad_psfs(tmp_path):
        with pytest.raises(InputError) as refused:
            read_psf(tmp_path / name)
        line = str(refused.value)
        assert f"PSF {tmp_path / name}" in line and "the image" not in line, line
        assert refused.value.without_file is None, (name, refused.value.without_file)
