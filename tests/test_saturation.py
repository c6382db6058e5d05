"""Saturated voxels: the plateau rule of ``auto``, and ``deconvolve --saturation`` in memory (the
chunked path and batches: tests/pipeline/test_saturation_chunked.py)."""

import numpy as np
import pytest
import tifffile
from cli_helpers import assert_one_line_error, run, tiff_properties
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.signal import fftconvolve

from deconv3d._saturation import (clipped_at_faces, count_near_faces, face_reach, merge_top_two, parse_saturation,
                                  plateau_level, top_two, top_two_by_planes)
from deconv3d.classical import choose_iterations, richardson_lucy
from deconv3d.errors import InputError
from deconv3d.io import write_tiff
from deconv3d.pipeline.auto_iterations import AUTO_MAX_ITERATIONS
from deconv3d.psf import prepare_psf
from deconv3d.synthetic import phantom

VOXEL = (0.3, 0.1, 0.1)


def gaussian_psf(shape=(7, 9, 9), sigma=(1.2, 1.0, 1.0)):
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s * s) for g, s in zip(grids, sigma)))
    return (psf / psf.sum()).astype(np.float32)


def blurred_phantom(seed=0, shape=(16, 48, 48)):
    """(truth, its blur) of a seeded phantom in counts up to 1000 (independent of deconv3d's blur)."""
    truth = (phantom(shape, seed=seed) * 1000).astype(np.float32)
    return truth, np.clip(fftconvolve(truth, gaussian_psf(), mode="same"), 0, None).astype(np.float32)


def unclipped_kinds(seed):
    """Unsaturated data of several kinds: float with Poisson noise, integer counts of peak 20 over a
    background of 2, and data scaled to 8 bits and rounded (which puts a few voxels on 255)."""
    rng = np.random.default_rng(seed)
    blurred = blurred_phantom(seed, (16, 48, 48))[1] / 1000
    return {"float": (rng.poisson(blurred * 1000) / 1000 + rng.normal(0, 1e-3, blurred.shape)).astype(np.float32),
            "counts": rng.poisson(blurred / blurred.max() * 20 + 2).astype(np.uint16),
            "8-bit": np.round(blurred / blurred.max() * 255).astype(np.uint8)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["float", "counts", "8-bit"])
def test_the_plateau_rule_finds_a_clip_and_nothing_on_unclipped_data(seed, kind):
    image = unclipped_kinds(seed)[kind]
    assert plateau_level(top_two(image)) is None
    level = np.percentile(image, 99.5).astype(image.dtype)
    clipped = np.minimum(image, level)
    assert plateau_level(top_two(clipped)) == float(level)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_coarsely_quantised_maximum_held_by_many_voxels_is_no_plateau(seed):
    """Data of few grey levels (2-3 bits) put 23-94 voxels on their maximum, but fewer than on the next
    value (a falling tail): the rule's second clause, which the voxel count alone does not make."""
    blurred = blurred_phantom(seed)[1]
    for levels in (3, 7):
        image = np.round(blurred / blurred.max() * levels).astype(np.uint8)
        peak, n_peak, _, n_second = top_two(image)
        assert peak == levels and n_peak >= 10 and n_peak < n_second
        assert plateau_level(top_two(image)) is None


def test_the_top_two_of_slabs_merge_into_the_volume_s():
    data = np.random.default_rng(0).integers(0, 40, (12, 10, 10)).astype(np.float32)
    data[3, 4, 5] = np.nan  # skipped
    whole = top_two(data)
    assert whole[0] == 39 and whole[2] == 38 and whole[1] == np.sum(data == 39)
    for cut in (1, 5, 11):
        assert merge_top_two([top_two(data[:cut]), top_two(data[cut:])]) == whole
    assert merge_top_two([top_two(data[:1]), top_two(np.full((2, 2), 39.0))])[1] == np.sum(data[:1] == 39) + 4
    assert top_two_by_planes(data) == whole  # (a chunked run's blocks: a plane at a time)
    counts = np.nan_to_num(data).astype(np.uint16)[:, :3]
    assert top_two_by_planes(counts) == top_two(counts)
    assert top_two_by_planes(np.full((3, 2), np.nan)) == top_two(np.full((3, 2), np.nan)) == (-np.inf, 0, -np.inf, 0)


@pytest.mark.parametrize("value", [-1, 0, "abc", float("nan"), "inf", True, None])
def test_bad_saturation_values_are_refused_by_name(value):
    with pytest.raises(InputError, match="saturation must be a positive level"):
        parse_saturation(value)
    assert parse_saturation(" AUTO ") == "auto" and parse_saturation("4095") == 4095.0 == parse_saturation(4095)


