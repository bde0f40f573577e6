"""Progress bars: one per scale level plus an overall bar, off when not a terminal."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_enabled(requested: bool) -> bool:
    """Bars only when asked for and stderr is a terminal (batch jobs and SLURM logs stay clean)."""
    return requested and sys.stderr.isatty()


def new_bar(*status_columns: TextColumn) -> Progress:
    """The one progress-bar look of every command, on stderr; extra columns go before the times."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *status_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


class LevelProgress(AbstractContextManager):
    """Tracks windows done per level for one image; a no-op when disabled."""

    def __init__(self, title: str, windows_per_level: list[int], enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Progress | None = None
        self._title = title
        self._counts = windows_per_level

    def __enter__(self) -> "LevelProgress":
        if self._enabled:
            self._bar = new_bar()
            self._bar.start()
            self._overall = self._bar.add_task(self._title, total=sum(self._counts))
            self._levels = [
                self._bar.add_task(f"  level {i + 1}", total=count) for i, count in enumerate(self._counts)
            ]
        return self

    def advance(self, level: int, windows: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._levels[level], windows)
            self._bar.advance(self._overall, windows)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def counting_bar(requested: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """One bar of `total` units; yields `advance(n)`, a no-op when bars are off."""
    if not progress_enabled(requested):
        yield lambda n: None
        return
    bar = new_bar()
    task = bar.add_task(description, total=total)
    with bar:
        yield lambda n: bar.advance(task, n)
