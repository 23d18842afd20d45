"""Deadlines of a session's tasks: which unanswered tasks count as expired, and when.

A task with a ``deadline`` travels with a time to live; if it expires in the queue
before any engine takes it, no engine will answer, so the session reports it as
expired itself once the deadline (plus a slack for clocks and transit) has passed.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Container

__all__ = ["EXPIRY_SLACK", "DeadlineQueue"]

#: seconds after a deadline before an unanswered task counts as expired
EXPIRY_SLACK = 1.0
_COMPACT_ABOVE = 1024  # finished tasks' deadlines tolerated beyond twice the outstanding


class DeadlineQueue:
    """The deadlines of a session's tasks, earliest first. Not thread-safe (lock held)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []  # (deadline, task id)

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, task_id: str, outstanding: Collection[str]) -> None:
        """Add a task's deadline; drop those of finished tasks when they outnumber the rest.

        A finished task's deadline would stay until it passes (hours, maybe); compacting
        here and after each receive (``compact``) keeps the heap bounded by the
        outstanding tasks.
        """
        heapq.heappush(self._heap, (deadline, task_id))
        self.compact(outstanding)

    def compact(self, outstanding: Collection[str]) -> None:
        """Drop finished tasks' deadlines if they outnumber twice the outstanding ones."""
        if len(self._heap) > 2 * len(outstanding) + _COMPACT_ABOVE:
            self._heap = [entry for entry in self._heap if entry[1] in outstanding]
            heapq.heapify(self._heap)

    def any_due(self, now: float) -> bool:
        """Whether a deadline (plus the slack) has passed; cheap enough for every poll."""
        return bool(self._heap) and self._heap[0][0] + EXPIRY_SLACK < now

    def pop_due(self, now: float, outstanding: Container[str]) -> list[str]:
        """Remove the deadlines that passed; return the ids among them still ``outstanding``."""
        due = []
        while self._heap and self._heap[0][0] + EXPIRY_SLACK < now:
            _, task_id = heapq.heappop(self._heap)
            if task_id in outstanding:
                due.append(task_id)
        return due
