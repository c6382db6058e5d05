"""A batch prepares each PSF once for its files of one shape and voxel size (load_psf_for's cache)."""

import json
import os
import time

import numpy as np
import pytest
from cli_helpers import run

import deconv3d.psf as psf_module
from deconv3d.io import write_tiff
from deconv3d.pipeline import prepared_psfs
from deconv3d.pipeline.settings import make_settings
from deconv3d.psf import prepare_psf

from .conftest import blurred_beads, gaussian_psf


@pytest.fixture
def counted(monkeypatch):
    """The calls to generate_psf, prepare_psf and read_psf, with the cache emptied first."""
    import deconv3d.io as io

    monkeypatch.setattr(prepared_psfs, "_PSF_CACHE", {})
    calls = {"generate_psf": 0, "prepare_psf": 0, "read_psf": 0}
    for module, name in ((psf_module, "generate_psf"), (psf_module, "prepare_psf"), (io, "read_psf")):
        real = getattr(module, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, counting)
    return calls


def test_a_batch_generates_and_prepares_a_psf_once_per_voxel_size(tmp_path, capsys, counted):
    """A batch generated and prepared the same PSF again for every file (0.13 + 0.41 s a file for a
    vectorial PSF at 64 x 512 x 512): three files of one voxel size now share one, a fourth of
    another voxel size gets its own."""
    psf = gaussian_psf((5, 5, 5))
    (tmp_path / "in").mkdir()
    for i, voxel in enumerate([(0.3, 0.1, 0.1)] * 3 + [(0.4, 0.12, 0.12)]):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((8, 16, 16), psf, seed=i), voxel_size=voxel)
    code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf-model", "gaussian", "--na", "1.2",
                        "--wavelength", "0.52", "--iterations", "2"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())["files"]
    assert [r["status"] for r in report] == ["done"] * 4
    assert counted["generate_psf"] == 2 and counted["prepare_psf"] == 2


@pytest.fixture
def sharing():
    """As in a batch: prepared PSFs are kept only while one runs."""
    with prepared_psfs.sharing_prepared_psfs():
        yield


def test_a_psf_file_is_read_again_once_changed_and_its_warnings_come_each_time(tmp_path, counted, sharing):
    path = tmp_path / "psf.tif"
    first, second = gaussian_psf((7, 7, 7), (0.6, 0.6, 0.6)), gaussian_psf((7, 9, 9), (0.7, 0.8, 0.8))
    first = first + 0.05 * first.max()  # a flat floor, which prepare_psf warns of
    second = second + 0.05 * second.max()
    write_tiff(path, first, voxel_size=(0.3, 0.1, 0.1))
    settings = make_settings({"psf": str(path)})
    with pytest.warns(RuntimeWarning, match="flat background") as shown:
        a = prepared_psfs.load_psf_for(settings, (8, 16, 16), (0.3, 0.1, 0.1))
        a[...] = 0  # the caller's copy: the one kept is unchanged
        b = prepared_psfs.load_psf_for(settings, (8, 16, 16), (0.3, 0.1, 0.1))
    assert counted["read_psf"] == 1 and counted["prepare_psf"] == 1
    assert sum("flat background" in str(w.message) for w in shown) == 2  # one per file, as before
    with pytest.warns(RuntimeWarning, match="flat background"):
        expected = prepare_psf(first, (8, 16, 16), (0.3, 0.1, 0.1), (0.3, 0.1, 0.1))
    np.testing.assert_array_equal(b, expected)
    write_tiff(path, second, voxel_size=(0.3, 0.1, 0.1))
    os.utime(path, ns=(0, 10**9))  # another modification time whatever the clock's resolution
    with pytest.warns(RuntimeWarning, match="flat background"):
        c = prepared_psfs.load_psf_for(settings, (8, 16, 16), (0.3, 0.1, 0.1))
        expected = prepare_psf(second, (8, 16, 16), (0.3, 0.1, 0.1), (0.3, 0.1, 0.1))
    assert counted["read_psf"] == 2 and c.shape == expected.shape
    np.testing.assert_array_equal(c, expected)
    for i in range(prepared_psfs.PSF_CACHE_ENTRIES + 2):  # bounded: the oldest go
        prepared_psfs.load_psf_for(make_settings({"psf_model": "gaussian", "na": 1.2, "wavelength": 0.52}),
                           (8, 16 + 2 * i, 16), (0.3, 0.1, 0.1))
    assert len(prepared_psfs._PSF_CACHE) == prepared_psfs.PSF_CACHE_ENTRIES


