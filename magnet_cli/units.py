"""Units of work: blocks of windows with their subtrees, which run anywhere, in any order (DESIGN section 8).

A unit is a rectangle of windows of one level (its roots) plus every descendant of those windows. Units
are what `--resume` records as done, what `--shard` deals out and what a Dask task runs. Three rules
make a unit's result independent of where and when it runs, so that any split gives bit-identical labels:

- a unit's roots take their coarse map from their ancestors, which are recomputed from the image one
  window at a time (batch 1) wherever the unit runs, never batched with another unit's windows;
- inside a unit, batches are formed from that unit's windows only (the scheduler sees its roots alone);
- the split depends on the scale plan only (image size, model input size and settings), so every shard
  and worker computes the same list.

Intra-op threads do not enter: 1 and 2 threads give bit-identical probabilities at a fixed batch size
(benchmarks/agreement.py; README "Determinism").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence, TypeVar

from magnet_cli.pyramid import ScalePlan, Window

# A unit spans this many of the finest levels: 1 + 4 + 16 + 64 = 85 windows, about 2048^2 full-resolution
# pixels at 256 px crops. Smaller units lose batch fill at their roots and recompute more ancestors per
# window; larger ones lose more work to a kill and spread worse over workers.
SUBTREE_LEVELS = 4
# Plans of a single level (patch and downsample modes) have no tree: blocks of 8 x 8 windows.
BLOCK_SIDE = 8
T = TypeVar("T")


@dataclass(frozen=True)
class Unit:
    """Windows rows [row0, row1) x cols [col0, col1) of `level`, with all their descendants."""

    level: int
    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def name(self) -> str:
        """A stable name, used in the completion ledger and in file names."""
        return f"L{self.level}-R{self.row0}-{self.row1}-C{self.col0}-{self.col1}"

    def roots(self, plan: ScalePlan) -> list[Window]:
        return [plan.window(self.level, r, c) for r in range(self.row0, self.row1) for c in range(self.col0, self.col1)]


def split_units(plan: ScalePlan, whole: bool = False) -> list[Unit]:
    """The units of a plan, in window-tree order (units sharing ancestors are neighbours in the list).

    `whole` gives one unit for the whole image: the level engine (`--selection global`, `--mode fast`)
    needs whole levels and cannot be split.
    """
    first = plan.levels[0]
    everything = Unit(0, 0, len(first.rows.starts), 0, len(first.cols.starts))
    if whole:
        return [everything]
    if plan.depth == 1:  # no tree: blocks of windows
        rows, cols = len(first.rows.starts), len(first.cols.starts)
        return [
            Unit(0, r, min(r + BLOCK_SIDE, rows), c, min(c + BLOCK_SIDE, cols))
            for r in range(0, rows, BLOCK_SIDE)
            for c in range(0, cols, BLOCK_SIDE)
        ]
    if plan.depth <= SUBTREE_LEVELS:
        return [everything]
    level = plan.depth - SUBTREE_LEVELS
    tree = Tree(plan)
    return [Unit(level, w.row, w.row + 1, w.col, w.col + 1) for w in sorted(plan.windows(level), key=tree.path)]


def shard(units: Sequence[T], index: int, count: int) -> list[T]:
    """Shard `index` of `count` (from 0): a contiguous run of units, so its ancestors are shared."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    n = len(units)
    return list(units[index * n // count : (index + 1) * n // count])


class Tree:
    """Fast child lookups and ancestor paths for one plan (the plan's own `children` scans a level)."""

    def __init__(self, plan: ScalePlan) -> None:
        self.plan = plan

    @cached_property
    def _child_indices(self) -> list[tuple[dict[int, list[int]], dict[int, list[int]]]]:
        """Per level L >= 1: parent row -> child rows, parent col -> child cols (level L-1 -> L)."""
        out: list[tuple[dict[int, list[int]], dict[int, list[int]]]] = [({}, {})]
        for level in range(1, self.plan.depth):
            spec = self.plan.levels[level]
            row_parent = [self.plan.parent(self.plan.window(level, r, 0)).row for r in range(len(spec.rows.starts))]  # type: ignore[union-attr]
            col_parent = [self.plan.parent(self.plan.window(level, 0, c)).col for c in range(len(spec.cols.starts))]  # type: ignore[union-attr]
            rows: dict[int, list[int]] = {}
            cols: dict[int, list[int]] = {}
            for r, p in enumerate(row_parent):
                rows.setdefault(p, []).append(r)
            for c, p in enumerate(col_parent):
                cols.setdefault(p, []).append(c)
            out.append((rows, cols))
        return out

    def children(self, window: Window) -> list[Window]:
        level = window.level + 1
        if level >= self.plan.depth:
            return []
        rows, cols = self._child_indices[level]
        return [self.plan.window(level, r, c) for r in rows.get(window.row, []) for c in cols.get(window.col, [])]

    def ancestors(self, window: Window) -> list[Window]:
        """Root first, `window`'s parent last."""
        chain = []
        parent = self.plan.parent(window)
        while parent is not None:
            chain.append(parent)
            parent = self.plan.parent(parent)
        return chain[::-1]

    def path(self, window: Window) -> tuple[tuple[int, int], ...]:
        return tuple((w.row, w.col) for w in [*self.ancestors(window), window])

    def windows_per_level(self, units: Iterable[Unit], depth: int | None = None) -> list[int]:
        """Windows a run of `units` computes per level: their subtrees, plus each distinct ancestor once
        (what the engine does when it runs the units in this order)."""
        depth = depth if depth is not None else self.plan.depth
        counts = [0] * depth
        seen: set[tuple[int, int, int]] = set()
        for unit in units:
            rows = list(range(unit.row0, unit.row1))
            cols = list(range(unit.col0, unit.col1))
            for root in unit.roots(self.plan)[:1]:
                for ancestor in self.ancestors(root):
                    if ancestor.key not in seen:
                        seen.add(ancestor.key)
                        counts[ancestor.level] += 1
            for level in range(unit.level, depth):
                if level > unit.level:
                    row_map, col_map = self._child_indices[level]
                    rows = [r for p in rows for r in row_map.get(p, [])]
                    cols = [c for p in cols for c in col_map.get(p, [])]
                counts[level] += len(rows) * len(cols)
        return counts
