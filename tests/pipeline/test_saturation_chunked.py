"""Saturated voxels in chunked runs and batches: blocks fit as clipped what a whole-volume run fits as clipped,
and a batch's saturation setting is in its config and its completion records."""

import json
import warnings

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run

from deconv3d._saturation import clipped_at_faces, zero_boundary_warning
from deconv3d.classical import richardson_lucy
from deconv3d.errors import InputError
from deconv3d.io import write_tiff
from deconv3d.omezarr import read_ome_zarr
from deconv3d.pipeline import RichardsonLucyBlock, run_chunked

from .conftest import blurred_beads
from .test_seams import CHUNKS, chunked, psnr

VOXEL = (0.3, 0.1, 0.1)


@pytest.fixture
def clipped(volume):
    """The bead volume clipped at its 99.5th percentile: a plateau of a few hundred voxels."""
    return np.minimum(volume, np.percentile(volume, 99.5)).astype(np.float32)


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("tv_weight", [0.0, 0.01], ids=["rl", "rl-tv"])
def test_blocks_fit_as_clipped_the_voxels_a_whole_run_fits_as_clipped(clipped, psf3d, chunks, tv_weight):
    """The clipped bead cores, and a clipped block wider than the PSF (where fitting the plateau as data
    differs from fitting it as clipped: bead cores the estimate still underpredicts get the same update)."""
    level = float(clipped.max())
    image = clipped.copy()
    image[8:16, 10:38, 10:38] = level
    fn = RichardsonLucyBlock(psf3d, iterations=8, tv_weight=tv_weight, saturation=level)
    whole = richardson_lucy(image, psf3d, 8, tv_weight=tv_weight, clipped=image >= level, device="cpu")
    assert psnr(whole, chunked(image, fn, chunks)) >= 50
    plain = richardson_lucy(image, psf3d, 8, tv_weight=tv_weight, device="cpu")
    assert psnr(whole, plain) < 40  # (the flags change the result: the check above can fail)


def test_auto_is_the_volume_s_plateau_in_every_block(tmp_path, clipped, psf3d):
    """Prepared on the volume, ``auto`` is its maximum (and the TV scale the largest value below it,
    as a whole-volume run takes it); the blocks of an accelerated RL-TV run then agree with it."""
    level = float(clipped.max())
    fn = RichardsonLucyBlock(psf3d, iterations=8, tv_weight=0.01, accelerate=True, saturation="auto")
    prepared = fn.prepare(clipped, (24, 32, 32))
    assert prepared.saturation == level and prepared.tv_scale == float(clipped[clipped < level].max())
    whole = richardson_lucy(clipped, psf3d, 8, tv_weight=0.01, accelerate=prepared.accelerate,
                            clipped=clipped >= level, device="cpu")
    run_chunked(clipped, fn, tmp_path / "out.zarr", chunks=CHUNKS[1], voxel_size=VOXEL)
    assert psnr(whole, read_ome_zarr(tmp_path / "out.zarr")[0]) >= 50
    ramp = np.arange(clipped.size, dtype=np.float32).reshape(clipped.shape)  # no plateau: nothing left out
    assert RichardsonLucyBlock(psf3d, iterations=8, saturation="auto").prepare(ramp, (24, 32, 32)).saturation == "none"


