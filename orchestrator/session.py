"""Client sessions: submit tasks, get each result back as soon as it is done.

A ``Session`` owns one mailbox (a group on the shared results queue) and two
threads: a *sender* that batches submitted tasks into as few transport sends as
possible, and a *listener* that receives results, drops duplicates and resolves
the matching ``concurrent.futures.Future``.
"""

from __future__ import annotations

import concurrent.futures
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

import attrs

from realtime_batch.protocol import (
    STATUS_CANCELLED,
    STATUS_OK,
    ErrorInfo,
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    decode_result,
    encode_task,
)
from realtime_batch.transport import Message, Transport, TransportError, open_transport

__all__ = [
    "DEFAULT_RESULTS_QUEUE",
    "DEFAULT_TASK_QUEUE",
    "RESERVED_OPTIONS",
    "JobManager",
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
RESERVED_OPTIONS = ("task_id", "timeout", "max_retries", "deadline", "retry_on")
_SEND_BATCH = 1000
_RECEIVE_BATCH = 512
_POLL = 0.2  # listener poll interval: bounds how long close() waits for it


class TaskError(Exception):
    """A task failed on its engine (or could not be run).

    Attributes:
        task_id: the task's id.
        remote_type: the exception type name raised remotely (e.g. ``"ValueError"``).
        remote_message: its message.
        remote_traceback: the remote traceback text.
        engine: id of the engine that reported the failure.
        attempt: the attempt number that failed.
    """

    def __init__(self, task_id: str, error: ErrorInfo, engine: str = "", attempt: int = 1):
        super().__init__(f"{error.type}: {error.message} (task {task_id!r}, engine {engine!r})")
        self.task_id = task_id
        self.remote_type = error.type
        self.remote_message = error.message
        self.remote_traceback = error.traceback
        self.engine = engine
        self.attempt = attempt


class TaskCancelledError(concurrent.futures.CancelledError):
    """The task was cancelled before it produced a result."""


class SessionClosedError(RuntimeError):
    """The session is closed; no more tasks can be submitted."""


@attrs.frozen
class Result:
    """A task's outcome as received by the client.

    Attributes:
        task_id: the task's id.
        ok: True when the task returned a value.
        value: the returned value (None on failure).
        error: remote type, message and traceback on failure.
        engine: the engine (host + pid) that ran the task.
        attempt: which attempt produced the result (1 = first).
        status: ``"ok"``, ``"error"``, ``"expired"`` or ``"cancelled"``.
        submitted_at / started_at / finished_at / received_at: ``time.time()`` stamps.
    """

    task_id: str
    ok: bool
    value: Any
    error: ErrorInfo | None
    engine: str
    attempt: int
    status: str
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    received_at: float | None = None

    @property
    def latency(self) -> float | None:
        """Seconds from submission to the result's arrival at the client."""
        if self.submitted_at is None or self.received_at is None:
            return None
        return self.received_at - self.submitted_at


class TaskFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` for one task, carrying its ``task_id``."""

    def __init__(self, session: Session, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id
        self._session = session

    def cancel(self) -> bool:
        """Cancel the task: it will not be reported as a result to this session."""
        cancelled = super().cancel()
        if cancelled:
            self._session._forget(self.task_id)
        return cancelled

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id!r} {self._state.lower()}>"


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
        max_retries: default retries after infrastructure faults (engine or worker death).
        keep_results: keep every result for :meth:`results` (the seed's ``get_results``).
        transport_options: passed to ``open_transport``.
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
        keep_results: bool = True,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = name or _default_name()
        self.id = f"{self.name}-{uuid.uuid4().hex[:8]}"
        self.task_queue = task_queue
        self.results_queue = results_queue
        self.default_timeout = timeout
        self.default_max_retries = max_retries
        self.keep_results = keep_results
        self._transport, self._owns_transport, pool_job = self._connect(
            pool_or_url, transport_options or {}
        )
        self.job = job or pool_job or "default"
        self._transport.declare_queue(task_queue)
        self._transport.declare_queue(results_queue, grouped=True)
        self._reply_to = ReplyTo(results_queue, self.id)

        self._lock = threading.Lock()
        self._futures: dict[str, TaskFuture] = {}
        self._finished_ids: set[str] = set()
        self._unread: deque[Result] = deque()
        self._arrived = threading.Condition(self._lock)
        self._outbox: list[tuple[TaskFuture, Message]] = []
        self._outbox_ready = threading.Condition(threading.Lock())
        self._ids = itertools.count(1)
        self._received = 0
        self._duplicates = 0
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
        retry_on: Iterable[type[BaseException] | str] = (),
        **kwargs: Any,
    ) -> TaskFuture:
        """Submit one task; return a future for its value.

        Args:
            command: a task module (``"hello.py"``) or jar (``"pi.jar"``) staged on the pool.
            *args: positional arguments for the task (JSON-serialisable).
            task_id: unique id within the session (generated when omitted).
            timeout: seconds the task may run before it is stopped (error result).
            max_retries: retries after infrastructure faults (default: session's).
            deadline: ``time.time()`` after which the task must not start (it comes
                back with status ``"expired"``).
            retry_on: exception types (or names) raised by the task that are retried.
            **kwargs: keyword arguments for the task (every non-reserved keyword).

        Returns:
            A ``concurrent.futures.Future``; ``.result()`` returns the task's value or
            raises ``TaskError``.
        """
        if self._closed.is_set():
            raise SessionClosedError(f"session {self.id!r} is closed")
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
            retry_on=[r if isinstance(r, str) else r.__name__ for r in retry_on],
        )
        body = encode_task(record)  # raises ProtocolError for non-JSON arguments
        message = Message(
            body,
            correlation_id=task_id,
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
        with self._outbox_ready:
            self._outbox.append((future, message))
            self._outbox_ready.notify()
        return future

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
                while not self._outbox and not self._closed.is_set():
                    self._outbox_ready.wait()
                if not self._outbox:
                    return
                batch = self._outbox[:_SEND_BATCH]
                del self._outbox[:_SEND_BATCH]
            try:
                self._transport.send(self.task_queue, [m for _, m in batch])
            except Exception as exc:  # a failed send fails exactly those tasks
                log.warning("sending %d tasks failed: %s", len(batch), exc)
                for future, _ in batch:
                    self._forget(future.task_id)
                    if not future.done():
                        future.set_exception(exc)

    # ------------------------------------------------------------------ receiving
    def _listen_loop(self) -> None:
        transport = self._transport
        while not self._closed.is_set():
            try:
                batch = transport.receive(
                    self.results_queue, max_messages=_RECEIVE_BATCH, timeout=_POLL, group=self.id
                )
            except TransportError as exc:
                if self._closed.is_set():
                    return
                log.warning("receiving results failed (retrying): %s", exc)
                self._closed.wait(0.5)
                continue
            for delivery in batch:
                try:
                    record = decode_result(delivery.message.body)
                except ProtocolError as exc:
                    log.warning("dropping a malformed result message: %s", exc)
                    self._settle(transport.dead_letter, delivery, "MalformedResult", str(exc))
                    continue
                self._settle(transport.complete, delivery)
                self._deliver(record)

    @staticmethod
    def _settle(action: Callable[..., None], delivery: Any, *args: Any) -> None:
        try:
            action(delivery, *args)
        except TransportError as exc:  # lost lock: the redelivery is dropped as a duplicate
            log.debug("settling a result failed: %s", exc)

    def _deliver(self, record: ResultRecord) -> None:
        now = time.time()
        with self._lock:
            future = self._futures.pop(record.task, None)
            if future is None:
                self._duplicates += 1
                return  # duplicate, cancelled, or not ours
            self._finished_ids.add(record.task)
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
            future.cancel()
        else:
            error = record.error or ErrorInfo("TaskError", record.status)
            future.set_exception(TaskError(record.task, error, record.engine, record.attempt))
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
        with self._lock:
            pending = list(self._futures.values())
            self._futures.clear()
            self._arrived.notify_all()
        for future in pending:
            future.cancel()
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.outstanding} outstanding"
        return f"<Session {self.id!r} job={self.job!r} {state}>"


class JobManager(Session):
    """The seed's ``JobManager``, kept so existing drivers migrate with few changes.

    ``JobManager("client_1", job_id)`` opens a session named ``client_1`` on ``job_id``,
    connecting to ``pool_or_url`` or, when omitted, to ``RTBATCH_TRANSPORT`` / the
    ``[transport] url`` of ``rtbatch.toml``.
    """

    def __init__(
        self, client: str, job_id: str | None = None, pool_or_url: Any = None, **options: Any
    ) -> None:
        if pool_or_url is None:
            pool_or_url = _configured_transport_url()
        super().__init__(pool_or_url, job=job_id, name=client, **options)

    def submit_task(self, task_id: Any, command: str, params: Any = None) -> TaskFuture:
        """Seed: ``submit_task(task_id, command, params)``; a list of params is spread."""
        args = params if isinstance(params, list | tuple) else ([] if params is None else [params])
        return self.submit(command, *args, task_id=str(task_id))

    def get_results(self) -> list[Result]:
        """Seed: the results returned since the last call."""
        return self.results()

    def close_job(self) -> None:
        """Seed: stop listening (which now works) and release the connection."""
        self.close()


def _configured_transport_url() -> str:
    """The transport URL from ``RTBATCH_TRANSPORT`` or ``rtbatch.toml`` (``[transport] url``)."""
    from realtime_batch.config import Config

    url = Config.load()["transport.url"]
    if not url or url.rstrip("/").endswith(":0"):
        raise ValueError(
            "JobManager needs a running transport: pass pool_or_url=... (e.g. a LocalPool), "
            "set RTBATCH_TRANSPORT, or set [transport] url in rtbatch.toml"
        )
    return url
