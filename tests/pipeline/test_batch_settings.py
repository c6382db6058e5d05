"""A batch's settings: which of them its completion records hold, what it warns about, and its
TOML configuration file."""

import dataclasses
import hashlib
import json
import os

import pytest
from cli_helpers import assert_one_line_error, run

from deconv3d.cli import main
from deconv3d.errors import InputError
from deconv3d.io import write_tiff
from deconv3d.pipeline.batch_config import WINDOWS_PATHS, load_config
from deconv3d.pipeline.settings import Settings, make_settings

from .conftest import blurred_beads, gaussian_psf

# Which methods each setting changes the output of (the others ignore it).
APPLIES = {"iterations": ("rl", "rl-tv"), "accelerate": ("rl", "rl-tv"), "boundary": ("rl", "rl-tv", "wiener"),
           "tv_weight": ("rl-tv",), "balance": ("wiener",), "tta": ("ssl",), "band_limit": ("ssl",)}
OTHER_VALUES = {"iterations": 5, "accelerate": False, "boundary": "zero", "tv_weight": 0.01, "balance": 0.1,
                "tta": True, "band_limit": 0.1}


@pytest.fixture
def folder(tmp_path):
    psf = gaussian_psf((5, 5, 5))
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "in" / f"img{i}.tif", blurred_beads((8, 16, 16), psf, seed=i), voxel_size=(0.3, 0.1, 0.1))
    write_tiff(tmp_path / "psf.tif", psf, voxel_size=(0.3, 0.1, 0.1))
    return tmp_path


def statuses(out):
    return [r["status"] for r in json.loads((out / "batch_report.json").read_text())["files"]]


@pytest.mark.parametrize("method", ["rl", "rl-tv", "wiener"])
def test_settings_the_method_ignores_are_not_in_the_fingerprint(folder, method):
    """--iterations 5 with --method wiener redid every finished file of a wiener batch. The records
    written before (the ignored settings at their defaults) must still match."""
    import torch

    from deconv3d.omezarr import file_sha256

    base = {"psf": str(folder / "psf.tif"), "method": method}
    settings = make_settings(base)
    before = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in ("pattern", "train_steps", "seed", "amp", "saturation")}  # (the last three added later)
    before.update(device="cuda" if torch.cuda.is_available() else "cpu", psf=[file_sha256(folder / "psf.tif")])
    if method == "rl-tv":  # the TV term's rule: RL-TV batches finished before it changed are redone once
        before["tv_differences"] = "symmetric"
    if method == "wiener":  # its gain at zero frequency: Wiener batches finished before acf0a16 are redone once
        before["wiener_dc_gain"] = "unit"
        before["wiener_mirror"] = "2x-reach"  # its mirror's depth: batches finished before the rule are redone once
        before["wiener_inner_mirror"] = "psf-size"  # its blocks' inner faces' mirror: likewise
        before["boundary"] = "bertero"  # its own, reflect, as it was hashed while Wiener ignored the boundary
    if method != "wiener":  # accelerated RL's least step: batches finished before it had one are redone once
        before["acceleration_floor"] = 0.65  # (20 iterations: from the third on)
    assert settings.fingerprint() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    for key, value in OTHER_VALUES.items():
        changed = make_settings({**base, key: value}).fingerprint() != settings.fingerprint()
        assert changed is (method in APPLIES[key]), key
    for output_format, changes in (("tif", False), ("zarr", True)):  # pyramid levels: OME-Zarr outputs only
        plain = make_settings({**base, "output_format": output_format})
        assert (make_settings({**base, "output_format": output_format, "pyramid_levels": 2}).fingerprint()
                != plain.fingerprint()) is changes


@pytest.mark.parametrize("base, follows", [
    ({"method": "rl-tv"}, True), ({"method": "ssl", "train_steps": 5}, True),
    ({"method": "rl"}, False), ({"method": "wiener"}, False)])
def test_the_fingerprint_follows_the_tv_rule_where_it_changes_the_output(folder, monkeypatch, base, follows):
    """RL-TV's |∇u| changed from forward to symmetric differences (21fbe06), and with it every
    rl-tv output and a trained network's RL-TV reference; a resumed batch kept the files the old
    rule made as finished (0.45 % of the peak from a fresh run) beside new ones."""
    from deconv3d.classical import _iterate

    settings = make_settings({"psf": str(folder / "psf.tif"), **base})
    now = settings.finished_fingerprints()
    monkeypatch.setattr(_iterate, "TV_DIFFERENCES", tuple(reversed(_iterate.TV_DIFFERENCES)))
    assert (not set(now) & set(settings.finished_fingerprints())) is follows


