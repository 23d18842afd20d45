"""The broker busy-polls after a turn only when someone it answered usually speaks again
within the spin (issue 21: sequential long tasks paid a wasted spin at every step)."""

from __future__ import annotations

import time

import pytest
import zmq

from realtime_batch.transport import Message
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import OWNER_ID_LENGTH, Broker
from realtime_batch.transport.zeromq.spin import GAP_WEIGHT, ReplyGaps

SPIN = 0.05  # long, so that "quick" needs no fast machine
SLOW = 0.12  # well past the spin

WORKER = b"\x01" + b"w" * (OWNER_ID_LENGTH - 1) + b"\0\0\0\1"
CLIENT = b"\x01" + b"c" * (OWNER_ID_LENGTH - 1) + b"\0\0\0\1"
CLIENT_HEARTBEATS = b"\x01" + b"c" * (OWNER_ID_LENGTH - 1) + b"\0\0\0\2"


# -- the estimate (pure: the clock is passed in) ----------------------------------------------
def test_a_connection_not_seen_yet_counts_as_quick():
    gaps = ReplyGaps(SPIN, OWNER_ID_LENGTH)
    assert gaps.answered(WORKER, 0.0, True)
    assert gaps.estimate(WORKER, True) is None


def test_the_estimate_follows_the_gaps_after_each_kind_of_answer():
    gaps = ReplyGaps(SPIN, OWNER_ID_LENGTH)
    gaps.answered(CLIENT, 0.0, True)  # a result delivered: settled at once
    gaps.spoke(CLIENT, 0.001)
    gaps.answered(CLIENT, 1.0, False)  # its send acknowledged: silent until the next result
    gaps.spoke(CLIENT, 2.0)
    assert gaps.estimate(CLIENT, True) == pytest.approx(0.001)
    assert gaps.estimate(CLIENT, False) == pytest.approx(1.0)
    assert gaps.answered(CLIENT, 3.0, True)
    gaps.spoke(CLIENT, 3.0)
    assert not gaps.answered(CLIENT, 4.0, False)
    gaps.spoke(CLIENT, 4.5)
    assert gaps.estimate(CLIENT, False) == pytest.approx(1.0 + (0.5 - 1.0) * GAP_WEIGHT)


def test_a_connection_that_turns_slow_stops_counting_as_quick_and_back():
    gaps = ReplyGaps(SPIN, OWNER_ID_LENGTH)
    now = 0.0
    for _ in range(3):  # 10 ms tasks after no-op ones
        expected = (gaps.estimate(WORKER, True) or 0.0) < SPIN
        assert gaps.answered(WORKER, now, True) is expected
        now += 0.2
        gaps.spoke(WORKER, now)
    assert not gaps.answered(WORKER, now, True)
    for _ in range(20):  # quick again: the estimate comes down within a few answers
        gaps.spoke(WORKER, now + 0.0001)
        now += 0.001
        if gaps.answered(WORKER, now, True):
            break
    else:
        pytest.fail("a connection that answers quickly again never counted as quick")


def test_a_request_nobody_answered_before_leaves_the_estimate_alone():
    gaps = ReplyGaps(SPIN, OWNER_ID_LENGTH)
    gaps.spoke(WORKER, 5.0)  # its first request
    gaps.answered(WORKER, 6.0, True)
    gaps.spoke(WORKER, 6.01)
    gaps.spoke(WORKER, 60.0)  # a second request before any answer: not a gap
    assert gaps.estimate(WORKER, True) == pytest.approx(0.01)


def test_a_client_that_goes_is_forgotten_with_all_its_connections():
    gaps = ReplyGaps(SPIN, OWNER_ID_LENGTH)
    for identity in (CLIENT, CLIENT_HEARTBEATS, WORKER):
        gaps.answered(identity, 0.0, False)
        gaps.spoke(identity, 0.1)
        gaps.answered(identity, 0.2, True)
    assert len(gaps) == 3
    gaps.forget(CLIENT[:OWNER_ID_LENGTH])
    assert len(gaps) == 1
    assert gaps.estimate(CLIENT, False) is None
    assert gaps.estimate(WORKER, False) == pytest.approx(0.1)


# -- in the broker ------------------------------------------------------------------------------
def _request(identity: bytes, command: int, *args) -> list[bytes]:
    return [identity, wire.encode_request(command, 1, *args)]


def _send(identity: bytes) -> list[bytes]:
    meta, body = wire.encode_message(Message(b"task"))
    return [*_request(identity, wire.SEND, "q", 1), meta, body]


def _turn(broker: Broker, frames: list[bytes]) -> bool:
    """Handle one request as the loop does; True if the loop would spin after it."""
    broker._moved = broker._quick = False
    broker._handle(frames)
    return broker._moved and broker._quick


@pytest.fixture
def broker(monkeypatch):
    sent: list[list] = []
    # the identities are not connected: record what would go out instead
    monkeypatch.setattr(wire, "send_frames", lambda _sock, frames, _flags=0: sent.append(frames))
    made = Broker("tcp://127.0.0.1:0", spin=SPIN, context=zmq.Context())
    made.spin = made._gaps.spin = SPIN  # also on a single CPU, where the broker turns it off
    made._handle(_request(CLIENT, wire.DECLARE, "q", None, None, None))
    made.sent = sent
    yield made
    made.close()


def test_the_broker_spins_after_handing_a_task_to_a_worker_that_answers_quickly(broker):
    for _ in range(3):
        _turn(broker, _request(WORKER, wire.RECEIVE, "q", 1, 5, None))  # parked
        assert _turn(broker, _send(CLIENT))  # handed to the parked worker
    assert broker._gaps.estimate(WORKER, True) < SPIN


def test_the_broker_sleeps_after_a_turn_that_answered_only_slow_connections(broker):
    spins = []
    for _ in range(4):
        _turn(broker, _request(WORKER, wire.RECEIVE, "q", 1, 5, None))  # parked
        time.sleep(SLOW)  # the client sends its next task long after the last ack
        spins.append(_turn(broker, _send(CLIENT)))  # delivered to the worker
        time.sleep(SLOW)  # the worker's task runs long
    assert broker._gaps.estimate(WORKER, True) > SPIN
    assert broker._gaps.estimate(CLIENT, False) > SPIN
    assert spins[0] is True  # not known yet: spin, as before
    assert spins[-1] is False, spins
    assert broker.sent  # every turn still answered


def test_connections_under_ever_new_routing_ids_do_not_grow_the_broker_memory():
    gaps = ReplyGaps(SPIN, OWNER_ID_LENGTH, limit=50)
    owner = WORKER[:OWNER_ID_LENGTH]
    for n in range(1000):  # one client, reconnecting under a new routing id each time
        identity = owner + n.to_bytes(4, "big")
        gaps.answered(identity, float(n), True)
        gaps.spoke(identity, n + 0.5)
        assert len(gaps) <= 50
    # a connection seen after the reset is measured again from scratch
    gaps.answered(WORKER, 2000.0, True)
    gaps.spoke(WORKER, 2000.001)
    assert gaps.estimate(WORKER, True) == pytest.approx(0.001)