@pytest.fixture
def clipped(tmp_path):
    """A blurred phantom clipped at its 99th percentile, its truth, the level and the files."""
    truth, blurred = blurred_phantom()
    level = float(np.percentile(blurred, 99))
    image = np.minimum(blurred, level)
    write_tiff(tmp_path / "img.tif", image, voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=VOXEL)
    return truth, blurred, image, level


def deconvolve(tmp_path, capsys, name, *options, image="img.tif"):
    code, out, err = run(["deconvolve", tmp_path / image, "--psf", tmp_path / "psf.tif", "-o", tmp_path / name,
                          "--iterations", 30, "--device", "cpu", *options], capsys)
    assert code == 0, err
    return tifffile.imread(tmp_path / name), out, err


def test_saturation_fits_the_clipped_voxels_as_lower_bounds_and_restores_the_bright_objects_better(
        tmp_path, capsys, clipped):
    """Near the clipped objects (within 3 voxels of a voxel over the level) the result with the level
    is closer to the truth than fitting the clipped values as data (RMS error 48.5 against 74.7, on objects
    of peak 1000; 59.7 when they were left out of the fit, the values of the voxels not estimated kept); it
    is RL with those voxels fitted as clipped, on the PSF as the command prepares it."""
    truth, blurred, image, level = clipped
    plain, _, err = deconvolve(tmp_path, capsys, "plain.tif")
    assert f"{np.sum(image >= level)} voxels sit at the image's maximum" in err and "--saturation auto" in err
    censored, out, err = deconvolve(tmp_path, capsys, "level.tif", "--saturation", level)
    assert "warning" not in err and f"fitted {np.sum(image >= level)} voxel(s) at or above {level:g} as clipped" in out
    near = binary_dilation(blurred >= level, iterations=3)
    rms = {name: np.sqrt(np.mean((result[near] - truth[near]) ** 2)) for name, result in
           (("plain", plain), ("level", censored))}
    assert rms["level"] < 0.85 * rms["plain"], rms
    psf = prepare_psf(gaussian_psf(), image.shape, psf_voxel=VOXEL, image_voxel=VOXEL)
    expected = richardson_lucy(image, psf, 30, accelerate=True, clipped=image >= level, device="cpu")
    np.testing.assert_allclose(censored, expected, rtol=1e-5, atol=1e-5 * expected.max())
    record = tiff_properties(tmp_path / "level.tif")
    parameters = record["parameters"]
    assert parameters["saturation"] == level and parameters["saturated_voxels"] == np.sum(image >= level)


def test_auto_takes_the_plateau_and_leaves_unclipped_data_whole(tmp_path, capsys, clipped):
    _, blurred, image, level = clipped
    auto, out, _ = deconvolve(tmp_path, capsys, "auto.tif", "--saturation", "auto")
    by_level, _, _ = deconvolve(tmp_path, capsys, "level.tif", "--saturation", level)
    np.testing.assert_array_equal(auto, by_level)
    assert f"fitted {np.sum(image >= level)} voxel(s) at the image's maximum" in out
    write_tiff(tmp_path / "whole.tif", blurred, voxel_size=VOXEL)
    auto, out, err = deconvolve(tmp_path, capsys, "auto-whole.tif", "--saturation", "auto", image="whole.tif")
    plain, _, err_plain = deconvolve(tmp_path, capsys, "plain-whole.tif", image="whole.tif")
    np.testing.assert_array_equal(auto, plain)
    assert "no plateau" in out and "warning" not in err + err_plain
    assert "saturation" not in str(tiff_properties(tmp_path / "plain-whole.tif"))  # the default's record unchanged


@pytest.mark.parametrize("options, words", [
    (["--saturation", "-1"], ["--saturation", "positive level", "-1"]),
    (["--saturation", "abc"], ["--saturation", "auto", "none", "abc"]),
    (["--saturation", "nan"], ["--saturation", "nan"]),
    (["--saturation", "100", "--method", "wiener"], ["--saturation", "rl and rl-tv", "wiener"]),
    (["--saturation", "auto", "--method", "ssl", "--train-steps", "2"], ["--saturation", "rl and rl-tv", "ssl"]),
    (["--saturation", "auto", "--chunks", "8", "24", "24", "--method", "wiener"], ["--saturation", "wiener"]),
])
def test_bad_saturation_options_are_one_line_errors_and_write_nothing(tmp_path, capsys, clipped, options, words):
    code, _, err = run(["deconvolve", tmp_path / "img.tif", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / "out.tif", *options], capsys)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "out.tif").exists()


