"""The transport exception tree.

Every backend maps its library's exceptions into these, once, at its edge:
callers never see ``zmq.Again`` or ``ServiceBusError``.
"""

from __future__ import annotations

__all__ = [
    "ConnectionLostError",
    "JournalError",
    "LockLostError",
    "MessageTooLargeError",
    "PermissionDeniedError",
    "QueueFullError",
    "QueueNotFoundError",
    "QueueSettingsConflict",
    "StatsUnavailableError",
    "TransportClosedError",
    "TransportError",
    "TransportTimeoutError",
    "UnknownTransportError",
]


class TransportError(Exception):
    """Base class of every error raised by a transport."""


class UnknownTransportError(TransportError, ValueError):
    """The URL names no registered transport scheme."""


class LockLostError(TransportError):
    """The delivery's lease expired or was already settled; the message may be redelivered."""


class MessageTooLargeError(TransportError, ValueError):
    """A message exceeds the transport's maximum message size."""

    def __init__(self, size: int, limit: int, what: str = "message") -> None:
        super().__init__(f"{what} of {size} bytes exceeds the transport limit of {limit} bytes")
        self.size = size
        self.limit = limit


class TransportClosedError(TransportError):
    """The transport was closed; no further operations are possible."""


class ConnectionLostError(TransportError):
    """The connection to the broker or service was lost and could not be re-established."""


class QueueNotFoundError(TransportError, LookupError):
    """The named queue was not declared (or does not exist on the service)."""


class JournalError(TransportError):
    """The durable broker's journal lost data or cannot be read: the broker refuses to
    start on it rather than serve an empty or partial state.

    Attributes:
        lost: messages lost if the journal is set aside (``None`` when unknown).
    """

    def __init__(self, text: str, lost: int | None = None) -> None:
        super().__init__(text)
        self.lost = lost


class QueueFullError(TransportError):
    """A send or declare was refused for lack of room: the queue is at its
    ``max_length``, or the broker at its byte or queue-count limit (like RabbitMQ's
    flow control or Service Bus's QuotaExceeded). Nothing of the refused request was
    stored; try again once consumers have made room."""


class TransportTimeoutError(TransportError, TimeoutError):
    """An operation on the broker or service did not complete in time."""


class StatsUnavailableError(TransportError, NotImplementedError):
    """The transport cannot report statistics (``Transport.stats``)."""


class QueueSettingsConflict(TransportError, ValueError):
    """A queue was declared again with settings other than those it has.

    Like RabbitMQ's ``PRECONDITION_FAILED``: the existing queue is unchanged, and a
    declare that names no settings never conflicts.
    """


class PermissionDeniedError(TransportError, PermissionError):
    """The broker or service refused the request: this identity's role does not allow it."""
