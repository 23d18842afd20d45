"""What an engine tells about itself: task counts, durations, recent failures.

The ``TaskObserver`` lives beside the ``Outbox`` that sends results (in the engine
process, or in the task worker in direct mode) and records every result it
sends; it passes its part of the engine's report (``transport/stats.py``) to the
transport at most once a second, and at once after a failure. The engine process
adds its own part (host, state, current task) from its main loop. Both are cheap:
on zmq a report only replaces a dict that the next heartbeat carries.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import Any

from ..transport import Transport
from ..transport.latency import LATENCY_BUCKETS, latency_bucket

__all__ = ["REPORT_INTERVAL", "TaskObserver", "engine_report"]

#: Seconds between an engine's reports (the zmq heartbeat interval by default).
REPORT_INTERVAL = 1.0
logger = logging.getLogger(__name__)

_FAILURES_KEPT = 5  # the report rides on a heartbeat: keep it small
_TRACEBACK_KEPT = 2000
_MESSAGE_KEPT = 500


class TaskObserver:
    """Counts and durations of the results an outbox sends, and its latest failures.

    Attributes:
        completed: results sent that were not errors.
        failed: error results sent.
        retried: tasks run again after a failure (``retry_on``, or a crashed worker).
        busy_seconds: time spent running tasks (sum of their durations).
        duration_buckets: results per ``LATENCY_BUCKETS`` bucket of run time (+Inf last).
        duration_sum: summed run time in seconds.
    """

    def __init__(self, transport: Transport, engine_id: str, source: str = "engine") -> None:
        self.transport = transport
        self.engine_id = engine_id
        self.source = source
        self.started = time.time()
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.busy_seconds = 0.0
        self.duration_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.failures: deque[dict[str, Any]] = deque(maxlen=_FAILURES_KEPT)
        self._next_report = 0.0
        self._unreported = False  # a result came within the interval and is not told yet

    def finished(
        self, task_id: str, error: tuple[str, str, str] | None, started: float, finished: float
    ) -> None:
        """A task ran from ``started`` to ``finished`` (wall clock); ``error`` if it failed."""
        duration = max(0.0, finished - started) if started and finished else 0.0
        self.busy_seconds += duration
        self.duration_sum += duration
        self.duration_buckets[latency_bucket(duration)] += 1
        if error is None:
            self.completed += 1
        else:
            self.failed_for_good(task_id, *error, at=finished or time.time())
            return
        if finished >= self._next_report:
            self.report(finished)
        else:
            self._unreported = True

    def report_pending(self, now: float) -> None:
        """Report what came since the last report, if anything did (an engine going idle
        or its once-a-second turn): the last results' figures are not left untold."""
        if self._unreported:
            self.report(now)

    def failed_for_good(
        self, task_id: str, type_: str, message: str, traceback: str = "", at: float = 0.0
    ) -> None:
        """An error result was sent for ``task_id``: count it, keep it, report at once."""
        self.failed += 1
        self.failures.append(
            {
                "task": task_id,
                "type": type_,
                "message": message[:_MESSAGE_KEPT],
                "traceback": traceback[-_TRACEBACK_KEPT:],
                "at": at or time.time(),
            }
        )
        self.report(time.time())

    def busy_ratio(self, now: float) -> float:
        """Share of the time since this observer started spent running tasks."""
        elapsed = now - self.started
        return min(1.0, self.busy_seconds / elapsed) if elapsed > 0 else 0.0

    def report(self, now: float) -> None:
        """Pass this observer's part of the engine report to the transport."""
        self._next_report = now + REPORT_INTERVAL
        self._unreported = False
        try:
            self.transport.report_engine(
                {
                    "id": self.engine_id,
                    "source": self.source,
                    "failed": self.failed,
                    "busy": round(self.busy_ratio(now), 4),
                    "failures": list(self.failures),
                }
            )
        except Exception as exc:  # a report is never worth losing a result over
            logger.debug("engine report not passed on: %s", exc)


def engine_report(engine_id: str, state: str, task: str | None, done: int) -> dict[str, Any]:
    """The engine process's part of its report."""
    return {
        "id": engine_id,
        "host": socket.gethostname(),
        "state": state,
        "task": task,
        "done": done,
    }
