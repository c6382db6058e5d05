"""Out-of-core execution: any per-block callable over an image, with a halo, into OME-Zarr.

:func:`run_chunked` is the entry point: it picks the chunk shape (given, or the largest that fits
a memory limit under :class:`~deconv3d.pipeline.memory_model.MemoryModel`), runs the callable block by
block, each block one self-contained task that reads its region plus halo straight from the
source (:func:`~deconv3d.pipeline.chunked.run_blocks`), writes every block
straight into the level-0 array of an OME-Zarr image created under a temporary name, adds the
optional pyramid, and renames the image into place only when it is complete
(:mod:`~deconv3d.pipeline.output`). Method-specific block callables and their halo rules live in
:mod:`~deconv3d.pipeline.methods` (the network's in :mod:`~deconv3d.pipeline.network_block`);
folders of files in :mod:`~deconv3d.pipeline.batch`. This package
re-exports its public names: :func:`run_chunked` itself is in :mod:`~deconv3d.pipeline.run`, the
planning of its blocks in :mod:`~deconv3d.pipeline.planning`.
"""

from __future__ import annotations

from deconv3d.pipeline.block_geometry import plan_chunks
from deconv3d.pipeline.chunked import Cancelled, run_blocks
from deconv3d.pipeline.graph import blockwise, store_blocks
from deconv3d.pipeline.memory import choose_chunks
from deconv3d.pipeline.memory_model import MemoryModel
from deconv3d.pipeline.methods import RichardsonLucyBlock, WienerBlock
from deconv3d.pipeline.network_block import NetworkBlock
from deconv3d.pipeline.output import atomic_output, remove_stale_temporaries
from deconv3d.pipeline.records import provenance, psf_source, psf_summary, run_environment, tiff_properties
from deconv3d.pipeline.run import RunInfo, run_chunked
from deconv3d.pipeline.system_memory import parse_memory

__all__ = ["run_chunked", "RunInfo", "provenance", "Cancelled", "MemoryModel", "choose_chunks", "parse_memory",
           "RichardsonLucyBlock", "WienerBlock", "NetworkBlock", "atomic_output", "remove_stale_temporaries",
           "plan_chunks", "blockwise", "store_blocks", "run_blocks", "psf_summary", "psf_source", "run_environment",
           "tiff_properties"]
