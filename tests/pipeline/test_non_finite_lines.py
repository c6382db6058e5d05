"""The chunked route's refusal of NaN or Inf values in the input: one line that names the file (once, in a
batch's line), where one such value lies, and the fix an in-memory run gives; no output left behind."""

import os

import numpy as np
import pytest
import tifffile

from cli_helpers import assert_one_line_error, run
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr, write_ome_zarr
from .conftest import gaussian_psf

FIX = "replace them (e.g. with 0) and save it again"
VOXEL = ("--voxel-size", "0.3", "0.1", "0.1")


def _files(folder) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "psf.tif", gaussian_psf((5, 5, 5)), voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def _volume(shape=(8, 32, 32)):
    return np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)


@pytest.mark.parametrize("output, chunks", [("out.zarr", ("--chunks", 4, 32, 32)), ("out.tif", ("--chunks", 4, 32, 32)),
                                            ("out.zarr", ())])
def test_a_tiff_inputs_nan_is_named_with_its_file_and_place(folder, capsys, output, chunks):
    image = _volume()
    image[6, 3, 4] = np.nan  # in the second block of --chunks 4 32 32
    tifffile.imwrite(folder / "a.tif", image)
    before = _files(folder)
    code, _, err = run(["deconvolve", "a.tif", "-o", output, "--psf", "psf.tif", *VOXEL, *chunks], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == f"deconv3d: error: image a.tif contains NaN or Inf values (one at z-y-x (6, 3, 4)): {FIX}"
    assert _files(folder) == before  # no output, no scratch
    np.testing.assert_array_equal(tifffile.imread(folder / "a.tif"), image, strict=True)


def test_a_zarr_inputs_inf_is_named_with_its_channel(folder, capsys):
    image = np.stack([_volume(), _volume()])
    image[1, 5, 20, 7] = np.inf
    write_ome_zarr(folder / "in.zarr", image, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    before = _files(folder)
    code, _, err = run(["deconvolve", "in.zarr", "-o", "out.zarr", "--psf", "psf.tif", "--chunks", 4, 16, 16],
                       capsys)
    assert_one_line_error(code, err)
    assert err.strip() == ("deconv3d: error: image in.zarr contains NaN or Inf values (one at z-y-x (5, 20, 7) of "
                           f"channel 1): {FIX}")
    assert _files(folder) == before


def test_a_batch_line_names_the_file_once(folder, capsys):
    (folder / "IN" / "sub").mkdir(parents=True)
    image = _volume()
    tifffile.imwrite(folder / "IN" / "b.tif", image)
    image[2, 3, 4] = np.nan
    tifffile.imwrite(folder / "IN" / "sub" / "a.tif", image)
    code, out, err = run(["batch", "IN", "-o", "OUT", "--psf", "psf.tif", *VOXEL, "--pattern", "**/*.tif",
                          "--chunks", 4, 32, 32], capsys)
    reason = f"the image contains NaN or Inf values (one at z-y-x (2, 3, 4)): {FIX}"
    assert code == 3, err
    assert f"failed  IN/sub/a.tif: {reason}\n" in out
    assert f"deconv3d: failed: IN/sub/a.tif: {reason}\n" in err
    assert not (folder / "OUT" / "a.zarr").exists() and (folder / "OUT" / "b.zarr").is_dir()


def test_the_line_without_the_file_says_the_image():
    """A batch's reason (the line without the file's name) says "the image", as its other reasons do; a single
    run's lines, with the file's name or without one known, are as they were."""
    from deconv3d.errors import NonFiniteValues

    named = NonFiniteValues("image", FIX, position=(6, 3, 4), volume="channel 1", file="a.tif")
    assert str(named) == f"image a.tif contains NaN or Inf values (one at z-y-x (6, 3, 4) of channel 1): {FIX}"
    assert named.line(with_file=False) == (f"the image contains NaN or Inf values (one at z-y-x (6, 3, 4) of "
                                           f"channel 1): {FIX}")
    unnamed = NonFiniteValues("image", "clean or crop it first")
    assert str(unnamed) == "image contains NaN or Inf values: clean or crop it first"
    assert unnamed.line(with_file=False) == "the image contains NaN or Inf values: clean or crop it first"


def test_the_refusal_is_pickled_and_copied_with_its_fields():
    """A block's refusal travels between processes: plain pickle (and copy) rebuilt it from its line alone,
    a TypeError (missing 'fix'), where dask.distributed had not installed tblib's reducer on the class."""
    import copy
    import pickle

    from deconv3d.errors import NonFiniteValues

    refusal = NonFiniteValues("image", FIX, position=(6, 3, 4), letters="ZYX", volume="channel 1", file="a.tif")
    for again in (pickle.loads(pickle.dumps(refusal)), copy.copy(refusal)):
        assert type(again) is NonFiniteValues and str(again) == str(refusal)
        assert (again.what, again.fix, again.position, again.letters, again.volume, again.file) == (
            "image", FIX, (6, 3, 4), "ZYX", "channel 1", "a.tif")
        assert again.line(with_file=False) == refusal.line(with_file=False)


def test_a_float64_inputs_inf_is_named_with_its_place(folder, capsys):
    """A float64 file's Inf, refused as its blocks were converted to float32 when read, was named without
    where it lies; an in-memory run's line is as it was."""
    image = _volume().astype(np.float64)
    image[6, 3, 4] = np.inf
    tifffile.imwrite(folder / "a.tif", image)
    before = _files(folder)
    code, _, err = run(["deconvolve", "a.tif", "-o", "out.zarr", "--psf", "psf.tif", *VOXEL, "--chunks", 4, 32, 32],
                       capsys)
    assert_one_line_error(code, err)
    assert err.strip() == f"deconv3d: error: image a.tif contains NaN or Inf values (one at z-y-x (6, 3, 4)): {FIX}"
    code, _, err = run(["deconvolve", "a.tif", "-o", "out.tif", "--psf", "psf.tif", *VOXEL], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == f"deconv3d: error: image a.tif contains NaN or Inf values: {FIX}"
    assert _files(folder) == before


def test_auto_iterations_names_where_the_nan_of_its_crop_lies(folder, capsys, monkeypatch):
    """--iterations auto refused the crop it chooses the count on, the first to meet the NaN, without
    saying where: the place is the volume's (the crop's start added), with the channel."""
    from deconv3d.pipeline import auto_iterations

    monkeypatch.setattr(auto_iterations, "AUTO_CROP_VOXELS", 4 * 16 * 16)  # a centred crop from (2, 8, 8)
    image = np.stack([_volume(), _volume()])
    image[1, 4, 15, 17] = np.nan
    write_ome_zarr(folder / "in.zarr", image, axes="CZYX", voxel_size=(0.3, 0.1, 0.1))
    before = _files(folder)
    code, _, err = run(["deconvolve", "in.zarr", "-o", "out.zarr", "--psf", "psf.tif", "--iterations", "auto",
                        "--chunks", 4, 16, 16], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == ("deconv3d: error: image in.zarr contains NaN or Inf values (one at z-y-x (4, 15, 17) of "
                           f"channel 1): {FIX}")
    assert _files(folder) == before


#: The layouts of a zarr array that may lack chunks: zarr v2, v3, and v3 sharded (one shard file of four chunks,
#: which exists where any of them is stored: a missing chunk is an empty entry of its index).
LAYOUTS = [(2, None), (3, None), (3, (8, 32, 32))]


@pytest.mark.parametrize("zarr_format, shards", LAYOUTS)
def test_a_zarrs_unstored_chunks_read_as_its_nan_fill_value_are_named(folder, capsys, zarr_format, shards):
    """An OME-Zarr whose array has fill_value NaN and lacks chunks (a conversion that did not finish) reads NaN there:
    the line says that the chunks are missing, not that the file holds NaN to replace; nothing is written. In a
    sharded array, whose shard file was there, the line gave the file's fix."""
    _nan_filled_zarr(folder, zarr_format, _volume()[:4], shards)  # the chunks of planes 4-7 are never written
    before = {name: (folder / name).read_bytes() for name in _files(folder)}
    code, _, err = run(["deconvolve", "in.zarr", "-o", "out.zarr", "--psf", "psf.tif", "--chunks", 4, 32, 32], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == ("deconv3d: error: image in.zarr contains NaN or Inf values (one at z-y-x (4, 0, 0)): 2 of "
                           "the 4 chunks of its array '0' are not stored, and zarr reads them as the array's fill_value "
                           "NaN (a write or copy that did not finish, or a region all NaN, which zarr does not "
                           "store): write or copy the image again in full, or replace its NaN values (e.g. with 0) "
                           "and save it again")
    assert {name: (folder / name).read_bytes() for name in _files(folder)} == before  # no output; input unchanged


@pytest.mark.parametrize("zarr_format, shards", LAYOUTS)
@pytest.mark.parametrize("chunks", [("--chunks", 4, 32, 32), ()])
def test_a_nan_in_a_stored_chunk_of_a_zarr_lacking_chunks_gets_the_files_fix(folder, capsys, zarr_format, shards,
                                                                             chunks):
    """A NaN that a stored chunk holds, met before the NaN fill_value of the chunks never stored: writing the image
    again would keep it, so the line gives the fix for NaN values in a file (in a sharded array too, whose
    shard lacks other chunks)."""
    stored = _volume()[:4]
    stored[1, 2, 3] = np.nan
    _nan_filled_zarr(folder, zarr_format, stored, shards)
    code, _, err = run(["deconvolve", "in.zarr", "-o", "out.zarr", "--psf", "psf.tif", *chunks], capsys)
    assert_one_line_error(code, err)
    assert err.strip() == f"deconv3d: error: image in.zarr contains NaN or Inf values (one at z-y-x (1, 2, 3)): {FIX}"
    assert not (folder / "out.zarr").exists()


@pytest.mark.parametrize("shards", [None, (8, 32, 32)])
def test_a_chunk_gone_from_a_written_zarr_is_named_as_not_stored(folder, capsys, shards):
    """One chunk gone from an image written in full: its file deleted or, in a shard, its entry of the shard's index
    emptied (as zarr leaves a chunk it never wrote); zarr reads NaN there, and the line is the same for both."""
    _nan_filled_zarr(folder, 3, _volume(), shards)
    if shards is None:
        (folder / "in.zarr" / "0" / "c" / "1" / "0" / "0").unlink()
    else:
        _strip_from_shard(folder / "in.zarr" / "0" / "c" / "0" / "0" / "0", 2)  # chunk (1, 0, 0) of its (2, 2, 1)
    code, _, err = run(["deconvolve", "in.zarr", "-o", "out.zarr", "--psf", "psf.tif", "--chunks", 4, 32, 32], capsys)
    assert_one_line_error(code, err)
    assert err.strip().startswith("deconv3d: error: image in.zarr contains NaN or Inf values (one at z-y-x (4, 0, 0)): "
                                  "1 of the 4 chunks of its array '0' are not stored, and zarr reads them as the "
                                  "array's fill_value NaN"), err
    assert not (folder / "out.zarr").exists()


def test_a_sharded_zarr_lacking_chunks_of_fill_value_0_is_read_as_unsharded(folder, capsys):
    """fill_value 0: zarr leaves a chunk of zeros unstored (in a shard too), so one never written is not told from
    one of zeros: the sharded array lacking chunks is deconvolved as the same array unsharded, to the same output."""
    outputs = []
    for shards in (None, (8, 32, 32)):
        _nan_filled_zarr(folder, 3, _volume()[:4], shards, fill_value=0)
        code, _, err = run(["deconvolve", "in.zarr", "-o", f"out{len(outputs)}.zarr", "--psf", "psf.tif",
                            "--chunks", 4, 32, 32], capsys)
        assert code == 0, err
        outputs.append(read_ome_zarr(folder / f"out{len(outputs)}.zarr")[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_shards_chunks_are_counted_from_its_index_alone(folder, monkeypatch):
    """The count of a sharded array's stored chunks reads each shard's index (16 bytes per chunk and a 4-byte
    checksum, at the end of the file), never a chunk: not the whole shard file, nor through the array's reads."""
    import zarr
    from zarr.abc.store import SuffixByteRequest

    from deconv3d.omezarr.chunk_gaps import unstored_chunks_fix
    from deconv3d.omezarr.chunk_store import CheckedLocalStore
    from deconv3d.omezarr.reading import ZarrReader

    # the chunks of planes 12-15 are never written
    _nan_filled_zarr(folder, 3, _volume((12, 32, 32)), (8, 32, 32), shape=(16, 32, 32))
    requests, get = [], CheckedLocalStore.get

    async def recorded(self, key, prototype=None, byte_range=None):
        requests.append((key, byte_range))
        return await get(self, key, prototype, byte_range)

    def refused(*args, **kwargs):
        raise AssertionError("the array was read")

    monkeypatch.setattr(CheckedLocalStore, "get", recorded)
    monkeypatch.setattr(zarr.Array, "__getitem__", refused)
    monkeypatch.setattr(ZarrReader, "read", refused)
    assert unstored_chunks_fix(folder / "in.zarr", (13, 0, 0)).startswith("2 of the 8 chunks of its array '0' are not "
                                                                          "stored")
    assert sorted((k, r) for k, r in requests if "/c/" in k) == [("0/c/0/0/0", SuffixByteRequest(68)),
                                                                 ("0/c/1/0/0", SuffixByteRequest(68))]


def test_a_shard_reaching_past_the_arrays_edge_lacks_none_of_its_chunks(folder):
    """A shard at the array's edge has room for chunks past it, which zarr never writes: an array written in full is
    not told to lack chunks, and one chunk taken from that shard is one of the array's 6."""
    from deconv3d.omezarr.chunk_gaps import unstored_chunks_fix

    _nan_filled_zarr(folder, 3, _volume((12, 32, 32)), (8, 32, 32), shape=(12, 32, 32))  # shard 1: planes 8-15
    assert unstored_chunks_fix(folder / "in.zarr") is None
    assert unstored_chunks_fix(folder / "in.zarr", (10, 0, 0)) is None
    _strip_from_shard(folder / "in.zarr" / "0" / "c" / "1" / "0" / "0", 0)
    assert unstored_chunks_fix(folder / "in.zarr").startswith("1 of the 6 chunks of its array '0' are not stored")
    assert unstored_chunks_fix(folder / "in.zarr", (10, 20, 0)) is None  # (its chunk (2, 1, 0) is stored)


def _strip_from_shard(shard, entry: int, count: int = 4) -> None:
    """Empty the entry ``entry`` (in C order) of the index of the shard file ``shard`` of ``count`` chunks, as zarr
    writes it by default (little-endian offset and length pairs, then their CRC32C, at the end of the file): the
    entry of a chunk zarr never wrote (2**64 - 1)."""
    import google_crc32c

    data = shard.read_bytes()
    size = 16 * count + 4
    index = np.frombuffer(data[-size:-4], "<u8").reshape(count, 2).copy()
    index[entry] = 2**64 - 1
    body = index.tobytes()
    shard.write_bytes(data[:-size] + body + google_crc32c.value(body).to_bytes(4, "little"))


def _nan_filled_zarr(folder, zarr_format: int, planes, shards=None, fill_value=np.nan, shape=(8, 32, 32)):
    """in.zarr: an OME-Zarr image ``shape`` whose array, of ``fill_value`` (NaN) in chunks (4, 16, 32) and in
    ``shards`` where given, stores only ``planes``, its first planes. Returns the array."""
    import zarr

    group = zarr.open_group(folder / "in.zarr", mode="w", zarr_format=zarr_format)
    array = group.create_array("0", shape=shape, chunks=(4, 16, 32), dtype="float32", fill_value=fill_value,
                               **({"shards": shards} if shards else {}))
    array[:len(planes)] = planes
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [0.3, 0.1, 0.1]}]
    multiscales = [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}]
    group.attrs.update({"ome": {"version": "0.5", "multiscales": multiscales}} if zarr_format == 3 else
                       {"multiscales": [{"version": "0.4", **multiscales[0]}]})
    return array
