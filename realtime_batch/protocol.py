"""The wire protocol shared by clients and engines: versioned task and result records.

Both records are frozen ``msgspec.Struct`` classes (``replace`` derives a changed copy);
``encode_*`` produces the message body and ``decode_*`` validates a body into the record
itself (one object per message), raising ``ProtocolError`` that names the bad field.
Version 2 bodies are MessagePack (msgspec): ``bytes`` travel as they are, other values
as ``realtime_batch.values`` tags them, and typed structs check every field while
decoding (``benchmarks/codec.py`` measured it against JSON + hand checks). A body of
another version, JSON version 1 included, is a ``ProtocolError`` on field ``v``.
This module imports nothing client- or engine-specific, so both sides can use it.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import msgspec
import orjson

from . import values

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorInfo",
    "ProtocolError",
    "ReplyTo",
    "ResultRecord",
    "TaskRecord",
    "decode_result",
    "decode_task",
    "decode_value",
    "encode_json",
    "encode_result",
    "encode_task",
    "encode_value",
    "peek_reply_to",
    "read_fields",
    "replace",
    "unserializable_value",
]

#: 2: MessagePack with tagged values (``realtime_batch.values``); 1 was JSON.
PROTOCOL_VERSION = 2

#: Result status values.
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_EXPIRED = "expired"
STATUS_CANCELLED = "cancelled"
STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_EXPIRED, STATUS_CANCELLED)


class ProtocolError(ValueError):
    """A body is not a valid record of this protocol version.

    Attributes:
        field: the offending field (``None`` when the body is not JSON at all).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message if field is None else f"field {field!r}: {message}")
        self.field = field


class ReplyTo(msgspec.Struct, frozen=True):
    """Where the engine sends the result: a queue and the client's group (mailbox)."""

    queue: str
    group: str | None = None


class ErrorInfo(msgspec.Struct, frozen=True):
    """A failure: remote exception type, message and traceback text."""

    type: str
    message: str = ""
    traceback: str = ""


# The records are what the decoders build (one object per message, the field checks
# run while decoding) and, field for field in this order, what ``encode_task`` sends:
# ``v`` first, so ``_decode`` can see that a body carries it without a second pass.
class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One task as sent from a client session to the engines."""

    v: int = PROTOCOL_VERSION
    session: str
    job: str
    task: str
    command: Annotated[str, msgspec.Meta(min_length=1)]
    reply_to: ReplyTo
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    attempt: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_retries: int = 3
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    deadline: float | None = None
    retry_on: list[str] = []
    submitted_at: float = msgspec.field(default_factory=time.time)
    #: hash of the session's secret (``realtime_batch.control.session_key``): only cancels carrying
    #: the secret stop the task, and its result carries the key back; no one but the
    #: session and the engines (who alone read tasks) knows it
    session_key: str = ""


class ResultRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One task's outcome as sent from an engine back to the client's mailbox."""

    v: int = PROTOCOL_VERSION
    session: str
    job: str
    task: str
    status: str
    value: Any = None
    error: ErrorInfo | None = None
    engine: str = ""
    attempt: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    #: the task's ``session_key``, echoed: the session keeps only results that carry its own
    session_key: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


#: ``record`` with some fields changed (``replace(task, args=[...])``): the records are
#: frozen, and this is how the client, the engine and the payload store derive one.
replace = msgspec.structs.replace


def encode_json(data: Any, field: str) -> bytes:
    """``data`` as JSON (control frames; task values travel by ``realtime_batch.values``).

    Raises:
        ProtocolError: ``data`` holds something JSON cannot carry (naming ``field``).
    """
    try:
        return orjson.dumps(data)
    except TypeError as exc:
        raise ProtocolError(f"cannot be encoded as JSON: {exc}", field=field) from exc


def encode_value(data: Any, field: str) -> bytes:
    """``data`` packed by the protocol's one rule for what a task's value may be.

    Raises:
        ProtocolError: ``data`` holds something that cannot travel exactly (naming
            ``field`` and where inside it, e.g. ``args[0]['when']``).
    """
    prepared = _prepared(data, field)
    try:
        return _ENCODER.encode(prepared)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot be carried: {exc}", field=field) from exc


def decode_value(body: bytes) -> Any:
    """What ``encode_value`` packed; raises ``ProtocolError`` when ``body`` is not that."""
    try:
        return values.unpack(body)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ProtocolError(f"not a packed value: {exc}") from None


def unserializable_value(exc: ProtocolError) -> ErrorInfo:
    """The error a task gets when its value fails ``encode_value``."""
    return ErrorInfo("UnserializableResultError", f"the task's value cannot be sent back: {exc}")


def _encoded(record: dict[str, Any] | TaskRecord, field: str) -> bytes:
    try:
        return _ENCODER.encode(record)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:  # e.g. 2**70
        raise ProtocolError(f"cannot be carried: {exc}", field=field) from None


def _prepared(data: Any, field: str) -> Any:
    try:
        return values.prepare(data)
    except values.UnsupportedValueError as exc:
        raise ProtocolError(
            f"{exc}: send str, int, float, bool, None, bytes, list, dict or a type listed in "
            "docs/payloads.md, or convert it first",
            field=field,
        ) from None