def test_a_wiener_batch_finished_before_the_unit_dc_gain_is_redone(folder, capsys):
    """Wiener's filter gained the factor 1 + balance at zero frequency (acf0a16); a batch finished before
    kept its outputs as finished, 1 / (1 + balance) of the new ones' level, beside new ones (5 % at 0.05)."""
    import types

    from deconv3d.pipeline import settings_fingerprint

    settings = make_settings({"psf": str(folder / "psf.tif"), "method": "wiener", "balance": 0.05})
    fields = []  # what the fingerprint hashes, less the gain: the hash the earlier versions wrote
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings_fingerprint, "json",
                      types.SimpleNamespace(dumps=lambda f, **k: fields.append(f) or "{}"))
        settings.fingerprint()
    assert fields[0].pop("wiener_dc_gain") == "unit"
    older = hashlib.sha256(json.dumps(fields[0], sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert older not in settings.finished_fingerprints()


def test_a_wiener_batch_redoes_its_files_for_the_zero_boundary_only(folder, capsys):
    """Wiener ran with the reflect boundary whatever the batch's boundary said; now it takes reflect (its
    default) or zero. A batch finished with the default is not redone by the same command with --boundary
    reflect, and is by one with --boundary zero; bertero, RL's, is refused in one line."""
    base = ["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--method", "wiener",
            "--device", "cpu"]
    for options, expected in (([], ["done", "done"]), (["--boundary", "reflect"], ["skipped", "skipped"]),
                              (["--boundary", "zero"], ["done", "done"])):
        code, _, err = run([*base, *options], capsys)
        assert code == 0 and statuses(folder / "out") == expected, (options, err)
    code, _, err = run([*base, "--boundary", "bertero"], capsys)
    assert_one_line_error(code, err, "boundary 'bertero' is Richardson-Lucy's, not Wiener's", "reflect", "zero")
    import types

    from deconv3d.pipeline import settings_fingerprint

    fields = []  # every hash of a default Wiener batch holds the boundary as the versions that ignored it did
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings_fingerprint, "json",
                      types.SimpleNamespace(dumps=lambda f, **k: fields.append(f) or "{}"))
        make_settings({"psf": str(folder / "psf.tif"), "method": "wiener"}).finished_fingerprints()
    assert len(fields) > 1 and all(f["boundary"] == "bertero" for f in fields), fields
    (folder / "wiener.toml").write_text('method = "wiener"\nboundary = "bertero"\n')
    with pytest.raises(InputError, match="batch configuration: boundary 'bertero' is Richardson-Lucy's"):
        make_settings({"psf": str(folder / "psf.tif"), **load_config(folder / "wiener.toml")})


def test_settings_made_in_python_refuse_rl_s_boundary_for_wiener_as_a_config_does(folder):
    """Settings(method="wiener", boundary="bertero") ran with the reflect boundary without a word, where
    make_settings (a config, the command line) refuses it: the same line now. Given no boundary, Wiener's
    settings take reflect (a config without one, as the versions before wrote them, still loads) and the
    others RL's bertero, which they still hash as before."""
    psf = str(folder / "psf.tif")
    expected = ("batch configuration: boundary 'bertero' is Richardson-Lucy's, not Wiener's: Wiener takes "
                "boundary reflect (the default) or zero")
    for make in (lambda values: Settings(**values), make_settings):
        with pytest.raises(InputError) as error:
            make({"method": "wiener", "psf": psf, "boundary": "bertero"})
        assert str(error.value) == expected
    with pytest.raises(InputError, match="^--boundary 'bertero' is Richardson-Lucy's"):  # (deconvolve's options)
        make_settings({"method": "wiener", "psf": psf, "boundary": "bertero"}, options=True)
    (folder / "wiener.toml").write_text('method = "wiener"\nbalance = 0.01\n')
    assert make_settings({"psf": psf, **load_config(folder / "wiener.toml")}).boundary == "reflect"
    assert Settings(method="wiener", psf=psf).boundary == "reflect"
    rl = Settings(psf=psf)
    assert rl.boundary == "bertero" and Settings(psf=psf, boundary="bertero").fingerprint() == rl.fingerprint()
    assert dataclasses.replace(rl, method="wiener").boundary == "reflect"  # (RL's default is not a boundary given)


@pytest.mark.parametrize("boundary", ["Zero", "periodic", "mirror"])
def test_a_wiener_boundary_that_is_no_boundary_is_not_called_rl_s(folder, boundary):
    """A boundary Wiener's runs do not take was refused as Richardson-Lucy's ("boundary 'Zero' is
    Richardson-Lucy's, not Wiener's"), which only bertero is (found by the review of this stop's diff)."""
    from deconv3d.pipeline import WienerBlock

    expected = f"boundary {boundary!r} is not one a Wiener run takes: give boundary reflect (the default) or zero"
    with pytest.raises(InputError) as error:
        make_settings({"psf": str(folder / "psf.tif"), "method": "wiener", "boundary": boundary})
    assert str(error.value) == f"batch configuration: {expected}"
    with pytest.raises(InputError) as error:
        WienerBlock(gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0)), boundary=boundary)
    assert str(error.value) == expected


@pytest.mark.parametrize("base, follows", [({"method": "wiener"}, True), ({"method": "rl"}, False),
                                           ({"method": "rl-tv"}, False), ({"method": "ssl", "train_steps": 5}, False)])
