"""Segmenting at a physical resolution: the input seen at a coarser pixel size, and the way back.

`working_scale` turns the pixel size asked for (`--resolution`, else the bundle's) and the input's own into
the number of input pixels per working pixel. `ResampledSource` presents the input at that size; each of
its reads is the matching full-resolution box of the input, so the input's `best_level` reads it from the
stored pyramid level that fits (a 0.25 um/px slide read at 0.5 um comes from its 2x level, never from
level 0). `FullResolutionWriter` writes labels made at the working resolution at the input's full
resolution instead (`--labels-at full`, and labels beside their image), nearest-neighbour, in strips.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from magnet_cli.errors import MagnetWarning, UsageError
from magnet_cli.io.base import Box, ImageSource, PixelNormalization, PyramidLevel
from magnet_cli.io.georeference import scaled_georeference
from magnet_cli.io.pixel_size import FULL, PixelSize, working_factor

# A full-resolution strip written at once holds at most this many pixels (times the classes, with
# probabilities): a window upsampled 40x (a 0.25 um slide at 10 um) is written in bounded pieces.
MAX_STRIP_PIXELS = 1 << 22


def working_scale(
    native: PixelSize | None, target: PixelSize | str | None, path: Path | str, asked_by: str = "--resolution"
) -> tuple[float, float]:
    """Input pixels per working pixel, (y, x); (1, 1) for full resolution. An input without a pixel size,
    or in other units than the target's, gives a MagnetWarning and full resolution; a target finer than
    the input's pixels is refused (UsageError): upsampling invents no detail."""
    if target is None or target == FULL:
        return 1.0, 1.0
    assert isinstance(target, PixelSize)
    if native is None:
        warnings.warn(
            f"{path} has no pixel size: segmenting at full resolution ({asked_by} {target.text()} needs one)",
            MagnetWarning, stacklevel=2,
        )
        return 1.0, 1.0
    if native.unit != target.unit:
        warnings.warn(
            f"{path} has pixels of {native}, not in {target.unit}: segmenting at full resolution "
            f"({asked_by} {target.text()} does not apply)",
            MagnetWarning, stacklevel=2,
        )
        return 1.0, 1.0
    try:
        return working_factor(native, target)
    except ValueError:
        raise UsageError(f"{path}: the image's pixels are {native}; {asked_by} {target.text()} would upsample") from None


def working_shape(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """The input's size at the working resolution."""
    return max(1, round(height / scale[0])), max(1, round(width / scale[1]))


class ResampledSource(ImageSource):
    """`source` presented at `height` x `width` (coarser than it): a working pixel is the area-average of
    the input pixels it covers, read from the input's fitting pyramid level."""

    def __init__(self, source: ImageSource, height: int, width: int) -> None:
        self.full_resolution = source
        sy, sx = source.height / height, source.width / width
        self.scale = (sy, sx)
        # The view's own level 0, then the input's stored levels coarser than it, in view pixels.
        coarser = [
            (index, PyramidLevel(level.height, level.width, level.downsample_y / sy, level.downsample_x / sx))
            for index, level in enumerate(source.levels)
            if min(level.downsample_y / sy, level.downsample_x / sx) > 1 + 1e-6
        ]
        levels = [PyramidLevel(height, width, 1.0, 1.0)] + [level for _, level in coarser]
        self._stored = [None] + [index for index, _ in coarser]  # the input's level behind each of ours
        super().__init__(
            source.path, height, width, source.bands, source.dtype, levels, None, source.format_name,
            scaled_georeference(source.georeference, sy, sx), source.extra, list(source.problems),
            source.pixel_size.scaled(sy, sx) if source.pixel_size is not None else None,
        )

    def read(
        self, box: Box, out_height: int, out_width: int, normalization: PixelNormalization = PixelNormalization()
    ) -> torch.Tensor:
        sy, sx = self.scale
        full = Box(box.y0 * sy, box.x0 * sx, box.y1 * sy, box.x1 * sx)
        return self.full_resolution.read(full, out_height, out_width, normalization)

    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """A stored level of the input as it is; the view's level 0 as the nearest samples of the input's
        finest level that is still fine enough (reads go through `read`, which averages)."""
        source = self.full_resolution
        if level > 0:
            return source.read_level(self._stored[level], y0, x0, y1, x1)  # type: ignore[arg-type]
        sy, sx = self.scale
        index = source.best_level(min(sy, sx))
        stored = source.levels[index]
        rows = np.minimum(((np.arange(y0, y1) + 0.5) * sy / stored.downsample_y).astype(np.int64), stored.height - 1)
        cols = np.minimum(((np.arange(x0, x1) + 0.5) * sx / stored.downsample_x).astype(np.int64), stored.width - 1)
        raw = source.read_level(index, int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        return raw[np.ix_(rows - rows[0], cols - cols[0])]

    def close(self) -> None:
        self.full_resolution.close()


def resampled(source: ImageSource, height: int, width: int) -> ImageSource:
    """`source` at `height` x `width`: itself when that is its size, else a ResampledSource."""
    if (height, width) == (source.height, source.width):
        return source
    return ResampledSource(source, height, width)


def nearest_starts(working: int, full: int) -> np.ndarray:
    """For each working pixel k (and k = working), the first full-resolution pixel whose nearest working
    pixel is k or later: full pixel i takes working pixel ((2i + 1) * working) // (2 * full), its centre's.
    Consecutive starts tile the full axis exactly, so regions that tile the working image tile it too."""
    k = np.arange(working + 1, dtype=np.int64)
    return np.clip(-((working - 2 * k * full) // (2 * working)), 0, full)


class FullResolutionWriter:
    """Takes windows at the working resolution and writes them to a full-resolution LabelWriter (which has
    `write(y0, x0, labels, probabilities, uncertainty)` and `end_unit(name)`), nearest-neighbour upsampled."""

    def __init__(self, writer, working_shape: tuple[int, int], full_shape: tuple[int, int]) -> None:  # noqa: ANN001
        self.writer = writer
        (self._wh, self._ww), (self._fh, self._fw) = working_shape, full_shape
        self._row_starts = nearest_starts(self._wh, self._fh)
        self._col_starts = nearest_starts(self._ww, self._fw)

    def write(
        self, y0: int, x0: int, labels: np.ndarray, probabilities: np.ndarray | None = None,
        uncertainty: np.ndarray | None = None,
    ) -> None:
        h, w = labels.shape
        top, bottom = int(self._row_starts[y0]), int(self._row_starts[y0 + h])
        left, right = int(self._col_starts[x0]), int(self._col_starts[x0 + w])
        cols = (2 * np.arange(left, right) + 1) * self._ww // (2 * self._fw) - x0
        rows_per_strip = max(1, MAX_STRIP_PIXELS // max(1, right - left))
        for start in range(top, bottom, rows_per_strip):
            stop = min(bottom, start + rows_per_strip)
            rows = (2 * np.arange(start, stop) + 1) * self._wh // (2 * self._fh) - y0
            self.writer.write(
                start, left, labels[np.ix_(rows, cols)],
                probabilities[:, rows][:, :, cols] if probabilities is not None else None,
                uncertainty[np.ix_(rows, cols)] if uncertainty is not None else None,
            )

    def end_unit(self, name: str) -> None:
        self.writer.end_unit(name)
