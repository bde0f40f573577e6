"""GeoTIFF export of a finished label image, for GIS users: a Cloud Optimized GeoTIFF (COG) with the class
colour map, built from the label image's own pyramid without ever holding a level whole in memory.

Two steps. tifffile streams a tiled, deflate-compressed GeoTIFF tile by tile: level 0 of the label image,
then its coarser levels as reduced-resolution pages (internal overviews), each with the class colour map
(photometric palette) and, on the first page, the input's georeferencing tags. With rasterio installed
(the `gis` extra), GDAL's COG driver then rewrites that file with the IFDs first and the overviews after
the main image (a layout tifffile cannot write), streaming through GDAL's block cache. Without rasterio the
tiled GeoTIFF with internal overviews is the output: GIS software reads it the same way, only not as
efficiently over HTTP range requests.

The input's georeferencing travels as a dict of GeoTIFF tags named as tifffile names them
(`ModelPixelScaleTag`, `ModelTiepointTag`, ...; the names without the `Tag` suffix are accepted too) and
is copied verbatim, so the mask lands exactly on the image it was computed from. The input's GDAL_NODATA
and GDAL_METADATA are not copied: they describe the input's pixel values (a no-data value of 0 in an
aerial mosaic would hide class 0), not the class ids; the labels' own no-data value is `nodata`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tifffile

from magnet_cli.classes import ClassInfo
from magnet_cli.errors import OutputError
from magnet_cli.io.labels import open_label_levels, replace_file_atomically

# Tag name -> (code, TIFF data type as tifffile's extratags expects it).
GEOTIFF_TAGS: dict[str, tuple[int, str]] = {
    "ModelPixelScaleTag": (33550, "d"),
    "ModelTiepointTag": (33922, "d"),
    "ModelTransformationTag": (34264, "d"),
    "GeoKeyDirectoryTag": (34735, "H"),
    "GeoDoubleParamsTag": (34736, "d"),
    "GeoAsciiParamsTag": (34737, "s"),
}
# Any of these places the image on the earth (the GeoKeys alone name a CRS but no position).
PLACING_TAGS = ("ModelPixelScaleTag", "ModelTiepointTag", "ModelTransformationTag")
GDAL_NODATA_TAG = 42113
# Above this many uncompressed bytes the file is written as BigTIFF (classic TIFF offsets stop at 4 GiB;
# the margin covers incompressible tiles and the tile tables).
BIGTIFF_THRESHOLD = 2**31
# The ImageDescription of every GeoTIFF magnet-cli writes: how --overwrite knows the file is its own.
# GDAL's COG driver keeps it (it copies the TIFFTAG_IMAGEDESCRIPTION metadata item).
GEOTIFF_MARKER = "magnet-cli-geotiff/1: class ids of a magnet-cli label image"
# GDAL's block cache during the COG rewrite, in MB (GDAL's own default is 5% of RAM, so memory would grow
# with the machine): a 16384^2 label image peaked at +25 MB with 128 MB and +280 MB with GDAL's default on a
# 23 GB VM. GDAL_CACHEMAX in the environment wins.
COG_CACHE_MB = 128
# A last stored level above this many pixels is not subsampled further in memory: the pyramid stops there.
MAX_IN_MEMORY_LEVEL = 1 << 24
GIS_EXTRA = "pip install 'magnet-cli[gis]'"
NO_COG_WARNING = (
    f"rasterio is not installed: --geotiff writes a tiled GeoTIFF with internal overviews, not a Cloud "
    f"Optimized GeoTIFF ({GIS_EXTRA} for a COG)"
)


def is_magnet_geotiff(path: Path) -> bool:
    """Whether `path` is a GeoTIFF magnet-cli wrote (its first page carries our description)."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages.first.description == GEOTIFF_MARKER
    except Exception:  # unreadable, not a TIFF, a folder: not ours
        return False


