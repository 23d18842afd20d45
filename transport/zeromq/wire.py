"""Frame encoding shared by the ZeroMQ broker and its client.

A request is one ZeroMQ multipart message sent by a DEALER::

    [header, *payload]

``header`` is a small orjson array ``[VERSION, command, request_id, *args]``; the
payload carries messages as two frames each, ``meta`` (an orjson array) and the
raw ``body`` (never re-encoded, so bodies are not copied into JSON). The broker
receives a large body as the ZeroMQ frame itself (``recv_request``) and sends that
frame on to its consumer: ZeroMQ shares the buffer, so a body of
``PASS_THROUGH_SIZE`` bytes or more is never copied in the broker. A reply is::

    [reply_header, *payload]

with ``reply_header = [request_id, status, *results]``; ``status`` is ``OK`` or
one of the error codes below, which the client maps to the ``TransportError``
tree in one place (``error_for``).

Everything arriving at the broker goes through ``decode_request``, which either
returns a ``Request`` or raises ``FrameError``: hostile input never gets further.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import orjson
import zmq

from ..base import Message
from ..errors import (
    LockLostError,
    MessageTooLargeError,
    PermissionDeniedError,
    QueueFullError,
    QueueNotFoundError,
    QueueSettingsConflict,
    TransportError,
)

__all__ = [
    "ABANDON",
    "BYE",
    "COMMAND_NAMES",
    "COMPLETE",
    "COMPLETE_MANY",
    "DEAD_LETTER",
    "DECLARE",
    "ERR_BAD_REQUEST",
    "ERR_INTERNAL",
    "ERR_LOCK_LOST",
    "ERR_PERMISSION_DENIED",
    "ERR_QUEUE_FULL",
    "ERR_QUEUE_NOT_FOUND",
    "ERR_SETTINGS_CONFLICT",
    "ERR_TOO_LARGE",
    "HEARTBEAT",
    "MAX_META_SIZE",
    "OK",
    "PASS_THROUGH_SIZE",
    "RECEIVE",
    "RELEASE",
    "RENEW",
    "SEND",
    "SETTLE_RECEIVE",
    "STATS",
    "VERSION",
    "WAKE",
    "BrokerError",
    "FrameError",
    "Request",
    "decode_deliveries",
    "decode_reply_header",
    "decode_request",
    "encode_delivery",
    "encode_error",
    "encode_message",
    "encode_reply",
    "encode_request",
    "error_for",
    "recv_frames",
    "recv_frames_with_user",
    "recv_request",
    "send_frames",
]

VERSION = 1

# -- commands -------------------------------------------------------------------------------
# args: [interval] or [interval, engine report] -> [epoch, max_message_size]
# (an engine's report, see transport/stats.py, rides on its heartbeats: no extra message)
HEARTBEAT = 1
# args: [queue, lock_duration|null, max_delivery_count|null, max_length|null] -> [created]
# (all null: any settings; a client without max_length sends three)
DECLARE = 2
SEND = 3  # args: [queue, count] + 2*count frames -> []
RECEIVE = 4  # args: [queue, max_messages, timeout|null, group|null] -> [count] + 2*count
COMPLETE = 5  # args: [token]                      -> []
ABANDON = 6  # args: [token]                       -> []
DEAD_LETTER = 7  # args: [token, reason, description] -> []
RENEW = 8  # args: [token]                         -> [locked_until]
RELEASE = 9  # args: [token, ...]: give back (uncounted) leases nobody saw; never answered
BYE = 10  # args: []: the client is closing; never answered
COMPLETE_MANY = 11  # args: [token, ...]            -> [[index of each lost lease, ...]]
# args: [queue, count, [token, ...]] + 2*count frames -> [[index of each lost lease, ...]]
# (send, then complete: an engine's results and the leases of their tasks in one round trip)
SEND_COMPLETE = 12
GIVE_BACK = 13  # args: [token]                    -> []  (abandon, not counted as a delivery)
# args: [queue, count, [token, ...], receive_queue, max_messages, timeout|null, group|null]
# + 2*count frames -> [count, [index of each lost lease, ...]] + 2*count: SEND_COMPLETE, then
# a RECEIVE (a task worker's results, their tasks' leases and its next receive in one
# request; a session's completions and its next receive, with no message)
SETTLE_RECEIVE = 14
# args: [] -> [stats dict] (TransportStats.to_dict(): queues, engines, mailboxes, uptime);
# an admin command once CURVE roles exist
STATS = 16
QUEUE_COUNTS = 15  # args: [queue]                  -> [waiting, leased]
# args: []: answer this client's parked receives now (empty); never answered itself
# (an engine stopping ends its long idle receives without waiting for their timeout)
WAKE = 17

COMMAND_NAMES = {
    HEARTBEAT: "heartbeat",
    DECLARE: "declare",
    SEND: "send",
    RECEIVE: "receive",
    COMPLETE: "complete",
    ABANDON: "abandon",
    GIVE_BACK: "give_back",
    DEAD_LETTER: "dead_letter",
    RENEW: "renew",
    RELEASE: "release",
    BYE: "bye",
    COMPLETE_MANY: "complete_many",
    SEND_COMPLETE: "send_complete",
    SETTLE_RECEIVE: "settle_receive",
    QUEUE_COUNTS: "queue_counts",
    STATS: "stats",
    WAKE: "wake",
}

# -- reply status ---------------------------------------------------------------------------
OK = 0
ERR_BAD_REQUEST = 1
ERR_QUEUE_NOT_FOUND = 2
ERR_LOCK_LOST = 3
ERR_TOO_LARGE = 4
ERR_INTERNAL = 5
ERR_QUEUE_FULL = 6
ERR_PERMISSION_DENIED = 7
ERR_SETTINGS_CONFLICT = 8

#: Largest accepted header or message-meta frame.
MAX_META_SIZE = 64 * 1024

_NUMBER = (int, float)


class FrameError(ValueError):
    """A frame sequence that does not follow the protocol.

    Attributes:
        status: the error code to answer with.
        request_id: the request's id when the header was readable, else 0.
    """

    def __init__(self, text: str, *, status: int = 1, request_id: int = 0) -> None:
        super().__init__(text)
        self.status = status
        self.request_id = request_id


class BrokerError(TransportError):
    """The broker rejected a request as malformed or failed internally."""


@attrs.define(slots=True)
class Request:
    """A decoded, validated request."""

    command: int
    request_id: int
    args: list[Any]
    messages: list[Message] = attrs.Factory(list)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _is_opt_number(value: Any) -> bool:
    return value is None or _is_number(value)


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(token, str) for token in value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_opt_count(value: Any) -> bool:
    return value is None or _is_count(value)


_SEND_COMPLETE_ARGS = (_is_str, _is_count, _is_token_list)  # queue, count, tokens
_RECEIVE_ARGS = (_is_str, _is_count, _is_opt_number, _is_opt_str)  # queue, max, timeout, group

# command -> validators of its header arguments
_ARG_RULES: dict[int, tuple[Any, ...]] = {
    HEARTBEAT: (_is_number,),
    DECLARE: (_is_str, _is_opt_number, _is_opt_count, _is_opt_count),  # ..., max_length
    SEND: (_is_str, _is_count),
    SEND_COMPLETE: _SEND_COMPLETE_ARGS,
    SETTLE_RECEIVE: (*_SEND_COMPLETE_ARGS, *_RECEIVE_ARGS),
    RECEIVE: _RECEIVE_ARGS,
    COMPLETE: (_is_str,),
    ABANDON: (_is_str,),
    GIVE_BACK: (_is_str,),
    DEAD_LETTER: (_is_str, _is_str, _is_str),
    RENEW: (_is_str,),
    QUEUE_COUNTS: (_is_str,),
    BYE: (),
    STATS: (),
    WAKE: (),
}
#: command -> validator of one optional trailing header argument
_OPTIONAL_ARG: dict[int, Any] = {HEARTBEAT: lambda value: isinstance(value, dict)}


def _loads(frame: bytes, what: str) -> Any:
    if len(frame) > MAX_META_SIZE:
        raise FrameError(f"{what} frame of {len(frame)} bytes exceeds {MAX_META_SIZE}")
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise FrameError(f"{what} frame is not valid JSON") from None


# -- requests ------------------------------------------------------------------------------
def encode_request(command: int, request_id: int, *args: Any) -> bytes:
    """Encode a request header frame."""
    return orjson.dumps([VERSION, command, request_id, *args])


def encode_message(message: Message) -> tuple[bytes, bytes]:
    """Encode a message as its (meta, body) frames."""
    props = message.properties or None
    meta = orjson.dumps([message.id, message.group, message.correlation_id, props, message.ttl])
    return meta, message.body


_set = object.__setattr__
_new = object.__new__
_NO_PROPERTIES: dict[str, Any] = {}
_MESSAGE_FIELDS = ("body", "id", "group", "correlation_id", "properties", "ttl")
_FAST_MESSAGES = tuple(f.name for f in attrs.fields(Message)) == _MESSAGE_FIELDS


def _message(
    body: bytes,
    message_id: str,
    group: str | None,
    correlation_id: str | None,
    properties: dict[str, Any] | None,
    ttl: float | None,
) -> Message:
    """Build a ``Message`` from already validated fields (attrs' checks cost 2x here)."""
    if not _FAST_MESSAGES:  # Message changed shape: take the checked path
        return Message(body, id=message_id, group=group, correlation_id=correlation_id,
                       properties=properties, ttl=ttl)  # fmt: skip
    message = _new(Message)
    _set(message, "body", body)
    _set(message, "id", message_id)
    _set(message, "group", group)
    _set(message, "correlation_id", correlation_id)
    _set(message, "properties", properties if properties is not None else {})
    _set(message, "ttl", ttl)
    return message


def _decode_message(meta_frame: bytes, body: bytes) -> Message:
    meta = _loads(meta_frame, "message meta")
    if type(meta) is not list or len(meta) != 5:
        raise FrameError("message meta must be a list of 5 items")
    message_id, group, correlation_id, props, ttl = meta
    if not (
        type(message_id) is str
        and message_id
        and (group is None or type(group) is str)
        and (correlation_id is None or type(correlation_id) is str)
        and (props is None or type(props) is dict)
        and (ttl is None or _is_number(ttl))
    ):
        raise FrameError("message meta has a field of the wrong type")
    # Messages at the broker are never mutated (dead-lettering copies the properties),
    # so they can share one empty dict: 64 bytes less per queued message.
    props = props if props else _NO_PROPERTIES
    kind = type(body)
    if kind is not bytes and kind is not zmq.Frame:  # a large body stays the frame it came in
        body = bytes(body)
    return _message(body, message_id, group, correlation_id, props, ttl)


def decode_request(frames: Sequence[bytes], max_message_size: int) -> Request:
    """Validate and decode the frames of a request (without the routing id).

    A message body that is a ``zmq.Frame`` (``recv_request``) is kept as it is: the
    message's ``body`` is then that frame, which the broker sends on without a copy.

    Raises:
        FrameError: anything that does not follow the protocol, including a message body
            above ``max_message_size`` (with ``status == ERR_TOO_LARGE``).
    """
    if not frames:
        raise FrameError("empty request")
    header = _loads(frames[0], "header")
    if not isinstance(header, list) or len(header) < 3:
        raise FrameError("header must be a list [version, command, request_id, ...]")
    version, command, request_id, *args = header
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version!r}")
    if not _is_count(request_id):
        raise FrameError("request id must be a non-negative integer")
    try:
        return _decode_body(command, request_id, args, frames[1:], max_message_size)
    except FrameError as exc:
        exc.request_id = request_id
        raise


