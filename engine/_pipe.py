"""The pipes between an engine and its relay-mode task worker: what travels on them.

Both sides import this module; neither imports the other. Framed by
``multiprocessing.connection`` (pickled tuples from the engine, MessagePack back), which
costs a few microseconds per task:

* engine -> worker: ``(seq, kind, path, args, kwargs, deadline, task_id, attempt)``
  batches, or ``None`` to stop;
* worker -> engine: ``["ready", pid]`` once, then ``[seq, status, value, error,
  started_at, finished_at]`` per task, in order, with status ``ok``, ``error``,
  ``expired``, ``cancelled`` or ``skipped`` (not started because the engine is
  draining). These are packed by the protocol's rule for a task's value
  (``encode_value``; the ready frame is JSON): a value that a result cannot carry is
  refused in the worker,
  as ``UnserializableResultError``, and nothing the worker writes can run code or
  raise in the engine (a frame that is not an answer becomes a
  ``WorkerProtocolError`` result for the task it stands for);
* a control pipe: ``D`` (drain: skip every task not started yet) and ``C<seq>;``
  (task ``seq`` was cancelled: answer ``cancelled`` instead of starting it);
* a crash pipe: the worker's Python stack on a fatal signal (``faulthandler``),
  at most ``CRASH_TAIL`` characters of which go in the error result.
"""

from __future__ import annotations

from typing import Any

from ..protocol import ProtocolError, decode_value, encode_value, unserializable_value

__all__ = [
    "CANCEL",
    "CRASH_TAIL",
    "DRAIN",
    "STATUS_CANCELLED",
    "STATUS_EXPIRED",
    "STATUS_SKIPPED",
    "decode_answer",
    "encode_answer",
]

STATUS_SKIPPED = "skipped"
STATUS_CANCELLED = "cancelled"
STATUS_EXPIRED = "expired"
DRAIN = b"D"
CANCEL = b"C"
CRASH_TAIL = 4000
_STATUSES = frozenset({"ok", "error", STATUS_EXPIRED, STATUS_CANCELLED, STATUS_SKIPPED})


def encode_answer(answer: tuple[Any, ...]) -> bytes:
    """An answer frame (the protocol's value rule, MessagePack); a value the protocol
    cannot carry becomes the task's error."""
    try:
        return encode_value(list(answer), "value")
    except ProtocolError as exc:
        error = unserializable_value(exc)
        seq, _status, _value, _error, started, finished = answer
        return encode_value(
            [seq, "error", None, [error.type, error.message, ""], started, finished], "value"
        )


def decode_answer(frame: bytes) -> tuple[Any, ...]:
    """The engine's reading of an answer frame; raises ``ValueError`` if it is not one."""
    try:
        answer = decode_value(frame)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    if not (isinstance(answer, list) and len(answer) == 6):
        raise ValueError(f"expected a list of 6 fields, got {type(answer).__name__}")
    seq, status, value, error, started, finished = answer
    if not (isinstance(seq, int) and status in _STATUSES):
        raise ValueError(f"bad task number {seq!r} or status {status!r}")
    if error is not None and not (
        isinstance(error, (list, tuple))
        and len(error) == 3
        and all(isinstance(e, str) for e in error)
    ):
        raise ValueError(f"bad error {error!r}")
    if not all(isinstance(t, (int, float)) for t in (started, finished)):
        raise ValueError("bad start or finish time")
    return seq, status, value, None if error is None else tuple(error), started, finished
