"""Frame encoding of the ZeroMQ backend, including a bounded fuzz of the request decoder."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_batch.transport import (
    LockLostError,
    Message,
    MessageTooLargeError,
    QueueNotFoundError,
)
from realtime_batch.transport.zeromq import wire

LIMIT = 1024

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def test_send_request_roundtrip():
    messages = [
        Message(b"body", group="g", correlation_id="c", properties={"a": 1}, ttl=2.5),
        Message(b""),
    ]
    frames = [wire.encode_request(wire.SEND, 7, "q", len(messages))]
    for message in messages:
        frames.extend(wire.encode_message(message))
    request = wire.decode_request(frames, LIMIT)
    assert request.command == wire.SEND
    assert request.request_id == 7
    assert request.args == ["q", 2]
    assert request.messages == messages


def test_delivery_roundtrip():
    message = Message(b"\x00\xff", group=None, properties={"k": "v"})
    meta = wire.encode_delivery(message, 3, 123.5, "tok")
    [(decoded, count, locked_until, token)] = wire.decode_deliveries([meta, message.body])
    assert decoded == message
    assert (count, locked_until, token) == (3, 123.5, "tok")


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"not json"],
        [orjson.dumps({"v": 1})],
        [orjson.dumps([2, wire.COMPLETE, 1, "t"])],  # unknown version
        [orjson.dumps([1, 99, 1])],  # unknown command
        [orjson.dumps([1, wire.COMPLETE, -1, "t"])],  # negative request id
        [orjson.dumps([1, wire.COMPLETE, 1, 5])],  # token of the wrong type
        [orjson.dumps([1, wire.COMPLETE, 1, "t"]), b"extra"],  # unexpected payload
        [wire.encode_request(wire.SEND, 1, "q", 2), b"[]", b"x"],  # frame count mismatch
        [wire.encode_request(wire.SEND, 1, "q", 1), b"[1,2]", b"x"],  # short meta
        [wire.encode_request(wire.SEND, 1, "q", 1), b'["", null, null, null, null]', b"x"],
        [wire.encode_request(wire.RECEIVE, 1, "q", True, None, None)],  # bool is no count
        [wire.encode_request(wire.SETTLE_RECEIVE, 1, "r", 1, [], "t", 1, None, None), b"[]"],
        [wire.encode_request(wire.SETTLE_RECEIVE, 1, "r", 0, ["x"], "t", 1, None)],  # no group
        [wire.encode_request(wire.SETTLE_RECEIVE, 1, "r", 0, [1], "t", 1, None, None)],  # token
        [wire.encode_request(wire.SETTLE_RECEIVE, 1, "r", 0, [], "t", 1, None, 5)],  # group
        [b"[" * 100_000],  # header above MAX_META_SIZE
    ],
)
def test_malformed_requests_raise_frame_error(frames):
    with pytest.raises(wire.FrameError):
        wire.decode_request(frames, LIMIT)


def test_oversize_body_is_a_frame_error_with_too_large_status():
    frames = [wire.encode_request(wire.SEND, 5, "q", 1), *wire.encode_message(Message(b"x" * 2000))]
    with pytest.raises(wire.FrameError) as info:
        wire.decode_request(frames, LIMIT)
    assert info.value.status == wire.ERR_TOO_LARGE
    assert info.value.request_id == 5


def test_error_replies_map_to_the_transport_tree():
    assert isinstance(wire.error_for(wire.ERR_LOCK_LOST, "x"), LockLostError)
    assert isinstance(wire.error_for(wire.ERR_QUEUE_NOT_FOUND, "x"), QueueNotFoundError)
    too_large = wire.error_for(wire.ERR_TOO_LARGE, "too big")
    assert isinstance(too_large, MessageTooLargeError)
    assert "too big" in str(too_large)
    assert isinstance(wire.error_for(12345, "?"), wire.BrokerError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_random_frames_only_raise_frame_error(frames):
    try:
        wire.decode_request(frames, LIMIT)
    except wire.FrameError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.integers(min_value=0, max_value=12),
    args=st.lists(json_values, max_size=5),
    payload=st.lists(st.one_of(st.binary(max_size=32), json_values.map(orjson.dumps)), max_size=5),
)
def test_fuzz_structured_requests_only_raise_frame_error(command, args, payload):
    frames = [orjson.dumps([wire.VERSION, command, 1, *args]), *payload]
    try:
        request = wire.decode_request(frames, LIMIT)
    except wire.FrameError:
        return
    assert request.command in wire.COMMAND_NAMES
    assert all(isinstance(m, Message) for m in request.messages)


def test_recv_frames_keeps_each_multipart_message_whole():
    """Frames (empty ones too) come back as the bytes sent, one message per call."""
    import zmq

    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind("inproc://wire-recv-frames")
        b.connect("inproc://wire-recv-frames")
        first = [b"header", b"", b"body" * 1000, b""]
        wire.send_frames(a, first)
        wire.send_frames(a, [b"alone"])
        wire.send_frames(a, [b"", b"x"])
        got = wire.recv_frames(b)
        assert got == first
        assert all(type(part) is bytes for part in got)
        assert wire.recv_frames(b) == [b"alone"]
        assert wire.recv_frames(b) == [b"", b"x"]
        with pytest.raises(zmq.Again):
            wire.recv_frames(b, zmq.NOBLOCK)
    finally:
        ctx.destroy(linger=0)
