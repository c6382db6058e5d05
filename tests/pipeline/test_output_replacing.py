"""What an output path may replace: an earlier deconv3d output, but not what was added to it, not the
run's own input, and not a file or a link at a ``.zarr`` path (refused before any work)."""

from pathlib import Path

import numpy as np
import pytest

from deconv3d._paths import check_output_path
from deconv3d.errors import InputError
from deconv3d.omezarr import write_ome_zarr
from deconv3d.pipeline.output import atomic_output


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _add_labels(image):
    """OME-Zarr labels as a segmentation tool adds them: inside the image's group."""
    cells = image / "labels" / "cells"
    cells.mkdir(parents=True)
    (image / "labels" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (cells / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (cells / "mask.bin").write_bytes(b"\x01\x02")


def test_an_earlier_zarr_output_holding_added_labels_is_not_replaced(tmp_path):
    """Rerunning into an earlier .zarr output deleted the labels added inside it (exit 0, only
    ``0`` and ``zarr.json`` left). Such an output is refused, naming the added entries; one that
    holds only what deconv3d writes (its levels too) is still replaced."""
    x = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    out = tmp_path / "lab.zarr"
    write_ome_zarr(out, x, pyramid_levels=1)
    assert {p.name for p in out.iterdir()} == {"0", "1", "zarr.json"}
    write_ome_zarr(out, x + 1, pyramid_levels=1)  # its own output, levels and all: replaced
    _add_labels(out)
    before = _tree(out)
    for attempt in (lambda: check_output_path(out, suffixes=(".zarr",)), lambda: write_ome_zarr(out, x)):
        with pytest.raises(InputError, match=r"holds entries it did not write \(labels\)") as info:
            attempt()
        assert "\n" not in str(info.value) and "move them away" in str(info.value)
    assert _tree(out) == before and (out / "labels" / "cells" / "mask.bin").read_bytes() == b"\x01\x02"
    (out / "notes.txt").write_text("mine")  # a file beside the levels, not only a folder
    with pytest.raises(InputError, match=r"\(labels, notes.txt\)"):
        write_ome_zarr(out, x)


def test_labels_added_to_the_output_during_the_run_are_not_deleted_when_publishing(tmp_path):
    x = np.ones((2, 4, 4), np.float32)
    out = tmp_path / "lab.zarr"
    write_ome_zarr(out, x)
    with pytest.raises(InputError, match=r"\(labels\)"):
        with atomic_output(out) as tmp:
            write_ome_zarr(tmp, x)  # (the new output, under its temporary name)
            _add_labels(out)
    assert (out / "labels" / "cells" / "mask.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.zarr"]  # no temporary left


@pytest.mark.parametrize("source", ["lazy", "reader", "dask", "from_zarr"])
def test_run_chunked_refuses_its_own_input_as_the_output(tmp_path, source):
    """run_chunked(open_lazy("src.zarr"), ..., "src.zarr") replaced its input with the result (its
    maximum went from 1023 to 2046), and an output inside the input's folder changed the input. Both
    are refused before any block runs, as the command line refuses them, however the file is read."""
    import dask.array as da

    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import run_chunked

    x = np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    src = tmp_path / "src.zarr"
    write_ome_zarr(src, x)
    before = _tree(src)
    data = {"lazy": lambda: open_lazy(src), "reader": lambda: open_lazy(src).reader,
            "dask": lambda: open_lazy(src).data, "from_zarr": lambda: da.from_zarr(str(src), component="0")}[source]()
    calls = []

    def block_fn(block):
        calls.append(1)
        return block * 2

    # (a dask array from_zarr reads src.zarr/0, which src.zarr holds)
    with pytest.raises(InputError, match="output path equals the input|lie one inside the other"):
        run_chunked(data, block_fn, src)
    with pytest.raises(InputError, match="lie one inside the other"):
        run_chunked(data, block_fn, src / "0" / "inner.zarr")
    assert calls == [] and _tree(src) == before
    np.testing.assert_array_equal(np.asarray(open_lazy(src).data), x)
    run_chunked(data, block_fn, tmp_path / "result.zarr")  # elsewhere: runs
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "result.zarr").data), 2 * x)


