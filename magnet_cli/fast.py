"""MagNet-Fast's choice of windows, made without holding a level: which windows of each level get
segmented and refined; the others keep the coarse map Y cut from their parent (paper section 3.4).

The paper ranks a level's windows by the mean uncertainty of the cumulative map Y over them, which needs
the whole level map. Here they are ranked by the uncertainty of the coarsest level's map (the whole image
at model input size: kilobytes) over each window's box, read from a summed-area table, so every level's
choice is known before streaming starts, memory stays flat, and every process of a run (units, shards,
Dask workers) makes the same choice. The coarsest map sees less detail than the paper's Y, a trade the
benchmark measures (benchmarks/README.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from magnet_cli.devices import host
from magnet_cli.pyramid import ScalePlan, Window
from magnet_cli.refine import uncertainty


def windows_to_refine(count: int, fast_patches: float) -> int:
    """How many of a level's `count` windows Fast refines: a count (>= 1) or a fraction (< 1) of them."""
    if fast_patches >= 1:
        return min(count, int(fast_patches))
    return min(count, max(1, math.ceil(fast_patches * count)))


class FastChoice:
    """For each level below the coarsest, the (row, col) of the windows to refine."""

    def __init__(self, plan: ScalePlan, root_maps: dict[tuple[int, int], torch.Tensor], fast_patches: float) -> None:
        """`root_maps`: the coarsest level's refined maps (C, h, w), by (row, col)."""
        self._tables = {key: _summed_area(host(uncertainty(m[None].float()))[0, 0].numpy()) for key, m in root_maps.items()}
        self._chosen: list[set[tuple[int, int]]] = [set()]
        for level in range(1, plan.depth):
            windows = plan.windows(level)
            scores = self._scores(plan, windows)
            # Highest mean uncertainty first, ties to the lower index (the paper's rule, deterministic).
            order = np.lexsort((np.arange(len(windows)), -scores))
            keep = order[: windows_to_refine(len(windows), fast_patches)]
            self._chosen.append({(windows[i].row, windows[i].col) for i in keep})

    def refines(self, window: Window) -> bool:
        return window.level == 0 or (window.row, window.col) in self._chosen[window.level]

    def counts(self) -> list[int]:
        """Windows refined per level (the coarsest: all of them)."""
        return [len(chosen) for chosen in self._chosen]

    def _scores(self, plan: ScalePlan, windows: Sequence[Window]) -> np.ndarray:
        scores = np.empty(len(windows))
        for index, window in enumerate(windows):
            root = window
            while root.level > 0:
                root = plan.parent(root)  # type: ignore[assignment]
            table = self._tables[(root.row, root.col)]
            h, w = table.shape[0] - 1, table.shape[1] - 1
            sy, sx = h / (root.y1 - root.y0), w / (root.x1 - root.x0)
            y0 = min(h - 1, max(0, math.floor((window.y0 - root.y0) * sy)))
            x0 = min(w - 1, max(0, math.floor((window.x0 - root.x0) * sx)))
            y1 = min(h, max(y0 + 1, math.ceil((window.y1 - root.y0) * sy)))
            x1 = min(w, max(x0 + 1, math.ceil((window.x1 - root.x0) * sx)))
            total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
            scores[index] = total / ((y1 - y0) * (x1 - x0))
        return scores


def _summed_area(values: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) table: [y, x] = sum of values[:y, :x]."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = values.astype(np.float64).cumsum(0).cumsum(1)
    return table
