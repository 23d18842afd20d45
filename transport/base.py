"""The transport contract: messages, leased deliveries and the abstract ``Transport``.

The semantics are those of Service Bus peek-lock, the strictest of the backends:

* ``send`` enqueues; FIFO per queue and per group.
* ``receive`` *leases* messages for the queue's lock duration; a leased message is
  invisible to other receivers until it is completed, abandoned, dead-lettered or
  its lease expires.
* An expired or abandoned lease means redelivery with ``delivery_count + 1``; after
  ``max_delivery_count`` deliveries the message moves to the dead-letter queue
  (``dead_letter_queue(queue)``) with the reason in its properties.
* ``group`` gives separate mailboxes on one queue (Service Bus sessions).
* Messages whose ``ttl`` elapsed are never delivered.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from .errors import LockLostError, StatsUnavailableError

if TYPE_CHECKING:
    from .stats import TransportStats

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "DEFAULT_LOCK_DURATION",
    "DEFAULT_MAX_DELIVERY_COUNT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Capabilities",
    "Delivery",
    "Message",
    "QueueCounts",
    "QueueOptions",
    "Transport",
    "dead_letter_queue",
    "is_dead_letter_queue",
]

DEAD_LETTER_SUFFIX = "/$deadletterqueue"
DEFAULT_LOCK_DURATION = 30.0
DEFAULT_MAX_DELIVERY_COUNT = 10
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

#: Property names recorded on a dead-lettered message (the Service Bus names).
DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


def dead_letter_queue(queue: str) -> str:
    """Return the name of ``queue``'s dead-letter queue (Service Bus convention)."""
    return queue + DEAD_LETTER_SUFFIX


def is_dead_letter_queue(queue: str) -> bool:
    """True if ``queue`` names a dead-letter queue."""
    return queue.lower().endswith(DEAD_LETTER_SUFFIX)


def _new_id(value: str | None) -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID (3x faster)
    return value if value else os.urandom(16).hex()


def _freeze_properties(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value) if value else {}


@attrs.frozen
class Message:
    """An immutable message.

    Args:
        body: the payload.
        id: unique message id; generated when omitted.
        group: mailbox (Service Bus session id) the message belongs to.
        correlation_id: free-form id linking a reply to its request.
        properties: small application properties (str, int, float, bool or None values).
        ttl: seconds after which an undelivered message expires and is never delivered.
    """

    body: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    id: str = attrs.field(default=None, converter=_new_id, kw_only=True)
    group: str | None = attrs.field(default=None, kw_only=True)
    correlation_id: str | None = attrs.field(default=None, kw_only=True)
    properties: dict[str, Any] = attrs.field(
        factory=dict, converter=_freeze_properties, kw_only=True
    )
    ttl: float | None = attrs.field(default=None, kw_only=True)

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, group={self.group!r}, "
            f"correlation_id={self.correlation_id!r}, body=<{len(self.body)} bytes>)"
        )


@attrs.define(eq=False)
class Delivery:
    """A leased message handed out by ``Transport.receive``.

    Attributes:
        message: the message.
        queue: the queue it was received from.
        delivery_count: 1 on the first delivery, +1 on every redelivery.
        locked_until: wall-clock time (``time.time()``) at which the lease ends.
        lock_token: the lease's identity, used by the backend.
        handle: backend-private data (e.g. the SDK's message object).
    """

    message: Message
    queue: str
    delivery_count: int
    locked_until: float
    lock_token: str
    handle: Any = attrs.field(default=None, repr=False)


@attrs.frozen
class QueueOptions:
    """Per-queue settings given to ``Transport.declare_queue``."""

    lock_duration: float = DEFAULT_LOCK_DURATION
    max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT
    #: Messages the queue may hold (waiting or leased); a send past it raises
    #: ``QueueFullError``. ``None``: no limit of its own.
    max_length: int | None = None

    @classmethod
    def given(
        cls,
        lock_duration: float | None,
        max_delivery_count: int | None,
        max_length: int | None = None,
    ) -> QueueOptions | None:
        """The settings a declare names, or None when it names none.

        A declare that names one setting names the default for the others it leaves out
        (``max_length`` None: no limit of its own).
        """
        if lock_duration is None and max_delivery_count is None and max_length is None:
            return None
        return cls(
            DEFAULT_LOCK_DURATION if lock_duration is None else float(lock_duration),
            DEFAULT_MAX_DELIVERY_COUNT if max_delivery_count is None else int(max_delivery_count),
            None if max_length is None else int(max_length),
        )

    @property
    def is_default(self) -> bool:
        """True for the default settings."""
        return self == QueueOptions()