@pytest.fixture
def files(tmp_path, clipped, psf3d):
    write_tiff(tmp_path / "img.tif", clipped, voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    return tmp_path


def test_chunked_deconvolve_equals_the_in_memory_run_and_warns_where_it_reads_the_volume(files, capsys):
    base = ["deconvolve", files / "img.tif", "--psf", files / "psf.tif", "--iterations", 8, "--device", "cpu"]
    code, _, err = run([*base, "-o", files / "whole.tif", "--saturation", "auto"], capsys)
    assert code == 0, err
    code, _, err = run([*base, "-o", files / "blocks.zarr", "--saturation", "auto", "--chunks", 12, 20, 17], capsys)
    assert code == 0, err
    import tifffile

    whole, (blocks, _, _, meta) = tifffile.imread(files / "whole.tif"), read_ome_zarr(files / "blocks.zarr")
    assert psnr(whole, blocks) >= 50 and meta["deconv3d"]["parameters"]["saturation"] == "auto"
    code, _, err = run([*base, "-o", files / "tv.zarr", "--method", "rl-tv", "--chunks", 12, 20, 17], capsys)
    assert code == 0 and "voxels sit at the image's maximum" in err and "--saturation auto" in err, err


def clip_lines(err):
    return [line for line in err.splitlines() if "voxels sit at" in line]


def test_in_memory_and_chunked_runs_word_the_clip_alike(files, capsys):
    """One function decides and words the clip warning for both routes (_saturation.warn_if_clipped):
    a run read whole and one in blocks of the same clipped image print the same line."""
    base = ["deconvolve", files / "img.tif", "--psf", files / "psf.tif", "--iterations", 2, "--device", "cpu",
            "--method", "rl-tv"]
    lines = []
    for out in (["-o", files / "whole.tif"], ["-o", files / "blocks.zarr", "--chunks", 12, 20, 17]):
        code, _, err = run([*base, *out], capsys)
        assert code == 0, err
        lines.append(clip_lines(err))
    assert len(lines[0]) == 1 and lines[0] == lines[1], lines


@pytest.mark.parametrize("method", ["rl", "wiener"])
def test_a_volume_run_as_one_block_warns_of_a_clip_as_an_in_memory_run(files, capsys, clipped, method):
    """A .zarr input small enough to run as one block was not warned of: only the pass that prepares a
    run of several blocks warned, and one block is not prepared. The same data as a TIFF read whole
    and as a .zarr run in one block now print the same line."""
    from deconv3d.omezarr.writing import write_ome_zarr

    write_ome_zarr(files / "img.zarr", clipped, voxel_size=VOXEL)
    lines = []
    for source, out in (("img.tif", "whole.tif"), ("img.zarr", "one.tif"), ("img.zarr", "one.zarr")):
        code, said, err = run(["deconvolve", files / source, "--psf", files / "psf.tif", "-o", files / out,
                               "--method", method, "--device", "cpu"], capsys)
        assert code == 0 and ("1 block(s)" in said) == (source == "img.zarr"), said + err
        lines.append(clip_lines(err))
    assert len(lines[0]) == 1 and lines[0] == lines[1] == lines[2], lines


@pytest.mark.parametrize("method", ["rl", "wiener"])
def test_a_run_of_several_blocks_warns_of_a_clip_once_as_an_in_memory_run(files, capsys, volume, method):
    """Plain RL and Wiener in several blocks make no pass over the volume before the blocks, and gave no
    clip warning; their blocks' cores now count the top values (accelerated RL's measuring box for the
    blocks written from it), and the run warns with the in-memory run's line, once, after the output is
    written. An image without a plateau draws no line either way."""
    write_tiff(files / "plain.tif", volume, voxel_size=VOXEL)
    base = ["--psf", files / "psf.tif", "--method", method, "--device", "cpu"]
    for source, expected in (("img", 1), ("plain", 0)):
        lines = []
        for out in ([files / f"{source}.out.tif"], [files / f"{source}.zarr", "--chunks", 12, 20, 17]):
            code, said, err = run(["deconvolve", files / f"{source}.tif", *base, "-o", *out], capsys)
            assert code == 0 and ("block(s)" in said) == (len(out) > 1) and "in 1 block(s)" not in said, said + err
            lines.append(clip_lines(err))
        assert len(lines[0]) == expected and lines[0] == lines[1], (source, lines)


def test_several_blocks_of_a_multichannel_time_series_warn_of_a_clip_once_per_channel(tmp_path, clipped, psf3d):
    """As the RL-TV run's pass over each volume warns (the test above it), plain RL's blocks: once per
    clipped channel, naming it and its first time point; a channel without a plateau draws none."""
    ramp = np.linspace(0, 1, clipped.size, dtype=np.float32).reshape(clipped.shape)  # no plateau
    other = np.minimum(clipped, np.percentile(clipped, 99)).astype(np.float32)
    series = np.stack([np.stack([clipped, ramp, ramp]), np.stack([clipped, ramp, other])])  # (t, c, z, y, x)
    fn = RichardsonLucyBlock(psf3d, iterations=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_chunked(series, fn, tmp_path / "out.zarr", axes="TCZYX", chunks=(12, 24, 24), voxel_size=VOXEL,
                    channels=[{"label": "GFP"}, {"label": "CFP"}, {"label": "RFP"}])
    said = [str(w.message) for w in caught if "voxels sit at" in str(w.message)]
    counts = [int((clipped == clipped.max()).sum()), int((other == other.max()).sum())]
    assert len(said) == 2, said
    for line, count, name in zip(said, counts, ["channel 0 (GFP) at time point 0", "channel 2 (RFP) at time point 1"]):
        assert line.startswith(f"{count} voxels sit at the maximum ") and f"of {name} (its later" in line, line


def test_a_network_run_in_several_blocks_warns_of_a_clip_as_in_memory(tmp_path):
    """The network's blocks count the clip as RL's and Wiener's do (a tiny 2D network, trained a few steps)."""
    from deconv3d._saturation import top_two, warn_if_clipped
    from deconv3d.pipeline import NetworkBlock
    from deconv3d.selfsup import TrainConfig, UNetConfig, train

    from .conftest import gaussian_psf

    psf = gaussian_psf((5, 5), (1.0, 1.0))
    image = blurred_beads((96, 96), psf, seed=3, count=40)
    image = np.minimum(image, np.percentile(image, 99)).astype(np.float32)
    result = train(image, psf, config=TrainConfig(steps=2, patch=32, batch=2, residual=False, warm_start=0,
                                                  amp=False), unet=UNetConfig(ndim=2, base_channels=4, depth=2),
                   device="cpu")
    expected = []
    warn_if_clipped(top_two(image), "ssl", expected)  # the in-memory run's line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = run_chunked(image, NetworkBlock(result, band_limit=None), tmp_path / "out.zarr", chunks=(32, 32))
    said = ["deconv3d: warning: " + str(w.message) for w in caught if "voxels sit at" in str(w.message)]
    assert info.blocks > 1 and len(expected) == 1 and said == expected, (info.blocks, said, expected)


def test_block_callables_count_a_clip_only_where_no_pass_over_the_volume_warned(psf3d):
    assert RichardsonLucyBlock(psf3d).counts_clip() == "rl"
    assert RichardsonLucyBlock(psf3d, tv_weight=0.01, tv_scale=1.0).counts_clip() == "rl-tv"  # (no pass: scale given)
    for fn in (RichardsonLucyBlock(psf3d, tv_weight=0.01), RichardsonLucyBlock(psf3d, saturation="auto"),
               RichardsonLucyBlock(psf3d, saturation=100.0)):
        assert fn.counts_clip() is None, fn


def saturation_parameters(path):
    from cli_helpers import tiff_properties

    if str(path).endswith(".tif"):
        parameters = tiff_properties(path)["parameters"]
    else:
        parameters = read_ome_zarr(path)[3]["deconv3d"]["parameters"]
    return {k: v for k, v in parameters.items() if k.startswith("saturat")}


@pytest.mark.parametrize("setting", ["auto", "level"])
def test_chunked_records_hold_the_saturation_level_and_count_an_in_memory_record_holds(files, capsys, clipped,
                                                                                      setting):
    """The level ``--saturation auto`` found, and the voxels left out, were in an in-memory run's record
    only: a chunked run's, made before its blocks were prepared, held the setting alone."""
    level = float(clipped.max())
    value = "auto" if setting == "auto" else level
    base = ["deconvolve", files / "img.tif", "--psf", files / "psf.tif", "--iterations", 2, "--device", "cpu",
            "--saturation", value]
    outputs = {"whole.tif": [], "one.zarr": ["--memory-limit", "4GB"], "one.tif": ["--memory-limit", "4GB"],
               "blocks.zarr": ["--chunks", 12, 20, 17, "--method", "rl-tv"]}
    for name, options in outputs.items():
        code, said, err = run([*base, "-o", files / name, *options], capsys)
        assert code == 0 and ("in 1 block(s)" in said) == name.startswith("one"), said + err
    whole = saturation_parameters(files / "whole.tif")
    assert whole == {"saturation": value, "saturation_level": level,
                     "saturated_voxels": int((clipped >= level).sum())}, whole
    for name in outputs:
        assert saturation_parameters(files / name) == whole, name


def left_lines(out):
    return [line for line in out.splitlines() if "as clipped" in line or "no plateau" in line]


@pytest.mark.parametrize("setting", ["auto", "level"])
def test_chunked_runs_say_what_they_fitted_as_clipped_as_an_in_memory_run(files, capsys, clipped, setting):
    """The in-memory run printed "fitted N voxel(s) ... as clipped"; a chunked run, which counts them
    in its pass over the volume, said nothing. Where it makes no pass (a level given, plain RL in
    several blocks) its blocks count them, each voxel in one block's core, and it prints the same line."""
    level = float(clipped.max())
    base = ["deconvolve", files / "img.tif", "--psf", files / "psf.tif", "--iterations", 2, "--device", "cpu",
            "--saturation", "auto" if setting == "auto" else level]
    lines = {}
    for name, options in {"whole.tif": [], "one.zarr": ["--memory-limit", "4GB"],
                          "blocks.zarr": ["--chunks", 12, 20, 17, "--method", "rl-tv"],
                          "plain.zarr": ["--chunks", 12, 20, 17]}.items():
        code, out, err = run([*base, "-o", files / name, *options], capsys)
        assert code == 0, err
        lines[name] = left_lines(out)
    count = int((clipped >= level).sum())
    expected = (f"fitted {count} voxel(s) at the image's maximum {level:g} as clipped: at least their value "
                "(--saturation auto)" if setting == "auto" else
                level_line(count, level))
    assert lines["whole.tif"] == lines["one.zarr"] == lines["blocks.zarr"] == lines["plain.zarr"] == [expected], lines


def test_a_chunked_run_of_several_channels_says_what_it_left_out_once_per_channel(tmp_path, capsys, clipped, psf3d):
    """One line per channel, naming it, with its time points' voxels summed; a channel whose time
    points hold no plateau says that every voxel was fitted, as an in-memory run of one image does."""
    ramp = np.linspace(0, 1, clipped.size, dtype=np.float32).reshape(clipped.shape)  # no plateau
    other = np.minimum(clipped, np.percentile(clipped, 99)).astype(np.float32)
    series = np.stack([np.stack([clipped, ramp, ramp]), np.stack([clipped, other, ramp])])  # (t, c, z, y, x)
    run_chunked(series, lambda b: b, tmp_path / "in.zarr", axes="TCZYX", voxel_size=VOXEL,
                channels=[{"label": "GFP"}, {"label": "RFP"}, {}])
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    code, out, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.zarr",
                          "--iterations", 2, "--device", "cpu", "--saturation", "auto", "--chunks", 12, 24, 24],
                         capsys)
    assert code == 0, err
    counts = [int((v == v.max()).sum()) for v in (clipped, other)]
    assert left_lines(out) == [
        f"fitted {2 * counts[0]} voxel(s) at the maximum {clipped.max():g} of channel 0 (GFP) at 2 of its 2 time "
        "points as clipped: at least their value (--saturation auto)",
        f"fitted {counts[1]} voxel(s) at the maximum {other.max():g} of channel 1 (RFP) at 1 of its 2 time points "
        "as clipped: at least their value (--saturation auto)",
        "--saturation auto: no plateau of voxels at the maximum of channel 2 at any of its 2 time points, so every "
        "voxel is fitted"], out


