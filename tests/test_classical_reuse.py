"""Richardson-Lucy keeps one OTF and Bertero weight for the next call of the same shape and PSF,
for the owner its caller names (a chunked run) and while that lives; results are unchanged."""

import gc

import numpy as np

from conftest import asymmetric_psf
from deconv3d.classical import _reuse, richardson_lucy, wiener


class _Run:
    """An owner, as a chunked run is one: kept set-ups go with it."""


def test_calls_for_one_owner_share_the_set_up_of_their_shape_and_psf(computed):
    rng = np.random.default_rng(0)
    psf, other_psf = asymmetric_psf((3, 5, 5)), asymmetric_psf((3, 5, 5), seed=1)
    same = [rng.random((8, 12, 12)).astype(np.float32) for _ in range(3)]
    calls = [(image, psf, "bertero") for image in same] + [(same[0][:, :, :10], psf, "bertero"),
                                                           (same[0], other_psf, "bertero"), (same[0], psf, "zero")]
    plain = [richardson_lucy(image, h, 2, boundary=b, device="cpu") for image, h, b in calls]
    assert computed == {"otf": 6, "weight": 5} and _reuse._kept[0] is None  # without an owner nothing is kept
    run = _Run()
    with _reuse.reusing_setup(run):
        kept = [richardson_lucy(image, h, 2, boundary=b, device="cpu") for image, h, b in calls]
    # once for the three calls of one shape and PSF, then once per other shape, PSF or boundary
    assert computed == {"otf": 6 + 4, "weight": 5 + 3}
    for a, b in zip(plain, kept):
        np.testing.assert_array_equal(a, b)
    assert _reuse._kept[0] is not None
    del run
    gc.collect()
    assert _reuse._kept[0] is None  # the run is over: its set-up is freed


def test_wiener_calls_for_one_owner_share_the_otf_of_their_fft_shape_and_psf(computed):
    """Wiener keeps its OTF as RL keeps its set-up (a chunked Wiener run computed it in every block),
    under a key of its own: RL neither takes Wiener's OTF nor Wiener RL's."""
    rng = np.random.default_rng(0)
    psf, other_psf = asymmetric_psf((3, 5, 5)), asymmetric_psf((3, 5, 5), seed=1)
    same = [rng.random((8, 12, 12)).astype(np.float32) for _ in range(3)]
    calls = [(image, psf) for image in same] + [(same[0][:, :, :5], psf), (same[0], other_psf)]
    plain = [wiener(image, h, 1e-3, device="cpu") for image, h in calls]
    assert computed["otf"] == 5 and _reuse._kept[0] is None  # without an owner nothing is kept
    run = _Run()
    with _reuse.reusing_setup(run):
        kept = [wiener(image, h, 1e-3, device="cpu") for image, h in calls]
        assert computed["otf"] == 5 + 3  # once for the three calls of one shape and PSF, then once per other
        richardson_lucy(same[0], psf, 1, device="cpu")  # RL's own OTF and weight, not Wiener's
        assert computed == {"otf": 5 + 3 + 1, "weight": 1}
        again = wiener(same[0], psf, 1e-3, device="cpu")  # and Wiener's own again
        assert computed["otf"] == 5 + 3 + 2
    for a, b in zip(plain + plain[:1], kept + [again]):
        np.testing.assert_array_equal(a, b)
    del run
    gc.collect()
    assert _reuse._kept[0] is None