def test_every_file_s_row_lists_its_prepared_psf_s_warnings(tmp_path, capsys, counted):
    """The PSF is prepared once, but each file's row lists what preparing it warned of, as before."""
    psf = gaussian_psf((7, 7, 7), (0.6, 0.6, 0.6))
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((8, 16, 16), psf, seed=i), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf + 0.05 * psf.max(), voxel_size=(0.3, 0.1, 0.1))
    code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / "out", "--psf", tmp_path / "psf.tif",
                        "--iterations", "2"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())["files"]
    assert [any("flat background" in w for w in r["warnings"]) for r in report] == [True, True], report
    assert counted["prepare_psf"] == 1


def test_a_psf_file_s_z_step_warning_goes_into_the_run_s_list_each_time_it_is_handed_out(tmp_path, counted, sharing):
    """A PSF file without a z step is warned of into the run's list of warnings (a chunked run prints
    them with its others, as in memory), not issued at once; a kept PSF's line comes again for each run."""
    import warnings

    import tifffile

    tifffile.imwrite(tmp_path / "psf.tif", gaussian_psf((7, 7, 7), (0.6, 0.6, 0.6)), imagej=True,
                     resolution=(10, 10), metadata={"unit": "um", "axes": "ZYX"})
    settings = make_settings({"psf": str(tmp_path / "psf.tif")})
    for _ in range(2):  # the second is handed the kept PSF
        notes = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepared_psfs.load_psfs_for(settings, (8, 16, 16), (1.0, 0.1, 0.1), warnings=notes)
        assert [str(w.message) for w in caught] == [] and len(notes) == 1, (caught, notes)
        assert notes[0].startswith(f"deconv3d: warning: the PSF file {tmp_path / 'psf.tif'} records no z step"), notes
    assert counted["prepare_psf"] == 1


def test_a_psf_file_copied_over_with_its_modification_time_is_read_again(tmp_path, counted, sharing):
    """``cp -p b.tif psf.tif`` over a file of the same size and modification time kept the inode,
    size and mtime: the old PSF was served (and recorded as the new one). The change time moves."""
    narrow, wide = gaussian_psf((7, 9, 9), (0.6, 0.6, 0.6)), gaussian_psf((7, 9, 9), (0.9, 1.2, 1.2))
    path, other = tmp_path / "psf.tif", tmp_path / "b.tif"
    write_tiff(path, narrow, voxel_size=(0.3, 0.1, 0.1))
    write_tiff(other, wide, voxel_size=(0.3, 0.1, 0.1))
    assert path.stat().st_size == other.stat().st_size
    os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
    settings = make_settings({"psf": str(path)})
    first = prepared_psfs.load_psf_for(settings, (8, 16, 16), (0.3, 0.1, 0.1))
    before = path.stat()
    with open(other, "rb") as source, open(path, "r+b") as target:  # cp -p: in place, then the times
        target.write(source.read())
    os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
    for _ in range(200):  # (file times follow a coarse clock: until the change time has moved)
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.005)
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
    after = path.stat()
    assert (before.st_ino, before.st_size, before.st_mtime_ns) == (after.st_ino, after.st_size, after.st_mtime_ns)
    second = prepared_psfs.load_psf_for(settings, (8, 16, 16), (0.3, 0.1, 0.1))
    np.testing.assert_array_equal(first, prepare_psf(narrow, (8, 16, 16), (0.3, 0.1, 0.1), (0.3, 0.1, 0.1)))
    np.testing.assert_array_equal(second, prepare_psf(wide, (8, 16, 16), (0.3, 0.1, 0.1), (0.3, 0.1, 0.1)))
    assert counted["read_psf"] == 2


def test_prepared_psfs_are_kept_while_a_batch_runs_and_dropped_when_it_ends(tmp_path, capsys, counted):
    """The cache outlived its batch (four 64 x 512 x 512 PSFs: 267 MB held by a long-lived process):
    two batches in one process each prepare their PSF once, and leave nothing kept."""
    psf = gaussian_psf((5, 5, 5))
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((8, 16, 16), psf, seed=i), voxel_size=(0.3, 0.1, 0.1))
    for n in (1, 2):
        code, _, err = run(["batch", tmp_path / "in", "-o", tmp_path / f"out{n}", "--psf-model", "gaussian", "--na",
                            "1.2", "--wavelength", "0.52", "--iterations", "2"], capsys)
        assert code == 0, err
        assert counted["prepare_psf"] == n  # once for the batch's two files
        assert prepared_psfs._PSF_CACHE == {}
    prepared_psfs.load_psf_for(make_settings({"psf_model": "gaussian", "na": 1.2, "wavelength": 0.52}), (8, 16, 16),
                       (0.3, 0.1, 0.1))  # outside a batch: nothing kept
    assert prepared_psfs._PSF_CACHE == {} and counted["prepare_psf"] == 3


