"""What an engine tells about itself: task counts, durations, recent failures.

The ``TaskObserver`` lives beside the ``Outbox`` that sends results (in the engine
process, or in the task worker in direct mode) and records every result it
sends; it passes its part of the engine's report (``transport/stats.py``) to the
transport at most once a second, and at once after a failure. The engine process
adds its own part (host, state, current task) from its main loop. Both are cheap:
on zmq a report only replaces a dict that the next heartbeat carries.

A direct worker's observer keeps its figures in memory its engine holds (``keep``,
a part of the ``_ledger``), so that the next worker, after a crash or a kill, goes
on from them: the engine's failure count and busy ratio survive its workers.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from typing import Any

import orjson

from ..transport import Transport
from ..transport.latency import LATENCY_BUCKETS, latency_bucket

__all__ = ["KEEP_SIZE", "REPORT_INTERVAL", "TaskObserver", "engine_report"]

#: Seconds between an engine's reports (the zmq heartbeat interval by default).
REPORT_INTERVAL = 1.0
logger = logging.getLogger(__name__)

_FAILURES_KEPT = 5  # the report rides on a heartbeat: keep it small
_TRACEBACK_KEPT = 2000
_MESSAGE_KEPT = 500
#: what a kept observer stores: a write counter of its failures (odd while writing
#: them), then started, failed, retried, completed, busy seconds, duration sum, the
#: duration buckets and the length of the failures (JSON) that follow them
_KEPT = struct.Struct(f"<QdQQQdd{len(LATENCY_BUCKETS) + 1}QI")
_GEN = struct.Struct("<Q")
_RUN = struct.Struct("<Qdd")  # completed, busy seconds, duration sum: after each result
_RUN_AT, _BUCKETS_AT = 32, 56
#: bytes of memory a kept observer needs (its failures are cut to fit)
KEEP_SIZE = 32 * 1024


class TaskObserver:
    """Counts and durations of the results an outbox sends, and its latest failures.

    Attributes:
        completed: results sent that were not errors.
        failed: error results sent.
        retried: tasks run again after a failure (``retry_on``, or a crashed worker).
        busy_seconds: time spent running tasks (sum of their durations).
        duration_buckets: results per ``LATENCY_BUCKETS`` bucket of run time (+Inf last).
        duration_sum: summed run time in seconds.

    Args:
        source: which part of the engine's report this is (``engine``, ``worker``).
        times_tasks: False where the results sent are only those of tasks whose worker
            was lost (the engine in direct mode): its report then says nothing of the
            busy ratio, which the worker's part tells.
        keep: ``KEEP_SIZE`` bytes of shared memory that outlive this process: the
            figures start from what an earlier observer left there, and are written
            back after each result.
    """

    def __init__(
        self,
        transport: Transport,
        engine_id: str,
        source: str = "engine",
        *,
        times_tasks: bool = True,
        keep: Any = None,
    ) -> None:
        self.transport = transport
        self.engine_id = engine_id
        self.source = source
        self.times_tasks = times_tasks
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
        self._keep = keep
        if keep is not None:
            self._restore(keep)

    def finished(
        self, task_id: str, error: tuple[str, str, str] | None, started: float, finished: float
    ) -> None:
        """A task ran from ``started`` to ``finished`` (wall clock); ``error`` if it failed."""
        duration = max(0.0, finished - started) if started and finished else 0.0
        self.busy_seconds += duration
        self.duration_sum += duration
        bucket = latency_bucket(duration)
        self.duration_buckets[bucket] += 1
        if error is None:
            self.completed += 1
        else:
            self.failed_for_good(task_id, *error, at=finished or time.time())
            return
        if self._keep is not None:
            self._save_run(bucket)
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
        if self._keep is not None:
            self._save(failures=True)
        self.report(time.time())

    def retry(self) -> None:
        """A task is run again after a failure."""
        self.retried += 1
        if self._keep is not None:
            self._save()

    def busy_ratio(self, now: float) -> float:
        """Share of the time since this observer started spent running tasks."""
        elapsed = now - self.started
        return min(1.0, self.busy_seconds / elapsed) if elapsed > 0 else 0.0

    def report(self, now: float) -> None:
        """Pass this observer's part of the engine report to the transport."""
        self._next_report = now + REPORT_INTERVAL
        self._unreported = False
        report = {
            "id": self.engine_id,
            "source": self.source,
            "failed": self.failed,
            "failures": list(self.failures),
        }
        if self.times_tasks:
            report["busy"] = round(self.busy_ratio(now), 4)
        try:
            self.transport.report_engine(report)
        except Exception as exc:  # a report is never worth losing a result over
            logger.debug("engine report not passed on: %s", exc)

    # -- kept figures (a direct worker's, for the next worker) ------------------------------
    def _save(self, *, failures: bool = False) -> None:
        """Write the figures (and, with ``failures``, the failure list) to ``keep``."""
        keep = self._keep
        gen, *_figures, length = _KEPT.unpack_from(keep, 0)
        if failures:
            items = list(self.failures)
            blob = orjson.dumps(items)
            if len(blob) > KEEP_SIZE - _KEPT.size:  # cut: the tracebacks, then the oldest
                items = [dict(item, traceback="") for item in items]
                while len(blob := orjson.dumps(items)) > KEEP_SIZE - _KEPT.size:
                    items.pop(0)
            length = len(blob)
        _KEPT.pack_into(keep, 0, gen + 1, self.started, self.failed, self.retried,
                        self.completed, self.busy_seconds, self.duration_sum,
                        *self.duration_buckets, length)  # fmt: skip
        if failures:
            keep[_KEPT.size : _KEPT.size + length] = blob
        _GEN.pack_into(keep, 0, gen + 2)

    def _save_run(self, bucket: int) -> None:
        """Write what one result changed (a few microseconds: this is on every task's
        path); a writer killed between the two leaves a count off by one, no more."""
        keep = self._keep
        _RUN.pack_into(keep, _RUN_AT, self.completed, self.busy_seconds, self.duration_sum)
        _GEN.pack_into(keep, _BUCKETS_AT + 8 * bucket, self.duration_buckets[bucket])

    def _restore(self, keep: Any) -> None:
        """Go on from the figures an earlier observer left in ``keep`` (none: start them)."""
        if not self._load(keep, tries=1):  # nothing kept, or its writer died writing it
            if _GEN.unpack_from(keep, 0)[0]:
                logger.warning("the last worker's figures were cut short; counting afresh")
            _GEN.pack_into(keep, 0, 0)
            self._save(failures=True)

    def _load(self, keep: Any, tries: int) -> bool:
        """Take the figures kept in ``keep``; False if there are none, or they stayed
        half-written for ``tries`` looks."""
        for _ in range(tries):
            gen, started, *numbers, length = _KEPT.unpack_from(keep, 0)
            if gen == 0:
                return False
            failures = bytes(keep[_KEPT.size : _KEPT.size + length])
            if gen & 1 == 0 and _GEN.unpack_from(keep, 0)[0] == gen:
                break
            time.sleep(0)
        else:
            return False
        self.started = started
        self.failed, self.retried, self.completed = numbers[:3]
        self.busy_seconds, self.duration_sum = numbers[3:5]
        self.duration_buckets = list(numbers[5:])
        try:
            items = orjson.loads(failures)
            if not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
                raise ValueError("not a list of failures")
            self.failures.extend(items)
        except ValueError:  # orjson.JSONDecodeError too
            logger.warning("the last worker's failures could not be read")
        return True

    @classmethod
    def read(cls, keep: Any, engine_id: str) -> TaskObserver | None:
        """A copy of the figures a live observer keeps in ``keep`` (None: none yet)."""
        copy = cls(None, engine_id, "worker")  # type: ignore[arg-type]
        return copy if copy._load(keep, tries=1000) else None


def engine_report(
    engine_id: str, state: str, task: str | None, done: int, restarts: int = 0
) -> dict[str, Any]:
    """The engine process's part of its report."""
    return {
        "id": engine_id,
        "host": socket.gethostname(),
        "state": state,
        "task": task,
        "done": done,
        "restarts": restarts,
    }
