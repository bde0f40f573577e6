"""The background writer: every queued write lands, in order, and closing never waits forever."""

from __future__ import annotations

import time

import pytest

from magnet_cli.io.background import _STOP, BackgroundWriter


def test_writes_land_in_order_and_close_drains_them():
    written = []
    writer = BackgroundWriter(lambda *args: written.append(args), depth=2)
    for i in range(20):
        writer.submit(i)
    writer.close()
    assert written == [(i,) for i in range(20)]


def test_a_write_error_reaches_the_producer():
    def fail(value):
        raise OSError(28, "No space left on device")

    writer = BackgroundWriter(fail)
    writer.submit(1)
    with pytest.raises(OSError):
        writer.close()


def test_the_writer_finds_items_whose_wake_up_was_lost():
    # A SIGTERM raised in the producer inside Queue.put once left the writer waiting in get() for a
    # notification that never came, and the run joined it forever. Queue the items without waking it.
    written = []
    writer = BackgroundWriter(lambda *args: written.append(args))
    time.sleep(0.3)  # the writer is now waiting in get()
    with writer._queue.mutex:
        writer._queue.queue.append((7,))
        writer._queue.queue.append(_STOP)
    writer._thread.join(timeout=5)
    assert not writer._thread.is_alive() and written == [(7,)]
