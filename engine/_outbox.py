"""Turning task outcomes into result messages and settling deliveries, in that order.

The engine records what should happen to each delivery (a result to send and a
settlement: complete, abandon or dead-letter) in an ``Outbox``; ``flush`` sends
all pending results in one batch per results queue, then settles the
deliveries. Sending before settling gives at-least-once results; completions go out in one
``complete_many`` call (one round trip on brokered transports).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

import attrs

from ..control import notice_message
from ..payloads import engine_payloads
from ..protocol import (
    ErrorInfo,
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    encode_result,
    peek_reply_to,
    replace,
    unserializable_value,
)
from ..transport import Delivery, Message, Transport
from ..transport.base import MAX_DELIVERY_REASON
from ..transport.errors import LockLostError, QueueNotFoundError, TransportError
from ._observe import TaskObserver
from ._supervise import next_renewal

__all__ = ["Held", "Outbox", "Settler"]

logger = logging.getLogger(__name__)

_COMPLETE, _ABANDON, _DEAD_LETTER, _NOTICE = "complete", "abandon", "dead_letter", "notice"
_GIVE_BACK = "give_back"


def delivery_attempt(delivery: Delivery, task: TaskRecord) -> int:
    """The attempt a delivery is: the sender's attempt plus the broker's redeliveries."""
    return task.attempt - 1 + delivery.delivery_count


@attrs.define(slots=True, eq=False)
class Held:
    """A delivery the engine holds, with its decoded task and lease bookkeeping."""

    delivery: Delivery
    task: TaskRecord
    attempt: int
    kind: str = ""
    path: str = ""
    size: int = 0  # bytes of its message (the worker pipe's budget)
    seq: int = 0  # its number on the worker pipe
    renew_at: float = float("inf")
    lock_lost: bool = False
    cancelled_at: float | None = None  # monotonic time the client cancelled it
    answered: bool = False  # its outcome was recorded while the worker still holds it
    noticed: bool = False  # a running notice was sent
    due: float = 0.0  # monotonic time a retry may start (backing off until then)

    @classmethod
    def received(cls, delivery: Delivery, task: TaskRecord) -> Held:
        """A task as delivered: its attempt counts the broker's redeliveries."""
        return cls(delivery, task, delivery_attempt(delivery, task))

    @property
    def key(self) -> tuple[str, str, str]:
        """``(session, task id, cancel key)``: what cancel requests name (``_cancels``)."""
        return (self.task.session, self.task.task, self.task.session_key)

    def schedule_renewal(self, now: float) -> None:
        """Plan the next renewal at a third of the remaining lease."""
        self.renew_at = next_renewal(now, self.delivery.locked_until)

    def renewal_failed(self, exc: TransportError, now: float) -> None:
        if isinstance(exc, LockLostError):
            self.lock_lost = True
            logger.warning(
                "lost the lease of task %s (%s); its result will still be sent",
                self.task.task,
                exc,
            )
        else:
            logger.warning("could not renew the lease of task %s: %s", self.task.task, exc)
            self.renew_at = now + 1.0


@attrs.define(slots=True)
class _Entry:
    """What to do with one delivery (or a notice to send, ``message``: nothing to settle)."""

    delivery: Delivery | None
    action: str
    record: ResultRecord | None = None
    reply_to: ReplyTo | None = None
    reason: str = ""
    description: str = ""
    message: Message | None = None