def test_the_fingerprint_follows_wiener_s_mirror_rule(folder, monkeypatch, base, follows):
    """Wiener's reflect boundary mirrored by the PSF's size, then by twice the filter's reach
    (MIRROR_DEPTH), which changed its outputs near the faces (by up to 3e-2 of the peak at a balance of
    1e-3); a resumed batch would have kept the files made the first way as finished beside new ones.
    Other methods keep their records."""
    import importlib

    settings = make_settings({"psf": str(folder / "psf.tif"), **base})
    now = settings.finished_fingerprints()
    monkeypatch.setattr(importlib.import_module("deconv3d.classical.wiener"), "MIRROR_DEPTH", "psf")
    assert (not set(now) & set(settings.finished_fingerprints())) is follows


@pytest.mark.parametrize("base, follows", [({"method": "wiener"}, True), ({"method": "wiener", "boundary": "zero"}, False),
                                           ({"method": "rl"}, False), ({"method": "rl-tv"}, False),
                                           ({"method": "ssl", "train_steps": 5}, False)])
def test_the_fingerprint_follows_how_deep_wiener_blocks_mirror_their_inner_faces(folder, base, follows):
    """Wiener's blocks mirrored their faces inside the volume twice the filter's reach deep, then the PSF's
    size deep (ebc6823), which changes chunked outputs; a resumed batch kept the files made the first way as
    finished beside new ones. The hashes the earlier versions wrote (the fields less the inner mirror's rule)
    no longer match a Wiener batch with the reflect boundary; the zero boundary (which pads those faces as
    before) and other methods keep their records."""
    import types

    from deconv3d.pipeline import settings_fingerprint

    settings = make_settings({"psf": str(folder / "psf.tif"), **base})
    fields = []  # what every hash of these settings holds
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings_fingerprint, "json",
                      types.SimpleNamespace(dumps=lambda f, **k: fields.append(f) or "{}"))
        settings.finished_fingerprints()
    rules = [f.pop("wiener_inner_mirror", None) for f in fields]
    assert rules == (["psf-size"] if follows else [None]) * len(fields)
    older = {hashlib.sha256(json.dumps(f, sort_keys=True, default=str).encode()).hexdigest()[:16] for f in fields}
    now = set(settings.finished_fingerprints())
    assert (not older & now) if follows else older == now


@pytest.mark.parametrize("base, follows", [({"method": "rl", "saturation": 4095}, True),
                                           ({"method": "rl-tv", "saturation": "auto"}, True),
                                           ({"method": "rl"}, False), ({"method": "rl-tv", "saturation": "none"}, False)])
def test_the_fingerprint_follows_how_saturated_voxels_are_fitted(folder, monkeypatch, base, follows):
    """--saturation fitted the voxels it flags by leaving them out of the fit (weights 0), then as clipped
    (lower bounds), which changed every such output; a resumed batch would have kept the files made
    the first way as finished beside new ones. Runs without it keep their records."""
    from deconv3d.pipeline import settings_fingerprint

    settings = make_settings({"psf": str(folder / "psf.tif"), **base})
    now = settings.finished_fingerprints()
    monkeypatch.setattr(settings_fingerprint, "SATURATION_FIT", "left out")
    assert (not set(now) & set(settings.finished_fingerprints())) is follows


@pytest.mark.parametrize("base, follows", [({"method": "rl"}, True), ({"method": "rl-tv", "iterations": 3}, True),
                                           ({"method": "rl", "accelerate": False}, False), ({"method": "wiener"}, False),
                                           ({"method": "rl", "iterations": 2}, False)])
def test_the_fingerprint_follows_the_acceleration_floor(folder, monkeypatch, base, follows):
    """Accelerated RL's step got a floor (ALPHA_FLOOR), which changed every accelerated rl and rl-tv
    output of 3 iterations or more (RL extrapolates from the third); a resumed batch would have kept
    the files made without it as finished beside new ones."""
    from deconv3d.classical import _iterate

    settings = make_settings({"psf": str(folder / "psf.tif"), **base})
    now = settings.finished_fingerprints()
    monkeypatch.setattr(_iterate, "ALPHA_FLOOR", 0.0)
    assert (not set(now) & set(settings.finished_fingerprints())) is follows


