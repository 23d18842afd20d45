"""Infrastructure faults: worker crashes, timeouts, lost engines, dead-lettering, bad input."""

from __future__ import annotations

import time

import msgspec
import pytest

from realtime_batch.protocol import ReplyTo, encode_task, read_fields, replace
from realtime_batch.transport import Message, dead_letter_queue


@pytest.mark.servicebus_mode
def test_worker_exit_is_retried_then_reported(harness):
    engine = harness.engine()
    first_pid = engine.worker_pid
    harness.submit("crash.py", "exit", 3, max_retries=1)
    result = harness.result()
    assert result.status == "error"
    assert result.error.type == "WorkerCrashedError"
    assert "worker died with exit code 3" in result.error.message
    assert result.attempt == 2  # ran twice: the first crash was retried
    harness.assert_no_result()
    # a fresh worker serves the next task
    harness.submit("noop.py", "after")
    assert harness.result().value["args"] == ["after"]
    assert engine.worker_pid not in (None, first_pid)


def test_segfault_names_the_signal(harness):
    harness.engine()
    harness.submit("crash.py", "segv", max_retries=0)
    result = harness.result()
    assert result.error.type == "WorkerCrashedError"
    assert "signal SIGSEGV" in result.error.message
    assert result.attempt == 1
    assert "crash.py" in result.error.traceback  # faulthandler's stack dump
    harness.submit("noop.py")
    assert harness.result().ok


@pytest.mark.servicebus_mode
def test_timeout_kills_the_task_and_the_engine_keeps_serving(harness):
    engine = harness.engine()
    harness.submit("sleep.py", 60, timeout=0.5, max_retries=3)
    result = harness.result()
    assert result.status == "error"
    assert result.error.type == "TaskTimeoutError"
    assert "0.5" in result.error.message
    assert result.attempt == 1  # timeouts are not retried
    harness.submit("noop.py", 1)
    assert harness.result().ok
    assert engine.worker_pid is not None
    harness.assert_no_result()


def test_default_timeout_applies_when_the_task_sets_none(harness):
    harness.engine(default_timeout=0.5)
    harness.submit("sleep.py", 60)
    assert harness.result().error.type == "TaskTimeoutError"


@pytest.mark.servicebus_mode
def test_tasks_queued_behind_a_crash_still_run(harness):
    harness.engine(prefetch=4)
    crash = harness.submit("crash.py", "exit", 1, max_retries=0)
    others = [harness.submit("noop.py", i) for i in range(3)]
    results = harness.results(4)
    assert results[crash].error.type == "WorkerCrashedError"
    assert all(results[t].ok and results[t].attempt == 1 for t in others)


@pytest.mark.servicebus_mode
def test_delivery_seen_too_often_is_refused_as_engine_lost(harness):
    harness.transport.declare_queue(harness.queue)
    harness.submit("marker_sleep.py", "ran.txt", 0, max_retries=0)
    # a "dead engine" leased it once and never finished
    [delivery] = harness.transport.receive(harness.queue, timeout=5)
    harness.transport.abandon(delivery)
    harness.engine()
    result = harness.result()
    assert result.error.type == "EngineLostError"
    assert "delivered 2 times" in result.error.message
    assert not (harness.work_dir / "ran.txt").exists()


@pytest.mark.servicebus_mode
def test_last_delivery_after_a_lost_engine_is_refused_not_run(harness):
    """max_retries above the queue's limit: the broker's last delivery still answers."""
    harness.transport.declare_queue(harness.queue, max_delivery_count=3)
    harness.submit("marker_sleep.py", "ran.txt", 0, max_retries=10)
    for _ in range(2):  # two "engines" leased it and died
        [delivery] = harness.transport.receive(harness.queue, timeout=5)
        harness.transport.abandon(delivery)
    harness.engine(max_delivery_count=3)
    result = harness.result()
    assert result.error.type == "EngineLostError"
    assert "delivered 3 times" in result.error.message
    assert not (harness.work_dir / "ran.txt").exists()
    [dead] = harness.transport.receive(dead_letter_queue(harness.queue), timeout=5)
    assert dead.message.properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"


@pytest.mark.servicebus_mode
def test_max_delivery_count_dead_letters_with_an_error_result(harness):
    harness.engine(max_delivery_count=2)
    task_id = harness.submit("crash.py", "exit", 5, max_retries=5)
    result = harness.result()
    # the first delivery crashed its worker; the second, the queue's last, is not used
    assert result.error.type == "WorkerCrashedError"
    assert result.attempt == 1
    assert "MaxDeliveryCountExceeded" in result.error.message
    [dead] = harness.transport.receive(dead_letter_queue(harness.queue), timeout=5)
    assert read_fields(dead.message.body)["task"] == task_id
    assert dead.message.properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"


@pytest.mark.servicebus_mode
def test_malformed_body_is_dead_lettered_and_the_engine_survives(harness):
    harness.engine()
    harness.send_raw(b"\x00 not json")
    harness.send_raw(b'{"v": 1, "task": 5}')
    harness.submit("noop.py", "alive")
    assert harness.result().value["args"] == ["alive"]
    dead: list = []  # dead-lettering may finish after the result is sent
    end = time.monotonic() + 10
    while len(dead) < 2 and time.monotonic() < end:
        dead += harness.transport.receive(
            dead_letter_queue(harness.queue), max_messages=5, timeout=1
        )
    assert sorted(d.message.body for d in dead) == sorted(
        [b"\x00 not json", b'{"v": 1, "task": 5}']
    )
    assert {d.message.properties["DeadLetterReason"] for d in dead} == {"MalformedTask"}
    described = " ".join(d.message.properties["DeadLetterErrorDescription"] for d in dead)
    assert "not a protocol record" in described  # not MessagePack at all
    assert "unsupported protocol version 1" in described  # version 1 was JSON


def test_unknown_version_is_answered_when_the_sender_is_known(harness):
    harness.engine()
    body = msgspec.msgpack.decode(encode_task(harness.task("noop.py", task_id="t-v9")))
    body["v"] = 9
    harness.send_raw(msgspec.msgpack.encode(body))
    result = harness.result()
    assert result.task == "t-v9"
    assert result.error.type == "ProtocolError"
    assert "version" in result.error.message
    [dead] = harness.transport.receive(dead_letter_queue(harness.queue), timeout=5)
    assert dead.message.properties["DeadLetterReason"] == "MalformedTask"


def test_result_too_large_becomes_an_error(harness, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "big.py").write_text("def run(n):\n    return 'x' * n\n")
    harness.engine(tasks_dir=tasks)
    harness.submit("big.py", harness.transport.max_message_size + 10)
    result = harness.result()
    assert result.error.type == "ResultTooLargeError"


@pytest.mark.servicebus_mode
def test_result_to_missing_queue_dead_letters_the_task(harness):
    harness.engine()
    record = replace(harness.task("noop.py"), reply_to=ReplyTo("nowhere", "g"))
    harness.transport.send(harness.queue, Message(encode_task(record)))
    [dead] = harness.transport.receive(dead_letter_queue(harness.queue), timeout=10)
    assert dead.message.properties["DeadLetterReason"] == "ReplyQueueNotFound"
