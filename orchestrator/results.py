"""What a session hands back: ``Result`` records, task futures and the task errors."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from typing import TYPE_CHECKING, Any

import attrs

from realtime_batch.protocol import ErrorInfo

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "DependencyError",
    "Result",
    "SessionClosedError",
    "TaskCancelledError",
    "TaskError",
    "TaskFuture",
]


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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its attributes (for multiprocessing, caches, other processes)."""
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(cls: type[TaskError], args: tuple[Any, ...], state: dict[str, Any]) -> TaskError:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class DependencyError(TaskError):
    """A task was not run because a task it depends on failed or was cancelled.

    Attributes:
        dependency: the task id of the input that failed or was cancelled.
        cause: that input's exception (None when it was cancelled).
    """

    def __init__(self, task_id: str, dependency: str, cause: BaseException | None) -> None:
        if cause is None:
            message = f"input task {dependency!r} was cancelled"
        else:
            message = f"input task {dependency!r} failed: {cause}"
        super().__init__(task_id, ErrorInfo("DependencyError", message))
        self.dependency = dependency
        self.cause = cause


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


_base = concurrent.futures._base
_PENDING = _base.PENDING
_RUNNING = _base.RUNNING
_FINISHED = _base.FINISHED
_CANCELLED = _base.CANCELLED
_CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
_DONE = frozenset({_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED})


class _Wake:
    """What a caller blocked in ``TaskFuture.result`` waits on: one lock, released by the
    future when it finishes or is cancelled (the interface of ``concurrent.futures``'
    waiters). The stdlib's waiter is an ``Event`` (a ``Condition`` and a lock made per
    wait, and a notify on the way out): this is the cheapest hand-off from the session's
    listener thread to the caller."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def _wake(self, _future: concurrent.futures.Future) -> None:
        with contextlib.suppress(RuntimeError):  # woken twice: once is enough
            self._lock.release()

    add_result = add_exception = add_cancelled = _wake

    def wait(self, timeout: float | None) -> None:
        self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


class TaskFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` for one task, carrying its ``task_id``.

    It guards its state with a plain lock instead of a ``Condition`` each (a
    session may hold 100,000 outstanding futures, resolved at thousands a second,
    and a ``Condition`` costs microseconds and most of a future's memory). A caller
    blocked in :meth:`result` or :meth:`exception` waits the way
    ``concurrent.futures.wait`` does, on a waiter of its own that the future
    signals when it finishes or is cancelled.

    Attributes:
        task_id: the task's id.
        submitted_at: ``time.time()`` when the task was submitted (None if unknown).
    """

    def __init__(self, session: Session, task_id: str, submitted_at: float | None = None) -> None:
        # Future.__init__ with a lock for its condition: concurrent.futures.wait and
        # as_completed only acquire and release it; every method of Future that
        # waits on it or notifies it is replaced here.
        self._condition = threading.Lock()  # type: ignore[assignment]
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self.task_id = task_id
        self.submitted_at = submitted_at
        self._session = session

    def cancel(self) -> bool:
        """Cancel the task, pending or running (see ``Session.cancel``).

        Returns False if the task already finished, True once it is cancelled.
        """
        if self.done():
            return self.cancelled()
        self._session.cancel([self])  # the future itself: a JobManager maps task ids
        return self.cancelled() or self._cancel_locally()

    def _cancel_locally(self) -> bool:
        """Mark the future cancelled and wake its waiters (``wait``, ``as_completed``)."""
        with self._condition:
            if self._state in (_RUNNING, _FINISHED):
                return False
            if self._state in (_CANCELLED, _CANCELLED_AND_NOTIFIED):
                return True
            # no executor will call set_running_or_notify_cancel: notify here
            self._state = _CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
        self._invoke_callbacks()
        return True

    def set_result(self, result: Any) -> None:
        """As ``Future.set_result`` (the session resolves its futures with it)."""
        self._finish(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        """As ``Future.set_exception``."""
        self._finish(None, exception)

    def _finish(self, result: Any, exception: BaseException | None) -> None:
        """Set the outcome, tell the waiters (no condition to notify), run the callbacks."""
        with self._condition:
            if self._state in _DONE:
                raise concurrent.futures.InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._exception = exception
            self._state = _FINISHED
            for waiter in self._waiters:
                if exception is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
        self._invoke_callbacks()

    def _wait_done(self, timeout: float | None) -> None:
        """Block until the future is done or ``timeout`` passed (the stdlib's waiters).

        Raises:
            TimeoutError: not done within ``timeout``; the message says what the
                session knows.
        """
        if self._state in _DONE:
            return
        wake = _Wake()
        with self._condition:
            if self._state in _DONE:
                return
            self._waiters.append(wake)
        try:
            wake.wait(timeout)
        finally:
            with self._condition:
                self._waiters.remove(wake)
        if self._state not in _DONE:
            raise TimeoutError(self._timeout_message(timeout))

    def result(self, timeout: float | None = None) -> Any:
        """The task's value, as ``Future.result``; waits at most ``timeout`` seconds.

        Raises:
            TimeoutError: no result within ``timeout``; the message says which task
                and what the session knows (e.g. that no engine has taken any task).
            TaskError: the task failed on its engine.
            TaskCancelledError: the task was cancelled.
        """
        if self._state == _FINISHED and self._exception is None:
            return self._result  # the common case, without a lock (set before _state)
        self._wait_done(timeout)
        return super().result(0)  # done: returns or raises at once, never waits

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``, with the same ``TimeoutError`` message as :meth:`result`."""
        self._wait_done(timeout)
        return super().exception(0)  # done: never waits

    def _timeout_message(self, timeout: float | None) -> str:
        try:
            health = self._session.health().message
        except Exception:  # the session is closing: its state is not worth a second error
            health = "the session's state is unknown"
        return f"no result for task {self.task_id!r} within {timeout} s: {health}"

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id!r} {self._state.lower()}>"
