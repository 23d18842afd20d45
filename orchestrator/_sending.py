"""A session's sending side: tasks become messages, and a sender thread batches them.

``task_message`` is the one place a task record becomes the message the transport
carries; ``Sender`` is the one place messages reach the transport (``Sender.send_batch``).
A lone submission is sent from the caller's thread (no thread hand-off on the
interactive path); bursts go through the sender thread, which sends them in batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import tenacity

from realtime_batch.control import NOTIFY_PROPERTIES
from realtime_batch.protocol import TaskRecord, encode_task
from realtime_batch.transport import (
    ConnectionLostError,
    Message,
    MessageTooLargeError,
    Transport,
    TransportTimeoutError,
)

from .results import TaskFuture

__all__ = ["Sender", "task_message"]

log = logging.getLogger(__name__)

_SEND_BATCH = 1000
#: Tasks submitted but not yet handed to the transport before ``submit`` blocks: bounds
#: client memory when tasks are submitted faster than the transport takes them.
_OUTBOX_LIMIT = 10_000
_IDLE_GAP = 0.0003  # seconds without a submission after which one is sent inline
_SEND_RETRY_FOR = 30.0  # seconds a batch is retried while the transport is unreachable
_POLL = 0.2  # how long a submitter waits for room between checks of the closed flag
#: how long the idle sender thread sleeps between looks: only a safety net, as every
#: change it waits for (a task queued, a send ended, the close) wakes it (issue 21: an
#: idle session's threads cost nothing)
_IDLE_LOOK = 5.0
_TRANSIENT = (ConnectionLostError, TransportTimeoutError)

Outgoing = tuple[TaskFuture, Message]


def task_message(
    record: TaskRecord, max_size: int, encode: Callable[[TaskRecord], bytes] = encode_task
) -> Message:
    """The message that carries ``record`` (the send path's one encoding step).

    Args:
        record: the task.
        max_size: the transport's message limit.
        encode: the body's encoder (a session's ``SessionPayloads.encode_task``, which
            puts large arguments in the payload store and sends references).

    Raises:
        ProtocolError: an argument cannot be encoded.
        MessageTooLargeError: the encoded task exceeds ``max_size`` bytes.
    """
    body = encode(record)
    if len(body) > max_size:
        raise MessageTooLargeError(len(body), max_size, "task")
    deadline = record.deadline
    return Message(
        body,
        correlation_id=record.task,
        properties=NOTIFY_PROPERTIES,
        ttl=None if deadline is None else max(deadline - time.time(), 0.001),
    )


class Sender:
    """Sends a session's tasks in order, in batches, retrying transient transport faults.

    Args:
        transport: where the tasks go.
        task_queue: the queue the engines pull from.
        closed: the session's closed flag; once set, queued tasks are still sent and
            new ones refused.
        fail: called with a task's future and the exception when its send failed.
        name: the sender thread's name.
    """

    def __init__(
        self,
        transport: Transport,
        task_queue: str,
        closed: threading.Event,
        fail: Callable[[TaskFuture, Exception], None],
        name: str,
    ) -> None:
        self._transport = transport
        self._task_queue = task_queue
        self._closed = closed
        self._fail = fail
        self.outbox: list[Outgoing] = []
        self._ready = threading.Condition(threading.Lock())
        self._sending = False
        self._last_submit = 0.0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, future: TaskFuture, message: Message) -> bool:
        """Hand a task to the sender thread, or send it at once when the session is idle.

        A lone submission (nothing queued, nothing being sent, no submission in the last
        0.3 ms) is sent from the caller's thread, saving a thread hand-off on the
        interactive path, where submissions are a round trip apart; bursts (a loop of
        ``submit`` calls, tens of microseconds apart) go through the sender thread,
        which batches them. An inline send counts as a submission until it returns, so
        a slow round trip does not make each submission of a loop an inline send of
        its own. Blocks while the outbox is full.

        Returns:
            False if the session closed before the task could be queued (it is not sent).
        """
        now = time.monotonic()
        with self._ready:
            while len(self.outbox) >= _OUTBOX_LIMIT and not self._closed.is_set():
                self._ready.wait(_POLL)
            if self._closed.is_set():  # while waiting for room: nothing will send it
                return False
            idle = now - self._last_submit > _IDLE_GAP
            self._last_submit = now
            if not idle or self._sending or self.outbox:
                self.outbox.append((future, message))
                if len(self.outbox) == 1:  # the thread waits only for an empty outbox
                    self._ready.notify_all()  # (or a send, whose end notifies)
                return True
            self._sending = True
        try:
            self.send_batch([(future, message)], retry=False)
        finally:
            with self._ready:
                self._sending = False
                # the gap is counted from the end of the send: the caller's next submit
                # in a loop is part of a burst, however long this round trip took
                self._last_submit = time.monotonic()
                self._ready.notify_all()
        return True

    def release(self, future: TaskFuture, message: Message) -> bool:
        """Queue a task for the sender thread without waiting for room (never blocks).

        For tasks released from another thread (a workflow's inputs finished), which
        must not stall that thread; they were counted as outstanding when submitted.

        Returns:
            False if the session is closed (the task is not sent).
        """
        with self._ready:
            if self._closed.is_set():
                return False
            self.outbox.append((future, message))
            self._ready.notify_all()
        return True

    def withdraw(self, task_ids: set[str]) -> None:
        """Take tasks out of the outbox if they were not sent yet."""
        with self._ready:
            if self.outbox:
                self.outbox = [(f, m) for f, m in self.outbox if f.task_id not in task_ids]

    def close(self, timeout: float) -> None:
        """Set the closed flag, wake the thread, and wait for it to send what is queued."""
        with self._ready:
            self._closed.set()
            self._ready.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._ready:
                # One send at a time (the caller's or this thread's) keeps tasks in order.
                while not self.outbox or self._sending:
                    if self._closed.is_set() and not self.outbox:
                        return
                    self._ready.wait(_IDLE_LOOK)
                batch = self.outbox[:_SEND_BATCH]
                del self.outbox[:_SEND_BATCH]
                self._sending = True
                self._ready.notify_all()  # room for submitters waiting on the limit
            try:
                self.send_batch(batch)
            finally:
                with self._ready:
                    self._sending = False

    def send_batch(self, batch: list[Outgoing], *, retry: bool = True) -> None:
        """Send a batch; transient faults (a broker restarting) are retried with backoff.

        Without ``retry`` (the caller's inline send) a transient fault puts the batch back
        at the head of the outbox for the sender thread to retry.
        """
        messages = [m for _, m in batch]
        try:
            if retry:
                for attempt in tenacity.Retrying(
                    retry=tenacity.retry_if_exception_type(_TRANSIENT),
                    stop=tenacity.stop_after_delay(_SEND_RETRY_FOR)
                    | tenacity.stop_when_event_set(self._closed),
                    wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
                    reraise=True,
                ):
                    with attempt:
                        self._transport.send(self._task_queue, messages)
            else:
                self._transport.send(self._task_queue, messages)
        except _TRANSIENT as exc:
            if not retry and not self._closed.is_set():
                log.info("send failed (%s); the sender thread retries", exc)
                with self._ready:
                    self.outbox[:0] = batch
                    self._ready.notify_all()
                return
            self._fail_batch(batch, exc)
        except Exception as exc:  # a failed send fails exactly those tasks
            self._fail_batch(batch, exc)

    def _fail_batch(self, batch: list[Outgoing], exc: Exception) -> None:
        log.warning("sending %d tasks failed: %s", len(batch), exc)
        for future, _ in batch:
            self._fail(future, exc)
