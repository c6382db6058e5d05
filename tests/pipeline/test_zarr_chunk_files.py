"""A zarr input's chunk whose path is there but is no readable file (a folder, a broken symbolic
link, a named pipe, a file where a chunk folder should be, no read permission) is refused in one
line naming the array and the chunk: zarr's LocalStore read it as a missing chunk, the fill value
(zeros), and a run deconvolved zeros there and exited 0. A chunk with no file at all is still the
fill value (sparse arrays)."""

import os
import re
import shutil
import threading

import numpy as np
import pytest

from deconv3d.errors import InputError
from deconv3d.omezarr.chunk_store import UNREADABLE_FIX
from deconv3d.io import write_tiff

from cli_helpers import assert_one_line_error, run
from .conftest import blurred_beads, gaussian_psf

FIX = "restore the chunk file or re-export the image"


def _folder(chunk):
    chunk.unlink()
    chunk.mkdir()


def _broken_link(chunk):
    chunk.unlink()
    chunk.symlink_to(chunk.parent / "gone")


def _named_pipe(chunk):
    """A named pipe at the chunk's path, and a thread that opens it for writing and closes it at once:
    a reader that opens the pipe (the fault this file tests) reads it as empty rather than waiting for
    ever. Returns what ends the thread where no reader came."""
    chunk.unlink()
    os.mkfifo(chunk)
    writer = threading.Thread(target=lambda: open(chunk, "wb").close(), daemon=True)
    writer.start()

    def end():
        os.close(os.open(chunk, os.O_RDONLY | os.O_NONBLOCK))  # (lets the writer's open return)
        writer.join()

    return end


def _file_above(chunk):  # c/0/0 a file: the chunks c/0/0/0 and c/0/0/1 lie under it
    shutil.rmtree(chunk.parent)
    chunk.parent.write_bytes(b"")


#: How a chunk is damaged, and what the error says of it.
DAMAGES = {"folder": (_folder, "is a folder, not a file"),
           "broken-link": (_broken_link, "is a symbolic link to nothing"),
           "named-pipe": (_named_pipe, "is not a regular file"),
           "file-above": (_file_above, "lies under c/0/0, which is not a folder")}


def _damage(request, make, chunk) -> None:
    end = make(chunk)
    if end is not None:
        request.addfinalizer(end)


@pytest.fixture
def image(tmp_path):
    """in.zarr (16 x 32 x 32 in eight chunks of 8 x 16 x 16) and psf.tif: returns in.zarr's data."""
    from deconv3d.omezarr import write_ome_zarr

    data = blurred_beads((16, 32, 32), gaussian_psf(), seed=4) + 1
    write_ome_zarr(tmp_path / "in.zarr", data, voxel_size=(0.3, 0.1, 0.1), chunks=(8, 16, 16))
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=(0.3, 0.1, 0.1))
    return data


def _chunk(tmp_path):
    return tmp_path / "in.zarr" / "0" / "c" / "0" / "0" / "1"


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("out", ["out.zarr", "out.tif"])
def test_deconvolve_refuses_a_chunk_that_is_no_file_and_writes_nothing(tmp_path, image, capsys, request, damage,
                                                                         out):
    make, words = DAMAGES[damage]
    _damage(request, make, _chunk(tmp_path))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o", tmp_path / out,
                        "--method", "rl", "--iterations", 2, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "chunk c/0/0/", f" of the zarr array {tmp_path / 'in.zarr' / '0'} {words}", FIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("how", ["read_ome_zarr", "dask array", "reader"])
def test_reading_a_zarr_image_refuses_a_chunk_that_is_no_file(tmp_path, image, request, damage, how):
    from deconv3d.omezarr import open_lazy, read_ome_zarr

    make, words = DAMAGES[damage]
    _damage(request, make, _chunk(tmp_path))
    path = tmp_path / "in.zarr"
    read = {"read_ome_zarr": lambda: read_ome_zarr(path)[0], "dask array": lambda: open_lazy(path).data.compute(),
            "reader": lambda: open_lazy(path).reader.read((slice(0, 8), slice(0, 16), slice(16, 32)))}[how]
    with pytest.raises(InputError, match=f"chunk c/0/0/. of the zarr array .*in.zarr.0 {words}.*: {FIX}$"):
        read()


def test_a_missing_chunk_file_still_reads_as_the_fill_value(tmp_path, image):
    """A sparse array writes no file for a chunk of fill values: reading it is no error."""
    from deconv3d.omezarr import open_lazy, read_ome_zarr

    _chunk(tmp_path).unlink()
    shutil.rmtree(tmp_path / "in.zarr" / "0" / "c" / "1")  # a whole folder of chunks
    expected = image.copy()
    expected[:8, :16, 16:] = 0
    expected[8:] = 0
    np.testing.assert_array_equal(read_ome_zarr(tmp_path / "in.zarr")[0], expected)
    np.testing.assert_array_equal(open_lazy(tmp_path / "in.zarr").reader.read((slice(None),) * 3), expected)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("how", ["dask array", "reader"])