def has_georeferencing(georeference: dict | None) -> bool:
    """Whether the input's tags place it on the earth (a GeoTIFF from it is then not in pixel space)."""
    tags = georeference or {}
    return any(tags.get(name) is not None or tags.get(name.removesuffix("Tag")) is not None for name in PLACING_TAGS)


def cog_supported() -> bool:
    """Whether rasterio (GDAL's COG driver) is importable here: else `write_geotiff` writes a tiled GeoTIFF."""
    try:
        import rasterio.shutil  # noqa: F401
    except ImportError:
        return False
    return True


def geotiff_extratags(georeference: dict | None, nodata: int | None = None) -> list[tuple[int, str, int, Any, bool]]:
    """tifffile `extratags` for the georeferencing tags in `georeference` (other keys are ignored) and the
    labels' no-data value."""
    tags: dict[int, tuple[int, str, int, Any, bool]] = {}
    for name, value in (georeference or {}).items():
        key = name if name in GEOTIFF_TAGS else f"{name}Tag"
        if key not in GEOTIFF_TAGS or value is None:
            continue
        code, dtype = GEOTIFF_TAGS[key]
        if dtype == "s":
            tags[code] = (code, dtype, 0, str(value), True)
        else:
            values = tuple(np.asarray(value, dtype=np.float64 if dtype == "d" else np.uint16).ravel().tolist())
            tags[code] = (code, dtype, len(values), values, True)
    if nodata is not None:
        tags[GDAL_NODATA_TAG] = (GDAL_NODATA_TAG, "s", 0, str(int(nodata)), True)
    return [tags[code] for code in sorted(tags)]


def colormap(classes: Sequence[ClassInfo], dtype: np.dtype) -> np.ndarray:
    """The TIFF ColorMap (3, 2**bits) uint16 of the class colours; ids without a class are black."""
    table = np.zeros((3, 2 ** (8 * np.dtype(dtype).itemsize)), dtype=np.uint16)
    colors = np.array([c.color for c in classes], dtype=np.uint16).reshape(-1, 3)[: table.shape[1]]
    table[:, : len(colors)] = colors.T * 257  # 8-bit -> 16-bit: 255 -> 65535
    return table


def write_geotiff(
    label_path: Path | Sequence[Any],
    tif_path: Path,
    georeference: dict | None,
    tile: int = 512,
    *,
    classes: Sequence[ClassInfo] | None = None,
    nodata: int | None = None,
    cog: bool | None = None,
) -> Path:
    """Write the label image at `label_path` (or its levels, finest first) as a GeoTIFF at `tif_path`:
    a COG when `cog` (default: when rasterio is installed), else a tiled GeoTIFF with internal overviews.

    `classes` gives the colour map (uint8 and uint16 labels), `nodata` the labels' no-data value. Memory
    holds one row of `tile` x (chunk width) pixels at a time. An existing file at `tif_path` is replaced
    (atomically); callers enforce any --overwrite policy.
    """
    if tile < 16 or tile % 16:
        raise ValueError(f"TIFF tiles must be a positive multiple of 16, got {tile}")
    levels = open_label_levels(label_path) if isinstance(label_path, (str, Path)) else list(label_path)
    cog = cog_supported() if cog is None else cog
    tif_path = Path(tif_path)
    with replace_file_atomically(tif_path) as temporary:
        tiled = temporary.with_name(f"{temporary.stem}.tiled{temporary.suffix}") if cog else temporary
        try:
            _write_tiled(levels, tiled, georeference, tile, classes, nodata)
            if cog:
                _convert_to_cog(tiled, temporary, tile, tif_path)
        finally:
            if cog:
                with contextlib.suppress(FileNotFoundError):
                    tiled.unlink()
    return tif_path