def _decode_body(
    command: Any, request_id: int, args: list[Any], payload: Sequence[bytes], max_size: int
) -> Request:
    if command in (RELEASE, COMPLETE_MANY):
        if payload or not all(_is_str(token) for token in args):
            raise FrameError(f"{COMMAND_NAMES[command]} takes lock tokens and no payload")
        return Request(command, request_id, args)
    rules = _ARG_RULES.get(command) if isinstance(command, int) else None
    if rules is None:
        raise FrameError(f"unknown command {command!r}")
    if command == DECLARE and len(args) == 3:  # from a client without max_length
        args = [*args, None]
    optional = _OPTIONAL_ARG.get(command)
    if len(args) == len(rules) + 1 and optional is not None and optional(args[-1]):
        rules = (*rules, optional)
    if len(args) != len(rules):
        raise FrameError(f"bad arguments for {COMMAND_NAMES[command]}")
    for rule, arg in zip(rules, args):  # noqa: B905 (lengths checked above)
        if not rule(arg):
            raise FrameError(f"bad arguments for {COMMAND_NAMES[command]}")
    request = Request(command, request_id, args)
    if command in (SEND, SEND_COMPLETE, SETTLE_RECEIVE):
        count = args[1]
        if len(payload) != 2 * count:
            raise FrameError(f"send of {count} messages needs {2 * count} frames")
        messages = request.messages
        for i in range(0, len(payload), 2):
            body = payload[i + 1]
            if len(body) > max_size:
                raise FrameError(
                    f"message of {len(body)} bytes exceeds the broker limit of {max_size} bytes",
                    status=ERR_TOO_LARGE,
                )
            messages.append(_decode_message(payload[i], body))
    elif payload:
        raise FrameError(f"{COMMAND_NAMES[command]} takes no payload frames")
    return request