class Outbox:
    """Results waiting to be sent and deliveries waiting to be settled."""

    def __init__(
        self,
        transport: Transport,
        engine_id: str,
        max_delivery_count: int,
        ttl: float | None,
        observer: TaskObserver | None = None,
    ) -> None:
        self.transport = transport
        self.engine_id = engine_id
        #: counts and recent failures of the results sent here (engine reports, metrics)
        self.observer = observer or TaskObserver(transport, engine_id)
        self.max_delivery_count = max_delivery_count
        self.ttl = ttl
        self._entries: list[_Entry] = []
        self._notices = 0  # entries that are notices, not deliveries
        #: the transport's service is gone (``_reach``): nothing can be sent or settled
        self.gone = False

    def __len__(self) -> int:
        """Entries recorded and not taken yet."""
        return len(self._entries)

    # -- outcomes --------------------------------------------------------------------------
    def _result(
        self,
        held: Held,
        status: str,
        *,
        value: Any = None,
        error: ErrorInfo | None = None,
        started: float | None = None,
        finished: float | None = None,
    ) -> ResultRecord:
        task = held.task
        now = time.time()
        return ResultRecord(
            session=task.session,
            job=task.job,
            task=task.task,
            status=status,
            value=value,
            error=error,
            engine=self.engine_id,
            attempt=held.attempt,
            started_at=now if started is None else started,
            finished_at=now if finished is None else finished,
            session_key=task.session_key,
        )

    def _reply(self, held: Held, record: ResultRecord, action: str = _COMPLETE, **kw: str) -> None:
        self._entries.append(_Entry(held.delivery, action, record, held.task.reply_to, **kw))

    def error(self, held: Held, type_: str, message: str, traceback: str = "") -> None:
        """Send an error result and complete the delivery."""
        self._reply(held, self._result(held, "error", error=ErrorInfo(type_, message, traceback)))

    def expired(self, held: Held) -> None:
        """The deadline passed before the task started: ``expired`` result, not run."""
        info = ErrorInfo("TaskExpiredError", "the task's deadline passed before it started")
        self._reply(held, self._result(held, "expired", error=info))

    def cancelled(self, held: Held, message: str = "cancelled by the client") -> None:
        """The client cancelled the task: ``cancelled`` result, delivery completed."""
        info = ErrorInfo("TaskCancelledError", message)
        self._reply(held, self._result(held, "cancelled", error=info))

    def stopped_running(self, held: Held) -> None:
        """A cancelled task was running: its worker was killed; ``cancelled`` result."""
        self.cancelled(held, "cancelled by the client while running; stopped")

    def timed_out(self, held: Held, limit: float | None, *, requeue: bool = False) -> None:
        """The task ran past its timeout of ``limit`` s and its worker was killed.

        ``requeue``: retried (``retry_on`` names the timeout) on any engine: given back
        for another attempt unless that would take the queue's last delivery, as a
        crash's retry (``crashed``).
        """
        message = f"task exceeded its timeout of {limit} s and was killed"
        if requeue:
            self._retry(held, "TaskTimeoutError", message)
        else:
            self.error(held, "TaskTimeoutError", message)

    def notice(self, kind: str, task: TaskRecord) -> None:
        """Queue an ``engine``/``running`` notice about ``task`` for its session's mailbox."""
        reply_to = task.reply_to
        message = notice_message(
            kind, self.engine_id, [task.task], reply_to.group, self.ttl, task.session_key
        )
        self._entries.append(_Entry(None, _NOTICE, reply_to=reply_to, message=message))
        self._notices += 1

    def engine_lost(self, held: Held) -> None:
        """Refuse a delivery whose previous attempts all died with their engine."""
        count = held.delivery.delivery_count
        if count >= self.max_delivery_count:
            message = (
                f"task delivered {count} times, the queue's max_delivery_count (attempt "
                f"{held.attempt}, max_retries={held.task.max_retries}); earlier deliveries "
                "never finished (their engine died, lost its lease or gave them back "
                "when stopping); this last one was not run so that the failure is "
                "reported rather than lost"
            )
        else:
            message = (
                f"task delivered {count} times (attempt {held.attempt}, max_retries="
                f"{held.task.max_retries}); previous attempts never finished: the engine "
                "running them died or lost its lease"
            )
        self._fail_for_good(held, "EngineLostError", message)

    def crashed(self, held: Held, cause: str, crash_report: str) -> None:
        """The worker died running ``held``: retry while allowed, else report."""
        message = f"worker died with {cause} while running the task (attempt {held.attempt})"
        if held.attempt <= held.task.max_retries:
            self._retry(held, "WorkerCrashedError", message, crash_report)
        else:
            self._fail_for_good(held, "WorkerCrashedError", message, crash_report)

    def abandon(self, held: Held) -> None:
        """Give the delivery back untouched (engine stopping)."""
        self._entries.append(_Entry(held.delivery, _ABANDON))

    def give_back(self, delivery: Delivery, *, ran_here: bool = False) -> None:
        """Give back a delivery that is not running (the engine stops, or its worker died).

        Not counted as a delivery, so that being near a stop or a crash uses up none of
        its retries; unless an attempt of it already ran here (``ran_here``: a
        ``retry_on`` retry backing off): then counted, so that it comes back as its next
        attempt. Both modes' rule.
        """
        self._entries.append(_Entry(delivery, _ABANDON if ran_here else _GIVE_BACK))

    def give_back_unstarted(self, held: Held) -> None:
        """``give_back`` a task held here and not started, by what its attempt says."""
        ran_here = held.attempt > delivery_attempt(held.delivery, held.task)
        self.give_back(held.delivery, ran_here=ran_here)

    def finished(
        self,
        held: Held,
        status: str,
        value: Any,
        error: tuple[str, str, str] | None,
        started: float,
        finished: float,
    ) -> None:
        """Record what the worker reported for ``held``."""
        self.observer.finished(held.task.task, error, started, finished)
        if error is None:
            self._reply(
                held, self._result(held, status, value=value, started=started, finished=finished)
            )
            return
        type_, message, traceback = error
        info = ErrorInfo(type_, message, traceback)
        self._reply(
            held, self._result(held, "error", error=info, started=started, finished=finished)
        )

    def _retry(self, held: Held, type_: str, message: str, traceback: str = "") -> None:
        # The queue's last delivery is kept for answering a task whose engine died
        # (the engine's admission refuses it): a crash retry never goes into it.
        if held.delivery.delivery_count >= self.max_delivery_count - 1:
            self._fail_for_good(held, type_, message, traceback, at_limit=True)
            return
        logger.info("task %s: %s; abandoned for another attempt", held.task.task, message)
        self.observer.retry()
        self._entries.append(_Entry(held.delivery, _ABANDON))

    def _fail_for_good(
        self, held: Held, type_: str, message: str, traceback: str = "", *, at_limit: bool = False
    ) -> None:
        """Send an error result; dead-letter the delivery if it reached the delivery limit.

        ``at_limit``: it could not be retried because of the queue's ``max_delivery_count``.
        """
        self.observer.failed_for_good(held.task.task, type_, message, traceback)
        count = held.delivery.delivery_count
        if at_limit or count >= self.max_delivery_count:
            description = f"delivered {count} times (max_delivery_count={self.max_delivery_count})"
            message += f"; dead-lettered ({MAX_DELIVERY_REASON}: {description})"
            record = self._result(held, "error", error=ErrorInfo(type_, message, traceback))
            self._reply(
                held, record, _DEAD_LETTER, reason=MAX_DELIVERY_REASON, description=description
            )
        else:
            self._reply(
                held, self._result(held, "error", error=ErrorInfo(type_, message, traceback))
            )

    def malformed(self, delivery: Delivery, exc: ProtocolError) -> None:
        """Dead-letter a body that is not a valid task; answer its sender when known."""
        description = str(exc)
        logger.warning(
            "dead-lettering malformed task message %s: %s", delivery.message.id, description
        )
        record = reply_to = None
        peeked = peek_reply_to(delivery.message.body)
        if peeked is not None:
            reply_to, ids = peeked
            now = time.time()
            record = ResultRecord(
                **ids,
                status="error",
                error=ErrorInfo("ProtocolError", f"malformed task: {description}"),
                engine=self.engine_id,
                attempt=delivery.delivery_count,
                started_at=now,
                finished_at=now,
            )
        self._entries.append(
            _Entry(delivery, _DEAD_LETTER, record, reply_to, "MalformedTask", description)
        )

    # -- sending and settling --------------------------------------------------------------
    def _encode(self, entry: _Entry) -> Message:
        if entry.message is not None:
            return entry.message
        record = entry.record
        assert record is not None and entry.reply_to is not None
        try:
            body = engine_payloads().encode_result(record)  # large values by reference (#20)
        except ProtocolError as exc:
            body = encode_result(_replace_error(record, unserializable_value(exc)))
        if len(body) > self.transport.max_message_size:
            body = encode_result(
                _replace_error(
                    record,
                    ErrorInfo(
                        "ResultTooLargeError",
                        f"the result is {len(body)} bytes, over the transport limit of "
                        f"{self.transport.max_message_size} bytes",
                    ),
                )
            )
        return Message(body, group=entry.reply_to.group, correlation_id=record.task, ttl=self.ttl)

    def take(self) -> tuple[list[Any], int]:
        """Hand over everything recorded so far (for ``settle``, possibly in another thread).

        Returns the entries and how many of them are deliveries (the rest are notices).
        """
        entries, self._entries = self._entries, []
        deliveries = len(entries) - self._notices
        self._notices = 0
        return entries, deliveries

    def flush(self) -> int:
        """Send pending results, then settle, in this thread. Returns entries handled."""
        return self.settle(self.take()[0])

    def settle(self, entries: list[Any]) -> int:
        """Send the entries' results (batched per queue), then settle their deliveries.

        Thread-safe with respect to recording new outcomes. Once the service is ``gone``
        the entries are dropped: the leases died with it, their tasks are delivered again.
        """
        if not entries or self.gone:
            return len(entries)
        batches: dict[str, list[tuple[_Entry, Message]]] = {}
        for entry in entries:
            if entry.record is not None or entry.message is not None:
                batches.setdefault(entry.reply_to.queue, []).append((entry, self._encode(entry)))  # type: ignore[union-attr]
        combined = False
        for queue, batch in batches.items():
            try:
                if len(batches) == 1:  # the usual case: replies and leases in one round trip
                    combined = self._send_and_complete(queue, batch, entries)
                else:
                    self.transport.send(queue, [message for _, message in batch])
            except QueueNotFoundError as exc:
                logger.error("results queue %r does not exist (%s); dead-lettering", queue, exc)
                for entry, _ in batch:
                    if entry.action != _NOTICE:
                        entry.action, entry.reason = _DEAD_LETTER, "ReplyQueueNotFound"
                        entry.description = f"results queue {queue!r} does not exist"
            except TransportError as exc:
                logger.error("could not send %d result(s) to %r: %s", len(batch), queue, exc)
                for entry, _ in batch:
                    if entry.action != _NOTICE:
                        entry.action = _ABANDON
        completes = [entry.delivery for entry in entries if entry.action == _COMPLETE]
        if completes and not combined:
            try:
                self.transport.complete_many(completes)  # one round trip where possible
            except LockLostError as exc:
                logger.warning("could not complete every delivery: %s", exc)
            except TransportError as exc:
                logger.error("could not complete %d deliveries: %s", len(completes), exc)
        for entry in entries:
            if entry.action != _COMPLETE and entry.action != _NOTICE:
                self._settle_one(entry)
        return len(entries)

    def settle_and_receive(
        self, entries: list[Any], queue: str, *, max_messages: int, timeout: float | None
    ) -> list[Delivery]:
        """``settle(entries)``, then receive from ``queue``: one request where possible.

        One request when the transport can (``capabilities.settle_and_receive``) and
        the entries are the usual case (results and notices to one queue, their
        deliveries completed). If
        that request fails, the entries are settled the ordinary way (a result may then
        be sent twice; the client drops the copy) and the error is raised.
        """
        combined = self.transport.capabilities.settle_and_receive
        replies = [e for e in entries if e.record is not None or e.message is not None]
        queues = {entry.reply_to.queue for entry in replies}
        if (
            not combined
            or len(queues) != 1
            or any(e.action != _COMPLETE and e.action != _NOTICE for e in entries)
        ):
            self.settle(entries)
            return self.transport.receive(queue, max_messages=max_messages, timeout=timeout)
        messages = [self._encode(entry) for entry in replies]
        completes = [entry.delivery for entry in entries if entry.action == _COMPLETE]
        try:
            received, lost = self.transport.settle_and_receive(
                queues.pop(), messages, completes, queue,
                max_messages=max_messages, timeout=timeout,
            )  # fmt: skip
        except TransportError as exc:
            logger.warning("settling with the next receive failed (%s); settling alone", exc)
            self.settle(entries)
            raise
        if lost:
            logger.warning("could not complete %d of %d deliveries (lease lost)", len(lost),
                           len(completes))  # fmt: skip
        return received

    def _send_and_complete(
        self, queue: str, batch: list[tuple[_Entry, Message]], entries: list[Any]
    ) -> bool:
        """Send one queue's replies and complete the leases in one call; True if done."""
        completes = [entry.delivery for entry in entries if entry.action == _COMPLETE]
        try:
            self.transport.send_and_complete(queue, [m for _, m in batch], completes)
        except LockLostError as exc:  # sent; the other leases were completed
            logger.warning("could not complete every delivery: %s", exc)
        return True

    def _settle_one(self, entry: _Entry) -> None:
        delivery = entry.delivery
        assert delivery is not None
        try:
            if entry.action == _ABANDON:
                self.transport.abandon(delivery)
            elif entry.action == _GIVE_BACK:
                self.transport.give_back(delivery)
            else:
                self.transport.dead_letter(delivery, entry.reason, entry.description)
        except LockLostError as exc:
            logger.warning("could not %s message %s: %s", entry.action, delivery.message.id, exc)
        except TransportError as exc:
            logger.error("could not %s message %s: %s", entry.action, delivery.message.id, exc)


