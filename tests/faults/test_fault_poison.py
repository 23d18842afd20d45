"""(c) Poison tasks: dead-lettered after ``max_delivery_count`` with an error result.

A task that kills its worker every time is retried (an infrastructure fault)
until the queue's ``max_delivery_count`` is reached; then the engine moves it to
the dead-letter queue and answers the client with an error naming the reason.
A task that kills its *engine* cannot be answered by that engine: the next
engine to receive it refuses it once ``max_retries`` is used up, or when it is the
queue's last delivery (so a ``max_retries`` above the queue's limit still ends in
an answer, not in a silent dead letter).
"""

from __future__ import annotations

import time
import uuid

import pytest
from faultkit import TASK_FILES, wait_until

import realtime_batch as rb
from realtime_batch.protocol import decode_task
from realtime_batch.transport import dead_letter_queue, open_transport
from realtime_batch.transport.base import DEAD_LETTER_REASON, MAX_DELIVERY_REASON

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leaked_processes")]

MAX_DELIVERY_COUNT = 3


def test_poison_task_is_dead_lettered_with_an_error_result(backend, fault_report):
    queue = f"tasks-{uuid.uuid4().hex[:8]}"
    with rb.LocalPool(
        engines=2,
        transport=backend.url,
        task_files=TASK_FILES,
        queue=queue,
        lock_duration=10,
        max_delivery_count=MAX_DELIVERY_COUNT,
    ) as pool:
        with rb.Session(
            pool, task_queue=queue, results_queue=f"results-{uuid.uuid4().hex[:8]}"
        ) as session:
            # Retries allowed beyond the queue's limit: the limit is what stops it.
            poison = session.submit("poison.py", task_id="poison", max_retries=100)
            with pytest.raises(rb.TaskError) as info:
                poison.result(timeout=120)
            healthy = session.submit("work.py", 7, task_id="after")
            assert healthy.result(timeout=60) == 7  # the engines carry on
            [result, _] = sorted(session.results(), key=lambda r: r.task_id != "poison")
        with open_transport(pool.transport_url) as transport:
            dead = transport.receive(dead_letter_queue(queue), max_messages=10, timeout=30)
            for delivery in dead:
                transport.complete(delivery)
        restarts = pool.restarts

    error = info.value
    assert error.remote_type == "WorkerCrashedError"
    assert MAX_DELIVERY_REASON in error.remote_message
    assert "dead-lettered" in error.remote_message
    # the queue's last delivery is kept for answering after an engine death
    assert error.attempt == MAX_DELIVERY_COUNT - 1
    assert result.task_id == "poison" and result.status == "error"
    assert restarts == 0  # only workers died; their engines restarted them
    assert len(dead) == 1
    assert dead[0].message.properties[DEAD_LETTER_REASON] == MAX_DELIVERY_REASON
    assert decode_task(dead[0].message.body).task == "poison"
    fault_report.record(
        f"c_poison_{backend.name}",
        backend=backend.name,
        max_delivery_count=MAX_DELIVERY_COUNT,
        deliveries=error.attempt,
        dead_lettered=len(dead),
        error_type=error.remote_type,
        error_results=1,
    )


@pytest.mark.parametrize(
    ("max_retries", "max_delivery_count"),
    [(1, 10), (100, 3)],
    ids=["retries-used-up", "queue-limit-first"],
)
def test_task_killing_its_engine_comes_back_as_engine_lost(
    backend, fault_report, max_retries, max_delivery_count
):
    queue = f"tasks-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with rb.LocalPool(
        engines=2,
        transport=backend.url,
        task_files=TASK_FILES,
        queue=queue,
        lock_duration=2,  # Service Bus has no heartbeats: the lease has to expire
        max_delivery_count=max_delivery_count,
    ) as pool:
        with rb.Session(
            pool, task_queue=queue, results_queue=f"results-{uuid.uuid4().hex[:8]}"
        ) as session:
            killer = session.submit(
                "poison.py", "engine", task_id="killer", max_retries=max_retries
            )
            with pytest.raises(rb.TaskError) as info:
                killer.result(timeout=120)
            assert session.submit("work.py", 8).result(timeout=60) == 8
        with open_transport(pool.transport_url) as transport:
            dead = transport.receive(dead_letter_queue(queue), max_messages=10, timeout=1)
            for delivery in dead:
                transport.complete(delivery)
        wait_until(lambda: pool.restarts >= 2, 30)
        restarts = pool.restarts

    error = info.value
    assert error.remote_type == "EngineLostError"
    assert error.attempt == 3  # two engines died, the third refused it
    assert restarts >= 2
    if max_delivery_count == 3:  # refused as the queue's last delivery: dead-lettered too
        assert "max_delivery_count" in error.remote_message
        assert [d.message.properties[DEAD_LETTER_REASON] for d in dead] == [MAX_DELIVERY_REASON]
    else:
        assert dead == []
    fault_report.record(
        f"c_engine_killer_{max_delivery_count}_{backend.name}",
        backend=backend.name,
        engines_killed_by_task=2,
        max_retries=max_retries,
        max_delivery_count=max_delivery_count,
        dead_lettered=len(dead),
        engine_restarts=restarts,
        error_type=error.remote_type,
        seconds=round(time.monotonic() - started, 1),
    )