# -- replies -------------------------------------------------------------------------------
def encode_reply(request_id: int, *results: Any) -> bytes:
    """Encode a success reply header."""
    return orjson.dumps([request_id, OK, *results])


def encode_error(request_id: int, status: int, text: str) -> bytes:
    """Encode an error reply header."""
    return orjson.dumps([request_id, status, text])


def encode_delivery(
    message: Message, delivery_count: int, locked_until: float, token: str
) -> bytes:
    """Encode the meta frame of a leased message (its body travels as the next frame)."""
    return orjson.dumps(
        [
            message.id,
            message.group,
            message.correlation_id,
            message.properties or None,
            message.ttl,
            delivery_count,
            locked_until,
            token,
        ]
    )


def decode_reply_header(frame: bytes) -> list[Any]:
    """Decode a reply header ``[request_id, status, *results]`` (client side)."""
    header = orjson.loads(frame)
    if not isinstance(header, list) or len(header) < 2:
        raise FrameError("malformed reply header")
    return header


def decode_deliveries(frames: Sequence[bytes]) -> list[tuple[Message, int, float, str]]:
    """Decode the payload of a receive reply into (message, count, locked_until, token)."""
    result = []
    for i in range(0, len(frames) - 1, 2):
        mid, group, corr, props, ttl, count, locked_until, token = orjson.loads(frames[i])
        message = _message(frames[i + 1], mid, group, corr, props, ttl)
        result.append((message, count, locked_until, token))
    return result


