"""MagNet-Fast's choice of windows, made without holding a level: which windows of each level get
segmented and refined; the others keep the coarse map Y cut from their parent (paper section 3.4).

The paper ranks a level's windows by the mean uncertainty of the cumulative map Y over them, which needs
the whole level map. Here the few coarse levels (RANKING_WINDOWS windows in all) are computed up front,
each window alone, Fast's own choice applied level by level; each of them is ranked on its parent level's
maps, exactly the paper's rule. Every finer level is streamed: a window there is refined when the mean
uncertainty of its Y (its parent's map over its box, known once the parent is done) reaches the level's
cutoff, and the cutoff is calibrated on the coarse maps: the score of the last window the paper's rule
would keep if the level were ranked on the finest of them. So memory stays flat, each choice looks at
the window's own Y, as the paper's does, and every process of a run (units, shards, Dask workers) makes
the same choice (a window's Y is the same in all of them). A streamed level refines about, not exactly,
`--fast-patches` of its windows: as many as the actual maps find unsure (`FastChoice.counts`).

A level two or more below the finest ranked-ahead maps is ranked on a grandparent's map, which is much
less sure than the refined parent's map each window is then judged on (refinement sharpens Y level by
level): the raw cutoff kept about half the windows asked for (0.1 of the finest level refined 2.3% of
it). So a few windows of the first streamed level are computed ahead as well (`PROBE_WINDOWS`, the ones
whose children the coarse ranking finds most unsure), and for the children of refined windows the
deeper levels' cutoffs are scaled by how much less unsure such children turn out on their own Y than on
the ranking maps (`FastChoice.correct`).

All of this applies on the levels Fast chooses on: the `--fast-levels` finest ones (`chooses_on`; "all":
every level after the coarsest, as in the paper). Coarser levels are refined in full, and their
ranked-ahead maps still calibrate the cutoff of the levels below.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from magnet_cli.devices import host
from magnet_cli.pyramid import ScalePlan, Window
from magnet_cli.refine import uncertainty
from magnet_cli.units import Tree


def windows_to_refine(count: int, fast_patches: float) -> int:
    """How many of a level's `count` windows Fast refines: a count (>= 1) or a fraction (< 1) of them."""
    if fast_patches >= 1:
        return min(count, int(fast_patches))
    return min(count, max(1, math.ceil(fast_patches * count)))


def chooses_on(level: int, depth: int, fast_levels: int | str) -> bool:
    """Whether Fast chooses among `level`'s windows: on the `fast_levels` finest levels of a `depth`-level
    plan ("all": every level after the coarsest, the paper's rule); coarser levels are refined in full.
    Each window costs the same at every level, and the coarse levels hold few of them (about a third of
    the finest level's count in all) but carry the context every finer window starts from: refining
    them in full and choosing only at the finest level scored 88.4 mIoU with 98 of 341 windows refined
    where choosing at every level scored 87.3 with 116 (benchmarks/README.md)."""
    if level == 0:
        return False
    return fast_levels == "all" or level >= depth - int(fast_levels)


def level_windows_to_refine(level: int, depth: int, count: int, fast_patches: float, fast_levels: int | str) -> int:
    """How many of `level`'s `count` windows Fast refines (all of them where it does not choose)."""
    return windows_to_refine(count, fast_patches) if chooses_on(level, depth, fast_levels) else count


# The coarse levels computed up front (each window alone) and kept for the run: as many levels as fit
# this many windows (levels 0-2 of the default model: 1 + 4 + 16), tens of MB of maps.
RANKING_WINDOWS = 21
# Windows of the first streamed level computed up front too, when a deeper level chooses: their children's
# own scores against their ranking scores correct the deeper levels' cutoffs (`FastChoice.correct`).
PROBE_WINDOWS = 8


