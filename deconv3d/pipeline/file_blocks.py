"""The block function of a file's run (:func:`~deconv3d.pipeline.files.deconvolve_file`): each channel's
PSF, network and settings built into block callables with their memory model, and the memory plan
checked before the minutes of training a network or choosing RL's counts rather than after them."""

from __future__ import annotations

import math

from deconv3d._paths import path_text
from deconv3d.pipeline.file_networks import _default_configs, _refuse_untrainable, train_on_image, warn_of_another_scale


def _block_function(lazy, spatial_shape, voxel, settings, trainer, warnings, plan, chooser=None):
    """(block callable or one per channel, memory model, parameters, PSF or a list of one per
    channel, voxel size) of a run: the network is loaded, or trained on the image first
    (:func:`train_on_image`), once the blocks' ``plan`` (chunks, workers, client) is known to fit
    the memory limit; RL's counts are chosen per channel where ``chooser`` is given
    (:func:`~deconv3d.pipeline.auto_iterations.chosen_settings`)."""
    from deconv3d.pipeline.settings_checks import _many

    files = _many(settings.model)
    psfs, trained, training, voxel = _psfs_and_networks(lazy, spatial_shape, voxel, settings, trainer, warnings,
                                                        plan, files)
    runs, chosen = _channel_settings(lazy, spatial_shape, psfs, voxel, settings, plan, chooser)
    block, model, params, psfs = _built_per_channel(spatial_shape, voxel, settings, psfs, trained, runs, files)
    return block, model, {**params, **chosen, **training}, psfs if len(psfs) > 1 else psfs[0], voxel


def _psfs_and_networks(lazy, spatial_shape, voxel, settings, trainer, warnings, plan, files):
    """(PSFs, network or list of them or None, training record, voxel size) of a run: a network trained
    here on the image, the networks loaded from ``files``, or the PSFs alone for a classical method."""
    from deconv3d.pipeline.prepared_psfs import load_psfs_for

    if settings.method == "ssl" and settings.model is None:  # trained here, on this image, with this PSF
        psfs, trained, training = _trained_on_image(lazy, spatial_shape, voxel, settings, trainer, warnings, plan)
        return psfs, trained, training, voxel
    if settings.method == "ssl":  # each model carries its PSF; each one given is checked against it (build_block_fn)
        psfs, trained, voxel = _loaded_networks(lazy, spatial_shape, voxel, settings, warnings, files)
        return psfs, trained, {}, voxel
    return load_psfs_for(settings, spatial_shape, voxel, image=lazy.path, warnings=warnings), None, {}, voxel


def _trained_on_image(lazy, spatial_shape, voxel, settings, trainer, warnings, plan):
    """(PSFs, network, training record) of an ``ssl`` run without a model: the network trained on
    this image with its first PSF, once the blocks' ``plan`` is known to fit the memory limit."""
    from deconv3d.pipeline.prepared_psfs import load_psfs_for
    from deconv3d.selfsup import TrainedModel, training_record

    psfs = load_psfs_for(settings, spatial_shape, voxel, image=lazy.path, warnings=warnings)
    _refuse_untrainable(lazy, settings.memory_limit)  # the image itself first, then its blocks
    _check_plan_before_training(spatial_shape, psfs[0], voxel, settings, trainer, **plan)
    result = train_on_image(lazy, psfs[0], voxel, settings, trainer, memory_limit=settings.memory_limit)
    trained, training = TrainedModel.from_result(result), training_record(result)
    trained.reference_cache = None  # RL of the whole image: blocks cannot use it, and it is as large
    return psfs, trained, training


def _loaded_networks(lazy, spatial_shape, voxel, settings, warnings, files):
    """(PSFs, networks, voxel size) of an ``ssl`` run of the model ``files``: one PSF, or none, for
    every network where fewer are given than networks."""
    from deconv3d.pipeline.prepared_psfs import load_psfs_for
    from deconv3d.selfsup import load_checkpoint

    trained = [load_checkpoint(f, device="cpu") for f in files]  # one, or one per channel
    for network in trained:
        voxel = network.voxel_for(voxel, len(spatial_shape), path_text(lazy.path), warnings)
    warn_of_another_scale(trained, lazy, warnings)
    # every channel's PSF, not the first alone: the others were dropped unchecked, yet recorded as used
    psfs = (load_psfs_for(settings, spatial_shape, voxel, fit_image=False, image=lazy.path, warnings=warnings)
            if (settings.psf or settings.psf_model) else [None])
    psfs = psfs * len(trained) if len(psfs) < len(trained) else psfs  # (one PSF, or none, for every model)
    return psfs, trained, voxel


def _channel_settings(lazy, spatial_shape, psfs, voxel, settings, plan, chooser):
    """(settings of each channel's blocks, or one for all; the counts chosen): RL's counts chosen per
    channel on a crop where ``chooser`` is given, once the blocks' ``plan`` is known to fit."""
    if chooser is None or settings.method not in ("rl", "rl-tv"):
        return [settings], {}
    from deconv3d.pipeline.auto_iterations import chosen_settings

    _check_plan_before_choosing(spatial_shape, psfs, voxel, settings, **plan)
    return chosen_settings(lazy, psfs, voxel, settings, chooser)


