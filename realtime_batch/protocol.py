"""The wire protocol shared by clients and engines: versioned JSON task and result records.

Both records are attrs frozen classes; ``encode_*`` produces the message body and
``decode_*`` validates a body, raising ``ProtocolError`` that names the bad field.
This module imports nothing client- or engine-specific, so both sides can use it.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import orjson

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorInfo",
    "ProtocolError",
    "ReplyTo",
    "ResultRecord",
    "TaskRecord",
    "decode_result",
    "decode_task",
    "encode_result",
    "encode_task",
    "peek_reply_to",
]

PROTOCOL_VERSION = 1

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


@attrs.frozen
class ReplyTo:
    """Where the engine sends the result: a queue and the client's group (mailbox)."""

    queue: str
    group: str | None = None


@attrs.frozen
class ErrorInfo:
    """A failure: remote exception type, message and traceback text."""

    type: str
    message: str
    traceback: str = ""


@attrs.frozen(kw_only=True)
class TaskRecord:
    """One task as sent from a client session to the engines."""

    session: str
    job: str
    task: str
    command: str
    reply_to: ReplyTo
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    attempt: int = 1
    max_retries: int = 3
    timeout: float | None = None
    deadline: float | None = None
    retry_on: list[str] = attrs.field(factory=list)
    submitted_at: float = attrs.field(factory=time.time)
    v: int = PROTOCOL_VERSION


@attrs.frozen(kw_only=True)
class ResultRecord:
    """One task's outcome as sent from an engine back to the client's mailbox."""

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
    v: int = PROTOCOL_VERSION

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def _dumps(record: Any) -> bytes:
    try:
        return orjson.dumps(attrs.asdict(record, recurse=True), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise ProtocolError(f"cannot be encoded as JSON: {exc}", field="args/value") from exc


def encode_task(task: TaskRecord) -> bytes:
    """Serialise a task record to its message body."""
    return _dumps(task)


def encode_result(result: ResultRecord) -> bytes:
    """Serialise a result record; the ``ok`` flag is included for readers of raw JSON."""
    data = attrs.asdict(result, recurse=True)
    data["ok"] = result.ok
    try:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise ProtocolError(f"cannot be encoded as JSON: {exc}", field="value") from exc


# -- decoding -----------------------------------------------------------------------------


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ProtocolError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"body must be a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})",
            field="v",
        )
    return data


def _field(
    data: dict[str, Any],
    name: str,
    types: type | tuple[type, ...],
    *,
    required: bool = True,
    default: Any = None,
) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise ProtocolError("is required", field=name)
        return default
    value = data[name]
    # bool is an int subclass: reject it where a number is expected.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        expected = " or ".join(t.__name__ for t in _as_tuple(types))
        raise ProtocolError(f"expected {expected}, got {type(value).__name__}", field=name)
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _reply_to(data: dict[str, Any]) -> ReplyTo:
    raw = _field(data, "reply_to", dict)
    queue = _field(raw, "queue", str)
    group = _field(raw, "group", str, required=False)
    return ReplyTo(queue, group)


def decode_task(body: bytes) -> TaskRecord:
    """Parse and validate a task body. Raises ``ProtocolError`` naming the bad field."""
    data = _load(body)
    number = (int, float)
    task = TaskRecord(
        session=_field(data, "session", str),
        job=_field(data, "job", str),
        task=_field(data, "task", str),
        command=_field(data, "command", str),
        reply_to=_reply_to(data),
        args=_field(data, "args", list, required=False, default=[]),
        kwargs=_field(data, "kwargs", dict, required=False, default={}),
        attempt=_field(data, "attempt", int, required=False, default=1),
        max_retries=_field(data, "max_retries", int, required=False, default=3),
        timeout=_field(data, "timeout", number, required=False),
        deadline=_field(data, "deadline", number, required=False),
        retry_on=_field(data, "retry_on", list, required=False, default=[]),
        submitted_at=_field(data, "submitted_at", number, required=False, default=0.0),
    )
    if not task.command:
        raise ProtocolError("must not be empty", field="command")
    if task.attempt < 1:
        raise ProtocolError("must be at least 1", field="attempt")
    if task.timeout is not None and task.timeout <= 0:
        raise ProtocolError("must be positive", field="timeout")
    return task


def decode_result(body: bytes) -> ResultRecord:
    """Parse and validate a result body. Raises ``ProtocolError`` naming the bad field."""
    data = _load(body)
    number = (int, float)
    status = _field(data, "status", str)
    if status not in STATUSES:
        raise ProtocolError(f"unknown status {status!r}", field="status")
    raw_error = _field(data, "error", dict, required=False)
    error = None
    if raw_error is not None:
        error = ErrorInfo(
            type=_field(raw_error, "type", str),
            message=_field(raw_error, "message", str, required=False, default=""),
            traceback=_field(raw_error, "traceback", str, required=False, default=""),
        )
    return ResultRecord(
        session=_field(data, "session", str),
        job=_field(data, "job", str),
        task=_field(data, "task", str),
        status=status,
        value=data.get("value"),
        error=error,
        engine=_field(data, "engine", str, required=False, default=""),
        attempt=_field(data, "attempt", int, required=False, default=1),
        started_at=_field(data, "started_at", number, required=False),
        finished_at=_field(data, "finished_at", number, required=False),
    )


def peek_reply_to(body: bytes) -> tuple[ReplyTo, dict[str, Any]] | None:
    """Best effort: the reply address and identity fields of a body that failed validation.

    Used to answer a malformed task with an error result when the sender is known.
    """
    try:
        data = orjson.loads(body)
        reply = _reply_to(data)
        ids = {k: data[k] for k in ("session", "job", "task") if isinstance(data.get(k), str)}
    except Exception:  # any failure means "sender unknown"
        return None
    if len(ids) != 3:
        return None
    return reply, ids
