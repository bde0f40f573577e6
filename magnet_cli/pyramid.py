"""Scale levels and windows: pure geometry, no torch, no I/O.

A level is the whole image resized to `height x width` and cut into crops of `crop_height x crop_width`
level pixels (DESIGN section 2). Windows are evenly spread so the first starts at 0 and the last ends
at the edge. Each window also knows the box it covers in full-resolution pixels, its parent at the
previous level (the window tree walked by the scheduler) and, at the finest level, the part of the
output it owns (overlaps are split at their middle so that every output pixel has exactly one owner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

from magnet_cli.errors import UsageError


@dataclass(frozen=True)
class Axis:
    """Window placement along one axis of one level, in level pixels."""

    size: int  # level extent along this axis
    crop: int  # nominal crop extent
    starts: tuple[int, ...]

    @property
    def extent(self) -> int:
        """Actual window extent: the crop, or the whole axis when it is shorter than one crop."""
        return min(self.crop, self.size)

    def interval(self, index: int) -> tuple[int, int]:
        start = self.starts[index]
        return start, start + self.extent


def place_windows(size: int, crop: int) -> tuple[int, ...]:
    """Start offsets of ceil(size / crop) windows evenly spread over [0, size).

    The reference code truncates its step and so can stop short of the edge; rounding each start
    keeps the last window flush with the edge for every size.
    """
    if size <= 0 or crop <= 0:
        raise UsageError(f"cannot place windows of {crop} px on an axis of {size} px")
    count = math.ceil(size / crop)
    if count == 1:
        return (0,)
    span = size - crop
    return tuple(round(i * span / (count - 1)) for i in range(count))


@dataclass(frozen=True)
class Window:
    """One crop of one level."""

    level: int  # 0 is the coarsest level
    row: int
    col: int
    # Box in full-resolution pixels (floats: level pixels map to fractional full-res pixels).
    y0: float
    x0: float
    y1: float
    x1: float

    @property
    def key(self) -> tuple[int, int, int]:
        return self.level, self.row, self.col


@dataclass(frozen=True)
class Level:
    """The whole image resized to height x width, cut into crops."""

    height: int
    width: int
    rows: Axis
    cols: Axis

    @property
    def window_count(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    @property
    def pixel_count(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class ScalePlan:
    """All levels of one image for one model input size, coarsest first."""

    image_height: int
    image_width: int
    input_height: int
    input_width: int
    levels: tuple[Level, ...]

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def window_count(self) -> int:
        return sum(level.window_count for level in self.levels)

    def window(self, level: int, row: int, col: int) -> Window:
        spec = self.levels[level]
        sy, sx = self.image_height / spec.height, self.image_width / spec.width
        y0, y1 = spec.rows.interval(row)
        x0, x1 = spec.cols.interval(col)
        return Window(level, row, col, y0 * sy, x0 * sx, y1 * sy, x1 * sx)

    def windows(self, level: int) -> list[Window]:
        spec = self.levels[level]
        return [
            self.window(level, r, c) for r in range(len(spec.rows.starts)) for c in range(len(spec.cols.starts))
        ]

    # --- the window tree -------------------------------------------------------------------------
    @cached_property
    def _parent_maps(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        maps = [((), ())]
        for level in range(1, self.depth):
            coarse, fine = self.levels[level - 1], self.levels[level]
            maps.append(
                (
                    _parent_indices(coarse.rows, coarse.height, fine.rows, fine.height),
                    _parent_indices(coarse.cols, coarse.width, fine.cols, fine.width),
                )
            )
        return tuple(maps)

    def parent(self, window: Window) -> Window | None:
        """The previous level's window whose refined map this window's coarse map Y is cut from."""
        if window.level == 0:
            return None
        rows, cols = self._parent_maps[window.level]
        return self.window(window.level - 1, rows[window.row], cols[window.col])

    def children(self, window: Window) -> list[Window]:
        """The next level's windows whose parent is `window` (usually 4, up to 9 with overlaps)."""
        level = window.level + 1
        if level >= self.depth:
            return []
        rows, cols = self._parent_maps[level]
        child_rows = [r for r, p in enumerate(rows) if p == window.row]
        child_cols = [c for c, p in enumerate(cols) if p == window.col]
        return [self.window(level, r, c) for r in child_rows for c in child_cols]

    def roots(self) -> list[Window]:
        return self.windows(0)

    # --- output ownership at the finest level ---------------------------------------------------
    def owned_region(self, window: Window) -> tuple[int, int, int, int]:
        """Integer full-resolution region (y0, x0, y1, x1) this finest-level window writes."""
        spec = self.levels[window.level]
        y0, y1 = _owned_interval(spec.rows, window.row, self.image_height / spec.height, self.image_height)
        x0, x1 = _owned_interval(spec.cols, window.col, self.image_width / spec.width, self.image_width)
        return y0, x0, y1, x1


