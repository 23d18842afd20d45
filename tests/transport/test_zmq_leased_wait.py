"""A long parked receive does not keep a client that holds leases alive for long
(issue 21): idle receives wait tens of seconds at the broker, yet the leases of a
killed or silent engine come back as soon as they did when idle receives waited 5 s.

The broker ends a lease holder's long parked receive after ``leased_wait`` (its
client sends it again: a sign of life), so a client that cannot answer is counted
gone within ``leased_wait`` plus the heartbeat liveness time, whatever the wait it
asked for. The client's ``receive`` still returns empty only when its own timeout
ends (it sends the rest of the wait again), or when woken.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq
from broker_in_thread import running, url_of

from realtime_batch.transport import Message, QueueCounts
from realtime_batch.transport.store import QueueStore
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.client import ZmqTransport

#: the wait a client parks with: far longer than any bound below
LONG_WAIT = 600.0
#: seconds: functional, several times the bound with default settings (the leased wait,
#: 5 s, plus the liveness time, 3 s, plus timer ticks); without the rule it is LONG_WAIT
RECOVERY_BOUND = 45.0

_HOLDER = """
import sys
from realtime_batch.transport.zeromq.client import ZmqTransport
client = ZmqTransport(sys.argv[1])
[held] = client.receive("work", timeout=30)
print("HELD", flush=True)
client.receive("idle", timeout=float(sys.argv[2]))  # parked: the lease still held
"""


# -- who holds leases (the store's count per owner) -----------------------------------------
def test_the_store_knows_who_holds_leases_whichever_way_they_end():
    store = QueueStore()
    store.declare("q")
    store.put("q", [Message(b"%d" % i) for i in range(5)], 0.0)
    first = store.take("q", max_messages=2, now=0.0, owner="a")
    assert store.holds_leases("a") and not store.holds_leases("b")
    assert not store.holds_leases(None)  # leases taken without an owner are not counted
    store.take("q", max_messages=1, now=0.0)
    store.complete(first[0].token, 1.0)
    assert store.holds_leases("a")  # one of two left
    store.abandon(first[1].token, 1.0)
    assert not store.holds_leases("a")
    [renewed] = store.take("q", max_messages=1, now=1.0, owner="a")
    store.dead_letter(renewed.token, "r", "", 2.0)
    assert not store.holds_leases("a")
    store.take("q", max_messages=1, now=2.0, owner="a")
    assert store.release_owner("a", 3.0) == 1 and not store.holds_leases("a")
    assert store.release_owner("a", 3.0) == 0
    store.take("q", max_messages=1, now=3.0, owner="a")
    store.expire(10_000.0)  # the lease ran out
    assert not store.holds_leases("a")


# -- the broker's rule (its timers driven with an explicit clock) ---------------------------
def _owner(number: int) -> bytes:
    return b"\x01" + bytes([number]) * 15


def _parked_deadlines(broker: Broker, owner: bytes) -> list[float | None]:
    return sorted((w.deadline for w in broker._parking._by_owner.get(owner, ())), key=str)


@pytest.fixture
def clocked_broker(monkeypatch):
    """A broker that is not running: its rules are driven with an explicit clock, and
    every answer counts as delivered."""
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context(), leased_wait=3.0)
    sent: list[list[object]] = []
    monkeypatch.setattr(broker, "_send", lambda frames, *_: sent.append(frames) or True)
    broker.store.declare("q")
    broker.store.declare("idle")
    broker.sent = sent
    try:
        yield broker
    finally:
        broker.close()


def _park(broker: Broker, owner: bytes, socket: int, queue: str, wait, now: float) -> None:
    identity = owner + socket.to_bytes(4, "big")
    broker._last_seen[owner] = now
    assert broker._receive(identity, owner, socket, [queue, 1, wait, None], now) is None


def test_a_lease_holders_long_receive_waits_leased_wait_and_an_idle_clients_all_of_it(
    clocked_broker,
):
    broker = clocked_broker
    holder, idle = _owner(1), _owner(2)
    broker.store.put("q", [Message(b"task")], 100.0)
    assert broker.store.take("q", max_messages=1, now=100.0, owner=holder)
    _park(broker, holder, 0, "idle", 60.0, 100.0)
    _park(broker, idle, 0, "idle", 60.0, 100.0)
    assert _parked_deadlines(broker, holder) == [103.0]
    assert _parked_deadlines(broker, idle) == [160.0]
    # waits shorter than leased_wait, and waits without a timeout, are left as they are
    other = _owner(3)
    broker.store.put("q", [Message(b"task")], 100.0)
    assert broker.store.take("q", max_messages=1, now=100.0, owner=other)
    _park(broker, other, 0, "idle", 2.0, 100.0)
    _park(broker, other, 1, "idle", None, 100.0)
    assert set(_parked_deadlines(broker, other)) == {102.0, None}
    # by 103 the lease holder's wait ended (answered empty) and the 2 s one; not the idle one
    broker._timers(103.1)
    assert [frames[0] for frames in broker.sent] == [other + bytes(4), holder + bytes(4)]
    assert _parked_deadlines(broker, idle) == [160.0]


def test_a_client_granted_a_lease_has_its_other_long_waits_cut_to_leased_wait(clocked_broker):
    """E.g. an engine in relay mode: its control receive parks long while it idles,
    then its task receive (another socket of the same client) is granted a task."""
    broker = clocked_broker
    owner = _owner(4)
    _park(broker, owner, 0, "idle", 60.0, 100.0)
    _park(broker, owner, 1, "q", 60.0, 100.0)
    assert _parked_deadlines(broker, owner) == [160.0, 160.0]
    broker.store.put("q", [Message(b"task")], 110.0)
    broker._serve_ready(110.0)  # the task receive is answered with the task
    assert broker.store.holds_leases(owner)
    assert _parked_deadlines(broker, owner) == [113.0]  # the control receive's wait
    broker._timers(112.9)
    assert len(broker.sent) == 1  # only the task's grant so far
    broker._timers(113.0)
    assert len(broker.sent) == 2 and _parked_deadlines(broker, owner) == []


def test_grants_that_cannot_be_delivered_cut_no_wait(clocked_broker, monkeypatch):
    broker = clocked_broker
    monkeypatch.setattr(broker, "_send", lambda frames, *_: False)  # the client is gone
    owner = _owner(5)
    _park(broker, owner, 0, "idle", 60.0, 100.0)
    _park(broker, owner, 1, "q", 60.0, 100.0)
    broker.store.put("q", [Message(b"task")], 110.0)
    broker._serve_ready(110.0)
    assert not broker.store.holds_leases(owner)  # given back at once
    assert _parked_deadlines(broker, owner) == [160.0]


def test_leased_wait_must_be_positive():
    with pytest.raises(ValueError, match="leased_wait"):
        Broker("tcp://127.0.0.1:0", context=zmq.Context(), leased_wait=0)


@pytest.fixture
def broker():
    with running(Broker("tcp://127.0.0.1:0", context=zmq.Context())) as broker:
        yield broker


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_lease_holder_with_a_long_parked_receive_loses_its_lease_when_it_goes(
    broker, no_leaked_processes, how
):
    """SIGKILL (its answer cannot be delivered) or SIGSTOP (its connection stays up,
    the answer is queued, no request follows): either way the lease comes back."""
    url = url_of(broker)
    with ZmqTransport(url) as observer:
        observer.declare_queue("work", lock_duration=3600)  # the lease never just expires
        observer.declare_queue("idle")
        observer.send("work", Message(b"task"))
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, url, str(LONG_WAIT)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "HELD"
            time.sleep(1.0)  # its receive is parked
            os.kill(proc.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            [again] = observer.receive("work", timeout=RECOVERY_BOUND)
            assert again.message.body == b"task" and again.delivery_count == 2
        finally:
            if proc.poll() is None:
                proc.kill()
                os.kill(proc.pid, signal.SIGCONT)
            proc.wait(20)
            proc.stdout.close()


# -- the client: a receive cut short by the broker goes on for the rest of its timeout ------
@pytest.fixture
def quick_broker():
    """A broker whose lease holders' waits end after 1 s."""
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context(), leased_wait=1.0)
    with running(broker) as serving:
        yield serving