def test_a_training_batch_finished_with_the_symmetric_rule_before_the_hash_held_it_is_skipped(folder, monkeypatch):
    """The versions from 21fbe06 to 9bb15de had RL-TV's symmetric TV term but not its rule in the
    fingerprint: their training ssl batches were redone, with the same outputs. Their outputs'
    provenance names the rule of the network's reference; one that does not name it is redone."""
    import types

    from deconv3d.omezarr import file_sha256
    from deconv3d.pipeline import settings_fingerprint
    from deconv3d.pipeline.completion_records import input_state, is_finished

    settings = make_settings({"psf": str(folder / "psf.tif"), "method": "ssl", "train_steps": 1})
    fields = []  # what the fingerprint hashes, less the rule: the hash those versions wrote
    monkeypatch.setattr(settings_fingerprint, "json", types.SimpleNamespace(dumps=lambda f, **k: fields.append(f) or "{}"))
    settings.fingerprint()
    monkeypatch.undo()
    assert fields[0].pop("tv_differences") == "symmetric"
    older = hashlib.sha256(json.dumps(fields[0], sort_keys=True, default=str).encode()).hexdigest()[:16]
    source, output, record = folder / "in" / "img0.tif", folder / "img0.zarr", folder / "img0.tif.json"
    record.write_text(json.dumps({"input": str(source), "input_state": input_state(source), "settings": older,
                                  "input_sha256": file_sha256(source), "output": "img0.zarr"}))  # as they wrote it
    output.mkdir()
    for reference, finished in (({"iterations": 100, "tv_differences": "symmetric"}, True),
                                ({"iterations": 100}, False), (None, False)):  # before 21fbe06 recorded it
        meta = {"attributes": {"deconv3d": {"method": "ssl", "parameters": {"reference": reference}}}}
        (output / "zarr.json").write_text(json.dumps(meta))
        assert is_finished(source, output, record, settings.finished_fingerprints(),
                           symmetric_as=settings.fingerprints_without_tv_rule()) is finished, reference
    rl_tv = make_settings({"psf": str(folder / "psf.tif"), "method": "rl-tv"})  # its provenance does not say
    assert rl_tv.fingerprints_without_tv_rule() == () and older not in rl_tv.finished_fingerprints()


def test_a_batch_warns_about_options_its_method_ignores_and_skips_what_they_do_not_change(folder, capsys):
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--method", "wiener"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "warning" not in err, err
    code, _, err = run([*argv, "--iterations", 5, "--tv-weight", 0.01, "--band-limit", 0.1], capsys)
    assert code == 0 and statuses(out) == ["skipped", "skipped"], err
    assert ("deconv3d: warning: --iterations, --tv-weight and --band-limit do not apply to --method "
            "wiener; ignored") in err.splitlines()
    (folder / "batch.toml").write_text('method = "wiener"\niterations = 7\n', encoding="utf-8")  # from a config too
    code, _, err = run(["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--config",
                        folder / "batch.toml"], capsys)
    assert code == 0 and statuses(out) == ["skipped", "skipped"], err
    assert "deconv3d: warning: --iterations does not apply to --method wiener; ignored" in err.splitlines()
    code, _, err = run([*argv, "--balance", 0.01], capsys)  # a setting wiener reads redoes the files
    assert code == 0 and statuses(out) == ["done", "done"] and "warning" not in err, err
    assert os.path.isdir(out / "img0.zarr")


def test_a_batch_on_a_running_scheduler_warns_that_workers_is_ignored(folder, capsys, monkeypatch):
    """--workers sizes a cluster the batch starts; a scheduler's address runs the batch on that cluster's own
    workers, and --workers went unused without a word. (The connection is replaced: the batch runs on threads.)"""
    import contextlib

    from deconv3d.pipeline import cluster

    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    asked = []

    @contextlib.contextmanager
    def connected(spec, workers=None, gpus=0):
        asked.append(spec)
        yield None

    monkeypatch.setattr(cluster, "scheduler_client", connected)
    out, address = folder / "out", "tcp://127.0.0.1:8786"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--method", "wiener"]
    code, _, err = run([*argv, "--scheduler", address, "--workers", 3], capsys)
    assert code == 0 and statuses(out) == ["done", "done"] and asked == [address], err
    warning = (f"--workers sizes a cluster the batch starts (--scheduler threads or processes), and the scheduler "
               f"{address} runs it on its own cluster's workers; ignored")
    assert [line for line in err.splitlines() if "warning" in line] == [f"deconv3d: warning: {warning}"], err
    (folder / "batch.toml").write_text(f'scheduler = "{address}"\nworkers = 3\n', encoding="utf-8")
    code, _, err = run([*argv, "--config", folder / "batch.toml"], capsys)  # from a config: named as its key
    assert code == 0 and f"deconv3d: warning: {warning.replace('--workers', 'workers', 1)}" in err.splitlines(), err
    for scheduler in ([], ["--scheduler", address]):  # --workers with threads, or no --workers: no warning
        code, _, err = run([*argv, *scheduler, *([] if scheduler else ["--workers", 2])], capsys)
        assert code == 0 and "warning" not in err, err