def _owned_interval(axis: Axis, index: int, scale: float, full: int) -> tuple[int, int]:
    """Split each overlap at its middle; map level pixels to full-resolution pixels."""
    count = len(axis.starts)
    if index == 0:
        start = 0
    else:
        start = round((axis.starts[index] + axis.interval(index - 1)[1]) / 2 * scale)
    if index == count - 1:
        end = full
    else:
        end = round((axis.interval(index)[1] + axis.starts[index + 1]) / 2 * scale)
    return start, end


def _parent_indices(coarse: Axis, coarse_size: int, fine: Axis, fine_size: int) -> tuple[int, ...]:
    """For each fine window along an axis, the coarse window containing it (nearest centre among
    containing ones; largest overlap when none contains it, which only happens with odd sizes)."""
    ratio = coarse_size / fine_size
    parents = []
    for index in range(len(fine.starts)):
        lo, hi = (v * ratio for v in fine.interval(index))
        centre = (lo + hi) / 2

        def rank(p: int) -> tuple[bool, float, float]:
            plo, phi = coarse.interval(p)
            contains = plo <= lo + 1e-9 and hi <= phi + 1e-9
            overlap = min(hi, phi) - max(lo, plo)
            return (not contains, -overlap if not contains else 0.0, abs((plo + phi) / 2 - centre))

        parents.append(min(range(len(coarse.starts)), key=rank))
    return tuple(parents)


# --- building plans ------------------------------------------------------------------------------
def make_level(height: int, width: int, crop_height: int, crop_width: int) -> Level:
    return Level(
        height,
        width,
        Axis(height, crop_height, place_windows(height, crop_height)),
        Axis(width, crop_width, place_windows(width, crop_width)),
    )


def default_depth(image_height: int, image_width: int, crop_height: int, crop_width: int) -> int:
    """Fewest levels whose coarsest level fits in a single crop (the whole image at level 1)."""
    ratio = max(image_height / crop_height, image_width / crop_width)
    return 1 + max(0, math.ceil(math.log2(ratio) - 1e-9)) if ratio > 1 else 1


def make_plan(
    image_height: int,
    image_width: int,
    input_size: tuple[int, int],
    levels: int | Sequence[int] | None = None,
    crop_size: tuple[int, int] | None = None,
) -> ScalePlan:
    """The scale plan for an image.

    `levels` is None (enough levels that the coarsest is one window, finest at full resolution), a
    count m (finest at full resolution, each coarser level half the size), or the long side of each
    level in ascending order (e.g. 256, 512, 1024; the last may be below full resolution).
    `crop_size` defaults to the model input size (h, w).
    """
    if image_height <= 0 or image_width <= 0:
        raise UsageError(f"image of size {image_height} x {image_width} has no pixels")
    input_height, input_width = input_size
    crop_height, crop_width = crop_size or input_size
    long_side = max(image_height, image_width)
    if levels is None:
        levels = default_depth(image_height, image_width, crop_height, crop_width)
    if isinstance(levels, int):
        if levels < 1:
            raise UsageError(f"--levels must be at least 1, got {levels}")
        shapes = [
            (max(1, round(image_height / 2**k)), max(1, round(image_width / 2**k))) for k in range(levels - 1, -1, -1)
        ]
    else:
        sizes = list(levels)
        if not sizes or any(s <= 0 for s in sizes) or sorted(sizes) != sizes or len(set(sizes)) != len(sizes):
            raise UsageError(f"--levels must be increasing positive sizes, got {','.join(map(str, sizes))}")
        if sizes[-1] > long_side:
            raise UsageError(f"--levels {sizes[-1]} is larger than the image's long side ({long_side} px)")
        shapes = [
            (max(1, round(image_height * s / long_side)), max(1, round(image_width * s / long_side))) for s in sizes
        ]
    return ScalePlan(
        image_height,
        image_width,
        input_height,
        input_width,
        tuple(make_level(h, w, crop_height, crop_width) for h, w in shapes),
    )
