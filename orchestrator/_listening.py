"""A session's listening side: one thread reads its mailbox and dispatches what arrives.

Results go to the session's ``on_results`` a received batch at a time (after
``Listener.decode``, the result path's one decoding step), engine notices to
``on_notice``; ``on_tick`` runs after every receive (deadline expiry, the health
warning). Deliveries are completed after their futures are resolved: a lease lost
meanwhile only means a redelivery, which the session drops as a duplicate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from realtime_batch.control import KIND
from realtime_batch.protocol import ProtocolError, ResultRecord, decode_result
from realtime_batch.transport import Delivery, Message, Transport, TransportError

__all__ = ["Listener"]

log = logging.getLogger(__name__)

_RECEIVE_BATCH = 512
POLL = 0.2  # listener poll interval: bounds how long close() waits for it


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
    ) -> None:
        self._transport = transport
        self._queue = results_queue
        self._group = group
        self._closed = closed
        self._on_results = on_results
        self._on_notice = on_notice
        self._on_tick = on_tick
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        transport = self._transport
        # zmq: the deliveries of a batch are completed by the request that receives the
        # next one (one request per batch instead of two)
        settle_and_receive = getattr(transport, "settle_and_receive", None)
        done: list[Delivery] = []
        while not self._closed.is_set():
            try:
                if done and settle_and_receive is not None:
                    batch, _lost = settle_and_receive(
                        self._queue, [], done, self._queue,
                        max_messages=_RECEIVE_BATCH, timeout=POLL, group=self._group,
                    )  # fmt: skip
                else:
                    batch = transport.receive(
                        self._queue, max_messages=_RECEIVE_BATCH, timeout=POLL,
                        group=self._group,
                    )  # fmt: skip
                done = []
            except TransportError as exc:
                if self._closed.is_set():
                    break
                log.warning("receiving results failed (retrying): %s", exc)
                done = []  # their leases lapse: a redelivery is dropped as a duplicate
                self._closed.wait(0.5)
                continue
            done = self._dispatch(batch)
            # Settle after the futures are resolved (latency), in one round trip; a
            # lease lost meanwhile only means a redelivery, dropped as a duplicate.
            if done and settle_and_receive is None:
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
