"""The engine's side of cancellation: receiving cancel requests and remembering them.

A control thread (``receive_cancels``) reads the engine's own group of the grouped
control queue and records each request's ``(session, task, cancel key)`` keys in
``CancelRequests``, a bounded, expiring set that the engine's main thread checks
when a task comes up (a dict lookup) and when told that requests arrived.

The cancel key is the hash of the secret the request carries (``control.session_key``):
a task is cancelled only by a request with its session's secret, so a request forged
by another client, which does not know it, matches no task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..control import KIND, KIND_CANCEL, KIND_STOP, decode_control, session_key
from ..transport import Delivery, Transport
from ..transport.errors import TransportClosedError, TransportError
from ._reach import Backoff, ServiceWatch
from ._supervise import idle_wait

__all__ = ["CANCELLED_KEEP", "CANCELLED_MAX", "CancelRequests", "receive_cancels"]

logger = logging.getLogger(__name__)

CANCELLED_KEEP = 3600.0  # seconds a cancel request is remembered
CANCELLED_MAX = 100_000  # cancel requests remembered at most (the oldest are forgotten)


class CancelRequests:
    """``(session, task, cancel key)`` keys of cancelled tasks, bounded in number and age.

    Written by the control thread, read by the main thread: ``keys`` is a plain dict
    (key -> monotonic arrival time) so that the hot path is one lookup.
    """

    def __init__(self, keep: float | None = None, limit: int | None = None) -> None:
        self.keys: dict[tuple[str, str, str], float] = {}
        self.keep = CANCELLED_KEEP if keep is None else keep
        self.limit = CANCELLED_MAX if limit is None else limit
        #: set when requests arrived that the main thread has not looked at yet
        self.arrived = False

    def add(self, session: str, task_ids: list[str], key: str = "") -> None:
        now = time.monotonic()
        keys = self.keys
        for task_id in task_ids:
            keys[(session, task_id, key)] = now
        self._forget_old(now)
        self.arrived = True

    def _forget_old(self, now: float) -> None:
        """Drop expired requests and, beyond the limit, the oldest."""
        keys = self.keys
        excess = len(keys) - self.limit
        stale = []
        for key, at in keys.items():  # insertion order: oldest first
            if excess <= 0 and at > now - self.keep:
                break
            stale.append(key)
            excess -= 1
        for key in stale:
            keys.pop(key, None)


def receive_cancels(
    transport: Transport,
    queue: str,
    engine_id: str,
    requests: CancelRequests,
    running: threading.Event,
    wake: Callable[[], None],
    stop: Callable[[], None] | None = None,
    watch: ServiceWatch | None = None,
) -> None:
    """Receive cancel requests for ``engine_id`` while ``running`` is set; ``wake`` on each.

    A ``stop`` message calls ``stop`` (the engine's graceful stop); ``watch`` hears of
    every answer and failure (it stops the engine when the service is gone). Each
    receive waits ``idle_wait``: the engine's stop ends it with ``transport.wake``.
    """
    backoff = Backoff()
    poll = idle_wait(transport)
    while running.is_set():
        try:
            deliveries = transport.receive(queue, max_messages=64, timeout=poll, group=engine_id)
            if watch is not None:
                watch.answered()
            backoff.succeeded()
        except TransportClosedError:
            return
        except TransportError as exc:
            if watch is not None and watch.failed(exc):
                return
            logger.warning("engine %s: control receive failed (%s)", engine_id, exc)
            time.sleep(backoff.failed())
            continue
        for delivery in deliveries:
            if stop is not None and delivery.message.properties.get(KIND) == KIND_STOP:
                logger.info("engine %s: asked to stop", engine_id)
                stop()
                wake()
            elif _record(delivery, engine_id, requests):
                wake()
            try:
                transport.complete(delivery)
            except TransportError as exc:
                logger.debug("completing a control message failed: %s", exc)


def _record(delivery: Delivery, engine_id: str, requests: CancelRequests) -> bool:
    message = delivery.message
    data = decode_control(message.body)
    session = None if data is None else data.get("session")
    if message.properties.get(KIND) != KIND_CANCEL or not isinstance(session, str):
        logger.warning("engine %s: ignoring a control message that is not a cancel request",
                       engine_id)  # fmt: skip
        return False
    assert data is not None
    secret = data.get("secret")
    requests.add(session, data["tasks"], session_key(secret) if isinstance(secret, str) else "")
    logger.info("engine %s: %d task(s) of session %s cancelled", engine_id, len(data["tasks"]),
                session)  # fmt: skip
    return True
