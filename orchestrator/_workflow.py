"""Workflows: tasks that take other tasks' futures as arguments, or run after them.

A ``TaskFuture`` of the same session may stand anywhere in a task's arguments
(positional, keyword, inside lists, tuples and dict values); ``after=[futures]``
orders without passing values. The task waits in the client until its inputs are
done, then goes out like any task with each future replaced by its value. If an
input fails or is cancelled, the task is not run: its future raises
``DependencyError`` naming that input (status ``"error"``, or ``"cancelled"`` when the
input was cancelled); the tasks waiting on it fail the same way, and so on down.

A cycle cannot be built: a future exists only once its task was submitted, and a
task's inputs are fixed when it is submitted, so every input was submitted before
the task that uses it (the graph follows submission order). An input that already
failed when the task is submitted fails the task at once, the same way as one that
fails later (no race between the two).

An input whose result came back as a payload reference (a large value, in the
payload store) goes to the tasks waiting for it as that reference: the store keeps the
payload until their results are taken, and the value is never written again
(``SessionPayloads.wait``/``passed_on``/``drop``). Other values are substituted.

The client holds a waiting task's record until it is released or fails, nothing
after: memory follows the outstanding tasks.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from realtime_batch.protocol import TaskRecord, replace

from .results import DependencyError, TaskFuture

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Workflow", "find_futures", "substitute"]

_NESTED = (list, tuple, dict)


def find_futures(value: Any, found: list[concurrent.futures.Future] | None = None) -> list[Any]:
    """The futures inside ``value`` (lists, tuples and dict values, at any depth)."""
    found = [] if found is None else found
    if isinstance(value, concurrent.futures.Future):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            if isinstance(item, (concurrent.futures.Future, *_NESTED)):
                find_futures(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, (concurrent.futures.Future, *_NESTED)):
                find_futures(item, found)
    return found


def substitute(value: Any, value_of: Callable[[Any], Any] = lambda f: f.result()) -> Any:
    """``value`` with every future replaced by ``value_of(future)`` (default: its result)."""
    if isinstance(value, concurrent.futures.Future):
        return value_of(value)
    if isinstance(value, dict):
        return {key: substitute(item, value_of) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(substitute(item, value_of) for item in value)
    return value


@attrs.define(eq=False)
class _Waiting:
    """A task waiting for its inputs."""

    future: TaskFuture
    record: TaskRecord
    remaining: int
    settled: bool = False


class Workflow:
    """The session's tasks that wait for inputs, and their release or failure.

    Args:
        session: the session the tasks belong to.
        send: sends a released task (its record with the inputs' values).
        fail: fails a waiting task's future with an error and a result status.
    """

    def __init__(
        self,
        session: Session,
        send: Callable[[TaskFuture, TaskRecord], None],
        fail: Callable[[TaskFuture, BaseException, str], None],
    ) -> None:
        self._session = session
        self._payloads = session._payloads  # inputs passed on by reference
        self._send = send
        self._fail = fail
        self._lock = threading.Lock()
        #: task id -> the task waiting for its inputs
        self.waiting: dict[str, _Waiting] = {}
        self._unwinding = threading.local()  # failures still to pass down, in this thread

    def inputs(self, record: TaskRecord, after: Iterable[Any] | None) -> list[TaskFuture]:
        """The distinct futures ``record`` depends on; refuses foreign ones.

        Raises:
            TypeError: ``after`` holds something other than task futures, or a plain
                ``concurrent.futures.Future`` stands in the arguments.
            ValueError: a future of another session.
        """
        found = find_futures(record.args) + find_futures(record.kwargs)
        if after is not None:
            if isinstance(after, concurrent.futures.Future):
                after = [after]
            for item in after:
                if not isinstance(item, concurrent.futures.Future):
                    raise TypeError(f"after= takes task futures, got {type(item).__name__}")
                found.append(item)
        distinct: dict[int, TaskFuture] = {}
        for future in found:
            if not isinstance(future, TaskFuture):
                raise TypeError(
                    f"task {record.task!r}: only task futures of this session can be task "
                    f"inputs, got a {type(future).__name__}"
                )
            if future._session is not self._session:
                raise ValueError(
                    f"task {record.task!r}: input task {future.task_id!r} belongs to another "
                    f"session ({future._session.id!r}); pass its value instead"
                )
            distinct[id(future)] = future
        return list(distinct.values())

    def wait_for(self, future: TaskFuture, record: TaskRecord, inputs: list[TaskFuture]) -> None:
        """Hold the task until ``inputs`` are done (it is already registered as outstanding)."""
        waiting = _Waiting(future, record, len(inputs))
        with self._lock:
            self.waiting[record.task] = waiting
        self._payloads.wait(record.task, [item.task_id for item in inputs if not item.done()])
        for item in inputs:  # a finished input calls back at once, in this thread
            item.add_done_callback(lambda done, w=waiting: self._input_done(w, done))

    def discard(self, task_ids: Iterable[str]) -> set[str]:
        """Stop waiting for these tasks (cancelled); return those that were waiting."""
        with self._lock:
            found = {task_id for task_id in task_ids if task_id in self.waiting}
            for task_id in found:
                self.waiting.pop(task_id).settled = True
        for task_id in found:
            self._payloads.drop(task_id)
        return found

    def _flat(self, action: Callable[[], None]) -> None:
        """Run ``action`` now, or after the one running in this thread (no deep recursion).

        Failing a future runs its callbacks, which fail the tasks waiting on it, and so
        on: along a chain of thousands of tasks that would exceed the recursion limit
        (and ``Future`` swallows the ``RecursionError``), so the outermost call runs the
        failures one after the other instead.
        """
        pending: deque[Callable[[], None]] | None = getattr(self._unwinding, "pending", None)
        if pending is not None:
            pending.append(action)
            return
        pending = self._unwinding.pending = deque([action])
        try:
            while pending:
                pending.popleft()()
        finally:
            self._unwinding.pending = None

    def _input_done(self, waiting: _Waiting, done: concurrent.futures.Future) -> None:
        failed = done.cancelled() or done.exception() is not None
        with self._lock:
            if waiting.settled:
                return
            waiting.remaining -= 1
            if not failed and waiting.remaining > 0:
                return
            waiting.settled = True
            self.waiting.pop(waiting.record.task, None)
        if failed:
            self._payloads.drop(waiting.record.task)
            cause = None if done.cancelled() else done.exception()
            error = DependencyError(waiting.record.task, done.task_id, cause)  # type: ignore[attr-defined]
            status = "cancelled" if cause is None else "error"
            self._flat(lambda: self._fail(waiting.future, error, status))
            return
        task = waiting.record
        refs = self._payloads.passed_on(task.task)

        def value_of(future: Any) -> Any:
            ref = refs.get(future.task_id)
            return future.result() if ref is None else ref

        record = replace(
            task, args=substitute(task.args, value_of), kwargs=substitute(task.kwargs, value_of)
        )
        self._send(waiting.future, record)