def test_write_ome_zarr_refuses_to_replace_the_image_its_data_is_read_from(tmp_path):
    from deconv3d.io import write_tiff
    from deconv3d.omezarr import open_lazy

    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    write_ome_zarr(tmp_path / "src.zarr", x)
    with pytest.raises(InputError, match="output path equals the input"):  # (it reads src.zarr/0, a level of it)
        write_ome_zarr(tmp_path / "src.zarr", open_lazy(tmp_path / "src.zarr").data * 2)
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "src.zarr").data), x)
    write_tiff(tmp_path / "t.tif", x)
    with pytest.raises(InputError, match="lie one inside the other"):
        write_ome_zarr(tmp_path / "t.tif" / "x.zarr", open_lazy(tmp_path / "t.tif").data)
    write_ome_zarr(tmp_path / "copy.zarr", open_lazy(tmp_path / "src.zarr").data * 2)  # elsewhere: written
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "copy.zarr").data), 2 * x)


@pytest.mark.parametrize("writer", ["write_ome_zarr", "run_chunked"])
@pytest.mark.parametrize("there", ["file", "link to a zarr image", "dangling link"])
def test_a_file_or_a_link_at_a_zarr_output_is_refused_before_any_work(tmp_path, writer, there):
    """open("f.zarr", "w"), then write_ome_zarr("f.zarr", x) (or run_chunked, or a link at the path)
    computed everything, then failed with a raw NotADirectoryError naming a hidden temporary. It is
    an InputError before any work now, as the command line gives, and the entry is left as it was."""
    import os

    from deconv3d.pipeline import run_chunked

    x = np.ones((2, 4, 4), np.float32)
    out = tmp_path / "f.zarr"
    if there == "file":
        out.write_text("mine")
        expected = "is a file"
    else:
        target = tmp_path / ("target.zarr" if there == "link to a zarr image" else "missing.zarr")
        if there == "link to a zarr image":
            write_ome_zarr(target, x)
        out.symlink_to(target)
        expected = "is a symbolic link"
    before = sorted(os.listdir(tmp_path))
    calls = []

    def block_fn(block):
        calls.append(1)
        return block

    with pytest.raises(InputError, match=expected):
        if writer == "write_ome_zarr":
            write_ome_zarr(out, x)
        else:
            run_chunked(x, block_fn, out)
    assert calls == [] and sorted(os.listdir(tmp_path)) == before  # no temporary left either
    assert out.read_text() == "mine" if there == "file" else out.is_symlink()


class _NoGraph:
    """An array-like that has ``__dask_graph__`` but is not backed by dask (it returns None), as an
    xarray.DataArray holding a numpy array."""

    def __init__(self, values):
        self.values = values
        self.shape, self.ndim, self.dtype = values.shape, values.ndim, values.dtype

    def __dask_graph__(self):
        return None

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)

    def __getitem__(self, key):
        return self.values[key]


def test_run_chunked_takes_an_array_like_whose_dask_graph_is_none(tmp_path):
    """run_chunked(xarray.DataArray(numpy array), ...) raised a raw "TypeError: 'NoneType' object is
    not iterable" while looking for the files it reads: None from __dask_graph__() means no graph."""
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import run_chunked
    from deconv3d.pipeline.readers import source_files

    x = np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)
    assert source_files(_NoGraph(x)) == []
    run_chunked(_NoGraph(x), lambda block: block * 2, tmp_path / "out.zarr")
    np.testing.assert_allclose(np.asarray(open_lazy(tmp_path / "out.zarr").data), 2 * x, rtol=1e-6)


