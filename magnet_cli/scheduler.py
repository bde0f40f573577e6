"""Walks the window tree coarse-to-fine in bounded memory and forms batches (DESIGN section 3).

One queue per level. The deepest level with a full batch runs first (depth-first), a shallower level
runs only when no deeper batch is full, and roots are pulled lazily; so every queue holds fewer than
(1 + max children) * batch_size windows and live memory does not depend on the image size. Window
pixels are read by a thread pool ahead of use, a bounded number of batches in advance.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

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
    ) -> None:
        self.plan = plan
        self._tree = tree or Tree(plan)
        self.batch_size = max(1, batch_size)
        self.depth = depth if depth is not None else plan.depth
        self._read = read
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
        """Pull roots (lazily) until their level's queue holds a batch."""
        while self._roots_left:
            if self._next_root is None:
                try:
                    root = next(self._roots)
                except StopIteration:
                    self._roots_left = False
                    return
                self._next_root = root if isinstance(root, Task) else Task(root)
            queue = self._queues[self._next_root.window.level]
            if len(queue) >= self.batch_size:
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
