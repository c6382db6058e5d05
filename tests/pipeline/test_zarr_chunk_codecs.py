"""A zarr input's chunk whose bytes do not decode is refused in one line naming the chunk, its array and
the fix, whatever its codec, zarr format or sharding, read by ZarrReader or the dask array. Before,
some codec errors escaped as they were (zlib.error: "internal error"; gzip cut short: EOFError; lzma),
gzip's and bz2's OSErrors were called an image moved or deleted, and the dask array raised them all raw.
An OSError fetching a chunk's file (not decoding it) keeps its own message."""

import contextlib
import errno
import warnings

import numpy as np
import pytest

from deconv3d.errors import InputError
from deconv3d.io import write_tiff

from cli_helpers import assert_one_line_error, run
from .conftest import blurred_beads, gaussian_psf

FIX = "restore the chunk file or re-export the image"
CODECS = ("zlib", "gzip", "blosc", "lz4", "zstd", "bz2", "lzma", "none")
LAYOUTS = ("v2", "v3", "v3-sharded")


def _compressor(codec: str, layout: str):
    """The compressor of ``codec`` for an array of ``layout`` (made where zarr warns of a numcodecs codec in
    a zarr v3 array)."""
    import numcodecs
    import zarr.codecs as zc
    import zarr.codecs.numcodecs as zn

    if codec == "none":
        return None if layout == "v2" else ()
    if layout == "v2":
        return {"zlib": numcodecs.Zlib, "gzip": numcodecs.GZip, "blosc": numcodecs.Blosc, "lz4": numcodecs.LZ4,
                "zstd": numcodecs.Zstd, "bz2": numcodecs.BZ2, "lzma": numcodecs.LZMA}[codec]()
    own = {"gzip": zc.GzipCodec, "blosc": zc.BloscCodec, "zstd": zc.ZstdCodec}
    return own[codec]() if codec in own else {"zlib": zn.Zlib, "lz4": zn.LZ4, "bz2": zn.BZ2, "lzma": zn.LZMA}[codec]()


def _numcodecs_warning(codec: str, layout: str):
    """What catches zarr's warning at making or opening an array of a numcodecs codec in zarr v3 (nothing to
    catch for another)."""
    from zarr.errors import ZarrUserWarning

    if layout == "v2" or codec not in ("zlib", "lz4", "bz2", "lzma"):
        return contextlib.nullcontext()
    return pytest.warns(ZarrUserWarning, match="Numcodecs codecs are not in the Zarr version 3 specification")