def test_source_files_reads_the_graph_layers_without_making_every_task(tmp_path, monkeypatch):
    """source_files built every task of the dask graph (dict(graph)) before any work: 1.3-2.9 s for
    32k chunks, 43 s for a million. It reads the layers' stored values only; a Blockwise layer's
    tasks are never made, and an array inlined into one (inline_array=True) is found there."""
    import dask.array as da
    from dask.blockwise import Blockwise

    from deconv3d.pipeline.readers import source_files

    src = tmp_path / "src.zarr"
    write_ome_zarr(src, np.zeros((4, 8, 8), np.float32), chunks=(1, 4, 4))

    def made(layer):
        raise AssertionError("a Blockwise layer's tasks were made")

    monkeypatch.setattr(Blockwise, "_dict", property(made))
    assert source_files(da.zeros((64, 64, 64), chunks=4) + 1) == []
    for inline in (False, True):
        found = source_files(da.from_zarr(str(src), component="0", inline_array=inline) * 2 + 1)
        assert [p.resolve() for p in map(Path, found)] == [src.resolve()]  # (the image, of which "0" is a level)


def test_a_zarr_array_is_read_from_its_own_folder_not_its_key_or_its_store(tmp_path, monkeypatch):
    """A zarr.Array's path (its key in the store) was read as a folder: with a folder raw/ beside
    store.zarr, an output raw/out.zarr was refused as the input 'raw', while the output src.zarr,
    the store the array src.zarr/0 lies in, was let replace its own input. And a dask array read
    from project/exp1/raw refused any output under project/ (project/results.zarr, say). The input
    is the array's own folder: its store's folder joined with its key."""
    import dask.array as da
    import zarr

    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import run_chunked
    from deconv3d.pipeline.readers import source_files

    monkeypatch.chdir(tmp_path)
    x = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    (tmp_path / "raw").mkdir()
    a = zarr.open_group("store.zarr", mode="w").create_array("raw", data=x)
    assert [Path(p).resolve() for p in source_files(a)] == [(tmp_path / "store.zarr" / "raw").resolve()]
    run_chunked(a, lambda b: b * 2, "raw/out.zarr")  # beside the store: runs
    np.testing.assert_array_equal(np.asarray(open_lazy("raw/out.zarr").data), 2 * x)

    write_ome_zarr("src.zarr", x)
    with pytest.raises(InputError, match="output path equals the input src.zarr") as info:  # (0 is its level)
        run_chunked(zarr.open_array("src.zarr", path="0", mode="r"), lambda b: b * 2, "src.zarr")
    assert "\n" not in str(info.value)
    np.testing.assert_array_equal(np.asarray(open_lazy("src.zarr").data), x)  # its input kept

    zarr.open_group("project", mode="w").create_array("exp1/raw", data=x)
    data = da.from_zarr("project", component="exp1/raw")
    run_chunked(data, lambda b: b + 1, "project/results.zarr")  # beside exp1/raw in the store: runs
    np.testing.assert_array_equal(np.asarray(open_lazy("project/results.zarr").data), x + 1)
    with pytest.raises(InputError, match="lie one inside the other"):
        run_chunked(data, lambda b: b + 1, "project/exp1/raw/out.zarr")


def test_a_refused_output_folder_is_listed_and_its_metadata_read_once(tmp_path, monkeypatch):
    """Refusing an earlier output that holds added labels listed the folder and read its zarr.json
    twice (replaceable_folder, then refuse_added_entries again): once each now, the entries named
    from that one listing, by check_output_path and atomic_output alike."""
    import os

    out = tmp_path / "lab.zarr"
    write_ome_zarr(out, np.ones((2, 4, 4), np.float32))
    _add_labels(out)
    listed, read = [], []
    real_scandir, real_read_text = os.scandir, Path.read_text

    def scandir(path="."):
        listed.append(Path(path))
        return real_scandir(path)

    def read_text(self, *args, **kwargs):
        read.append(self)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "read_text", read_text)
    for attempt in (lambda: check_output_path(out, suffixes=(".zarr",)), lambda: atomic_output(out).__enter__()):
        listed.clear(), read.clear()
        with pytest.raises(InputError, match=r"holds entries it did not write \(labels\)"):
            attempt()
        assert listed.count(out) == 1 and read.count(out / "zarr.json") == 1


