"""A receive parked at the broker shows its client alive (issue 21): an idle client
with one needs no heartbeat, a killed one still loses its leases, and ``wake`` ends
a client's parked receives at once."""

from __future__ import annotations

import threading
import time

import pytest
import test_zmq_idle_cost
import zmq

from realtime_batch.transport import Message
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.client import ZmqTransport
from realtime_batch.transport.zeromq.heartbeat import REFRESH_BEATS, HeartbeatSchedule

INTERVAL = 1.0
#: a broker on a thread, heartbeat interval 0.2 s (shared with the idle-cost tests)
counting_broker = test_zmq_idle_cost.counting_broker
_url = test_zmq_idle_cost._url


# -- the schedule (pure: the clock is passed in) --------------------------------------------
def test_no_heartbeat_is_due_while_a_long_receive_is_parked():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(0.0)
    schedule.request_sent(0.1)
    schedule.parked = 1
    for now in (1.5, 5.0, REFRESH_BEATS * INTERVAL + 1):  # quiet, and past the refresh
        assert not schedule.due(now, None), now
    schedule.parked = 0
    assert schedule.due(1.5, None)  # the same quiet link without a parked receive


def test_a_dropped_connection_or_a_changed_report_makes_a_heartbeat_due_while_parked():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, {"id": "e", "state": "idle"})
    schedule.reply_received(0.0)
    schedule.parked = 1
    assert not schedule.due(2.0, {"id": "e", "state": "idle"})
    assert schedule.due(2.0, {"id": "e", "state": "busy"})
    schedule.probe = True  # the heartbeat socket saw the broker disconnect
    assert schedule.due(2.0, {"id": "e", "state": "idle"})
    schedule.beat_sent(2.0, {"id": "e", "state": "idle"})
    assert not schedule.due(2.1, {"id": "e", "state": "idle"})


def test_a_parked_client_looks_at_its_heartbeats_once_an_interval_not_every_millisecond():
    """While a receive is parked nothing falls due by time alone: the heartbeat thread
    sleeps an interval per look (it used to look every millisecond, ~3 % of a core per
    idle engine and as much per idle worker)."""
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(0.0)
    schedule.request_sent(0.1)
    schedule.parked = 1
    now, looks = 0.2, 0
    while now < 20.0:
        assert not schedule.due(now, None)
        now = schedule.next_check(now)
        looks += 1
    assert looks <= 20  # one look per interval at most
    schedule.parked = 0
    assert schedule.due(now, None)  # the receive ended on a quiet link: a beat at once


def test_an_unanswered_heartbeat_is_sent_again_each_interval_while_parked():
    """A probe sent while the broker was down is lost with it: the next beats must
    follow, or a restarted broker is never noticed and the parked receive it never
    got waits out its whole timeout (seen as a flaky broker-restart test)."""
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(0.0)
    schedule.parked = 1
    schedule.probe = True  # the broker's connection dropped
    assert schedule.due(0.5, None)
    schedule.beat_sent(0.5, None)  # lost: the broker is down
    assert not schedule.due(1.0, None)
    assert schedule.next_check(1.0) == pytest.approx(1.5)
    assert schedule.due(1.5, None)
    schedule.beat_sent(1.5, None)
    schedule.reply_received(1.6)  # the restarted broker answers (with its epoch)
    assert not schedule.due(5.0, None)


# -- the broker's rule (its timers driven with an explicit clock) ---------------------------
def _owner(number: int) -> bytes:
    return b"\x01" + bytes([number]) * 15


def _lease(broker: Broker, owner: bytes, now: float) -> None:
    broker.store.put("q", [Message(b"task")], now)
    [grant] = broker.store.take("q", max_messages=1, now=now, owner=owner)
    assert grant is not None
    broker._last_seen[owner] = now


def test_a_parked_receive_keeps_its_client_alive_and_a_silent_client_loses_its_lease():
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context(), heartbeat_interval=1.0)
    try:
        broker.store.declare("q", None)
        broker.store.declare("idle", None)
        parked, silent = _owner(1), _owner(2)
        _lease(broker, parked, 100.0)
        _lease(broker, silent, 100.0)
        broker._receive(parked + b"\0\0\0\0", parked, 7, ["idle", 1, 60.0, None], 100.0)
        broker._check_owners(110.0)  # ten intervals without a word from either
        assert broker.store.counts("q") == (1, 1)  # the silent one's lease came back
        assert parked in broker._last_seen and silent not in broker._last_seen
        # A receive without a timeout is never answered, so it tells nothing: no credit.
        broker._receive(silent + b"\0\0\0\0", silent, 8, ["idle", 1, None, None], 110.0)
        broker._last_seen[silent] = 110.0
        broker._check_owners(120.0)
        assert silent not in broker._last_seen
    finally:
        broker.close()


