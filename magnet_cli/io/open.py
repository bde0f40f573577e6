"""Open any supported input by its content (TIFF, PNG/JPEG/..., Zarr folder; whole-slide formats through
OpenSlide), list a folder's images, describe one."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from magnet_cli.errors import InputError
from magnet_cli.io.base import DEFAULT_MAX_PIXELS, ImageSource, size_problems
from magnet_cli.io.openslide_source import SLIDE_FORMATS, OpenSlideSource, slide_parts
from magnet_cli.io.raster import RasterSource
from magnet_cli.io.tiff import TiffSource
from magnet_cli.io.zarr_source import ZarrSource, is_zarr_dir

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".tf2", ".svs", ".gtif", ".gtiff", ".ndpi", ".scn", ".qptiff"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp"}
# DICOM spreads one slide over many .dcm files (one a level): a folder lists none, name one of them.
SUPPORTED_SUFFIXES = TIFF_SUFFIXES | RASTER_SUFFIXES | (SLIDE_FORMATS.keys() - {".dcm"})


def sniff(head: bytes, suffix: str = "") -> str | None:
    """'tiff', 'slide' (through OpenSlide), 'raster' or None from a file's first bytes and suffix.

    TIFF-based slides (SVS, NDPI, ...) are 'tiff'. The other slide formats are known by their suffix,
    as OpenSlide knows them (a MIRAX .mrxs file's content is not the slide), so that comes before the
    raster headers."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if suffix.lower() in SLIDE_FORMATS:
        return "slide"
    if (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")
        or head[:4] in (b"GIF8",)
        or head[:2] == b"BM"
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    ):
        return "raster"
    return None


# The reader of each kind `sniff` returns: a new format is one more entry here and in `sniff`.
READERS: dict[str, Callable[[Path], ImageSource]] = {
    "tiff": TiffSource,
    "slide": OpenSlideSource,
    "raster": RasterSource,
}


def open_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = True) -> ImageSource:
    """The ImageSource for a file or Zarr folder, chosen by content rather than by name (but for the
    non-TIFF slide formats OpenSlide reads, which only their suffix tells apart).

    Headers are not trusted: an image above `max_pixels`, or whose headers show a problem (a declared size
    its tile tables or chunks cannot back, an unsupported bit depth, ...) is refused with InputError.
    With strict=False it opens anyway and the problems are in `source.problems` (for `magnet info`).
    """
    source = _open_reader(Path(path))
    source.problems = source.problems + size_problems(source.height, source.width, max_pixels)
    if strict and source.problems:
        source.close()
        raise InputError(f"{source.path}: {source.problems[0]}")
    return source


def _open_reader(path: Path) -> ImageSource:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        if is_zarr_dir(path):
            return ZarrSource(path)
        raise InputError(f"{path}: a folder but not a Zarr store (no zarr.json, .zarray or .zgroup)")
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not head and path.suffix.lower() not in SLIDE_FORMATS:  # OpenSlide reads no slide from a .mrxs file itself
        raise InputError(f"{path}: empty file")
    kind = sniff(head, path.suffix)
    if kind is not None:
        return READERS[kind](path)
    expected = "a TIFF" if path.suffix.lower() in TIFF_SUFFIXES else "a supported image (TIFF, PNG, JPEG or Zarr)"
    raise InputError(f"{path}: not {expected} (unrecognised file header)")


def list_images(folder: str | Path) -> list[Path]:
    """Supported images directly in a folder (files by suffix, Zarr stores), sorted, hidden ones skipped,
    and so are the JPEGs a Hamamatsu .vms file makes its slide of."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    found = []
    entries = sorted(folder.iterdir())
    parts = slide_parts(entries)
    for entry in entries:
        if entry.name.startswith(".") or entry in parts:
            continue
        if entry.is_dir():
            if is_zarr_dir(entry):
                found.append(entry)
        elif entry.suffix.lower() in SUPPORTED_SUFFIXES:
            found.append(entry)
    return found


def map_placement(source: ImageSource) -> dict:
    """The CRS by name, the pixel size in map units and the bounds, where the image is georeferenced."""
    from magnet_cli.io.georeference import crs_name, epsg_code, geo_transform

    transform = geo_transform(source.georeference)
    if transform is None:
        return {}
    a, b, c, d, e, f = transform
    corners = [(a * col + b * row + c, d * col + e * row + f) for col in (0, source.width) for row in (0, source.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    epsg = epsg_code(source.georeference)
    return {
        "crs": crs_name(epsg) if epsg is not None else "not named by an EPSG code (see georeference)",
        "pixel_size": [math.hypot(a, d), math.hypot(b, e)],  # map units per pixel along x and y
        "bounds": {"left": min(xs), "bottom": min(ys), "right": max(xs), "top": max(ys)},
    }


def describe(source: ImageSource) -> dict:
    """A JSON-serialisable summary of an opened image, as `magnet info` prints it."""
    return {
        "path": str(source.path),
        "format": source.format_name,
        "height": source.height,
        "width": source.width,
        "bands": source.bands,
        "dtype": str(source.dtype),
        "levels": [
            [level.height, level.width, round(max(level.downsample_y, level.downsample_x), 4)]
            for level in source.levels
        ],
        "chunks": list(source.chunks) if source.chunks is not None else None,
        # The level-0 pixel size in its unit ("0.25 um", "0.5 m"), from whichever metadata the reader found;
        # a georeference without a named CRS gives its pixel size in unnamed map units (x, y) instead.
        **({"pixel_size": str(source.pixel_size)} if source.pixel_size is not None else {}),
        **{k: v for k, v in map_placement(source).items() if not (k == "pixel_size" and source.pixel_size)},
        "georeference": source.georeference,
        # Header problems (open_image refuses such images) and what tifffile noticed while parsing.
        "warnings": list(source.problems) + list(source.extra.get("warnings", [])),
    }