def test_a_chunked_record_of_several_channels_lists_each_channel_s_level(tmp_path, clipped, psf3d):
    """Each channel finds its own plateau (``auto``): the record lists their levels and counts in
    channel order, None for a channel without one."""
    ramp = np.linspace(0, 1, clipped.size, dtype=np.float32).reshape(clipped.shape)  # no plateau
    other = np.minimum(clipped, np.percentile(clipped, 99)).astype(np.float32)
    fn = RichardsonLucyBlock(psf3d, iterations=2, saturation="auto")
    run_chunked(np.stack([clipped, ramp, other]), fn, tmp_path / "out.zarr", axes="CZYX", voxel_size=VOXEL,
                provenance={"parameters": {"saturation": "auto"}})
    parameters = read_ome_zarr(tmp_path / "out.zarr")[3]["deconv3d"]["parameters"]
    assert parameters == {"saturation": "auto", "saturation_level": [float(clipped.max()), None, float(other.max())],
                          "saturated_voxels": [int((clipped == clipped.max()).sum()), None,
                                               int((other == other.max()).sum())]}, parameters


def test_a_clipped_multichannel_time_series_warns_once_per_channel_naming_it(tmp_path, clipped, psf3d):
    """A chunked RL-TV run over channels and time points warns of a clip once per channel, naming the
    channel (by its label) and the first time point: one line per time point, none naming which,
    had left a user guessing which channel was clipped."""
    other = np.minimum(clipped, np.percentile(clipped, 99)).astype(np.float32)  # another plateau, another count
    series = np.stack([np.stack([clipped, other])] * 3)  # (t, c, z, y, x)
    fn = RichardsonLucyBlock(psf3d, iterations=2, tv_weight=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_chunked(series, fn, tmp_path / "out.zarr", axes="TCZYX", chunks=(12, 24, 24), voxel_size=VOXEL,
                    channels=[{"label": "GFP"}, {"label": "RFP"}])
    said = [str(w.message) for w in caught if "voxels sit at the maximum" in str(w.message)]
    counts = [int((clipped == clipped.max()).sum()), int((other == other.max()).sum())]
    assert len(said) == 2, said
    for line, count, name in zip(said, counts, ["channel 0 (GFP)", "channel 1 (RFP)"]):
        assert line.startswith(f"{count} voxels sit at the maximum ") and f"of {name} at time point 0" in line, line


@pytest.fixture
def folder(tmp_path, psf3d):
    (tmp_path / "in").mkdir()
    for i in range(2):
        beads = blurred_beads((12, 24, 24), psf3d, seed=i)
        write_tiff(tmp_path / "in" / f"img{i}.tif", np.minimum(beads, np.percentile(beads, 99)), voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    return tmp_path


def statuses(out):
    return [r["status"] for r in json.loads((out / "batch_report.json").read_text())["files"]]


def test_a_batch_redoes_files_finished_under_another_saturation_setting(folder, capsys):
    out = folder / "out"
    argv = ["batch", folder / "in", "-o", out, "--psf", folder / "psf.tif", "--iterations", 3]
    for options, expected in (([], "done"), ([], "skipped"), (["--saturation", "auto"], "done"),
                              (["--saturation", "auto"], "skipped"), (["--saturation", "none"], "done")):
        code, _, err = run([*argv, *options], capsys)
        assert code == 0 and statuses(out) == [expected] * 2, (options, err)
    (folder / "batch.toml").write_text('saturation = "auto"\n', encoding="utf-8")
    code, _, err = run([*argv, "--config", folder / "batch.toml"], capsys)
    assert code == 0 and statuses(out) == ["done"] * 2, err
    assert read_ome_zarr(out / "img0.zarr")[3]["deconv3d"]["parameters"]["saturation"] == "auto"
    reference = folder / "reference.zarr"
    code, _, err = run(["deconvolve", folder / "in" / "img0.tif", "-o", reference, "--psf", folder / "psf.tif",
                        "--iterations", 3, "--saturation", "auto"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_ome_zarr(out / "img0.zarr")[0], read_ome_zarr(reference)[0])


def test_a_batch_of_several_blocks_lists_the_clip_warning_in_the_clipped_file_s_row(tmp_path, capsys, volume, clipped,
                                                                                    psf3d):
    """The warning the blocks' values give after the run (plain RL in several blocks) reaches the
    file's row of the report, once, as the pass of a run in one block has it there."""
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "a_clipped.tif", clipped, voxel_size=VOXEL)
    write_tiff(tmp_path / "in" / "b_plain.tif", volume, voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    argv = ["batch", tmp_path / "in", "--psf", tmp_path / "psf.tif", "--iterations", 2, "--device", "cpu"]
    for out, options in ((tmp_path / "one", []), (tmp_path / "blocks", ["--chunks", 12, 20, 17])):
        code, _, err = run([*argv, "-o", out, *options], capsys)
        assert code == 0, err
        rows = json.loads((out / "batch_report.json").read_text())["files"]
        assert [len(clip_lines("\n".join(r["warnings"]))) for r in rows] == [1, 0], (options, rows)
        blocks = read_ome_zarr(out / "a_clipped.zarr")[3]["deconv3d"]["execution"]["blocks"]
        assert (blocks > 1) == bool(options), blocks


@pytest.mark.parametrize("line, words", [
    ("saturation = -1", ["batch configuration", "saturation", "positive level", "-1"]),
    ('saturation = "abc"', ["saturation", "abc"]),
    ("saturation = nan", ["saturation", "nan"]),
    ('saturation = 4095\nmethod = "wiener"', ["saturation", "rl and rl-tv", "wiener"]),
])
def test_bad_saturation_settings_of_a_batch_are_one_line_errors(folder, capsys, line, words):
    (folder / "batch.toml").write_text(line + "\n", encoding="utf-8")
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--config",
                        folder / "batch.toml"], capsys)
    assert_one_line_error(code, err, *words)
    assert not (folder / "out").exists()
    code, _, err = run(["batch", folder / "in", "-o", folder / "out", "--psf", folder / "psf.tif", "--saturation",
                        "-1"], capsys)
    assert_one_line_error(code, err, "--saturation", "-1")


@pytest.mark.parametrize("accelerate", [False, True])
def test_blocks_inside_a_wide_saturated_object_keep_its_values_as_a_whole_run_does(tmp_path, psf3d, accelerate):
    """Blocks inside a clipped object and the measuring box of accelerated runs fit the clipped voxels
    as lower bounds, as the whole volume does: no voxel under the clipped value inside, none 0 (where
    the voxels left out of the fit made a hole of zeros)."""
    image = np.random.default_rng(1).poisson(50, (24, 48, 48)).astype(np.float32)
    image[2:22, 4:44, 4:44] = 1000.0
    whole = richardson_lucy(image, psf3d, 6, accelerate=False, clipped=image >= 1000, device="cpu")
    fn = RichardsonLucyBlock(psf3d, iterations=6, accelerate=accelerate, saturation=1000.0)
    blocks = chunked(image, fn, (8, 12, 12)) if not accelerate else None
    if accelerate:
        run_chunked(image, fn, tmp_path / "out.zarr", chunks=(8, 12, 12), voxel_size=VOXEL, memory_limit="300MB")
        blocks = read_ome_zarr(tmp_path / "out.zarr")[0]
    inside = (slice(8, 16), slice(16, 32), slice(16, 32))
    for result in (whole, blocks):
        assert result[inside].min() >= 0.99 * 1000, result[inside].min()
        assert not (result[2:22, 4:44, 4:44] == 0).any()
    if not accelerate:  # (the accelerated blocks replay the measured steps: not the plain run)
        assert psnr(whole, blocks) >= 50


def test_a_measuring_box_saturated_throughout_keeps_its_values(psf3d):
    """Accelerated RL measures its steps on a box; one clipped throughout was refused with the API's
    "weights must be ... not all 0", which the command's user never gave."""
    image = np.full((24, 48, 48), 1000.0, np.float32)
    image[:2] = 10.0
    fn = RichardsonLucyBlock(psf3d, iterations=6, accelerate=True, saturation=1000.0)
    prepared, output = fn.prepare_with_output(image, (8, 16, 16))
    assert prepared.accelerate == (0.0,) * 6
    np.testing.assert_array_equal(output, 1000.0)


def test_the_memory_model_counts_the_clipped_voxels_and_an_in_memory_run_that_then_exceeds_goes_block_by_block(
        tmp_path, monkeypatch, capsys, psf3d):
    """The clipped voxels' bounds and their set-up's copies: a 64 x 512^2 reflect run took 99 MB more with
    --saturation (152 MB when it left them out of the fit with weights, 108 MB above the count without
    it); an image that just fitted without it stays in memory."""
    from deconv3d.pipeline import memory as memory_module
    from deconv3d.pipeline.batch import build_block_fn
    from deconv3d.pipeline.memory_model import MemoryModel
    from deconv3d.pipeline.settings import Settings
    from deconv3d.pipeline.system_memory import planning_baseline

    shape = (32, 256, 256)
    plain, weighted = (MemoryModel("rl", psf3d.shape, boundary="reflect", saturation=s) for s in (False, True))
    assert weighted.block_bytes(shape) - plain.block_bytes(shape) >= 4 * 2 * np.prod(shape)
    write_tiff(tmp_path / "img.tif", blurred_beads(shape, psf3d, seed=2), voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    settings = {"method": "rl", "device": "cpu", "psf": str(tmp_path / "psf.tif")}
    model = build_block_fn(Settings(**settings, saturation="auto"), psf3d, VOXEL)[1]
    assert model.saturation and not build_block_fn(Settings(**settings), psf3d, VOXEL)[1].saturation
    argv = ["deconvolve", tmp_path / "img.tif", "--psf", tmp_path / "psf.tif", "--iterations", "2", "--no-accelerate"]
    plain = MemoryModel("rl", psf3d.shape, accelerate=False)
    need = plain.peak_bytes(shape, (0, 0, 0), shape, baseline=planning_baseline()) - planning_baseline()
    monkeypatch.setattr(memory_module, "available_memory", lambda: int((need + 4 * 10**6) / 0.8))
    code, out, err = run([*argv, "-o", tmp_path / "fits.tif"], capsys)
    assert code == 0 and "block(s)" not in out, out + err  # just enough without --saturation
    code, out, err = run([*argv, "-o", tmp_path / "blocks.tif", "--saturation", "1e9"], capsys)
    assert code == 0 and "would need more memory than is available" in err and "block(s)" in out, out + err


def test_the_clipped_fit_lines_come_from_the_run_s_figures_grouped_by_its_channels():
    # from the RunInfo alone: the command no longer reads the input's header again after the output is written
    from deconv3d.cli.pipeline import _clipped_fit_lines
    from deconv3d.pipeline import RunInfo

    two = RunInfo((), (), 4, 0, 0.0, decided={"saturation_level": [5.0, 6.0, None, 7.0],
                                             "saturated_voxels": [3, 4, None, 2]},
                  volume_channels=("channel 0", "channel 1", "channel 0", "channel 1"))
    assert _clipped_fit_lines("auto", two) == [
        "fitted 3 voxel(s) at the maximum 5 of channel 0 at 1 of its 2 time points as clipped: at least their value "
        "(--saturation auto)",
        "fitted 6 voxel(s) at the maximum 6 to 7 of channel 1 at 2 of its 2 time points as clipped: at least their "
        "value (--saturation auto)"]
    one = RunInfo((), (), 1, 0, 0.0, decided={"saturation_level": 5.0, "saturated_voxels": 3}, volume_channels=("",))
    assert _clipped_fit_lines("auto", one) == [
        "fitted 3 voxel(s) at the image's maximum 5 as clipped: at least their value (--saturation auto)"]
    assert _clipped_fit_lines("none", one) == []


def level_line(count, level, where=""):
    of = f" of {where}" if where else ""
    return (f"fitted {count} voxel(s){of} at or above {level:g} as clipped: at least their value "
            f"(--saturation {level:g})")


def test_the_blocks_of_plain_rl_count_a_level_given_as_the_in_memory_run(files, capsys, clipped):
    """Plain RL at a level given makes no pass over the volume before its blocks: a run in several blocks
    recorded the level without the voxels left out and printed no line of them. Its blocks now count them
    in their cores (each voxel once: not in the halo, which the neighbouring block counts), into the
    record of a .zarr or .tif output and the in-memory run's line. A level below the plateau: the voxels
    at or above it lie in many blocks."""
    level = float(np.percentile(clipped, 97))
    count = int(np.count_nonzero(clipped >= level))
    base = ["deconvolve", files / "img.tif", "--psf", files / "psf.tif", "--iterations", 1, "--device", "cpu",
            "--saturation", level]
    lines = {}
    for name, options in {"whole.tif": [], "blocks.zarr": ["--chunks", 12, 20, 17],
                          "blocks.tif": ["--chunks", 12, 20, 17]}.items():
        code, out, err = run([*base, "-o", files / name, *options], capsys)
        assert code == 0 and ("block(s)" in out) == name.startswith("blocks"), out + err
        assert "in 1 block(s)" not in out, out
        lines[name] = left_lines(out)
        assert saturation_parameters(files / name) == {"saturation": level, "saturation_level": level,
                                                       "saturated_voxels": count}, name
    assert lines["whole.tif"] == lines["blocks.zarr"] == lines["blocks.tif"] == [level_line(count, level)], lines


def test_the_blocks_count_a_level_given_per_channel(tmp_path, capsys, clipped, psf3d):
    """Two channels (CZYX) in several blocks: each channel's voxels at or above the level, summed over its
    blocks, in the record (a list in channel order) and in one line per channel."""
    image = np.stack([clipped, 1.5 * np.flip(clipped, 0)]).astype(np.float32)
    run_chunked(image, lambda b: b, tmp_path / "in.zarr", axes="CZYX", voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    level = float(np.percentile(clipped, 97))
    counts = [int(np.count_nonzero(channel >= level)) for channel in image]
    code, out, err = run(["deconvolve", tmp_path / "in.zarr", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "o.zarr",
                          "--iterations", 1, "--device", "cpu", "--saturation", level, "--chunks", 12, 20, 17], capsys)
    assert code == 0 and "in 1 block(s)" not in out, out + err
    assert left_lines(out) == [level_line(counts[0], level, "channel 0"), level_line(counts[1], level, "channel 1")], out
    assert saturation_parameters(tmp_path / "o.zarr") == {"saturation": level, "saturation_level": [level, level],
                                                          "saturated_voxels": counts}


@pytest.mark.parametrize("options", [[], ["--chunks", 12, 20, 17], ["--method", "rl-tv", "--chunks", 12, 20, 17]],
                         ids=["one-block", "blocks", "rl-tv-blocks"])
@pytest.mark.parametrize("output", ["out.zarr", "out.tif"])
def test_a_level_at_or_below_every_voxel_is_refused_in_blocks_as_in_memory(files, capsys, clipped, options, output):
    """Found by review: an in-memory run refuses a level that flags every voxel (nothing measured is left
    to fit), but a chunked one wrote the input unchanged (each block saturated throughout keeps its values),
    said it 'fitted' every voxel 'as clipped' and exited 0. It is refused alike now, and writes nothing."""
    write_tiff(files / "img.tif", clipped + 1, voxel_size=VOXEL)
    level = 1.0
    base = ["deconvolve", files / "img.tif", "--psf", files / "psf.tif", "--iterations", 2, "--device", "cpu",
            "--saturation", level]
    code, _, err = run([*base, "-o", files / "whole.tif"], capsys)
    assert_one_line_error(code, err, f"every voxel is at or above --saturation {level:g}", "higher level")
    code, out, err = run([*base, "-o", files / output, *options], capsys)
    assert_one_line_error(code, err, f"every voxel is at or above --saturation {level:g}", "higher level")
    assert "fitted" not in out and sorted(p.name for p in files.iterdir()) == ["img.tif", "psf.tif"], out


def test_a_volume_of_several_whose_voxels_are_all_flagged_is_refused_by_name(tmp_path, clipped, psf3d):
    """One channel of two at or above the level throughout: refused naming it, with no output."""
    image = np.stack([clipped, np.full(clipped.shape, 2 * clipped.max(), np.float32)])
    fn = RichardsonLucyBlock(psf3d, iterations=2, saturation=float(clipped.max()))
    with pytest.raises(InputError, match=r"every voxel of channel 1 is at or above --saturation"):
        run_chunked(image, fn, tmp_path / "out.zarr", axes="CZYX", chunks=(12, 20, 17), voxel_size=VOXEL)
    assert not (tmp_path / "out.zarr").exists()
    info = run_chunked(image[:1], fn, tmp_path / "one.zarr", axes="CZYX", chunks=(12, 20, 17), voxel_size=VOXEL)
    assert info.decided["saturated_voxels"] == int(np.count_nonzero(clipped >= clipped.max()))


@pytest.mark.parametrize("accelerate", [False, True], ids=["plain", "accelerated"])
def test_threads_count_a_level_given_also_in_the_blocks_the_measuring_box_wrote(tmp_path, clipped, psf3d,
                                                                                accelerate):
    """On two threads, and where accelerated RL writes the blocks its measuring box holds from that run
    (those blocks do not run again: their cores are counted from the box's values)."""
    level = float(np.percentile(clipped, 97))
    fn = RichardsonLucyBlock(psf3d, iterations=3, accelerate=accelerate, saturation=level)
    assert fn.counts_at() == level and RichardsonLucyBlock(psf3d, tv_weight=0.01, saturation=level).counts_at() is None
    info = run_chunked(clipped, fn, tmp_path / "out.zarr", chunks=(12, 20, 17), workers=2, voxel_size=VOXEL)
    assert info.blocks > 1 and info.decided == {"saturation_level": level,
                                                "saturated_voxels": int(np.count_nonzero(clipped >= level))}, info


def failing_copy(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["write_tiff", "write_hyperstack"])
def test_a_tiff_output_warns_of_a_clip_only_once_it_is_written(files, capsys, clipped, psf3d, monkeypatch, writer):
    """A chunked run's blocks find the clip; for a .tif output the warning came as soon as the hidden scratch
    .zarr was complete, before the TIFF was copied from it: a copy that then failed had warned of an output
    never written. The warning now follows the TIFF. A library call of run_chunked warns itself, unless
    asked not to (warn_clips=False: its RunInfo holds the line for the caller)."""
    import deconv3d._tiff_hyperstack
    import deconv3d.io
    from deconv3d.pipeline.run import warn_of_clips

    source = files / "img.tif"
    if writer == "write_hyperstack":  # two channels: an ImageJ hyperstack
        source = files / "two.zarr"
        run_chunked(np.stack([clipped, clipped[::-1]]), lambda b: b, source, axes="CZYX", voxel_size=VOXEL)
    argv = ["deconvolve", source, "--psf", files / "psf.tif", "--iterations", 1, "--device", "cpu",
            "--chunks", 12, 20, 17, "-o"]
    code, out, err = run([*argv, files / "written.tif"], capsys)
    assert code == 0 and "block(s)" in out and len(clip_lines(err)) == (2 if source.suffix == ".zarr" else 1), out + err
    with monkeypatch.context() as patched:
        patched.setattr(deconv3d.io if writer == "write_tiff" else deconv3d._tiff_hyperstack, writer, failing_copy)
        code, out, err = run([*argv, files / "failed.tif"], capsys)
    assert_one_line_error(code, err, "no space left")  # (the error alone: no clip warning)
    assert not (files / "failed.tif").exists() and not list(files.glob(".failed*")), list(files.iterdir())
    fn = RichardsonLucyBlock(psf3d, iterations=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = run_chunked(clipped, fn, files / "quiet.zarr", chunks=(12, 20, 17), warn_clips=False)
        assert not clip_lines("\n".join(str(w.message) for w in caught)) and len(info.clip_warnings) == 1, info
        warn_of_clips(info)
    assert clip_lines("\n".join(str(w.message) for w in caught)) == [info.clip_warnings[0].removeprefix(
        "deconv3d: warning: ")]


def face_lines(err):
    return [line for line in err.splitlines() if "lie within the PSF's reach of the image's faces" in line]


@pytest.mark.parametrize("setting", ["800", "auto"])
def test_chunked_runs_warn_of_clipped_voxels_at_the_volume_s_faces_as_in_memory(tmp_path, capsys, psf3d, setting,
                                                                               monkeypatch):
    """With --boundary zero an in-memory run warns of the clipped voxels within the PSF's reach of the image's
    faces; a chunked run did not look. Its blocks now count them in their cores, at the VOLUME's faces (a
    clipped box across the blocks' own faces, away from the volume's, draws no line), in the pass that counts
    the level (auto's once prepared; accelerated RL's measuring box for the blocks written from it), and the
    run warns once with the in-memory run's line and count, once the output is written; not with bertero."""
    write_tiff(tmp_path / "psf.tif", psf3d, voxel_size=VOXEL)
    image = np.random.default_rng(0).poisson(50, (24, 48, 48)).astype(np.float32)
    chunks = ["--chunks", 12, 20, 17]  # (block faces at z 12, y 20 and 40, x 17 and 34)
    for name, box in (("face", (slice(0, 3), slice(10, 30), slice(10, 30))),
                      ("seams", (slice(10, 14), slice(18, 22), slice(15, 19)))):
        clipped = image.copy()
        clipped[box] = 800
        write_tiff(tmp_path / f"{name}.tif", clipped, voxel_size=VOXEL)
        lines = {}
        for out, options in {"whole.tif": [], "one.zarr": [], "blocks.zarr": chunks, "blocks.tif": chunks,
                             "plain.zarr": [*chunks, "--no-accelerate"]}.items():
            for boundary in ("zero", "bertero"):
                code, said, err = run(["deconvolve", tmp_path / f"{name}.tif", "--psf", tmp_path / "psf.tif", "-o",
                                       tmp_path / f"{name}-{boundary}-{out}", "--iterations", 2, "--device", "cpu",
                                       "--saturation", setting, "--boundary", boundary, *options], capsys)
                assert code == 0 and ("in 1 block(s)" in said) == (out == "one.zarr"), said + err
                lines[out, boundary] = face_lines(err)
        assert lines["whole.tif", "zero"] == ([zero_boundary_warning(3 * 20 * 20)] if name == "face" else []), lines
        for out, boundary in lines:
            assert lines[out, boundary] == (lines["whole.tif", "zero"] if boundary == "zero" else []), (name, out)
    import deconv3d.io

    with monkeypatch.context() as patched:  # a TIFF whose copy from the blocks' scratch .zarr fails: no line
        patched.setattr(deconv3d.io, "write_tiff", failing_copy)
        code, _, err = run(["deconvolve", tmp_path / "face.tif", "--psf", tmp_path / "psf.tif", "-o",
                            tmp_path / "failed.tif", "--iterations", 2, "--device", "cpu", "--saturation", setting,
                            "--boundary", "zero", *chunks], capsys)
    assert_one_line_error(code, err, "no space left")


@pytest.mark.parametrize("accelerate", [False, True], ids=["plain", "accelerated"])
def test_threads_count_the_clipped_voxels_at_the_volume_s_faces_as_the_whole_volume(tmp_path, psf3d, accelerate):
    """On two threads, also in the blocks accelerated RL writes from its measuring box (counted from the
    box's values), the run's line holds the count over the whole volume (clipped_at_faces)."""
    image = np.random.default_rng(1).poisson(50, (24, 48, 48)).astype(np.float32)
    image[20:, 30:, :5] = 800  # (a corner: three faces)
    image[5:9, 2:6, 20:30] = 800
    fn = RichardsonLucyBlock(psf3d, iterations=3, accelerate=accelerate, boundary="zero", saturation=800.0)
    info = run_chunked(image, fn, tmp_path / "out.zarr", chunks=(12, 20, 17), workers=2, voxel_size=VOXEL,
                       warn_clips=False)
    assert info.blocks > 1 and info.clip_warnings == (zero_boundary_warning(clipped_at_faces(image >= 800,
                                                                                            psf3d.shape)),), info
