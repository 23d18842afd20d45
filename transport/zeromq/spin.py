"""When the broker's busy-polling pays: how soon each connection speaks after an answer.

After a turn that moved messages the broker polls its socket for up to ``spin``
seconds before it sleeps (``broker.py``): a request that comes within that time is
picked up without waking the loop's thread, which on a virtual machine costs tens of
microseconds of latency. A spin that finds nothing costs the whole ``spin`` of CPU.
Whether the next request comes soon depends on who was just answered: a task worker
handed a no-op task answers in ~100 µs, one handed a 10 ms task in 10 ms; a client
handed a result settles it at once, but after the acknowledgement of a task it sent it
may be silent until that task's result comes. ``ReplyGaps`` keeps, per connection and
kind of answer (one that delivered messages, any other), a running estimate of the
time from the broker's answer to the connection's next request, and the broker spins
only after a turn that answered a connection that usually speaks again within the
spin after such an answer. Sequential 10 ms tasks then cost the broker ~40 % less CPU,
while a no-op round trip keeps its spin.

A connection not seen yet counts as quick (the broker spins, as it always did).
"""

from __future__ import annotations

__all__ = ["GAP_WEIGHT", "MAX_CONNECTIONS_KEPT", "ReplyGaps"]

#: weight of the newest gap in a connection's running estimate (the rest: the old one)
GAP_WEIGHT = 0.25
#: connections remembered at most: a client that keeps reconnecting under new routing
#: ids must not grow the broker's memory; past this, everything is forgotten at once
#: (estimates are back within a few answers; meanwhile the broker spins, as before)
MAX_CONNECTIONS_KEPT = 100_000


class ReplyGaps:
    """Per connection (ZeroMQ routing identity): seconds from an answer to its next request.

    ``owner_length``: how many leading bytes of an identity name its client (the broker
    forgets a client's connections together); ``limit``: connections remembered at most.
    """

    def __init__(self, spin: float, owner_length: int, limit: int = MAX_CONNECTIONS_KEPT) -> None:
        self.spin = spin
        self._owner_length = owner_length
        self._limit = limit
        #: identity -> (when it was last answered, whether that answer delivered messages)
        self._answered: dict[bytes, tuple[float, bool]] = {}
        #: identity -> running estimate, seconds, after answers that delivered / did not
        self._gap: dict[bool, dict[bytes, float]] = {True: {}, False: {}}

    def spoke(self, identity: bytes, now: float) -> None:
        """A request from ``identity`` arrived at ``now``."""
        answered = self._answered.pop(identity, None)
        if answered is None:
            return
        at, delivered = answered
        gaps = self._gap[delivered]
        gap = max(0.0, now - at)
        old = gaps.get(identity)
        gaps[identity] = gap if old is None else old + (gap - old) * GAP_WEIGHT

    def answered(self, identity: bytes, now: float, delivered: bool) -> bool:
        """The broker sent ``identity`` an answer at ``now`` (``delivered``: with messages);
        True if it usually speaks again within the spin after such an answer (so a spin
        after this turn is likely to find its request)."""
        answered, gaps = self._answered, self._gap[delivered]
        new = identity not in answered and identity not in gaps
        if new and (len(answered) >= self._limit or len(gaps) >= self._limit):
            self.clear()  # before it is written: what is kept stays consistent
        answered[identity] = (now, delivered)
        return gaps.get(identity, 0.0) < self.spin

    def clear(self) -> None:
        """Forget every connection."""
        self._answered.clear()
        for gaps in self._gap.values():
            gaps.clear()

    def estimate(self, identity: bytes, delivered: bool) -> float | None:
        """The running estimate for ``identity`` after answers that ``delivered`` messages
        or not (None: not measured yet)."""
        return self._gap[delivered].get(identity)

    def forget(self, owner: bytes) -> None:
        """Drop every connection of the client ``owner`` (it went away)."""
        n = self._owner_length
        for table in (self._answered, *self._gap.values()):
            for identity in [i for i in table if i[:n] == owner]:
                del table[identity]

    def __len__(self) -> int:
        """Connections with something remembered."""
        return len(self._answered.keys() | self._gap[True].keys() | self._gap[False].keys())
