"""Engine cancellation over memory://: cancel requests on the control queue, notices.

The tests speak the control protocol directly (``realtime_batch.control``), the way a session
does: cancel requests to the engine's group of the ``control`` queue, notices read
from the client's mailbox.
"""

from __future__ import annotations

import time

import orjson
import pytest
from engine_helpers import Harness

from realtime_batch.control import (
    CONTROL_QUEUE,
    KIND,
    KIND_ENGINE,
    KIND_RUNNING,
    NOTIFY_PROPERTIES,
    cancel_messages,
    decode_control,
)
from realtime_batch.engine._pipe import ControlPipe
from realtime_batch.protocol import decode_result, encode_task
from realtime_batch.transport import Message


def cancel(harness: Harness, engine, *task_ids: str) -> None:
    harness.transport.send(CONTROL_QUEUE, cancel_messages("s1", engine.engine_id, task_ids))


def wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_cancel_before_the_task_arrives_skips_it(harness):
    engine = harness.engine()
    cancel(harness, engine, "early")
    wait_for(lambda: engine.is_cancelled("s1", "early"))
    harness.submit("marker_sleep.py", "early.txt", 0, task_id="early")
    result = harness.result()
    assert result.status == "cancelled" and result.error.type == "TaskCancelledError"
    assert not (harness.work_dir / "early.txt").exists()


@pytest.mark.servicebus_mode
def test_cancel_prefetched_and_running_tasks(harness):
    engine = harness.engine(prefetch=2)
    running = harness.submit("marker_sleep.py", "running.txt", 60)
    waiting = harness.submit("marker_sleep.py", "waiting.txt", 0)
    wait_for((harness.work_dir / "running.txt").exists)
    pid = engine.worker_pid
    cancel(harness, engine, waiting)
    if not harness.direct:  # relay: the engine answers a task queued in its worker at once
        assert harness.result().task == waiting
    # direct: the worker, busy with the running task, skips it when it comes up
    started = time.monotonic()
    cancel(harness, engine, running)
    result = harness.result()
    stopped_after = time.monotonic() - started
    if harness.direct:
        both = {result.task: result, **harness.results(1)}
        assert both[waiting].status == "cancelled"
        result = both[running]
    assert result.task == running and result.status == "cancelled"
    assert "while running" in result.error.message
    assert stopped_after < 3.0  # killed, not waited for (the task sleeps 60 s)
    assert not (harness.work_dir / "waiting.txt").exists()
    wait_for(lambda: engine.worker_pid is not None)
    assert engine.worker_pid != pid  # a fresh worker
    harness.submit("noop.py")
    assert harness.result().status == "ok"


def test_cancel_a_task_queued_in_the_worker_skips_it_without_a_kill(harness):
    engine = harness.engine(prefetch=4)
    head = harness.submit("marker_sleep.py", "head.txt", 1.0)
    queued = harness.submit("marker_sleep.py", "queued.txt", 0)
    after = harness.submit("noop.py")
    wait_for((harness.work_dir / "head.txt").exists)
    pid = engine.worker_pid
    cancel(harness, engine, queued)
    results = harness.results(3)
    assert results[head].status == "ok" and results[after].status == "ok"
    assert results[queued].status == "cancelled"
    assert not (harness.work_dir / "queued.txt").exists()
    assert engine.worker_pid == pid  # skipped by the worker, which was not killed


def test_malformed_control_messages_are_ignored(harness):
    engine = harness.engine()
    harness.transport.send(
        CONTROL_QUEUE,
        [
            Message(b"not json", group=engine.engine_id, properties={KIND: "cancel"}),
            Message(b'{"tasks": [1]}', group=engine.engine_id, properties={KIND: "cancel"}),
            Message(b'{"session": "s1", "tasks": ["x"]}', group=engine.engine_id),
        ],
    )
    harness.submit("noop.py", task_id="x")
    assert harness.result().status == "ok"


def _read_mailbox(harness: Harness, count: int, timeout: float = 30.0) -> list[Message]:
    got: list[Message] = []
    end = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < end:
        for d in harness.transport.receive(
            harness.results_queue, max_messages=10, timeout=0.2, group=harness.group
        ):
            harness.transport.complete(d)
            got.append(d.message)
    return got


