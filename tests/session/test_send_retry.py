"""A session retries sends while the transport is briefly unreachable (broker restart)."""

from __future__ import annotations

import uuid

import pytest

import realtime_batch as rb
from realtime_batch.transport import ConnectionLostError, open_transport
from realtime_batch.transport.memory import MemoryTransport


class Flaky(MemoryTransport):
    """A memory transport whose first sends fail as if the broker were restarting."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures
        self.attempts = 0

    def send(self, queue, messages):
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionLostError("broker unreachable (simulated)")
        return super().send(queue, messages)


@pytest.mark.parametrize("burst", [1, 50])
def test_sends_are_retried_until_the_transport_is_back(burst):
    url = f"memory://retry-{uuid.uuid4().hex}"
    flaky = Flaky(url, failures=3)
    with rb.Session(flaky) as s, open_transport(url) as engine_side:
        futures = [s.submit("x.py", i) for i in range(burst)]
        received = []
        while len(received) < burst:
            batch = engine_side.receive("tasks", max_messages=100, timeout=10)
            assert batch, "tasks were not sent after the transport came back"
            received += batch
        assert flaky.attempts >= 4
        assert not any(f.done() for f in futures)  # nothing failed on the way
    flaky.close()


def test_a_send_that_keeps_failing_fails_its_futures(monkeypatch):
    from realtime_batch.orchestrator import _sending

    monkeypatch.setattr(_sending, "_SEND_RETRY_FOR", 0.3)
    url = f"memory://retry-{uuid.uuid4().hex}"
    flaky = Flaky(url, failures=10**6)
    with rb.Session(flaky) as s:
        futures = [s.submit("x.py", i) for i in range(5)]
        for f in futures:
            with pytest.raises(ConnectionLostError):
                f.result(timeout=10)
    flaky.close()


def test_submit_waiting_for_room_fails_cleanly_when_the_session_closes(monkeypatch):
    import threading

    from realtime_batch.orchestrator import _sending
    from realtime_batch.orchestrator.session import SessionClosedError

    monkeypatch.setattr(_sending, "_OUTBOX_LIMIT", 2)
    monkeypatch.setattr(_sending.Sender, "_loop", lambda self: None)  # nothing drains
    monkeypatch.setattr(_sending, "_IDLE_GAP", float("inf"))  # no inline sends
    s = rb.Session(f"memory://room-{uuid.uuid4().hex}")
    first = [s.submit("x.py") for _ in range(2)]
    outcome = []

    def blocked_submit():
        try:
            s.submit("x.py")
        except SessionClosedError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=blocked_submit)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # blocked: the outbox is full
    s.close()
    waiter.join(5)
    assert len(outcome) == 1 and s.outstanding == 0
    assert all(f.cancelled() for f in first)
