"""The ZeroMQ broker process: startup, shutdown, size limits and hostile input."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid

import orjson
import psutil
import pytest
import zmq

from realtime_batch.transport import LockLostError, Message, MessageTooLargeError, open_transport
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker


def serves_a_normal_client(url: str) -> bool:
    """Declare, send, receive and complete one message through the broker at ``url``."""
    queue = f"check-{uuid.uuid4().hex[:8]}"
    with open_transport(url, request_timeout=10) as t:
        t.declare_queue(queue)
        t.send(queue, Message(b"still alive"))
        deliveries = t.receive(queue, timeout=10)
        for d in deliveries:
            t.complete(d)
        return [d.message.body for d in deliveries] == [b"still alive"]


@pytest.fixture
def raw_dealer():
    """Raw DEALER sockets connected to a broker; closed at teardown."""
    context = zmq.Context()
    sockets = []

    def _connect(url: str) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(url.replace("zmq://", "tcp://"))
        sockets.append(sock)
        return sock

    try:
        yield _connect
    finally:
        for sock in sockets:
            sock.close(0)
        context.term()


def recv_reply(sock: zmq.Socket, timeout: float = 10.0) -> list[bytes]:
    assert sock.poll(timeout * 1000), "no reply from the broker"
    return sock.recv_multipart()


def test_ready_line_reports_the_chosen_port(zmq_broker_factory):
    broker = zmq_broker_factory()
    assert broker.port > 0
    assert serves_a_normal_client(broker.url)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_exits_cleanly_on_signal(zmq_broker_factory, sig):
    broker = zmq_broker_factory()
    assert broker.kill(sig) == 0


def test_broker_rejects_oversize_body_with_an_error_reply(zmq_broker_factory, raw_dealer):
    broker = zmq_broker_factory("--max-message-size", "1000")
    sock = raw_dealer(broker.url)
    sock.send_multipart([wire.encode_request(wire.DECLARE, 1, "big", 30.0, 10)])
    assert orjson.loads(recv_reply(sock)[0])[:2] == [1, wire.OK]
    frames = [
        wire.encode_request(wire.SEND, 2, "big", 1),
        *wire.encode_message(Message(b"x" * 1001)),
    ]
    sock.send_multipart(frames)
    rid, status, text = orjson.loads(recv_reply(sock)[0])
    assert (rid, status) == (2, wire.ERR_TOO_LARGE)
    assert "1000" in text
    assert serves_a_normal_client(broker.url)


def test_client_learns_a_smaller_broker_limit(zmq_broker_factory, queue):
    broker = zmq_broker_factory("--max-message-size", "1000")
    with open_transport(broker.url, max_message_size=10 * 1024 * 1024) as t:
        t.declare_queue(queue)
        # Refused by the broker, or by the client once a heartbeat taught it the limit.
        with pytest.raises(MessageTooLargeError):
            t.send(queue, Message(b"x" * 1500))
        end = time.monotonic() + 10
        while t.max_message_size != 1000 and time.monotonic() < end:
            time.sleep(0.05)
        assert t.max_message_size == 1000
        with pytest.raises(MessageTooLargeError):
            t.send(queue, Message(b"x" * 1001))
        t.send(queue, Message(b"x" * 1000))
        [d] = t.receive(queue, timeout=10)
        assert len(d.message.body) == 1000
        t.complete(d)


def test_frames_above_the_socket_limit_drop_only_that_peer(zmq_broker_factory, raw_dealer):
    broker = zmq_broker_factory("--max-message-size", "1000")
    sock = raw_dealer(broker.url)
    sock.send_multipart([wire.encode_request(wire.SEND, 1, "q", 1), b"[]", b"x" * 3_000_000])
    assert not sock.poll(300)  # no answer: the connection was cut
    assert broker.proc.poll() is None
    assert serves_a_normal_client(broker.url)


def test_malformed_requests_get_error_replies(zmq_broker_factory, raw_dealer):
    broker = zmq_broker_factory()
    sock = raw_dealer(broker.url)
    cases = [
        [b"garbage"],
        [orjson.dumps([1, 99, 5])],  # unknown command
        [wire.encode_request(wire.SEND, 6, "q", 3), b"[]"],  # wrong frame count
        [wire.encode_request(wire.COMPLETE, 7, "no-such-token")],
    ]
    statuses = []
    for frames in cases:
        sock.send_multipart(frames)
        statuses.append(orjson.loads(recv_reply(sock)[0])[1])
    assert statuses == [wire.ERR_BAD_REQUEST] * 3 + [wire.ERR_LOCK_LOST]
    assert serves_a_normal_client(broker.url)


def test_random_bytes_from_dealers_and_raw_tcp_do_not_hurt_the_broker(
    zmq_broker_factory, raw_dealer
):
    broker = zmq_broker_factory()
    rng = random.Random(1234)
    for _ in range(5):
        sock = raw_dealer(broker.url)
        for _ in range(40):
            frames = [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(1, 6))]
            sock.send_multipart(frames)
        sock.send_multipart([b""] * 1000)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
            raw.sendall(rng.randbytes(rng.randint(1, 5000)))
    # a peer that opens a connection and never speaks must not block anyone either
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as idle:
        idle.sendall(b"\xff" + b"\x00" * 8 + b"\x7f")  # a ZMTP greeting prefix, then silence
        assert serves_a_normal_client(broker.url)
    assert broker.proc.poll() is None
    assert serves_a_normal_client(broker.url)


def test_broker_survives_a_peer_that_vanishes_mid_receive(zmq_broker_factory, raw_dealer):
    broker = zmq_broker_factory()
    sock = raw_dealer(broker.url)
    sock.send_multipart([wire.encode_request(wire.DECLARE, 1, "vanish", 30.0, 10)])
    recv_reply(sock)
    sock.send_multipart([wire.encode_request(wire.RECEIVE, 2, "vanish", 5, None, None)])
    sock.close(0)
    with open_transport(broker.url) as t:
        t.send("vanish", Message(b"for someone else"))
        # The parked receive of the vanished peer must not swallow the message.
        deliveries = t.receive("vanish", timeout=10)
        assert [d.message.body for d in deliveries] == [b"for someone else"]
        t.complete(deliveries[0])
    assert broker.proc.poll() is None


# -- busy-polling ---------------------------------------------------------------------------
def test_a_polling_broker_sleeps_once_traffic_stops(zmq_broker_factory):
    broker = zmq_broker_factory("--spin-us", "2000")  # a long poll, so that a leak would show
    process = psutil.Process(broker.proc.pid)
    for _ in range(20):
        assert serves_a_normal_client(broker.url)
    time.sleep(0.2)  # the last client's BYE handled
    before = sum(process.cpu_times()[:2])
    time.sleep(1.0)
    idle_cpu = sum(process.cpu_times()[:2]) - before
    assert idle_cpu < 0.2, f"the broker used {idle_cpu:.2f} s of CPU in 1 s with no traffic"


def test_spin_must_not_be_negative(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "realtime_batch.transport.zeromq", "--spin-us", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--spin-us" in result.stderr
    with pytest.raises(ValueError, match="spin"):
        Broker("tcp://127.0.0.1:0", spin=-1.0)


def test_no_polling_on_a_single_cpu():
    context = zmq.Context()
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(previous)})
        single = Broker("tcp://127.0.0.1:0", spin=1e-4, context=context)
        os.sched_setaffinity(0, previous)
        several = Broker("tcp://127.0.0.1:0", spin=1e-4, context=context)
    finally:
        os.sched_setaffinity(0, previous)
    try:
        assert single.spin == 0.0
        assert several.spin == (1e-4 if len(previous) > 1 else 0.0)
    finally:
        single.close()
        several.close()
        context.term()


def test_give_back_does_not_count_the_delivery(zmq_broker_factory, queue):
    """A delivery given back (held, never started) comes back with the same count;
    one abandoned comes back with the count raised, and a lost lease cannot be given back."""
    broker = zmq_broker_factory()
    with open_transport(broker.url) as t:
        t.declare_queue(queue, max_delivery_count=3)
        t.send(queue, Message(b"task"))
        for _ in range(5):  # more than max_delivery_count: never dead-lettered
            [d] = t.receive(queue, timeout=10)
            assert d.delivery_count == 1
            t.give_back(d)
        [d] = t.receive(queue, timeout=10)
        t.abandon(d)
        [d] = t.receive(queue, timeout=10)
        assert d.delivery_count == 2
        t.complete(d)
        with pytest.raises(LockLostError):
            t.give_back(d)
        assert t.receive(queue, timeout=0.2) == []


def test_give_back_abandons_where_a_backend_cannot_uncount(queue):
    """The base class's give_back (Service Bus: ``capabilities.give_back`` False) abandons;
    memory:// declares give_back since #17 and uncounts, as the broker does."""
    from realtime_batch.transport.base import Transport

    with open_transport(f"memory://give-back-{uuid.uuid4().hex}") as t:
        assert t.capabilities.give_back
        t.declare_queue(queue)
        t.send(queue, Message(b"task"))
        [d] = t.receive(queue, timeout=10)
        t.give_back(d)
        [d] = t.receive(queue, timeout=10)
        assert d.delivery_count == 1  # uncounted
        Transport.give_back(t, d)  # the default, as a backend without the ability has it
        [d] = t.receive(queue, timeout=10)
        assert d.delivery_count == 2


