"""Wiener/Tikhonov deconvolution: a regularised inverse filter in one FFT pass."""

from __future__ import annotations

import math

import numpy as np
import torch

from deconv3d._fft_shapes import fast_shape, irfftn, pad_spatial
from deconv3d._spectral import psf_rms_width
from deconv3d._tensors import checked_result, resolve_device
from deconv3d.classical._problem import _check_inputs, _is_number
from deconv3d.classical._reuse import kept_or_built
from deconv3d.errors import InputError
from deconv3d.fft import FFTConvolver

WIENER_BOUNDARIES = ("reflect", "zero", "periodic")
#: The boundaries ``deconvolve --method wiener``, a batch and :class:`~deconv3d.pipeline.methods.WienerBlock`
#: take, the default first: the periodic one would wrap each block's faces onto each other.
RUN_BOUNDARIES = ("reflect", "zero")
#: The filter's gain at zero frequency (see :func:`wiener`'s Notes): 1 since acf0a16, ``1 / (1 + balance)``
#: with the identity before. Batch fingerprints hold it, so that outputs of the earlier filter are redone.
DC_GAIN = "unit"
#: How deep the reflect boundary mirrors the image (:func:`mirror_box`): twice the filter's reach
#: (:func:`wiener_reach`), the PSF's size before. Batch fingerprints hold it, as they hold DC_GAIN.
MIRROR_DEPTH = "2x-reach"
#: The mirror's depth in multiples of :func:`wiener_reach`.
MIRROR_REACHES = 2
REGULARIZERS = ("identity", "laplacian")


