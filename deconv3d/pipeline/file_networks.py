"""The self-supervised network of a file's run (:func:`~deconv3d.pipeline.files.deconvolve_file`):
one trained on the image itself (:func:`train_on_image`, refused where the image cannot be trained on),
or a given one checked against the image's intensities (:func:`warn_of_another_scale`, from
:func:`intensity_statistics`)."""

from __future__ import annotations

import math

import numpy as np

from deconv3d._paths import path_text
from deconv3d.errors import naming_image, warning_naming_image


def _default_configs(settings, ndim: int):
    """(TrainConfig, UNetConfig) of a network :func:`train_on_image` trains without a trainer."""
    from deconv3d.selfsup import TrainConfig, UNetConfig

    return TrainConfig(steps=settings.train_steps, seed=settings.seed, amp=settings.amp), UNetConfig(ndim=ndim)


def train_on_image(lazy, psf, voxel, settings, trainer=None, memory_limit=None):
    """A network (a ``TrainResult``) trained on the whole image of ``lazy`` (one channel and time
    point), read into memory.

    ``trainer(image, psf, voxel)`` trains (returns a ``TrainResult``); by default
    :func:`deconv3d.selfsup.train` with ``settings.train_steps``, ``settings.seed`` and
    ``settings.run_device``. Under ``memory_limit`` an image over a quarter of it is refused (training
    holds it, its standardised copy and the network's activations): train on a crop instead.
    """
    from deconv3d.pipeline.threads_and_memory import release_memory
    from deconv3d.selfsup import train

    name = path_text(lazy.path)
    lead = _refuse_untrainable(lazy, memory_limit)
    image = np.asarray(lazy.data, dtype=np.float32).reshape(lazy.data.shape[len(lead):])
    if trainer is None:
        config, unet = _default_configs(settings, image.ndim)
        result = train(image, psf, config=config, unet=unet, device=settings.run_device, voxel_size=voxel)
        if result.reason == "non-finite loss":
            raise naming_image(lambda image: f"training on {image} diverged at step {result.steps_done} (non-finite "
                               "loss): check the PSF", name)
    else:
        result = trainer(image, psf, voxel)
    del image
    release_memory()  # training's freed arrays, else resident: the blocks' memory baseline would count them
    return result


def _refuse_untrainable(lazy, memory_limit) -> list:
    """Refuse to train on an image of several channels or time points, or one over a quarter of
    ``memory_limit``; returns the sizes of its leading (T, C) axes."""
    from deconv3d.pipeline.system_memory import format_bytes, parse_memory

    name = path_text(lazy.path)
    lead = [n for a, n in zip(lazy.axes, lazy.data.shape) if a in "TC"]
    if any(n > 1 for n in lead):
        raise naming_image(lambda image: f"{image} has axes {lazy.axes} of shape {lazy.data.shape}: training on the "
                           f"image takes one channel and time point; {_retrain_hint(lazy)}", name)
    size = 4 * math.prod(lazy.data.shape)
    if memory_limit is not None and 4 * size > parse_memory(memory_limit):
        raise naming_image(lambda image: f"training on {image} holds it in memory ({format_bytes(size)} as "
                           f"float32), too much for --memory-limit {memory_limit}: train on a crop with 'deconv3d "
                           "train', then pass --model", name)
    return lead


def _retrain_hint(lazy) -> str:
    """How to get a network for the image ``lazy``: training on it (--train-steps) takes one channel
    and time point, so for several the way is 'deconv3d train' (on a TIFF) and --model, one per channel."""
    sizes = dict(zip(lazy.axes, lazy.data.shape))
    if sizes.get("C", 1) > 1:
        return ("train one network per channel with 'deconv3d train' on one time point of that channel saved as a "
                "TIFF, then give them with --model, one per channel in channel order (each serves every time point)")
    if sizes.get("T", 1) > 1:
        return ("train a network with 'deconv3d train' on one time point saved as a TIFF, then give it with --model "
                "(it serves every time point)")
    return "train on this one (--train-steps)"


#: Bytes of each channel that :func:`intensity_statistics` decodes (at least one chunk or plane).
SAMPLE_BYTES = 256 * 2**20


