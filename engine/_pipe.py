"""The pipes between an engine and its task worker: what travels on them.

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
* a control pipe, in both modes, one line each (``ControlPipe``): ``D`` (drain:
  start nothing more), ``C<seq>`` (relay: task ``seq`` was cancelled: answer
  ``cancelled`` instead of starting it), ``K<json>`` (direct: a cancel key) and
  ``G`` (direct: the keys known at the start were sent);
* a crash pipe: the worker's Python stack on a fatal signal (``faulthandler``),
  at most ``CRASH_TAIL`` characters of which go in the error result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import orjson

from ..protocol import ProtocolError, decode_value, encode_value, unserializable_value

__all__ = [
    "CRASH_TAIL",
    "DRAIN",
    "STATUS_CANCELLED",
    "STATUS_EXPIRED",
    "STATUS_SKIPPED",
    "ControlPipe",
    "cancel_lines",
    "cancel_seq_lines",
    "decode_answer",
    "encode_answer",
]

logger = logging.getLogger(__name__)

STATUS_SKIPPED = "skipped"
STATUS_CANCELLED = "cancelled"
STATUS_EXPIRED = "expired"
DRAIN = b"D\n"
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


def cancel_lines(keys: Iterable[tuple[str, str, str]]) -> bytes:
    """Cancel keys as control lines (direct mode)."""
    return b"".join(b"K" + orjson.dumps(list(key)) + b"\n" for key in keys)


def cancel_seq_lines(seqs: Iterable[int]) -> bytes:
    """Cancelled tasks, by their number on the task pipe, as control lines (relay mode)."""
    return b"".join(b"C%d\n" % seq for seq in seqs)


class ControlPipe:
    """The worker's end of the control pipe: what the engine said so far.

    ``draining`` (also once the engine is gone), ``go``, the cancel ``keys`` and
    ``seqs``, and ``arrived`` (set when cancels came; the reader clears it).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.draining = False
        self.go = False
        self.arrived = False
        self.keys: set[tuple[str, str, str]] = set()
        self.seqs: set[int] = set()
        self._partial = b""

    def poll(self) -> None:
        """Read what the engine wrote (one non-blocking read)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.draining = True  # the engine is gone
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            kind, rest = line[:1], line[1:]
            if kind == b"D":
                self.draining = True
            elif kind == b"G":
                self.go = True
            elif kind == b"C" and rest.isdigit():
                self.seqs.add(int(rest))
                self.arrived = True
            elif kind == b"K":
                try:
                    session, task, key = orjson.loads(rest)
                    self.keys.add((str(session), str(task), str(key)))
                    self.arrived = True
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    logger.warning("ignoring a malformed cancel line from the engine")