def _write_tiled(
    levels: Sequence[Any], path: Path, georeference: dict | None, tile: int,
    classes: Sequence[ClassInfo] | None, nodata: int | None,
) -> None:
    """Stream the levels into a tiled GeoTIFF: level 0, then each overview as a reduced-resolution page."""
    height, width = levels[0].shape
    dtype = np.dtype(levels[0].dtype)
    palette = dict(photometric="palette", colormap=colormap(classes, dtype)) if classes else dict(photometric="minisblack")
    with tifffile.TiffWriter(path, bigtiff=height * width * dtype.itemsize > BIGTIFF_THRESHOLD) as tif:
        for index, array in enumerate(_overview_levels(levels, tile)):
            tif.write(
                _tiles(array, tile),
                shape=array.shape,
                dtype=dtype,
                tile=(tile, tile),
                compression="zlib",
                subfiletype=1 if index else 0,  # 1: a reduced-resolution version of page 0 (an overview)
                extratags=geotiff_extratags(georeference, nodata) if index == 0 else None,
                description=GEOTIFF_MARKER if index == 0 else None,
                software="magnet-cli",
                metadata=None,
                **palette,
            )


def _overview_levels(levels: Sequence[Any], tile: int) -> list[Any]:
    """Level 0 and the overviews: the label image's own stored levels while each halves the one before
    (rounding up, as GDAL sizes overviews), then, from a small last level, further halvings in memory,
    until the long side fits in one tile.

    The stored levels are level 0 sampled every 2^k pixels, written while segmenting: reusing them costs
    a third of level 0 in reads, never averages class ids, and makes the COG show at every zoom exactly
    what the OME-Zarr shows. (GDAL would re-read level 0 and write a temporary file to build them.)"""
    chosen = [levels[0]]
    for array in levels[1:]:
        if max(chosen[-1].shape) <= tile or tuple(array.shape) != _halved(chosen[-1].shape):
            break
        chosen.append(array)
    while max(chosen[-1].shape) > tile and chosen[-1].shape[0] * chosen[-1].shape[1] <= MAX_IN_MEMORY_LEVEL:
        chosen.append(np.asarray(chosen[-1][...])[::2, ::2])
    return chosen


def _halved(shape: Sequence[int]) -> tuple[int, int]:
    return (-(-shape[0] // 2), -(-shape[1] // 2))


def _convert_to_cog(tiled: Path, target: Path, tile: int, shown: Path) -> None:
    """Rewrite a tiled GeoTIFF as a COG with GDAL's COG driver, keeping its overviews (OVERVIEWS=AUTO
    uses a source's own), colour map, georeferencing, no-data and description. GDAL streams block by
    block through its bounded block cache."""
    import rasterio
    import rasterio.shutil
    from rasterio._err import CPLE_BaseError  # GDAL's errors (disk full, ...): not public in rasterio 1.4
    from rasterio.errors import RasterioError

    cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": COG_CACHE_MB}
    try:
        with rasterio.Env(**cache):
            rasterio.shutil.copy(
                tiled, target, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=tile, BIGTIFF="IF_SAFER",
                OVERVIEW_RESAMPLING="NEAREST",  # only when GDAL must build them (no stored pyramid): never average ids
            )
    except (RasterioError, CPLE_BaseError) as error:
        raise OutputError(f"cannot write {shown}: {error}") from None


def _tiles(array: Any, tile: int) -> Iterator[np.ndarray]:
    """The tiles of a 2-D (lazy) array in row-major order, read a block of whole stored chunks at a time."""
    height, width = array.shape
    chunk_width = array.chunks[1] if getattr(array, "chunks", None) else tile
    block_width = max(tile, -(-chunk_width // tile) * tile)  # whole tiles, at least one stored chunk wide
    for y in range(0, height, tile):
        for bx in range(0, width, block_width):
            block = np.asarray(array[y : y + tile, bx : bx + block_width])
            for x in range(0, block.shape[1], tile):
                yield block[:, x : x + tile]  # edge tiles are zero-padded by tifffile
