"""Tests for deconv3d.io: TIFF reading/writing with voxel sizes and input errors."""

import contextlib
import errno
import gc
import json
import os
import re
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from deconv3d import _tiff_checks, _tiff_write, io
from deconv3d.errors import InputError
from deconv3d.io import check_output_path, read_image, write_tiff


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize(
    "shape, voxel, axes",
    [((6, 7, 8), (0.3, 0.1, 0.12), "ZYX"), ((7, 8), (0.065, 0.07), "YX")],
)
def test_round_trip_keeps_data_and_voxel_size(tmp_path, rng, shape, voxel, axes):
    data = rng.random(shape, dtype=np.float32)
    path = tmp_path / "out.tif"
    write_tiff(path, data, voxel_size=voxel, metadata={"method": "rl"})
    image = read_image(path)
    assert image.data.dtype == np.float32
    np.testing.assert_array_equal(image.data, data)
    assert image.voxel_size == pytest.approx(voxel, rel=1e-6)
    assert image.axes == axes


def test_written_tiff_is_imagej_hyperstack(tmp_path, rng):
    path = tmp_path / "out.tif"
    write_tiff(path, rng.random((5, 6, 7), dtype=np.float32), voxel_size=(0.5, 0.2, 0.2))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.5)
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.series[0].axes == "ZYX"
        assert tif.pages[0].resolution == pytest.approx((5.0, 5.0))


def test_write_without_voxel_size_reads_none(tmp_path, rng):
    path = tmp_path / "out.tiff"
    write_tiff(path, rng.random((5, 6, 7), dtype=np.float32))
    assert read_image(path).voxel_size is None


@pytest.mark.parametrize(
    "unit, scale, spacing, expected",
    [("um", 1 / 0.065, 0.2, (0.2, 0.065, 0.065)), ("nm", 1 / 65.0, 200.0, (0.2, 0.065, 0.065)),
     ("micron", 1 / 0.1, 0.3, (0.3, 0.1, 0.1)), (None, 1 / 0.1, 0.3, (0.3, 0.1, 0.1))],
)
def test_reads_imagej_tiff_voxel_size(tmp_path, rng, unit, scale, spacing, expected):
    path = tmp_path / "ij.tif"
    metadata = {"axes": "ZYX", "spacing": spacing}
    if unit is not None:
        metadata["unit"] = unit
    data = rng.random((5, 6, 7), dtype=np.float32)
    tifffile.imwrite(path, data, imagej=True, resolution=(scale, scale), metadata=metadata)
    image = read_image(path)
    assert image.voxel_size == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(image.data, data)


def test_reads_ome_tiff_voxel_size_and_squeezes(tmp_path, rng):
    path = tmp_path / "img.ome.tif"
    data = rng.random((1, 5, 6, 7), dtype=np.float32)
    metadata = {"axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.12,
                "PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm"}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    image = read_image(path)
    assert image.axes == "ZYX"
    assert image.data.shape == (5, 6, 7)
    assert image.voxel_size == pytest.approx((0.5, 0.12, 0.1))


def test_plain_tiff_has_no_voxel_size(tmp_path, rng):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, rng.random((5, 6, 7), dtype=np.float32))
    image = read_image(path)
    assert image.voxel_size is None and image.axes == "ZYX"


def test_integer_data_converts_to_float32(tmp_path):
    path = tmp_path / "int.tif"
    data = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7) * 100
    tifffile.imwrite(path, data)
    image = read_image(path)
    assert image.data.dtype == np.float32
    np.testing.assert_array_equal(image.data, data.astype(np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="input file not found"):
        read_image(tmp_path / "missing.tif")


@contextlib.contextmanager
def _readers_let_through(fifo):
    """Open and close ``fifo``'s writing end whenever a reader waits on it: a reader that opens it
    then reads nothing (it waited forever for a writer), so that a missing refusal fails the test
    instead of hanging it."""
    stop = threading.Event()

    def writer():
        while not stop.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: no reader waits
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("reader", ["read_image", "read_psf", "open_lazy", "deconvolve", "deconvolve-psf", "batch"])
def test_a_named_pipe_is_refused_before_it_is_opened(tmp_path, monkeypatch, capsys, reader):
    """Review of file-system semantics: ``deconvolve fin.tif`` with ``fin.tif`` a named pipe hung for
    ever in tifffile's open (a batch in hashing it), and read_image called it "not found"; it is
    refused in one line before it is opened, as the input or the PSF it was given as, and a batch
    fails that file alone."""
    from cli_helpers import assert_one_line_error, run
    from deconv3d.io import read_psf
    from deconv3d.omezarr import open_lazy

    monkeypatch.chdir(tmp_path)
    os.mkdir("raw")
    pipe = "raw/pipe.tif" if reader == "batch" else "pipe.tif"
    os.mkfifo(pipe)
    psf = np.zeros((3, 3, 3), np.float32)
    psf[1, 1, 1] = 1
    write_tiff("psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    with _readers_let_through(pipe):
        if reader in ("read_image", "read_psf", "open_lazy"):
            function = {"read_image": read_image, "read_psf": read_psf, "open_lazy": open_lazy}[reader]
            with pytest.raises(InputError, match=r"^(input|PSF) pipe.tif is a named pipe, not a regular file") as info:
                function("pipe.tif")
            saved = "PSF" if reader == "read_psf" else "image"  # (a PSF's said "save the image")
            assert str(info.value).endswith(f": save the {saved} to a file and give that"), info.value
            # an image's refusal is also said of "the image" (a batch's line); a PSF's is not
            assert info.value.without_file == (None if reader == "read_psf" else
                                               "the image is a named pipe, not a regular file: save the image to a file"
                                               " and give that")
        elif reader == "batch":
            code, _, err = run(["batch", "raw", "-o", "out", "--psf", "psf.tif", "--iterations", 1], capsys)
            row, = json.loads((tmp_path / "out" / "batch_report.json").read_text(encoding="utf-8"))["files"]
            assert code == 3 and row["status"] == "failed" and "is a named pipe" in row["reason"], err
        else:
            given = ["pipe.tif", "--psf", "psf.tif"] if reader == "deconvolve" else ["psf.tif", "--psf", "pipe.tif"]
            code, _, err = run(["deconvolve", *given, "-o", "out.tif", "--iterations", 1], capsys)
            saved = "save the image" if reader == "deconvolve" else "save the PSF"
            assert_one_line_error(code, err, "pipe.tif is a named pipe, not a regular file", saved)
            assert not os.path.exists("out.tif")


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("this is not an image")
    from deconv3d.omezarr import open_lazy

    for reader in (read_image, open_lazy):
        with pytest.raises(InputError, match="cannot read .* as a TIFF image: .*: check that it is one, or export it"):
            reader(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"unsupported .*format .*use \.tif or \.tiff"):
        read_image(path)


def test_1d_data(tmp_path):
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.ones((1, 1, 9), dtype=np.float32))
    with pytest.raises(InputError, match="1D"):
        read_image(path)


def test_nan_values(tmp_path, rng):
    path = tmp_path / "nan.tif"
    data = rng.random((5, 6, 7), dtype=np.float32)
    data[2, 3, 4] = np.nan
    tifffile.imwrite(path, data)
    with pytest.raises(InputError, match="NaN or Inf"):
        read_image(path)


def test_float64_values_beyond_float32_are_named_not_called_nan(tmp_path, rng):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, rng.random((5, 6, 7)) * 1e39)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the cast ahead of the one-line error
        with pytest.raises(InputError, match="beyond the float32 range.*rescale"):
            read_image(path)


@pytest.mark.parametrize("axes, shape", [("ZCYX", (5, 2, 6, 7)), ("CYX", (2, 6, 7)), ("TYX", (5, 6, 7))])
def test_multichannel_or_time_rejected(tmp_path, axes, shape):
    path = tmp_path / "multi.tif"
    tifffile.imwrite(path, np.ones(shape, dtype=np.float32), imagej=True, metadata={"axes": axes})
    with pytest.raises(InputError, match=r"only one 2D or 3D image is read here, not multi-channel/time data "
                                         r"\(deconvolve and batch take each channel and time point\); pick one"):
        read_image(path)  # (it said "not supported yet", though deconvolve and batch run them: found by use; then
        # that they "are read here as one 2D or 3D image only", as if read as one: the second review of this stop)


