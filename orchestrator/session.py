"""Client sessions: submit tasks, get each result back as soon as it is done.

A ``Session`` owns one mailbox (a group on the shared results queue) and is cut by
responsibility into parts beside this module:

* ``_sending``: tasks become messages (``task_message``) and a sender thread batches
  them into as few transport sends as possible (``Sender``);
* ``_listening``: a listener thread receives results and engine notices and hands them
  here (``Listener``);
* ``_tracking``: the engines heard from, where tasks run, and where cancel requests go
  (``EngineTracker``);
* ``_expiry``: the deadlines of unanswered tasks (``DeadlineQueue``);
* ``_ledger``: the outstanding tasks' futures and the ids already used, bounded by
  what is outstanding (``TaskLedger``);
* ``_inbox``: the results handed out, by ``results()``, iteration and callbacks
  (``Inbox``);
* ``_workflow``: tasks that wait for other tasks' futures (``Workflow``);
* ``jobmanager``: the prototype's ``JobManager`` on top of a session.

This module ties them together: it registers futures at submit, resolves them when
their result arrives (``Session._resolve``, dropping duplicates), and cancels them.

Cancellation: a cancelled task's future is cancelled at once and any later result
for it is dropped; engines are asked to stop the task (see ``_tracking``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from realtime_batch.config import redact
from realtime_batch.control import CONTROL_QUEUE, session_key
from realtime_batch.payloads import SessionPayloads
from realtime_batch.protocol import (
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_EXPIRED,
    STATUS_OK,
    ErrorInfo,
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    replace,
)
from realtime_batch.transport import Message, Transport, open_transport

from ._expiry import DeadlineQueue
from ._inbox import Callback, Inbox, local_result
from ._ledger import TaskLedger
from ._listening import Listener
from ._sending import Sender, task_message
from ._tracking import EngineTracker
from ._workflow import Workflow, find_futures, substitute
from .health import STATE_NO_ENGINE, SessionHealth, assess
from .results import (
    DependencyError,
    Result,
    SessionClosedError,
    TaskCancelledError,
    TaskError,
    TaskFuture,
)

__all__ = [
    "DEFAULT_RESULTS_QUEUE",
    "DEFAULT_TASK_QUEUE",
    "DEFAULT_WARN_AFTER",
    "RESERVED_OPTIONS",
    "DependencyError",
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
RESERVED_OPTIONS = (
    "task_id",
    "timeout",
    "max_retries",
    "deadline",
    "retry_on",
    "priority",
    "after",
)
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
        session_secret = os.urandom(16).hex()
        self._session_key = session_key(session_secret)
        self._payloads = SessionPayloads.open(  # large values by reference (#20)
            pool_or_url, self.job, self._session_key, self._transport.max_message_size
        )
        self.warn_after = warn_after
        self._warned = False

        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ledger = TaskLedger()
        self._futures = self._ledger.futures  # outstanding tasks' futures, by id
        self._inbox = Inbox(self._lock, keep_results)
        self._received = 0
        self._duplicates = 0
        self._forged = 0
        self._deadlines = DeadlineQueue()
        self._workflow = Workflow(self, self._send_released, self._fail_local)
        self._tracker = EngineTracker(
            self._transport, control_queue, self.id, session_secret, self._session_key,
            self._lock, self._closed,
        )  # fmt: skip
        self._sender = Sender(
            self._transport, task_queue, self._closed, self._fail_send, f"rtb-send-{self.id}"
        )
        self._listener = Listener(
            self._transport, results_queue, self.id, self._closed,
            on_results=self._resolve, on_notice=self._on_notice, on_tick=self._on_tick,
            name=f"rtb-listen-{self.id}", idle=lambda: not self._futures,
        )  # fmt: skip
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
        after: Iterable[TaskFuture] | None = None,
        **kwargs: Any,
    ) -> TaskFuture:
        """Submit one task; return a future for its value.

        A future of this session may stand in the arguments (also inside lists and
        dicts): the task is sent once its inputs are done, with their values in their
        place; if one fails or is cancelled the task is not run and its future raises
        ``DependencyError`` (docs/workflows.md).

        Args:
            command: a task module (``"hello.py"``) or jar (``"pi.jar"``) staged on the pool.
            *args: positional arguments for the task (JSON-serialisable, or futures).
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
            after: futures of this session that must finish (successfully) before the
                task is sent, their values not passed.
            **kwargs: keyword arguments for the task (every non-reserved keyword).

        Returns:
            A ``concurrent.futures.Future``; ``.result()`` returns the task's value or
            raises ``TaskError`` (``DependencyError`` if an input failed).

        Raises:
            ValueError: a used task id, or an input future of another session.
            TypeError: ``after`` holds something other than task futures.
            ProtocolError: an argument JSON cannot carry.
        """
        if self._closed.is_set():
            raise SessionClosedError(f"session {self.id!r} is closed")
        if priority is not None:
            raise ValueError(
                "task priority is not supported by the transports (memory, zmq, Service Bus "
                "queues are FIFO): submit urgent tasks to another task_queue instead"
            )
        generated = task_id is None
        if task_id is None:
            with self._lock:
                task_id = self._ledger.new_id()
        record = TaskRecord(
            session=self.id,
            job=self.job,
            task=str(task_id),
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
        if after is not None:
            return self._submit_waiting(record, after, generated)
        try:  # raises ProtocolError for non-JSON arguments (or futures), MessageTooLargeError
            message = self._message(record)
        except ProtocolError:
            if find_futures(record.args) or find_futures(record.kwargs):
                return self._submit_waiting(record, None, generated)
            raise
        future = self._register(record.task, record.submitted_at, deadline, generated)
        self._enqueue(future, message)
        return future

    def _message(self, record: TaskRecord) -> Message:
        """``record``'s message, large arguments in the payload store (``task_message``)."""
        return task_message(record, self._transport.max_message_size, self._payloads.encode_task)

    def _submit_waiting(
        self, record: TaskRecord, after: Iterable[TaskFuture] | None, generated: bool
    ) -> TaskFuture:
        """Register a task that waits for input futures (``_workflow``)."""
        inputs = self._workflow.inputs(record, after)
        # the arguments other than the futures must be sendable: refuse them now
        blank = replace(
            record,
            args=substitute(record.args, lambda _: None),
            kwargs=substitute(record.kwargs, lambda _: None),
        )
        message = self._message(blank)
        future = self._register(record.task, record.submitted_at, record.deadline, generated)
        if inputs:
            # that message was only the check: the one sent is made when the inputs are done
            self._payloads.release(record.task)
            self._workflow.wait_for(future, record, inputs)
        else:  # after=[]: nothing to wait for
            self._enqueue(future, message)
        return future

    def _send_released(self, future: TaskFuture, record: TaskRecord) -> None:
        """A waiting task's inputs are done: send it (from the thread that finished the last)."""
        try:
            message = self._message(record)
        except Exception as exc:  # e.g. an input's value makes the task too large
            self._payloads.release(future.task_id)  # the inputs it was passed (#20)
            self._fail_local(future, exc, STATUS_ERROR)
            return
        if future.done() or not self._sender.release(future, message):
            self._payloads.release(future.task_id)
            self._forget(future.task_id)
            future._cancel_locally()

    def _fail_local(self, future: TaskFuture, exc: BaseException, status: str) -> None:
        """Fail an outstanding task here, without an engine (a failed input, a bad value)."""
        remote = exc.remote_message if isinstance(exc, TaskError) else str(exc)
        error = ErrorInfo(type(exc).__name__, remote)
        now = time.time()
        with self._lock:
            if self._ledger.finish(future.task_id) is None:
                return  # cancelled or closed meanwhile
            result = local_result(future, status, now, error)
            callbacks = self._inbox.arrive(result)
        future.set_exception(exc)
        self._inbox.run_callbacks(callbacks, result)

    def _register(
        self, task_id: str, submitted_at: float, deadline: float | None, generated: bool
    ) -> TaskFuture:
        """A future for a new task, counted as outstanding; refuses a used task id.

        A ``generated`` id (``TaskLedger.new_id``) is new by construction.
        """
        future = TaskFuture(self, task_id, submitted_at)
        with self._lock:
            if not generated and self._ledger.used(task_id):
                raise ValueError(f"task id {task_id!r} was already used in this session")
            self._ledger.add(task_id, future)
            self._tracker.sent(submitted_at)
            if deadline is not None:
                self._deadlines.add(deadline, task_id, self._futures)
        self._listener.nudge()  # a session idle for a while: its listener ticks again
        return future

    def _enqueue(self, future: TaskFuture, message: Message) -> None:
        """Hand a task to the sender; if the session closed meanwhile, cancel it and raise."""
        if not self._sender.enqueue(future, message):
            self._forget(future.task_id)
            future._cancel_locally()
            raise SessionClosedError(f"session {self.id!r} is closed")

    def map(self, command: str, *iterables: Iterable[Any], **options: Any) -> list[TaskFuture]:
        """Submit ``command(*items)`` for each tuple of items; return the futures in order."""
        return [self.submit(command, *items, **options) for items in zip(*iterables, strict=False)]

    @staticmethod
    def as_completed(
        futures: Iterable[concurrent.futures.Future], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future]:
        """``concurrent.futures.as_completed`` (task futures are plain futures)."""
        return concurrent.futures.as_completed(futures, timeout=timeout)

    def _fail_send(self, future: TaskFuture, exc: Exception) -> None:
        """A task could not be sent: it fails with the transport's error."""
        self._forget(future.task_id)
        if not future.done():
            future.set_exception(exc)

    # ------------------------------------------------------------------ receiving
    def _resolve(self, records: list[ResultRecord]) -> None:
        """Results arrived: resolve each one's future, once (the result path's one entry).

        ``records`` is a received batch, in arrival order: the session's lock is taken
        once for the batch, then each future is resolved and its callbacks run, in order.
        """
        accepted: list[ResultRecord] = []
        for record in records:
            if record.session_key != self._session_key:
                self._forged += 1
                log.warning(
                    "session %s: dropped a result for task %r that does not carry this "
                    "session's key (not the answer to a task it sent)", self.id, record.task,
                )  # fmt: skip
                continue
            accepted.append(self._payloads.take_result(record))  # referenced values (#20)
        if not accepted:
            return
        now = time.time()
        for record in accepted:
            self._tracker.on_result(record.engine, now)
        resolved: list[tuple[TaskFuture, ResultRecord, Result | None]] = []
        with self._lock:
            # a Result is made only for someone: results() or a callback
            wanted = self._inbox.keep or bool(self._inbox.callbacks)
            for record in accepted:
                future = self._ledger.finish(record.task)
                if future is None:
                    self._duplicates += 1
                    continue  # duplicate, cancelled, or not ours
                self._tracker.finished(record.task)
                result = _result(record, future, now) if wanted else None
                resolved.append((future, record, result))
            if not resolved:
                return
            self._received += len(resolved)
            callbacks = self._inbox.arrive_all([r for _, _, r in resolved if r is not None])
        for future, record, result in resolved:
            _settle(future, record)
            if callbacks and result is not None:
                self._inbox.run_callbacks(callbacks, result)

    def _forget(self, task_id: str) -> None:
        with self._lock:
            if self._ledger.finish(task_id) is not None:
                self._inbox.arrived.notify_all()

    def _on_notice(self, message: Message) -> None:
        self._tracker.on_notice(message, self._futures)

    def _on_tick(self) -> None:
        """After every receive: expire overdue tasks (or drop finished ones' deadlines), warn."""
        if self._deadlines.any_due(time.time()):
            self._expire_overdue()
        elif self._deadlines:
            with self._lock:
                self._deadlines.compact(self._futures)
        if self._tracker.unserved_since is not None and not self._warned:
            self._warn_if_unserved()

    # ------------------------------------------------------------------ expiry
    def _expire_overdue(self) -> None:
        """Report as expired the tasks still unanswered after their deadline (+ slack).

        Their message expired in the queue (TTL) before any engine took it, so no
        engine will answer. Tasks known to be running are left alone.
        """
        now = time.time()
        expired: list[tuple[TaskFuture, Result, list[Callback]]] = []
        with self._lock:
            for task_id in self._deadlines.pop_due(now, self._futures):
                if self._tracker.is_running(task_id):
                    continue
                future = self._ledger.finish(task_id)
                assert future is not None  # pop_due returns outstanding tasks only
                result = local_result(future, STATUS_EXPIRED, now)
                expired.append((future, result, self._inbox.arrive(result)))
        for future, result, callbacks in expired:
            error = ErrorInfo("TaskExpiredError", "the task's deadline passed before it started")
            future.set_exception(TaskError(future.task_id, error))
            self._inbox.run_callbacks(callbacks, result)

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
        cancelled: list[tuple[TaskFuture, Result, list[Callback]]] = []
        with self._lock:
            for task_id in ids:
                future = self._ledger.finish(task_id)
                if future is None:
                    continue
                result = local_result(future, STATUS_CANCELLED, now)
                cancelled.append((future, result, self._inbox.arrive(result)))
            unsent = self._workflow.discard(f.task_id for f, _, _ in cancelled)
            routes = self._tracker.route(
                [f.task_id for f, _, _ in cancelled if f.task_id not in unsent], now
            )
        if not cancelled:
            return 0
        self._sender.withdraw({future.task_id for future, _, _ in cancelled})
        for future, result, callbacks in cancelled:
            future._cancel_locally()
            self._inbox.run_callbacks(callbacks, result)
        self._tracker.send_cancels(routes)
        return len(cancelled)

    def cancel_all(self) -> int:
        """Cancel every task that has no result yet; return how many."""
        with self._lock:
            ids = list(self._futures)
        return self.cancel(ids)

    # ------------------------------------------------------------------ health
    def health(self) -> SessionHealth:
        """What this session knows of its progress: outstanding tasks, engines heard from.

        ``state`` is ``"no-engine"`` when tasks have waited ``warn_after`` seconds and no
        engine has taken any (then ``message`` says what to check), ``"served"`` once
        engines answer, ``"waiting"`` before that, ``"idle"`` with nothing outstanding.
        """
        with self._lock:
            outstanding = len(self._futures)
            engines = dict(self._tracker.engines)
            unserved_since = self._tracker.unserved_since
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
        since = self._tracker.unserved_since
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
    @property
    def keep_results(self) -> bool:
        """Whether results are kept for :meth:`results` and iteration."""
        return self._inbox.keep

    @keep_results.setter
    def keep_results(self, keep: bool) -> None:
        self._inbox.keep = keep

    def results(self) -> list[Result]:
        """Results that arrived since the last call (the seed's ``get_results``)."""
        with self._lock:
            return self._inbox.take()

    def num_results_returned(self) -> int:
        """Results that arrived and were not yet taken by :meth:`results`."""
        with self._lock:
            return len(self._inbox.unread)

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
            self._inbox.callbacks.append(callback)

    def __iter__(self) -> Iterator[Result]:
        """Yield results as they arrive until no submitted task is outstanding."""
        yield from self._inbox.iterate(self._futures, self._closed)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted task has a result; False on timeout."""
        return self._inbox.wait_until_empty(self._futures, timeout)

    # ------------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the session promptly; outstanding futures are cancelled. Idempotent."""
        if self._closed.is_set():
            return
        self._sender.close(5)
        self._listener.join(5)
        self._payloads.close()
        with self._lock:
            pending = self._ledger.finish_all()
            self._inbox.arrived.notify_all()
        self._workflow.discard(list(self._workflow.waiting))
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


def _result(record: ResultRecord, future: TaskFuture, now: float) -> Result:
    """The ``Result`` handed out for an engine's result record."""
    return Result(
        task_id=record.task,
        ok=record.ok,
        value=record.value,
        error=record.error,
        engine=record.engine,
        attempt=record.attempt,
        status=record.status,
        submitted_at=future.submitted_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        received_at=now,
    )


def _settle(future: TaskFuture, record: ResultRecord) -> None:
    """Resolve ``future`` with an engine's result: its value, cancelled, or a ``TaskError``."""
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


def _type_names(types: Iterable[type[BaseException] | str]) -> list[str]:
    """Exception type names, as engines compare them with the task's exception."""
    if isinstance(types, (str, type)):
        types = [types]
    return [t if isinstance(t, str) else t.__name__ for t in types]