class FastChoice:
    """For each level below the coarsest, the (row, col) of the windows to refine, chosen level by level:
    a level's windows are ranked on the finest ranked-ahead maps above them (`rank`), or all of them on
    the levels it does not choose on (`chooses_on`)."""

    def __init__(self, plan: ScalePlan, fast_patches: float, fast_levels: int | str,
                 skips: Callable[[Window], bool] | None = None) -> None:
        """`fast_levels`: the finest levels it chooses on (`chooses_on`); `skips(window)`: windows left out
        for blank regions (--background); Fast chooses among the rest."""
        self.plan = plan
        self.fast_patches = fast_patches
        self.fast_levels = fast_levels
        self._skips = skips
        self._tree = Tree(plan)
        self._chosen: list[set[tuple[int, int]] | None] = [None] * plan.depth  # None: every window
        # Streamed levels: the mean uncertainty of Y a window needs to be refined (`calibrate`).
        self._cutoffs: list[float | None] = [None] * plan.depth
        # `correct`: the cutoffs of levels from `_corrected_from` on are scaled by `cutoff_ratio` for the
        # children of refined windows (an unrefined window's Y is a coarser map, that of the ranking).
        self.cutoff_ratio = 1.0
        self._corrected_from = plan.depth

    def refines(self, window: Window) -> bool:
        chosen = self._chosen[window.level]
        return chosen is None or (window.row, window.col) in chosen

    def counts(self) -> list[int]:
        """Windows refined per level (where it does not choose: all of them); on streamed levels, those
        chosen so far."""
        return [level.window_count if chosen is None else len(chosen) for level, chosen in zip(self.plan.levels, self._chosen)]

    def rank(self, level: int, maps: dict[tuple[int, int, int], torch.Tensor]) -> None:
        """Choose `level`'s windows by the mean uncertainty, over each window's box, of the map of its
        ancestor among `maps` (refined maps (C, h, w) of one coarser level, by window key)."""
        if not chooses_on(level, self.plan.depth, self.fast_levels):
            return  # refined in full
        windows, scores, order = self._ranking(level, maps)
        keep = order[: windows_to_refine(len(windows), self.fast_patches)]
        self._chosen[level] = {(windows[i].row, windows[i].col) for i in keep}

    def calibrate(self, level: int, maps: dict[tuple[int, int, int], torch.Tensor]) -> None:
        """Set the cutoff of a streamed level: the score of the last window `rank` would keep on `maps`.
        Its windows are then chosen as their parents finish (`choose_children`)."""
        if not chooses_on(level, self.plan.depth, self.fast_levels):
            return  # refined in full
        windows, scores, order = self._ranking(level, maps)
        self._chosen[level] = set()
        if windows:
            keep = windows_to_refine(len(windows), self.fast_patches)
            # Keeping them all means all, whatever their own Y's scores turn out to be.
            self._cutoffs[level] = -math.inf if keep == len(windows) else float(scores[order[keep - 1]])

    def probe_windows(self, level: int, maps: dict[tuple[int, int, int], torch.Tensor]) -> list[Window]:
        """The windows of `level` (the first streamed one) to compute ahead so that the levels below it can
        be corrected (`correct`): none when no deeper level has a cutoff to correct, else the
        PROBE_WINDOWS whose children score highest on `maps` (the ranking maps) in sum, ties to the lower
        index: the unsure ones, near any cutoff, which Fast would refine anyway."""
        if not any(self._cutoffs[deeper] not in (None, -math.inf) for deeper in range(level + 1, self.plan.depth)):
            return []
        windows, scores, _ = self._ranking(level + 1, maps)
        totals: dict[tuple[int, int, int], float] = {}
        for window, score in zip(windows, scores):
            parent = self.plan.parent(window)
            assert parent is not None
            totals[parent.key] = totals.get(parent.key, 0.0) + float(score)
        candidates = [w for w in self.plan.windows(level) if totals.get(w.key, 0.0) > 0]  # sure: nothing to learn
        order = np.lexsort((np.arange(len(candidates)), -np.array([totals[w.key] for w in candidates])))
        return [candidates[i] for i in order[:PROBE_WINDOWS]]

    def correct(self, level: int, probes: dict[tuple[int, int, int], torch.Tensor],
                maps: dict[tuple[int, int, int], torch.Tensor]) -> float:
        """Scale the cutoffs of the levels below `level`, for the children of refined windows, by the
        median over the children of the refined `probes` (maps of `level`'s windows by key, as the
        streaming pass will compute them) of a child's score on its own Y over its score on the ranking
        `maps`; return that ratio (1.0: nothing to learn from). Measured one level below the probes,
        applied to every deeper level: they are all ranked on the same maps, and a deeper level's true
        ratio is smaller still, so this errs towards too few. The children of a window left unrefined
        keep the raw cutoff: their Y is cut from the coarser maps the ranking scored them on."""
        ranked = {w.key: s for w, s in zip(*self._ranking(level + 1, maps)[:2])}
        ratios = []
        for key, probe_map in probes.items():
            probe = self.plan.window(*key)
            if not self.refines(probe):
                continue
            table = _uncertainty_table(probe_map)
            for child in self._tree.children(probe):
                if ranked.get(child.key, 0.0) > 0:
                    ratios.append(_box_mean(table, probe, child) / ranked[child.key])
        self.cutoff_ratio = float(np.median(ratios)) if ratios else 1.0
        self._corrected_from = level + 1
        return self.cutoff_ratio

    def choose_children(self, parent: Window, parent_map: torch.Tensor) -> None:
        """Choose, among `parent`'s children on a streamed level, those whose Y (`parent_map` (C, h, w),
        refined or not, over the child's box) is unsure enough. Call before the children are read."""
        level = parent.level + 1
        cutoff = self._cutoffs[level] if level < self.plan.depth else None
        if cutoff is None:
            return
        if level >= self._corrected_from and self.refines(parent) and cutoff != -math.inf:
            cutoff *= self.cutoff_ratio
        table = _uncertainty_table(parent_map)
        chosen = self._chosen[level]
        assert chosen is not None
        for child in self._tree.children(parent):
            if (self._skips is None or not self._skips(child)) and _box_mean(table, parent, child) >= cutoff:
                chosen.add((child.row, child.col))

    def _ranking(self, level: int, maps: dict[tuple[int, int, int], torch.Tensor]) -> tuple[list[Window], np.ndarray, np.ndarray]:
        """`level`'s windows (blank ones left out), their scores on their ancestors among `maps`, and the
        order of the paper's rule: highest mean uncertainty first, ties to the lower index."""
        tables = {key: _uncertainty_table(m) for key, m in maps.items()}
        windows = [w for w in self.plan.windows(level) if self._skips is None or not self._skips(w)]
        scores = np.empty(len(windows))
        for index, window in enumerate(windows):
            ancestor = window
            while ancestor.key not in tables:
                ancestor = self.plan.parent(ancestor)  # type: ignore[assignment]
            scores[index] = _box_mean(tables[ancestor.key], ancestor, window)
        return windows, scores, np.lexsort((np.arange(len(windows)), -scores))


