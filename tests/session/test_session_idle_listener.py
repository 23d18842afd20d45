"""An idle session costs the broker a receive every ``IDLE_POLL``, not five a second (#21),
and still expires deadlines, warns and closes on time.

A broker runs in a thread of the test process (a ``Broker`` subclass that counts the
receives on the results queue); no engine: the tasks are never answered.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Iterator

import pytest
import zmq
from broker_in_thread import running, url_of

import realtime_batch as rb
from realtime_batch.orchestrator import _listening
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker


class _CountingBroker(Broker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.receives: collections.Counter[str] = collections.Counter()

    def _dispatch(self, request, identity, owner, now):
        if request.command == wire.RECEIVE:
            self.receives[str(request.args[0])] += 1
        elif request.command == wire.SETTLE_RECEIVE:
            self.receives[str(request.args[3])] += 1
        return super()._dispatch(request, identity, owner, now)


@pytest.fixture
def broker() -> Iterator[_CountingBroker]:
    with running(_CountingBroker("tcp://127.0.0.1:0", context=zmq.Context())) as serving:
        yield serving


_url = url_of


def _results_receives(broker: _CountingBroker) -> int:
    return sum(n for queue, n in broker.receives.items() if "result" in queue)


def test_an_idle_session_receives_once_per_idle_poll_not_every_poll(broker):
    with rb.Session(_url(broker)) as session:
        time.sleep(_listening.IDLE_AFTER + 0.5)  # idle long enough: the long wait starts
        before = _results_receives(broker)
        time.sleep(2.0)  # ten POLLs
        during = _results_receives(broker) - before
        assert session.outstanding == 0
    assert during <= 1, during  # ~10 before: one receive every POLL (0.2 s)


def test_a_submission_ends_the_long_wait_so_its_deadline_expires_on_time(broker):
    with rb.Session(_url(broker)) as session:
        time.sleep(_listening.IDLE_AFTER + 0.5)
        assert session._listener.waiting_long
        started = time.monotonic()
        future = session.submit("noop.py", deadline=time.time() + 0.2)  # no engine
        with pytest.raises(rb.TaskError) as info:
            future.result(timeout=_listening.IDLE_POLL * 3)
        took = time.monotonic() - started
    assert info.value.remote_type == "TaskExpiredError"
    # deadline + EXPIRY_SLACK (1 s) + a POLL, with room for a loaded machine; without the
    # nudge the expiry waited for the idle receive to end (IDLE_POLL, 10 s)
    assert took < _listening.IDLE_POLL / 2, took


def test_an_idle_session_closes_promptly(broker):
    session = rb.Session(_url(broker))
    time.sleep(_listening.IDLE_AFTER + 0.5)
    assert session._listener.waiting_long
    started = time.monotonic()
    session.close()
    took = time.monotonic() - started
    assert not session._listener._thread.is_alive()
    assert took < _listening.IDLE_POLL / 2, took  # not the idle receive's 10 s


def test_a_session_with_work_outstanding_keeps_polling(broker):
    with rb.Session(_url(broker)) as session:
        session.submit("noop.py")  # never answered: stays outstanding
        time.sleep(_listening.IDLE_AFTER + 0.5)
        before = _results_receives(broker)
        time.sleep(1.0)
        during = _results_receives(broker) - before
        assert not session._listener.waiting_long
    assert during >= 2, during  # it ticks (deadlines, the health warning)


def test_where_the_transport_cannot_wake_a_receive_the_session_never_waits_long():
    with rb.Session(f"memory://idle-{uuid.uuid4().hex}") as session:
        assert not session._transport.capabilities.wake
        time.sleep(_listening.IDLE_AFTER + 0.5)
        assert not session._listener.waiting_long