def test_output_directory_missing(tmp_path, rng):
    target = tmp_path / "no_such_dir" / "out.tif"
    with pytest.raises(InputError, match="output directory not found"):
        write_tiff(target, rng.random((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match="output directory not found"):
        check_output_path(target, [])


def test_output_equals_input(tmp_path, rng):
    path = tmp_path / "img.tif"
    write_tiff(path, rng.random((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match="output path equals the input"):
        check_output_path(path, [path])
    with pytest.raises(InputError, match="output path equals the input"):
        check_output_path(tmp_path / "." / "img.tif", str(path))
    check_output_path(tmp_path / "other.tif", [path])


def test_output_unsupported_suffix(tmp_path):
    with pytest.raises(InputError, match=r"unsupported .*format .*use \.tif or \.tiff"):
        check_output_path(tmp_path / "out.png", [])


def test_failed_write_leaves_no_file(tmp_path, rng, monkeypatch):
    def broken_imwrite(fh, *args, **kwargs):
        fh.write(b"partial")
        raise RuntimeError("disk exploded")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(RuntimeError, match="disk exploded"):
        write_tiff(tmp_path / "out.tif", rng.random((4, 5), dtype=np.float32))
    assert os.listdir(tmp_path) == []


def test_a_write_protected_file_is_not_replaced(tmp_path, rng, monkeypatch):
    """write_tiff and the checkpoint writer refuse a file this user may not write, as cp does
    (as root, which may write anything, os.access's answer is simulated)."""
    from pathlib import Path

    from deconv3d._torch_common import atomic_torch_save

    real = os.access
    for name, write in (("out.tif", lambda p: write_tiff(p, rng.random((4, 5), dtype=np.float32))),
                        ("m.ckpt", lambda p: atomic_torch_save({"a": 1}, p))):
        path = tmp_path / name
        path.write_bytes(b"keep me")
        path.chmod(0o444)
        monkeypatch.setattr(os, "access", lambda p, mode, path=path: False if Path(p) == path and mode & os.W_OK
                            else real(p, mode))
        with pytest.raises(InputError, match="write-protected"):
            write(path)
        assert path.read_bytes() == b"keep me" and path.stat().st_mode & 0o777 == 0o444
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt", "out.tif"]  # no temporaries left


@pytest.mark.parametrize("name, mode", [("out.tif", 0o600), ("m.ckpt", 0o640), ("img.zarr", 0o750),
                                        ("run.zarr", 0o700)], ids=["tif-600", "ckpt-640", "zarr-750", "run-700"])
def test_a_replaced_output_keeps_its_permissions_as_cp_does(tmp_path, rng, name, mode):
    """Review of file-system semantics: a ``chmod 600`` TIFF replaced by a rerun came back 0644,
    readable by all (a zarr output at 0750 as 0755, a model likewise), where README promised the
    replacement ``cp`` makes, which keeps the file's mode. A new output takes the umask's mode."""
    from deconv3d._torch_common import atomic_torch_save
    from deconv3d.omezarr import open_lazy, write_ome_zarr
    from deconv3d.pipeline import run_chunked

    data = rng.random((4, 6, 5), dtype=np.float32)
    writers = {"out.tif": lambda p: write_tiff(p, data), "m.ckpt": lambda p: atomic_torch_save({"a": 1}, p),
               "img.zarr": lambda p: write_ome_zarr(p, data),
               "run.zarr": lambda p: run_chunked(open_lazy(tmp_path / "src.tif"), lambda b: b + 1, p)}
    write_tiff(tmp_path / "src.tif", data)
    path, umask = tmp_path / name, os.umask(0o022)
    try:
        writers[name](path)
        new = 0o777 if path.is_dir() else 0o666
        assert path.stat().st_mode & 0o7777 == new & ~0o022  # a new output: the umask's
        path.chmod(mode)
        writers[name](path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o7777 == mode
    assert sorted(os.listdir(tmp_path)) == sorted({name, "src.tif"})  # replaced, no temporaries left


def _other_group():
    """A group this process may give its files other than its own (any, for root), or None."""
    if os.geteuid() == 0:
        return 2000 if os.getegid() != 2000 else 2001
    return next((g for g in os.getgroups() if g != os.getegid()), None)


def test_a_replaced_output_keeps_its_group_and_only_its_permission_bits(tmp_path, rng):
    """Review of 8c77199: a result of group lab at 0660 rerun by another member of lab came back
    in the rerunner's own group at 0660 (its previous owner locked out), and setuid and setgid bits
    were copied onto the new file (6770 came back 6770). The group is kept, and only rwx bits."""
    group = _other_group()
    if group is None:
        pytest.skip("this user is in no group but its own")
    path = tmp_path / "out.tif"
    write_tiff(path, rng.random((2, 3, 4), dtype=np.float32))
    os.chown(path, -1, group)
    path.chmod(0o6770)
    write_tiff(path, rng.random((2, 3, 4), dtype=np.float32))
    st = path.stat()
    assert (st.st_gid, oct(st.st_mode & 0o7777)) == (group, oct(0o770))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as two users")
@pytest.mark.parametrize("made_by", ["open", "create_temporary"])
def test_an_output_whose_group_cannot_be_kept_takes_the_umask_mode_not_locking_its_owner_out(tmp_path, made_by):
    """Review of 8c77199: alice's 0660 result (group lab) replaced by bob, who is not in lab, became
    bob:bob 0660 and alice got "Permission denied" reading it; the umask's mode (0644) keeps it
    readable, as before that commit. Users simulated by fork and setuid (plain os calls only). Also
    where the temporary is made narrower than that (create_temporary: 0600, its group bits no wider
    than the output's others'), before its group is known not to be kept."""
    from deconv3d._paths import create_temporary, keep_mode

    os.chmod(tmp_path, 0o777)
    path = tmp_path / "out.tif"
    path.write_bytes(b"old")
    os.chown(path, 1001, 2000)
    path.chmod(0o662)  # writable by bob, so that he may replace it

    def as_user(uid, groups, work):
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child: in the folder, whose parents it may not pass)
            code = 1
            try:
                os.chdir(tmp_path), os.setgroups(groups), os.setgid(uid), os.setuid(uid), os.umask(0o022)
                code = work()
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def bob_reruns():
        out, tmp = Path("out.tif"), Path(".out.tif.tmp")
        with open(tmp, "xb") if made_by == "open" else open(create_temporary(out, tmp), "wb") as fh:
            if made_by == "open":
                keep_mode(out, tmp)
            fh.write(b"new")
        os.replace(tmp, out)
        return 0

    assert as_user(1002, [], bob_reruns) == 0
    st = path.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (1002, 1002, oct(0o644))
    assert as_user(1001, [2000], lambda: 0 if Path("out.tif").read_bytes() == b"new" else 3) == 0  # alice, in lab


@pytest.mark.parametrize("name", ["out.tif", "m.ckpt", "img.zarr"])
def test_a_private_output_is_not_readable_by_others_while_it_is_rewritten(tmp_path, rng, monkeypatch, name):
    """Review of 8c77199: a ``chmod 600`` result took its mode back only just before the rename; its
    temporary was 0644 during the whole write, and another user read every byte of the new result
    from it. The mode is given as the temporary is made, before any data go in (for a zarr folder,
    the folder's, which gates its chunks)."""
    import deconv3d._torch_common as tc
    import deconv3d.omezarr.writing as zw
    from deconv3d.omezarr import write_ome_zarr

    seen = []

    def temporary_mode():
        (tmp,) = tmp_path.glob(f".{name}.*.tmp")
        seen.append(tmp.stat().st_mode & 0o777)

    real_imwrite, real_store, real_open = tifffile.imwrite, zw._store_settled, open

    class Spied:  # a checkpoint's file, seen as its bytes go in
        def __init__(self, *args):
            self.fh = real_open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

        def write(self, data):
            temporary_mode()
            return self.fh.write(data)

    monkeypatch.setattr(tifffile, "imwrite", lambda *a, **k: (temporary_mode(), real_imwrite(*a, **k))[1])
    monkeypatch.setattr(zw, "_store_settled", lambda stored: (temporary_mode(), real_store(stored))[1])
    monkeypatch.setattr(tc, "open", Spied, raising=False)
    data = rng.random((2, 3, 4), dtype=np.float32)
    writers = {"out.tif": lambda p: write_tiff(p, data), "m.ckpt": lambda p: tc.atomic_torch_save({"a": 1}, p),
               "img.zarr": lambda p: write_ome_zarr(p, data)}
    path = tmp_path / name
    writers[name](path)
    path.chmod(0o700 if path.is_dir() else 0o600)
    seen.clear()
    writers[name](path)
    assert seen and set(seen) == {0o700 if path.is_dir() else 0o600}
    assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600)


@pytest.mark.parametrize("name", ["out.tif", "m.ckpt", "img.zarr", "rec.json", "batch_report.csv"])
@pytest.mark.parametrize("mode, folder_mode", [(0o600, 0o700), (0o640, 0o750)], ids=["600", "640"])
def test_a_temporary_is_never_wider_than_its_output_under_a_permissive_umask(tmp_path, rng, monkeypatch, name, mode,
                                                                             folder_mode):
    """Review of name handling: temporaries were made with the umask's mode and narrowed by a chmod right
    after; under umask 0o000 a ``chmod 600`` output's temporary was 0666 (a folder 0777) for that moment,
    and a file opened then stays readable. Each temporary is seen as every chmod comes to it (the first
    right after it is made): never wider than the output it replaces, which keeps its mode."""
    import stat

    import deconv3d._torch_common as tc
    from deconv3d.omezarr import write_ome_zarr
    from deconv3d.pipeline.batch_report import _write_reports
    from deconv3d.pipeline.completion_records import write_json_atomic

    data = rng.random((2, 3, 4), dtype=np.float32)
    writers = {"out.tif": lambda p: write_tiff(p, data), "m.ckpt": lambda p: tc.atomic_torch_save({"a": 1}, p),
               "img.zarr": lambda p: write_ome_zarr(p, data), "rec.json": lambda p: write_json_atomic(p, {}),
               "batch_report.csv": lambda p: _write_reports(tmp_path, [])}
    path = tmp_path / name
    writers[name](path)
    final = folder_mode if path.is_dir() else mode
    for written in tmp_path.iterdir():
        written.chmod(folder_mode if written.is_dir() else mode)
    seen, chmod = [], os.chmod

    def watched(target, *args, **kwargs):
        if os.fspath(target).endswith(".tmp"):  # a temporary (temporary_name), as it is before this chmod
            seen.append(stat.S_IMODE(os.stat(target).st_mode))
        return chmod(target, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", watched)
    umask = os.umask(0o000)
    try:
        writers[name](path)
    finally:
        os.umask(umask)
    monkeypatch.undo()
    assert seen and all(oct(m & ~final) == oct(0) for m in seen), [oct(m) for m in seen]
    assert stat.S_IMODE(path.stat().st_mode) == final


def test_a_temporary_has_group_bits_only_once_it_has_its_outputs_group(tmp_path, rng, monkeypatch):
    """A temporary is made before it can be given its output's group, in this process's (or its
    folder's): made with the output's 0640 there, that group's members could open it and read the
    result. It is made 0600 (group bits no wider than others'), then given the group, then 0640."""
    import stat

    group = _other_group()
    if group is None:
        pytest.skip("this user is in no group but its own")
    data = rng.random((2, 3, 4), dtype=np.float32)
    path = tmp_path / "out.tif"
    write_tiff(path, data)
    os.chown(path, -1, group)
    path.chmod(0o640)
    seen, chown = [], os.chown

    def watched(target, *args, **kwargs):
        if os.fspath(target).endswith(".tmp"):  # the temporary, before it is given the output's group
            seen.append((os.stat(target).st_gid, stat.S_IMODE(os.stat(target).st_mode)))
        return chown(target, *args, **kwargs)

    monkeypatch.setattr(os, "chown", watched)
    umask = os.umask(0o000)
    try:
        write_tiff(path, data)
    finally:
        os.umask(umask)
    monkeypatch.undo()
    assert seen and all(gid != group and mode & 0o070 == 0 for gid, mode in seen), seen
    assert (path.stat().st_gid, stat.S_IMODE(path.stat().st_mode)) == (group, 0o640)


def test_a_checkpoint_over_a_dangling_link_is_saved(tmp_path):
    """A dangling symbolic link at the checkpoint path is replaced by the checkpoint, as before;
    it was refused as "write-protected" (os.access judged its missing target)."""
    import torch

    from deconv3d._torch_common import atomic_torch_save

    link = tmp_path / "dang.ckpt"
    link.symlink_to(tmp_path / "missing" / "x.ckpt")
    atomic_torch_save({"a": 1}, link)
    assert not link.is_symlink() and torch.load(link, weights_only=True) == {"a": 1}
    assert os.listdir(tmp_path) == ["dang.ckpt"]


@pytest.mark.parametrize("error", [OSError("1048576 requested and 523868 written"),
                                   OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EDQUOT, "Disk quota exceeded"),
                                   OSError(errno.EFBIG, "File too large")])
def test_a_tiff_write_that_runs_out_of_space_says_so(tmp_path, monkeypatch, error):
    """A full disk read "cannot write out.tif: 1048576 requested and 523868 written: check free disk
    space and permissions" (numpy's short write under tifffile, with no errno); a quota met (EDQUOT)
    or a file past the largest (EFBIG) read "cannot write ..." too."""
    def full(fh, *args, **kwargs):
        fh.write(b"II*\x00")
        raise error

    monkeypatch.setattr(tifffile, "imwrite", full)
    path = tmp_path / "out.tif"
    with pytest.raises(InputError) as caught:
        write_tiff(path, np.ones((4, 5), dtype=np.float32))
    assert str(caught.value) == f"no space left on {path}: free disk space, then run again"
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_existing_output(tmp_path, rng, monkeypatch):
    path = tmp_path / "out.tif"
    original = rng.random((4, 5), dtype=np.float32)
    write_tiff(path, original)

    def broken_imwrite(fh, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(InputError, match="cannot write"):
        write_tiff(path, np.zeros((4, 5), dtype=np.float32))
    assert os.listdir(tmp_path) == ["out.tif"]
    np.testing.assert_array_equal(read_image(path).data, original)


def test_write_tiff_streams_a_lazy_volume_in_slabs(tmp_path, monkeypatch):
    """A zarr (or dask) volume is written page by page, read in slabs, with the same result."""
    import zarr

    data = np.random.default_rng(0).random((7, 10, 12)).astype(np.float32)
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, chunks=(3, 5, 6), dtype="float32")
    arr[:] = data
    reads = []
    original = _tiff_write._pages

    def counting(volume, slab_bytes, path):
        class Spy:
            shape, dtype = volume.shape, volume.dtype

            def __getitem__(self, key):
                reads.append(key)
                return volume[key]
        return original(Spy(), slab_bytes, path)

    monkeypatch.setattr(_tiff_write, "_SLAB_BYTES", 2 * 10 * 12 * 4)  # two planes per slab
    monkeypatch.setattr(_tiff_write, "_pages", counting)
    write_tiff(tmp_path / "out.tif", arr, voxel_size=(0.5, 0.2, 0.1))
    back = read_image(tmp_path / "out.tif")
    np.testing.assert_array_equal(back.data, data)
    assert back.voxel_size == pytest.approx((0.5, 0.2, 0.1))
    assert reads == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]


def test_write_tiff_refuses_what_read_image_would_refuse(tmp_path):
    """Found by the API review: NaN, Inf, or float64 values beyond float32's range were written
    (the last with only numpy's overflow warning), and read_image then refused the file; an empty
    array or metadata that is not a dict failed inside tifffile. Nothing is written, in memory or
    streamed from zarr, and an existing output is kept."""
    import zarr

    path = tmp_path / "out.tif"
    write_tiff(path, np.ones((2, 3, 4), np.float32))
    kept = path.read_bytes()
    for data, message in ((np.full((2, 3, 4), np.nan), "NaN or Inf"), (np.full((2, 3, 4), 1e39), "NaN or Inf"),
                          (np.ones((0, 8, 8)), "empty")):
        with pytest.raises(InputError, match=f"^cannot write {path}: the image .*{message}"):
            write_tiff(path, data)
    with pytest.raises(InputError, match="^metadata must be a dict"):
        write_tiff(path, np.ones((2, 3, 4)), metadata=[1])
    lazy = zarr.create_array(str(tmp_path / "v.zarr"), shape=(7, 10, 12), chunks=(3, 5, 6), dtype="float32")
    lazy[:] = 1.0
    lazy[6, 2, 3] = np.inf  # in the last slab: pages before it were already written
    with pytest.raises(InputError, match="NaN or Inf"):
        write_tiff(path, lazy)
    assert path.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "v.zarr"]


def test_micro_manager_resolution_per_centimetre_under_an_imagej_um_unit(tmp_path, rng):
    """Found by the review of input files: Micro-Manager writes its resolution tags per centimetre
    (ResolutionUnit 3) under an ImageJ description saying unit=um; ImageJ reads the tags as cm
    (x 1e4 into µm), and deconv3d read 0.1 µm pixels as 1e-5 µm, so a generated PSF was 1e4 times
    too wide in pixels. The z spacing is the description's own, in µm."""
    from deconv3d.omezarr import open_lazy

    data = (rng.random((4, 8, 8)) * 1000).astype(np.uint16)
    path = tmp_path / "mm.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1e5, 1e5), resolutionunit="CENTIMETER",
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.3})
    assert read_image(path).voxel_size == pytest.approx((0.3, 0.1, 0.1))
    assert open_lazy(path).voxel_size == pytest.approx((0.3, 0.1, 0.1))
    other = tmp_path / "cm.tif"  # a unit of cm in the description too: the tags are cm, as before
    tifffile.imwrite(other, data, imagej=True, resolution=(1e5, 1e5), resolutionunit="CENTIMETER",
                     metadata={"axes": "ZYX", "unit": "cm", "spacing": 3e-5})
    assert read_image(other).voxel_size == pytest.approx((0.3, 0.1, 0.1))


