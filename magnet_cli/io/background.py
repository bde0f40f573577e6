"""Runs a writer's `write` calls on a thread with a bounded queue, so compute never waits on disk
unless the disk falls more than `depth` windows behind (which also bounds the memory held)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_STOP = object()
# The writer wakes this often to look at the queue itself. A Ctrl-C or SIGTERM raised in the producer
# (main) thread inside Queue.put can leave the writer waiting for a notification that never comes; seen
# as a SIGTERM'd run that joined its writer forever (py-spy: main in close() -> join, writer in get()).
POLL_SECONDS = 0.1


class BackgroundWriter:
    """Calls `write(*args)` in order on one thread; the first error is re-raised to the producer."""

    def __init__(self, write: Callable[..., Any], depth: int = 8, initializer: Callable[[], Any] | None = None) -> None:
        self._write = write
        self._initializer = initializer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while True:
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._closing:  # the stop item may have come without its wake-up
                    return
                continue
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as error:  # handed to the producer thread
                    self._error = error

    def submit(self, *args: Any) -> None:
        self._raise_pending()
        self._queue.put(args)

    def close(self) -> None:
        """Wait for every queued write; re-raise a write error."""
        self._closing = True
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
