"""GeoTIFF export of a finished label image, for GIS users: tiled, deflate-compressed, streamed tile by tile.

The input's georeferencing travels as a dict of GeoTIFF tags named as tifffile names them
(`ModelPixelScaleTag`, `ModelTiepointTag`, ...; the names without the `Tag` suffix are accepted too) and
is copied verbatim, so the mask lands exactly on the image it was computed from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tifffile

from magnet_cli.io.labels import open_label_levels, replace_file_atomically

# Tag name -> (code, TIFF data type as tifffile's extratags expects it).
GEOTIFF_TAGS: dict[str, tuple[int, str]] = {
    "ModelPixelScaleTag": (33550, "d"),
    "ModelTiepointTag": (33922, "d"),
    "ModelTransformationTag": (34264, "d"),
    "GeoKeyDirectoryTag": (34735, "H"),
    "GeoDoubleParamsTag": (34736, "d"),
    "GeoAsciiParamsTag": (34737, "s"),
    "GDAL_METADATA": (42112, "s"),
    "GDAL_NODATA": (42113, "s"),
}
# Above this many uncompressed bytes the file is written as BigTIFF (classic TIFF offsets stop at 4 GiB;
# the margin covers incompressible tiles and the tile tables).
BIGTIFF_THRESHOLD = 2**31
# The ImageDescription of every GeoTIFF magnet-cli writes: how --overwrite knows the file is its own.
GEOTIFF_MARKER = "magnet-cli-geotiff/1: class ids of a magnet-cli label image"


def is_magnet_geotiff(path: Path) -> bool:
    """Whether `path` is a GeoTIFF magnet-cli wrote (its first page carries our description)."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages.first.description == GEOTIFF_MARKER
    except Exception:  # unreadable, not a TIFF, a folder: not ours
        return False


def geotiff_extratags(georeference: dict | None) -> list[tuple[int, str, int, Any, bool]]:
    """tifffile `extratags` for the known GeoTIFF/GDAL tags in `georeference`; other keys are ignored."""
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
    return [tags[code] for code in sorted(tags)]


def write_geotiff(
    label_path: Path | Sequence[Any], tif_path: Path, georeference: dict | None, tile: int = 512
) -> Path:
    """Stream level 0 of the label image at `label_path` (or of its levels, finest first) into a tiled
    GeoTIFF at `tif_path`.

    Memory holds one row of `tile` x (chunk width) pixels at a time. An existing file at `tif_path` is
    replaced (atomically); callers enforce any --overwrite policy.
    """
    if tile < 16 or tile % 16:
        raise ValueError(f"TIFF tiles must be a positive multiple of 16, got {tile}")
    array = (open_label_levels(label_path) if isinstance(label_path, (str, Path)) else label_path)[0]
    height, width = array.shape
    dtype = np.dtype(array.dtype)
    tif_path = Path(tif_path)
    with replace_file_atomically(tif_path) as temporary:
        tifffile.imwrite(
            temporary,
            _tiles(array, tile),
            shape=(height, width),
            dtype=dtype,
            tile=(tile, tile),
            photometric="minisblack",
            compression="zlib",
            bigtiff=height * width * dtype.itemsize > BIGTIFF_THRESHOLD,
            extratags=geotiff_extratags(georeference),
            description=GEOTIFF_MARKER,
            metadata=None,
        )
    return tif_path


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
