"""One client cannot stall, slow down or fill up the ZeroMQ broker (issue 15)."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import test_zmq_broker
import zmq

from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker

raw_dealer = test_zmq_broker.raw_dealer  # the fixture, shared


def request(sock: zmq.Socket, command: int, rid: int, *args) -> list:
    """Send one request and return its decoded reply header (10 s at most)."""
    sock.send(wire.encode_request(command, rid, *args))
    assert sock.poll(10_000), f"no answer to {wire.COMMAND_NAMES[command]} within 10 s"
    return orjson.loads(sock.recv_multipart()[0])


def answers_a_heartbeat_within_10_s(sock: zmq.Socket, rid: int) -> bool:
    sock.send(wire.encode_request(wire.HEARTBEAT, rid, 1.0))
    if not sock.poll(10_000):
        return False
    return orjson.loads(sock.recv_multipart()[0])[:2] == [rid, wire.OK]


# -- parked receives ---------------------------------------------------------------------------
@pytest.mark.parametrize("cap", [None, 200_000], ids=["default-cap", "raised-cap"])
def test_heartbeat_is_answered_while_many_receives_expire_in_reverse_order(
    zmq_broker_factory, raw_dealer, cap
):
    """150,000 long polls whose timeouts end in the reverse of their arrival order.

    With the default cap most are refused at once; with a raised cap all are parked
    and expire together, which took the old broker seconds of ``deque.remove`` scans.
    """
    extra = () if cap is None else ("--max-parked-receives", str(cap))
    broker = zmq_broker_factory(*extra)
    control = raw_dealer(broker.url)
    assert request(control, wire.DECLARE, 1, "q", 30.0, 10)[:2] == [1, wire.OK]
    flood = raw_dealer(broker.url)
    count = 150_000
    for i in range(count):  # deadline = arrival + 5 s - i * 30 µs: the last parked ends first
        flood.send(wire.encode_request(wire.RECEIVE, i + 1, "q", 1, 5.0 - i * 30e-6, None))
    # Probe while the timeouts end (all within ~10 s of the sends); drain the answers.
    probe_until = time.monotonic() + 12.0
    probe = 100
    while time.monotonic() < probe_until:
        while flood.poll(0):
            flood.recv_multipart()
        probe += 1
        assert answers_a_heartbeat_within_10_s(control, probe)
        time.sleep(0.1)


def test_parked_receives_per_client_are_capped_with_a_clear_error(zmq_broker_factory, raw_dealer):
    broker = zmq_broker_factory("--max-parked-receives", "50")
    sock = raw_dealer(broker.url)
    assert request(sock, wire.DECLARE, 1, "q", 30.0, 10)[:2] == [1, wire.OK]
    for i in range(50):
        sock.send(wire.encode_request(wire.RECEIVE, 10 + i, "q", 1, 30.0, f"g{i}"))
    refused = request(sock, wire.RECEIVE, 99, "q", 1, 30.0, "one-too-many")
    assert refused[:2] == [99, wire.ERR_BAD_REQUEST]
    assert "parked receives" in refused[2] and "50" in refused[2]
    other = raw_dealer(broker.url)  # another client still parks and is served
    other.send(wire.encode_request(wire.RECEIVE, 5, "q", 1, 30.0, "mine"))
    frames = [wire.encode_request(wire.SEND, 6, "q", 1), *wire.encode_message(_msg("mine"))]
    other.send_multipart(frames)
    got = {}
    for _ in range(2):
        assert other.poll(10_000)
        reply = other.recv_multipart()
        got[orjson.loads(reply[0])[0]] = reply
    assert orjson.loads(got[5][0])[:3] == [5, wire.OK, 1] and got[5][2] == b"for mine"


def _msg(group: str):
    from realtime_batch.transport import Message

    return Message(b"for " + group.encode(), group=group)


class _CountingStore:
    """Wraps a store's ``take`` to count calls."""

    def __init__(self, broker: Broker) -> None:
        self.calls = 0
        take = broker.store.take

        def counted(*args, **kwargs):
            self.calls += 1
            return take(*args, **kwargs)

        broker.store.take = counted  # type: ignore[method-assign]