def test_imagej_stack_without_spacing_has_fijis_depth_of_one(tmp_path, rng):
    """ImageJ does not write ``spacing`` when the z step is 1 (its default): Fiji shows 1 µm."""
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, rng.random((4, 6, 7), dtype=np.float32), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "unit": "micron"})
    assert read_image(path).voxel_size == pytest.approx((1.0, 0.1, 0.1))


@pytest.mark.parametrize("shape, expected, ome", [((5, 1, 7), (0.3, 0.1), False), ((5, 6, 1), (0.3, 0.2), True)])
def test_singleton_axis_keeps_the_voxel_sizes_of_the_axes_left(tmp_path, rng, shape, expected, ome):
    """An XZ (or YZ) section squeezes to 2D and keeps z's size, not y's and x's. (tifffile
    writes a width-1 ImageJ stack as one plane under a 5-plane header, so the YZ case is OME.)"""
    path = tmp_path / "section.tif"
    data = rng.random(shape, dtype=np.float32)
    if ome:
        tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                         metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 0.3})
    else:
        tifffile.imwrite(path, data, imagej=True, resolution=(10, 5),
                         metadata={"axes": "ZYX", "unit": "um", "spacing": 0.3})
    image = read_image(path)
    assert image.data.shape == tuple(n for n in shape if n != 1)
    assert image.voxel_size == pytest.approx(expected)
    from deconv3d.omezarr import open_lazy
    assert open_lazy(path).voxel_size == pytest.approx(expected)