def ranking_depth(plan: ScalePlan) -> int:
    """How many coarse levels are computed up front (at least the coarsest)."""
    total, depth = 0, 0
    for level in plan.levels:
        total += level.window_count
        if depth and total > RANKING_WINDOWS:
            break
        depth += 1
    return depth


def _box_mean(table: np.ndarray, ancestor: Window, window: Window) -> float:
    """The mean of the map whose summed-area `table` spans `ancestor`, over `window`'s box."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    sy, sx = h / (ancestor.y1 - ancestor.y0), w / (ancestor.x1 - ancestor.x0)
    y0 = min(h - 1, max(0, math.floor((window.y0 - ancestor.y0) * sy)))
    x0 = min(w - 1, max(0, math.floor((window.x0 - ancestor.x0) * sx)))
    y1 = min(h, max(y0 + 1, math.ceil((window.y1 - ancestor.y0) * sy)))
    x1 = min(w, max(x0 + 1, math.ceil((window.x1 - ancestor.x0) * sx)))
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return float(total / ((y1 - y0) * (x1 - x0)))


def _uncertainty_table(window_map: torch.Tensor) -> np.ndarray:
    """The summed-area table of a refined map's (C, h, w) uncertainty."""
    return _summed_area(host(uncertainty(window_map[None].float()))[0, 0].numpy())


def _summed_area(values: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) table: [y, x] = sum of values[:y, :x]."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = values.astype(np.float64).cumsum(0).cumsum(1)
    return table