def test_a_message_is_matched_to_its_group_without_scanning_other_parked_receives():
    """20,000 receives parked on unused groups: serving one message looks at its group only."""
    broker = Broker("tcp://127.0.0.1:0")
    sent: list[list] = []
    broker._send = lambda frames, *_: sent.append(frames) or True  # no peers: record the replies
    try:
        broker._handle([b"c", wire.encode_request(wire.DECLARE, 1, "results", 30.0, 10)])
        for i in range(20_000):
            owner = b"idle-%05d" % i
            request = wire.encode_request(wire.RECEIVE, 1, "results", 1, 60.0, f"idle-{i}")
            broker._handle([owner, request])
        target = wire.encode_request(wire.RECEIVE, 2, "results", 1, 60.0, "target")
        broker._handle([b"target", target])
        sent.clear()
        counter = _CountingStore(broker)
        message = wire.encode_message(_msg("target"))
        broker._handle([b"sender", wire.encode_request(wire.SEND, 3, "results", 1), *message])
        assert counter.calls <= 2
        assert [frames[0] for frames in sent] == [b"target", b"sender"]
    finally:
        broker.close()


# -- bounded memory ----------------------------------------------------------------------------
def test_sends_past_the_brokers_byte_limit_get_queue_full_until_room_is_made(zmq_broker_factory):
    from realtime_batch.transport import Message, QueueFullError, open_transport

    broker = zmq_broker_factory("--max-queued-bytes", "20000")
    with open_transport(broker.url, send_timeout=0.5) as t:
        t.declare_queue("a")
        t.declare_queue("b")
        t.send("a", [Message(b"x" * 1000) for _ in range(10)])
        with pytest.raises(QueueFullError, match="20000"):
            t.send("b", [Message(b"y" * 1000) for _ in range(10)])  # the limit is broker-wide
        leased = t.receive("a", max_messages=10, timeout=5)
        t.complete_many(leased)
        t.send("b", [Message(b"y" * 1000) for _ in range(10)])
        assert len(t.receive("b", max_messages=10, timeout=5)) == 10


def test_a_send_to_a_full_queue_waits_for_room(zmq_broker_factory):
    """Flow control: the send blocks (retrying) and goes through once a consumer makes room."""
    from realtime_batch.transport import Message, open_transport

    broker = zmq_broker_factory()
    with open_transport(broker.url, send_timeout=30) as producer:
        producer.declare_queue("q", max_length=1)
        producer.send("q", Message(b"first"))
        done = threading.Event()
        sender = threading.Thread(
            target=lambda: (producer.send("q", Message(b"second")), done.set())
        )
        sender.start()
        try:
            assert not done.wait(0.5)  # still waiting for room
            with open_transport(broker.url) as consumer:
                [first] = consumer.receive("q", timeout=10)
                consumer.complete(first)
                assert done.wait(10)
                [second] = consumer.receive("q", timeout=10)
                assert second.message.body == b"second"
        finally:
            sender.join(30)


def test_the_number_of_declared_queues_is_bounded(zmq_broker_factory):
    from realtime_batch.transport import QueueFullError, open_transport

    broker = zmq_broker_factory("--max-queues", "3")
    with open_transport(broker.url) as t:
        for name in ("q1", "q2", "q3"):
            t.declare_queue(name)
        t.declare_queue("q1")  # declaring an existing queue again is fine
        with pytest.raises(QueueFullError, match="3 queues"):
            t.declare_queue("q4")


def test_broker_help_lists_the_limits():
    from click.testing import CliRunner

    from realtime_batch.transport.zeromq.cli import broker

    text = CliRunner().invoke(broker, ["--help"]).output
    for option in ("--max-queued-bytes", "--max-queues", "--max-parked-receives"):
        assert option in text


def test_parked_receives_leave_no_bookkeeping_behind():
    """Served, expired and forgotten receives are all gone from every index."""
    from realtime_batch.transport.zeromq.parking import Parking, Waiter

    parking = Parking(max_per_owner=None)
    for i in range(5000):
        owner = b"owner-%d" % (i % 7)
        parking.park(Waiter(b"id", owner, i, "q", f"g{i % 100}", 1, float(i % 13)))
    assert len(parking) == 5000
    for g in range(0, 100, 2):  # every even group is served
        while (waiter := parking.first("q", f"g{g}")) is not None:
            parking.served(waiter)
    assert len(parking) == 2500
    expired = list(parking.expire(5.0))
    assert expired and all(w.deadline <= 5.0 and int(w.group[1:]) % 2 for w in expired)
    parking.forget(b"owner-1")
    assert all(w.owner != b"owner-1" for w in parking.expire(100.0))
    assert len(parking) == 0 and parking.next_deadline() is None
    assert not parking._lists and not parking._by_owner  # nothing left per group or owner
