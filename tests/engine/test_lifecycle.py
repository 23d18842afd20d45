"""Leases, graceful stop and process hygiene of in-process engines."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from realtime_batch.protocol import decode_task

pytestmark = pytest.mark.servicebus_mode  # and on the Service Bus stand-in (relay mode)


def wait_for(path, timeout=30.0):
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_lease_is_renewed_while_a_task_outlives_the_lock(harness):
    engine = harness.engine(lock_duration=1.0, prefetch=2)
    # over two lock durations: without renewal both tasks would be redelivered
    first = harness.submit("sleep.py", 2.2)
    second = harness.submit("noop.py", "queued behind")
    results = harness.results(2)
    assert results[first].ok and results[first].attempt == 1
    assert results[second].ok and results[second].attempt == 1
    harness.assert_no_result(wait=1.0)
    assert harness.transport.receive(harness.queue, timeout=0) == []
    assert engine.tasks_done == 2


def test_graceful_stop_finishes_the_running_task_and_returns_the_rest(harness):
    engine = harness.engine(prefetch=3)
    worker = psutil.Process(engine.worker_pid)
    running = harness.submit("marker_sleep.py", "started", 1.0)
    waiting = [harness.submit("noop.py", i) for i in range(2)]
    wait_for(harness.work_dir / "started")
    engine.stop(timeout=30)
    assert engine.error is None
    result = harness.result()
    assert result.task == running and result.value == "slept"
    harness.assert_no_result()
    # the prefetched tasks were not run: they are back on the queue for another engine
    back = harness.transport.receive(harness.queue, max_messages=5, timeout=2)
    assert sorted(decode_task(d.message.body).task for d in back) == sorted(waiting)
    assert not worker.is_running()


def test_stop_abandons_a_task_that_outlives_the_grace_period(harness):
    engine = harness.engine(grace=0.3)
    task_id = harness.submit("marker_sleep.py", "started", 60)
    wait_for(harness.work_dir / "started")
    engine.stop(timeout=30)
    harness.assert_no_result()
    [back] = harness.transport.receive(harness.queue, timeout=2)
    assert decode_task(back.message.body).task == task_id
    assert back.delivery_count == 2


def test_idle_engine_stops_promptly_and_leaves_no_process(harness, no_leaked_processes):
    engine = harness.engine()
    pid = engine.worker_pid
    assert psutil.pid_exists(pid)
    engine.stop(timeout=30)
    assert not engine._thread.is_alive()
    assert engine.worker_pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_engine_in_a_thread_leaves_signal_handlers_alone(harness):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    harness.engine()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