@pytest.mark.parametrize("writer", ["check_output_path", "write_ome_zarr"])
def test_files_a_file_browser_left_in_an_earlier_output_do_not_block_replacing_it(tmp_path, writer):
    """An earlier .zarr output looked at in macOS's Finder (a .DS_Store, AppleDouble ._ files) or
    Windows' Explorer (Thumbs.db, desktop.ini) was refused as holding entries deconv3d did not write.
    Those files are not the user's data: the output is replaced, and they go with it; a file of the
    user's (notes.txt) or an extra array beside them still blocks it, named alone."""
    from deconv3d.omezarr import open_lazy

    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    out = tmp_path / "seen.zarr"
    write_ome_zarr(out, x)
    junk = {".DS_Store": b"\0\0\0\1Bud1", "._zarr.json": b"\0\5\26\7", "Thumbs.db": b"\xd0\xcf", "desktop.ini": b"["}
    for name, content in junk.items():
        (out / name).write_bytes(content)
    if writer == "check_output_path":
        check_output_path(out, suffixes=(".zarr",))  # (refused before)
    else:
        write_ome_zarr(out, x + 1)
        assert sorted(p.name for p in out.iterdir()) == ["0", "zarr.json"]  # the junk deleted with the old output
        np.testing.assert_array_equal(np.asarray(open_lazy(out).data), x + 1)
    for user in ("notes.txt", "extra"):
        for name, content in junk.items():
            (out / name).write_bytes(content)
        if user == "notes.txt":
            (out / user).write_text("mine")
        else:
            import zarr

            zarr.open_group(str(out), mode="a").create_array(user, data=x)
        before = _tree(out)
        with pytest.raises(InputError, match=rf"holds entries it did not write \({user}\): they would be deleted"):
            write_ome_zarr(out, x + 2) if writer == "write_ome_zarr" else check_output_path(out, suffixes=(".zarr",))
        assert _tree(out) == before
        import shutil

        (out / user).unlink() if user == "notes.txt" else shutil.rmtree(out / user)
    empty = tmp_path / "empty.zarr"  # a folder made for the output, looked at in the Finder before the run
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_ome_zarr(empty, x)
    np.testing.assert_array_equal(np.asarray(open_lazy(empty).data), x)