def test_a_killed_client_with_a_parked_receive_still_loses_its_lease(counting_broker):
    """Its parked receive is answered when its wait ends; the answer cannot be
    delivered, the client earns no more time, and its lease is released."""
    with ZmqTransport(_url(counting_broker), heartbeat_interval=0.2) as observer:
        observer.declare_queue("q")
        observer.declare_queue("idle")
        observer.send("q", Message(b"task"))
        context = zmq.Context()
        dead = context.socket(zmq.DEALER)
        dead.setsockopt(zmq.ROUTING_ID, _owner(9) + b"\0\0\0\0")
        dead.connect(counting_broker.endpoint)
        dead.send(wire.encode_request(wire.HEARTBEAT, 0, 0.2))
        dead.send(wire.encode_request(wire.RECEIVE, 1, "q", 1, 0, None))
        assert dead.poll(10_000) and dead.recv_multipart()  # the heartbeat's answer
        assert dead.poll(10_000)
        assert wire.decode_reply_header(dead.recv_multipart()[0])[2] == 1  # the lease
        dead.send(wire.encode_request(wire.RECEIVE, 2, "idle", 1, 1.0, None))
        time.sleep(0.2)  # parked
        dead.close(linger=0)  # killed: no goodbye
        context.term()
        [again] = observer.receive("q", timeout=30)  # released, so delivered again
        assert again.message.body == b"task" and again.delivery_count == 2


def test_wake_ends_the_clients_parked_receives_at_once(counting_broker):
    with ZmqTransport(_url(counting_broker), heartbeat_interval=0.2) as client:
        client.declare_queue("idle")
        got: list[object] = []
        waiting = threading.Thread(target=lambda: got.append(client.receive("idle", timeout=120)))
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive()
        client.wake()
        waiting.join(30)  # far less than the receive's own 120 s
        assert not waiting.is_alive()
        assert got == [[]]
        client.send("idle", Message(b"later"))  # the client goes on as before
        [later] = client.receive("idle", timeout=10)
        assert later.message.body == b"later"


def test_a_wake_sent_before_the_receive_parked_still_ends_it(counting_broker):
    """``wake`` raced ahead of the receive it was meant for: the waiting receive
    repeats it on its own socket."""
    with ZmqTransport(_url(counting_broker), heartbeat_interval=0.2) as client:
        client.declare_queue("idle")
        started = threading.Event()
        got: list[object] = []

        def receive() -> None:
            started.set()
            got.append(client.receive("idle", timeout=120))

        thread = threading.Thread(target=receive)
        thread.start()
        assert started.wait(10)
        time.sleep(0.3)  # parked
        client._wakes += 1  # the wake's own WAKE request was lost in the race
        thread.join(30)
        assert not thread.is_alive() and got == [[]]


def test_a_parked_client_sends_no_heartbeat_yet_keeps_its_lease(counting_broker):
    interval = 0.2
    with ZmqTransport(_url(counting_broker), heartbeat_interval=interval) as client:
        client.declare_queue("q")
        client.declare_queue("idle")
        client.send("q", Message(b"held"))
        [held] = client.receive("q", timeout=5)
        beats_before = client._schedule.last_beat
        assert client.receive("idle", timeout=10 * interval) == []  # 3x past liveness
        assert client._schedule.last_beat == beats_before  # no heartbeat went meanwhile
        client.complete(held)  # still ours: the broker did not count the client gone


def test_an_idle_engine_that_sends_no_report_while_parked_stays_in_the_engine_table():
    """Its report does not change, so no heartbeat carries it while its receives wait;
    the receives it sends again show it there: ``last_seen`` follows them (it used to
    stay at the last report, and the engine left the table after ENGINE_GONE_AFTER)."""
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context())
    try:
        broker.store.declare("idle")
        owner = _owner(3)
        report = {"id": "engine-1", "state": "idle", "task": None, "done": 0}
        beat = wire.Request(wire.HEARTBEAT, 1, [1.0, report])
        broker._dispatch(beat, owner + bytes(4), owner, 100.0)
        broker._last_seen[owner] = 970.0  # its last receive, sent again (no report since)
        [engine] = broker.stats(now=1000.0).engines
        assert engine.id == "engine-1" and engine.last_seen == 970.0
        assert engine.state == "idle"
    finally:
        broker.close()