def test_config_paths_are_the_config_folder_s_and_tilde_is_home(tmp_path, monkeypatch, capsys):
    """A TOML file has no shell to expand ~, and its relative paths are not the working directory's
    (as --psf's are): both are said in batch --help."""
    home, configs = tmp_path / "home", tmp_path / "configs"
    home.mkdir()
    configs.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (configs / "batch.toml").write_text('psf = ["~/a.tif", "b.tif"]\nmodel = "~/m.ckpt"\n', encoding="utf-8")
    config = load_config(configs / "batch.toml")
    assert config["psf"] == (str(home / "a.tif"), str(configs / "b.tif")) and config["model"] == str(home / "m.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and "relative to the config file's folder" in help_text


@pytest.mark.parametrize("name, home_known", [("~nosuchuser-deconv3d/psf.tif", True), ("~/psf.tif", False)])
def test_a_tilde_with_no_home_is_a_one_line_error(folder, monkeypatch, capsys, name, home_known):
    """A ~user with no such user, or a ~ with HOME unset and no passwd entry (a container's uid),
    made Path.expanduser raise RuntimeError: "internal error", exit 1."""
    import pwd

    if not home_known:
        monkeypatch.delenv("HOME", raising=False)

        def no_entry(uid):
            raise KeyError(uid)
        monkeypatch.setattr(pwd, "getpwuid", no_entry)
    (folder / "batch.toml").write_text(f'psf = "{name}"\n', encoding="utf-8")
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--config", folder / "batch.toml"], capsys)
    assert_one_line_error(code, err, "batch.toml", f"psf = '{name}'", "not found", "give the full path")
    assert not (folder / "out").exists()


def test_a_config_that_cannot_be_read_gets_a_readers_hint(folder, monkeypatch, capsys):
    """A config of mode 000 said "Permission denied: check free disk space and permissions" (the
    hint for a failed write). As root every file is readable, so the refusal is simulated."""
    from pathlib import Path

    config = folder / "batch.toml"
    config.write_text('method = "wiener"\n', encoding="utf-8")
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == config:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "read_text", read_text)
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--config", config], capsys)
    assert_one_line_error(code, err, f"cannot read config {config}: Permission denied", "read access")
    assert "disk space" not in err and not (folder / "out").exists()


def test_a_config_saved_with_a_byte_order_mark_is_read(folder):
    """Windows Notepad's "UTF-8 with BOM" was refused: "Invalid statement (at line 1, column 1)"."""
    (folder / "batch.toml").write_text('method = "wiener"\npsf = "psf.tif"\n', encoding="utf-8-sig")
    assert (folder / "batch.toml").read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_config(folder / "batch.toml") == {"method": "wiener", "psf": str(folder / "psf.tif")}


@pytest.mark.parametrize("line, words", [
    (r'psf = "C:\Users\me\psf.tif"', ["Invalid hex value (at line 1", "single quotes", "forward slashes"]),
    (r'psf = "D:\new\beads\psf.tif"', ["Unescaped '\\' in a string", "single quotes", "forward slashes"]),
    # TOML reads \t, \n and \f as control characters: "not found: C:<tab>emp" came over two lines
    (r'psf = "C:\temp\new\file.tif"', [r"psf = 'C:\temp\new\x0cile.tif' holds a control character",
                                       "('C:\\data\\psf.tif')", '("C:/data/psf.tif")']),
    (r'model = ["C:/m/a.ckpt", "C:\temp\b.ckpt"]', [r"model = 'C:\temp\x08.ckpt'", "single quotes"]),
])
def test_a_windows_path_in_double_quotes_is_refused_with_the_quoting_to_use(folder, capsys, line, words):
    r"""``psf = "C:\Users\me\psf.tif"`` was refused with "Invalid hex value ...: fix the TOML syntax",
    which does not say that the backslashes are the trouble; ``"C:\temp\new\file.tif"`` was read
    as control characters and its "PSF file not found" error spanned two lines."""
    (folder / "batch.toml").write_text(line + "\n", encoding="utf-8")
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--config", folder / "batch.toml"], capsys)
    assert_one_line_error(code, err, *words)
    assert "fix the TOML syntax" not in err and not (folder / "out").exists()


def test_quoting_that_is_no_windows_path_keeps_its_meaning(folder):
    """Single quotes keep backslashes; a file whose name holds a tab is taken; a TOML error on a line
    without a backslash keeps the plain syntax hint."""
    (folder / "a\tb.tif").write_bytes(b"")
    (folder / "batch.toml").write_text("psf = 'C:\\Users\\me\\psf.tif'\nmodel = \"a\\tb.tif\"\n", encoding="utf-8")
    config = load_config(folder / "batch.toml")
    assert config["psf"].endswith("C:\\Users\\me\\psf.tif") and config["model"] == str(folder / "a\tb.tif")
    (folder / "batch.toml").write_text('method = "rl\n', encoding="utf-8")
    with pytest.raises(InputError, match="fix the TOML syntax$"):
        load_config(folder / "batch.toml")


