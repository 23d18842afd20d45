"""Pluggable message transports, chosen by URL.

>>> from realtime_batch.transport import open_transport, Message
>>> with open_transport("memory://demo") as t:
...     t.declare_queue("tasks")
...     t.send("tasks", Message(b"hello"))
...     [d] = t.receive("tasks", timeout=1)
...     t.complete(d)

Backends are registered as lazy ``"module:Class"`` strings so that optional
dependencies (``zmq``, ``azure.servicebus``) are imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import (
    DEAD_LETTER_SUFFIX,
    Capabilities,
    Delivery,
    Message,
    QueueCounts,
    QueueOptions,
    Transport,
    dead_letter_queue,
    is_dead_letter_queue,
)
from .errors import (
    ConnectionLostError,
    JournalError,
    LockLostError,
    MessageTooLargeError,
    PermissionDeniedError,
    QueueFullError,
    QueueNotFoundError,
    QueueSettingsConflict,
    StatsUnavailableError,
    TransportClosedError,
    TransportError,
    TransportTimeoutError,
    UnknownTransportError,
)

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "TRANSPORTS",
    "Capabilities",
    "ConnectionLostError",
    "Delivery",
    "JournalError",
    "LockLostError",
    "Message",
    "MessageTooLargeError",
    "PermissionDeniedError",
    "QueueCounts",
    "QueueFullError",
    "QueueNotFoundError",
    "QueueOptions",
    "QueueSettingsConflict",
    "StatsUnavailableError",
    "Transport",
    "TransportClosedError",
    "TransportError",
    "TransportTimeoutError",
    "UnknownTransportError",
    "dead_letter_queue",
    "is_dead_letter_queue",
    "open_transport",
    "register_transport",
    "registered_scheme",
    "transport_scheme",
]

#: URL scheme -> lazy "module:Class" import string.
TRANSPORTS: dict[str, str] = {
    "memory": "realtime_batch.transport.memory:MemoryTransport",
    "zmq": "realtime_batch.transport.zeromq.client:ZmqTransport",
    "servicebus": "realtime_batch.transport.servicebus:ServiceBusTransport",
}


def register_transport(scheme: str, target: str) -> None:
    """Register a backend: ``target`` is ``"package.module:ClassName"``."""
    TRANSPORTS[scheme.lower()] = target


def transport_scheme(url: str) -> str:
    """Return the registry key for ``url`` (Service Bus connection strings map to servicebus)."""
    stripped = url.strip()
    if stripped.lower().startswith("endpoint="):
        return "servicebus"
    scheme, sep, _ = stripped.partition("://")
    if not sep:
        raise UnknownTransportError(
            f"not a transport URL: {url[:40]!r}; expected SCHEME://... with a scheme in "
            f"{sorted(TRANSPORTS)} or a Service Bus connection string (Endpoint=sb://...)"
        )
    return scheme.lower()


def registered_scheme(url: str) -> str:
    """Return ``url``'s registry key, checking that a backend is registered for it.

    Nothing is imported or connected: callers use it to refuse a bad URL before they
    start anything.

    Raises:
        UnknownTransportError: not a URL, or no backend for its scheme.
    """
    scheme = transport_scheme(url)
    if scheme not in TRANSPORTS:
        raise UnknownTransportError(
            f"unknown transport scheme {scheme!r}; known schemes: {', '.join(sorted(TRANSPORTS))}"
        )
    return scheme


def open_transport(url: str, **options: Any) -> Transport:
    """Open the transport named by ``url``.

    Args:
        url: ``memory://NAME``, ``zmq://HOST:PORT``, ``servicebus://NAMESPACE`` or a
            Service Bus connection string.
        **options: passed to the backend's constructor.

    Raises:
        UnknownTransportError: no backend is registered for the URL's scheme.
    """
    scheme = registered_scheme(url)
    module_name, _, class_name = TRANSPORTS[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownTransportError(
            f"transport {scheme!r} is not available: {exc}. "
            "Install the optional dependencies, e.g. pip install 'realtime-batch[azure]'"
        ) from exc
    cls = getattr(module, class_name)
    return cls(url, **options)