@attrs.frozen
class QueueCounts:
    """How busy a queue is: messages ``waiting`` for a receiver and ``leased`` ones.

    Service Bus reports one figure (active messages, locked or not) as ``waiting``
    with ``leased`` 0.
    """

    waiting: int
    leased: int = 0

    @property
    def total(self) -> int:
        return self.waiting + self.leased


@attrs.frozen
class Capabilities:
    """What a backend can do beyond the abstract contract, declared as data.

    Callers (the engine) read this record instead of probing methods or the URL;
    every ability has a default implementation on ``Transport``, so a backend without
    it still works, only slower or less precisely.

    Attributes:
        settles_by_token: any connection may renew and settle a lease knowing only its
            lock token, so a process with its own connection (an engine's direct task
            worker) can take tasks while another (the engine) renews their leases and
            settles them if that process dies.
        settle_and_receive: ``settle_and_receive`` sends, completes and receives in one
            request (otherwise it is three calls).
        give_back: ``give_back`` returns a delivery without counting it (otherwise it
            abandons it, which counts).
        gone_after: seconds the service may leave every request unanswered before an
            engine counts it as gone for good and stops (its leases are gone with it);
            None: engines wait for it to come back (a cloud service).
        wake: ``wake`` ends this client's waiting receives at once, so an idle engine
            may wait long in each receive (cheap for the service) and still stop
            promptly; otherwise ``wake`` does nothing and receives wait briefly.
    """

    settles_by_token: bool = False
    settle_and_receive: bool = False
    give_back: bool = False
    gone_after: float | None = None
    wake: bool = False