@pytest.mark.parametrize("text, hint", [
    ('method = "rl"\nnotes = """\nsee C:\\Users\\me\n"""\n', True),  # a multi-line basic string: missed
    ('# note\u2028 more\npsf = "C:\\Users\\me\\psf.tif"\n', True),  # U+2028 moved splitlines' line 2: missed
    ('psf = "C:\\x', True),  # at the end of the document
    ("psf = ['C:\\Users', \"x\\y\"]\n", True),  # a basic string after a literal one
    ('method = "rl"  x # see C:\\data\n', False),  # the error is after the string: this matched from its quote
    ('method = "rl" \\\n', False),  # a backslash outside any string
    ('name = "a\\"b" x\n', False),  # an escaped quote, then an error outside the string
    ("psf = '''C:\\data\\psf.tif''' x\n", False),  # a multi-line literal string keeps its backslashes
    ('psf = ["C:\\", "D:\\psf.tif"]\n', True),  # a path ending in a backslash ran on into the next string
    ('psf = {a = "C:\\data\\", b = "x"}\n', True),  # ... in an inline table
    ('method = "rl"\ntitle = "He said \\"hi\\", then left" x\n', False),  # escaped quotes in text, then an error
    ('names = ["a \\"b\\", c", "d"] x\n', False),
    ("note = 'a\\\", b' x\n", False),  # a literal string keeps its backslash
    ('method = "rl" x  # e.g. \\"a\\", b\n', False),  # in a comment
    ('psf = ["C:\\", "D:\\psf.tif"]\nmethod = rl\n', True),  # another error further on
    ('title = "say \\"hi\\""\npsf = ["C:\\", "D:\\psf.tif"]\n', True),  # a right escaped quote before
    ('psf = [\n  "C:\\", "D:\\psf.tif"\n]\n', True),  # a list that closes on a later line
    ('psf = ["C:\\", "D:\\",\n "E:\\x.tif"]\n', True),
    ('notes = [\n  "say \\"#\\" to comment" "second"\n]\n', False),  # a missing comma: doubled, the "#" commented it out
], ids=["multi-line", "u2028", "end", "after-literal", "comment", "outside", "escaped-quote", "multi-line-literal",
        "list-ending-backslash", "table-ending-backslash", "escaped-quotes-in-text", "escaped-quotes-in-list",
        "literal-string", "in-comment", "another-error-after", "escaped-quote-before",
        "list-over-lines", "list-closed-later", "escaped-quote-then-hash"])
def test_the_windows_path_hint_is_given_where_the_error_lies_in_a_basic_string_with_a_backslash(folder, text,
                                                                                                  hint):
    """The hint was given by a regex over the error's line (from splitlines, which also splits at
    U+2028): from a closing quote to a later backslash it fired outside strings, and it missed a
    multi-line string's lines and any line after a comment holding U+2028."""
    (folder / "batch.toml").write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as error:
        load_config(folder / "batch.toml")
    assert str(error.value).endswith(WINDOWS_PATHS if hint else "fix the TOML syntax"), str(error.value)


@pytest.mark.parametrize("line, words", [
    ("voxel-size = 5", ["voxel_size needs 3 positive numbers", "[0.3, 0.1, 0.1]"]),  # was: 'int' has no len()
    ("chunks = 5", ["chunks needs 3 positive whole numbers", "[32, 256, 256]"]),
    ("pyramid-levels = true", ["pyramid_levels must be a whole number"]),  # each ran as 1
    ("band-limit = true", ["band_limit must be a number"]),
    ("tv-weight = true", ["tv_weight must be a number"]),
    ("balance = true", ["balance must be a number"]),
    ("na = true", ["na must be a number"]),
    ("ni = true", ["ni must be a number"]),
    ("depth = true", ["depth must be a number"]),
    ("wavelength = [0.5, true]", ["wavelength must be a number"]),
])
def test_config_values_of_the_wrong_kind_are_named_in_one_line(folder, capsys, line, words):
    (folder / "batch.toml").write_text(f'psf = "psf.tif"\n{line}\n', encoding="utf-8")
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--config", folder / "batch.toml"], capsys)
    assert_one_line_error(code, err, *words)
    assert not (folder / "out").exists()


def test_the_microscope_s_parameters_count_only_for_a_generated_psf(folder):
    """--ni 1.4 with a PSF file was warned about as ignored and still redid every finished file."""
    base = make_settings({"psf": str(folder / "psf.tif"), "method": "rl"})
    for key, value in (("na", 1.2), ("ni", 1.4), ("ns", 1.45), ("depth", 5.0), ("wavelength", 0.6)):
        assert make_settings({"psf": str(folder / "psf.tif"), "method": "rl", key: value}).fingerprint() \
            == base.fingerprint(), key
    generated = {"psf_model": "gibson-lanni", "na": 1.2, "wavelength": 0.52, "method": "rl"}
    for key, value in (("ni", 1.4), ("ns", 1.45), ("depth", 5.0), ("wavelength", 0.6)):
        assert make_settings({**generated, key: value}).fingerprint() != make_settings(generated).fingerprint(), key
    two = make_settings({"psf": str(folder / "psf.tif"), "method": "rl", "wavelength": [0.5, 0.6]})
    assert two.fingerprint() == base.fingerprint()  # (several no longer set the channel count beside a file)


