"""Client sessions: submit tasks, get each result back as soon as it is done.

A ``Session`` owns one mailbox (a group on the shared results queue) and two
threads: a *sender* that batches submitted tasks into as few transport sends as
possible, and a *listener* that receives results, drops duplicates and resolves
the matching ``concurrent.futures.Future``.

Cancellation: a cancelled task's future is cancelled at once and any later result
for it is dropped. The session also asks engines to stop the task: its tasks ask
engines for notices (``engine``: an engine holds tasks of this session; ``running``:
a task has run for 0.25 s there), so a cancel request goes to the engine running
the task, or else to every engine the session has heard from (and to any engine it
hears from later, for a while), through the grouped control queue.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import tenacity

from realtime_batch.config import redact
from realtime_batch.control import (
    CONTROL_QUEUE,
    KIND,
    KIND_RUNNING,
    NOTIFY_PROPERTIES,
    cancel_messages,
    decode_control,
    session_key,
)
from realtime_batch.payloads import SessionPayloads
from realtime_batch.protocol import (
    STATUS_CANCELLED,
    STATUS_EXPIRED,
    STATUS_OK,
    ErrorInfo,
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    decode_result,
)
from realtime_batch.transport import (
    ConnectionLostError,
    Delivery,
    Message,
    Transport,
    TransportError,
    TransportTimeoutError,
    open_transport,
)

from .health import STATE_NO_ENGINE, SessionHealth, assess
from .results import Result, SessionClosedError, TaskCancelledError, TaskError, TaskFuture

__all__ = [
    "DEFAULT_RESULTS_QUEUE",
    "DEFAULT_TASK_QUEUE",
    "DEFAULT_WARN_AFTER",
    "RESERVED_OPTIONS",
    "Result",
    "Session",
    "SessionClosedError",
    "TaskCancelledError",
    "TaskError",
    "TaskFuture",
]

log = logging.getLogger(__name__)

DEFAULT_TASK_QUEUE = "tasks"
DEFAULT_RESULTS_QUEUE = "results"
#: ``submit`` keywords that are task options, not task arguments.
RESERVED_OPTIONS = ("task_id", "timeout", "max_retries", "deadline", "retry_on", "priority")
_SEND_BATCH = 1000
#: Tasks submitted but not yet handed to the transport before ``submit`` blocks: bounds
#: client memory when tasks are submitted faster than the transport takes them.
_OUTBOX_LIMIT = 10_000
_IDLE_GAP = 0.0003  # seconds without a submission after which one is sent inline
_SEND_RETRY_FOR = 30.0  # seconds a batch is retried while the transport is unreachable
_TRANSIENT = (ConnectionLostError, TransportTimeoutError)


_RECEIVE_BATCH = 512
_POLL = 0.2  # listener poll interval: bounds how long close() waits for it
_EXPIRY_SLACK = 1.0  # seconds after a deadline before an unanswered task counts as expired
_CANCEL_REPLAY = 600.0  # seconds cancels of not-yet-located tasks go to newly heard engines
_ENGINE_REFRESH = 60.0  # an engine's last-heard time is updated at most this often per result
_ENGINE_FORGET = 3600.0  # engines not heard from for this long get no cancel requests
#: Seconds tasks may wait with no engine taking any before the session warns.
DEFAULT_WARN_AFTER = 30.0


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Session:
    """A client session: submit tasks to a pool's engines and collect their results.

    Args:
        pool_or_url: a ``Pool`` (``LocalPool``, ``AzureBatchPool``), a transport URL, or an
            open ``Transport`` (not closed by the session).
        job: job id stamped on every task (defaults to the pool's job, else ``"default"``).
        name: a readable client name (default host-pid); the mailbox id adds a unique suffix.
        task_queue: queue the engines pull from.
        results_queue: shared results queue; this session reads only its own group.
        timeout: default per-task run timeout in seconds (None: the engine's default).
        max_retries: default retries after infrastructure faults (engine or worker death)
            and after the exceptions named in ``retry_on``.
        retry_on: default exception types (or names) whose tasks are retried.
        keep_results: keep every result for :meth:`results` (the seed's ``get_results``).
        transport_options: passed to ``open_transport``.
        control_queue: the engines' grouped queue of cancel requests.
        warn_after: seconds tasks may wait with no engine taking any before the session
            logs a warning and :meth:`health` reports ``"no-engine"``.
    """

    def __init__(
        self,
        pool_or_url: Any,
        job: str | None = None,
        name: str | None = None,
        *,
        task_queue: str = DEFAULT_TASK_QUEUE,
        results_queue: str = DEFAULT_RESULTS_QUEUE,
        timeout: float | None = None,
        max_retries: int = 3,
        retry_on: Iterable[type[BaseException] | str] = (),
        keep_results: bool = True,
        transport_options: dict[str, Any] | None = None,
        control_queue: str = CONTROL_QUEUE,
        warn_after: float = DEFAULT_WARN_AFTER,
    ) -> None:
        self.name = name or _default_name()
        self.id = f"{self.name}-{uuid.uuid4().hex[:8]}"
        self.task_queue = task_queue
        self.results_queue = results_queue
        self.default_timeout = timeout
        self.default_max_retries = max_retries
        self.default_retry_on = _type_names(retry_on)
        self.keep_results = keep_results
        self.control_queue = control_queue
        self._transport, self._owns_transport, pool_job = self._connect(
            pool_or_url, transport_options or {}
        )
        # A broker that binds mailboxes to identities lets this one read only groups so named.
        self.id = self._transport.mailbox_prefix + self.id
        self.job = job or pool_job or "default"
        self._transport.declare_queue(task_queue)
        self._transport.declare_queue(results_queue, grouped=True)
        self._transport.declare_queue(control_queue, grouped=True)
        self._reply_to = ReplyTo(results_queue, self.id)
        # Tasks carry its hash, cancels the secret: no one else can cancel them; results
        # carry the hash back: no one else can answer them (realtime_batch/control.py).
        self._session_secret = os.urandom(16).hex()
        self._session_key = session_key(self._session_secret)
        self._payloads = SessionPayloads.open(  # large values by reference (#20)
            pool_or_url, self.job, self._session_key, self._transport.max_message_size
        )
        # cancellation: engines heard from, where long tasks run, cancels not yet located
        self._engines: dict[str, float] = {}
        self._running_on: dict[str, str] = {}
        self._cancel_unlocated: dict[str, float] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap of (deadline, task id)
        # health: when the first task no engine has answered for was sent
        self.warn_after = warn_after
        self._unserved_since: float | None = None
        self._warned = False

        self._lock = threading.Lock()
        self._futures: dict[str, TaskFuture] = {}
        self._finished_ids: set[str] = set()
        self._unread: deque[Result] = deque()
        self._arrived = threading.Condition(self._lock)
        self._outbox: list[tuple[TaskFuture, Message]] = []
        self._outbox_ready = threading.Condition(threading.Lock())
        self._sending = False
        self._last_submit = 0.0
        self._ids = itertools.count(1)
        self._received = 0
        self._duplicates = 0
        self._forged = 0
        self._callbacks: list[Callable[[Result], None]] = []
        self._closed = threading.Event()
        self._sender = threading.Thread(
            target=self._send_loop, name=f"rtb-send-{self.id}", daemon=True
        )
        self._listener = threading.Thread(
            target=self._listen_loop, name=f"rtb-listen-{self.id}", daemon=True
        )
        self._sender.start()
        self._listener.start()

    @staticmethod
    def _connect(target: Any, options: dict[str, Any]) -> tuple[Transport, bool, str | None]:
        if isinstance(target, Transport):
            return target, False, None
        if isinstance(target, str):
            return open_transport(target, **options), True, None
        url = getattr(target, "transport_url", None)
        if not isinstance(url, str):
            raise TypeError(
                "Session() takes a Pool, a transport URL or a Transport, "
                f"got {type(target).__name__}"
            )
        options = {**getattr(target, "transport_options", {}), **options}
        return open_transport(url, **options), True, getattr(target, "job", None)

    # ------------------------------------------------------------------ submitting
    def submit(
        self,
        command: str,
        *args: Any,
        task_id: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        retry_on: Iterable[type[BaseException] | str] | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> TaskFuture:
        """Submit one task; return a future for its value.

        Args:
            command: a task module (``"hello.py"``) or jar (``"pi.jar"``) staged on the pool.
            *args: positional arguments for the task (the values docs/payloads.md lists;
                large ones travel by reference).
            task_id: unique id within the session (generated when omitted).
            timeout: seconds the task may run before it is stopped (error result).
            max_retries: retries after infrastructure faults and ``retry_on`` exceptions
                (default: the session's).
            deadline: ``time.time()`` after which the task must not start (it comes
                back with status ``"expired"``).
            retry_on: exception types (or names) raised by the task that are retried,
                with exponential backoff (default: the session's).
            priority: not supported by any transport (raises ``ValueError`` if given):
                use a separate task queue and session for urgent work.
            **kwargs: keyword arguments for the task (every non-reserved keyword).

        Returns:
            A ``concurrent.futures.Future``; ``.result()`` returns the task's value or
            raises ``TaskError``.
        """
        if self._closed.is_set():
            raise SessionClosedError(f"session {self.id!r} is closed")
        if priority is not None:
            raise ValueError(
                "task priority is not supported by the transports (memory, zmq, Service Bus "
                "queues are FIFO): submit urgent tasks to another task_queue instead"
            )
        task_id = str(next(self._ids)) if task_id is None else str(task_id)
        record = TaskRecord(
            session=self.id,
            job=self.job,
            task=task_id,
            command=command,
            reply_to=self._reply_to,
            args=list(args),
            kwargs=kwargs,
            max_retries=self.default_max_retries if max_retries is None else max_retries,
            timeout=self.default_timeout if timeout is None else timeout,
            deadline=deadline,
            retry_on=self.default_retry_on if retry_on is None else _type_names(retry_on),
            session_key=self._session_key,
        )
        body = self._payloads.encode_task(record)  # ProtocolError: an argument cannot travel
        message = Message(
            body,
            correlation_id=task_id,
            properties=NOTIFY_PROPERTIES,
            ttl=None if deadline is None else max(deadline - time.time(), 0.001),
        )
        if len(body) > self._transport.max_message_size:
            from realtime_batch.transport import MessageTooLargeError

            raise MessageTooLargeError(len(body), self._transport.max_message_size, "task")
        future = TaskFuture(self, task_id)
        future.submitted_at = record.submitted_at  # type: ignore[attr-defined]
        with self._lock:
            if task_id in self._futures or task_id in self._finished_ids:
                raise ValueError(f"task id {task_id!r} was already used in this session")
            self._futures[task_id] = future
            if self._unserved_since is None and not self._engines:
                self._unserved_since = record.submitted_at
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, task_id))
        self._enqueue(future, message)
        return future

    def _enqueue(self, future: TaskFuture, message: Message) -> None:
        """Hand a task to the sender thread, or send it at once when the session is idle.

        A lone submission (nothing queued, nothing being sent, no submission in the last
        0.3 ms) is sent from the caller's thread, saving a thread hand-off on the
        interactive path, where submissions are a round trip apart; bursts (a loop of
        ``submit`` calls, tens of microseconds apart) go through the sender thread,
        which batches them.
        """
        now = time.monotonic()
        with self._outbox_ready:
            while len(self._outbox) >= _OUTBOX_LIMIT and not self._closed.is_set():
                self._outbox_ready.wait(_POLL)
            closed = self._closed.is_set()  # while waiting for room: nothing will send it
            idle = now - self._last_submit > _IDLE_GAP
            self._last_submit = now
            if not closed and (not idle or self._sending or self._outbox):
                self._outbox.append((future, message))
                self._outbox_ready.notify_all()
                return
            if not closed:
                self._sending = True
        if closed:
            self._forget(future.task_id)
            future._cancel_locally()
            raise SessionClosedError(f"session {self.id!r} is closed")
        try:
            self._send_batch([(future, message)], retry=False)
        finally:
            with self._outbox_ready:
                self._sending = False
                self._outbox_ready.notify_all()

    def map(self, command: str, *iterables: Iterable[Any], **options: Any) -> list[TaskFuture]:
        """Submit ``command(*items)`` for each tuple of items; return the futures in order."""
        return [self.submit(command, *items, **options) for items in zip(*iterables, strict=False)]

    @staticmethod
    def as_completed(
        futures: Iterable[concurrent.futures.Future], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future]:
        """``concurrent.futures.as_completed`` (task futures are plain futures)."""
        return concurrent.futures.as_completed(futures, timeout=timeout)

    def _send_loop(self) -> None:
        while True:
            with self._outbox_ready:
                # One send at a time (the caller's or this thread's) keeps tasks in order.
                while not self._outbox or self._sending:
                    if self._closed.is_set() and not self._outbox:
                        return
                    self._outbox_ready.wait(_POLL)
                batch = self._outbox[:_SEND_BATCH]
                del self._outbox[:_SEND_BATCH]
                self._sending = True
                self._outbox_ready.notify_all()  # room for submitters waiting on the limit
            try:
                self._send_batch(batch)
            finally:
                with self._outbox_ready:
                    self._sending = False

    def _send_batch(self, batch: list[tuple[TaskFuture, Message]], *, retry: bool = True) -> None:
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
                        self._transport.send(self.task_queue, messages)
            else:
                self._transport.send(self.task_queue, messages)
        except _TRANSIENT as exc:
            if not retry and not self._closed.is_set():
                log.info("send failed (%s); the sender thread retries", exc)
                with self._outbox_ready:
                    self._outbox[:0] = batch
                    self._outbox_ready.notify_all()
                return
            self._fail_batch(batch, exc)
        except Exception as exc:  # a failed send fails exactly those tasks
            self._fail_batch(batch, exc)

    def _fail_batch(self, batch: list[tuple[TaskFuture, Message]], exc: Exception) -> None:
        log.warning("sending %d tasks failed: %s", len(batch), exc)
        for future, _ in batch:
            self._forget(future.task_id)
            if not future.done():
                future.set_exception(exc)

    # ------------------------------------------------------------------ receiving
    def _listen_loop(self) -> None:
        transport = self._transport
        # zmq: the deliveries of a batch are completed by the request that receives the
        # next one (one request per batch instead of two)
        settle_and_receive = getattr(transport, "settle_and_receive", None)
        done: list[Delivery] = []
        while not self._closed.is_set():
            try:
                if done and settle_and_receive is not None:
                    batch, _lost = settle_and_receive(
                        self.results_queue, [], done, self.results_queue,
                        max_messages=_RECEIVE_BATCH, timeout=_POLL, group=self.id,
                    )  # fmt: skip
                else:
                    batch = transport.receive(
                        self.results_queue, max_messages=_RECEIVE_BATCH, timeout=_POLL,
                        group=self.id,
                    )  # fmt: skip
                done = []
            except TransportError as exc:
                if self._closed.is_set():
                    break
                log.warning("receiving results failed (retrying): %s", exc)
                done = []  # their leases lapse: a redelivery is dropped as a duplicate
                self._closed.wait(0.5)
                continue
            done = self._take_batch(batch)
            # Settle after the futures are resolved (latency), in one round trip; a
            # lease lost meanwhile only means a redelivery, dropped as a duplicate.
            if done and settle_and_receive is None:
                self._settle(transport.complete_many, done)
                done = []
            if self._deadlines and self._deadlines[0][0] + _EXPIRY_SLACK < time.time():
                self._expire_overdue()
            if self._unserved_since is not None and not self._warned:
                self._warn_if_unserved()
        if done:
            self._settle(transport.complete_many, done)

    def _take_batch(self, batch: list[Delivery]) -> list[Delivery]:
        """Resolve the futures of a batch of results; return the deliveries to complete."""
        done: list[Delivery] = []
        records: list[ResultRecord] = []
        for delivery in batch:
            if delivery.message.properties and KIND in delivery.message.properties:
                done.append(delivery)
                self._on_notice(delivery.message)
                continue
            try:
                records.append(decode_result(delivery.message.body))
            except ProtocolError as exc:
                log.warning("dropping a malformed result message: %s", exc)
                self._settle(self._transport.dead_letter, delivery, "MalformedResult", str(exc))
                continue
            done.append(delivery)
        for record in records:
            self._deliver(record)
        return done

    @staticmethod
    def _settle(action: Callable[..., None], delivery: Any, *args: Any) -> None:
        try:
            action(delivery, *args)
        except TransportError as exc:  # lost lock: the redelivery is dropped as a duplicate
            log.debug("settling a result failed: %s", exc)

    def _deliver(self, record: ResultRecord) -> None:
        if record.session_key != self._session_key:
            self._forged += 1
            log.warning(
                "session %s: dropped a result for task %r that does not carry this session's "
                "key (not the answer to a task it sent)", self.id, record.task,
            )  # fmt: skip
            return
        record = self._payloads.take_result(record)  # referenced values fetched (#20)
        now = time.time()
        if record.engine:
            heard = self._engines.get(record.engine)
            if heard is None:
                self._heard_from(record.engine)
            elif now - heard > _ENGINE_REFRESH:
                self._engines[record.engine] = now
        with self._lock:
            future = self._futures.pop(record.task, None)
            if future is None:
                self._duplicates += 1
                return  # duplicate, cancelled, or not ours
            self._finished_ids.add(record.task)
            self._running_on.pop(record.task, None)
            self._received += 1
            result = Result(
                task_id=record.task,
                ok=record.ok,
                value=record.value,
                error=record.error,
                engine=record.engine,
                attempt=record.attempt,
                status=record.status,
                submitted_at=getattr(future, "submitted_at", None),
                started_at=record.started_at,
                finished_at=record.finished_at,
                received_at=now,
            )
            if self.keep_results:
                self._unread.append(result)
            self._arrived.notify_all()
            callbacks = list(self._callbacks)
        if record.status == STATUS_OK:
            future.set_result(record.value)
        elif record.status == STATUS_CANCELLED:
            future._cancel_locally()
        else:
            error = record.error or (
                ErrorInfo("TaskExpiredError", "the task's deadline passed before it started")
                if record.status == STATUS_EXPIRED
                else ErrorInfo("TaskError", record.status)
            )
            future.set_exception(TaskError(record.task, error, record.engine, record.attempt))
        self._run_callbacks(callbacks, result)

    @staticmethod
    def _run_callbacks(callbacks: list[Callable[[Result], None]], result: Result) -> None:
        for callback in callbacks:
            try:
                callback(result)
            except Exception:
                log.exception("result callback failed")

    def _forget(self, task_id: str) -> None:
        with self._lock:
            if self._futures.pop(task_id, None) is not None:
                self._finished_ids.add(task_id)
                self._arrived.notify_all()

    # ------------------------------------------------------------------ notices, expiry
    def _on_notice(self, message: Message) -> None:
        """An engine says it holds tasks of this session (``engine``) or runs one (``running``)."""
        data = decode_control(message.body)
        engine = None if data is None else data.get("engine")
        if data is None or not isinstance(engine, str):
            log.debug("dropping a malformed notice")
            return
        if data.get("key") != self._session_key:  # not about a task this session sent
            log.warning("session %s: dropped a notice without this session's key", self.id)
            return
        if message.properties.get(KIND) == KIND_RUNNING:
            with self._lock:
                for task_id in data["tasks"]:
                    if task_id in self._futures:
                        self._running_on[task_id] = engine
        if engine not in self._engines:
            self._heard_from(engine)
        else:
            self._engines[engine] = time.time()

    def _heard_from(self, engine: str) -> None:
        """A new engine: remember it, and pass it the cancels not located yet."""
        now = time.time()
        with self._lock:
            self._engines[engine] = now
            self._unserved_since = None
            horizon = now - _CANCEL_REPLAY
            for task_id in [t for t, at in self._cancel_unlocated.items() if at < horizon]:
                del self._cancel_unlocated[task_id]
            replay = list(self._cancel_unlocated)
        if replay:
            self._send_cancels({engine: replay})

    def _expire_overdue(self) -> None:
        """Report as expired the tasks still unanswered after their deadline (+ slack).

        Their message expired in the queue (TTL) before any engine took it, so no
        engine will answer. Tasks known to be running are left alone.
        """
        now = time.time()
        expired: list[tuple[TaskFuture, Result]] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] + _EXPIRY_SLACK < now:
                _, task_id = heapq.heappop(self._deadlines)
                if task_id in self._running_on or task_id not in self._futures:
                    continue
                future = self._futures.pop(task_id)
                self._finished_ids.add(task_id)
                result = self._local_result(future, STATUS_EXPIRED, now)
                if self.keep_results:
                    self._unread.append(result)
                expired.append((future, result))
            if expired:
                self._arrived.notify_all()
            callbacks = list(self._callbacks)
        for future, result in expired:
            error = ErrorInfo("TaskExpiredError", "the task's deadline passed before it started")
            future.set_exception(TaskError(future.task_id, error))
            self._run_callbacks(callbacks, result)

    @staticmethod
    def _local_result(future: TaskFuture, status: str, now: float) -> Result:
        return Result(
            task_id=future.task_id,
            ok=False,
            value=None,
            error=None,
            engine="",
            attempt=0,
            status=status,
            submitted_at=getattr(future, "submitted_at", None),
            received_at=now,
        )

    # ------------------------------------------------------------------ cancelling
    def cancel(self, task_ids: str | Iterable[str | concurrent.futures.Future]) -> int:
        """Cancel tasks, pending or running; return how many were cancelled here.

        Each future is cancelled at once (``CancelledError``), a ``Result`` with status
        ``"cancelled"`` is added to :meth:`results`, and any later result for the task
        is dropped. Engines are asked to skip the task if it has not started and to
        stop it (kill its worker) if it runs. Tasks that already finished are left
        alone.
        """
        if isinstance(task_ids, str):
            task_ids = [task_ids]
        ids = [str(getattr(t, "task_id", t)) for t in task_ids]
        now = time.time()
        cancelled: list[tuple[TaskFuture, Result]] = []
        located: dict[str, list[str]] = {}
        unlocated: list[str] = []
        with self._lock:
            for task_id in ids:
                future = self._futures.pop(task_id, None)
                if future is None:
                    continue
                self._finished_ids.add(task_id)
                engine = self._running_on.pop(task_id, None)
                if engine is None:
                    unlocated.append(task_id)
                    self._cancel_unlocated[task_id] = now
                else:
                    located.setdefault(engine, []).append(task_id)
                result = self._local_result(future, STATUS_CANCELLED, now)
                if self.keep_results:
                    self._unread.append(result)
                cancelled.append((future, result))
            if cancelled:
                self._arrived.notify_all()
            horizon = now - _ENGINE_FORGET
            engines = [engine for engine, heard in self._engines.items() if heard > horizon]
            callbacks = list(self._callbacks)
        if not cancelled:
            return 0
        self._withdraw_unsent({future.task_id for future, _ in cancelled})
        for future, result in cancelled:
            future._cancel_locally()
            self._run_callbacks(callbacks, result)
        for engine in engines:
            if unlocated:
                located.setdefault(engine, []).extend(unlocated)
        self._send_cancels(located)
        return len(cancelled)

    def cancel_all(self) -> int:
        """Cancel every task that has no result yet; return how many."""
        with self._lock:
            ids = list(self._futures)
        return self.cancel(ids)

    def _withdraw_unsent(self, task_ids: set[str]) -> None:
        """Take cancelled tasks out of the sender's queue if they were not sent yet."""
        with self._outbox_ready:
            if self._outbox:
                self._outbox = [(f, m) for f, m in self._outbox if f.task_id not in task_ids]

    def _send_cancels(self, by_engine: dict[str, list[str]]) -> None:
        messages = [
            message
            for engine, ids in by_engine.items()
            for message in cancel_messages(self.id, engine, ids, self._session_secret)
        ]
        if not messages or self._closed.is_set():
            return
        try:
            self._transport.send(self.control_queue, messages)
        except TransportError as exc:  # the futures are cancelled anyway
            log.warning("could not send %d cancel request(s): %s", len(messages), exc)

    # ------------------------------------------------------------------ health
    def health(self) -> SessionHealth:
        """What this session knows of its progress: outstanding tasks, engines heard from.

        ``state`` is ``"no-engine"`` when tasks have waited ``warn_after`` seconds and no
        engine has taken any (then ``message`` says what to check), ``"served"`` once
        engines answer, ``"waiting"`` before that, ``"idle"`` with nothing outstanding.
        """
        with self._lock:
            outstanding = len(self._futures)
            engines = dict(self._engines)
            unserved_since = self._unserved_since
        return assess(
            outstanding=outstanding,
            received=self._received,
            unserved_since=unserved_since,
            engines=engines,
            warn_after=self.warn_after,
            task_queue=self.task_queue,
            transport=self._transport_label,
        )

    def _warn_if_unserved(self) -> None:
        since = self._unserved_since
        if since is None or time.time() - since < self.warn_after:
            return
        health = self.health()
        if health.state == STATE_NO_ENGINE:
            self._warned = True
            log.warning("session %s: %s", self.id, health.message)

    @property
    def _transport_label(self) -> str:
        url = getattr(self._transport, "url", None)
        if isinstance(url, str):
            return str(redact("transport.url", url))
        return type(self._transport).__name__

    # ------------------------------------------------------------------ results
    def results(self) -> list[Result]:
        """Results that arrived since the last call (the seed's ``get_results``)."""
        with self._lock:
            taken = list(self._unread)
            self._unread.clear()
        return taken

    def num_results_returned(self) -> int:
        """Results that arrived and were not yet taken by :meth:`results`."""
        with self._lock:
            return len(self._unread)

    @property
    def outstanding(self) -> int:
        """Tasks submitted whose result has not arrived yet."""
        with self._lock:
            return len(self._futures)

    @property
    def received(self) -> int:
        """Results received in this session (duplicates excluded)."""
        return self._received

    @property
    def duplicates_dropped(self) -> int:
        """Result messages dropped as duplicates (or for cancelled tasks)."""
        return self._duplicates

    @property
    def forged_dropped(self) -> int:
        """Result messages dropped because they did not carry this session's key."""
        return self._forged

    def add_result_callback(self, callback: Callable[[Result], None]) -> None:
        """Call ``callback(result)`` (in the listener thread) for every arriving result."""
        with self._lock:
            self._callbacks.append(callback)

    def __iter__(self) -> Iterator[Result]:
        """Yield results as they arrive until no submitted task is outstanding."""
        while True:
            with self._arrived:
                while not self._unread and self._futures and not self._closed.is_set():
                    self._arrived.wait(_POLL)
                if self._unread:
                    result = self._unread.popleft()
                else:
                    return
            yield result

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted task has a result; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._arrived:
            while self._futures:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._arrived.wait(_POLL if remaining is None else min(remaining, _POLL))
        return True

    # ------------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the session promptly; outstanding futures are cancelled. Idempotent."""
        if self._closed.is_set():
            return
        with self._outbox_ready:
            self._closed.set()
            self._outbox_ready.notify_all()
        self._sender.join(5)
        self._listener.join(5)
        self._payloads.close()
        with self._lock:
            pending = list(self._futures.values())
            self._futures.clear()
            self._arrived.notify_all()
        for future in pending:
            future._cancel_locally()
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.outstanding} outstanding"
        return f"<Session {self.id!r} job={self.job!r} {state}>"


def _type_names(types: Iterable[type[BaseException] | str]) -> list[str]:
    """Exception type names, as engines compare them with the task's exception."""
    if isinstance(types, (str, type)):
        types = [types]
    return [t if isinstance(t, str) else t.__name__ for t in types]


def __getattr__(name: str) -> Any:
    """``JobManager`` lives in ``jobmanager.py``; it is also importable from here."""
    if name == "JobManager":
        from .jobmanager import JobManager

        return JobManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
