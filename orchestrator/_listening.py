"""A session's listening side: one thread reads its mailbox and dispatches what arrives.

Results go to the session's ``on_results`` a received batch at a time (after
``Listener.decode``, the result path's one decoding step), engine notices to
``on_notice``; ``on_tick`` runs after every receive (deadline expiry, the health
warning). Deliveries are completed after their futures are resolved: a lease lost
meanwhile only means a redelivery, which the session drops as a duplicate.

Each receive waits ``POLL`` (0.2 s), so the ticks come that often while tasks are
outstanding. A session with nothing outstanding for ``IDLE_AFTER`` seconds has no
use for ticks: where the transport can end a waiting receive (``Capabilities.wake``,
``zmq://``) its receives then wait ``IDLE_POLL`` instead, and the next submission
(``nudge``) or ``close`` ends the wait with ``Transport.wake``. An idle session so
costs the broker a receive every ``IDLE_POLL`` instead of five a second (issue 21).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from realtime_batch.control import KIND
from realtime_batch.protocol import ProtocolError, ResultRecord, decode_result
from realtime_batch.transport import Delivery, Message, Transport, TransportError

__all__ = ["Listener"]

log = logging.getLogger(__name__)

_RECEIVE_BATCH = 512
POLL = 0.2  # listener poll interval: bounds how long close() waits for it
#: seconds with nothing outstanding before the receives wait ``IDLE_POLL``: an
#: interactive caller a task at a time stays on ``POLL`` and is never ``nudge``d
IDLE_AFTER = 1.0
#: an idle session's receive wait where the transport can end it early
IDLE_POLL = 10.0


class Listener:
    """Receives a session's mailbox (a group of the results queue) in a thread of its own.

    Args:
        transport: where the mailbox is.
        results_queue: the shared results queue.
        group: the session's mailbox on it.
        closed: the session's closed flag; the thread stops within ``POLL`` once set.
        on_results: called with each batch's decoded results, in arrival order.
        on_notice: called with each engine notice message.
        on_tick: called after every receive, results or not.
        name: the thread's name.
        idle: True while the session has nothing outstanding (default: never idle).
    """

    def __init__(
        self,
        transport: Transport,
        results_queue: str,
        group: str,
        closed: threading.Event,
        *,
        on_results: Callable[[list[ResultRecord]], None],
        on_notice: Callable[[Message], None],
        on_tick: Callable[[], None],
        name: str,
        idle: Callable[[], bool] = lambda: False,
    ) -> None:
        self._transport = transport
        self._queue = results_queue
        self._group = group
        self._closed = closed
        self._on_results = on_results
        self._on_notice = on_notice
        self._on_tick = on_tick
        self._idle = idle
        self._can_wake = transport.capabilities.wake
        #: the receive under way waits ``IDLE_POLL``: a submission must end it (``nudge``)
        self.waiting_long = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the thread (the closed flag is set), ending a long wait if need be."""
        end = time.monotonic() + timeout
        while self._thread.is_alive():
            left = end - time.monotonic()
            if left <= 0:
                return
            # again each round: a wake that reached the broker before the receive it was
            # meant for ended nothing
            self.nudge()
            self._thread.join(min(left, POLL))

    def nudge(self) -> None:
        """End a long idle wait (a task was submitted: ticks are needed again; or the
        session closes). Every call while the wait lasts sends a wake (fire and forget)."""
        if self.waiting_long:
            self._transport.wake()

    def _wait(self, idle_since: float | None, now: float) -> float:
        """This receive's wait: ``IDLE_POLL`` once idle for ``IDLE_AFTER``, else ``POLL``."""
        if idle_since is not None and now - idle_since >= IDLE_AFTER:
            self.waiting_long = True
            return IDLE_POLL
        self.waiting_long = False
        return POLL

    def _loop(self) -> None:
        transport = self._transport
        # zmq: the deliveries of a batch are completed by the request that receives the
        # next one (one request per batch instead of two); elsewhere as soon as they
        # are dispatched, by a request of their own
        combined = transport.capabilities.settle_and_receive
        done: list[Delivery] = []
        idle_since: float | None = None
        while not self._closed.is_set():
            now = time.monotonic()
            if not self._can_wake or done or not self._idle():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            wait = self._wait(idle_since, now)
            try:
                if done and combined:
                    batch, _lost = transport.settle_and_receive(
                        self._queue, [], done, self._queue,
                        max_messages=_RECEIVE_BATCH, timeout=wait, group=self._group,
                    )  # fmt: skip
                else:
                    batch = transport.receive(
                        self._queue, max_messages=_RECEIVE_BATCH, timeout=wait,
                        group=self._group,
                    )  # fmt: skip
                done = []
            except TransportError as exc:
                self.waiting_long = False
                if self._closed.is_set():
                    break
                log.warning("receiving results failed (retrying): %s", exc)
                done = []  # their leases lapse: a redelivery is dropped as a duplicate
                self._closed.wait(0.5)
                continue
            self.waiting_long = False
            done = self._dispatch(batch)
            # Settle after the futures are resolved (latency), in one round trip; a
            # lease lost meanwhile only means a redelivery, dropped as a duplicate.
            if done and not combined:
                self._settle(transport.complete_many, done)
                done = []
            self._on_tick()
        if done:
            self._settle(transport.complete_many, done)

    def _dispatch(self, batch: list[Delivery]) -> list[Delivery]:
        """Hand a batch's notices and results on; return the deliveries to complete."""
        done: list[Delivery] = []
        records: list[ResultRecord] = []
        for delivery in batch:
            if delivery.message.properties and KIND in delivery.message.properties:
                done.append(delivery)
                self._on_notice(delivery.message)
                continue
            try:
                records.append(self.decode(delivery.message))
            except ProtocolError as exc:
                log.warning("dropping a malformed result message: %s", exc)
                self._settle(self._transport.dead_letter, delivery, "MalformedResult", str(exc))
                continue
            done.append(delivery)
        if records:
            self._on_results(records)
        return done

    @staticmethod
    def decode(message: Message) -> ResultRecord:
        """A result message's record (the result path's one decoding step).

        Raises:
            ProtocolError: the body is not a valid result.
        """
        return decode_result(message.body)

    @staticmethod
    def _settle(action: Callable[..., None], delivery: Any, *args: Any) -> None:
        try:
            action(delivery, *args)
        except TransportError as exc:  # lost lock: the redelivery is dropped as a duplicate
            log.debug("settling a result failed: %s", exc)