def encode_task(task: TaskRecord) -> bytes:
    """Serialise a task record to its message body (MessagePack).

    The record is packed as it is (its fields in order are the body's keys); only
    arguments that need a tag (``realtime_batch.values``) make a copy first.

    Raises:
        ProtocolError: an argument cannot be carried exactly (``args`` or ``kwargs``).
    """
    args = _prepared(task.args, "args")
    kwargs = _prepared(task.kwargs, "kwargs")
    if args is not task.args or kwargs is not task.kwargs:
        task = replace(task, args=args, kwargs=kwargs)
    return _encoded(task, "args")


def encode_result(result: ResultRecord) -> bytes:
    """Serialise a result record; the ``ok`` flag is included for readers of raw bodies.

    Raises:
        ProtocolError: the value cannot be carried exactly (field ``value``).
    """
    # built by hand for the ``ok`` key, which is not a field (and is ignored when decoding)
    return _encoded(
        {
            "v": result.v,
            "session": result.session,
            "job": result.job,
            "task": result.task,
            "status": result.status,
            "ok": result.status == STATUS_OK,
            "value": _prepared(result.value, "value"),
            "error": result.error,
            "engine": result.engine,
            "attempt": result.attempt,
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "session_key": result.session_key,
        },
        "value",
    )


# -- decoding: the record types check every field while decoding ------------------------


class _VersionWire(msgspec.Struct):
    v: Any = None


_ENCODER = msgspec.msgpack.Encoder()
_TASK_DECODER = msgspec.msgpack.Decoder(TaskRecord, ext_hook=values.ext_hook)
_RESULT_DECODER = msgspec.msgpack.Decoder(ResultRecord, ext_hook=values.ext_hook)
_VERSION_DECODER = msgspec.msgpack.Decoder(_VersionWire, ext_hook=values.ext_hook)
_FIELD_IN_MESSAGE = re.compile(r"missing required field `([^`]+)`")
_FIELD_AT = re.compile(r"at `\$\.([A-Za-z_]+(?:\.[A-Za-z_]+)*)")
#: the start of every body ``encode_*`` makes after its map header: the key ``v``, then 2
_VERSION_FIRST = b"\xa1v" + bytes([PROTOCOL_VERSION])


def _version_error(body: bytes) -> ProtocolError | None:
    """The error for a body of another protocol version (v1 was JSON), else None."""
    try:
        version = _VERSION_DECODER.decode(body).v
    except (msgspec.DecodeError, ValueError):
        try:
            data = orjson.loads(body)
        except (orjson.JSONDecodeError, TypeError):
            return None
        version = data.get("v") if isinstance(data, dict) else None
        if version is None:
            return None
    if version == PROTOCOL_VERSION:
        return None
    return ProtocolError(
        f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})",
        field="v",
    )


def _decode(decoder: msgspec.msgpack.Decoder, body: bytes) -> Any:
    try:
        record = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _version_error(body) or _field_error(str(exc)) from None
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise _version_error(body) or ProtocolError(
            f"body is not a protocol record: {exc}"
        ) from None
    if record.v != PROTOCOL_VERSION:
        raise _version_error(body) or ProtocolError("bad version", field="v")
    # ``v`` has a default (records are built without it) but a body must carry it: ours
    # start with it (a fixmap header, then ``v``); any other body is checked in full
    carries_v = 0x80 <= body[0] <= 0x8F and body[1:4] == _VERSION_FIRST
    if not carries_v and _VERSION_DECODER.decode(body).v is None:
        raise ProtocolError("Object missing required field `v`", field="v")
    return record


def _field_error(message: str) -> ProtocolError:
    """A ``ProtocolError`` naming the innermost field msgspec's message points at."""
    found = _FIELD_IN_MESSAGE.search(message) or _FIELD_AT.search(message)
    field = None if found is None else found.group(1).rpartition(".")[2]
    if field is None:
        return ProtocolError(f"body is not a protocol record: {message}")
    return ProtocolError(message, field=field)


def decode_task(body: bytes) -> TaskRecord:
    """Parse and validate a task body. Raises ``ProtocolError`` naming the bad field."""
    return _decode(_TASK_DECODER, body)


def decode_result(body: bytes) -> ResultRecord:
    """Parse and validate a result body. Raises ``ProtocolError`` naming the bad field."""
    record: ResultRecord = _decode(_RESULT_DECODER, body)
    if record.status not in STATUSES:
        raise ProtocolError(f"unknown status {record.status!r}", field="status")
    return record


def read_fields(body: bytes) -> dict[str, Any] | None:
    """Best effort, unvalidated: a body's top-level fields (for inspection tools), else None.

    Reads this version's MessagePack and, for old messages, JSON.
    """
    try:
        data = values.unpack(body)
    except Exception:  # not MessagePack (or a tag this side does not know)
        try:
            data = orjson.loads(body)
        except (orjson.JSONDecodeError, TypeError):
            return None
    return data if isinstance(data, dict) else None


def peek_reply_to(body: bytes) -> tuple[ReplyTo, dict[str, Any]] | None:
    """Best effort: the reply address and identity fields of a body that failed validation.

    Used to answer a malformed task with an error result when the sender is known.
    """
    data = read_fields(body)
    if data is None:
        return None
    try:
        raw = data["reply_to"]
        reply = ReplyTo(raw["queue"], raw.get("group"))
        if not isinstance(reply.queue, str) or not isinstance(reply.group, (str, type(None))):
            return None
        ids = {k: data[k] for k in ("session", "job", "task") if isinstance(data.get(k), str)}
    except Exception:  # any failure means "sender unknown"
        return None
    if len(ids) != 3:
        return None
    if isinstance(data.get("session_key"), str):  # without it the session drops the answer
        ids["session_key"] = data["session_key"]
    return reply, ids