_ERRORS: dict[int, type[TransportError]] = {
    ERR_QUEUE_NOT_FOUND: QueueNotFoundError,
    ERR_LOCK_LOST: LockLostError,
    ERR_QUEUE_FULL: QueueFullError,
    ERR_BAD_REQUEST: BrokerError,
    ERR_INTERNAL: BrokerError,
    ERR_PERMISSION_DENIED: PermissionDeniedError,
    ERR_SETTINGS_CONFLICT: QueueSettingsConflict,
}


def error_for(status: int, text: str) -> TransportError:
    """Map a broker error reply to the ``TransportError`` tree (the one place it happens)."""
    if status == ERR_TOO_LARGE:
        error = MessageTooLargeError(0, 0)
        error.args = (f"broker rejected the message: {text}",)
        return error
    return _ERRORS.get(status, BrokerError)(text)


# -- socket I/O ----------------------------------------------------------------------------
# pyzmq's send_multipart/recv_multipart spend more time combining enum flags than
# moving bytes; these call the Cython socket methods with plain int flags. Frames are
# received as ``zmq.Frame``s, whose ``more`` pyzmq reads in C: ``Socket.get(RCVMORE)``
# builds a ``SocketOption`` enum member per call (~2 us here, once per frame), more
# than the frame object costs (whose bytes are copied out at once, as a copying
# receive would).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_SNDMORE = int(zmq.SNDMORE)
# Zero-copy hands the frame to pyzmq's gc thread to free: below a few hundred KiB that
# costs more than the copy (a 100 KiB echo round trip measured 30 % faster copied).
_ZERO_COPY_SIZE = 256 * 1024
#: Bodies of this many bytes or more stay ZeroMQ frames in the broker (``recv_request``):
#: sent on by reference, never copied. Smaller ones become bytes: a frame object costs
#: more than copying a few KiB, and a body under ZeroMQ's 8 KiB read batch shares its
#: buffer with the messages read with it (a frame kept would keep them all).
PASS_THROUGH_SIZE = 64 * 1024


def send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """Send a multipart message (large frames without a copy).

    A ``zmq.Frame`` (a body the broker received, ``recv_request``) is sent by
    reference: ZeroMQ shares its buffer, whatever its size.
    """
    last = len(frames) - 1
    more = flags | _SNDMORE
    for i, frame in enumerate(frames):
        _send(sock, frame, flags if i == last else more, len(frame) < _ZERO_COPY_SIZE)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """Receive a multipart message as a list of bytes."""
    frame = _recv(sock, flags, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, flags, False)
        parts.append(frame.bytes)
    return parts


def recv_request(sock: zmq.Socket, flags: int = 0) -> list[Any]:
    """Receive a request at the broker: ``[identity, header, meta, body, ...]``.

    As ``recv_frames``, except that each body (the frames after a message's meta) of
    ``PASS_THROUGH_SIZE`` bytes or more is left the ``zmq.Frame`` it arrived as, for
    the broker to send on without copying it (``send_frames``).
    """
    first = _recv(sock, flags, False)
    return _recv_rest(sock, flags, [first.bytes], first.more)


def _recv_rest(sock: zmq.Socket, flags: int, parts: list[Any], more: bool) -> list[Any]:
    while more:
        frame = _recv(sock, flags, False)
        more = frame.more
        if len(parts) & 1 and len(parts) > 2:  # a body: 3, 5, 7... after identity, header
            parts.append(frame if len(frame) >= PASS_THROUGH_SIZE else frame.bytes)
        else:
            parts.append(frame.bytes)
    return parts


def recv_frames_with_user(sock: zmq.Socket, flags: int = 0) -> tuple[list[Any], str | None]:
    """Receive a request as ``recv_request`` does, and the User-Id ZAP gave its
    connection (CURVE key).

    The first frame is received without a copy only to read its metadata (a fraction
    of a microsecond).
    """
    first = _recv(sock, flags, False)
    try:
        user = first.get("User-Id")
    except zmq.ZMQError:  # no ZAP handler authenticated this connection
        user = None
    return _recv_rest(sock, flags, [first.bytes], first.more), user