class Settler:
    """A thread that settles the entry lists handed to it, in order.

    Lists waiting together are merged into one ``settle`` call (one broker request
    for many results). ``unsettled`` counts the entries handed over and not settled
    yet; it changes under ``cond``, which is notified after each call.

    Args:
        settle: settles one list (``Outbox.settle`` and whatever the owner adds).
        cond: the owner's condition (its other threads wait on it for room).
        name: the thread's name.
    """

    def __init__(
        self, settle: Callable[[list[Any]], None], cond: threading.Condition, name: str
    ) -> None:
        self.settle = settle
        self.cond = cond
        self.unsettled = 0
        self._queue: SimpleQueue[list[Any] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hand_over(self, entries: list[Any]) -> None:
        """Settle ``entries`` on the thread, after everything handed over before."""
        if entries:
            with self.cond:
                self.unsettled += len(entries)
            self._queue.put(entries)

    def close(self, timeout: float = 60.0) -> None:
        """Settle what was handed over, then end the thread (in this one if it never ran)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
            return
        while not self._queue.empty():
            self.settle(self._queue.get_nowait() or [])

    def _loop(self) -> None:
        running = True
        while running:
            entries = self._queue.get()
            if entries is None:
                return
            while True:
                try:
                    more = self._queue.get_nowait()
                except Empty:
                    break
                if more is None:
                    running = False
                    break
                entries.extend(more)
            self.settle(entries)
            count = len(entries)
            entries = more = None  # not kept alive while waiting: results may be large
            with self.cond:
                self.unsettled -= count
                self.cond.notify_all()


def _replace_error(record: ResultRecord, error: ErrorInfo) -> ResultRecord:
    return replace(record, status="error", value=None, error=error)
