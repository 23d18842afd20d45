"""What a transport can tell about itself: one record shape for status, top and the dashboard.

``Transport.stats()`` returns a ``TransportStats``; every backend fills what it
knows and says what it cannot in ``notes``. The record travels as JSON (the
broker's ``STATS`` reply, the dashboard's ``/api/status``) through ``to_dict``
and ``from_dict``.

Engines are known only when they say who they are: an engine passes a small
report (``EngineReport`` keys) to ``Transport.report_engine``; the memory
backend keeps it in its shared broker, the ZeroMQ client sends it with its next
heartbeat (no extra message), and ``EngineTable`` keeps the latest one per
engine id, merging the engine's and its task worker's parts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

from .latency import LATENCY_BUCKETS, latency_bucket

__all__ = [
    "ENGINE_GONE_AFTER",
    "LATENCY_BUCKETS",
    "MAX_ENGINES",
    "MAX_FAILURES",
    "EngineStats",
    "EngineTable",
    "FailureInfo",
    "MailboxStats",
    "QueueStats",
    "TransportStats",
    "latency_bucket",
]

#: Recent failures an engine reports (and a table keeps) at most.
MAX_FAILURES = 10
#: Seconds after its last report that an engine is dropped from the table.
ENGINE_GONE_AFTER = 300.0
#: Engines a table keeps at most (reports under further ids are dropped).
MAX_ENGINES = 10_000
_TRACEBACK_LIMIT = 4000
_TEXT_LIMIT = 500


@attrs.frozen
class QueueStats:
    """One queue (not its dead-letter queue, which is counted in ``dead_letter``).

    Attributes:
        name: the queue's name.
        depth: messages waiting (not leased); None when the backend cannot tell.
        leased: messages leased to a receiver (in flight).
        dead_letter: messages in its dead-letter queue.
        groups: mailboxes (groups) holding waiting messages.
        sent: messages ever sent to it (since the broker started).
        completed: messages completed.
        dead_lettered: messages moved to its dead-letter queue.
        redelivered: leases that ended without completion (abandoned or expired).
        latency_buckets: completions per ``LATENCY_BUCKETS`` bucket (+Inf last), from
            enqueue to completion.
        latency_sum: seconds from enqueue to completion, summed over ``completed``.
    """

    name: str
    depth: int | None = None
    leased: int | None = None
    dead_letter: int | None = None
    groups: int | None = None
    sent: int | None = None
    completed: int | None = None
    dead_lettered: int | None = None
    redelivered: int | None = None
    latency_buckets: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    latency_sum: float = 0.0


@attrs.frozen
class MailboxStats:
    """A group of a grouped queue with messages waiting (a session's pending results)."""

    queue: str
    group: str
    depth: int


@attrs.frozen
class FailureInfo:
    """A task that ended in an error, as its engine reported it."""

    task: str
    type: str
    message: str
    traceback: str = ""
    engine: str = ""
    at: float = 0.0


@attrs.frozen
class EngineStats:
    """An engine as it last reported itself.

    Attributes:
        id: engine id.
        host: host name.
        state: ``idle``, ``busy``, ``draining``, ``stopped`` (its connection said
            goodbye) or ``gone`` (its connection went silent).
        task: id of the task it runs, if any.
        tasks_done: tasks it has finished.
        tasks_failed: tasks that ended in an error.
        worker_restarts: task workers it started after the first (crashes, kills).
        busy_ratio: share of its time spent running tasks.
        last_seen: wall-clock time of its last report.
        failures: its most recent failures.
    """

    id: str
    host: str = ""
    state: str = "idle"
    task: str | None = None
    tasks_done: int = 0
    tasks_failed: int = 0
    worker_restarts: int = 0
    busy_ratio: float | None = None
    last_seen: float = 0.0
    failures: tuple[FailureInfo, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class TransportStats:
    """Everything a transport could tell at ``taken_at``.

    Attributes:
        transport: backend name (``memory``, ``zmq``, ``servicebus``).
        url: where it was asked (no credentials).
        queues: the queues, by name.
        engines: engines that reported themselves.
        mailboxes: groups with messages waiting.
        uptime: seconds since the broker started (None when unknown).
        connections: clients heard from lately (None when unknown).
        requests: requests the broker handled (None when unknown).
        bad_requests: requests the broker refused as malformed (frames it could not
            read: a client of another version, or someone probing it; None when unknown).
        notes: what this backend cannot tell, in words.
        taken_at: wall-clock time of the snapshot.
    """

    transport: str
    url: str = ""
    queues: tuple[QueueStats, ...] = attrs.field(default=(), converter=tuple)
    engines: tuple[EngineStats, ...] = attrs.field(default=(), converter=tuple)
    mailboxes: tuple[MailboxStats, ...] = attrs.field(default=(), converter=tuple)
    uptime: float | None = None
    connections: int | None = None
    requests: int | None = None
    bad_requests: int | None = None
    notes: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    taken_at: float = attrs.field(factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransportStats:
        """Rebuild a record from ``to_dict``'s output (unknown keys are ignored)."""
        engines = []
        for item in data.get("engines") or ():
            failures = [_build(FailureInfo, f) for f in item.get("failures") or ()]
            engines.append(_build(EngineStats, {**item, "failures": failures}))
        values = {
            **data,
            "queues": [_build(QueueStats, q) for q in data.get("queues") or ()],
            "engines": engines,
            "mailboxes": [_build(MailboxStats, m) for m in data.get("mailboxes") or ()],
            "notes": list(data.get("notes") or ()),
        }
        return _build(cls, values)

    def failures(self) -> list[FailureInfo]:
        """Every engine's recent failures, newest first."""
        items = [f for engine in self.engines for f in engine.failures]
        return sorted(items, key=lambda f: f.at, reverse=True)


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    names = {field.name for field in attrs.fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


# -- engine reports ---------------------------------------------------------------------------
def _text(value: Any, limit: int = _TEXT_LIMIT) -> str:
    return str(value)[:limit] if value is not None else ""


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _failure(item: Any, engine: str) -> FailureInfo | None:
    if not isinstance(item, Mapping):
        return None
    at = item.get("at")
    return FailureInfo(
        task=_text(item.get("task")),
        type=_text(item.get("type")),
        message=_text(item.get("message"), 2000),
        traceback=_text(item.get("traceback"), _TRACEBACK_LIMIT),
        engine=engine,
        at=float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0,
    )


class EngineTable:
    """The latest report of each engine, by engine id (not thread-safe: its owner locks).

    A report is a dict with any of the keys ``id`` (required), ``host``, ``state``,
    ``task``, ``done``, ``failed``, ``busy`` and ``failures`` (a list of dicts with
    ``task``, ``type``, ``message``, ``traceback``, ``at``); fields of the wrong type
    are ignored, texts are cut, so a report is never trusted further than that.
    """

    def __init__(self) -> None:
        self._engines: dict[str, dict[str, Any]] = {}
        self._owners: dict[Any, str] = {}

    def update(self, report: Any, now: float, owner: Any = None) -> bool:
        """Merge ``report`` into its engine's entry; False if it was not a report."""
        if not isinstance(report, Mapping) or not isinstance(report.get("id"), str):
            return False
        engine_id = report["id"][:200]
        entry = self._engines.get(engine_id)
        if entry is None:
            if len(self._engines) >= MAX_ENGINES:
                self._drop_silent(now)
                if len(self._engines) >= MAX_ENGINES:
                    return False
            entry = self._engines[engine_id] = {"id": engine_id}
        for key in ("host", "state"):
            if isinstance(report.get(key), str):
                entry[key] = report[key][:200]
        if "task" in report:
            entry["task"] = report["task"][:200] if isinstance(report["task"], str) else None
        done = _count(report.get("done"))
        if done is not None:
            entry["tasks_done"] = done
        restarts = _count(report.get("restarts"))
        if restarts is not None:
            entry["worker_restarts"] = restarts
        busy = report.get("busy")
        if isinstance(busy, (int, float)) and not isinstance(busy, bool) and 0 <= busy <= 1:
            entry["busy_ratio"] = float(busy)
        # failures come from whoever sends results: the engine and, in direct mode, its
        # task worker; each reports its own counts, kept apart and added up
        source = str(report.get("source", ""))[:20]
        failed = _count(report.get("failed"))
        failures = report.get("failures")
        if failed is not None and isinstance(failures, list):
            parsed = [_failure(item, engine_id) for item in failures[-MAX_FAILURES:]]
            parts = entry.setdefault("parts", {})
            parts[source] = (failed, [f for f in parsed if f is not None])
            entry["tasks_failed"] = sum(count for count, _ in parts.values())
            merged = [f for _, items in parts.values() for f in items]
            entry["failures"] = sorted(merged, key=lambda f: f.at)[-MAX_FAILURES:]
        entry["last_seen"] = now
        if owner is not None and "state" in report:  # the engine process, not its worker
            self._owners[owner] = engine_id
        return True

    def heard_from(self, last_heard: Mapping[Any, float]) -> None:
        """Bring each engine's ``last_seen`` up to when its connection was last heard
        from (``last_heard``: owner -> time): an idle engine's report does not change,
        so it sends none while its receives wait at the broker (the zmq heartbeat
        rule), yet each receive it sends again shows it is there."""
        engines = self._engines
        for owner, engine_id in self._owners.items():
            at = last_heard.get(owner)
            entry = engines.get(engine_id)
            if at is not None and entry is not None and at > entry["last_seen"]:
                entry["last_seen"] = at

    def owner_gone(self, owner: Any, state: str = "gone") -> None:
        """The connection ``owner`` ended: its engine, if any, is ``gone`` (silent) or
        ``stopped`` (it said goodbye)."""
        engine_id = self._owners.pop(owner, None)
        entry = self._engines.get(engine_id) if engine_id is not None else None
        if entry is not None:
            entry["state"] = state
            entry["task"] = None

    def _drop_silent(self, now: float) -> None:
        for engine_id in [k for k, v in self._engines.items()
                          if now - v["last_seen"] > ENGINE_GONE_AFTER]:  # fmt: skip
            del self._engines[engine_id]

    def stats(self, now: float) -> list[EngineStats]:
        """The engines heard from in the last ``ENGINE_GONE_AFTER`` seconds, by id."""
        self._drop_silent(now)
        return [_build(EngineStats, entry) for _, entry in sorted(self._engines.items())]