@pytest.mark.parametrize("spacing", [-0.3, 0.0])
def test_non_positive_voxel_size_in_the_file_is_reported_not_dropped(tmp_path, rng, spacing):
    path = tmp_path / "neg.tif"
    tifffile.imwrite(path, rng.random((4, 6, 7), dtype=np.float32), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": spacing})
    image = read_image(path)
    assert image.voxel_size is None
    assert "neg.tif" in image.voxel_problem and f"{spacing:g}" in image.voxel_problem
    assert read_image(tmp_path / "neg.tif").data.shape == (4, 6, 7)  # the data stay readable
    write_tiff(tmp_path / "ok.tif", np.ones((4, 6, 7), np.float32), voxel_size=(0.3, 0.1, 0.1))
    assert read_image(tmp_path / "ok.tif").voxel_problem is None


@pytest.mark.parametrize("imagej", [True, False])
def test_truncated_tiff_is_refused_without_log_noise(tmp_path, rng, imagej, capfd):
    full, cut = tmp_path / "full.tif", tmp_path / "cut.tif"
    tifffile.imwrite(full, rng.random((16, 32, 32), dtype=np.float32), imagej=imagej,
                     **({"metadata": {"axes": "ZYX"}} if imagej else {}))
    cut.write_bytes(full.read_bytes()[:40000])  # about 9 of 16 planes
    with pytest.raises(InputError, match="cut.tif"):
        read_image(cut)
    from deconv3d.omezarr import open_lazy
    with pytest.raises(InputError, match="cut.tif"):
        open_lazy(cut)
    assert capfd.readouterr().err == ""  # tifffile's own warnings do not reach stderr


def test_rgb_tiff_is_refused_as_colour(tmp_path, rng):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, (rng.random((6, 7, 3)) * 255).astype(np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="RGB"):
        read_image(path)
    from deconv3d.omezarr import open_lazy
    with pytest.raises(InputError, match="RGB"):
        open_lazy(path)


def test_a_palette_tiff_is_refused_unless_its_colour_table_is_a_ramp(tmp_path, rng):
    """tifffile reads a palette TIFF's colour-table indices: deconvolved as intensities (exit 0), in
    memory, lazily and as a PSF. A table whose red, green and blue each rise with the index (ImageJ's
    8-bit data with a Green lookup table) holds the intensities themselves, and is read."""
    from deconv3d.io import read_psf
    from deconv3d.omezarr import open_lazy

    indices = (rng.random((4, 6, 7)) * 255).astype(np.uint8)
    colours = (rng.random((3, 256)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "pal.tif", indices, photometric="palette", colormap=colours)
    for read in (read_image, open_lazy, read_psf):
        with pytest.raises(InputError) as info:
            read(tmp_path / "pal.tif")
        message = str(info.value)
        assert "\n" not in message and "pal.tif is an indexed-colour (palette) TIFF" in message, message
        assert "Image > Lookup Tables > Grays" in message
        assert message.startswith("PSF " if read is read_psf else "image "), message
    green = np.zeros((3, 256), np.uint16)
    green[1] = np.arange(256) * 257
    tifffile.imwrite(tmp_path / "green.tif", indices, photometric="palette", colormap=green, imagej=True,
                     metadata={"axes": "ZYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "green.tif").data, indices)


def test_a_palette_tiff_with_an_inverted_grey_table_is_read_with_its_raw_values(tmp_path, rng):
    """ImageJ's 8-bit data shown with an inverted grey lookup table (Fiji: Image > Lookup Tables >
    Invert LUT; white down to black) holds intensities: read as stored, not inverted, in memory,
    lazily and as a PSF. A table where one colour rises while another falls is still refused."""
    from deconv3d.io import read_psf
    from deconv3d.omezarr import open_lazy

    indices = (rng.random((4, 6, 7)) * 255).astype(np.uint8)
    inverted = np.repeat((255 - np.arange(256))[None] * 257, 3, axis=0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "inverted.tif", indices, photometric="palette", colormap=inverted, imagej=True,
                     metadata={"axes": "ZYX"})
    with tifffile.TiffFile(tmp_path / "inverted.tif") as tif:  # the case: a palette page with that table
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        np.testing.assert_array_equal(tif.pages[0].colormap, inverted)
    np.testing.assert_array_equal(read_image(tmp_path / "inverted.tif").data, indices)
    np.testing.assert_array_equal(open_lazy(tmp_path / "inverted.tif").data.compute(), indices)
    np.testing.assert_array_equal(read_psf(tmp_path / "inverted.tif").data, indices)
    crossed = np.zeros((3, 256), np.uint16)
    crossed[0], crossed[2] = np.arange(256) * 257, (255 - np.arange(256)) * 257  # red rises, blue falls
    tifffile.imwrite(tmp_path / "crossed.tif", indices, photometric="palette", colormap=crossed, imagej=True,
                     metadata={"axes": "ZYX"})
    for read in (read_image, open_lazy, read_psf):
        with pytest.raises(InputError, match="crossed.tif is an indexed-colour \\(palette\\) TIFF: its pixel values"):
            read(tmp_path / "crossed.tif")


@pytest.mark.parametrize("unit, value", [("\u00c5", 1000.0), ("nm", 100.0), ("\u00b5m", 0.1)])
def test_ome_units_include_angstrom(tmp_path, rng, unit, value):
    path = tmp_path / "a.ome.tif"
    metadata = {"axes": "ZYX"}
    for ax, factor in (("X", 1), ("Y", 1), ("Z", 3)):
        metadata[f"PhysicalSize{ax}"] = value * factor
        metadata[f"PhysicalSize{ax}Unit"] = unit
    tifffile.imwrite(path, rng.random((3, 6, 7), dtype=np.float32), ome=True, metadata=metadata)
    assert read_image(path).voxel_size == pytest.approx((0.3, 0.1, 0.1))


def test_planes_appended_one_series_each_read_as_a_stack(tmp_path, rng):
    """``tifffile.imwrite(..., append=True)`` in a loop writes one series per plane; Fiji opens
    them as one stack, and so do the in-memory and the lazy (chunked) readers."""
    from deconv3d.omezarr import open_lazy

    stack = rng.integers(0, 4000, (5, 12, 10)).astype(np.uint16)
    path = tmp_path / "appended.tif"
    for plane in stack:
        tifffile.imwrite(path, plane, append=True)
    with tifffile.TiffFile(path) as tif:  # (closed: left to the collector, its ResourceWarning landed in a later test)
        assert len(tif.series) == 5  # the case: the first series is one plane
    img = read_image(path)
    assert img.axes == "ZYX"
    np.testing.assert_array_equal(img.data, stack.astype(np.float32))
    lazy = open_lazy(path)
    np.testing.assert_array_equal(lazy.data.compute(), img.data)
    np.testing.assert_array_equal(lazy.reader.read((slice(1, 3), slice(2, 9))), img.data[1:3, 2:9])


def test_a_thumbnail_is_not_another_image(tmp_path, rng):
    stack = rng.random((5, 16, 16), dtype=np.float32)
    path = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(stack)
        tif.write(stack[0, ::4, ::4], subfiletype=1)  # reduced-resolution copy
    np.testing.assert_array_equal(read_image(path).data, stack)


@pytest.mark.parametrize("planes", [False, True])
def test_the_pixel_size_is_the_images_not_a_thumbnails_stored_first(tmp_path, rng, planes):
    """The resolution tags were read from the file's first page: a 4x-reduced preview written
    before the image gave 0.4 um pixels for 0.1 um ones (the PSF then resampled 4x too narrow)."""
    from deconv3d.omezarr import open_lazy

    stack = rng.random((5, 16, 16), dtype=np.float32)
    path = tmp_path / "preview_first.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(stack[0, ::4, ::4], subfiletype=1, resolution=(2.5e4, 2.5e4), resolutionunit="CENTIMETER",
                  metadata=None)
        for part in (stack if planes else [stack]):  # one page series, or planes written one by one
            tif.write(part, resolution=(1e5, 1e5), resolutionunit="CENTIMETER", metadata=None)
    for image in (read_image(path), open_lazy(path)):
        assert image.partial_voxel == pytest.approx((None, 0.1, 0.1))


@pytest.mark.parametrize("shapes", [[(5, 16, 16), (5, 8, 16)], [(16, 16), (16, 16)]])
def test_several_images_in_one_file_are_refused_not_cut_to_the_first(tmp_path, rng, shapes):
    """Different shapes, or separate fields in an OME-TIFF: which one to restore is the user's call."""
    from deconv3d.omezarr import open_lazy

    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for shape in shapes:
            tif.write(rng.random(shape, dtype=np.float32))
    for reader in (read_image, open_lazy):
        with pytest.raises(InputError, match="holds 2 separate images.*its own file"):
            reader(path)


def test_grey_samples_per_pixel_are_named_as_channels(tmp_path):
    """They were reported as "a Y axis (axes YXQ)"."""
    path = tmp_path / "samples.tif"
    tifffile.imwrite(path, np.zeros((8, 10, 3), np.uint16), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="3 grey-level samples per pixel .*channels"):
        read_image(path)


def test_a_transparency_mask_page_is_not_another_image(tmp_path, rng):
    """A mask page (subfile type 4) made the file "hold 2 separate images" (a regression)."""
    image = rng.random((32, 32), dtype=np.float32)
    path = tmp_path / "masked.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image)
        tif.write(np.ones((32, 32), bool), subfiletype=4)
    np.testing.assert_array_equal(read_image(path).data, image)


def test_a_mask_page_stored_first_is_skipped_too(tmp_path, rng):
    from deconv3d.omezarr import open_lazy

    image = rng.random((32, 32), dtype=np.float32)
    path = tmp_path / "mask_first.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.ones((32, 32), bool), subfiletype=4)
        tif.write(image)
    np.testing.assert_array_equal(read_image(path).data, image)
    np.testing.assert_array_equal(open_lazy(path).data.compute(), image)


def test_read_psf_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    """Asking for a PSF's voxel size and then for the PSF read the file twice; now once. A changed
    file is read again, and callers get their own copies."""
    from deconv3d.io import read_psf

    psf = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    reads = []
    original = io._read_tiff  # (what read_psf reads a TIFF with, naming it as a PSF)
    monkeypatch.setattr(io, "_read_tiff", lambda path, what: reads.append(path) or original(path, what))
    first = read_psf(tmp_path / "psf.tif")
    first.data[...] = 0  # the caller's copy
    second = read_psf(tmp_path / "psf.tif")
    assert len(reads) == 1 and np.array_equal(second.data, psf)
    write_tiff(tmp_path / "psf.tif", psf * 2, voxel_size=(0.3, 0.1, 0.1))
    assert np.array_equal(read_psf(tmp_path / "psf.tif").data, psf * 2) and len(reads) == 2


def test_a_codec_tifffile_lacks_is_named_before_anything_is_read(tmp_path, monkeypatch):
    """LZW needs the optional imagecodecs package: one line with the fix, also for the lazy
    reader (which found out only while computing, as an internal error). Stood in for by
    removing zlib's decoder, which tifffile always has, from its table."""
    from deconv3d.omezarr import open_lazy

    path = tmp_path / "deflate.tif"
    tifffile.imwrite(path, np.ones((5, 16, 16), np.uint16), compression="zlib")
    assert read_image(path).data.shape == (5, 16, 16)  # readable while the codec is there
    table = {k for k in tifffile.COMPRESSION if k in tifffile.TIFF.DECOMPRESSORS} - {tifffile.COMPRESSION.ADOBE_DEFLATE}
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", table, raising=False)
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # not installed
    for opener in (read_image, open_lazy):
        with pytest.raises(InputError, match="ADOBE_DEFLATE-compressed, which needs the imagecodecs package: pip "
                                             "install imagecodecs, or save the file uncompressed"):
            opener(path)


@pytest.mark.parametrize("tag, code, words", [("Compression", 60000, "uses compression 60000"),
                                               ("Predictor", 60000, "uses predictor 60000")])
@pytest.mark.parametrize("installed", [True, False])
def test_a_codec_no_package_decodes_is_not_sent_to_pip(tmp_path, monkeypatch, tag, code, words, installed):
    """A Compression tag overwritten with 60000 said "...needs the imagecodecs package: pip install
    imagecodecs", imagecodecs being installed: installing it decodes no such code."""
    from deconv3d.omezarr import open_lazy

    if not installed:
        monkeypatch.setitem(sys.modules, "imagecodecs", None)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.ones((3, 8, 8), np.uint16), compression="zlib", predictor=True, photometric="minisblack")
    with tifffile.TiffFile(path, mode="r+") as tif:
        for page in tif.pages:
            page.tags[tag].overwrite(code)
    for opener in (read_image, open_lazy):
        with pytest.raises(InputError) as info:
            opener(path)
        assert str(info.value) == (f"{path} {words}, which deconv3d cannot decode: the file may be damaged, or "
                                   "re-save it uncompressed (Fiji: File > Save As > Tiff)")


def test_streamed_writing_reads_slabs_within_the_budget_it_is_given(tmp_path):
    """A zarr image behind singleton leading axes (an OME-Zarr's t, c) is streamed plane slab by
    plane slab, each at most ``slab_bytes`` (at least one plane), into the same TIFF as the array."""
    import zarr

    volume = np.random.default_rng(0).random((10, 16, 24)).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(1, 1) + volume.shape, chunks=(1, 1, 4, 16, 24),
                              dtype="float32")
    array[0, 0] = volume
    asked = []

    class Recording(_tiff_write.ZarrPlanes):
        def __getitem__(self, key):
            asked.append(key)
            return super().__getitem__(key)

    plane = 16 * 24 * 4
    for budget, planes in ((3 * plane + 5, 3), (1, 1), (None, 10)):
        asked.clear()
        view = Recording(array, (0, 0))
        assert view.shape == volume.shape and view.ndim == 3
        write_tiff(tmp_path / "o.tif", view, voxel_size=(0.3, 0.1, 0.1), slab_bytes=budget)
        np.testing.assert_array_equal(read_image(tmp_path / "o.tif").data, volume)
        assert max(k.stop - k.start for k in asked) == planes and sum(min(k.stop, 10) - k.start for k in asked) == 10


def test_a_folder_given_as_a_tiff_is_named_as_a_folder(tmp_path):
    """An existing OME-Zarr folder or a folder named .tif was 'input file not found'."""
    from deconv3d.omezarr import open_lazy

    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(InputError, match="x.zarr is an OME-Zarr folder, and this reads a TIFF file"):
        read_image(tmp_path / "x.zarr")
    for read in (read_image, open_lazy):
        with pytest.raises(InputError, match="dir.tif is a folder"):
            read(tmp_path / "dir.tif")


def test_a_single_voxel_image_says_its_singleton_axes_were_dropped(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.ones((1, 1, 1), np.float32))
    with pytest.raises(InputError, match=r"0D once its axes of length 1 are dropped"):
        read_image(tmp_path / "one.tif")


def test_imagej_per_axis_units_are_read(tmp_path):
    """Fiji writes zunit= (and yunit=) where an axis's unit differs from x's: the z step of a stack
    calibrated in nm laterally and in microns along z was read 1000x too small."""
    from deconv3d.omezarr import open_lazy

    # (x, y) pixels per unit and the units: nm laterally with z in microns; y alone in nm
    for name, resolution, units in (("zunit", (1 / 65, 1 / 65), "unit=nm\nzunit=micron"),
                                    ("yunit", (1 / 0.065, 1 / 65), "unit=micron\nyunit=nm")):
        path = tmp_path / f"{name}.tif"
        with tifffile.TiffWriter(path) as tif:
            for i, plane in enumerate(np.zeros((4, 8, 8), np.uint16)):
                tif.write(plane, resolution=resolution, metadata=None, contiguous=True, description=(
                    f"ImageJ=1.54f\nimages=4\nslices=4\n{units}\nspacing=0.3\nloop=false\n") if i == 0 else None)
        assert read_image(path).voxel_size == pytest.approx((0.3, 0.065, 0.065)), name
        assert open_lazy(path).voxel_size == pytest.approx((0.3, 0.065, 0.065)), name


def test_a_complex_tiff_is_refused_in_memory_and_lazily(tmp_path):
    """Its imaginary part was dropped without a word (only the OME-Zarr case was tested)."""
    from deconv3d.omezarr import open_lazy

    tifffile.imwrite(tmp_path / "c.tif", np.full((4, 8, 8), 1 + 2j, np.complex64), photometric="minisblack")
    for read in (read_image, open_lazy):
        with pytest.raises(InputError, match="has complex values"):
            read(tmp_path / "c.tif")


def test_lazy_readers_tell_a_vanished_file_from_a_damaged_one_and_pass_memory_errors_on(tmp_path, monkeypatch):
    """A file gone during the run is named as such (not as damaged); running out of memory is not
    reported as a damaged strip."""
    from deconv3d.omezarr import open_lazy, reading, tiff_reading

    tifffile.imwrite(tmp_path / "a.tif", np.ones((4, 8, 8), np.float32), photometric="minisblack")
    lazy = open_lazy(tmp_path / "a.tif")

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def __getitem__(self, key):
            raise self.exc

    monkeypatch.setattr(tiff_reading._TiffArray, "_array", lambda self: Failing(MemoryError()))
    with pytest.raises(MemoryError):
        lazy.reader.read((slice(0, 2),))
    monkeypatch.setattr(tiff_reading._TiffArray, "_array", lambda self: Failing(OSError(5, "Input/output error")))
    with pytest.raises(InputError, match="check that the image is still there"):
        lazy.reader.read((slice(0, 2),))
    zarr_reader = reading.ZarrReader.__new__(reading.ZarrReader)
    zarr_reader.path, zarr_reader.component, zarr_reader.drop = str(tmp_path / "z.zarr"), "0", ()
    for exc, words in ((OSError(5, "Input/output error"), "check that the image is still there"),
                       (ValueError("bad chunk"), "a chunk is damaged")):
        zarr_reader._array = Failing(exc)
        with pytest.raises(InputError, match=words):
            zarr_reader.read((slice(0, 2),))


def test_a_multi_file_ome_tiff_missing_a_part_is_refused(tmp_path, monkeypatch):
    """tifffile zeroes the planes of a missing partner file: they were deconvolved as zeros, exit 0."""
    from deconv3d.omezarr import open_lazy

    monkeypatch.chdir(tmp_path)
    data = np.arange(1, 6 * 8 * 8 + 1, dtype=np.uint16).reshape(6, 8, 8)
    uuid = "urn:uuid:aaaaaaaa-0000-0000-0000-00000000000"

    def xml(part):
        return (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
                f'UUID="{uuid}{part}"><Image ID="Image:0"><Pixels DimensionOrder="XYZCT" ID="Pixels:0" SizeX="8" '
                'SizeY="8" SizeZ="6" SizeC="1" SizeT="1" Type="uint16" PhysicalSizeX="0.1" PhysicalSizeY="0.1" '
                'PhysicalSizeZ="0.5"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
                f'<TiffData FirstZ="0" IFD="0" PlaneCount="3"><UUID FileName="a.ome.tif">{uuid}1</UUID></TiffData>'
                f'<TiffData FirstZ="3" IFD="0" PlaneCount="3"><UUID FileName="b.ome.tif">{uuid}2</UUID></TiffData>'
                '</Pixels></Image></OME>')

    for name, part, planes in (("a.ome.tif", 1, data[:3]), ("b.ome.tif", 2, data[3:])):
        with tifffile.TiffWriter(name) as tif:
            for i, plane in enumerate(planes):
                tif.write(plane, description=xml(part) if i == 0 else None, metadata=None)
    np.testing.assert_array_equal(read_image("a.ome.tif").data, data)  # both parts there: the whole image
    os.remove("b.ome.tif")
    for reader in (read_image, open_lazy):
        with pytest.raises(InputError, match="its part b.ome.tif is missing .*keep all files of the image together"):
            reader("a.ome.tif")


def _ome_xml_of(data) -> str:
    """tifffile's own OME-XML for ``data`` (ZYX), to be edited into a damaged one."""
    from io import BytesIO

    buffer = BytesIO()
    tifffile.imwrite(buffer, data, ome=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(BytesIO(buffer.getvalue())) as tif:
        return tif.pages[0].description


@pytest.mark.parametrize("edit, words", [
    ({'SizeZ="16"': 'SizeZ="20"', 'PlaneCount="16"': 'PlaneCount="20"'}, "lists 20 planes but the file holds 16"),
    ({'SizeZ="16"': 'SizeZ="8"'}, "lists 8 planes but the file holds 16"),
    ({'IFD="0"': 'IFD="2"'}, "maps 2 of its 16 planes to no page of the file"),
])
def test_an_ome_tiff_whose_xml_disagrees_with_its_pages_is_refused(tmp_path, edit, words, capfd):
    """tifffile zeroed the planes the file lacks (SizeZ="20" over 16 pages: 4 zero planes) or left out
    the pages beyond (SizeZ="8": 8 of 16 planes), logging it only: deconvolved with exit 0."""
    from deconv3d.omezarr import open_lazy

    data = np.arange(1, 16 * 8 * 8 + 1, dtype=np.uint16).reshape(16, 8, 8)
    xml = _ome_xml_of(data)
    tifffile.imwrite(tmp_path / "fine.tif", data, description=xml, metadata=None, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "fine.tif").data, data)  # the XML as written: all there
    for old, new in edit.items():
        assert old in xml
        xml = xml.replace(old, new)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, data, description=xml, metadata=None, photometric="minisblack")
    for reader in (read_image, open_lazy):
        with pytest.raises(InputError, match=f"x.tif: its OME-XML {words}: export it again"):
            reader(path)
    assert capfd.readouterr().err == ""  # nor tifffile's own log lines