def test_a_chunk_without_read_permission_is_refused(tmp_path, image, how):
    from deconv3d.omezarr import open_lazy

    _chunk(tmp_path).chmod(0)
    lazy = open_lazy(tmp_path / "in.zarr")
    try:
        with pytest.raises(InputError, match=f"chunk c/0/0/1 of the zarr array .*in.zarr.0 cannot be read: .*: "
                                             f"{re.escape(UNREADABLE_FIX)}$"):
            lazy.data.compute() if how == "dask array" else lazy.reader.read((slice(None),) * 3)
    finally:
        _chunk(tmp_path).chmod(0o644)


@pytest.mark.parametrize("how", ["dask array", "reader"])
def test_a_chunk_file_that_cannot_be_opened_is_refused_by_name(tmp_path, image, monkeypatch, how):
    """What the test above checks, for any user: the file's read fails with PermissionError (as zarr's
    LocalStore meets a chunk of mode 000)."""
    from zarr.storage import _local

    from deconv3d.omezarr import open_lazy

    get = _local._get

    def denied(path, *args, **kwargs):
        if str(path).endswith("c/0/0/1"):
            raise PermissionError(13, "Permission denied", str(path))
        return get(path, *args, **kwargs)

    monkeypatch.setattr(_local, "_get", denied)
    lazy = open_lazy(tmp_path / "in.zarr")
    with pytest.raises(InputError, match=f"chunk c/0/0/1 of the zarr array .*in.zarr.0 cannot be read: "
                                         f"Permission denied: {re.escape(UNREADABLE_FIX)}$"):
        lazy.data.compute() if how == "dask array" else lazy.reader.read((slice(None),) * 3)


def _sharded_image(tmp_path, data):
    """in.zarr: ``data`` (16 x 32 x 32) in two shards of 8 x 32 x 32, each of four chunks of 4 x 16 x 32."""
    import zarr

    group = zarr.open_group(tmp_path / "in.zarr", mode="w", zarr_format=3)
    group.create_array("0", shape=data.shape, chunks=(4, 16, 32), shards=(8, 32, 32), dtype="float32",
                       fill_value=0.0)[:] = data
    scale = [{"type": "scale", "scale": [0.3, 0.1, 0.1]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": scale}]}]}
    return tmp_path / "in.zarr" / "0" / "c" / "1" / "0" / "0"


@pytest.mark.parametrize("how", ["read_ome_zarr", "dask array", "whole shard", "one chunk"])
def test_an_empty_chunk_or_shard_file_is_refused_not_read_as_zeros(tmp_path, image, how):
    """zarr's sharding codec read an empty (0-byte) shard file, read whole, as a shard of missing chunks: zeros,
    and no error. No chunk encodes to 0 bytes: an empty file, or one shorter than the bytes zarr asks of it
    (here a shard's index), is damage, refused naming the chunk."""
    from deconv3d.omezarr import open_lazy, read_ome_zarr

    shard = _sharded_image(tmp_path, image)
    shard.write_bytes(b"")
    path = tmp_path / "in.zarr"
    read = {"read_ome_zarr": lambda: read_ome_zarr(path)[0], "dask array": lambda: open_lazy(path).data.compute(),
            "whole shard": lambda: open_lazy(path).reader.read((slice(8, 16), slice(None), slice(None))),
            "one chunk": lambda: open_lazy(path).reader.read((slice(8, 12), slice(0, 16), slice(None)))}[how]
    words = "is empty \\(0 bytes\\)" if how == "whole shard" else "(is empty|ends before the 68 bytes zarr asked)"
    with pytest.raises(InputError, match=f"^chunk c/1/0/0 of the zarr array .*in.zarr.0 {words}.*, so it cannot be "
                       f"read \\(a chunk with no file at all would read as the array's fill value\\): {FIX}$"):
        read()


def test_an_empty_unsharded_chunk_file_is_refused(tmp_path, image):
    from deconv3d.omezarr import open_lazy

    _chunk(tmp_path).write_bytes(b"")
    with pytest.raises(InputError, match=f"^chunk c/0/0/1 of the zarr array .*in.zarr.0 is empty \\(0 bytes\\).*: "
                                         f"{FIX}$"):
        open_lazy(tmp_path / "in.zarr").reader.read((slice(None),) * 3)


def test_deconvolve_refuses_an_empty_shard_file_and_writes_nothing(tmp_path, image, capsys):
    """Blocks of a whole shard (``--chunks 8 32 32``) read the empty shard as zeros before."""
    _sharded_image(tmp_path, image).write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "out.zarr",
                        "--method", "rl", "--iterations", 2, "--device", "cpu", "--chunks", 8, 32, 32], capsys)
    assert_one_line_error(code, err, f"chunk c/1/0/0 of the zarr array {tmp_path / 'in.zarr' / '0'} is empty", FIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary


def test_batch_fails_an_image_with_an_empty_shard_file_and_writes_no_output_of_it(tmp_path, image, capsys):
    (tmp_path / "in").mkdir()
    _sharded_image(tmp_path / "in", image).write_bytes(b"")
    code, out, err = run(["batch", tmp_path / "in", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "out",
                          "--method", "rl", "--iterations", 2, "--device", "cpu", "--chunks", 8, 32, 32], capsys)
    assert code != 0, err
    assert f"failed  {tmp_path / 'in' / 'in.zarr'}: chunk c/1/0/0 of the zarr array " in out + err
    assert f"{tmp_path / 'in' / 'in.zarr' / '0'} is empty (0 bytes)" in out + err
    assert not (tmp_path / "out" / "in.zarr").exists()
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith((".", "batch_report"))] == []
