"""In-process transport: ``memory://NAME``.

Every ``MemoryTransport`` opened with the same name in one process shares one
``QueueStore``, so a session and in-process engines (threads) talk through it.
It is a first-class backend with the full contract, used by the fast unit tests.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Capabilities,
    Delivery,
    Message,
    QueueCounts,
    QueueOptions,
    Transport,
    as_message_list,
    check_max_messages,
)
from .errors import MessageTooLargeError, TransportClosedError
from .stats import EngineTable, TransportStats
from .store import QueueStore

__all__ = ["MemoryTransport"]


class _SharedBroker:
    """One named in-process broker: a store, a lock and a condition for waiting receivers."""

    def __init__(self) -> None:
        self.store = QueueStore()
        self.engines = EngineTable()
        self.started = time.time()
        self.next_purge = 0.0  # time.time() of the next sweep of expired messages
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)


_brokers: weakref.WeakValueDictionary[str, _SharedBroker] = weakref.WeakValueDictionary()
_brokers_lock = threading.Lock()


def _shared_broker(name: str) -> _SharedBroker:
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _SharedBroker()
            _brokers[name] = broker
        return broker


class MemoryTransport(Transport):
    """Transport over an in-process broker shared by name.

    Args:
        url: ``memory://NAME``; all transports with the same NAME share queues while
            at least one of them is open.
        max_message_size: largest accepted body in bytes (default 1 MiB).
    """

    #: the store gives back without counting; everything else is the contract's default
    capabilities = Capabilities(give_back=True)

    def __init__(
        self,
        url: str = "memory://default",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        **_options: Any,
    ) -> None:
        parts = urlsplit(url)
        self.name = (parts.netloc + parts.path) or "default"
        self.url = url
        self.max_message_size = max_message_size
        self._broker = _shared_broker(self.name)
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryTransport({self.url!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed")

    def declare_queue(
        self,
        name: str,
        *,
        lock_duration: float | None = None,
        max_delivery_count: int | None = None,
        grouped: bool = False,
        max_length: int | None = None,
    ) -> None:
        self._check_open()
        options = QueueOptions.given(lock_duration, max_delivery_count, max_length)
        with self._broker.lock:
            self._broker.store.declare(name, options)

    def send(self, queue: str, messages: Message | Iterable[Message]) -> None:
        self._check_open()
        batch = as_message_list(messages)
        for message in batch:
            if len(message.body) > self.max_message_size:
                raise MessageTooLargeError(len(message.body), self.max_message_size)
        with self._broker.changed:
            now = time.time()
            if now >= self._broker.next_purge:  # unread mailboxes must not grow forever
                self._broker.store.purge_expired(now)
                self._broker.next_purge = now + 1.0
            self._broker.store.put(queue, batch, now)
            self._broker.store.ready.clear()
            self._broker.changed.notify_all()

    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 1,
        timeout: float | None = None,
        group: str | None = None,
    ) -> list[Delivery]:
        self._check_open()
        check_max_messages(max_messages)
        give_up = None if timeout is None else time.monotonic() + timeout
        broker = self._broker
        with broker.changed:
            while True:
                now = time.time()
                store = broker.store
                next_expiry = store.expire(now)
                grants = store.take(
                    queue, max_messages=max_messages, now=now, group=group, owner=id(self)
                )
                if grants:
                    return [
                        Delivery(g.message, g.queue, g.delivery_count, g.locked_until, g.token)
                        for g in grants
                    ]
                wait = None if give_up is None else give_up - time.monotonic()
                if wait is not None and wait <= 0:
                    return []
                if next_expiry is not None:
                    until_expiry = max(next_expiry - now, 0.001)
                    wait = until_expiry if wait is None else min(wait, until_expiry)
                # Poll the closed flag at least every half second.
                wait = 0.5 if wait is None else min(wait, 0.5)
                broker.changed.wait(wait)
                self._check_open()

    def _settle(self, action: str, delivery: Delivery, *args: Any) -> Any:
        self._check_open()
        with self._broker.changed:
            result = getattr(self._broker.store, action)(delivery.lock_token, *args, time.time())
            if self._broker.store.ready:
                self._broker.store.ready.clear()
                self._broker.changed.notify_all()
            return result

    def complete(self, delivery: Delivery) -> None:
        self._settle("complete", delivery)

    def abandon(self, delivery: Delivery) -> None:
        self._settle("abandon", delivery)

    def give_back(self, delivery: Delivery) -> None:
        self._settle("give_back", delivery)

    def queue_counts(self, queue: str) -> QueueCounts:
        self._check_open()
        with self._broker.lock:
            return QueueCounts(*self._broker.store.counts(queue))

    def dead_letter(self, delivery: Delivery, reason: str, description: str = "") -> None:
        self._settle("dead_letter", delivery, reason, description)

    def renew_lock(self, delivery: Delivery) -> float:
        delivery.locked_until = self._settle("renew", delivery)
        return delivery.locked_until

    def report_engine(self, report: Mapping[str, Any]) -> None:
        with self._broker.lock:
            self._broker.engines.update(report, time.time())

    def stats(self) -> TransportStats:
        """The shared in-process broker's queues, mailboxes and engines."""
        self._check_open()
        broker = self._broker
        with broker.lock:
            now = time.time()
            queues, mailboxes = broker.store.queue_stats()
            engines = broker.engines.stats(now)
        return TransportStats(
            transport="memory",
            url=self.url,
            queues=queues,
            engines=engines,
            mailboxes=mailboxes,
            uptime=now - broker.started,
            notes=("in-process broker: connections and requests are not counted",),
            taken_at=now,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._broker.changed:
            self._broker.changed.notify_all()
