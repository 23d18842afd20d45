"""What a session can tell about its own progress: ``Session.health()``.

A session hears from engines only through their notices and results, so the
one thing it can say for sure is whether any engine has taken its work. That is
also what goes wrong in a first hour: tasks sent to a queue that no engine reads
(no engine started, another queue or transport, engines that could not start).
"""

from __future__ import annotations

import time

import attrs

__all__ = ["STATE_IDLE", "STATE_NO_ENGINE", "STATE_SERVED", "STATE_WAITING", "SessionHealth"]

#: Nothing outstanding.
STATE_IDLE = "idle"
#: Tasks outstanding, no engine heard from yet, for less than ``warn_after``.
STATE_WAITING = "waiting"
#: Tasks outstanding for ``warn_after`` or more and no engine has taken any.
STATE_NO_ENGINE = "no-engine"
#: Engines have taken this session's tasks.
STATE_SERVED = "served"


@attrs.frozen
class SessionHealth:
    """A snapshot of a session's progress.

    Attributes:
        state: ``"idle"``, ``"waiting"``, ``"no-engine"`` or ``"served"``.
        message: one sentence saying what the state means and what to check.
        outstanding: tasks submitted whose result has not arrived.
        received: results received so far.
        waiting_for: seconds since the oldest task no engine has answered for was
            submitted (0 when none waits).
        engines: engine id -> seconds since the session last heard from it.
        task_queue: the queue the session sends to.
        transport: the transport URL, credentials hidden.
    """

    state: str
    message: str
    outstanding: int
    received: int
    waiting_for: float
    engines: dict[str, float]
    task_queue: str
    transport: str

    @property
    def ok(self) -> bool:
        """False only when tasks wait and no engine has taken any (``"no-engine"``)."""
        return self.state != STATE_NO_ENGINE


def assess(
    *,
    outstanding: int,
    received: int,
    unserved_since: float | None,
    engines: dict[str, float],
    warn_after: float,
    task_queue: str,
    transport: str,
    now: float | None = None,
) -> SessionHealth:
    """Build a :class:`SessionHealth` from a session's counters (``time.time()`` stamps)."""
    now = time.time() if now is None else now
    waiting = 0.0 if unserved_since is None or not outstanding else max(now - unserved_since, 0.0)
    heard = {engine: round(now - at, 3) for engine, at in engines.items()}
    if not outstanding:
        state, message = STATE_IDLE, "no task outstanding"
    elif heard:
        last = min(heard.values())
        state = STATE_SERVED
        message = (
            f"{outstanding} task(s) outstanding; {len(heard)} engine(s) took this session's "
            f"tasks, the last heard from {last:.1f} s ago"
        )
    else:
        state = STATE_NO_ENGINE if waiting >= warn_after else STATE_WAITING
        message = (
            f"{outstanding} task(s) waited {waiting:.1f} s on queue {task_queue!r} of "
            f"{transport} and no engine has taken any: is an engine running on that "
            "transport and queue (LocalPool(engines=1 or more), rtbatch engine --queue "
            f"{task_queue}), and did it start (see its log)?"
        )
    return SessionHealth(
        state=state,
        message=message,
        outstanding=outstanding,
        received=received,
        waiting_for=round(waiting, 3),
        engines=heard,
        task_queue=task_queue,
        transport=transport,
    )
