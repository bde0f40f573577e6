"""Walks the window tree coarse-to-fine in bounded memory and forms batches (DESIGN section 3).

One queue per level. The deepest level with a full batch runs first (depth-first), a shallower level
runs only when no deeper batch is full, and roots are pulled lazily; so every queue holds fewer than
(1 + max children) * batch_size windows and live memory does not depend on the image size. Window
pixels are read by a thread pool ahead of use, a bounded number of batches in advance. Subtrees that lie
on blank cells (`--background`, BlankSubtrees) are pruned: never read, never queued.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from magnet_cli.io.blank_mask import BlankMask
from magnet_cli.pyramid import ScalePlan, Window
from magnet_cli.units import Tree


@dataclass
class Task:
    """A window waiting to be segmented, with the refined map of its parent (None at the roots)."""

    window: Window
    parent: Window | None = None
    parent_map: torch.Tensor | None = None  # (C, h, w), shared by siblings
    image: Future | None = field(default=None, repr=False)


class TreeScheduler:
    """Yields (level, tasks) batches; the caller hands refined maps back through `expand`.

    Roots are windows, or Tasks carrying their parent's map (the roots of a unit below level 0)."""

    def __init__(
        self,
        plan: ScalePlan,
        batch_size: int,
        read: Callable[[Window], torch.Tensor],
        pool: ThreadPoolExecutor,
        roots: Iterable[Window | Task] | None = None,
        depth: int | None = None,
        tree: Tree | None = None,
        prune: Callable[[Window], bool] | None = None,
    ) -> None:
        """`prune(window)`: True when the window's subtree is skipped (the caller deals with its output)."""
        self.plan = plan
        self._tree = tree or Tree(plan)
        self.batch_size = max(1, batch_size)
        self.depth = depth if depth is not None else plan.depth
        self._read = read
        self._prune = prune
        self._pool = pool
        self._roots = iter(roots if roots is not None else plan.roots())
        self._roots_left = True
        self._next_root: Task | None = None
        self._queues: list[deque[Task]] = [deque() for _ in range(self.depth)]
        self.peak_queued = 0  # the largest number of waiting windows seen (a test checks it stays bounded)

    def expand(self, window: Window, refined_map: torch.Tensor) -> None:
        """Queue the children of a processed window; they will crop their coarse map from `refined_map`."""
        if window.level + 1 >= self.depth:
            return
        for child in self._tree.children(window):
            if self._prune is None or not self._prune(child):
                self._queues[child.level].append(Task(child, window, refined_map))

    def __iter__(self) -> Iterator[tuple[int, list[Task]]]:
        while True:
            self._top_up_roots()
            level = self._next_level()
            if level is None:
                return
            queue = self._queues[level]
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            self._prefetch(batch)
            self._prefetch_ahead()
            self.peak_queued = max(self.peak_queued, sum(len(q) for q in self._queues) + len(batch))
            yield level, batch

    def _top_up_roots(self) -> None:
        """Pull roots (lazily) until their level's queue holds two batches: the one about to run and the
        next, whose reads `_prefetch_ahead` starts now (with one, a patch run read each batch only when
        it was about to run, and waited for it)."""
        while self._roots_left:
            if self._next_root is None:
                try:
                    root = next(self._roots)
                except StopIteration:
                    self._roots_left = False
                    return
                task = root if isinstance(root, Task) else Task(root)
                if self._prune is not None and self._prune(task.window):
                    continue
                self._next_root = task
            queue = self._queues[self._next_root.window.level]
            if len(queue) >= 2 * self.batch_size:
                return
            queue.append(self._next_root)
            self._next_root = None

    def _next_level(self) -> int | None:
        for level in reversed(range(self.depth)):
            if len(self._queues[level]) >= self.batch_size:
                return level
        for level in reversed(range(self.depth)):  # only partial batches remain: flush the deepest
            if self._queues[level]:
                return level
        return None

    def _prefetch(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            if task.image is None:
                task.image = self._pool.submit(self._read, task.window)

    def _prefetch_ahead(self) -> None:
        """Start reading the next batch of every level, so I/O overlaps the current batch's compute."""
        for queue in self._queues:
            self._prefetch(list(queue)[: self.batch_size])


class BlankSubtrees:
    """Which windows are skipped for blank regions: those whose whole subtree (the window's box and every
    descendant's) lies on blank cells of the mask, so no tissue pixel ever loses its windows. Level 0 of a
    multi-level plan (the whole-image context) always runs."""

    def __init__(self, plan: ScalePlan, mask: BlankMask) -> None:
        self.plan, self.mask = plan, mask
        self._rows = _Axis(plan, "y")
        self._cols = _Axis(plan, "x")

    def skips(self, window: Window) -> bool:
        if window.level == 0 and self.plan.depth > 1:
            return False
        y0, y1 = self._rows.hulls[window.level][window.row]
        x0, x1 = self._cols.hulls[window.level][window.col]
        return self.mask.all_blank(y0, x0, y1, x1)

    def subtree(self, window: Window) -> list[tuple[list[int], list[int]]]:
        """Per level from `window`'s down: the rows and the columns of its subtree's windows."""
        rows, cols = [window.row], [window.col]
        out = [(rows, cols)]
        for level in range(window.level + 1, self.plan.depth):
            rows, cols = self._rows.children(level, rows), self._cols.children(level, cols)
            out.append((rows, cols))
        return out


class _Axis:
    """One axis of the window tree: each level's parent index per window index, and the extent of each
    index's windows with all their descendants."""

    def __init__(self, plan: ScalePlan, axis: str) -> None:
        def window(level: int, index: int) -> Window:
            return plan.window(level, index, 0) if axis == "y" else plan.window(level, 0, index)

        def own(w: Window) -> int:
            return w.row if axis == "y" else w.col

        counts = [len((spec.rows if axis == "y" else spec.cols).starts) for spec in plan.levels]
        self.parents: list[list[int]] = [[]] + [
            [own(plan.parent(window(level, i))) for i in range(counts[level])] for level in range(1, plan.depth)  # type: ignore[arg-type]
        ]
        self.hulls: list[list[tuple[float, float]]] = [[] for _ in counts]
        for level in reversed(range(plan.depth)):
            spans = [(float(getattr(w, f"{axis}0")), float(getattr(w, f"{axis}1"))) for w in (window(level, i) for i in range(counts[level]))]
            if level + 1 < plan.depth:
                for child, parent in enumerate(self.parents[level + 1]):
                    low, high = self.hulls[level + 1][child]
                    spans[parent] = (min(spans[parent][0], low), max(spans[parent][1], high))
            self.hulls[level] = spans

    def children(self, level: int, parents: list[int]) -> list[int]:
        """The indices at `level` whose parents (at level - 1) are among `parents`."""
        wanted = set(parents)
        return [i for i, p in enumerate(self.parents[level]) if p in wanted]
