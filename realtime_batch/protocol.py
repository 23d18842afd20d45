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
    "encode_json",
    "encode_result",
    "encode_task",
    "peek_reply_to",
    "unserializable_value",
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
    #: hash of the session's secret (``realtime_batch.control.session_key``): only cancels carrying
    #: the secret stop the task, and its result carries the key back; no one but the
    #: session and the engines (who alone read tasks) knows it
    session_key: str = ""
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
    #: the task's ``session_key``, echoed: the session keeps only results that carry its own
    session_key: str = ""
    v: int = PROTOCOL_VERSION

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def encode_json(data: Any, field: str) -> bytes:
    """``data`` as JSON by the protocol's one rule (what a task's value may be).

    Raises:
        ProtocolError: ``data`` holds something JSON cannot carry (naming ``field``).
    """
    try:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise ProtocolError(f"cannot be encoded as JSON: {exc}", field=field) from exc


def unserializable_value(exc: ProtocolError) -> ErrorInfo:
    """The error a task gets when its value fails ``encode_json``."""
    return ErrorInfo("UnserializableResultError", f"the task's value is not JSON: {exc}")


# The encoders build the dicts by hand: attrs.asdict is several times slower, and
# these run once per task on both sides of the hot path.
def encode_task(task: TaskRecord) -> bytes:
    """Serialise a task record to its message body."""
    return encode_json(
        {
            "v": task.v,
            "session": task.session,
            "job": task.job,
            "task": task.task,
            "command": task.command,
            "reply_to": {"queue": task.reply_to.queue, "group": task.reply_to.group},
            "args": task.args,
            "kwargs": task.kwargs,
            "attempt": task.attempt,
            "max_retries": task.max_retries,
            "timeout": task.timeout,
            "deadline": task.deadline,
            "retry_on": task.retry_on,
            "submitted_at": task.submitted_at,
            "session_key": task.session_key,
        },
        "args",
    )


def encode_result(result: ResultRecord) -> bytes:
    """Serialise a result record; the ``ok`` flag is included for readers of raw JSON."""
    error = result.error
    return encode_json(
        {
            "v": result.v,
            "session": result.session,
            "job": result.job,
            "task": result.task,
            "status": result.status,
            "ok": result.status == STATUS_OK,
            "value": result.value,
            "error": None
            if error is None
            else {"type": error.type, "message": error.message, "traceback": error.traceback},
            "engine": result.engine,
            "attempt": result.attempt,
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "session_key": result.session_key,
        },
        "value",
    )


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


_NUMBER = (int, float)
_REQUIRED = object()

# (field, accepted exact types, default or _REQUIRED, or a factory for mutable defaults).
# JSON decoding yields exact builtin types, so an exact type check also rejects bools
# where numbers are expected, and is much cheaper than isinstance chains.
_TASK_FIELDS: tuple[tuple[str, tuple[type, ...], Any], ...] = (
    ("session", (str,), _REQUIRED),
    ("job", (str,), _REQUIRED),
    ("task", (str,), _REQUIRED),
    ("command", (str,), _REQUIRED),
    ("args", (list,), list),
    ("kwargs", (dict,), dict),
    ("attempt", (int,), 1),
    ("max_retries", (int,), 3),
    ("timeout", _NUMBER, None),
    ("deadline", _NUMBER, None),
    ("retry_on", (list,), list),
    ("submitted_at", _NUMBER, 0.0),
    ("session_key", (str,), ""),
)
_RESULT_FIELDS: tuple[tuple[str, tuple[type, ...], Any], ...] = (
    ("session", (str,), _REQUIRED),
    ("job", (str,), _REQUIRED),
    ("task", (str,), _REQUIRED),
    ("status", (str,), _REQUIRED),
    ("engine", (str,), ""),
    ("attempt", (int,), 1),
    ("started_at", _NUMBER, None),
    ("finished_at", _NUMBER, None),
    ("session_key", (str,), ""),
)


def _fields(
    data: dict[str, Any], spec: tuple[tuple[str, tuple[type, ...], Any], ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, types, default in spec:
        value = data.get(name)
        if value is None:
            if default is _REQUIRED:
                raise ProtocolError("is required", field=name)
            value = default() if default is list or default is dict else default
        elif type(value) not in types:
            expected = " or ".join(t.__name__ for t in types)
            raise ProtocolError(f"expected {expected}, got {type(value).__name__}", field=name)
        out[name] = value
    return out


def _object(data: dict[str, Any], name: str, *, required: bool) -> dict[str, Any] | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ProtocolError("is required", field=name)
        return None
    if type(value) is not dict:
        raise ProtocolError(f"expected dict, got {type(value).__name__}", field=name)
    return value


def _string(data: dict[str, Any], name: str, default: Any = _REQUIRED) -> Any:
    value = data.get(name)
    if value is None:
        if default is _REQUIRED:
            raise ProtocolError("is required", field=name)
        return default
    if type(value) is not str:
        raise ProtocolError(f"expected str, got {type(value).__name__}", field=name)
    return value


def _reply_to(data: dict[str, Any]) -> ReplyTo:
    raw = _object(data, "reply_to", required=True)
    assert raw is not None
    return ReplyTo(_string(raw, "queue"), _string(raw, "group", None))


def decode_task(body: bytes) -> TaskRecord:
    """Parse and validate a task body. Raises ``ProtocolError`` naming the bad field."""
    data = _load(body)
    fields = _fields(data, _TASK_FIELDS)
    if not fields["command"]:
        raise ProtocolError("must not be empty", field="command")
    if fields["attempt"] < 1:
        raise ProtocolError("must be at least 1", field="attempt")
    if fields["timeout"] is not None and fields["timeout"] <= 0:
        raise ProtocolError("must be positive", field="timeout")
    return TaskRecord(reply_to=_reply_to(data), **fields)


def decode_result(body: bytes) -> ResultRecord:
    """Parse and validate a result body. Raises ``ProtocolError`` naming the bad field."""
    data = _load(body)
    fields = _fields(data, _RESULT_FIELDS)
    if fields["status"] not in STATUSES:
        raise ProtocolError(f"unknown status {fields['status']!r}", field="status")
    raw_error = _object(data, "error", required=False)
    error = None
    if raw_error is not None:
        error = ErrorInfo(
            type=_string(raw_error, "type"),
            message=_string(raw_error, "message", ""),
            traceback=_string(raw_error, "traceback", ""),
        )
    return ResultRecord(value=data.get("value"), error=error, **fields)


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
    if isinstance(data.get("session_key"), str):  # without it the session drops the answer
        ids["session_key"] = data["session_key"]
    return reply, ids