def _submit_with_notices(harness: Harness, command: str, *args, **options) -> str:
    record = harness.task(command, *args, **options)
    harness.transport.send(
        harness.queue, Message(encode_task(record), properties=NOTIFY_PROPERTIES)
    )
    return record.task


def test_notices_engine_once_per_mailbox_and_running_for_long_tasks(harness):
    engine = harness.engine()
    quick = [_submit_with_notices(harness, "noop.py") for _ in range(3)]
    slow = _submit_with_notices(harness, "sleep.py", 0.6)
    messages = _read_mailbox(harness, 6)
    notices = [m for m in messages if KIND in m.properties]
    results = [decode_result(m.body) for m in messages if KIND not in m.properties]
    assert sorted(r.task for r in results) == sorted([*quick, slow])
    kinds = [m.properties[KIND] for m in notices]
    assert kinds == [KIND_ENGINE, KIND_RUNNING]
    engine_notice, running_notice = (decode_control(m.body) for m in notices)
    assert engine_notice["engine"] == engine.engine_id
    # "key": the task's session_key (none here), which a session checks
    assert running_notice == {"engine": engine.engine_id, "tasks": [slow], "key": ""}


def test_no_notices_unless_the_task_asks(harness):
    harness.engine()
    harness.submit("sleep.py", 0.6)
    assert harness.result().status == "ok"
    harness.assert_no_result(0.3)


def test_the_cancel_set_is_bounded(harness, monkeypatch):
    from realtime_batch.engine import _cancels

    monkeypatch.setattr(_cancels, "CANCELLED_MAX", 5)
    engine = harness.engine()
    cancel(harness, engine, *[f"t{i}" for i in range(8)])
    wait_for(lambda: engine.is_cancelled("s1", "t7"))
    assert len(engine._cancels.keys) == 5
    assert not engine.is_cancelled("s1", "t0") and engine.is_cancelled("s1", "t3")


@pytest.mark.parametrize(
    ("chunks", "seqs", "keys", "draining"),
    [
        ([b"C1\nC22\n"], {1, 22}, set(), False),
        ([b"C3", b"4\nD\n"], {34}, set(), True),
        ([b"D\n", b"C5\nC6"], {5}, set(), True),  # a line without its end waits
        ([b'K["s", "t", ""]\nKnot json\nCx\n'], set(), {("s", "t", "")}, False),
    ],
)
def test_worker_control_pipe_parsing(chunks, seqs, keys, draining):
    import os

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    control = ControlPipe(read_fd)
    try:
        for chunk in chunks:
            os.write(write_fd, chunk)
            control.poll()
        control.poll()  # nothing more to read
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert (control.seqs, control.keys, control.draining) == (seqs, keys, draining)
    assert control.arrived is bool(seqs or keys)


def test_cancel_message_chunks_large_requests():
    messages = cancel_messages("s", "e1", [str(i) for i in range(4500)])
    assert [len(orjson.loads(m.body)["tasks"]) for m in messages] == [2000, 2000, 500]
    assert all(m.group == "e1" and m.properties[KIND] == "cancel" for m in messages)


def test_engine_keeps_serving_after_many_cancels(harness):
    engine = harness.engine(prefetch=4)
    head = harness.submit("marker_sleep.py", "head.txt", 60)
    others = [harness.submit("marker_sleep.py", f"m{i}.txt", 0) for i in range(20)]
    wait_for((harness.work_dir / "head.txt").exists)
    cancel(harness, engine, *others[4:])
    cancel(harness, engine, head)
    results = harness.results(21)
    assert [results[t].status for t in [head, *others]] == ["cancelled"] + ["ok"] * 4 + [
        "cancelled"
    ] * 16
    ran = sorted(p.name for p in harness.work_dir.glob("m*.txt"))
    assert ran == [f"m{i}.txt" for i in range(4)]
    harness.submit("noop.py")
    assert harness.result().status == "ok"
