"""Whole-slide formats tifffile cannot read (MIRAX, Hamamatsu VMS/VMU, Sakura, DICOM) through OpenSlide.

An optional extra (`pip install 'magnet-cli[openslide]'`): openslide-python with the OpenSlide library
from openslide-bin. The slide's own levels are the pyramid; its microns per pixel go into `extra`.
TIFF-based slides (SVS, NDPI, Philips, Ventana, generic tiled TIFF) stay on tifffile (io/tiff.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from magnet_cli.errors import InputError
from magnet_cli.io.base import MAX_SOURCE_PIXELS_PER_READ, ImageSource, PyramidLevel, check_image
from magnet_cli.io.pixel_size import pixel_size
from magnet_cli.io.zarr_source import region_index

# Slide formats that are not TIFF, by the suffix OpenSlide itself recognises them by (a MIRAX .mrxs file
# says little about its content: the slide is the folder beside it), with the name users know them by.
SLIDE_FORMATS = {
    ".mrxs": "MIRAX",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".svslide": "Sakura",
    ".dcm": "DICOM",
}
# Keys of a VMS/VMU file that name the slide's other files ("ImageFile(1,0)" for a grid of JPEGs).
SLIDE_PART_KEYS = ("ImageFile", "MapFile", "OptimisationFile", "MacroImage")
INSTALL_HINT = "pip install 'magnet-cli[openslide]'"
WHITE = (255, 255, 255)


def slide_format(path: Path) -> str:
    """The name of the slide format a path's suffix names ('whole-slide' when none)."""
    return SLIDE_FORMATS.get(path.suffix.lower(), "whole-slide")


def slide_parts(folder_entries: list[Path]) -> set[Path]:
    """The files a Hamamatsu VMS/VMU key file in `folder_entries` names (its JPEGs, map, optimisation
    file): parts of that slide, not images of their own when a folder is listed."""
    parts = set()
    for entry in folder_entries:
        # OpenSlide reads key files of at most 64 KiB too
        if entry.suffix.lower() not in (".vms", ".vmu") or not entry.is_file() or entry.stat().st_size > 1 << 16:
            continue
        try:
            text = entry.read_text(errors="replace")
        except OSError:  # unreadable: opening it will say so
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip().startswith(SLIDE_PART_KEYS) and value.strip():
                parts.add(entry.parent / value.strip())
    return parts


def _openslide(path: Path) -> Any:
    """The openslide module, or one line saying the extra is missing."""
    try:
        import openslide
    except (ImportError, OSError):  # OSError: openslide-python installed without the library it loads
        raise InputError(f"{path}: a {slide_format(path)} slide needs OpenSlide: {INSTALL_HINT}") from None
    return openslide


class OpenSlideSource(ImageSource):
    """A slide read through OpenSlide: RGB uint8, the slide's levels as the pyramid, read lazily."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        openslide = _openslide(path)
        self._error = openslide.OpenSlideError
        try:
            self._slide = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise InputError(f"{path}: not a {slide_format(path)} slide OpenSlide can read") from None
        except openslide.OpenSlideError as exc:
            raise InputError(f"{path}: cannot open the slide: {exc}") from exc
        try:
            self._describe(path)
        except BaseException:
            self.close()
            raise

    def _describe(self, path: Path) -> None:
        slide = self._slide
        properties = slide.properties
        width, height = slide.dimensions
        check_image(path, height, width, np.dtype(np.uint8))
        # Our geometry uses each axis's own ratio (as io/tiff.py does); OpenSlide's level_downsamples
        # (the mean of the two) only turns level pixels into the level-0 location read_region takes.
        levels = [PyramidLevel(h, w, height / h, width / w) for w, h in slide.level_dimensions]
        if any(level.height <= 0 or level.width <= 0 for level in levels):
            raise InputError(f"{path}: empty pyramid level among {slide.level_dimensions}")
        self._downsamples = list(slide.level_downsamples)
        self._background = _background(properties.get("openslide.background-color"))
        vendor = properties.get("openslide.vendor", "unknown")
        extra: dict[str, Any] = {"vendor": vendor}
        for axis in ("x", "y"):
            mpp = _positive_float(properties.get(f"openslide.mpp-{axis}"))
            if mpp is not None:
                extra[f"mpp_{axis}"] = mpp  # micrometres per level-0 pixel
        tile = [properties.get(f"openslide.level[0].tile-{side}") for side in ("height", "width")]
        chunks = (int(tile[0]), int(tile[1])) if all(t and t.isdigit() for t in tile) else None
        size = pixel_size(extra.get("mpp_y"), extra.get("mpp_x"), "um")
        super().__init__(
            path, height, width, 3, np.dtype(np.uint8), levels, chunks, f"OpenSlide ({vendor})", None, extra, pixel_size=size
        )

    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if self._slide is None:
            raise InputError(f"{self.path}: read after close")
        shape = self.levels[level]
        region_index("YX", (shape.height, shape.width), y0, x0, y1, x1)  # the bounds check every reader makes
        height, width = y1 - y0, x1 - x0
        out = np.empty((height, width, 3), np.uint8)
        # read_region allocates width x rows x 4 bytes of RGBA (and a PIL copy): read in strips of at most
        # MAX_SOURCE_PIXELS_PER_READ pixels, so a large region costs its RGB output and one bounded strip.
        rows = max(1, MAX_SOURCE_PIXELS_PER_READ // max(1, width))
        downsample = self._downsamples[level]
        for top in range(y0, y1, rows):
            bottom = min(y1, top + rows)
            # The location is in level-0 pixels, the size in level pixels. At a level whose downsample is
            # not a whole number, OpenSlide places the strip to within a fraction of a level pixel and
            # blends; at whole-number downsamples (and level 0) the samples are the stored ones.
            location = (round(x0 * downsample), round(top * downsample))
            try:
                region = self._slide.read_region(location, level, (width, bottom - top))
            except self._error as exc:
                raise InputError(
                    f"{self.path}: cannot decode level {level} rows {top}:{bottom} columns {x0}:{x1}: {exc}"
                ) from exc
            out[top - y0 : bottom - y0] = _over_background(np.asarray(region), self._background)
        return out

    def close(self) -> None:
        slide, self._slide = getattr(self, "_slide", None), None
        if slide is not None:
            slide.close()


def _over_background(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """RGB of OpenSlide's RGBA (not premultiplied) composited over the slide's background colour.

    Pixels outside the scanned area come back fully transparent (alpha 0); OpenSlide's convention is to
    show them as the slide's background colour, white unless the slide says otherwise, which is also
    what an empty glass slide looks like to a model trained on brightfield scans.
    """
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.size == 0 or alpha.min() == 255:
        return rgb
    alpha = alpha.astype(np.uint32)
    blended = rgb.astype(np.uint32) * alpha + np.asarray(background, np.uint32) * (255 - alpha)
    return ((blended + 127) // 255).astype(np.uint8)


def _background(value: str | None) -> tuple[int, int, int]:
    """The 'RRGGBB' of openslide.background-color, white when absent or malformed."""
    if value is None or len(value) != 6:
        return WHITE
    try:
        return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        return WHITE


def _positive_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None
