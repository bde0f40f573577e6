"""An in-memory image as an ImageSource: for library users holding a NumPy array, and for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magnet_cli.errors import InputError
from magnet_cli.io.base import ImageSource, PyramidLevel


class ArraySource(ImageSource):
    """A (H, W) or (H, W, bands) array; optional coarser arrays form a stored pyramid."""

    def __init__(self, array: np.ndarray, name: str = "<array>", pyramid: list[np.ndarray] | None = None) -> None:
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
            raise InputError(f"{name}: expected a non-empty (H, W[, bands]) array, got shape {array.shape}")
        self._arrays = [array] + [a[:, :, None] if a.ndim == 2 else a for a in (pyramid or [])]
        height, width = array.shape[:2]
        levels = [
            PyramidLevel(a.shape[0], a.shape[1], height / a.shape[0], width / a.shape[1]) for a in self._arrays
        ]
        super().__init__(Path(name), height, width, array.shape[2], array.dtype, levels, format_name="array")

    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return self._arrays[level][y0:y1, x0:x1]