def _counting_wavelengths(values: dict) -> str:
    """The fingerprint of the versions in which several wavelengths beside a PSF file set the
    channel count: the other ignored settings at their defaults, those wavelengths as given
    (rebuilt from their code; pinned to a hash they computed in the test below)."""
    import torch

    from deconv3d.omezarr import file_sha256

    settings = make_settings({"method": "rl", **values})
    fields = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in ("pattern", "train_steps", "seed", "amp", "saturation")}  # (those versions had no saturation)
    fields.update(na=None, ni=1.515, ns=1.33, depth=0.0, psf=[file_sha256(settings.psf)],
                  device=settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def test_records_that_counted_several_wavelengths_beside_a_psf_file_still_match(tmp_path):
    """Found by review: records of a config's psf with wavelength = [0.45, 0.65] (and na) matched
    neither the hash of this version (no optics) nor the legacy one (every optic as given), and
    the same command redid every file. af7e517d76582579 is what Settings.fingerprint() of those
    versions gave for these settings (na or not) and a PSF file of these bytes."""
    (tmp_path / "psf.tif").write_bytes(b"psf bytes\n")  # (only the file's bytes are hashed)
    given = {"psf": str(tmp_path / "psf.tif"), "wavelength": [0.45, 0.65], "iterations": 2, "device": "cpu"}
    assert _counting_wavelengths(given) == "af7e517d76582579"
    for values in (given, {**given, "na": 1.2}):
        settings = make_settings(values)
        assert "af7e517d76582579" in settings.finished_fingerprints()
        assert settings.finished_fingerprints()[0] == settings.fingerprint() != "af7e517d76582579"
    one = make_settings({**given, "wavelength": 0.45})  # one wavelength was left at its default
    assert one.finished_fingerprints() == (one.fingerprint(), one.fingerprint(legacy=True))


def _as_written_by_an_earlier_version(out, fingerprint: str) -> list:
    """Give the completion records and report rows of batch folder ``out`` another settings hash."""
    records = sorted((out / ".deconv3d-batch").glob("*.json"))
    for path in records:
        record = json.loads(path.read_text())
        record["settings"] = fingerprint
        path.write_text(json.dumps(record))
    report = json.loads((out / "batch_report.json").read_text())
    for row in report["files"]:
        row["settings"] = fingerprint
    (out / "batch_report.json").write_text(json.dumps(report))
    return records


def test_a_psf_option_over_a_config_s_optics_still_matches_their_records(folder, capsys):
    """Found by review: --psf on the command line now drops the config's optics with its
    psf-model; the versions before kept them, and their hash held the several wavelengths. Their
    records of the same command must still count as finished."""
    (folder / "cfg.toml").write_text('psf-model = "gaussian"\nna = 1.2\nwavelength = [0.45, 0.65]\niterations = 2\n')
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--config", folder / "cfg.toml", "--psf", folder / "psf.tif"]
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["done", "done"], err
    _as_written_by_an_earlier_version(out, _counting_wavelengths(
        {"psf": str(folder / "psf.tif"), "na": 1.2, "wavelength": [0.45, 0.65], "iterations": 2}))
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["skipped", "skipped"], err


def test_records_of_earlier_versions_with_an_ignored_setting_still_match_the_same_command(folder, capsys):
    """Earlier versions hashed an ignored setting as given: their records of 'wiener --iterations 5'
    would have been redone by the same command. Their hash is accepted too."""
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--method", "wiener", "--iterations", 5]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    settings = make_settings({"psf": str(folder / "psf.tif"), "method": "wiener", "iterations": 5})
    legacy = settings.fingerprint(legacy=True)
    assert legacy != settings.fingerprint()
    records = _as_written_by_an_earlier_version(out, legacy)
    assert len(records) == 2
    code, _, err = run([*argv, "--pattern", "img0.tif"], capsys)  # img1's earlier row is not called stale
    assert code == 0, err
    rows = json.loads((out / "batch_report.json").read_text())["files"]
    assert [r["status"] for r in rows] == ["skipped", "done"] and all("settings" not in r["reason"] for r in rows)
    assert all("equivalent_settings" not in r for r in rows)
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["skipped", "skipped"], err
    for path in records:
        record = json.loads(path.read_text())
        record["settings"] = "0123456789abcdef"  # any other settings: redone
        path.write_text(json.dumps(record))
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["done", "done"], err


def test_a_batch_names_an_ignored_option_given_at_its_default(folder, capsys):
    """Found by the options review: a batch compared the settings with their defaults too, so
    '--method wiener --iterations 20 --accelerate' (or iterations = 20 in its config) said nothing.
    A setting given, by an option or by the config, is named whatever its value."""
    (folder / "batch.toml").write_text('iterations = 20\n', encoding="utf-8")
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--method", "wiener",
                        "--accelerate", "--tv-weight", 0.002, "--config", folder / "batch.toml"], capsys)
    assert code == 0 and statuses(folder / "out") == ["done", "done"], err
    assert [line for line in err.splitlines() if "warning" in line] == [
        "deconv3d: warning: --iterations, --accelerate/--no-accelerate and --tv-weight do not apply to --method "
        "wiener; ignored"], err


#: The fingerprint that the code before the gaussian model refused ns (ee3e5fa^) wrote for GAUSSIAN_NS_CONFIG
#: (its batch run on that config, device cpu: no file or machine enters it). Method rl with 2 iterations: a
#: Wiener batch of that version is redone for the filter's gain at zero frequency since (its config's hash
#: there: d6b0bb4c99b75992), and an accelerated rl batch of 3 iterations or more for the step's floor
#: (with iterations = 7 the hash there was b667f0425da879df).
GAUSSIAN_NS_BEFORE = "7f37ad6305ea4a70"
GAUSSIAN_NS_CONFIG = ('psf-model = "gaussian"\nna = 1.2\nwavelength = 0.5\nmethod = "rl"\nns = 1.45\n'
                      'iterations = 2\ndevice = "cpu"\n')


