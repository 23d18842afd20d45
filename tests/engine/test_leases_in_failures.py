"""Leases in the failure paths, in every mode and on the Service Bus stand-in, where a
lease belongs to the link that took it and a dead engine's tasks come back only when
their lease expires (docs/reliability.md, "Liveness")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engine_helpers import Harness

from realtime_batch.transport import dead_letter_queue

pytestmark = pytest.mark.servicebus_mode


def wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_a_lease_that_expired_on_a_dead_engine_counts_as_its_delivery(harness: Harness):
    """A "dead engine" leased the task and never settled it: the lease expires (no
    abandon, as when an engine dies on Service Bus), the next delivery is the queue's
    last, and the engine refuses it, unrun, with ``EngineLostError``."""
    harness.transport.declare_queue(harness.queue, lock_duration=1.0, max_delivery_count=2)
    task = harness.submit("marker_sleep.py", "ran", 0, max_retries=5)
    [leased] = harness.transport.receive(harness.queue, timeout=5)
    assert leased.delivery_count == 1
    harness.engine(lock_duration=1.0, max_delivery_count=2)
    result = harness.result()
    assert result.task == task and result.error.type == "EngineLostError", result.error
    assert "delivered 2 times" in result.error.message
    assert not (harness.work_dir / "ran").exists()
    [dead] = harness.transport.receive(dead_letter_queue(harness.queue), timeout=5)
    assert dead.message.properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"


def test_the_running_tasks_lease_is_renewed_through_a_graceful_stop(harness: Harness):
    """The running task outlives its lease several times over while its engine stops:
    the engine keeps renewing it through the grace period, so the task runs once and
    is completed, not redelivered."""
    engine = harness.engine(lock_duration=1.0, grace=20)
    task = harness.submit("marker_sleep.py", "started", 2.2, max_retries=3)
    wait_for(harness.work_dir / "started")
    engine.stop(timeout=30)
    result = harness.result(timeout=5)
    assert result.task == task and result.ok and result.attempt == 1, result
    # an unrenewed lease would have expired twice: the task back on the queue
    assert harness.transport.receive(harness.queue, timeout=0.5) == []
