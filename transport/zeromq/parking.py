"""The receives waiting at the broker (long polls), indexed so that no client's number
of them, nor the order their timeouts end in, costs the other clients anything.

* by (queue, group), oldest first: a message is matched to the receives of its own
  group, never by looking at every waiting receive;
* by owner (a client): bounded per client, and dropped at once when it goes away;
* by deadline, in a heap: timeouts end in O(log n).

A receive that leaves unserved is only marked done (lazy deletion): done ones are
dropped from the ends of their list at once, and a list or the heap is rebuilt when
done entries outnumber the live ones, so every operation is O(log n) amortized.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

__all__ = ["Parking", "Waiter"]


class Waiter:
    """A long-polling RECEIVE (or SETTLE_RECEIVE) parked at the broker."""

    __slots__ = (
        "deadline", "done", "group", "identity", "lost", "max_messages", "owner", "queue", "rid",
    )  # fmt: skip

    def __init__(
        self,
        identity: bytes,
        owner: bytes,
        rid: int,
        queue: str,
        group: str | None,
        max_messages: int,
        deadline: float | None,
        lost: list[int] | None = None,
    ) -> None:
        self.identity = identity
        self.lost = lost  # a SETTLE_RECEIVE's lost leases, answered with its grants
        self.owner = owner
        self.rid = rid
        self.queue = queue
        self.group = group
        self.max_messages = max_messages
        self.deadline = deadline
        self.done = False


class _WaitList:
    """The receives parked on one (queue, group), oldest first, done ones included."""

    __slots__ = ("dead", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.dead = 0

    def discard(self, waiter: Waiter) -> None:
        """Account for ``waiter`` (already marked done) leaving the list."""
        waiters = self.waiters
        self.dead += 1
        while waiters and waiters[-1].done:
            waiters.pop()
            self.dead -= 1
        while waiters and waiters[0].done:
            waiters.popleft()
            self.dead -= 1
        if self.dead > len(waiters) // 2:
            self.waiters = deque(w for w in waiters if not w.done)
            self.dead = 0


class Parking:
    """The parked receives of one broker.

    Args:
        max_per_owner: receives one owner may have parked at once (``None``: no limit).
    """

    def __init__(self, max_per_owner: int | None) -> None:
        self.max_per_owner = max_per_owner
        self._lists: dict[tuple[str, str | None], _WaitList] = {}
        self._by_owner: dict[bytes, set[Waiter]] = {}
        self._count = 0
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._count

    def full(self, owner: bytes) -> bool:
        """Whether ``owner`` may park no more receives."""
        limit = self.max_per_owner
        return limit is not None and len(self._by_owner.get(owner, ())) >= limit

    def park(self, waiter: Waiter) -> None:
        """Add ``waiter`` behind the others of its queue and group."""
        key = (waiter.queue, waiter.group)
        waiting = self._lists.get(key)
        if waiting is None:
            waiting = self._lists[key] = _WaitList()
        waiting.waiters.append(waiter)
        self._by_owner.setdefault(waiter.owner, set()).add(waiter)
        self._count += 1
        if waiter.deadline is not None:
            deadlines = self._deadlines
            heapq.heappush(deadlines, (waiter.deadline, next(self._seq), waiter))
            if len(deadlines) > 2 * self._count + 1024:  # mostly served or dropped ones
                deadlines[:] = [e for e in deadlines if not e[2].done and e[0] == e[2].deadline]
                heapq.heapify(deadlines)

    def first(self, queue: str, group: str | None) -> Waiter | None:
        """The oldest live receive parked on ``(queue, group)``, if any."""
        key = (queue, group)
        waiting = self._lists.get(key)
        if waiting is None:
            return None
        waiters = waiting.waiters
        while waiters and waiters[0].done:
            waiters.popleft()
            waiting.dead -= 1
        if not waiters:
            del self._lists[key]
            return None
        return waiters[0]

    def served(self, waiter: Waiter) -> None:
        """Take out ``waiter``, just returned by ``first``, because it is being answered."""
        key = (waiter.queue, waiter.group)
        waiting = self._lists[key]
        waiting.waiters.popleft()
        if not waiting.waiters:
            del self._lists[key]
        self._unpark(waiter)

    def drop(self, waiter: Waiter) -> None:
        """Take out ``waiter`` unserved (its timeout ended or its client left)."""
        if waiter.done:
            return
        self._unpark(waiter)
        key = (waiter.queue, waiter.group)
        waiting = self._lists.get(key)
        if waiting is not None:
            waiting.discard(waiter)
            if not waiting.waiters:
                del self._lists[key]

    def waits_with_timeout(self, owner: bytes) -> bool:
        """Whether ``owner`` has a receive parked that will be answered (one with a
        timeout): answering it tells whether the owner is still there."""
        return any(w.deadline is not None for w in self._by_owner.get(owner, ()))

    def shorten(self, owner: bytes, deadline: float) -> None:
        """End the timeouts of ``owner``'s parked receives by ``deadline`` at the latest
        (those without a timeout are left alone)."""
        for waiter in self._by_owner.get(owner, ()):
            if waiter.deadline is not None and waiter.deadline > deadline:
                waiter.deadline = deadline  # the later heap entry finds it done: skipped
                heapq.heappush(self._deadlines, (deadline, next(self._seq), waiter))

    def waits_on(self, queue: str, owner: bytes) -> bool:
        """Whether ``owner`` has a receive parked on ``queue`` (any group's, not a
        mailbox's)."""
        return any(w.queue == queue and w.group is None for w in self._by_owner.get(owner, ()))

    def take_owner(self, owner: bytes) -> list[Waiter]:
        """Take out every receive ``owner`` has parked, to be answered now."""
        waiters = list(self._by_owner.get(owner, ()))
        for waiter in waiters:
            self.drop(waiter)
        return waiters

    def forget(self, owner: bytes) -> None:
        """Drop every receive ``owner`` has parked (it went away; nobody is answered)."""
        self.take_owner(owner)

    def expire(self, now: float) -> Iterator[Waiter]:
        """Drop and yield the receives whose timeout ended by ``now``."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if not waiter.done:
                self.drop(waiter)
                yield waiter

    def next_deadline(self) -> float | None:
        """When the next timeout may end (a dropped entry may make it early)."""
        return self._deadlines[0][0] if self._deadlines else None

    def _unpark(self, waiter: Waiter) -> None:
        waiter.done = True
        self._count -= 1
        parked = self._by_owner.get(waiter.owner)
        if parked is not None:
            parked.discard(waiter)
            if not parked:
                del self._by_owner[waiter.owner]