def test_a_batch_finished_with_the_gaussian_model_and_ns_is_resumed_not_refused_or_redone(folder, capsys):
    """Found by review: once the gaussian model refused an ns other than 1.33, a batch config with
    psf-model = "gaussian" and ns = 1.45 that the versions before had finished was refused ("drop
    --ns", an option the config does not have), and dropping ns redid every file. The gaussian PSF
    does not read ns: it is warned about, named as given, counts at its default in the fingerprint,
    and the records written before still match the same config."""
    (folder / "cfg.toml").write_text(GAUSSIAN_NS_CONFIG)
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--config", folder / "cfg.toml"]
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["done", "done"], err
    assert ("deconv3d: warning: ns is not used by the gaussian PSF model, which has no sample refractive index; "
            "ignored") in err.splitlines()
    _as_written_by_an_earlier_version(out, GAUSSIAN_NS_BEFORE)
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["skipped", "skipped"], err
    code, _, err = run([*argv, "--ns", 1.4], capsys)  # (now recorded with this version's fingerprint)
    assert code == 0 and statuses(out) == ["done", "done"], err
    assert "deconv3d: warning: --ns is not used by the gaussian PSF model" in err, err
    (folder / "cfg.toml").write_text(GAUSSIAN_NS_CONFIG.replace("ns = 1.45\n", ""))  # ns dropped: the same output
    code, _, err = run(argv, capsys)
    assert code == 0 and statuses(out) == ["skipped", "skipped"] and "refractive" not in err, err


@pytest.mark.parametrize("method", ["rl", "rl-tv"])
def test_an_auto_count_s_fingerprint_leaves_out_acceleration_and_still_matches_earlier_records(folder, monkeypatch,
                                                                                             method):
    """iterations = "auto" runs its chosen counts without acceleration: with and without --no-accelerate its
    fingerprint is one (the default's, as before), and the hash of the rule earlier versions followed for
    --no-accelerate (accelerate as given, Wiener's balance, ignored, at its default: not the legacy hash) is still
    among the finished ones; a numeric count's fingerprint still follows accelerate. (The records those versions
    wrote lack the search's cap, which the fingerprint now holds: they are redone once, as the cap's own test
    checks.)"""
    base = {"psf": str(folder / "psf.tif"), "method": method, "balance": 0.1}
    auto, plain = (make_settings({**base, "iterations": "auto", "accelerate": a}) for a in (True, False))
    assert plain.fingerprint() == auto.fingerprint()
    fields = [_hashed_fields(plain, monkeypatch)]  # what the fingerprint hashes: accelerate at its default, True
    assert fields[0]["accelerate"] is True
    fields[0]["accelerate"] = False  # as the earlier versions hashed it
    earlier = _digest(fields[0])
    assert earlier not in (plain.fingerprint(), plain.fingerprint(legacy=True))
    assert earlier in plain.finished_fingerprints()
    assert earlier not in auto.finished_fingerprints()
    counted = [make_settings({**base, "iterations": 20, "accelerate": a}).fingerprint() for a in (True, False)]
    assert counted[0] != counted[1]


def _hashed_fields(settings, monkeypatch) -> dict:
    """What ``settings.fingerprint()`` hashes (the fields it passes to json.dumps)."""
    import types

    from deconv3d.pipeline import settings_fingerprint

    fields = []
    with monkeypatch.context() as patch:
        patch.setattr(settings_fingerprint, "json",
                      types.SimpleNamespace(dumps=lambda f, **k: fields.append(f) or "{}"))
        settings.fingerprint()
    return fields[0]


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.parametrize("method", ["rl", "rl-tv"])
def test_an_auto_count_s_fingerprint_holds_the_most_iterations_it_tries(folder, monkeypatch, method):
    """iterations = "auto" tried at most 100 iterations, and now AUTO_MAX_ITERATIONS: a count it stopped at 100
    may now be larger, so its fingerprint holds the cap, and a batch finished before (records hashed without it)
    is redone once. A numeric count's fingerprint, and Wiener's with "auto" (which it ignores), hold no cap."""
    from deconv3d.pipeline import settings_fingerprint
    from deconv3d.pipeline.auto_iterations import AUTO_MAX_ITERATIONS

    base = {"psf": str(folder / "psf.tif"), "method": method}
    auto = make_settings({**base, "iterations": "auto"})
    fields = _hashed_fields(auto, monkeypatch)
    assert fields["auto_max_iterations"] == AUTO_MAX_ITERATIONS
    earlier = _digest({k: v for k, v in fields.items() if k != "auto_max_iterations"})  # as the versions capped at
    assert earlier not in auto.finished_fingerprints()  # 100 hashed it: redone once
    assert _digest(fields) == auto.fingerprint()
    monkeypatch.setattr(settings_fingerprint, "AUTO_MAX_ITERATIONS", 100)
    assert _digest(fields) != auto.fingerprint()
    for other in ({**base, "iterations": 20}, {**base, "method": "wiener", "iterations": "auto"}):
        assert "auto_max_iterations" not in _hashed_fields(make_settings(other), monkeypatch), other