def test_an_ome_tiff_with_a_thumbnail_page_is_read_whole(tmp_path):
    """A reduced-resolution page the OME-XML does not list is not a plane the XML left out."""
    data = np.arange(1, 4 * 8 * 8 + 1, dtype=np.uint16).reshape(4, 8, 8)
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(data, description=_ome_xml_of(data), metadata=None, photometric="minisblack")
        tif.write(data[0, ::2, ::2], subfiletype=1, metadata=None, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "thumb.tif").data, data)


def _set_strip_offset(path, page: int, offset: int) -> None:
    """Overwrite page ``page``'s (single) StripOffsets value in the file at ``path``."""
    import struct

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[page].tags["StripOffsets"]
        assert tag.count == 1
        fmt = {3: "<H", 4: "<I"}[int(tag.dtype)]
        where = tag.valueoffset
    data = bytearray(path.read_bytes())
    data[where:where + struct.calcsize(fmt)] = struct.pack(fmt, offset)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout, page, offset, words", [
    ("plain", 10, 0, "page 10 of {} has no pixel data \\(strip offset 0\\)"),
    ("plain", 10, 10 ** 8, "page 10 of {} has pixel data past the end of the file"),
    ("imagej", 0, 0, "page 0 of {} has no pixel data \\(strip offset 0\\)"),
])
def test_a_page_whose_strip_offset_no_file_holds_is_refused(tmp_path, layout, page, offset, words):
    """A zero strip offset was read as pixels: read_image returned the TIFF header's bytes
    (18761, 42, 8, ...) and open_lazy zeros, and both deconvolved with exit 0."""
    from deconv3d.omezarr import open_lazy

    data = np.arange(1, 16 * 8 * 8 + 1, dtype=np.uint16).reshape(16, 8, 8)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, data, **({"imagej": True, "metadata": {"axes": "ZYX"}} if layout == "imagej" else
                                    {"photometric": "minisblack", "metadata": None}))
    np.testing.assert_array_equal(read_image(path).data, data)
    _set_strip_offset(path, page, offset)
    for reader in (read_image, open_lazy):
        with pytest.raises(InputError, match=words.format(re.escape(str(path))) + ".*copy or export it again"):
            reader(path)