def _built_per_channel(spatial_shape, voxel, settings, psfs, trained, runs, files):
    """(block callable or one per channel, memory model, parameters, PSFs) of a run."""
    from deconv3d._tensors import psf_fingerprint
    from deconv3d.pipeline.batch import build_block_fn

    networks = trained if isinstance(trained, list) else [trained]
    # channel c's PSF, network and settings: entry c of a list of one per channel, else the one for all (the
    # counts match: Settings); each network is checked against its channel's PSF
    built = [build_block_fn(runs[c % len(runs)], psfs[c % len(psfs)], voxel, ndim=len(spatial_shape),
                            trained=networks[c % len(networks)], model_file=files[c % len(files)] if files else None)
             for c in range(max(len(psfs), len(runs)))]
    block, model, params = built[0]
    psfs = [b.trained.psf for b, _, _ in built] if settings.method == "ssl" else psfs  # (a network's own)
    if len(built) > 1:  # one block function per channel; the largest PSF (or network) sets the memory model
        block = [b for b, _, _ in built]
        model = _largest_model([m for _, m, _ in built], spatial_shape)
    if len(psfs) > 1:
        params = {**params, "per_channel_psf_sha256_16": [psf_fingerprint(p) for p in psfs]}
    if len(files) > 1:
        params["per_channel_model"] = [p for _, _, p in built]  # each network's recipe and file
    return block, model, params, psfs


def _check_plan_before_training(spatial_shape, psf, voxel, settings, trainer, chunks, workers, client) -> None:
    """Refuse a ``--memory-limit`` (or ``--chunks`` held to it) that no block of the network fits
    before training, which takes minutes, rather than after it. The blocks are planned as
    :func:`~deconv3d.pipeline.run_chunked` plans them, with an untrained network of the
    configuration to be trained (``trainer.configs(ndim)``, else the defaults) and, for a
    residual one, RL at one iteration: the count training chooses can only widen the halo."""
    if settings.memory_limit is None:
        return
    from deconv3d.pipeline.batch import build_block_fn
    from deconv3d.psf import normalize_psf, validate_psf
    from deconv3d.selfsup import TrainedModel
    from deconv3d.selfsup.config import Reference
    from deconv3d.selfsup.unet import ResUNet

    ndim = len(spatial_shape)
    config, unet = trainer.configs(ndim) if hasattr(trainer, "configs") else _default_configs(settings, ndim)
    reference = Reference(iterations=1) if config.residual else None
    psf_as_trained = normalize_psf(validate_psf(psf))  # as train() stores it
    untrained = TrainedModel(ResUNet(unet), unet, config, 0.0, 1.0, psf_as_trained, voxel, reference)
    block, model, _ = build_block_fn(settings, psf, voxel, ndim=ndim, trained=untrained)
    _check_plan(spatial_shape, [block], model, settings.memory_limit, chunks, workers, client)


def _check_plan_before_choosing(spatial_shape, psfs, voxel, settings, chunks, workers, client) -> None:
    """Refuse a ``--memory-limit`` (or ``--chunks`` held to it) that no RL block fits before
    ``--iterations auto`` chooses the counts, which takes minutes on a large crop, rather than after it.
    Each channel's blocks are planned as :func:`~deconv3d.pipeline.run_chunked` plans them, at one
    iteration without acceleration: the counts chosen can only widen the halo."""
    if settings.memory_limit is None:
        return
    import dataclasses

    from deconv3d.pipeline.batch import build_block_fn

    once = dataclasses.replace(settings, iterations=1, accelerate=False)
    built = [build_block_fn(once, p, voxel, ndim=len(spatial_shape)) for p in psfs]
    model = _largest_model([m for _, m, _ in built], spatial_shape)  # (as _block_function's)
    _check_plan(spatial_shape, [b for b, _, _ in built], model, settings.memory_limit, chunks, workers, client)


def _largest_model(models, spatial_shape):
    """The memory model of a run of one block function per channel: the largest PSF's (or network's)."""
    return max(models, key=lambda m: m.block_bytes(spatial_shape) if m.method == "ssl" else math.prod(m.psf_shape))


def _check_plan(spatial_shape, blocks, model, memory_limit, chunks, workers, client) -> None:
    """Plan ``blocks`` under ``memory_limit`` as :func:`~deconv3d.pipeline.run_chunked` plans them (refused,
    by :func:`~deconv3d.pipeline.planning.spatial_plan`, where none fits)."""
    from deconv3d.omezarr.writing import CHUNK_CAP
    from deconv3d.pipeline.planning import spatial_plan, threads_per_worker

    ndim = len(spatial_shape)
    per_process = workers if client is None else threads_per_worker(client)
    cap = tuple(CHUNK_CAP[a] for a in "ZYX"[-ndim:])  # as run_chunked stores them (blocks in whole chunks)
    spatial_plan(spatial_shape, blocks, chunks, None, memory_limit, model, per_process, local=client is None, cap=cap)