def test_auto_iterations_chooses_its_count_with_the_saturated_voxels_fitted_as_clipped(tmp_path, capsys, clipped):
    """``--iterations auto --saturation LEVEL`` runs choose_iterations with those voxels flagged clipped
    (on these noisy counts clipped at their 97th percentile: a count other than the one with every voxel
    fitted as measured), prints the count and records it as chosen so; the output is RL with those voxels
    fitted as clipped for that count (plain RL: acceleration off)."""
    _, blurred, _, _ = clipped
    counts = (np.random.default_rng(0).poisson(blurred * 0.3) / 0.3).astype(np.float32)
    level = float(np.percentile(counts, 97))
    image = np.minimum(counts, level)
    write_tiff(tmp_path / "noisy.tif", image, voxel_size=VOXEL)
    result, out, err = deconvolve(tmp_path, capsys, "auto.tif", "--saturation", level, "--iterations", "auto",
                                  image="noisy.tif")
    psf = prepare_psf(gaussian_psf(), image.shape, psf_voxel=VOXEL, image_voxel=VOXEL)
    chosen = choose_iterations(image, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu",
                               clipped=image >= level).iterations
    assert chosen != choose_iterations(image, psf, AUTO_MAX_ITERATIONS, voxel_size=VOXEL, device="cpu").iterations
    assert f"chose {chosen} iterations" in out and "saturated voxels fitted as clipped" in out and "warning" not in err
    parameters = tiff_properties(tmp_path / "auto.tif")["parameters"]
    assert parameters["iterations"] == chosen and parameters["accelerate"] is False
    assert parameters["iterations_chosen_by"] == ("held-out prediction (5% of voxels, the saturated voxels fitted as "
                                                  "clipped)")
    assert parameters["saturation"] == level and parameters["saturated_voxels"] == np.sum(image >= level)
    expected = richardson_lucy(image, psf, chosen, clipped=image >= level, accelerate=False, device="cpu")
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5 * expected.max())


def test_auto_iterations_with_a_level_over_the_maximum_does_not_say_voxels_were_flagged(tmp_path, capsys, clipped,
                                                                                        monkeypatch):
    """A level above the image's maximum flags no voxel: the count line and the record said "the saturated
    voxels left out" all the same. (The search reaches its cap on this image: a cap of 20, not
    AUTO_MAX_ITERATIONS, keeps the test short; the line and the record are those of any cap.)"""
    from deconv3d.cli import iteration_choice

    monkeypatch.setattr(iteration_choice, "AUTO_MAX_ITERATIONS", 20)
    _, _, image, _ = clipped
    _, out, _ = deconvolve(tmp_path, capsys, "auto.tif", "--saturation", float(image.max()) * 2, "--iterations",
                           "auto")
    assert "fitted 0 voxel(s)" in out and "chose " in out and "as clipped" not in out.split("chose ", 1)[1], out
    chosen_by = tiff_properties(tmp_path / "auto.tif")["parameters"]["iterations_chosen_by"]
    assert chosen_by.startswith("held-out prediction (5% of voxels") and "clipped" not in chosen_by, chosen_by


def test_auto_iterations_at_its_cap_says_the_saturated_voxels_were_fitted_as_clipped(tmp_path, capsys, clipped,
                                                                                     monkeypatch):
    """The line of a count that reached the cap said nothing of the saturated voxels (the record did)."""
    from deconv3d.cli import iteration_choice

    monkeypatch.setattr(iteration_choice, "AUTO_MAX_ITERATIONS", 2)
    _, _, image, level = clipped
    _, out, _ = deconvolve(tmp_path, capsys, "cap.tif", "--saturation", level, "--iterations", "auto")
    assert "chose 2 iterations, the most --iterations auto tries, the saturated voxels fitted as clipped:" in out, out


def test_every_voxel_at_the_level_is_refused(tmp_path, capsys, clipped):
    write_tiff(tmp_path / "flat.tif", np.full((8, 24, 24), 7, np.uint16), voxel_size=VOXEL)
    code, _, err = run(["deconvolve", tmp_path / "flat.tif", "--psf", tmp_path / "psf.tif", "-o",
                        tmp_path / "out.tif", "--saturation", 7], capsys)
    assert_one_line_error(code, err, "every voxel", "--saturation")
    assert not (tmp_path / "out.tif").exists()