def intensity_statistics(data, axes: str) -> list[tuple[float, float, bool]]:
    """``(mean, SD, sampled)`` of each channel of ``data`` (a block reader, lazy image, dask array
    or array with ``axes`` from ``"TCZYX"``).

    A channel of at most :data:`SAMPLE_BYTES` is read whole (``sampled`` False). A larger one is
    sampled in boxes of whole chunks (of whole planes for a TIFF; an eighth of the budget each where
    chunks allow: :func:`~deconv3d.pipeline.readers.storage_boxes`), as many as the budget holds,
    drawn at random (seed 0) over all of them, so that no chunk is decoded twice and no part of
    the image is favoured (evenly spaced planes had favoured the stack's ends, and boxes from the
    middles of runs in C order one column of lateral chunks); a box over the budget keeps the
    band of rows through its middle.
    """
    from deconv3d.pipeline.readers import as_reader, storage_boxes, storage_unit

    reader = as_reader(data)
    shape = tuple(reader.shape)
    channel = axes.index("C") if "C" in axes else None
    unit = list(storage_unit(reader))
    if channel is not None:
        unit[channel] = 1
    boxes = storage_boxes(shape, unit, SAMPLE_BYTES // 8, fixed=() if channel is None else (channel,))
    statistics = []
    for c in range(shape[channel] if channel is not None else 1):
        mine = [b for b in boxes if channel is None or b[channel].start == c]
        whole = 4 * math.prod(shape) // (shape[channel] if channel is not None else 1) <= SAMPLE_BYTES
        size = 4 * math.prod(s.stop - s.start for s in mine[0])
        count = len(mine) if whole else max(1, min(len(mine), SAMPLE_BYTES // size))
        taken = [mine[i] for i in sorted(np.random.default_rng(0).choice(len(mine), count, replace=False))]
        sampled = not whole
        n, mean, m2 = 0, 0.0, 0.0  # Chan et al.'s pairwise update of the mean and squared deviations
        for box in taken:
            if size > SAMPLE_BYTES:  # one chunk or plane over the budget: rows through its middle
                rows = box[-2].stop - box[-2].start
                keep = max(1, rows * SAMPLE_BYTES // size)
                first = box[-2].start + (rows - keep) // 2
                box, sampled = box[:-2] + (slice(first, first + keep), box[-1]), True
            piece = reader.read(box).astype(np.float64)
            m = float(piece.mean())
            delta, total = m - mean, n + piece.size
            m2 += float(np.square(piece - m).sum()) + delta * delta * n * piece.size / total
            mean, n = mean + delta * piece.size / total, total
        statistics.append((mean, math.sqrt(m2 / n), sampled))
    return statistics


def warn_of_another_scale(trained, lazy, warnings: list | None) -> None:
    """Warn (:func:`deconv3d.errors.warning_naming_image`: said of "the image" too, for a batch's row) when a
    channel of ``lazy`` is on another intensity scale than the image ``trained`` (a network, or a list of one per
    channel) was trained on, as an in-memory run warns (:func:`deconv3d.selfsup.scale_mismatch`), from
    :func:`intensity_statistics`."""
    from deconv3d.selfsup import scale_mismatch

    name = path_text(lazy.path)
    networks = trained if isinstance(trained, list) else [trained]
    statistics = intensity_statistics(lazy, lazy.axes)
    for c, (mean, std, sampled) in enumerate(statistics):
        # (one network per channel given: the one to redo is this channel's, not a network per channel)
        retrain = (f"train channel {c}'s network again with 'deconv3d train' on one time point of that channel saved "
                   "as a TIFF, then give it in its place among the --model files" if len(networks) > 1
                   else _retrain_hint(lazy))

        def message(image):  # (said of the file's name, and of "the image" for a batch's row)
            subject = (f"{image}'s intensities" if len(statistics) == 1 else
                       f"the intensities of {image}'s channel {c}") + (" in a sample" if sampled else "")
            return scale_mismatch(networks[c % len(networks)], mean, std, subject, retrain=retrain)

        if message(name):
            warning_naming_image(lambda image: f"deconv3d: warning: {message(image)}", name, warnings)
