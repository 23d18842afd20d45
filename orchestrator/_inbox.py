"""The results a session hands out: kept for ``results()`` and iteration, passed to callbacks.

Every outcome, from an engine or decided here (cancelled, expired, a failed input),
goes through ``Inbox.arrive`` under the session's lock; the callbacks it returns run
after the lock is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence, Sized

from realtime_batch.protocol import ErrorInfo

from .results import Result, TaskFuture

__all__ = ["Inbox", "local_result"]

log = logging.getLogger(__name__)

POLL = 0.2  # how often waiters look at the closed flag
Callback = Callable[[Result], None]


def local_result(
    future: TaskFuture, status: str, now: float, error: ErrorInfo | None = None
) -> Result:
    """The ``Result`` of a task decided in the client (no engine answered)."""
    return Result(
        task_id=future.task_id,
        ok=False,
        value=None,
        error=error,
        engine="",
        attempt=0,
        status=status,
        submitted_at=future.submitted_at,
        received_at=now,
    )


class Inbox:
    """Results that arrived and were not taken yet, and the result callbacks.

    Args:
        lock: the session's lock (guards the inbox and the outstanding tasks).
        keep: keep every result for :meth:`take` (the session's ``keep_results``).
    """

    def __init__(self, lock: threading.Lock, keep: bool) -> None:
        self.keep = keep
        self.unread: deque[Result] = deque()
        #: notified when a result arrives or a task stops being outstanding
        self.arrived = threading.Condition(lock)
        self.callbacks: list[Callback] = []

    def arrive(self, result: Result) -> list[Callback]:
        """Keep ``result``, wake the waiters; return the callbacks to run (lock held)."""
        return self.arrive_all((result,))

    def arrive_all(self, results: Sequence[Result]) -> list[Callback]:
        """Keep ``results`` in order, wake the waiters once; return the callbacks (lock held).

        Called whenever tasks stop being outstanding, even with no ``Result`` made for
        them (nothing keeps or calls back): the waiters of ``wait()`` look at that.
        """
        if self.keep:
            self.unread.extend(results)
        self.arrived.notify_all()
        return list(self.callbacks)

    @staticmethod
    def run_callbacks(callbacks: list[Callback], result: Result) -> None:
        """Call each callback with ``result`` (lock released); a failing one is logged."""
        for callback in callbacks:
            try:
                callback(result)
            except Exception:
                log.exception("result callback failed")

    def take(self) -> list[Result]:
        """Every result not taken yet (lock held)."""
        taken = list(self.unread)
        self.unread.clear()
        return taken

    def iterate(self, outstanding: Sized, closed: threading.Event) -> Iterator[Result]:
        """Yield results as they arrive until nothing is ``outstanding`` (or closed)."""
        while True:
            with self.arrived:
                while not self.unread and len(outstanding) and not closed.is_set():
                    self.arrived.wait(POLL)
                if not self.unread:
                    return
                result = self.unread.popleft()
            yield result

    def wait_until_empty(self, outstanding: Sized, timeout: float | None) -> bool:
        """Block until nothing is ``outstanding``; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self.arrived:
            while len(outstanding):
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.arrived.wait(POLL if remaining is None else min(remaining, POLL))
        return True
