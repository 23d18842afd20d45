"""How many messages one receive may take from a shared queue: an even spread.

A consumer asks for up to N messages (its prefetch). Granting all N whenever they
are there spreads long tasks unevenly: near the end of a batch some engines hold a
full prefetch while others have nothing left to do. The broker knows who consumes
from a queue, so it grants at most ``ceil(waiting / consumers)`` (guided
self-scheduling: large grants while much is waiting, one at a time near the end),
where ``consumers`` are the owners that asked that queue for messages (not a
mailbox's group) within the last ``CONSUMER_WINDOW`` seconds, or that have a
receive waiting on it (an idle engine's waits far longer than the window).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CONSUMER_WINDOW", "FairShare"]

#: Seconds after its last receive that an owner stops counting as a queue's consumer
#: (a busy engine asks between tasks; an idle one keeps a receive waiting, and counts
#: while it does: see ``FairShare``'s ``waiting``).
CONSUMER_WINDOW = 5.0
_PRUNE_INTERVAL = 1.0


class FairShare:
    """The consumers of each queue and the share each receive may take.

    Args:
        window: seconds a consumer counts after its last receive.
        waiting: ``waiting(queue, owner)``: whether ``owner`` has a receive waiting on
            ``queue`` now; such an owner counts however long ago it asked.
    """

    def __init__(
        self,
        window: float = CONSUMER_WINDOW,
        waiting: Callable[[str, Any], bool] | None = None,
    ) -> None:
        if window <= 0:
            raise ValueError("the consumer window must be positive")
        self.window = window
        self._waiting = waiting
        self._seen: dict[str, dict[Any, float]] = {}
        self._next_prune = 0.0

    def limit(self, queue: str, owner: Any, asked: int, waiting: int, now: float) -> int:
        """Messages ``owner`` may take from ``queue`` now, asking for ``asked`` while
        ``waiting`` wait there (at least 1; records ``owner`` as a consumer)."""
        seen = self._seen.get(queue)
        if seen is None:
            seen = self._seen[queue] = {}
        seen[owner] = now
        if now >= self._next_prune:
            self._prune(now)
        consumers = len(seen)
        if consumers <= 1:
            return asked
        return max(1, min(asked, -(-waiting // consumers)))

    def consumers(self, queue: str) -> int:
        """The consumers of ``queue`` counted now."""
        return len(self._seen.get(queue, ()))

    def forget(self, owner: Any) -> None:
        """``owner`` is gone (said goodbye or went silent)."""
        for seen in self._seen.values():
            seen.pop(owner, None)

    def _prune(self, now: float) -> None:
        self._next_prune = now + _PRUNE_INTERVAL
        oldest = now - self.window
        waiting = self._waiting
        for queue in list(self._seen):
            seen = self._seen[queue]
            for owner in [o for o, at in seen.items() if at < oldest]:
                if waiting is None or not waiting(queue, owner):
                    del seen[owner]
            if not seen:
                del self._seen[queue]