def test_a_saturated_object_wider_than_the_psf_is_estimated_at_least_at_its_clipped_value(tmp_path, capsys):
    """Inside a clipped object wider than the PSF no unclipped voxel sees the estimate. Left out of the
    fit (weights 0), RL set it to 0 (2312 zeros in a 10 x 40 x 40 cube clipped at 4095); fitted as
    clipped, its data still say "at least 4095" there, and the estimate rises to that."""
    truth = np.full((16, 48, 48), 100.0)
    truth[3:13, 10:38, 10:38] = 20000.0
    rng = np.random.default_rng(0)
    image = np.minimum(rng.poisson(np.clip(fftconvolve(truth, gaussian_psf(), mode="same"), 1, None)), 4095)
    write_tiff(tmp_path / "cube.tif", image.astype(np.uint16), voxel_size=VOXEL)
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=VOXEL)
    result, out, _ = deconvolve(tmp_path, capsys, "cube-out.tif", "--saturation", "4095", "--iterations", 5,
                                image="cube.tif")
    clipped = image >= 4095
    assert f"fitted {clipped.sum()} voxel(s) at or above 4095 as clipped" in out
    inside = binary_erosion(clipped, iterations=3)
    assert inside.sum() > 1000 and result[inside].min() >= 0.99 * 4095, result[inside].min()
    assert np.median(result[~binary_dilation(clipped, iterations=4)]) < 150  # (the background is not touched)


def test_the_zero_boundary_warns_of_clipped_voxels_at_the_image_s_faces(tmp_path, capsys):
    """With --boundary zero a clipped region at a face comes out worse than fitting it as data (README:
    a slab clipped across a face, 283 against 97 RMS error near it): the run says so and names bertero.
    A clipped region away from the faces, or the default boundary, draws no such line."""
    write_tiff(tmp_path / "psf.tif", gaussian_psf(), voxel_size=VOXEL)
    image = np.random.default_rng(0).poisson(50, (16, 48, 48)).astype(np.float32)
    for name, box in (("face", (slice(0, 3), slice(16, 32), slice(16, 32))),
                      ("inside", (slice(6, 10), slice(20, 28), slice(20, 28)))):
        clipped = image.copy()
        clipped[box] = 800
        write_tiff(tmp_path / f"{name}.tif", clipped, voxel_size=VOXEL)
        for boundary in ("zero", "bertero"):
            _, _, err = deconvolve(tmp_path, capsys, f"{name}-{boundary}.tif", "--saturation", 800, "--boundary",
                                   boundary, "--iterations", 3, image=f"{name}.tif")
            warned = "lie within the PSF's reach of the image's faces" in err
            assert warned is (name == "face" and boundary == "zero"), (name, boundary, err)
            if warned:
                assert "768 clipped voxel(s)" in err and "--boundary bertero" in err, err


