"""The one interface every input format implements: read any region at any downsample, lazily."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from magnet_cli.errors import InputError
from magnet_cli.io.pixel_size import PixelSize
from magnet_cli.settings import DEFAULT_MAX_PIXELS  # re-exported: the readers' default limit

# Above this many source pixels a region is read and reduced band by band, so that a coarse window
# over an image without a pyramid never materialises the full-resolution region.
MAX_SOURCE_PIXELS_PER_READ = 1 << 22
# An image is a (y, x) plane with optional bands, plus at most one more axis longer than 1 (a z-stack,
# a time series, a page index) that is read at its first plane. More than that is a volume or a
# hyperstack, where reading index 0 of every other axis would segment an arbitrary slice without a word.
MAX_NON_BAND_DIMS = 3
# Float samples beyond this magnitude are no measurement any instrument makes; they come from corrupt or
# uninitialised data (1e31 was seen in a fuzzed file) and would normalise to a constant image without a word.
MAX_ABS_FLOAT_SAMPLE = 1e30


@dataclass(frozen=True)
class Box:
    """A rectangle in level-0 (full-resolution) pixel coordinates; floats allowed, end-exclusive."""

    y0: float
    x0: float
    y1: float
    x1: float

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def width(self) -> float:
        return self.x1 - self.x0


@dataclass(frozen=True)
class PyramidLevel:
    """One resolution level stored in the input: its pixel shape and its scale relative to level 0."""

    height: int
    width: int
    downsample_y: float
    downsample_x: float


@dataclass(frozen=True)
class PixelNormalization:
    """How raw samples become the model's float input in [0, 1]: which bands, in which order, how many, and
    the value range of the raw dtype."""

    bands: tuple[int, ...] | None = None  # counted from 0, in the order the model sees them; None: `choose_bands`
    value_range: tuple[float, float] | None = None  # None: by dtype (uint8 0..255, uint16 0..65535, float 0..1)
    channels: int = 3  # the model's input channels: how many bands every read returns


@dataclass
class ImageSource(ABC):
    """A lazily read image with an optional stored pyramid.

    Subclasses fill the fields and implement `read_level`; everything else (choosing the pyramid level,
    bounded-memory reduction, conversion to float RGB) is shared here.
    """

    path: Path
    height: int
    width: int
    bands: int
    dtype: np.dtype
    levels: list[PyramidLevel]  # levels[0] is full resolution
    chunks: tuple[int, ...] | None = None
    format_name: str = ""
    georeference: dict | None = None  # JSON-serialisable GeoTIFF tags (ModelPixelScale, ModelTiepoint, ...)
    extra: dict = field(default_factory=dict)
    # What the headers show is wrong (declared size not backed by data, unsupported bit depth, ...), one
    # phrase each without the path: open_image refuses the image on the first, `magnet info` lists them.
    problems: list[str] = field(default_factory=list)
    # The physical size of a level-0 pixel, where the file says it (io/pixel_size.py); None when it does not.
    pixel_size: PixelSize | None = None

    @abstractmethod
    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Raw samples of an integer region of one stored level, shape (y1-y0, x1-x0, bands)."""

    @property
    def nodata(self) -> float | None:
        """The no-data value the input declares (GeoTIFF GDAL_NODATA), None when it declares none."""
        text = (self.georeference or {}).get("GDAL_NODATA")
        try:
            value = float(str(text).strip().strip("\x00")) if text is not None else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) else None

    @property
    def alpha_band(self) -> int | None:
        """The index (from 0) of the input's alpha band, where its format says it has one (`extra`)."""
        return self.extra.get("alpha_band")

    def close(self) -> None:
        """Release file handles. Idempotent."""

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------
    def best_level(self, downsample: float) -> int:
        """The coarsest stored level that is still at least as fine as `downsample`."""
        best = 0
        for index, level in enumerate(self.levels):
            if max(level.downsample_y, level.downsample_x) <= downsample * (1 + 1e-6):
                if max(level.downsample_y, level.downsample_x) >= max(
                    self.levels[best].downsample_y, self.levels[best].downsample_x
                ):
                    best = index
        return best

    def read(
        self,
        box: Box,
        out_height: int,
        out_width: int,
        normalization: PixelNormalization = PixelNormalization(),
    ) -> torch.Tensor:
        """Float (channels, out_height, out_width) in [0, 1] of `box`, from the best stored level.

        Downsampling averages areas (exact box filter), upsampling is bilinear; large source regions are
        reduced in horizontal bands so memory stays bounded by MAX_SOURCE_PIXELS_PER_READ.
        """
        downsample = min(box.height / out_height, box.width / out_width)
        level_index = self.best_level(max(downsample, 1.0))
        level = self.levels[level_index]
        ly0, ly1 = box.y0 / level.downsample_y, box.y1 / level.downsample_y
        lx0, lx1 = box.x0 / level.downsample_x, box.x1 / level.downsample_x
        iy0, iy1 = max(0, math.floor(ly0 + 1e-6)), min(level.height, math.ceil(ly1 - 1e-6))
        ix0, ix1 = max(0, math.floor(lx0 + 1e-6)), min(level.width, math.ceil(lx1 - 1e-6))
        if iy1 <= iy0 or ix1 <= ix0:
            raise InputError(f"{self.path}: region {box} lies outside the image")
        source_rows = iy1 - iy0
        rows_per_band = max(1, MAX_SOURCE_PIXELS_PER_READ // max(1, ix1 - ix0))
        if source_rows <= rows_per_band or out_height >= source_rows:
            raw = self.read_level(level_index, iy0, ix0, iy1, ix1)
            return _resize(self._to_input(raw, normalization), out_height, out_width)
        # Banded reduction: each band of output rows comes from its own slice of source rows.
        out_rows_per_band = max(1, math.floor(rows_per_band * out_height / source_rows))
        bands = []
        for oy0 in range(0, out_height, out_rows_per_band):
            oy1 = min(out_height, oy0 + out_rows_per_band)
            sy0 = iy0 + math.floor(oy0 * source_rows / out_height)
            sy1 = iy0 + math.ceil(oy1 * source_rows / out_height)
            raw = self.read_level(level_index, sy0, ix0, min(sy1, iy1), ix1)
            bands.append(_resize(self._to_input(raw, normalization), oy1 - oy0, out_width))
        return torch.cat(bands, dim=1)

    def _to_input(self, raw: np.ndarray, normalization: PixelNormalization) -> torch.Tensor:
        return to_model_input(raw, normalization, self.path)


def check_axes(path: Path | str, axes: str, shape: Sequence[int], names: Sequence[str] | None = None) -> None:
    """The one rule for which N-d arrays every reader takes as an image.

    `axes` has one letter per dimension: 'Y', 'X', 'C' (bands) or anything else for an axis read at its
    first index. There must be one Y, one X, at most one C, and at most MAX_NON_BAND_DIMS non-band
    dimensions (Y, X and every other axis longer than 1; axes of length 1 are free).
    """
    shape = tuple(int(n) for n in shape)
    layout = f"(axes {','.join(map(str, names))}, shape {shape})" if names is not None else f"(shape {shape})"
    if axes.count("Y") != 1 or axes.count("X") != 1:
        raise InputError(f"{path}: cannot find one y and one x axis {layout}")
    if axes.count("C") > 1:
        raise InputError(f"{path}: more than one band axis {layout}; only one is supported")
    non_band = sum(1 for axis, size in zip(axes, shape) if axis in "YX" or (axis != "C" and size > 1))
    if non_band > MAX_NON_BAND_DIMS:
        raise InputError(
            f"{path}: {non_band} non-band dimensions {layout}; at most {MAX_NON_BAND_DIMS} are supported "
            "(y, x and one stack axis, read at its first plane)"
        )


def check_image(path: Path | str, height: int, width: int, dtype: np.dtype) -> None:
    """Refuse empty images and sample types the model input cannot be normalised from."""
    if height <= 0 or width <= 0:
        raise InputError(f"{path}: empty image ({height}x{width} pixels)")
    default_value_range(dtype, path)  # raises InputError for int16, uint32, complex, ...


def size_problems(height: int, width: int, max_pixels: int) -> list[str]:
    """The refusal of a declared size above the pixel limit, as a problem phrase (empty when it fits)."""
    if height * width > max_pixels:
        return [
            f"declares {height}x{width} = {height * width:.3g} pixels, above the limit of {max_pixels:.3g} "
            "(raise it with --max-pixels if the image is real)"
        ]
    return []


def check_samples(raw: np.ndarray, path: Path | str) -> None:
    """Refuse float samples that are NaN, infinite or beyond MAX_ABS_FLOAT_SAMPLE.

    Checked on every region as it is read (a whole-image scan would cost a full read up front); refused
    rather than treated as no-data, since a mask over invented values would look finished and be wrong.
    """
    if raw.dtype.kind != "f" or raw.size == 0:
        return
    if not np.isfinite(raw).all():
        raise InputError(f"{path}: NaN or infinite pixel values (corrupt float data)")
    if float(np.abs(raw).max()) > MAX_ABS_FLOAT_SAMPLE:
        raise InputError(f"{path}: float pixel values beyond +-{MAX_ABS_FLOAT_SAMPLE:g} (corrupt float data)")


def choose_bands(count: int, normalization: PixelNormalization, path: Path | str = "") -> list[int]:
    """The bands (from 0) of an image with `count` bands that the model sees, in order, one per channel.

    --bands as given (any order; a band may repeat, as GDAL's -b allows; one band for a 3-channel model is
    grey, replicated). Without --bands: bands 1..N of an image with the model's N channels; an image with
    one band more than that in 2 or 4 loses its alpha band (grey + alpha, RGBA); a 3-channel model takes a
    grey image replicated (DESIGN section 4). Anything else is an InputError naming the file.
    """
    channels = normalization.channels
    if normalization.bands is not None:
        chosen = list(normalization.bands)
        beyond = next((b for b in chosen if not 0 <= b < count), None)
        if beyond is not None:
            raise InputError(f"{path}: --bands names band {beyond + 1} but the image has {count} band(s)")
        if len(chosen) == 1 and channels == 3:
            return chosen * 3
        if len(chosen) != channels:
            raise InputError(f"{path}: --bands names {len(chosen)} band(s) but the model takes {channels} channel(s)")
        return chosen
    if count == channels:
        return list(range(count))
    if count in (2, 4) and count == channels + 1:  # grey + alpha, RGBA: the alpha band is not image data
        return list(range(channels))
    if channels == 3 and count in (1, 2):  # grey (+ alpha) for an RGB model, replicated
        return [0, 0, 0]
    example = ",".join(str(b + 1) for b in range(min(channels, count)))
    raise InputError(f"{path}: the image has {count} band(s) but the model takes {channels} channel(s); choose "
                     f"{channels} with --bands (counted from 1, for example --bands {example})")


def to_model_input(raw: np.ndarray, normalization: PixelNormalization, path: Path | str = "") -> torch.Tensor:
    """Raw (h, w, bands) samples -> float32 tensor (channels, h, w) in [0, 1]: the bands `choose_bands`
    picks, in its order, scaled by the value range (DESIGN section 4)."""
    check_samples(raw, path)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    raw = raw[:, :, choose_bands(raw.shape[2], normalization, path)]  # fancy indexing copies, in the chosen order
    low, high = normalization.value_range or default_value_range(raw.dtype, path)
    # In place: `raw` is our own copy (above), and astype copies unless it is float32 already.
    array = torch.from_numpy(raw.astype(np.float32, copy=False)).permute(2, 0, 1)
    return array.sub_(low).div_(high - low).clamp_(0.0, 1.0)


def default_value_range(dtype: np.dtype, path: Path | str = "") -> tuple[float, float]:
    """The value range that maps to [0, 1] when the model bundle says nothing else."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 0.0, 255.0
    if dtype == np.uint16:
        return 0.0, 65535.0
    if dtype == np.bool_:
        return 0.0, 1.0
    if dtype.kind == "f":
        return 0.0, 1.0
    raise InputError(f"{path}: unsupported sample type {dtype} (use uint8, uint16 or float)")


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[1:] == (height, width):
        return image
    if image.shape[1] >= height and image.shape[2] >= width:
        return F.adaptive_avg_pool2d(image[None], (height, width))[0]
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
