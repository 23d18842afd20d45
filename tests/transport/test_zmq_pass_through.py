"""Large bodies pass through the ZeroMQ broker as the frames they came in (issue #20).

The broker keeps a body of ``wire.PASS_THROUGH_SIZE`` bytes or more as its
``zmq.Frame`` and sends that frame on (ZeroMQ shares the buffer): no copy in the broker.
Everything else about the message is as before: its bytes at the consumer, in the
dead-letter queue and in the durable journal.
"""

from __future__ import annotations

import os
import time

import pytest
import zmq
from broker_in_thread import running, url_of

from realtime_batch.transport import Message, dead_letter_queue, open_transport
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.broker import Broker
from realtime_batch.transport.zeromq.journal import SqliteJournal

LARGE = wire.PASS_THROUGH_SIZE
LIMIT = 4 * LARGE


@pytest.fixture
def pair():
    """A DEALER connected to a ROUTER (the broker's side), over TCP."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.setsockopt(zmq.ROUTING_ID, b"client-1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield router, dealer
    finally:
        ctx.destroy(linger=0)


def _send_request(dealer: zmq.Socket, *bodies: bytes) -> None:
    frames = [wire.encode_request(wire.SEND, 1, "q", len(bodies))]
    for body in bodies:
        frames.extend(wire.encode_message(Message(body)))
    wire.send_frames(dealer, frames)


def test_recv_request_keeps_large_bodies_as_frames_and_copies_the_rest(pair):
    router, dealer = pair
    large, small = os.urandom(LARGE), os.urandom(LARGE - 1)
    _send_request(dealer, large, small)
    frames = wire.recv_request(router)
    assert frames[0] == b"client-1"
    assert [type(f) for f in frames] == [bytes, bytes, bytes, zmq.Frame, bytes, bytes]
    assert frames[3].bytes == large and frames[5] == small


def test_decode_request_keeps_the_frame_as_the_body(pair):
    router, dealer = pair
    body = os.urandom(LARGE + 1)
    _send_request(dealer, body)
    frames = wire.recv_request(router)
    [message] = wire.decode_request(frames[1:], LIMIT).messages
    assert message.body is frames[3]  # not a copy
    assert len(message.body) == len(body) and message.body.bytes == body


def test_a_body_above_the_limit_is_refused_as_a_frame_too(pair):
    router, dealer = pair
    _send_request(dealer, b"x" * (LIMIT + 1))
    frames = wire.recv_request(router)
    with pytest.raises(wire.FrameError) as caught:
        wire.decode_request(frames[1:], LIMIT)
    assert caught.value.status == wire.ERR_TOO_LARGE


def test_send_frames_sends_a_frame_on_as_it_is(pair):
    router, dealer = pair
    body = os.urandom(LARGE * 2)
    _send_request(dealer, body)
    frames = wire.recv_request(router)
    for _ in range(2):  # a frame can be sent again (a redelivery): ZeroMQ shares it
        wire.send_frames(router, [frames[0], b"header", frames[3]])
        assert dealer.recv_multipart() == [b"header", body]


def test_large_bodies_cross_the_broker_intact(queue):
    bodies = [os.urandom(LARGE), os.urandom(3 * LARGE), b"small"]
    broker = Broker("tcp://127.0.0.1:0", max_message_size=LIMIT)
    with running(broker), open_transport(url_of(broker)) as t:
        t.declare_queue(queue)
        t.send(queue, [Message(body) for body in bodies])
        got = t.receive(queue, max_messages=3, timeout=10)
        assert [d.message.body for d in got] == bodies
        assert all(type(d.message.body) is bytes for d in got)  # the client's are bytes
        t.abandon(got[0])  # sent again from the frame the broker keeps
        [again] = t.receive(queue, max_messages=1, timeout=10)
        assert again.message.body == bodies[0]
        t.complete_many([again, *got[1:]])


def test_large_bodies_are_dead_lettered_intact(queue):
    """Explicitly and past the delivery limit: the dead-letter copy is a real message."""
    first, second = os.urandom(LARGE), os.urandom(2 * LARGE)
    broker = Broker("tcp://127.0.0.1:0", max_message_size=LIMIT)
    with running(broker), open_transport(url_of(broker)) as t:
        t.declare_queue(queue, max_delivery_count=1)
        t.send(queue, [Message(first), Message(second)])
        one, two = t.receive(queue, max_messages=2, timeout=10)
        t.dead_letter(one, "Bad", "why")
        t.abandon(two)  # its only delivery: dead-lettered by the broker
        dead = t.receive(dead_letter_queue(queue), max_messages=2, timeout=10)
        deadline = time.monotonic() + 10
        while len(dead) < 2 and time.monotonic() < deadline:
            dead += t.receive(dead_letter_queue(queue), max_messages=2, timeout=1)
        assert sorted(d.message.body for d in dead) == sorted([first, second])
        assert {d.message.properties["DeadLetterReason"] for d in dead} >= {"Bad"}
        t.complete_many(dead)


def test_a_durable_broker_journals_and_restores_a_large_body(tmp_path, queue):
    body = os.urandom(2 * LARGE)
    first = Broker("tcp://127.0.0.1:0", journal=SqliteJournal(tmp_path), max_message_size=LIMIT)
    with running(first), open_transport(url_of(first)) as t:
        t.declare_queue(queue)
        t.send(queue, Message(body))
    again = Broker("tcp://127.0.0.1:0", journal=SqliteJournal(tmp_path), max_message_size=LIMIT)
    assert again.restored == 1
    with running(again), open_transport(url_of(again)) as t:
        t.declare_queue(queue)
        [got] = t.receive(queue, max_messages=1, timeout=10)
        assert got.message.body == body
        t.complete(got)