def wiener(
    image,
    psf,
    balance: float = 1e-3,
    *,
    regularizer: str = "identity",
    boundary: str = "reflect",
    clip: bool = True,
    device="auto",
    dtype: torch.dtype = torch.float32,
    inner=None,
):
    """Wiener/Tikhonov deconvolution: a regularised inverse filter in one FFT pass.

    Parameters
    ----------
    image, psf : array_like or torch.Tensor
        2D or 3D image and a PSF of the same dimensionality (scaled to unit sum here), of any real
        dtype (integers, bool, float16/32/64, either byte order; cast to ``dtype`` in a copy, never
        written); complex values are refused. The filter is linear: negative image values
        (background-subtracted data) are filtered as they are, and only the estimate is clipped.
    balance : float
        Regularisation weight λ (relative to the OTF's peak of 1); larger is smoother.
        Roughly the noise-to-signal power ratio. It is a fixed number, not scaled by the image:
        the filter is linear, so an image times 1e-3 or 1e3 gives the estimate times the same
        factor (to 3e-7 of the peak in float32), with the same regularisation at any intensity.
        With Poisson noise the best balance therefore falls as the counts rise: on a 16 x 48 x 48
        bead volume (Gaussian PSF of σ 1.5/1.2/1.2 voxels, background 5 % of the peak) the least
        error came at 1e-2 for a peak of 10 counts, 1e-3 (the default) for 100, 1e-4 for 1000
        and at or below 1e-5 for 1e4-1e5; too small a balance costs more than too large a one.
    regularizer : {"identity", "laplacian"}
        Penalise the estimate's energy (classic Tikhonov) or its Laplacian (smoothness): the
        discrete one, ``[1, -2, 1]`` along every axis in voxels. No voxel size is taken, so with
        anisotropic voxels it weighs a z step as it weighs an x step.
    boundary : {"reflect", "zero", "periodic"}
        How the image is extended before the FFT; ``"reflect"`` limits edge ringing (an offset of
        1000 counts under a signal of 10 changed the estimate by 3e-3 counts with it and with
        ``"periodic"``, by up to 5e3 with ``"zero"``). The reflection is twice the filter's reach
        deep (:func:`mirror_box`), which grows as the balance falls: at the faces the estimate was
        within 5e-6 of the peak of an endless mirror's at a balance of 1e-3 and 1.5e-5 at 1e-4
        (Poisson beads on the faces of 32 x 96 x 96 and 256 x 256 images, Gaussian PSFs); mirrored
        by the PSF's size, as before, 5e-3 to 3e-2 at 1e-3. The mirror of a structure near a face is
        blurred by the mirrored PSF, so with an asymmetric PSF the mirror is not the blurred data's
        continuation: a bead 6 planes from a face of a 15-plane stack, blurred by a lopsided
        5 x 7 x 7 PSF, kept its peak and its centroid moved 0.013 voxels (0.046 mirrored by the PSF's
        size). Where that depth reaches one period of the endless mirror, the box is that period: exact,
        though often a slow FFT size (see :func:`mirror_box` for the alternatives measured). The command
        line and batches take ``"reflect"`` or ``"zero"`` (``--boundary``); the chunked pipeline's blocks
        mirror their faces inside the volume only the PSF's size deep (:func:`mirror_box`'s ``inner``).
    clip : bool
        Set the estimate's negative values (ringing) to 0 (default). The clip adds light: on
        Poisson data over a background of 20 counts, with the default ``balance``, it zeroed 26 %
        of the voxels and raised the mean by 24 %; on crops of a bead scene the total came out 1.6x
        the data's over a background of 5 counts and 3.6-3.8x over none: measure intensities on
        RL's result, not on a clipped Wiener estimate. ``False`` keeps the linear estimate
        (scikit-image's ``clip=False``), whose total intensity is the data's with the periodic
        boundary (the filter's gain at zero frequency is 1, see Notes), and close to it with
        ``"reflect"`` where the data are a crop of a larger scene (within 0.5 % on beads over a
        background of 5, 1.7-8.6 % above over none), not where the data's faces are dark, which
        the mirror does not expect (0.82-0.96x on beads blurred with zeros beyond the faces); with
        ``"zero"`` the dark margin rings into the image and the total is not kept (0.55x to 1.6x
        the data's on flat images, depending on the PSF and the image's size; 1.9-2.3x at a
        balance of 1e-4). The command line and the chunked
        pipeline clip; this option is the Python API's.
    device, dtype
        Where (``"auto"``: CUDA when present, else the CPU) and in which precision
        (``torch.float32`` or ``torch.float64``) to compute.
    inner : sequence of (bool, bool), optional
        Per axis ``(before, after)``, the faces of a chunked run's block that lie inside the volume
        (:class:`~deconv3d.pipeline.methods.WienerBlock` passes them): the reflect boundary mirrors those
        only the PSF's size deep (:func:`mirror_box`'s ``inner``). None (the default): every face is the
        image's own.

    Returns
    -------
    ndarray or torch.Tensor
        Estimate with the image's shape, non-negative unless ``clip=False``: an ndarray (float32
        unless ``dtype`` says otherwise) for array input, a tensor on ``device`` for tensor input.

    Raises
    ------
    InputError
        For an image or PSF that is not 2D/3D numbers of matching dimensionality, has NaN or
        Inf values, a PSF that is negative, all zero or larger than the image, or an unknown
        option; the message names the fix.

    Notes
    -----
    ``X = (1 + λ |R(0)|^2) conj(H) Y / (|H|^2 + λ |R|^2)`` with ``H`` the OTF and ``R`` the
    regulariser's transfer function (1, or the discrete Laplacian's) [1]_ [2]_. The factor
    ``1 + λ |R(0)|^2`` makes the gain at zero frequency 1 (``H(0) = 1`` for a unit-sum PSF), so
    that a flat area keeps its level and the output stays in the data's units at any ``balance``:
    the plain Tikhonov filter, of gain ``1 / (1 + λ)`` there with the identity, made flat areas
    ``λ / (1 + λ)`` dimmer (4.8 % at a balance of 0.05); the Laplacian's ``R(0)`` is 0, so its
    filter is the plain one. Unlike
    ``skimage.restoration.wiener``, whose regulariser defaults to the Laplacian and whose
    boundary is periodic, the default here is the identity with reflected borders;
    ``regularizer="laplacian", boundary="periodic"`` gives scikit-image's result for odd PSFs
    of unit sum (both with ``clip=False``; clipped here, it is that result clamped at 0;
    scikit-image uses the PSF as given, here it is scaled to unit sum, and an even PSF side's
    centre is ``(k - 1) // 2`` here as in ``scipy.signal.fftconvolve``, ``k // 2`` there).

    References
    ----------
    .. [1] N. Wiener, "Extrapolation, Interpolation, and Smoothing of Stationary Time
       Series", MIT Press (1949).
    .. [2] A. N. Tikhonov and V. Y. Arsenin, "Solutions of Ill-Posed Problems" (1977).

    Examples
    --------
    >>> import numpy as np
    >>> from deconv3d.classical import wiener
    >>> psf = np.ones((3, 3), np.float32) / 9
    >>> wiener(np.ones((16, 16), np.float32), psf, device="cpu").shape
    (16, 16)
    """
    return _wiener(image, psf, balance, regularizer=regularizer, boundary=boundary, clip=clip, device=device,
                   dtype=dtype, inner=inner)