def test_a_released_stale_grant_is_not_charged_a_delivery(zmq_transport_url, queue):
    """A receive reply that comes after its client gave up is released unread (RELEASE):
    nobody saw those messages, so, like a give-back, it must not use up a delivery (under
    load such releases charged tasks attempts nobody made)."""
    import zmq

    from realtime_batch.transport.zeromq import wire

    with open_transport(zmq_transport_url) as t:
        t.declare_queue(queue)
        t.send(queue, Message(b"task"))
        [d] = t.receive(queue, timeout=10)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        try:
            sock.connect(zmq_transport_url.replace("zmq://", "tcp://"))
            sock.send(wire.encode_request(wire.RELEASE, 0, d.lock_token))
        finally:
            sock.close()
            ctx.term()
        [again] = t.receive(queue, timeout=10)
        assert again.message.body == b"task"
        assert again.delivery_count == 1
        t.complete(again)


def test_the_connection_guard_is_read_every_10_ms_not_every_turn_unless_under_pressure():
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context())
    checks = []
    broker._guard.check = lambda now: checks.append(now)  # count instead of reading
    try:
        for _ in range(5):  # five turns within the same millisecond
            broker._timers(1000.0)
        assert len(checks) == 1
        broker._timers(1000.011)
        assert len(checks) == 2
        broker._guard.under_pressure = True  # near the cap: every turn
        for _ in range(3):
            broker._timers(1000.012)
        assert len(checks) == 5
    finally:
        broker.close()
