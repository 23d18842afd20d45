"""Where a session sends cancel requests, over memory:// with a scripted engine.

The fake engine speaks the control protocol (``realtime_batch.control``): it reads tasks,
announces itself with notices and never answers, so every cancel request the session
sends can be read back from the control queue.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

import realtime_batch as rb
from realtime_batch.control import (
    CONTROL_QUEUE,
    KIND,
    KIND_ENGINE,
    KIND_RUNNING,
    NOTIFY,
    notice_message,
)
from realtime_batch.protocol import decode_task
from realtime_batch.transport import open_transport


@pytest.fixture
def transport():
    t = open_transport(f"memory://routing-{uuid.uuid4().hex}")
    t.declare_queue("tasks")
    t.declare_queue(CONTROL_QUEUE, grouped=True)
    yield t
    t.close()


def take_tasks(transport, count: int) -> list:
    got = []
    end = time.monotonic() + 10
    while len(got) < count:
        assert time.monotonic() < end, f"only {len(got)} tasks sent"
        for d in transport.receive("tasks", max_messages=count, timeout=0.2):
            assert d.message.properties.get(NOTIFY)  # sessions ask for notices
            got.append(decode_task(d.message.body))
            transport.complete(d)
    return got


def notify(transport, kind: str, engine: str, task) -> None:
    message = notice_message(  # as an engine sends it: with the task's session key
        kind, engine, [task.task], task.reply_to.group, None, task.session_key
    )
    transport.send(task.reply_to.queue, message)


def cancels_for(transport, engine: str, wait: float = 5.0) -> list[str]:
    ids: list[str] = []
    for d in transport.receive(CONTROL_QUEUE, max_messages=100, timeout=wait, group=engine):
        assert d.message.properties[KIND] == "cancel"
        ids.extend(orjson.loads(d.message.body)["tasks"])
        transport.complete(d)
    return ids


def wait_until(predicate) -> None:
    end = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < end
        time.sleep(0.01)


def test_cancel_goes_to_the_running_engine_or_to_every_known_engine(transport):
    with rb.Session(transport) as s:
        a, b = s.submit("hold.py", task_id="a"), s.submit("hold.py", task_id="b")
        task_a, task_b = take_tasks(transport, 2)
        notify(transport, KIND_ENGINE, "e1", task_a)
        notify(transport, KIND_RUNNING, "e2", task_b)
        wait_until(lambda: s._tracker.running_on.get("b") == "e2" and "e1" in s._tracker.engines)

        assert s.cancel(["b"]) == 1  # running on e2: only e2 hears of it
        assert cancels_for(transport, "e2") == ["b"]
        assert cancels_for(transport, "e1", wait=0.3) == []

        assert a.cancel()  # not known to run anywhere: every engine heard from
        assert cancels_for(transport, "e1") == ["a"] and cancels_for(transport, "e2") == ["a"]
        assert a.cancelled() and b.cancelled()


def test_an_engine_heard_from_later_gets_the_earlier_cancels(transport):
    with rb.Session(transport) as s:
        s.submit("hold.py", task_id="x")
        [task] = take_tasks(transport, 1)
        assert s.cancel_all() == 1  # no engine known yet: nothing can be sent
        notify(transport, KIND_ENGINE, "late", task)
        assert cancels_for(transport, "late") == ["x"]


def test_a_task_cancelled_before_it_was_sent_is_never_sent(transport, monkeypatch):
    sent: list = []
    from realtime_batch.orchestrator import _sending

    monkeypatch.setattr(_sending.Sender, "_loop", lambda self: sent.append("sender off"))
    monkeypatch.setattr(_sending, "_IDLE_GAP", float("inf"))  # no inline first send
    with rb.Session(transport) as s:
        futures = [s.submit("hold.py") for _ in range(5)]
        assert s.cancel(futures[1:]) == 4
        assert [f.task_id for f, _ in s._sender.outbox] == [futures[0].task_id]
        assert sorted(r.status for r in s.results()) == ["cancelled"] * 4
    assert sent == ["sender off"]


def test_late_result_of_a_cancelled_task_is_dropped(transport):
    from realtime_batch.protocol import ResultRecord, encode_result
    from realtime_batch.transport import Message

    with rb.Session(transport) as s:
        future = s.submit("hold.py")
        [task] = take_tasks(transport, 1)
        assert future.cancel()
        record = ResultRecord(session=task.session, job=task.job, task=task.task,
                              status="ok", value=42, engine="e1",
                              session_key=task.session_key)  # fmt: skip
        transport.send(task.reply_to.queue, Message(encode_result(record), group=s.id))
        wait_until(lambda: s.duplicates_dropped == 1)
        assert [r.status for r in s.results()] == ["cancelled"]
        assert future.cancelled()


def test_a_notice_without_the_sessions_key_is_ignored(transport):
    """A running notice forged (or from a forged task) cannot redirect cancel requests."""
    with rb.Session(transport) as s:
        future = s.submit("hold.py")
        [task] = take_tasks(transport, 1)
        forged = notice_message(KIND_RUNNING, "e-forged", [task.task], s.id, None, "wrong")
        transport.send(task.reply_to.queue, forged)
        notify(transport, KIND_RUNNING, "e-real", task)
        wait_until(lambda: s._tracker.running_on.get(task.task) == "e-real")
        assert "e-forged" not in s._tracker.engines
        future.cancel()
