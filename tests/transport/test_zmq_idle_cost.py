"""What an idle client costs the broker: heartbeats only when traffic says nothing, and
no busy-polling after requests that move no message (issue 21)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import pytest
import zmq
from broker_in_thread import running, url_of

from realtime_batch.transport import Message
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.client import ZmqTransport
from realtime_batch.transport.zeromq.heartbeat import REFRESH_BEATS, HeartbeatSchedule

INTERVAL = 1.0


# -- the schedule (pure: the clock is passed in) --------------------------------------------
def test_the_first_heartbeat_is_due_at_once():
    assert HeartbeatSchedule(INTERVAL).due(0.0, None)


def test_no_heartbeat_while_requests_go_and_replies_come():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    for now in (0.4, 0.8, 1.2, 1.6, 2.0):  # a receive answered every 0.4 s
        schedule.request_sent(now)
        schedule.reply_received(now + 0.01)
        assert not schedule.due(now + 0.02, None), now


def test_a_heartbeat_is_due_when_no_request_went_for_an_interval():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(1.4)  # e.g. a long receive answered: the broker heard nothing
    assert schedule.due(1.5, None)


def test_a_heartbeat_is_due_when_no_reply_came_for_an_interval():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(0.1)
    schedule.request_sent(1.4)  # sent, but the broker may be gone or restarted
    assert schedule.due(1.5, None)


def test_a_changed_report_goes_out_at_once():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, {"id": "e", "state": "idle"})
    schedule.request_sent(0.5)
    schedule.reply_received(0.5)
    assert not schedule.due(0.6, {"id": "e", "state": "idle"})
    assert schedule.due(0.6, {"id": "e", "state": "busy"})


def test_a_heartbeat_goes_out_every_refresh_whatever_the_traffic():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    last = REFRESH_BEATS * INTERVAL
    schedule.request_sent(last - 0.05)
    schedule.reply_received(last - 0.05)
    assert not schedule.due(last - 0.01, None)
    assert schedule.due(last, None)


@pytest.mark.parametrize(("interval", "refresh"), [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_bad_schedules_are_refused(interval, refresh):
    with pytest.raises(ValueError):
        HeartbeatSchedule(interval, refresh)


# -- the client and the broker --------------------------------------------------------------
class _CountingBroker(Broker):
    """A broker that counts the commands it handles, per command name."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands: collections.Counter[str] = collections.Counter()

    def _dispatch(self, request, identity, owner, now):
        self.commands[wire.COMMAND_NAMES[request.command]] += 1
        return super()._dispatch(request, identity, owner, now)


@pytest.fixture
def counting_broker() -> Iterator[_CountingBroker]:
    broker = _CountingBroker("tcp://127.0.0.1:0", heartbeat_interval=0.2, context=zmq.Context())
    with running(broker) as serving:
        yield serving


_url = url_of


def test_a_client_that_keeps_receiving_sends_almost_no_heartbeats_and_keeps_its_lease(
    counting_broker,
):
    """Its receives keep it alive at the broker: no lease is released although the
    client is far past ``liveness`` intervals without a heartbeat."""
    interval = 0.2
    with ZmqTransport(_url(counting_broker), heartbeat_interval=interval) as client:
        client.declare_queue("q")
        client.send("q", Message(b"held"))
        [held] = client.receive("q", timeout=5)
        before = counting_broker.commands["heartbeat"]
        intervals = 0.0
        started = time.monotonic()
        while intervals < 3 * 3:  # three times the broker's liveness (3 intervals)
            assert client.receive("q", timeout=0.05) == []
            intervals = (time.monotonic() - started) / interval
        beats = counting_broker.commands["heartbeat"] - before
        # Once per interval before this change; now only the refresh (every 10 intervals)
        # or a beat a slow receive let through.
        assert beats < intervals / 2, (beats, intervals)
        client.complete(held)  # still ours: the broker did not count the client gone


def test_a_quiet_client_still_heartbeats_every_interval(counting_broker):
    interval = 0.2
    with ZmqTransport(_url(counting_broker), heartbeat_interval=interval):
        time.sleep(interval / 2)
        before = counting_broker.commands["heartbeat"]
        started = time.monotonic()
        time.sleep(8 * interval)
        intervals = (time.monotonic() - started) / interval
        beats = counting_broker.commands["heartbeat"] - before
    assert beats >= intervals / 2, (beats, intervals)


# -- busy-polling only after traffic --------------------------------------------------------
def _request(command: int, *args) -> list[bytes]:
    return [b"\x01" + b"c" * 15 + b"\0\0\0\0", wire.encode_request(command, 1, *args)]


def test_requests_that_move_no_message_do_not_start_the_spin():
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context())
    try:
        broker._handle(_request(wire.DECLARE, "q", None, None, None))
        broker._moved = False
        broker._handle(_request(wire.HEARTBEAT, 1.0))
        broker._handle(_request(wire.RECEIVE, "q", 1, 0, None))  # nothing there
        broker._handle(_request(wire.RECEIVE, "q", 1, 5, None))  # parked
        assert broker._moved is False
        meta, body = wire.encode_message(Message(b"x"))
        broker._handle([*_request(wire.SEND, "q", 1), meta, body])
        assert broker._moved is True  # stored, and handed to the parked receive
    finally:
        broker.close()


def test_the_next_look_is_when_the_link_turns_quiet():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(0.0)
    schedule.request_sent(0.3)
    schedule.reply_received(0.35)
    assert schedule.next_check(0.5) == pytest.approx(1.3)  # quiet for an interval from 0.3
    schedule.request_sent(9.9)
    schedule.reply_received(9.9)
    assert schedule.next_check(9.95) == pytest.approx(REFRESH_BEATS * INTERVAL)


def test_a_silent_broker_gets_a_heartbeat_every_interval_and_is_seen_silent():
    schedule = HeartbeatSchedule(INTERVAL)
    schedule.beat_sent(0.0, None)
    schedule.reply_received(0.01)
    assert schedule.silent_for(0.5) == 0.0
    now, beats = 1.01, 0
    while now < 5.0:  # the broker never answers again
        if schedule.due(now, None):
            schedule.beat_sent(now, None)
            beats += 1
        now = schedule.next_check(now)
    assert beats == 4  # 1.01, 2.01, 3.01, 4.01: one per interval, not a busy loop
    assert schedule.silent_for(now) == pytest.approx(now - 1.01)


# -- parked receives end on the broker's timer tick -----------------------------------------
def test_parked_receives_end_together_on_the_timer_tick():
    """Waits ending within one tick are answered in one pass of the loop, at the tick."""
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context(), timer_tick=1.0)
    try:
        broker.store.declare("q", None)
        for number, timeout in enumerate((0.2, 0.7)):
            owner = b"\x01" + bytes([number]) * 15
            broker._receive(owner + b"\0\0\0\0", owner, 1, ["q", 1, timeout, None], 100.0)
        assert len(broker._parking) == 2
        broker._timers(100.5)  # the first wait ended at 100.2, but the tick is at 101
        assert len(broker._parking) == 2
        broker._timers(101.0)
        assert len(broker._parking) == 0
    finally:
        broker.close()


def test_a_timer_tick_must_be_positive():
    with pytest.raises(ValueError, match="timer_tick"):
        Broker("tcp://127.0.0.1:0", context=zmq.Context(), timer_tick=0)