def test_a_kept_psf_s_warnings_come_again_in_their_own_category(tmp_path, counted, sharing, monkeypatch):
    """The warnings of a kept PSF's preparation were issued again, for each later file, as plain
    RuntimeWarnings: a Deconv3dWarning (an OptionWarning, with its command-line advice) came the second
    time in another category, which filters and the command line treat differently. Each comes again
    as it came first: category, text and advice."""
    import warnings

    from deconv3d.errors import OptionWarning, warn

    real = prepared_psfs._prepared_psf

    def preparing_with_advice(*args):  # as if preparing it assumed a voxel size, with its advice
        warn("deconv3d: warning: the PSF is taken as sampled at 0.3 0.1 0.1 µm (pass --voxel-size to set it)")
        return real(*args)

    monkeypatch.setattr(prepared_psfs, "_prepared_psf", preparing_with_advice)
    path = tmp_path / "psf.tif"
    psf = gaussian_psf((7, 7, 7), (0.6, 0.6, 0.6))
    write_tiff(path, psf + 0.05 * psf.max(), voxel_size=(0.3, 0.1, 0.1))  # a flat floor: a RuntimeWarning
    settings = make_settings({"psf": str(path)})
    shown = []
    for _ in range(2):  # two files of one shape and voxel size: the second is handed the kept PSF
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepared_psfs.load_psf_for(settings, (8, 16, 16), (0.3, 0.1, 0.1))
        shown.append([(type(w.message), str(w.message), getattr(w.message, "command_line", None)) for w in caught])
    assert counted["prepare_psf"] == 1
    assert [category for category, _, _ in shown[0]] == [OptionWarning, RuntimeWarning], shown[0]
    assert "voxel_size" in shown[0][0][1] and "--voxel-size" in shown[0][0][2]
    assert "flat background" in shown[0][1][1]
    assert shown[1] == shown[0]


def test_kept_psfs_are_bounded_by_bytes_too(counted, sharing, monkeypatch):
    """Up to four large prepared PSFs were held until the batch ended: at most PSF_CACHE_BYTES of
    them are kept, the least recently used dropped first, the newest kept whatever its size."""
    settings = make_settings({"psf_model": "gaussian", "na": 1.2, "wavelength": 0.52})
    shapes = [(8, 16 + 2 * i, 16) for i in range(5)]  # one PSF each, 7 x 7 x 7 float32: 1372 bytes
    size = prepared_psfs.load_psf_for(settings, shapes[0], (0.3, 0.1, 0.1)).nbytes
    assert size == 7 * 7 * 7 * 4
    monkeypatch.setattr(prepared_psfs, "PSF_CACHE_BYTES", 2 * size + size // 2)  # room for two
    for shape in shapes[1:4]:
        prepared_psfs.load_psf_for(settings, shape, (0.3, 0.1, 0.1))
    assert [key[1] for key in prepared_psfs._PSF_CACHE] == shapes[2:4]  # the two newest
    assert counted["prepare_psf"] == 4
    prepared_psfs.load_psf_for(settings, shapes[2], (0.3, 0.1, 0.1))  # kept: not prepared again, now the newest
    prepared_psfs.load_psf_for(settings, shapes[0], (0.3, 0.1, 0.1))  # dropped: prepared again
    assert counted["prepare_psf"] == 5
    assert [key[1] for key in prepared_psfs._PSF_CACHE] == [shapes[2], shapes[0]]
    monkeypatch.setattr(prepared_psfs, "PSF_CACHE_BYTES", size - 1)  # none fits: the newest is kept alone
    prepared_psfs.load_psf_for(settings, shapes[4], (0.3, 0.1, 0.1))
    assert [key[1] for key in prepared_psfs._PSF_CACHE] == [shapes[4]]
    prepared_psfs.load_psf_for(settings, shapes[4], (0.3, 0.1, 0.1))
    assert counted["prepare_psf"] == 6