def _wiener(image, psf, balance, *, regularizer, boundary, clip, device, dtype, inner=None):
    """:func:`wiener`, its reflect boundary mirroring the faces that ``inner`` marks (per axis ``(before,
    after)``: a chunked run's block's faces inside the volume, beyond its halo) only the PSF's size deep
    (:func:`mirror_box`'s ``inner``; :class:`~deconv3d.pipeline.methods.WienerBlock`)."""
    dev = resolve_device(device)
    y, h = _check_inputs(image, psf, dev, dtype)
    check_balance(balance)
    if not isinstance(regularizer, str):  # scikit-image's reg is an array: the truth of its `in` was ambiguous
        raise InputError(f"regularizer must be the name of one of {REGULARIZERS}, got {type(regularizer).__name__}: "
                         "a kernel array is not taken")
    if not isinstance(clip, (bool, np.bool_)):
        raise InputError(f"clip must be True or False, got {clip!r}")
    if regularizer not in REGULARIZERS:
        raise InputError(f"unknown regularizer {regularizer!r}: choose one of {', '.join(REGULARIZERS)}")
    if boundary not in WIENER_BOUNDARIES:
        raise InputError(f"unknown boundary {boundary!r} for Wiener: choose one of {', '.join(WIENER_BOUNDARIES)}")
    conv = FFTConvolver(h, device=dev, dtype=dtype, cache=False)  # dropped after the call
    padded, crop = _wiener_extend(y, tuple(h.shape), boundary, wiener_reach(h, balance), inner)
    fft_shape = tuple(padded.shape)
    otf = _otf(conv, fft_shape)
    penalty = _regularizer_power(regularizer, y.ndim, fft_shape, dev, dtype)
    spectrum = torch.fft.rfftn(padded, s=fft_shape) * otf.conj()
    # the gain at zero frequency made 1 (|H(0)| = 1 for a unit-sum PSF): flat areas keep their level at any balance
    spectrum *= 1 + balance * float(penalty.reshape(-1)[0])
    spectrum /= otf.abs().square_() + balance * penalty
    result = irfftn(spectrum, fft_shape, range(len(fft_shape)))[crop]
    result = checked_result(result.clamp_min_(0) if clip else result)
    return result if isinstance(image, torch.Tensor) else result.cpu().numpy()


def run_boundary_problem(boundary, name: str = "--boundary") -> str | None:
    """The one line refusing a boundary for a Wiener run (the command line's, a batch's) that is not one of
    :data:`RUN_BOUNDARIES`, such as Richardson-Lucy's ``bertero``, naming those it takes; None for one of them."""
    if boundary in RUN_BOUNDARIES:
        return None
    if boundary in ("bertero",):  # (RL's other boundaries, zero and reflect, are Wiener's too)
        return f"{name} {boundary!r} is Richardson-Lucy's, not Wiener's: Wiener takes {name} reflect (the default) or zero"
    return f"{name} {boundary!r} is not one a Wiener run takes: give {name} reflect (the default) or zero"


def check_run_boundary(boundary, name: str = "--boundary") -> None:
    """Raise :func:`run_boundary_problem`'s line as an InputError where it has one."""
    if problem := run_boundary_problem(boundary, name):
        raise InputError(problem)


def check_balance(balance) -> None:
    """Refuse a Wiener ``balance`` that is not a positive finite number (one line that says what to try)."""
    if not (_is_number(balance) and balance > 0):
        raise InputError(f"balance must be a positive finite number, got {balance!r}: try 1e-3")