def _holding(client: ZmqTransport, count: int = 1) -> list[object]:
    client.declare_queue("q")
    client.declare_queue("idle")
    client.send("q", [Message(b"%d" % i) for i in range(count)])
    held = client.receive("q", max_messages=count, timeout=10)
    assert len(held) == count
    return held


def test_a_lease_holders_receive_returns_empty_only_at_its_own_timeout(quick_broker):
    with ZmqTransport(url_of(quick_broker)) as client:
        _holding(client)
        asked = quick_broker.requests_handled
        started = time.monotonic()
        assert client.receive("idle", timeout=3.5) == []
        assert time.monotonic() - started >= 3.4  # not when the broker cut it short
        assert quick_broker.requests_handled - asked >= 3  # sent again after each cut


def test_a_lease_holders_receive_gets_what_arrives_after_its_wait_was_cut(quick_broker):
    with ZmqTransport(url_of(quick_broker)) as client:
        _holding(client)
        later = threading.Timer(2.5, client.send, ("idle", Message(b"later")))
        later.start()
        try:
            [got] = client.receive("idle", timeout=60)
        finally:
            later.join()
        assert got.message.body == b"later"


def test_settle_and_receive_goes_on_after_the_settle_when_cut(quick_broker):
    with ZmqTransport(url_of(quick_broker)) as client:
        first, _second = _holding(client, 2)  # the second is still held after the settle
        started = time.monotonic()
        received, lost = client.settle_and_receive("q", [], [first], "idle", timeout=2.5)
        assert received == [] and lost == []
        assert time.monotonic() - started >= 2.4
        assert client.queue_counts("q") == QueueCounts(0, 1)  # settled; the second still leased


def test_a_wake_ends_a_lease_holders_receive_although_it_is_sent_again(quick_broker):
    with ZmqTransport(url_of(quick_broker)) as client:
        _holding(client)
        got: list[object] = []
        waiting = threading.Thread(target=lambda: got.append(client.receive("idle", timeout=120)))
        waiting.start()
        time.sleep(2.5)  # cut and sent again at least once
        client.wake()
        waiting.join(30)  # far less than its 120 s
        assert not waiting.is_alive() and got == [[]]
