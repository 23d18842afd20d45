"""The peek-lock queue state machine shared by the in-memory backend and the ZeroMQ broker.

``QueueStore`` is single-threaded: its owner serialises access (a lock in the
memory backend, the event loop in the broker). Time is passed in by the caller so
that the rules are easy to test and to replay from a journal.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterable
from typing import Any, Protocol

import attrs

from .base import (
    DEAD_LETTER_DESCRIPTION,
    DEAD_LETTER_REASON,
    MAX_DELIVERY_REASON,
    Message,
    QueueOptions,
    dead_letter_queue,
    is_dead_letter_queue,
)
from .errors import LockLostError, QueueFullError, QueueNotFoundError, QueueSettingsConflict
from .stats import LATENCY_BUCKETS, MailboxStats, QueueStats, latency_bucket

__all__ = ["MESSAGE_OVERHEAD", "Grant", "QueueStore", "StoreListener"]

#: Bytes a held message counts for beyond its body (its record and index entries), so
#: that a byte limit also bounds floods of tiny messages.
MESSAGE_OVERHEAD = 256

_ANY_GROUP = object()


class _Entry:
    __slots__ = ("delivery_count", "enqueued_at", "message", "seq")

    def __init__(self, message: Message, seq: int, enqueued_at: float, delivery_count: int = 0):
        self.message = message
        self.seq = seq
        self.enqueued_at = enqueued_at
        self.delivery_count = delivery_count

    def expired(self, now: float) -> bool:
        ttl = self.message.ttl
        return ttl is not None and now >= self.enqueued_at + ttl

    def __lt__(self, other: _Entry) -> bool:
        return self.seq < other.seq


class _Queue:
    __slots__ = (
        "completed", "dead_lettered", "groups", "held", "latency", "latency_sum", "name",
        "options", "redelivered", "sent", "size",
    )  # fmt: skip

    def __init__(self, name: str, options: QueueOptions):
        self.name = name
        self.options = options
        self.groups: dict[str | None, list[_Entry]] = {}
        self.size = 0  # waiting
        self.held = 0  # waiting or leased
        # counters for Transport.stats() (transport/stats.py)
        self.sent = 0
        self.completed = 0
        self.dead_lettered = 0
        self.redelivered = 0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def push(self, entry: _Entry) -> None:
        # (seq, entry) tuples: heap comparisons stay in C instead of calling _Entry.__lt__
        heapq.heappush(self.groups.setdefault(entry.message.group, []), (entry.seq, entry))
        self.size += 1

    def pop(self, group: Any) -> _Entry | None:
        if group is _ANY_GROUP:
            best_key, best = None, None
            for key, heap in self.groups.items():
                if best is None or heap[0][0] < best.seq:
                    best_key, best = key, heap[0][1]
            if best is None:
                return None
            key = best_key
        else:
            key = group
            if key not in self.groups:
                return None
        heap = self.groups[key]
        entry = heapq.heappop(heap)[1]
        if not heap:
            del self.groups[key]
        self.size -= 1
        return entry


@attrs.define(slots=True)
class _Lease:
    token: str
    queue: _Queue
    entry: _Entry
    locked_until: float
    owner: Any


@attrs.frozen(slots=True)
class Grant:
    """A lease handed out by ``QueueStore.take``."""

    message: Message
    queue: str
    delivery_count: int
    locked_until: float
    token: str


class StoreListener(Protocol):
    """Hooks called on every state change (the durable broker journals them)."""

    def on_put(self, queue: str, entry_seq: int, message: Message, enqueued_at: float) -> None: ...
    def on_remove(self, queue: str, entry_seq: int) -> None: ...
    def on_delivery(self, queue: str, entry_seq: int, delivery_count: int) -> None: ...


def _conflicts(declared: QueueOptions, existing: QueueOptions) -> bool:
    """A declare conflicts when a setting it names differs (``max_length`` None names none)."""
    if (declared.lock_duration, declared.max_delivery_count) != (
        existing.lock_duration,
        existing.max_delivery_count,
    ):
        return True
    return declared.max_length is not None and declared.max_length != existing.max_length


def _describe(options: QueueOptions) -> str:
    text = (
        f"lock_duration={options.lock_duration:g}, max_delivery_count={options.max_delivery_count}"
    )
    return text if options.max_length is None else f"{text}, max_length={options.max_length}"


class QueueStore:
    """Queues with leases, redelivery, dead-lettering, groups and TTL.

    Attributes:
        max_queues: queues (not counting dead-letter queues) that may be declared;
            one more raises ``QueueFullError`` (``None``: no limit).
        max_bytes: bytes of messages the store may hold, each counted as its body
            plus ``MESSAGE_OVERHEAD``; a ``put`` past it raises ``QueueFullError``
            (``None``: no limit). Dead-lettering never counts against it.
        held_bytes: bytes of messages held now, counted the same way.
    """

    def __init__(self, listener: StoreListener | None = None) -> None:
        self._queues: dict[str, _Queue] = {}
        self._leases: dict[str, _Lease] = {}
        #: leases held per owner (owners of none are absent)
        self._held_by: dict[Any, int] = {}
        self._lease_heap: list[tuple[float, str]] = []
        self._seq = itertools.count(1)
        self._listener = listener
        #: (queue, group) pairs that gained deliverable messages since the owner last looked
        self.ready: set[tuple[str, str | None]] = set()
        self.expired_count = 0
        self.max_queues: int | None = None
        self.max_bytes: int | None = None
        self.held_bytes = 0
        self._queue_count = 0

    # -- queues --------------------------------------------------------------------------
    def declare(self, name: str, options: QueueOptions | None = None) -> bool:
        """Create ``name`` (and its dead-letter queue) unless it exists. True if created.

        ``options=None`` asks for the queue whatever its settings (the defaults when it
        is created here).

        Raises:
            QueueSettingsConflict: the queue exists with settings other than ``options``.
        """
        if is_dead_letter_queue(name):
            raise QueueNotFoundError(f"cannot declare a dead-letter queue directly: {name!r}")
        existing = self._queues.get(name)
        if existing is not None:
            if options is not None and _conflicts(options, existing.options):
                raise QueueSettingsConflict(
                    f"queue {name!r} exists with {_describe(existing.options)}; declared "
                    f"again with {_describe(options)}"
                )
            return False
        if options is None:
            options = QueueOptions()
        if self.max_queues is not None and self._queue_count >= self.max_queues:
            raise QueueFullError(
                f"cannot declare {name!r}: the broker holds its limit of {self.max_queues} queues"
            )
        self._queue_count += 1
        self._queues[name] = _Queue(name, options)
        dlq_options = QueueOptions(options.lock_duration, max_delivery_count=2**31)
        self._queues[dead_letter_queue(name)] = _Queue(dead_letter_queue(name), dlq_options)
        return True

    def queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise QueueNotFoundError(f"unknown queue {name!r}; declare it first") from None

    def queue_options(self, name: str) -> QueueOptions | None:
        """The settings of ``name``, None if it was not declared."""
        q = self._queues.get(name)
        return None if q is None else q.options

    def has_queue(self, name: str) -> bool:
        return name in self._queues

    def depth(self, name: str) -> int:
        """Messages waiting (not leased) in ``name``."""
        return self.queue(name).size

    def counts(self, name: str) -> tuple[int, int]:
        """``(waiting, leased)`` messages of ``name``."""
        q = self.queue(name)
        return q.size, sum(lease.queue is q for lease in self._leases.values())

    def queue_names(self) -> list[str]:
        return list(self._queues)

    # -- messages ------------------------------------------------------------------------
    def put(self, queue: str, messages: Iterable[Message], now: float) -> None:
        """Enqueue ``messages``, all or none.

        Raises:
            QueueNotFoundError: ``queue`` was not declared.
            QueueFullError: the batch would take the queue past its ``max_length`` or
                the store past ``max_bytes``; nothing is enqueued.
        """
        q = self.queue(queue)
        batch = messages if isinstance(messages, list) else list(messages)
        max_length = q.options.max_length
        if max_length is not None and q.held + len(batch) > max_length:
            raise QueueFullError(
                f"queue {queue!r} is full: it holds {q.held} message(s) of at most "
                f"{max_length}; {len(batch)} more refused"
            )
        if self.max_bytes is not None:
            size = sum(len(message.body) for message in batch) + MESSAGE_OVERHEAD * len(batch)
            if self.held_bytes + size > self.max_bytes:
                raise QueueFullError(
                    f"the broker is full: it holds {self.held_bytes} bytes of messages, its "
                    f"limit is {self.max_bytes}; {len(batch)} message(s) to {queue!r} refused"
                )
        sent = q.sent
        for message in batch:
            self._push(q, _Entry(message, next(self._seq), now), new=True)
            sent += 1
        q.sent = sent

    def restore(
        self, queue: str, message: Message, seq: int, enqueued_at: float, delivery_count: int
    ) -> None:
        """Re-insert a journaled message (durable broker recovery)."""
        q = self.queue(queue)
        q.push(_Entry(message, seq, enqueued_at, delivery_count))
        self._held(q, message, 1)
        self._seq = itertools.count(max(seq + 1, next(self._seq)))
        self.ready.add((queue, message.group))

    def _push(self, q: _Queue, entry: _Entry, *, new: bool) -> None:
        q.push(entry)
        self.ready.add((q.name, entry.message.group))
        if new:
            q.held += 1  # _held, inlined: this is the broker's hot path
            self.held_bytes += len(entry.message.body) + MESSAGE_OVERHEAD
            if self._listener is not None:
                self._listener.on_put(q.name, entry.seq, entry.message, entry.enqueued_at)

    def _held(self, q: _Queue, message: Message, sign: int) -> None:
        """Count a message in (``sign=1``) or out (``-1``) of ``q`` and the byte total."""
        q.held += sign
        self.held_bytes += sign * (len(message.body) + MESSAGE_OVERHEAD)

    def take(
        self,
        queue: str,
        *,
        max_messages: int,
        now: float,
        group: str | None = None,
        any_group: bool = True,
        owner: Any = None,
    ) -> list[Grant]:
        """Lease up to ``max_messages`` deliverable messages.

        ``group`` selects one mailbox; with ``group=None`` and ``any_group`` the oldest
        message of any group is taken.
        """
        q = self.queue(queue)
        selector = _ANY_GROUP if (group is None and any_group) else group
        grants: list[Grant] = []
        while len(grants) < max_messages:
            entry = q.pop(selector)
            if entry is None:
                break
            if entry.expired(now):
                self.expired_count += 1
                self._removed(q, entry)
                continue
            entry.delivery_count += 1
            token = os.urandom(16).hex()  # as unguessable as uuid4, a quarter of the cost
            locked_until = now + q.options.lock_duration
            self._leases[token] = _Lease(token, q, entry, locked_until, owner)
            heapq.heappush(self._lease_heap, (locked_until, token))
            if self._listener is not None:
                self._listener.on_delivery(q.name, entry.seq, entry.delivery_count)
            grants.append(Grant(entry.message, q.name, entry.delivery_count, locked_until, token))
        if grants and owner is not None:
            self._held_by[owner] = self._held_by.get(owner, 0) + len(grants)
        return grants

    def holds_leases(self, owner: Any) -> bool:
        """Whether ``owner`` holds a lease now (O(1))."""
        return owner in self._held_by

    def _unheld(self, lease: _Lease) -> None:
        """Count ``lease``, just taken out of ``_leases``, out of its owner's."""
        owner = lease.owner
        if owner is None:
            return
        left = self._held_by[owner] - 1
        if left:
            self._held_by[owner] = left
        else:
            del self._held_by[owner]

    def _lease(self, token: str, now: float) -> _Lease:
        lease = self._leases.get(token)
        if lease is None:
            raise LockLostError("the lock was lost: the delivery was already settled or expired")
        if lease.locked_until <= now:
            self._release(lease, now)
            raise LockLostError("the lock was lost: the lease expired before it was settled")
        return lease

    def complete(self, token: str, now: float) -> None:
        lease = self._lease(token, now)
        del self._leases[token]
        self._unheld(lease)
        q = lease.queue
        q.completed += 1
        waited = now - lease.entry.enqueued_at
        q.latency_sum += waited
        q.latency[latency_bucket(waited)] += 1
        self._removed(q, lease.entry)

    def abandon(self, token: str, now: float) -> None:
        lease = self._lease(token, now)
        self._release(lease, now)

    def give_back(self, token: str, now: float) -> None:
        """Abandon a delivery that was never acted on: it does not count as a delivery."""
        lease = self._lease(token, now)
        entry = lease.entry
        entry.delivery_count = max(0, entry.delivery_count - 1)
        if self._listener is not None:  # a durable broker's journal keeps the lower count
            self._listener.on_delivery(lease.queue.name, entry.seq, entry.delivery_count)
        self._release(lease, now)

    def dead_letter(self, token: str, reason: str, description: str, now: float) -> None:
        lease = self._lease(token, now)
        del self._leases[token]
        self._unheld(lease)
        self._to_dlq(lease.queue, lease.entry, reason, description, now)

    def renew(self, token: str, now: float) -> float:
        lease = self._lease(token, now)
        lease.locked_until = now + lease.queue.options.lock_duration
        heapq.heappush(self._lease_heap, (lease.locked_until, token))
        return lease.locked_until

    def purge_expired(self, now: float) -> int:
        """Drop the expired messages at the head of every group; return how many.

        ``take`` skips expired messages, but a mailbox nobody reads (its client died)
        is never taken from: its owner calls this now and then so that such a group
        empties once its messages' TTL has passed. A group is FIFO and usually holds
        messages of one TTL, so looking at its head is enough; a message behind a
        longer-lived one goes when that one does.
        """
        purged = 0
        for q in self._queues.values():
            stale = [key for key, heap in q.groups.items() if heap[0][1].expired(now)]
            for key in stale:
                heap = q.groups[key]
                while heap and heap[0][1].expired(now):
                    entry = heapq.heappop(heap)[1]
                    q.size -= 1
                    self._removed(q, entry)
                    purged += 1
                if not heap:
                    del q.groups[key]
        self.expired_count += purged
        return purged

    def lease_place(self, token: str) -> tuple[str, str | None] | None:
        """``(queue, group)`` of the message a lease holds, None if there is no such lease."""
        lease = self._leases.get(token)
        return None if lease is None else (lease.queue.name, lease.entry.message.group)

    def lease_owner(self, token: str) -> Any:
        lease = self._leases.get(token)
        return None if lease is None else lease.owner

    # -- lease expiry ---------------------------------------------------------------------
    def expire(self, now: float) -> float | None:
        """Release every lease that ended by ``now``; return the next lease deadline."""
        heap = self._lease_heap
        while heap:
            deadline, token = heap[0]
            lease = self._leases.get(token)
            if lease is None or lease.locked_until != deadline:
                heapq.heappop(heap)  # settled, or superseded by a renewal
                continue
            if deadline > now:
                return deadline
            heapq.heappop(heap)
            self._release(lease, now)
        return None

    def release_owner(self, owner: Any, now: float) -> int:
        """Release at once every lease held by ``owner`` (a consumer that went away)."""
        if owner not in self._held_by:
            return 0
        tokens = [t for t, lease in self._leases.items() if lease.owner == owner]
        for token in tokens:
            self._release(self._leases[token], now)
        return len(tokens)

    # -- statistics -----------------------------------------------------------------------
    def queue_stats(self) -> tuple[list[QueueStats], list[MailboxStats]]:
        """Every queue's counts (dead-letter queues folded into their queue's record) and
        the groups holding messages. O(queues + leases + groups): for status requests."""
        leased: dict[str, int] = {}
        for lease in self._leases.values():
            leased[lease.queue.name] = leased.get(lease.queue.name, 0) + 1
        queues, mailboxes = [], []
        for name, q in self._queues.items():
            if is_dead_letter_queue(name):
                continue
            dlq = self._queues.get(dead_letter_queue(name))
            named = [(g, len(heap)) for g, heap in q.groups.items() if g is not None]
            mailboxes.extend(MailboxStats(name, g, depth) for g, depth in named)
            queues.append(
                QueueStats(
                    name=name,
                    depth=q.size,
                    leased=leased.get(name, 0),
                    dead_letter=dlq.size if dlq is not None else 0,
                    groups=len(named),
                    sent=q.sent,
                    completed=q.completed,
                    dead_lettered=q.dead_lettered,
                    redelivered=q.redelivered,
                    latency_buckets=tuple(q.latency),
                    latency_sum=q.latency_sum,
                )
            )
        return queues, mailboxes

    def _release(self, lease: _Lease, now: float) -> None:
        if self._leases.pop(lease.token, None) is not None:
            self._unheld(lease)
        entry = lease.entry
        lease.queue.redelivered += 1
        if entry.delivery_count >= lease.queue.options.max_delivery_count:
            self._to_dlq(
                lease.queue,
                entry,
                MAX_DELIVERY_REASON,
                f"delivered {entry.delivery_count} times "
                f"(max_delivery_count={lease.queue.options.max_delivery_count})",
                now,
            )
        else:
            self._push(lease.queue, entry, new=False)

    def _to_dlq(self, q: _Queue, entry: _Entry, reason: str, description: str, now: float) -> None:
        self._removed(q, entry)
        q.dead_lettered += 1
        message = entry.message
        props = dict(message.properties)
        props[DEAD_LETTER_REASON] = reason
        props[DEAD_LETTER_DESCRIPTION] = description
        body = message.body
        if type(body) is not bytes:  # the zmq broker keeps a large body as its frame
            body = bytes(body)
        dead = attrs.evolve(message, body=body, properties=props, ttl=None)
        dlq = self._queues.get(dead_letter_queue(q.name))
        if dlq is not None:  # a message already in a DLQ is dropped rather than looped
            self._push(dlq, _Entry(dead, next(self._seq), now), new=True)

    def _removed(self, q: _Queue, entry: _Entry) -> None:
        self._held(q, entry.message, -1)
        if self._listener is not None:
            self._listener.on_remove(q.name, entry.seq)