@pytest.mark.parametrize("side", [7, 8])
def test_the_faces_reach_as_far_as_the_psf_takes_light_from_outside(side):
    """``y[i] = sum_j psf[j] x[i + o - j]`` (o = (k - 1) // 2) takes light from outside the field into
    k - 1 - o rows past the first face and o past the last: k // 2 at both for an odd side, and one row
    fewer at the last face for an even one. The count had reached k // 2 + 1 rows past each face."""
    (before, after), = face_reach((side,))
    assert (before, after) == ((3, 3) if side == 7 else (4, 3))
    n = 20
    for row in range(n):
        near = int(row < before or row >= n - after)
        line = np.zeros(n, bool)
        line[row] = True
        assert clipped_at_faces(line, (side,)) == near, row
        flat = np.zeros((n, n), bool)  # (each axis its own reach: a PSF of one plane reaches no row in Z)
        flat[row, n // 2] = True
        assert clipped_at_faces(flat, (1, side)) == 0 and clipped_at_faces(flat.T, (1, side)) == near, row


def test_blocks_count_near_the_volume_s_faces_what_the_whole_volume_counts():
    """A chunked run's blocks count, each in its core, the flagged voxels within reach of the VOLUME's faces
    (not their own): their counts add up to the count over the whole volume."""
    rng = np.random.default_rng(0)
    volume = rng.random((13, 21, 19)).astype(np.float32)
    level, psf_shape = 0.9, (5, 8, 7)
    whole = clipped_at_faces(volume >= level, psf_shape)
    assert 0 < whole < np.count_nonzero(volume >= level)
    corners = [(z, y, x) for z in range(0, 13, 5) for y in range(0, 21, 8) for x in range(0, 19, 6)]
    counted = [count_near_faces(volume[z:z + 5, y:y + 8, x:x + 6], level, face_reach(psf_shape), (z, y, x),
                                volume.shape) for z, y, x in corners]
    assert sum(near for _, near in counted) == whole
    assert sum(flagged for flagged, _ in counted) == np.count_nonzero(volume >= level)
    plane = volume[6]  # a 2D core, taken whole
    assert count_near_faces(plane[3:9, 4:12], level, face_reach((8, 7)), (3, 4), plane.shape)[1] == clipped_at_faces(
        (plane >= level) & np.pad(np.ones((6, 8), bool), ((3, 12), (4, 7))), (8, 7))


def test_the_saturation_warning_suits_the_method_and_names_what_else_makes_a_plateau(tmp_path, capsys, clipped):
    """Wiener's run was told that "RL rings around them"; a noiseless flat-topped object (not clipped)
    draws the same warning, which now says when to ignore it."""
    code, _, err = run(["deconvolve", tmp_path / "img.tif", "--psf", tmp_path / "psf.tif", "-o", tmp_path / "w.tif",
                        "--method", "wiener"], capsys)
    assert code == 0 and "voxels sit at the image's maximum" in err and "--method rl" in err, err
    assert "RL rings" not in err and "not clipped" in err and "constant intensity" in err
    sphere = np.zeros((16, 48, 48), np.float32)
    z, y, x = np.mgrid[:16, :48, :48]
    sphere[(z - 8) ** 2 + (y - 24) ** 2 + (x - 24) ** 2 <= 36] = 1.0
    flat = np.round(np.clip(fftconvolve(sphere, gaussian_psf(sigma=(0.7, 0.7, 0.7)), mode="same"), 0, 1) * 255)
    assert plateau_level(top_two(flat.astype(np.uint8))) == 255  # (the rule cannot tell it from a clip)


@pytest.mark.parametrize("boundary", ["bertero", "zero"])
def test_a_heavily_clipped_wide_object_is_fitted_better_as_clipped_than_as_data_or_left_out(boundary):
    """An ellipsoid of 500 (with beads) clipped at the data's 90th percentile, accelerated RL, 20
    iterations: fitted as clipped, the RMS error against the truth was 85.3 (zero boundary 88.7), against
    107.8 (111.0) fitting the clipped values as data and 147.9 (156.4) leaving them out (weights 0), whose
    few unclipped voxels around the clipped region carry its whole fit (116-123 with the clipped values
    kept where RL did not estimate, as ``--saturation`` did before)."""
    rng = np.random.default_rng(0)
    shape = (24, 64, 64)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth = np.where(((z - 12) / 8) ** 2 + ((y - 30) / 16) ** 2 + ((x - 34) / 16) ** 2 < 1, 500.0, 0.0)
    truth[rng.integers(0, 24, 40), rng.integers(0, 64, 40), rng.integers(0, 64, 40)] += 3000
    psf = gaussian_psf()
    image = rng.poisson(np.clip(fftconvolve(truth, psf, mode="same"), 0, None) + 2).astype(np.float32)
    level = np.percentile(image, 90)
    image = np.minimum(image, level).astype(np.float32)
    results = {name: richardson_lucy(image, psf, 20, accelerate=True, boundary=boundary, device="cpu", **options)
               for name, options in (("data", {}), ("clipped", {"clipped": image >= level}),
                                     ("left out", {"weights": (image < level).astype(np.float32)}))}
    rms = {name: float(np.sqrt(np.mean((r - truth) ** 2))) for name, r in results.items()}
    assert rms["clipped"] < 0.9 * min(rms["data"], rms["left out"]), rms


@pytest.mark.parametrize("ndim", [2, 3])
def test_clipped_voxels_follow_an_independent_censored_em(ndim):
    """RL with ``clipped`` against a scipy implementation of EM for right-censored Poisson data (zero
    boundary: scikit-image's model): the back-projected ratio is ``max(y / H u, 1)`` at a clipped voxel.
    An asymmetric PSF, so that a missing flip shows; 8 plain iterations from the data's mean."""
    from scipy.signal import correlate

    rng = np.random.default_rng(ndim)
    shape = (12, 20, 22)[-ndim:]
    psf = rng.uniform(0.1, 1, (3, 5, 3)[-ndim:])
    psf[(0,) * ndim] = 3.0  # (asymmetric)
    psf /= psf.sum()
    image = fftconvolve(rng.gamma(0.5, 200, shape), psf, mode="same").clip(0) + 1
    level = np.percentile(image, 85)
    image = np.minimum(image, level)
    flags = image >= level
    u = np.full(shape, image.mean())
    for _ in range(8):
        ratio = image / fftconvolve(u, psf, mode="same")
        ratio[flags] = np.maximum(ratio[flags], 1.0)
        u = u * correlate(ratio, psf, mode="same")
    result = richardson_lucy(image.astype(np.float32), psf.astype(np.float32), 8, boundary="zero", accelerate=False,
                             clipped=flags, device="cpu", dtype=__import__("torch").float64)
    np.testing.assert_allclose(result, u, atol=1e-4 * u.max())
    plain = richardson_lucy(image.astype(np.float32), psf.astype(np.float32), 8, boundary="zero", accelerate=False,
                            device="cpu")
    assert np.abs(plain - u).max() > 1e-2 * u.max()  # (the flags change the result: the check above can fail)


def test_clipped_flags_are_checked_and_the_caller_s_array_is_not_changed():
    image = np.random.default_rng(0).uniform(1, 2, (8, 16, 16)).astype(np.float32)
    psf = gaussian_psf()
    with pytest.raises(InputError, match="clipped has shape .* give one flag per voxel"):
        richardson_lucy(image, psf, 2, clipped=np.zeros((8, 16), bool), device="cpu")
    with pytest.raises(InputError, match="clipped must hold True/False"):
        richardson_lucy(image, psf, 2, clipped=np.full(image.shape, 0.5, np.float32), device="cpu")
    flags = np.zeros(image.shape, np.float32)  # (0/1 floats: torch shares their memory)
    flags[:, :3] = 1.0
    before = flags.copy()
    for boundary in ("zero", "bertero", "reflect"):
        richardson_lucy(image, psf, 2, boundary=boundary, clipped=flags, weights=np.full(image.shape, 0.5, np.float32),
                        device="cpu")
    np.testing.assert_array_equal(flags, before)
    none = richardson_lucy(image, psf, 3, clipped=np.zeros(image.shape, bool), device="cpu")
    np.testing.assert_array_equal(none, richardson_lucy(image, psf, 3, device="cpu"))  # (no flag: plain RL)


@pytest.mark.parametrize("weighted", [False, True])
def test_tv_scale_weights_are_computed_only_for_a_tv_term_and_rl_tv_takes_its_scale_from_them(monkeypatch, weighted):
    """The unclipped voxels' weights (the TV term's default scale) are skipped without a TV term,
    with plain RL's result unchanged, and rl-tv takes its scale from the unclipped voxels."""
    from deconv3d.classical import _problem

    r = np.random.default_rng(4)
    image = r.uniform(1, 2, (8, 16, 16)).astype(np.float32)
    flags = np.zeros(image.shape, bool)
    flags[2:4, 5:9, 5:9] = True
    image[flags] = 50.0  # the clipped voxels hold the image's largest values
    flags |= r.random(image.shape) < 0.05  # and some in the background, where the bound binds
    weights = r.uniform(0.5, 1, image.shape).astype(np.float32) if weighted else None
    psf = gaussian_psf()
    computed = []
    original, censor = _problem._tv_scale_weights, _problem._censor

    def counted(*args, **kwargs):
        computed.append(1)
        return original(*args, **kwargs)

    def run_rl(scaled_anyway=False, **options):
        # scaled_anyway: the set-up before, the weights computed whatever the method
        monkeypatch.setattr("deconv3d.classical.rl._censor",
                            (lambda *a: censor(*a[:5], scaled=True)) if scaled_anyway else censor)
        return richardson_lucy(image, psf, 4, clipped=flags, weights=weights, device="cpu", **options)

    monkeypatch.setattr(_problem, "_tv_scale_weights", counted)
    plain = run_rl()
    assert computed == []
    np.testing.assert_array_equal(plain, run_rl(scaled_anyway=True))
    assert computed == [1]
    tv = run_rl(tv_weight=0.01)
    assert computed == [1, 1]
    peak = float(image[~flags].max())  # the unclipped voxels' largest value, all of weight > 0 here
    np.testing.assert_array_equal(tv, run_rl(tv_weight=0.01, tv_scale=peak))
    assert computed == [1, 1]  # a given scale needs no weights
    assert not np.array_equal(tv, run_rl(tv_weight=0.01, tv_scale=float(image.max())))  # the scale matters here