def test_a_sparse_tiff_with_an_empty_tile_reads_with_zeros_there(tmp_path):
    """A tile tifffile writes for None (and GeoTIFF's sparse files) has offset 0 and byte count 0:
    an empty tile, read as zeros. It was refused as a damaged file ("tile offset 0")."""
    from deconv3d.omezarr import open_lazy

    data = np.random.default_rng(3).integers(1, 1000, (3, 32, 32), dtype=np.uint16)

    def tiles(z):
        for ty in (0, 16):
            for tx in (0, 16):
                yield None if (z, ty, tx) == (1, 16, 16) else data[z, ty:ty + 16, tx:tx + 16]

    path = tmp_path / "sparse.tif"
    with tifffile.TiffWriter(path) as tif:
        for z in range(3):
            tif.write(tiles(z), shape=(32, 32), dtype=data.dtype, tile=(16, 16), contiguous=False, metadata=None)
    with tifffile.TiffFile(path) as tif:
        assert (tif.pages[1].dataoffsets[3], tif.pages[1].databytecounts[3]) == (0, 0)  # the empty tile
    expected = data.astype(np.float32)
    expected[1, 16:, 16:] = 0
    for reader in (read_image, open_lazy):
        np.testing.assert_array_equal(np.asarray(reader(path).data), expected)


def test_grey_samples_stored_as_planes_are_channels_too(tmp_path):
    """Planar grey samples (SYX) were read as a z-stack; ImageJ opens them as channels."""
    from deconv3d.omezarr import open_lazy

    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint16), photometric="minisblack", planarconfig="separate")
    for reader in (read_image, open_lazy):
        with pytest.raises(InputError, match="3 grey-level samples per pixel .*they are channels"):
            reader(path)


def test_a_float_predictor_and_a_damaged_strip_are_one_line_errors_on_the_lazy_path(tmp_path, monkeypatch):
    """Both were an 'internal error' with pages of asyncio tracebacks once the blocks read them.
    imagecodecs (a dependency) decodes the floating-point predictor: an install without it is
    stood in for by removing that predictor from tifffile's table."""
    from deconv3d.omezarr import open_lazy

    data = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.3}
    predicted = tmp_path / "fp.ome.tif"
    tifffile.imwrite(predicted, data.view(np.int32), compression="zlib", predictor=2, ome=True, metadata=meta)
    with tifffile.TiffFile(predicted, mode="r+") as tif:  # zlib with the floating-point predictor, as GDAL writes
        for page in tif.pages:
            page.tags["Predictor"].overwrite(3)
            page.tags["SampleFormat"].overwrite(3)
    with monkeypatch.context() as patch:
        patch.setattr(tifffile.TIFF, "UNPREDICTORS", {1: None, 2: None}, raising=False)  # as without imagecodecs
        patch.setitem(sys.modules, "imagecodecs", None)
        for reader in (read_image, open_lazy):
            with pytest.raises(InputError, match="floatingpoint predictor, which needs the imagecodecs package"):
                reader(predicted)
    damaged = tmp_path / "bad.ome.tif"
    tifffile.imwrite(damaged, data, compression="zlib", ome=True, metadata=meta)
    with tifffile.TiffFile(damaged) as tif:
        offset = tif.pages[2].dataoffsets[0]
    with open(damaged, "r+b") as f:
        f.seek(offset + 10)
        f.write(b"\xff" * 40)
    lazy = open_lazy(damaged)
    with pytest.raises(InputError, match=r"cannot read .*bad\.ome\.tif \(region \[0:4.*damaged; copy or export"):
        lazy.reader.read((slice(0, 4),))
    # A file that went away during a run is not called damaged (a worker opens it afresh).
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, data, photometric="minisblack")
    lazy = open_lazy(whole)
    whole.rename(tmp_path / "moved.tif")
    with pytest.raises(InputError, match=r"No such file.*still there and readable") as caught:
        lazy.reader.read((slice(0, 2),))
    assert "damaged" not in str(caught.value)


def test_streamed_tiff_pages_hold_one_slab_at_a_time():
    """The generator held the slab it had yielded while reading the next: twice the slab budget."""
    import weakref

    slabs, alive_at_read = [], []

    class Volume:
        shape = (8, 4, 4)

        def __getitem__(self, key):
            alive_at_read.append(sum(r() is not None for r in slabs))
            out = np.ones((min(key.stop, 8) - key.start, 4, 4), np.float32)
            slabs.append(weakref.ref(out))
            return out

    planes = 0
    for plane in _tiff_write._pages(Volume(), slab_bytes=2 * 4 * 4 * 4):
        planes += 1
        del plane
    assert planes == 8 and alive_at_read == [0, 0, 0, 0]