class Transport(ABC):
    """A message transport with peek-lock semantics. Thread-safe; ``close()`` is idempotent."""

    #: What this backend can do beyond the contract (see ``Capabilities``).
    capabilities: Capabilities = Capabilities()

    #: Largest message body accepted by ``send``, in bytes.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: What the names of the mailbox groups this transport reads must start with: bound
    #: to its authenticated identity where the service enforces one (a zmq CURVE key),
    #: "" where it does not. ``Session`` starts its mailbox name with it.
    mailbox_prefix: str = ""

    @abstractmethod
    def declare_queue(
        self,
        name: str,
        *,
        lock_duration: float | None = None,
        max_delivery_count: int | None = None,
        grouped: bool = False,
        max_length: int | None = None,
    ) -> None:
        """Make sure ``name`` exists (idempotent).

        A queue's settings are fixed when it is created: declaring it again with other
        settings raises ``QueueSettingsConflict`` (the queue is unchanged); a setting
        left at ``None`` takes the existing queue's (or the default, when created).

        Args:
            lock_duration: seconds a received message stays leased (default
                ``DEFAULT_LOCK_DURATION``).
            max_delivery_count: deliveries after which a message is dead-lettered
                (default ``DEFAULT_MAX_DELIVERY_COUNT``).
            grouped: the queue holds per-group mailboxes and is received with ``group=``
                (a session-enabled queue on Service Bus; no effect on memory and zmq).
            max_length: messages the queue may hold (waiting or leased); a send past it
                raises ``QueueFullError`` (memory and zmq; Service Bus bounds a queue by
                its size quota instead and ignores it).
        """

    @abstractmethod
    def send(self, queue: str, messages: Message | Iterable[Message]) -> None:
        """Enqueue one message or a batch (the batch is sent as few round trips as possible)."""

    @abstractmethod
    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 1,
        timeout: float | None = None,
        group: str | None = None,
    ) -> list[Delivery]:
        """Lease up to ``max_messages`` messages.

        Returns as soon as at least one message is available, or an empty list after
        ``timeout`` seconds (``None`` waits indefinitely, ``0`` polls). With ``group``
        only that group's messages are received.
        """

    @abstractmethod
    def complete(self, delivery: Delivery) -> None:
        """Remove the message for good. Raises ``LockLostError`` if the lease is gone."""

    def complete_many(self, deliveries: Iterable[Delivery]) -> None:
        """Complete several deliveries, in one round trip where the backend can.

        Every delivery is attempted; if some leases were lost, ``LockLostError`` is
        raised afterwards (the others are completed).
        """
        lost: LockLostError | None = None
        for delivery in deliveries:
            try:
                self.complete(delivery)
            except LockLostError as exc:
                lost = lost or exc
        if lost is not None:
            raise lost

    def send_and_complete(
        self, queue: str, messages: Message | Iterable[Message], deliveries: Iterable[Delivery]
    ) -> None:
        """Send ``messages``, then complete ``deliveries``: an engine's replies and the
        leases of the tasks they answer, in one round trip where the backend can.

        Nothing is completed if the send fails. Lost leases raise ``LockLostError``
        after the others are completed.
        """
        self.send(queue, messages)
        self.complete_many(deliveries)

    @abstractmethod
    def abandon(self, delivery: Delivery) -> None:
        """Give the message back for redelivery (``delivery_count + 1``)."""

    def give_back(self, delivery: Delivery) -> None:
        """Give back a message nobody acted on, without counting the delivery.

        For deliveries that were received but never started (e.g. held by a task
        worker that was killed), so that being near a failure does not use up a
        task's retries. Backends that cannot uncount a delivery (``capabilities.give_back``
        False) abandon it.
        """
        self.abandon(delivery)

    def settle_and_receive(
        self,
        queue: str,
        messages: Message | Iterable[Message],
        deliveries: Iterable[Delivery],
        receive_queue: str,
        *,
        max_messages: int = 1,
        timeout: float | None = None,
        group: str | None = None,
    ) -> tuple[list[Delivery], list[int]]:
        """Send ``messages`` to ``queue``, complete ``deliveries``, then receive.

        One request where the backend can (``capabilities.settle_and_receive``); here,
        three calls. Returns the deliveries received from ``receive_queue`` (``group``)
        and the indexes of ``deliveries`` whose lease was already lost (not completed;
        the messages were sent all the same).
        """
        batch = as_message_list(messages)
        if batch:
            self.send(queue, batch)
        lost = []
        for index, delivery in enumerate(deliveries):
            try:
                self.complete(delivery)
            except LockLostError:
                lost.append(index)
        received = self.receive(
            receive_queue, max_messages=max_messages, timeout=timeout, group=group
        )
        return received, lost

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str, description: str = "") -> None:
        """Move the message to the dead-letter queue, recording ``reason``."""

    @abstractmethod
    def renew_lock(self, delivery: Delivery) -> float:
        """Extend the lease by the lock duration; updates and returns ``locked_until``."""

    def queue_counts(self, queue: str) -> QueueCounts:
        """Messages waiting in and leased from ``queue`` (what an autoscaler sizes by).

        Raises:
            TransportError: the backend cannot tell (the default).
        """
        from .errors import TransportError

        raise TransportError(f"{type(self).__name__} does not report queue counts")

    def stats(self) -> TransportStats:
        """What the transport can tell about its queues, engines and mailboxes.

        The one place where a backend says what it knows (``transport/stats.py``);
        what it cannot tell is left ``None`` and named in the record's ``notes``.

        Raises:
            StatsUnavailableError: the backend cannot report statistics at all.
        """
        raise StatsUnavailableError(f"{type(self).__name__} cannot report statistics")

    def report_engine(self, report: Mapping[str, Any]) -> None:
        """Tell the broker who this engine is and what it does (see ``stats.EngineTable``).

        Cheap and never blocking: backends that carry it keep the latest report and pass
        it on with their own traffic; the default drops it.
        """
        del report  # this backend cannot carry it

    def wake(self) -> None:
        """End this client's receives that are waiting now, early and empty, where
        ``capabilities.wake`` says so; the default does nothing."""
        return  # receives here wait briefly (``Capabilities.wake`` is False)

    @abstractmethod
    def close(self) -> None:
        """Release connections and threads. Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_max_messages(max_messages: int) -> None:
    """Reject a ``receive`` batch size below one (the same error on every backend)."""
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")


def as_message_list(messages: Message | Iterable[Message]) -> list[Message]:
    """Normalise the ``send`` argument to a list of ``Message``."""
    if isinstance(messages, Message):
        return [messages]
    result = list(messages)
    for item in result:
        if not isinstance(item, Message):
            raise TypeError(f"send() takes Message objects, got {type(item).__name__}")
    return result
