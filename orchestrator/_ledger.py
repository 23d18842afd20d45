"""Which task ids a session has used, in memory bounded by what is outstanding.

A session must refuse a task id it already used: otherwise a late duplicate of the
earlier task's result (at-least-once delivery) would answer the new task. Keeping
every finished id costs ~84 bytes each, forever. The ledger keeps instead:

* the futures of the outstanding tasks (whose results are awaited);
* a watermark for generated ids: they are ``"1"``, ``"2"``, ... in order, so every
  generated id up to the last one handed out is known as used without being stored;
* a window of the last ``REUSE_HORIZON`` finished ids the caller chose itself. A
  chosen id that finished longer ago than that (more than ``REUSE_HORIZON`` later
  chosen-id tasks) is no longer refused: callers who choose ids keep them unique,
  as the docs ask.

A duplicate result is recognised without any of this: a result whose task is not
outstanding is dropped (``Session.duplicates_dropped``).
"""

from __future__ import annotations

from collections import OrderedDict

from .results import TaskFuture

__all__ = ["REUSE_HORIZON", "TaskLedger"]

#: finished task ids chosen by the caller that a session still refuses to re-use
REUSE_HORIZON = 100_000


class TaskLedger:
    """Outstanding tasks by id, and the ids already used. Not thread-safe (lock held)."""

    def __init__(self) -> None:
        #: the futures of the tasks whose result is awaited, by task id
        self.futures: dict[str, TaskFuture] = {}
        self._generated = 0  # the last generated id handed out
        self._last = "0"  # str(self._generated)
        self._chosen_finished: OrderedDict[str, None] = OrderedDict()

    def new_id(self) -> str:
        """The next generated id, skipping any the caller chose and is still known."""
        while True:
            self._generated += 1
            task_id = self._last = str(self._generated)
            if task_id not in self.futures and task_id not in self._chosen_finished:
                return task_id

    def used(self, task_id: str) -> bool:
        """Whether ``task_id`` is outstanding or known as used earlier in the session."""
        return (
            task_id in self.futures
            or task_id in self._chosen_finished
            or self._is_generated(task_id)
        )

    def _is_generated(self, task_id: str) -> bool:
        """Whether ``task_id`` is a generated id already handed out (no int() of long text)."""
        if not task_id.isdigit() or task_id.startswith("0"):
            return False
        last = self._last
        return (len(task_id), task_id) <= (len(last), last)

    def add(self, task_id: str, future: TaskFuture) -> None:
        self.futures[task_id] = future

    def finish(self, task_id: str) -> TaskFuture | None:
        """Take an outstanding task's future (None if it is not outstanding)."""
        future = self.futures.pop(task_id, None)
        if future is not None and not self._is_generated(task_id):
            self._chosen_finished[task_id] = None
            if len(self._chosen_finished) > REUSE_HORIZON:
                self._chosen_finished.popitem(last=False)
        return future

    def finish_all(self) -> list[TaskFuture]:
        """Take every outstanding future (the session closes)."""
        futures = list(self.futures.values())
        self.futures.clear()
        return futures
