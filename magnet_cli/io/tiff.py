"""TIFF, BigTIFF, OME-TIFF, SVS and GeoTIFF as an ImageSource, decoding only the tiles/strips a read touches.

Compressed data is read through tifffile's Zarr store (one Zarr chunk per TIFF tile or strip); uncompressed
contiguous data is memory-mapped. The image read is the largest series (SVS: the baseline pyramid, not
the thumbnail, label or macro), with its pyramid from SubIFDs or reduced-resolution pages.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from zarr.storage import WrapperStore

from magnet_cli.errors import InputError
from magnet_cli.io.base import ImageSource, PyramidLevel, check_axes, check_image
from magnet_cli.io.georeference import map_pixel_size
from magnet_cli.io.pixel_size import PixelSize, pixel_size, tiff_resolution
from magnet_cli.io.tile_cache import TileCache
from magnet_cli.io.zarr_source import band_count, region_index, to_yxc, yx

# GeoTIFF and GDAL tags copied into `ImageSource.georeference` under these names (GeoTIFF writers map the
# names back to the codes).
GEOTIFF_TAGS = {
    33550: "ModelPixelScaleTag",
    33922: "ModelTiepointTag",
    34264: "ModelTransformationTag",
    34735: "GeoKeyDirectoryTag",
    34736: "GeoDoubleParamsTag",
    34737: "GeoAsciiParamsTag",
    42112: "GDAL_METADATA",
    42113: "GDAL_NODATA",
}
# Decode a small probe region at open (to fail early on missing codecs and corrupt first tiles) only when
# the tile holding it is at most this many pixels; a huge single strip would cost a full decode.
PROBE_MAX_CHUNK_PIXELS = 1 << 24
# Bits per sample of the sample types the model input is normalised from (uint8, uint16, float16/32/64).
# Others (1-bit bilevel, 7- or 12-bit packed) would be read as something they are not.
SUPPORTED_BITS_PER_SAMPLE = (8, 16, 32, 64)
# Microns per pixel in an Aperio (SVS) ImageDescription: "Aperio Image Library ...|AppMag = 20|MPP = 0.4990|..."
SVS_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


class TiffSource(ImageSource):
    """The main image of a TIFF file with its stored pyramid, read lazily."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        self._tif: tifffile.TiffFile | None = None
        self._stores: list[Any] = []
        self._arrays: list[Any] = []
        self._tiles = TileCache()
        try:
            self._open(path)
        except BaseException:
            self._close_handles()
            raise

    def _open(self, path: Path) -> None:
        warnings: list[str] = []
        try:
            with _captured_warnings(warnings):
                self._tif = tifffile.TiffFile(path)
                series_index, series = _main_series(self._tif, path)
                problems = _header_problems(series, path.stat().st_size)
                opened = [self._open_level(path, series, index) for index in range(len(series.levels))]
                keyframe = series.keyframe
                georeference = _georeference(keyframe)
                size = _pixel_size(self._tif, series_index, keyframe, georeference)
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # tifffile/zarr errors on a malformed file
            raise InputError(f"{path}: not a readable TIFF file: {exc}") from exc
        self._arrays = [array for array, _ in opened]
        self._axes = [axes for _, axes in opened]
        self._failures: list[dict[str, Exception]] = [
            {} if isinstance(array, np.memmap) else array.store.failures for array in self._arrays
        ]
        shapes = [yx(array.shape, axes) for array, axes in opened]
        height, width = shapes[0]
        if series.dtype is None:
            raise InputError(f"{path}: unsupported TIFF sample format ({keyframe.bitspersample} bits per sample)")
        dtype = np.dtype(series.dtype).newbyteorder("=")
        check_image(path, height, width, dtype)
        if any(h <= 0 or w <= 0 for h, w in shapes):
            raise InputError(f"{path}: empty pyramid level among {shapes}")
        tif = self._tif
        kind = "OME-TIFF" if tif.is_ome else "SVS" if tif.is_svs else "TIFF"
        if tif.is_bigtiff:
            kind += " (BigTIFF)"
        if georeference is not None:
            kind = "GeoTIFF" + kind[4:] if kind.startswith("TIFF") else kind + " + GeoTIFF"
        chunks = (
            (keyframe.tilelength, keyframe.tilewidth)
            if keyframe.is_tiled
            else (min(keyframe.rowsperstrip, keyframe.imagelength), keyframe.imagewidth)
        )
        extra: dict[str, Any] = {
            "series": series_index,
            "series_name": series.name,
            "axes": _shape_axes(series)[1],
            "compression": _name(keyframe.compression),
            "photometric": _name(keyframe.photometric),
            "planar": keyframe.planarconfig == 2,
        }
        extra.update(_sample_range_tags(keyframe))
        alpha = _alpha_band(keyframe)
        if alpha is not None:
            extra["alpha_band"] = alpha
        if warnings:
            extra["warnings"] = warnings
        base_axes, base_shape = self._axes[0], self._arrays[0].shape
        bands = base_shape[base_axes.index("C")] if "C" in base_axes else 1
        levels = [PyramidLevel(h, w, height / h, width / w) for h, w in shapes]
        super().__init__(path, height, width, bands, dtype, levels, chunks, kind, georeference, extra, problems, size)
        if problems:  # refused by open_image, or only described by `magnet info`: decode nothing
            return
        if not isinstance(self._arrays[0], np.memmap) and chunks[0] * chunks[1] <= PROBE_MAX_CHUNK_PIXELS:
            self.read_level(0, 0, 0, 1, 1)  # fail at open on a missing codec or a corrupt first tile

    def _open_level(self, path: Path, series: tifffile.TiffPageSeries, index: int) -> tuple[Any, str]:
        """The array of one pyramid level (memory map or Zarr view) and its one-letter axes."""
        level = series.levels[index]
        shape, axes = _shape_axes(level)
        letters = _letters(path, axes, shape)
        offset = level.dataoffset
        if offset is not None and getattr(series, "transform", None) is None and level.dtype is not None:
            dtype = np.dtype(self._tif.byteorder + level.dtype.char)
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), letters
        store = _FailureRecordingStore(series.aszarr(level=index, squeeze=False))
        self._stores.append(store)
        array = zarr.open_array(store, mode="r")  # tifffile < 2026.5.2 serves Zarr format 2, later ones format 3
        if tuple(array.shape) != tuple(shape):
            raise InputError(f"{path}: level {index} reads as {array.shape}, expected {shape}")
        return array, letters

    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if self._tif is None:
            raise InputError(f"{self.path}: read after close")
        array, axes = self._arrays[level], self._axes[level]
        if isinstance(array, np.memmap):  # uncompressed: nothing to decode, nothing to keep
            return self._read_region(level, y0, x0, y1, x1)
        return self._tiles.region(
            level, yx(array.chunks, axes), yx(array.shape, axes), (y0, x0, y1, x1),
            lambda *box: self._read_region(level, *box), array.dtype.itemsize * band_count(array, axes),
        )

    def _read_region(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        array, axes = self._arrays[level], self._axes[level]
        index = region_index(axes, array.shape, y0, x0, y1, x1)
        try:
            data = np.asarray(array[index])
            failures = self._failures[level]
            if failures:
                bad = sorted(_chunk_keys(index, array) & failures.keys())
                if bad:
                    raise failures[bad[0]]
        except MemoryError:
            raise
        except Exception as exc:  # truncated file, corrupt tile, missing codec
            raise InputError(
                f"{self.path}: cannot decode level {level} rows {y0}:{y1} columns {x0}:{x1} "
                f"(corrupt or truncated TIFF?): {exc}"
            ) from exc
        return to_yxc(data, axes)

    def close(self) -> None:
        self._arrays = []
        self._close_handles()

    def _close_handles(self) -> None:
        for store in self._stores:
            try:
                store.close()
            except Exception:  # closing a half-opened store must not hide the original error
                pass
        self._stores = []
        if self._tif is not None:
            self._tif.close()
            self._tif = None


# --------------------------------------------------------------------------------------------------
class _FailureRecordingStore(WrapperStore):
    """tifffile's Zarr store, with tiles that fail to decode recorded and served as missing.

    Zarr fetches the chunks of one read concurrently; had a tile's exception propagated, the sibling fetches
    would still be running after the read returned (and fail noisily once the file is closed). Instead
    every fetch completes, and read_level raises for recorded failures inside the region it read.
    """

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.failures: dict[str, Exception] = {}

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        try:
            return await self._store.get(key, prototype, byte_range)
        except Exception as exc:  # corrupt/truncated tile or missing codec: reported by read_level
            self.failures[key] = exc
            return None


def _chunk_keys(index: tuple, array: zarr.Array) -> set[str]:
    """Store keys of the chunks an index of ints and slices touches, in the array's own key encoding
    ('i.j.k' for Zarr format 2, 'c/i/j/k' for format 3)."""
    ranges = []
    for selection, size, chunk in zip(index, array.shape, array.chunks):
        if isinstance(selection, slice):
            start, stop, _ = selection.indices(size)
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
        else:
            ranges.append(range(selection // chunk, selection // chunk + 1))
    return {array.metadata.encode_chunk_key(key) for key in itertools.product(*ranges)}


def _header_problems(series: tifffile.TiffPageSeries, file_size: int) -> list[str]:
    """What the first page of each pyramid level shows is wrong, from its tags alone (no decoding):
    an unsupported bit depth, and tile/strip tables that cannot back the declared size. Without the
    table checks a header claiming 10^7 x 10^7 pixels over 16 tiles reads as gigabytes of zeros."""
    problems: list[str] = []
    for index, level in enumerate(series.levels):
        page = level.keyframe
        where = f"level {index}: " if index else ""
        bits = page.bitspersample
        if bits not in SUPPORTED_BITS_PER_SAMPLE:
            problems.append(f"{where}unsupported bit depth ({bits} bits per sample; 8, 16, 32 or 64 are read)")
        kind = "tiles" if page.is_tiled else "strips"
        chunk_samples, image_samples = math.prod(page.chunks), math.prod(page.shape)
        if chunk_samples > max(image_samples, PROBE_MAX_CHUNK_PIXELS):  # one decode would allocate it whole
            problems.append(f"{where}{kind[:-1]} of {'x'.join(map(str, page.chunks))} samples, larger than the image")
            continue
        needed = math.prod(page.chunked)
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if len(offsets) < needed or len(counts) < needed:
            problems.append(
                f"{where}declares {page.imagelength}x{page.imagewidth} pixels in {needed} {kind} but its "
                f"{kind[:-1]} tables list only {min(len(offsets), len(counts))} (a size its data cannot back)"
            )
            continue
        offsets, counts = offsets[:needed], counts[:needed]
        missing = int(np.count_nonzero((offsets <= 0) | (counts <= 0)))
        if missing:
            problems.append(f"{where}{missing} of {needed} {kind} are missing (zero offset or byte count)")
        beyond = int(np.count_nonzero(offsets + counts > file_size))
        if beyond:
            problems.append(f"{where}{beyond} of {needed} {kind} lie past the end of the file (truncated?)")
    return list(dict.fromkeys(problems))


def _main_series(tif: tifffile.TiffFile, path: Path) -> tuple[int, tifffile.TiffPageSeries]:
    """The series with the most pixels in its full-resolution level (first on ties), with every
    dimension kept (length-1 ones included), so that check_axes sees what the file stores."""
    # tifffile >= 2026.5.2: TiffFile.series is callable and each series object is squeezed or not;
    # earlier releases return one list whose series answer both ways (get_shape/get_axes(squeeze)).
    every = list(tif.series(squeeze=False)) if callable(tif.series) else list(tif.series)
    best, best_pixels = -1, -1
    for index, series in enumerate(every):
        shape, axes = _shape_axes(series)
        if "Y" not in axes or "X" not in axes:
            continue
        pixels = shape[axes.index("Y")] * shape[axes.index("X")]
        if pixels > best_pixels:
            best, best_pixels = index, pixels
    shapes = [series.shape for series in tif.series]  # squeezed, as users know the image
    if best < 0 or best_pixels == 0:
        empty = [shape for shape in shapes if 0 in shape]
        raise InputError(f"{path}: " + (f"empty image (shape {empty[0]})" if empty else "no image"))
    return best, every[best]


def _shape_axes(series: tifffile.TiffPageSeries) -> tuple[tuple[int, ...], str]:
    """Shape and tifffile axis codes of a series or pyramid level, length-1 dimensions included."""
    if hasattr(series, "get_axes"):  # tifffile < 2026.5.2: a series is squeezed unless asked otherwise
        return tuple(series.get_shape(False)), series.get_axes(False)
    return tuple(series.shape), series.axes  # later: the series from tif.series(squeeze=False) is unsqueezed


def _letters(path: Path, axes: str, shape: tuple[int, ...]) -> str:
    """tifffile axes -> 'Y', 'X', 'C' (samples or channels longer than 1) and '_' for axes read at index 0."""
    letters = "".join(
        axis if axis in "YX" else "C" if axis in "SC" and size > 1 else "_" for axis, size in zip(axes, shape)
    )
    check_axes(path, letters, shape, axes)
    return letters


def _sample_range_tags(page: tifffile.TiffPage) -> dict[str, int]:
    """MaxSampleValue (when set) and BitsPerSample, which say how much of its sample type the image uses
    (io/value_range.py)."""
    found: dict[str, int] = {}
    maximum = page.tags.valueof(281)  # MaxSampleValue, one value or one per sample
    if maximum is not None:
        found["max_sample_value"] = int(max(maximum) if isinstance(maximum, (tuple, list)) else maximum)
    bits = page.bitspersample
    found["bits_per_sample"] = int(max(bits) if isinstance(bits, (tuple, list)) else bits)
    return found


def _alpha_band(page: tifffile.TiffPage) -> int | None:
    """The index of the first alpha sample (ExtraSamples 1 or 2: associated or unassociated alpha)."""
    extra = tuple(page.extrasamples or ())
    for index, kind in enumerate(extra):
        if int(kind) in (1, 2):
            return int(page.samplesperpixel) - len(extra) + index
    return None


def _georeference(page: tifffile.TiffPage) -> dict | None:
    """GeoTIFF/GDAL tags of the main page as JSON-serialisable values, or None when there are none."""
    found = {name: _jsonable(page.tags.valueof(code)) for code, name in GEOTIFF_TAGS.items() if code in page.tags}
    if not found:
        return None
    if 34735 in page.tags:
        geokeys = page.geotiff_tags or {}
        found["GeoKeys"] = {
            str(key): _jsonable(value)
            for key, value in geokeys.items()
            if key not in ("ModelPixelScale", "ModelTiepoint", "ModelTransformation", "IntergraphMatrix")
        }
    return found


def _pixel_size(tif: tifffile.TiffFile, series: int, page: tifffile.TiffPage, georeference: dict | None) -> PixelSize | None:
    """The level-0 pixel size the file states: a GeoTIFF's pixel scale (map units), else OME's
    PhysicalSizeX/Y, else an SVS description's MPP, else the TIFF resolution tags (NDPI's among them).
    Metadata that cannot be parsed states none: the pixels are still readable."""
    try:
        return _stated_pixel_size(tif, series, page, georeference)
    except Exception:  # malformed OME-XML, tags of the wrong type: no pixel size rather than no image
        return None


def _stated_pixel_size(tif: tifffile.TiffFile, series: int, page: tifffile.TiffPage, georeference: dict | None) -> PixelSize | None:
    found = map_pixel_size(georeference)
    if found is None and tif.is_ome:
        found = _ome_pixel_size(tif.ome_metadata, series)
    if found is None and tif.is_svs:
        mpp = SVS_MPP.search(tif.pages.first.description or "")
        found = pixel_size(mpp.group(1), mpp.group(1), "um") if mpp else None
    if found is None:
        found = tiff_resolution(page.tags.valueof(282), page.tags.valueof(283), page.tags.valueof(296))
    return found


def _ome_pixel_size(xml: str | None, series: int) -> PixelSize | None:
    """PhysicalSizeY/X of the OME image of the series read (units default to micrometres, as OME says)."""
    images = [e for e in ElementTree.fromstring(xml or "<OME/>").iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"]
    if not images:
        return None
    pixels = images[series] if series < len(images) else images[0]
    y_unit, x_unit = (pixels.get(f"PhysicalSize{a}Unit", "µm") for a in "YX")
    if y_unit != x_unit:
        return None
    return pixel_size(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeX"), x_unit)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, (int, float, str)) else value.name
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00")
    if isinstance(value, str):
        return value.rstrip("\x00")
    return value


def _name(value: Any) -> str:
    return value.name if isinstance(value, enum.Enum) else str(value)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def _captured_warnings(sink: list[str]) -> Iterator[None]:
    """Collect tifffile's warnings about malformed files into `sink` instead of printing them."""
    logger = logging.getLogger("tifffile")
    handler = _ListHandler(sink)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