def _fiji_signed16(path, values, **calibration):
    """What Fiji saves for a signed 16-bit image: stored + 32768 as uint16, with a linear calibration."""
    header = {"cf": 0, "c0": -32768.0, "c1": 1.0, "vunit": "Gray Value", **calibration}
    tifffile.imwrite(path, (values.astype(np.int32) + 32768).astype(np.uint16), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um", **header})


def test_fiji_signed_16_bit_data_is_read_with_its_calibration(tmp_path):
    """Read raw, every value was 32768 too high, and RL deconvolved the offset without a word."""
    from deconv3d.omezarr import open_lazy

    values = np.random.default_rng(0).integers(-300, 3000, (4, 8, 12)).astype(np.int16)
    _fiji_signed16(tmp_path / "s16.tif", values)
    np.testing.assert_array_equal(read_image(tmp_path / "s16.tif").data, values.astype(np.float32))
    lazy = open_lazy(tmp_path / "s16.tif")
    np.testing.assert_array_equal(np.asarray(lazy.data), values)
    np.testing.assert_array_equal(lazy.reader.read((slice(1, 3), slice(None), slice(2, 5))), values[1:3, :, 2:5])
    _fiji_signed16(tmp_path / "scaled.tif", values, c0=5.0, c1=0.5)  # any straight line
    np.testing.assert_allclose(read_image(tmp_path / "scaled.tif").data, 5.0 + 0.5 * (values + 32768.0))


@pytest.mark.parametrize("calibration, words", [({"cf": 1, "c2": 0.1}, ["not a straight line", "Calibrate"]),
                                                ({"c1": 0.0}, ["c1=0.0", "Calibrate"])])
def test_an_intensity_calibration_that_is_not_linear_is_refused(tmp_path, calibration, words):
    from deconv3d.omezarr import open_lazy

    _fiji_signed16(tmp_path / "cal.tif", np.ones((2, 4, 4), np.int16), **calibration)
    for read in (read_image, open_lazy):
        with pytest.raises(InputError) as caught:
            read(tmp_path / "cal.tif")
        assert all(w in str(caught.value) for w in words), caught.value


def test_float_data_keeps_its_values_whatever_the_calibration_says(tmp_path):
    """ImageJ calibrates 8- and 16-bit images only; converting to 32-bit applies the calibration."""
    values = np.linspace(-5, 5, 32, dtype=np.float32).reshape(2, 4, 4)
    tifffile.imwrite(tmp_path / "f.tif", values, imagej=True, metadata={"axes": "ZYX", "cf": 0, "c0": -32768.0,
                                                                        "c1": 1.0})
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif").data, values)


@pytest.mark.parametrize("compression", ["lzw", "zstd"])
def test_lzw_and_zstd_tiffs_from_instruments_are_read(tmp_path, compression):
    """Refused before ("needs the imagecodecs package"): imagecodecs is now a dependency."""
    from deconv3d.omezarr import open_lazy

    values = np.random.default_rng(1).integers(0, 4000, (3, 16, 20)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", values, compression=compression, imagej=True, metadata={"axes": "ZYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif").data, values)
    np.testing.assert_array_equal(open_lazy(tmp_path / "c.tif").reader.read((slice(1, 3),)), values[1:3])


def test_an_unreadable_tiff_is_named_a_permission_problem(tmp_path, monkeypatch):
    """A TIFF the user may not read was refused with "check that it is one, or export it again"
    (review of filesystem edge cases). Simulated: the tests may run as root, who reads anything."""
    from deconv3d.omezarr import open_lazy

    path = tmp_path / "img.tif"
    write_tiff(path, np.ones((4, 8, 8), np.float32))

    def forbidden(p, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))

    for module in (io, _tiff_checks):  # where read_image and open_lazy look it up
        monkeypatch.setattr(module, "open_tiff", forbidden)
    for read in (read_image, open_lazy):
        with pytest.raises(InputError, match="img.tif: permission denied: ask for read access") as info:
            read(path)
        assert "export it again" not in str(info.value)
    monkeypatch.setattr(io, "open_tiff", lambda p, *a, **k: (_ for _ in ()).throw(ValueError("not a TIFF file")))
    with pytest.raises(InputError, match="as a TIFF image: not a TIFF file: check that it is one"):
        read_image(path)


def test_tiff_properties_read_back_as_written(tmp_path):
    """Strings were stored as they are, so a hash fingerprint 0e57377405965361 came back from
    json.loads as 0.0 (reproducibility review): a string that would read as JSON is now JSON-quoted,
    and every value reads back with json.loads, keeping the text where that fails. Other strings
    stay as they are, as text properties of earlier outputs are."""
    from cli_helpers import tiff_properties

    written = {"psf_sha256_16": "0e57377405965361", "digits": "1234567890123456", "word": "true", "nothing": "null",
               "quoted": '"rl"', "method": "rl", "input": "/data/a b.tif", "number": 3, "parameters": {"x": [1, 2.5]}}
    path = tmp_path / "p.tif"
    write_tiff(path, np.ones((4, 4), np.float32), metadata=written)
    assert tiff_properties(path) == written
    with tifffile.TiffFile(path) as tif:
        stored = tif.imagej_metadata["Properties"]
    assert stored["method"] == "rl" and stored["input"] == "/data/a b.tif"


def test_every_ome_time_unit_gets_its_ome_zarr_name(tmp_path):
    """OME-XML's time units beyond a short list were dropped (TimeIncrementUnit "d": the output's t
    axis had no unit) and "Ms", lower-cased, read as milliseconds. Each symbol of OME's UnitsTime
    (SI prefixes on s, and min, h, d) now gets the OME-Zarr name, one of those ome-zarr-py knows;
    the decasecond, which OME-Zarr does not name, gets none."""
    import tifffile
    from ome_zarr.axes import KNOWN_TEMPORAL_UNITS

    from deconv3d.io import time_axis_of

    prefixes = {"Y": "yotta", "Z": "zetta", "E": "exa", "P": "peta", "T": "tera", "G": "giga", "M": "mega",
                "k": "kilo", "h": "hecto", "": "", "d": "deci", "c": "centi", "m": "milli", "\u00b5": "micro",
                "n": "nano", "p": "pico", "f": "femto", "a": "atto", "z": "zepto", "y": "yocto"}
    expected = {f"{p}s": f"{name}second" for p, name in prefixes.items()}
    expected.update({"min": "minute", "h": "hour", "d": "day", "das": None})
    for symbol, name in expected.items():
        path = tmp_path / "t.ome.tif"
        tifffile.imwrite(path, np.zeros((2, 2, 8, 8), np.float32), ome=True,
                         metadata={"axes": "TZYX", "TimeIncrement": 1.5, "TimeIncrementUnit": symbol})
        with tifffile.TiffFile(path) as tif, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert time_axis_of(tif) == (1.5, name), symbol
        assert name is None or name in KNOWN_TEMPORAL_UNITS
        assert [str(w.message) for w in caught] == ([] if name else [  # (the unit it drops is named)
            "t.ome.tif records its time step in 'das', a unit deconv3d cannot name: the t axis keeps the step 1.5 "
            "without a unit (use sec, min, hr, day, ms, us or ns)"])


@pytest.mark.parametrize("spellings, name", [
    (("sec", "secs", "s", "Seconds"), "second"), (("min", "mins", "minute"), "minute"),
    (("hr", "hrs", "h", "hours"), "hour"), (("d", "day", "days"), "day"),
    (("ms", "msec", "milliseconds"), "millisecond"),
    (("us", "\\u00b5s", "usec"), "microsecond"),  # (µs as an ImageJ header escapes it)
    (("ns", "nsec", "nanoseconds"), "nanosecond")])
def test_imagej_time_units_get_their_ome_zarr_names(tmp_path, spellings, name):
    """ImageJ time units beyond sec, min, hr, ms, us were dropped without a word ("secs", "hrs",
    "days", "msec", "ns": a t axis with no unit); the usual spellings now get their OME-Zarr name."""
    from ome_zarr.axes import KNOWN_TEMPORAL_UNITS

    from deconv3d.io import time_axis_of

    assert name in KNOWN_TEMPORAL_UNITS
    for spelling in spellings:
        path = tmp_path / "t.tif"
        tifffile.imwrite(path, np.zeros((2, 2, 8, 8), np.uint16), imagej=True,
                         metadata={"axes": "TZYX", "finterval": 2.5, "tunit": spelling})
        with tifffile.TiffFile(path) as tif, warnings.catch_warnings():
            warnings.simplefilter("error")
            assert time_axis_of(tif) == (2.5, name), spelling


def fortnight_series(path):
    """An ImageJ TZYX hyperstack whose time step is in a unit OME-Zarr does not name."""
    data = np.random.default_rng(0).integers(1, 100, (2, 2, 8, 8)).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX", "finterval": 2.5, "tunit": "fortnight"})
    return path


def test_an_imagej_time_unit_without_a_name_is_warned_about_by_the_run(tmp_path):
    from deconv3d.errors import Deconv3dWarning
    from deconv3d.omezarr import open_lazy
    from deconv3d.pipeline import run_chunked

    with warnings.catch_warnings():  # opening it says nothing: each open warned, before any refusal
        warnings.simplefilter("error")
        lazy = open_lazy(fortnight_series(tmp_path / "t.tif"))
    said = "records its time step in 'fortnight', a unit deconv3d cannot name"
    assert lazy.time_axis == (2.5, None) and lazy.time_problem.startswith(f"{tmp_path / 't.tif'} {said}")
    gc.collect()  # files earlier tests left unclosed: else their ResourceWarnings may land in the count below
    with pytest.warns(Deconv3dWarning, match=rf"^{re.escape(str(tmp_path / 't.tif'))} {said}") as caught:
        run_chunked(lazy, lambda b: b, tmp_path / "o.zarr")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert caught[0].message.without_file.startswith(f"the image {said}")  # (a batch's row names the file)
    with warnings.catch_warnings():  # a time axis given: the file's unit is not written, nor warned about
        warnings.simplefilter("error")
        run_chunked(lazy, lambda b: b, tmp_path / "given.zarr", time_axis=(2.5, "second"))


def test_the_command_line_warns_of_a_time_unit_once_and_not_before_a_refusal(tmp_path, capsys):
    from cli_helpers import run

    fortnight_series(tmp_path / "t.tif")
    psf = np.zeros((3, 3, 3), np.float32)
    psf[1, 1, 1] = 1
    tifffile.imwrite(tmp_path / "psf.tif", psf, imagej=True, metadata={"axes": "ZYX"})
    line = "records its time step in 'fortnight'"
    code, _, err = run(["deconvolve", tmp_path / "t.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.tif",
                        "--iterations", 1], capsys)
    assert code == 0 and err.count(f"deconv3d: warning: {tmp_path / 't.tif'} {line}") == 1, err  # (it came twice)
    code, _, err = run(["deconvolve", tmp_path / "t.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.zarr",
                        "--iterations", 1], capsys)
    assert code == 0 and err.count(f"deconv3d: warning: {tmp_path / 't.tif'} {line}") == 1, err
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        fortnight_series(tmp_path / "in" / f"{name}.tif")
    code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf", tmp_path / "psf.tif",
                        "--iterations", 1, "--output-format", "zarr"], capsys)
    assert code == 0 and [err.count(f"{tmp_path / 'in' / n}.tif {line}") for n in "ab"] == [1, 1], err


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_a_time_unit_without_a_name_is_said_of_the_input_as_given(tmp_path, capsys, monkeypatch, output):
    """The TIFF's warning named the file's base name alone (``t.tif records ...`` for ``IN/t.tif``), where every
    other line of a single deconvolve names the input as given."""
    from cli_helpers import run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "IN").mkdir()
    fortnight_series(tmp_path / "IN" / "t.tif")
    psf = np.zeros((3, 3, 3), np.float32)
    psf[1, 1, 1] = 1
    tifffile.imwrite("psf.tif", psf, imagej=True, metadata={"axes": "ZYX"})
    code, _, err = run(["deconvolve", "IN/t.tif", "--psf", "psf.tif", "-o", output, "--iterations", 1], capsys)
    said = [line for line in err.splitlines() if "records its time step" in line]
    assert code == 0 and said == ["deconv3d: warning: IN/t.tif records its time step in 'fortnight', a unit deconv3d "
                                  "cannot name: the t axis keeps the step 2.5 without a unit (use sec, min, hr, day, "
                                  "ms, us or ns)"], err


