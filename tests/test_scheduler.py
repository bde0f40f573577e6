"""The tree scheduler (magnet_cli/scheduler.py): reads run a batch ahead of the batch being computed."""

from __future__ import annotations

from concurrent.futures import Future

from magnet_cli.pyramid import ScalePlan, make_plan
from magnet_cli.scheduler import TreeScheduler


class RecordingPool:
    """A stand-in thread pool that records which windows were submitted for reading, in order."""

    def __init__(self) -> None:
        self.submitted: list = []

    def submit(self, read, window) -> Future:
        self.submitted.append(window)
        future: Future = Future()
        future.set_result(read(window))
        return future


def test_a_single_level_run_reads_the_next_batch_before_computing_this_one():
    # Patch processing: one level of roots only. Its next batch's reads must start while the current
    # batch computes; they used to start only when that batch was about to run.
    full = make_plan(1024, 1024, (256, 256), 3, None)
    plan = ScalePlan(full.image_height, full.image_width, full.input_height, full.input_width, (full.levels[-1],))
    pool = RecordingPool()
    scheduler = TreeScheduler(plan, batch_size=2, read=lambda window: window.key, pool=pool)  # type: ignore[arg-type]
    batches = iter(scheduler)
    _, first = next(batches)
    assert [t.window for t in first] == pool.submitted[:2]
    assert len(pool.submitted) == 4  # this batch and the next
    _, second = next(batches)
    assert [t.window for t in second] == pool.submitted[2:4] and len(pool.submitted) == 6
    assert all(t.image.result() == t.window.key for t in first + second)
