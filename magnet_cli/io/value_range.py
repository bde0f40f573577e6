"""Which input values map to [0, 1] for the model: `--value-range MIN,MAX | auto | dtype`.

Real imagery rarely fills its sample type: WorldView-2 stores 11-bit values (up to ~2047) in uint16, many
microscopes 12 bits. Divided by 65535 such an image is near black and the model sees one class. `auto`
(the default unless the model bundle fixes a range) reads the range the file itself states, in this
order, and only for integer samples wider than 8 bits:
- the TIFF MaxSampleValue tag, or BitsPerSample below the container's bits (12-bit data in uint16);
- GDAL's band statistics (STATISTICS_MAXIMUM in the GDAL_METADATA tag);
- otherwise a stretch: 0 to the 99.9th percentile of samples of the coarsest stored level.
8-bit and float data keep their type's range (0..255, 0..1). The range used is recorded in the output.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from magnet_cli.io.base import ImageSource, PixelNormalization, choose_bands, default_value_range

AUTO, DTYPE = "auto", "dtype"
STRETCH_PERCENTILE = 99.9
# The stretch reads at most this many samples of the coarsest level, in a grid of patches.
STRETCH_PATCHES, STRETCH_PATCH = 16, 64


def resolve_value_range(
    source: ImageSource,
    requested: str | tuple[float, float] | None,
    bundle_range: tuple[float, float] | None,
    bands: Sequence[int] | None = None,
) -> tuple[tuple[float, float], str]:
    """The (low, high) that maps to [0, 1] for this image, and where it came from.

    `requested`: --value-range (None: the bundle's range if it has one, else auto); `bands` counted from
    0, the bands the model will see (the stretch looks only at them).
    """
    if isinstance(requested, tuple):
        return (float(requested[0]), float(requested[1])), "--value-range"
    if requested is None and bundle_range is not None:
        return (float(bundle_range[0]), float(bundle_range[1])), "the model bundle"
    dtype_range = default_value_range(source.dtype, source.path)
    if requested == DTYPE or not _wider_than_8_bits(source.dtype):
        return dtype_range, f"the sample type ({np.dtype(source.dtype).name})"
    for how, high in stated_maxima(source):
        if 0 < high < dtype_range[1]:
            return (0.0, float(high)), how
    high = stretch_maximum(source, bands)
    if 0 < high < dtype_range[1]:
        return (0.0, high), f"a {STRETCH_PERCENTILE}th-percentile stretch of the coarsest level"
    return dtype_range, f"the sample type ({np.dtype(source.dtype).name})"


def normalization_for(
    source: ImageSource,
    bands: Sequence[int] | None,
    requested: str | tuple[float, float] | None,
    bundle_range: tuple[float, float] | None = None,
    channels: int = 3,
) -> PixelNormalization:
    """How `source` is read for a model of `channels` input channels: `bands` counted from 1 as --bands
    counts them (None: the default band rules), the value range resolved as `resolve_value_range` does.
    The trainers and `benchmark` read this way; a band choice that does not fit the image fails here."""
    zero_based = tuple(b - 1 for b in bands) if bands else None  # the readers count from 0
    chosen = choose_bands(source.bands, PixelNormalization(zero_based, None, channels), source.path)
    value_range, _ = resolve_value_range(source, requested, bundle_range, chosen)
    return PixelNormalization(zero_based, value_range, channels)


def _wider_than_8_bits(dtype: np.dtype) -> bool:
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and dtype.itemsize > 1


def stated_maxima(source: ImageSource) -> list[tuple[str, float]]:
    """The largest sample value the file says it holds, from each place that may say it."""
    found = []
    if source.extra.get("max_sample_value") is not None:
        found.append(("the TIFF MaxSampleValue tag", float(source.extra["max_sample_value"])))
    bits = source.extra.get("bits_per_sample")
    if bits and bits < 8 * np.dtype(source.dtype).itemsize:
        found.append((f"{bits} bits per sample", float(2**bits - 1)))
    gdal = (source.georeference or {}).get("GDAL_METADATA")
    maxima = [float(v) for v in re.findall(r"<Item[^>]*name=['\"]STATISTICS_MAXIMUM['\"][^>]*>\s*([-0-9.eE+]+)\s*<", str(gdal or ""))]
    if maxima:
        found.append(("GDAL statistics (STATISTICS_MAXIMUM)", max(maxima)))
    return found


def stretch_maximum(source: ImageSource, bands: Sequence[int] | None = None) -> float:
    """The STRETCH_PERCENTILE-th percentile of a grid of patches of the coarsest stored level (bounded
    reads on any image: a flat TIFF's only level is its full resolution)."""
    level = len(source.levels) - 1
    height, width = source.levels[level].height, source.levels[level].width
    samples = []
    for row in _starts(height):
        for col in _starts(width):
            patch = source.read_level(level, row, col, min(height, row + STRETCH_PATCH), min(width, col + STRETCH_PATCH))
            if bands:
                patch = patch[..., [b for b in bands if b < patch.shape[-1]]]
            elif patch.shape[-1] in (2, 4):  # gray + alpha, RGBA: the alpha band is not image data
                patch = patch[..., :-1]
            samples.append(patch.reshape(-1))
    values = np.concatenate(samples).astype(np.float64)
    return float(np.percentile(values, STRETCH_PERCENTILE)) if values.size else 0.0


def _starts(length: int) -> list[int]:
    """Up to STRETCH_PATCHES evenly spread patch starts along an axis."""
    if length <= STRETCH_PATCH * STRETCH_PATCHES:
        return list(range(0, length, STRETCH_PATCH))
    return [round(i * (length - STRETCH_PATCH) / (STRETCH_PATCHES - 1)) for i in range(STRETCH_PATCHES)]