@pytest.mark.parametrize("writer", ["run_chunked", "write_ome_zarr"])
def test_library_writers_refuse_an_over_long_output_name_in_one_line(tmp_path, rng, writer):
    """Review of 0a0eacf: run_chunked raised a raw OSError [Errno 36] from refuse_input_overlap, and
    write_ome_zarr one from atomic_output's is_symlink, for a 260-byte .zarr name."""
    from deconv3d.omezarr import open_lazy, write_ome_zarr
    from deconv3d.pipeline import run_chunked

    data = rng.random((2, 3, 4), dtype=np.float32)
    write_tiff(tmp_path / "src.tif", data)
    out = tmp_path / ("a" * 260 + ".zarr")
    with pytest.raises(InputError, match="too long") as info:
        if writer == "run_chunked":
            run_chunked(open_lazy(tmp_path / "src.tif"), lambda b: b, out)
        else:
            write_ome_zarr(out, data)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["src.tif"]


@pytest.mark.parametrize("where", ["deconvolve", "batch"])
def test_a_named_pipe_given_as_a_model_is_named_so(tmp_path, monkeypatch, capsys, where):
    """Review of this stop's own commits: a named pipe given as ``--model`` was "model file ... does not
    exist" (deconvolve) or "model file not found" (batch), sending the user to look for a missing file."""
    from cli_helpers import assert_one_line_error, run

    monkeypatch.chdir(tmp_path)
    os.mkdir("raw")
    os.mkfifo("fifo.ckpt")
    image = np.zeros((4, 8, 8), np.float32)
    image[2, 4, 4] = 1
    write_tiff("raw/img.tif", image, voxel_size=(0.3, 0.1, 0.1))
    write_tiff("psf.tif", image[1:4, 3:6, 3:6], voxel_size=(0.3, 0.1, 0.1))
    with _readers_let_through("fifo.ckpt"):
        args = (["deconvolve", "raw/img.tif", "-o", "out.tif"] if where == "deconvolve" else
                ["batch", "raw", "-o", "out"])
        code, _, err = run([*args, "--psf", "psf.tif", "--method", "ssl", "--model", "fifo.ckpt"], capsys)
    assert_one_line_error(code, err, "model fifo.ckpt is a named pipe, not a regular file", "save the model to a file")
    assert not os.path.exists("out.tif") and not os.path.exists("out/img.zarr")


def test_the_umask_read_by_setting_it_is_right_in_every_thread_and_left_unchanged(monkeypatch):
    """Where /proc/self/status cannot be read (macOS, BSD), the umask is read by setting it and putting
    it back: unlocked, with 4 threads x 2000 calls thousands returned another thread's 0o077 and the
    process was left with umask 0o077. Each set-and-restore is done under a lock now: two threads
    that would both set it before either puts it back (a barrier between) each read the real one."""
    from deconv3d._paths import temporaries

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(path)

    real_umask, both_set = os.umask, threading.Barrier(2, timeout=0.5)

    def umask(mask):
        previous = real_umask(mask)
        if mask == 0o077:  # set: wait for the other thread to set it too (under the lock, it cannot)
            with contextlib.suppress(threading.BrokenBarrierError):
                both_set.wait()
        return previous

    monkeypatch.setattr(temporaries, "open", no_proc, raising=False)  # (that module's own name only)
    monkeypatch.setattr(os, "umask", umask)
    seen, before = [], real_umask(0o022)
    try:
        threads = [threading.Thread(target=lambda: seen.append(temporaries._umask())) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        monkeypatch.undo()
        left = real_umask(before)
    assert [oct(m) for m in seen] == [oct(0o022)] * 2 and oct(left) == oct(0o022)


def _bad_psfs():
    """PSF files that cannot be read as one, each with the words its refusal gives as the fix."""
    nan = np.ones((5, 5, 5), np.float32)
    nan[0, 0, 0] = np.nan
    return {
        "psf4d.tif": (lambda p: tifffile.imwrite(p, np.ones((2, 5, 5, 5), np.float32)),
                      ["4 non-singleton dimensions", "a PSF must be one 2D or 3D stack (one channel, one time point)",
                       "one file per channel"]),
        "psfnan.tif": (lambda p: tifffile.imwrite(p, nan), ["contains NaN or Inf values", "replace them"]),
        "psf0d.tif": (lambda p: tifffile.imwrite(p, np.array(1.0, np.float32)),
                      ["is 0D", "a PSF must be a 2D or 3D stack"]),
        "psfczyx.tif": (lambda p: tifffile.imwrite(p, np.ones((5, 2, 5, 5), np.float32), imagej=True,
                                                   metadata={"axes": "ZCYX"}),
                        ["axes ZCYX", "a PSF must be one 2D or 3D stack (one channel, one time point)"]),
        "psfhuge.tif": (lambda p: tifffile.imwrite(p, np.full((5, 5, 5), 1e300)),
                        ["beyond the float32 range", "rescale the PSF"]),
        "psfheader.tif": (lambda p: Path(p).write_bytes(b"II*\x00garbage"),
                          ["holds no image"]),
    }


@pytest.mark.parametrize("name", list(_bad_psfs()))
def test_a_bad_psf_file_is_named_as_the_psf(tmp_path, monkeypatch, capsys, name):
    """A PSF file that could not be read was called an image ("image psf4d.tif has 4 non-singleton
    dimensions ...: pick one channel and time point first"), with the image's fix. Each refusal names
    the PSF and gives a PSF's fix, in one line, exit 2, nothing written and the files left as they
    were; the same file read as an image keeps the image's wording."""
    from cli_helpers import assert_one_line_error, run
    from deconv3d.io import read_psf

    monkeypatch.chdir(tmp_path)
    make, words = _bad_psfs()[name]
    make(name)
    write_tiff("img.tif", np.ones((8, 16, 16), np.float32), voxel_size=(0.3, 0.1, 0.1))
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = run(["deconvolve", "img.tif", "--psf", name, "-o", "out.tif", "--iterations", 1], capsys)
    assert_one_line_error(code, err, *words)
    assert err.startswith(f"deconv3d: error: PSF {name} ") and "image " + name not in err, err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(InputError, match=f"^PSF {name} "):
        read_psf(name)
    with pytest.raises(InputError, match=f"^(image )?{name} ") as raised:
        read_image(name)
    assert "PSF" not in str(raised.value)


@pytest.mark.parametrize("command", ["deconvolve-zarr", "batch", "batch-config", "train"])
def test_every_command_names_a_bad_psf_file_as_the_psf(tmp_path, monkeypatch, capsys, command):
    """The PSF given to the chunked path, to a batch (by --psf or the config's psf = ...) or to train
    is refused as a PSF too, before anything is written."""
    from cli_helpers import assert_one_line_error, run

    monkeypatch.chdir(tmp_path)
    os.mkdir("in")
    write_tiff("in/img.tif", np.ones((8, 16, 16), np.float32), voxel_size=(0.3, 0.1, 0.1))
    tifffile.imwrite("psf4d.tif", np.ones((2, 5, 5, 5), np.float32))
    Path("batch.toml").write_text('psf = "psf4d.tif"\n')
    argv = {"deconvolve-zarr": ["deconvolve", "in/img.tif", "--psf", "psf4d.tif", "-o", "out.zarr"],
            "batch": ["batch", "in", "--psf", "psf4d.tif", "-o", "out"],
            "batch-config": ["batch", "in", "--config", "batch.toml", "-o", "out"],
            "train": ["train", "in/img.tif", "--psf", "psf4d.tif", "-o", "out.ckpt", "--steps", 1]}[command]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "a PSF must be one 2D or 3D stack (one channel, one time point)")
    assert err.startswith("deconv3d: error: PSF psf4d.tif has 4 non-singleton dimensions"), err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