def _image(folder, data, codec: str, layout: str):
    """``folder``/in.zarr, an OME-Zarr image of ``data`` (16 x 32 x 32) compressed by ``codec``: zarr v2
    (OME-Zarr 0.4) or v3 (0.5) in chunks of 8 x 16 x 16, or v3 in two shards of 8 x 32 x 32 of four chunks
    of 4 x 16 x 32. Returns the file of its chunk (or shard) at [8:, :16, :16], and that file's key."""
    import zarr

    v2 = layout == "v2"
    group = zarr.open_group(folder / "in.zarr", mode="w", zarr_format=2 if v2 else 3)
    grid = {"chunks": (4, 16, 32), "shards": (8, 32, 32)} if layout == "v3-sharded" else {"chunks": (8, 16, 16)}
    with _numcodecs_warning(codec, layout):
        group.create_array("0", shape=data.shape, dtype="float32", fill_value=0.0,
                           compressors=_compressor(codec, layout), **grid)[:] = data
    multiscale = {"axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                            "scale": [0.3, 0.1, 0.1]}]}]}
    if v2:
        group.attrs["multiscales"] = [{**multiscale, "version": "0.4"}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    key = "1.0.0" if v2 else "c/1/0/0"
    return folder / "in.zarr" / "0" / key, key


def _damage(chunk, codec: str, how: str = "") -> None:
    """Overwrite the first 16 bytes of the chunk file (its compressed stream's header; a shard's first
    chunk, its index at the end kept), or, ``how`` "cut" and for an uncompressed chunk (whose bytes are
    any values), cut it to half its length."""
    found = chunk.read_bytes()
    cut = how == "cut" or codec == "none"
    chunk.write_bytes(found[:len(found) // 2] if cut else bytes([0xA5] * 16) + found[16:])


@pytest.fixture
def data():
    return blurred_beads((16, 32, 32), gaussian_psf(), seed=4) + 1


def _message(key: str) -> str:
    return f"^chunk {key} of the zarr array .*in.zarr.0 is damaged: its bytes do not decode \\(.+\\).*: {FIX}$"


@pytest.mark.parametrize("how", ["reader", "dask array"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("codec", CODECS)
def test_a_chunk_that_does_not_decode_is_refused_naming_it(tmp_path, data, codec, layout, how):
    """The whole image is read (the damaged chunk is not the first): the chunk named is the damaged one."""
    from deconv3d.omezarr import open_lazy

    chunk, key = _image(tmp_path, data, codec, layout)
    with warnings.catch_warnings():  # (no zarr warning that numcodecs codecs are outside the v3 specification:
        warnings.simplefilter("error")  # advice for whoever writes such an array, not for a run reading it)
        np.testing.assert_array_equal(open_lazy(tmp_path / "in.zarr").data.compute(), data)  # (whole when undamaged)
    _damage(chunk, codec)
    with warnings.catch_warnings(), pytest.raises(InputError, match=_message(key)):
        warnings.simplefilter("error")
        lazy = open_lazy(tmp_path / "in.zarr")
        lazy.reader.read((slice(None),) * 3) if how == "reader" else lazy.data.compute()


def test_a_batch_of_several_chunks_that_fails_names_its_damaged_chunk(tmp_path, data):
    """zarr configured to read 8 chunks a batch (all of the image's): the one named is the damaged one, the
    fifth, not the batch's first."""
    import zarr

    from deconv3d.omezarr import open_lazy

    chunk, key = _image(tmp_path, data, "zstd", "v3")
    _damage(chunk, "zstd")
    with zarr.config.set({"codec_pipeline.batch_size": 8}):
        reader = open_lazy(tmp_path / "in.zarr").reader
        with pytest.raises(InputError, match=_message(key)):
            reader.read((slice(None),) * 3)


def test_read_ome_zarr_refuses_a_chunk_that_does_not_decode(tmp_path, data):
    from deconv3d.omezarr import read_ome_zarr

    chunk, key = _image(tmp_path, data, "zlib", "v2")
    _damage(chunk, "zlib")
    with pytest.raises(InputError, match=_message(key)):
        read_ome_zarr(tmp_path / "in.zarr")


def _cli_case(tmp_path, data, codec, layout, how):
    (tmp_path / "in").mkdir()
    chunk, key = _image(tmp_path / "in", data, codec, layout)
    _damage(chunk, codec, how)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    return key


#: (codec, layout, damage) run through the command line: zlib.error ("internal error"), gzip's EOFError and
#: BadGzipFile ("moved or deleted"), bz2's OSError, and a codec inside a shard.
CLI_CASES = [("zlib", "v2", "head"), ("gzip", "v3", "cut"), ("gzip", "v3", "head"), ("bz2", "v2", "head"),
             ("zstd", "v3-sharded", "head")]


@pytest.mark.parametrize("chunks", [False, True])
@pytest.mark.parametrize("codec, layout, how", CLI_CASES)
def test_deconvolve_refuses_a_chunk_that_does_not_decode_and_writes_nothing(tmp_path, data, capsys, codec, layout,
                                                                            how, chunks):
    key = _cli_case(tmp_path, data, codec, layout, how)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["deconvolve", tmp_path / "in" / "in.zarr", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / "out.zarr", "--method", "rl", "--iterations", 2, "--device", "cpu",
                        *(["--chunks", 8, 32, 32] if chunks else [])], capsys)
    assert_one_line_error(code, err, f"chunk {key} of the zarr array {tmp_path / 'in' / 'in.zarr' / '0'} is damaged",
                          FIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary


@pytest.mark.parametrize("codec, layout, how", CLI_CASES[:2])
def test_batch_fails_an_image_with_a_chunk_that_does_not_decode_and_writes_no_output_of_it(tmp_path, data, capsys,
                                                                                         codec, layout, how):
    key = _cli_case(tmp_path, data, codec, layout, how)
    code, out, err = run(["batch", tmp_path / "in", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "out",
                          "--method", "rl", "--iterations", 2, "--device", "cpu"], capsys)
    assert code != 0, err
    failed = [line for line in (out + err).splitlines() if line.startswith("[1/1] failed")]
    assert len(failed) == 1 and "Traceback" not in out + err, out + err
    assert (f"failed  {tmp_path / 'in' / 'in.zarr'}: chunk {key} of the zarr array "
            f"{tmp_path / 'in' / 'in.zarr' / '0'} is damaged: its bytes do not decode") in failed[0]
    assert failed[0].endswith(FIX)
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith((".", "batch_report"))] == []


#: What a chunk file that cannot be read (an I/O error, a disk gone) is told, on every path that reads it.
UNREADABLE = ("chunk c/1/0/0 of the zarr array {} cannot be read: Input/output error: check that the image is still "
              "there and readable (it was moved, deleted or unmounted during the run?)")


def _failing_chunk(monkeypatch, chunk, when=lambda: True) -> None:
    """Fetching the file ``chunk`` fails with an I/O error (``when`` it returns True)."""
    from zarr.storage import _local

    get = _local._get

    def failing(path, *args, **kwargs):
        if str(path) == str(chunk) and when():
            raise OSError(errno.EIO, "Input/output error")
        return get(path, *args, **kwargs)

    monkeypatch.setattr(_local, "_get", failing)


@pytest.mark.parametrize("how", ["reader", "dask array", "read_ome_zarr"])
def test_an_oserror_fetching_a_chunk_is_not_called_damage(tmp_path, data, monkeypatch, how):
    """A chunk file that cannot be read (an I/O error, a disk gone) is no damaged chunk: one line names the chunk
    and says to check that the image is still there, on each path (the dask array raised the bare OSError)."""
    from deconv3d.omezarr import open_lazy, read_ome_zarr

    chunk, _ = _image(tmp_path, data, "gzip", "v3")
    _failing_chunk(monkeypatch, chunk)
    lazy = open_lazy(tmp_path / "in.zarr")
    read = {"reader": lambda: lazy.reader.read((slice(None),) * 3), "dask array": lazy.data.compute,
            "read_ome_zarr": lambda: read_ome_zarr(tmp_path / "in.zarr")}[how]
    with pytest.raises(InputError) as info:
        read()
    assert str(info.value) == UNREADABLE.format(tmp_path / "in.zarr" / "0")


def test_deconvolve_says_in_one_line_that_a_chunk_read_through_dask_cannot_be_read(tmp_path, data, monkeypatch,
                                                                                    capsys):
    """A run that trains on the image reads it through its dask array, where an I/O error fetching a chunk came
    out as "internal error" with the bare OSError. The chunk fails only there (the blocks read before it by the
    run's checks read it whole); nothing is written."""
    import dask.array

    chunk, _ = _image(tmp_path, data, "gzip", "v3")
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    computing = []
    to_numpy = dask.array.Array.__array__

    def through_dask(self, *args, **kwargs):
        computing.append(True)
        try:
            return to_numpy(self, *args, **kwargs)
        finally:
            computing.pop()

    monkeypatch.setattr(dask.array.Array, "__array__", through_dask)
    _failing_chunk(monkeypatch, chunk, when=lambda: bool(computing))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "out.zarr",
                        "--method", "ssl", "--train-steps", 1, "--device", "cpu"], capsys)
    assert code == 2 and err == f"deconv3d: error: {UNREADABLE.format(tmp_path / 'in.zarr' / '0')}\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary


def test_running_out_of_memory_decoding_a_chunk_is_not_called_damage(tmp_path, data, monkeypatch):
    import numcodecs

    from deconv3d.omezarr import open_lazy

    _image(tmp_path, data, "zlib", "v2")

    def no_memory(self, buf, out=None):
        raise MemoryError()

    monkeypatch.setattr(numcodecs.Zlib, "decode", no_memory)
    with pytest.raises(MemoryError):
        open_lazy(tmp_path / "in.zarr").reader.read((slice(None),) * 3)


@pytest.mark.parametrize("exc", [OSError("no such thing as {x} or {}"), OSError(5, "I/O {error}")])
def test_a_chunk_refusal_keeps_braces_in_the_error_s_text(tmp_path, exc):
    """Review of this stop's diff: the refusal's text went through str.format, so an OSError whose text
    held braces raised KeyError/IndexError instead of the one-line refusal."""
    from deconv3d.omezarr.chunk_store import _unreadable

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "zarr.json").write_text("{}")
    message = str(_unreadable(tmp_path, "a/c/0/0", exc))
    assert message.startswith(f"chunk c/0/0 of the zarr array {tmp_path / 'a'} cannot be read: ")
    assert (exc.strerror or str(exc)) in message
