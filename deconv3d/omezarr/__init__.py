"""OME-Zarr (v0.5 on zarr v3; v0.4 read) and lazy, out-of-core opening of large images.

Write: :func:`create_ome_zarr` lays out an OME-NGFF v0.5 image group (axes with types and
micrometre units, per-level ``scale`` transformations, a ``deconv3d`` provenance block) whose
level-0 array is then filled block by block (:mod:`deconv3d.pipeline`); an unknown voxel size
is written as scale 1 without a unit, and read back as unknown;
:func:`write_pyramid` adds down-sampled levels from level 0, chunk by chunk. :func:`write_ome_zarr`
does both for an in-memory or dask array.

Read: :func:`open_lazy` returns a dask array plus voxel size and axes for a TIFF (through
tifffile's zarr interface, so a large TIFF is never loaded whole) or an OME-Zarr v0.4/v0.5
image, and a block reader (:class:`ZarrReader`, :class:`TiffReader`) that reads any region
straight from the file, which the chunked pipeline uses block by block; :func:`read_ome_zarr`
loads one level into memory.
"""

from deconv3d.omezarr.lazy_image import LazyImage
from deconv3d.omezarr.reading import ZARR_SUFFIX, ZarrReader, open_lazy, read_ome_zarr
from deconv3d.omezarr.tiff_reading import TiffReader
from deconv3d.omezarr.writing import (OME_VERSION, create_ome_zarr, file_sha256, write_ome_zarr, write_omero,
                                     write_pyramid)

__all__ = ["LazyImage", "ZarrReader", "TiffReader", "open_lazy", "read_ome_zarr", "create_ome_zarr", "write_ome_zarr",
           "write_pyramid", "write_omero", "file_sha256", "ZARR_SUFFIX", "OME_VERSION"]