def _otf(conv: FFTConvolver, fft_shape) -> torch.Tensor:
    """The OTF for ``fft_shape``: the previous block's of a chunked run where it had the same FFT shape
    and PSF (:mod:`deconv3d.classical._reuse`), else new (and kept for the next block). Never written."""
    key = ("wiener", fft_shape, str(conv.device), conv.dtype)
    return kept_or_built(key, conv.psf, lambda: conv.otf(fft_shape))[0]


def wiener_reach(psf, balance: float) -> tuple[int, ...]:
    """How far, per axis, the filter reaches: ``ceil(sigma (6 + log10(1 / balance)))`` voxels, ``sigma``
    the PSF's RMS width along the axis (the chunked pipeline's halo,
    :func:`deconv3d.pipeline.halo_rules.wiener_halo`)."""
    return reach_for_widths(psf_rms_width(psf), balance)


def reach_for_widths(widths, balance: float) -> tuple[int, ...]:
    """:func:`wiener_reach` for a PSF of RMS widths ``widths``."""
    factor = 6 + max(0.0, math.log10(1.0 / balance))
    return tuple(math.ceil(s * factor) for s in widths)


def mirror_box(shape, kernel_shape, reach, inner=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The reflect boundary's FFT box and the image's offset in it, per axis.

    The mirror is ``max(k, MIRROR_REACHES * reach)`` deep before the image (``k`` the PSF's size) and
    fills the box, the fast FFT size (:func:`fast_shape`) of the image and that depth on both sides.
    Where that box would be no smaller than ``2 (n - 1)`` (``n`` the image's side), the box is
    ``2 (n - 1)`` with the image at its start and its mirror after it: one period of the endless
    mirror, whose FFT is the endless mirror's result exactly and is smaller (a mirror deeper than the
    side would mirror the mirror).

    Measured in float64 against the endless mirror, as the largest difference over the image in units
    of its peak (Poisson beads, some on every face, over a background; balances 1e-1, 1e-2, 1e-3,
    1e-4): on 32 x 96 x 96 with a 7 x 9 x 9 Gaussian PSF (sigma 1.5, 1.2, 1.2), 1.2e-7, 1.1e-6,
    4.5e-6, 1.5e-5 with this rule, 5.5e-4 to 1.3e-2 one reach deep and 2.4e-3, 1.3e-2, 3.4e-2,
    5.7e-2 the PSF's size deep; on 256 x 256 with a 9 x 9 one (sigma 1.2), 2.8e-7 to 1.0e-5 against
    7.1e-5 to 8.8e-3 the PSF's size deep; with wide PSFs (15 x 21 x 21, sigma 3, 2.5, 2.5, on
    32 x 96 x 96; 21 x 21, sigma 3, on 128 x 128) at most 3.2e-6 and 2.6e-5. Three reaches gave
    5.5e-8 at most, for larger boxes. The box grew from 48 x 120 x 120 to 62 x 140 x 140 (z at
    the period) on the first image and from 280^2 to 300^2 on the second, at a balance of 1e-3.
    The period box is seldom a fast FFT size: one transform each way took 0.087 s on
    62 x 190 x 190 against 0.030 s on 64 x 192 x 192 (one thread). It is kept there all the same,
    as neither way round it kept the faces (same beads, PSF 7 x 9 x 9; 32 x 96 x 96, 48 x 64 x 64 and
    30 x 80 x 80 at balances 1e-2 to 1e-4, against 1.1e-6 to 1.2e-5 with the period): the period
    padded to the next fast size with the image centred (64 for 62 planes, 96 for 94) erred by 2.1e-4
    to 6.2e-3, its mirror short of twice the reach; the fast box twice the reach deep (84 to 108 planes)
    by 1.4e-5 to 6.1e-4. Whole ``wiener`` calls (float32, two threads, median of 5, interleaved) took
    2.14 s against 2.32 s with the padded period on 32 x 512 x 512, 1.12 against 1.28 on 48 x 256 x 256
    and 0.97 against 1.14 on 32 x 256 x 256 (box 64, not 62); the deep box 3.36 against 3.30, 1.22
    against 1.31 and 0.86 against 0.80. (64 x 512 x 512 uses the deep box, 120 planes, already.)

    ``inner`` (per axis ``(before, after)``, :class:`~deconv3d.pipeline.methods.WienerBlock`'s): the faces of
    a chunked run's block that lie inside the volume, which the block's halo (one reach of real data) already
    separates from its core. They are mirrored only the PSF's size deep: on a 48 x 160 x 160 bead volume in
    blocks of 16 x 64 x 64 (PSF 9^3, sigma 1.5, 1.2, 1.2) the blocks came within 86.06, 84.58 and 75.30 dB of
    the whole volume's result at balances 1e-2, 1e-3 and 1e-4 with it, 86.06, 84.58 and 75.29 dB mirrored
    twice the reach deep there (84.30 dB both in blocks of 24 x 40 x 40, at 1e-3), and the run took 1.64, 1.55
    and 2.20 s against 2.11, 2.65 and 2.65 s (1.68 against 2.52 s). With no mirror there (the box's
    wrap-around at the halo) 85.81, 74.17 dB at 1e-2 and 1e-4.
    """
    inner = inner or ((False, False),) * len(shape)
    full = [max(int(k), MIRROR_REACHES * int(r)) for k, r in zip(kernel_shape, reach)]
    depths = [[int(k) if f else d for f in faces] for k, d, faces in zip(kernel_shape, full, inner)]
    box, before = [], []
    for n, (b, a), fast in zip(shape, depths, fast_shape([n + b + a for n, (b, a) in zip(shape, depths)])):
        period = max(1, 2 * (n - 1))
        box.append(min(fast, period))
        before.append(0 if fast >= period else b)
    return tuple(box), tuple(before)


def _wiener_extend(y: torch.Tensor, kernel_shape, boundary: str, reach, inner=None):
    """Extend the image for the FFT: mirrored (:func:`mirror_box`, ``inner`` its faces inside a volume), by
    the kernel size on each side with zeros up to a fast FFT size, or not at all (periodic).

    The reflection fills the whole FFT box: zeros left between it and the box's end would be an
    edge that the inverse filter, whose gain reaches ``1 / (2 sqrt(λ))``, rings across the image
    (a constant image came back between 80 % and 108 % of its level, depending on its size).
    The zero margin stays the kernel's size: deeper, it moves the opposite face's wrap-around further
    away, which changed the estimate by up to 2.6e-3 of the peak at a balance of 1e-3 on the beads of
    :func:`mirror_box` (zeros 4x the image deep; 3.6e-6 on 256 x 256), where the dark margin itself
    makes a face of the image ring.
    """
    if boundary == "periodic":
        return y, tuple(slice(0, n) for n in y.shape)
    if boundary == "reflect":
        box, before = mirror_box(y.shape, kernel_shape, reach, inner)
    else:
        before = tuple(kernel_shape)
        box = fast_shape([n + 2 * k for n, k in zip(y.shape, kernel_shape)])
    after = [b - n - d for b, n, d in zip(box, y.shape, before)]
    padded = pad_spatial(y, before, after, boundary)
    return padded, tuple(slice(p, p + n) for p, n in zip(before, y.shape))


def _regularizer_power(name: str, ndim: int, fft_shape, device, dtype):
    """``|R|^2`` on the half spectrum of ``fft_shape``: 1, or the discrete Laplacian's, from its transfer
    function ``sum(2 cos(2 pi f) - 2)`` over the axes. That is the DFT of its 3-voxel kernel wrapped into the
    box at any size, boxes of 1 and 2 voxels too (the reflect boundary's period box of a side of 1 or 2,
    where the kernel's own OTF was refused as larger than the box)."""
    if name == "identity":
        return torch.ones((), device=device, dtype=dtype)
    *full, last = (int(n) for n in fft_shape[-ndim:])
    freqs = [torch.fft.fftfreq(n, dtype=torch.float64) for n in full] + [torch.fft.rfftfreq(last, dtype=torch.float64)]
    total = torch.zeros((), dtype=torch.float64)
    for axis, f in enumerate(freqs):
        shape = [1] * ndim
        shape[axis] = f.numel()
        total = total + (2 * torch.cos(2 * math.pi * f) - 2).reshape(shape)
    return total.square().to(device=device, dtype=dtype)
