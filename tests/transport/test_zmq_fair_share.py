"""Receives on a shared queue take a fair share, not their whole prefetch (issue 21):
long tasks spread evenly over the engines. Counted, not timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq
from broker_in_thread import running, url_of

from realtime_batch.transport import Message
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.client import ZmqTransport
from realtime_batch.transport.zeromq.fairshare import FairShare


# -- the rule -------------------------------------------------------------------------------
def test_a_lone_consumer_takes_what_it_asks_for():
    assert FairShare().limit("q", "a", 16, 1000, now=0.0) == 16
    assert FairShare().limit("q", "a", 16, 3, now=0.0) == 16  # the store gives what is there


def test_consumers_share_what_waits():
    fair = FairShare()
    for owner in "abcd":
        fair.limit("q", owner, 16, 0, now=0.0)
    assert fair.consumers("q") == 4
    assert fair.limit("q", "a", 16, 1000, now=0.1) == 16  # much waiting: the prefetch
    assert fair.limit("q", "a", 16, 20, now=0.1) == 5  # ceil(20 / 4)
    assert fair.limit("q", "b", 16, 2, now=0.1) == 1  # the tail: one at a time
    assert fair.limit("q", "c", 16, 0, now=0.1) == 1


def test_queues_are_counted_apart_and_quiet_consumers_drop_out():
    fair = FairShare(window=5.0)
    fair.limit("q", "a", 16, 0, now=0.0)
    fair.limit("q", "b", 16, 0, now=0.0)
    fair.limit("other", "c", 16, 0, now=0.0)
    assert fair.consumers("q") == 2
    assert fair.limit("q", "a", 16, 32, now=6.0) == 16  # b silent for 6 s: a is alone
    assert fair.consumers("q") == 1
    fair.forget("a")
    assert fair.consumers("q") == 0


def test_a_consumer_with_a_receive_waiting_counts_however_long_ago_it_asked():
    waiting = {("q", "b")}
    fair = FairShare(window=5.0, waiting=lambda queue, owner: (queue, owner) in waiting)
    for owner in "abc":
        fair.limit("q", owner, 16, 0, now=0.0)
    assert fair.limit("q", "a", 16, 32, now=60.0) == 16  # c dropped out, b did not
    assert fair.consumers("q") == 2


def test_idle_engines_waiting_longer_than_the_window_share_a_burst(monkeypatch):
    """Idle engines' receives wait far longer than ``CONSUMER_WINDOW`` (issue 21):
    a burst that comes after a long quiet spell is still spread over all of them."""
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context())
    granted: dict[bytes, int] = {}

    def send(frames, *_):
        granted[bytes(frames[0])[:16]] = (len(frames) - 2) // 2
        return True

    monkeypatch.setattr(broker, "_send", send)
    try:
        broker.store.declare("q")
        owners = [bytes([1, n]) * 8 for n in range(4)]
        for owner in owners:
            broker._receive(owner + bytes(4), owner, 1, ["q", 16, 60.0, None], 100.0)
        broker.store.put("q", [Message(b"task")] * 8, 130.0)  # 30 s later
        broker._serve_ready(130.0)
        # ceil(waiting / 4) each, not all 8 to the first (it alone counted before)
        assert [granted[owner] for owner in owners] == [2, 2, 1, 1]
    finally:
        broker.close()


def test_a_bad_window_is_refused():
    with pytest.raises(ValueError, match="window"):
        FairShare(window=0)


# -- at the broker --------------------------------------------------------------------------
@pytest.fixture
def broker() -> Iterator[Broker]:
    with running(Broker("tcp://127.0.0.1:0", context=zmq.Context())) as serving:
        yield serving


_url = url_of


def test_receives_on_a_shared_queue_take_a_fair_share(broker):
    broker_url = _url(broker)
    clients = [ZmqTransport(broker_url) for _ in range(4)]
    try:
        clients[0].declare_queue("tasks")
        for client in clients:  # each asks once: the broker knows four consumers
            assert client.receive("tasks", max_messages=16, timeout=0) == []
        clients[0].send("tasks", [Message(str(i).encode()) for i in range(20)])
        taken = [len(c.receive("tasks", max_messages=16, timeout=0)) for c in clients]
    finally:
        for client in clients:
            client.close()
    assert taken == [5, 4, 3, 2]  # ceil(waiting / 4) each; the prefetch would give 16, 4, 0, 0


def test_parked_receives_share_a_batch_that_arrives(broker):
    broker_url = _url(broker)
    clients = [ZmqTransport(broker_url) for _ in range(4)]
    clients[0].declare_queue("tasks")
    for client in clients:
        assert client.receive("tasks", max_messages=16, timeout=0) == []
    taken: dict[int, int] = {}

    def wait(index: int) -> None:
        taken[index] = len(clients[index].receive("tasks", max_messages=16, timeout=10))

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(broker._parking) < 4 and time.monotonic() < deadline:  # all four parked
            time.sleep(0.01)
        sender = ZmqTransport(broker_url)
        try:
            sender.send("tasks", [Message(str(i).encode()) for i in range(20)])
        finally:
            sender.close()
        for thread in threads:
            thread.join(15)
    finally:
        for client in clients:
            client.close()
    assert sorted(taken.values(), reverse=True) == [5, 4, 3, 2]