def _image_and_series(writer):
    """An OME-Zarr image src.zarr and a bioformats2raw root plate.zarr holding the same image as its
    series 0 (open_lazy("plate.zarr") reads plate.zarr/0), in the current folder; returns the image's
    data, the two folders' trees, and a write(data, out) by ``writer`` (run_chunked adds 1)."""
    import json

    from deconv3d.pipeline import run_chunked

    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    write_ome_zarr("src.zarr", x)
    Path("plate.zarr").mkdir()
    Path("plate.zarr/zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                        "attributes": {"ome": {"bioformats2raw.layout": 3}}}))
    write_ome_zarr("plate.zarr/0", x)
    before = {image: _tree(Path(image)) for image in ("src.zarr", "plate.zarr")}

    def write(data, out):
        return run_chunked(data, lambda b: b + 1, out) if writer == "run_chunked" else write_ome_zarr(out, data)
    return x, before, write


@pytest.mark.parametrize("writer", ["run_chunked", "write_ome_zarr"])
def test_an_output_inside_the_image_a_zarr_array_is_a_level_of_is_refused_as_for_the_image(tmp_path, writer,
                                                                                           monkeypatch):
    """run_chunked(open_lazy("src.zarr"), f, "src.zarr/out.zarr") is refused (inside the input), but
    the same image's level read as a dask array (da.from_zarr("src.zarr", component="0"), or the
    LazyImage's .data) or as a zarr array wrote the output inside src.zarr: the input was the level's
    folder src.zarr/0 only. The input is the image a level belongs to now (the series folder's
    bioformats2raw root too, as open_lazy names it); an array in no image keeps its own folder, and
    an output beside the store is written."""
    import dask.array as da
    import zarr

    from deconv3d.omezarr import open_lazy

    monkeypatch.chdir(tmp_path)
    x, before, write = _image_and_series(writer)

    sources = {"the image's data": lambda: open_lazy("src.zarr").data,
               "from_zarr": lambda: da.from_zarr("src.zarr", component="0") * 1,
               "zarr array": lambda: zarr.open_array("src.zarr", path="0", mode="r"),
               "bioformats2raw": lambda: open_lazy("plate.zarr").data}
    if writer == "run_chunked":
        sources["LazyImage"] = lambda: open_lazy("src.zarr")  # (the reference: refused before)
    for name, data in sources.items():
        image = "plate.zarr" if name == "bioformats2raw" else "src.zarr"
        with pytest.raises(InputError, match=rf"output \S*{image}/out.zarr and input \S*{image} lie one inside the "
                                             r"other: choose an output outside the input"):
            write(data(), f"{image}/out.zarr")
        assert {i: _tree(Path(i)) for i in before} == before, name
    write(da.from_zarr("src.zarr", component="0"), "beside.zarr")  # outside the image: written
    np.testing.assert_array_equal(np.asarray(open_lazy("beside.zarr").data), x + (writer == "run_chunked"))
    zarr.open_group("project", mode="w").create_array("exp1/raw", data=x)  # a zarr array in no image
    write(da.from_zarr("project", component="exp1/raw"), "project/results.zarr")  # beside it in the store
    np.testing.assert_array_equal(np.asarray(open_lazy("project/results.zarr").data), x + (writer == "run_chunked"))


@pytest.mark.parametrize("writer", ["run_chunked", "write_ome_zarr"])
def test_a_level_opened_by_its_own_folder_is_taken_as_the_image_it_is_a_level_of(tmp_path, writer, monkeypatch):
    """A level opened by its own folder (da.from_zarr("src.zarr/0"), zarr.open_array("src.zarr/0"))
    is a store of its own: the search for the image looked only at the groups inside that store, and
    the output src.zarr/out.zarr was written inside the input image. The folders above the store's
    root are looked at too (a bioformats2raw series' level names its root); an array in no image
    still keeps its own folder."""
    import dask.array as da
    import zarr

    from deconv3d.omezarr import open_lazy

    monkeypatch.chdir(tmp_path)
    x, before, write = _image_and_series(writer)

    sources = {"src.zarr": [lambda: da.from_zarr("src.zarr/0") * 1,
                            lambda: zarr.open_array("src.zarr/0", mode="r"),
                            lambda: da.from_zarr(str(tmp_path / "src.zarr" / "0"))],
               "plate.zarr": [lambda: da.from_zarr("plate.zarr/0/0"), lambda: zarr.open_array("plate.zarr/0/0")]}
    for image, makers in sources.items():
        for make in makers:
            with pytest.raises(InputError, match=rf"output \S*{image}/out.zarr and input \S*{image} lie one "
                                                 r"inside the other"):
                write(make(), f"{image}/out.zarr")
            assert {i: _tree(Path(i)) for i in before} == before
    zarr.open_group("project", mode="w").create_array("exp1/raw", data=x)  # a zarr array in no image
    write(da.from_zarr("project/exp1/raw"), "project/results.zarr")  # beside it: written
    np.testing.assert_array_equal(np.asarray(open_lazy("project/results.zarr").data), x + (writer == "run_chunked"))


def test_a_level_reached_through_a_link_is_taken_as_the_image_it_is_a_level_of(tmp_path, monkeypatch):
    """Found by a review: a level reached through a symbolic link (lvl0 -> src.zarr/0) was looked up among
    the folders above the link, not above where it leads, and src.zarr/out.zarr was written inside the image."""
    import os

    import dask.array as da

    monkeypatch.chdir(tmp_path)
    write_ome_zarr("src.zarr", np.ones((4, 8, 8), np.float32), voxel_size=(1, 0.1, 0.1))
    os.symlink("src.zarr/0", "lvl0")
    with pytest.raises(InputError, match=r"output src.zarr/out.zarr and input \S*src.zarr lie one inside the other"):
        write_ome_zarr("src.zarr/out.zarr", da.from_zarr("lvl0"), voxel_size=(1, 0.1, 0.1))
    assert sorted(os.listdir("src.zarr")) == ["0", "zarr.json"]


def test_metadata_files_above_a_store_are_read_only_when_small_and_regular(tmp_path):
    """Found by a review: the search for the image a zarr array is a level of read the whole zarr.json of
    every folder above its store, up to the root: an 80 MB one took 5.7 s and 600 MB before any work, and
    a named pipe there blocked the run for good. Above a store only a regular file of at most 1 MB is read."""
    import json
    import os
    import threading

    import dask.array as da
    import zarr

    from deconv3d.pipeline import readers

    meta = {"zarr_format": 3, "node_type": "group", "attributes": {"multiscales": [{"datasets": []}]}}
    big = tmp_path / "big"
    (big / "proj").mkdir(parents=True)
    zarr.create_array(str(big / "proj" / "raw.zarr"), shape=(2, 4, 4), chunks=(2, 4, 4), dtype="f4")[:] = 1
    # A group with multiscales, padded past the limit: not read, so the array keeps its own folder.
    (big / "zarr.json").write_text(json.dumps({**meta, "pad": "x" * (readers._OUTSIDE_METADATA_BYTES + 1)}))
    assert readers.source_files(da.from_zarr(str(big / "proj" / "raw.zarr"))) == [big / "proj" / "raw.zarr"]
    (big / "zarr.json").write_text(json.dumps(meta))  # the same, small: read (the check above can fail)
    assert readers.source_files(da.from_zarr(str(big / "proj" / "raw.zarr"))) == [big]

    pipe = tmp_path / "pipe"
    (pipe / "proj").mkdir(parents=True)
    zarr.create_array(str(pipe / "proj" / "raw.zarr"), shape=(2, 4, 4), chunks=(2, 4, 4), dtype="f4")[:] = 1
    os.mkfifo(pipe / "zarr.json")
    found = []
    looking = threading.Thread(target=lambda: found.append(readers.source_files(da.from_zarr(
        str(pipe / "proj" / "raw.zarr")))), daemon=True)
    looking.start()
    looking.join(60)  # (a guard against a hang, not a timing: the read of a pipe with no writer never returns)
    blocked = looking.is_alive()
    if blocked:
        with open(pipe / "zarr.json", "w"):  # let the blocked read end, so that no thread is left
            pass
        looking.join(10)
    assert not blocked and found == [[pipe / "proj" / "raw.zarr"]]


def test_a_linked_level_inside_another_image_is_taken_as_the_image_it_leads_to(tmp_path, monkeypatch):
    """Found by a review: the folders where a linked level leads were looked at after those above the link,
    so a link other.zarr/lvl0 -> src.zarr/0 took other.zarr as its image and src.zarr/out.zarr was written."""
    import os

    import dask.array as da

    monkeypatch.chdir(tmp_path)
    for name in ("src.zarr", "other.zarr"):
        write_ome_zarr(name, np.ones((4, 8, 8), np.float32), voxel_size=(1, 0.1, 0.1))
    os.symlink("../src.zarr/0", "other.zarr/lvl0")
    with pytest.raises(InputError, match=r"output src.zarr/out.zarr and input \S*src.zarr lie one inside the other"):
        write_ome_zarr("src.zarr/out.zarr", da.from_zarr("other.zarr/lvl0"), voxel_size=(1, 0.1, 0.1))
    assert sorted(os.listdir("src.zarr")) == ["0", "zarr.json"]
