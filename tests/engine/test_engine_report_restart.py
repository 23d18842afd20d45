"""An engine's figures outlive its task worker.

In direct mode (zmq://) the task worker sends the results and reports their counts
itself. A worker that crashed or was killed for a timeout took its figures with it:
the next worker reported 0 failures and no failure list, so the engine's failure
count went *down* after a crash (the moment one looks at it), and its busy ratio
started again from nothing. The engine's own part of the report (the crash or
timeout it answered) also said busy 0, though it runs no task itself in this mode.
"""

from __future__ import annotations

import time
import uuid

import pytest
from engine_helpers import TASKS, open_harness


def _row(harness, engine_id, ready, timeout=15.0):
    """The broker's row of ``engine_id`` once ``ready(row)`` holds (or the last one)."""
    end = time.monotonic() + timeout
    row = None
    while time.monotonic() < end:
        rows = [e for e in harness.transport.stats().engines if e.id == engine_id]
        row = rows[0] if rows else None
        if row is not None and ready(row):
            return row
        time.sleep(0.1)
    return row


@pytest.mark.parametrize("mode", ["relay", "direct"])
def test_failures_told_before_a_worker_crash_are_still_counted_after_it(mode, tmp_path):
    with open_harness(mode, TASKS, tmp_path / "wd") as harness:
        engine = harness.engine(engine_id=f"figures-{uuid.uuid4().hex[:6]}")
        harness.submit("fail.py", "ValueError", "first")
        assert harness.result().status == "error"
        harness.submit("sleep.py", 0.3)
        assert harness.result().status == "ok"
        pid = engine.worker_pid
        harness.submit("crash.py", "exit", 3, max_retries=0)
        crashed = harness.result()
        assert crashed.error is not None and crashed.error.type == "WorkerCrashedError"
        end = time.monotonic() + 10
        while engine.worker_pid in (None, pid) and time.monotonic() < end:
            time.sleep(0.05)  # the next worker
        assert engine.worker_pid not in (None, pid)
        time.sleep(1.5)  # the new worker's first report has gone out
        row = _row(harness, engine.engine_id, lambda r: r.tasks_failed >= 2)
        assert row is not None
        assert row.tasks_failed == 2, row
        types = sorted(f.type for f in row.failures)
        assert types == ["ValueError", "WorkerCrashedError"], row.failures
        assert row.busy_ratio is not None and row.busy_ratio > 0, row  # the 0.3 s it ran
        assert row.worker_restarts == engine.worker_restarts == 1, row


class _Reports:
    """A transport stand-in that keeps the reports passed to it."""

    def __init__(self):
        self.reports = []

    def report_engine(self, report):
        self.reports.append(report)


def test_a_kept_observer_goes_on_from_the_last_ones_figures():
    from realtime_batch.engine._observe import KEEP_SIZE, TaskObserver

    keep = memoryview(bytearray(KEEP_SIZE))
    first = TaskObserver(_Reports(), "e1", "worker", keep=keep)
    first.finished("t1", None, 100.0, 100.5)
    copy = TaskObserver.read(keep, "e1")  # what a result alone wrote
    assert copy is not None and (copy.completed, copy.busy_seconds) == (1, 0.5)
    assert copy.duration_buckets == first.duration_buckets
    first.retry()
    for n in range(7):  # more than are kept, with tracebacks too large to keep them all
        # (2,000 characters each as told, 12,000 bytes each as JSON)
        first.finished(f"f{n}", ("ValueError", f"boom {n}", "\x01" * 100_000), 101.0, 101.25)
    second = TaskObserver(_Reports(), "e1", "worker", keep=keep)
    assert (second.completed, second.failed, second.retried) == (1, 7, 1)
    assert second.busy_seconds == first.busy_seconds == 0.5 + 7 * 0.25
    assert second.duration_buckets == first.duration_buckets
    assert second.started == first.started
    assert [f["task"] for f in second.failures] == ["f2", "f3", "f4", "f5", "f6"]
    assert [f["message"] for f in second.failures] == [f"boom {n}" for n in range(2, 7)]
    assert all(f["traceback"] == "" for f in second.failures)  # cut to fit
    assert all(len(f["traceback"]) == 2000 for f in first.failures)  # as told


def test_figures_cut_short_by_a_dying_worker_are_not_trusted():
    import struct

    from realtime_batch.engine._observe import KEEP_SIZE, TaskObserver

    keep = memoryview(bytearray(KEEP_SIZE))
    first = TaskObserver(_Reports(), "e1", "worker", keep=keep)
    first.finished("t1", ("ValueError", "boom", ""), 100.0, 100.5)
    gen = struct.unpack_from("<Q", keep, 0)[0]
    struct.pack_into("<Q", keep, 0, gen + 1)  # as if killed while writing
    second = TaskObserver(_Reports(), "e1", "worker", keep=keep)
    assert (second.completed, second.failed, list(second.failures)) == (0, 0, [])
    third = TaskObserver(_Reports(), "e1", "worker", keep=keep)  # what the second wrote
    assert third.started == second.started and third.failed == 0


def test_the_engines_part_says_no_busy_ratio_where_it_times_no_task():
    from realtime_batch.engine._observe import TaskObserver

    transport = _Reports()
    TaskObserver(transport, "e1", times_tasks=False).failed_for_good("t1", "TaskTimeoutError", "")
    TaskObserver(transport, "e1").failed_for_good("t1", "TaskTimeoutError", "")
    assert "busy" not in transport.reports[0] and transport.reports[1]["busy"] == 0.0


def test_kept_failures_that_are_not_a_list_of_failures_are_dropped():
    """The worker runs task code: whatever it left in the kept memory must not stop the
    next worker from starting, nor the engine's metrics from being read."""
    import struct

    from realtime_batch.engine._observe import _KEPT, KEEP_SIZE, TaskObserver

    for blob in (b"5", b'{"a": 1}', b"[1, 2]", b"\xff\xfe", b"[" * 2000):
        keep = memoryview(bytearray(KEEP_SIZE))
        TaskObserver(_Reports(), "e1", "worker", keep=keep).finished("t", None, 1.0, 2.0)
        keep[_KEPT.size : _KEPT.size + len(blob)] = blob
        struct.pack_into("<I", keep, _KEPT.size - 4, len(blob))
        again = TaskObserver(_Reports(), "e1", "worker", keep=keep)
        assert (again.completed, list(again.failures)) == (1, []), blob
        copy = TaskObserver.read(keep, "e1")
        assert copy is not None and copy.completed == 1
