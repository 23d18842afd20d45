"""The engine's side of the worker: tasks queued for it, pipelined to it, and its failures.

``WorkerPipeline`` owns the worker process and the tasks between admission and
their outcome: ``pending`` (admitted, not yet sent to the worker), ``inflight``
(sent, answered in order; the first one is running) and ``delayed`` (a failed
attempt whose exception is in ``retry_on``, backing off before it runs again on
this engine; its delivery stays leased, so nothing is lost if the engine dies).
Small tasks are pipelined to the worker (within a byte budget, so that writing
to its pipe never blocks), which is what keeps the per-task overhead low.
Outcomes go to the ``Outbox``; the rules (retries, cancellation, a dead worker's
task) are ``_supervise``'s. It is used by the engine's main thread only.

Cancelled tasks are dropped from ``pending``/``delayed``; those already sent to
the worker are marked, the worker is told not to start them, and if one is
running (the head) the worker is killed and restarted, like on a timeout.
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Container, Iterator
from typing import Any

import attrs

from ..control import KIND_RUNNING, NOTIFY
from ._outbox import Held, Outbox
from ._pipe import STATUS_CANCELLED, STATUS_EXPIRED, STATUS_SKIPPED
from ._process import WorkerProcess, WorkerSettings, start_worker
from ._supervise import (
    CANCEL_GRACE,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    RUNNING_NOTICE_AFTER,
    WHY_CANCELLED,
    WHY_TIMEOUT,
    describe_exit,
    drop_cancelled,
    failed_after_cancel,
    may_retry,
    release_due,
    schedule_retry,
    settle_lost_task,
    start_again,
    timeout_of,
)
from .errors import PipelineError

__all__ = ["WorkerPipeline"]

logger = logging.getLogger(__name__)

_PIPE_BUDGET = 32 * 1024  # bytes of not-yet-started tasks queued in the worker's pipe


@attrs.define(eq=False)
class WorkerPipeline:
    """Feeds one warm worker process and turns what happens to it into outcomes.

    Attributes:
        settings: what the worker process is started with.
        outbox: where outcomes are recorded.
        default_timeout: seconds a task may run when it sets no timeout.
        wake_fd: a file descriptor that ``wait`` also watches.
        retry_backoff / retry_backoff_max: first and largest delay before a retry.
    """

    settings: WorkerSettings
    outbox: Outbox
    default_timeout: float | None
    wake_fd: int
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    worker: WorkerProcess | None = attrs.field(init=False, default=None)
    pending: deque[Held] = attrs.field(init=False, factory=deque)
    inflight: deque[Held] = attrs.field(init=False, factory=deque)
    delayed: list[Held] = attrs.field(init=False, factory=list)
    finished: int = attrs.field(init=False, default=0)
    #: workers started so far (the first, then one after each crash or kill)
    workers_started: int = attrs.field(init=False, default=0)
    #: False while draining: nothing new goes to the worker
    accepting: bool = attrs.field(init=False, default=True)
    _poller: Any = attrs.field(init=False, factory=select.poll)
    _unstarted_bytes: int = attrs.field(init=False, default=0)
    _head_since: float = attrs.field(init=False, default=0.0)  # when inflight[0] started
    _seq: int = attrs.field(init=False, default=0)

    # -- process ---------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Start a worker and wait until it is warm. Raises ``WorkerStartError``."""
        self.worker = start_worker(self.settings)
        self.workers_started += 1
        self._reset_poller()

    def _reset_poller(self) -> None:
        self._poller = select.poll()
        self._poller.register(self.wake_fd, select.POLLIN)
        if self.worker is not None and self.worker.results is not None:
            self._poller.register(self.worker.results.fileno(), select.POLLIN)

    def stop_worker(self, timeout: float = 5.0) -> None:
        """Stop the worker (``timeout`` 0: kill it at once, with any JVM it started)."""
        if self.worker is not None:
            self.worker.stop(timeout=timeout)
            self.worker = None
            self._reset_poller()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for worker output or the wake fd; True if woken."""
        woken = False
        for fd, _event in self._poller.poll(max(timeout, 0.0) * 1000.0):
            if fd == self.wake_fd:
                woken = True
        return woken

    # -- tasks -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pending) + len(self.inflight) + len(self.delayed)

    def held(self) -> Iterator[Held]:
        """Every task not finished yet (for lease renewal)."""
        for held in self.inflight:
            if not held.answered:
                yield held
        yield from self.pending
        yield from self.delayed

    def timeout_of(self, held: Held) -> float | None:
        return timeout_of(held, self.default_timeout)

    def head_deadline(self) -> float | None:
        """Monotonic time at which the running task times out (None: no limit or idle)."""
        if not self.inflight:
            return None
        limit = self.timeout_of(self.inflight[0])
        return None if limit is None else self._head_since + limit

    def wake_at(self) -> float | None:
        """Monotonic time of the next thing to do without outside input (None: nothing).

        The running task's timeout, its running notice, killing it once cancelled, and
        the end of a retry's backoff.
        """
        times = [held.due for held in self.delayed]
        if self.inflight:
            head = self.inflight[0]
            limit = self.timeout_of(head)
            if limit is not None:
                times.append(self._head_since + limit)
            if not head.noticed:
                times.append(self._head_since + RUNNING_NOTICE_AFTER)
            if head.cancelled_at is not None:
                times.append(max(head.cancelled_at, self._head_since) + CANCEL_GRACE)
        return min(times) if times else None

    def dispatch(self) -> None:
        """Send pending tasks to the worker, in one pipe message, within the byte budget."""
        batch = []
        while self.pending and self.accepting and self.worker is not None:
            held = self.pending[0]
            if self.inflight and self._unstarted_bytes + held.size > _PIPE_BUDGET:
                break
            self.pending.popleft()
            self._seq += 1
            held.seq = self._seq
            task = held.task
            batch.append((held.seq, held.kind, held.path, task.args, task.kwargs, task.deadline,
                          task.task, held.attempt))  # fmt: skip
            if not self.inflight:
                self._head_since = time.monotonic()
            else:
                self._unstarted_bytes += held.size
            self.inflight.append(held)
        if batch:
            assert self.worker is not None
            try:
                self.worker.send(batch)
            except OSError:
                self._failed(timed_out=False)

    def collect(self) -> None:
        """Record every answer the worker has written; detect its death."""
        worker = self.worker
        if worker is None or worker.results is None:
            return
        while self.inflight and worker.readable():
            try:
                self._record(worker.recv())
            except (EOFError, OSError):
                self._failed(timed_out=False)
                return
            except PipelineError as exc:  # the worker cannot be trusted to answer in order
                logger.error("%s; restarting the worker", exc)
                self._failed(timed_out=False)
                return
            if self.inflight:
                self._head_since = time.monotonic()
                self._unstarted_bytes -= self.inflight[0].size
        if not self.inflight and worker.returncode is not None:
            logger.warning("worker died idle (%s); restarting", describe_exit(worker.returncode))
            self._failed(timed_out=False)

    def _record(self, answer: tuple) -> None:
        seq, status, value, error, started, finished = answer
        if seq is not None and self.inflight[0].seq != seq:  # seq None: an unreadable frame
            raise PipelineError(f"worker answered task #{seq}, expected #{self.inflight[0].seq}")
        held = self.inflight.popleft()
        self.finished += 1
        if held.answered:
            pass  # cancelled while queued in the worker, and answered then
        elif status == STATUS_SKIPPED:  # not started: the engine stops
            self.outbox.give_back_unstarted(held)
        elif status == STATUS_CANCELLED or failed_after_cancel(
            error, held.cancelled_at is not None
        ):
            self.outbox.cancelled(held)
        elif status == STATUS_EXPIRED:
            self.outbox.expired(held)
        elif error is not None and may_retry(held, error[0]):
            self._retry(held)
        else:
            self.outbox.finished(held, status, value, error, started, finished)

    def _retry(self, held: Held) -> None:
        """Back off, then run ``held`` again on this engine."""
        schedule_retry(held, self.delayed, self.retry_backoff, self.retry_backoff_max,
                       self.outbox.observer)  # fmt: skip

    def release_due(self) -> None:
        """Move retries whose backoff ended to the front of ``pending``."""
        if self.delayed:
            self.pending.extendleft(reversed(release_due(self.delayed)))

    def cancel(self, cancelled: Container[tuple[str, str, str]]) -> None:
        """Drop the tasks whose ``(session, task)`` key is in ``cancelled``.

        Tasks not sent to the worker get a ``cancelled`` result at once; the worker is
        told to skip those it has queued, and the running one is killed (``check_head``).
        """
        if any(held.key in cancelled for held in self.pending):
            self.pending = deque(drop_cancelled(self.pending, cancelled, self.outbox))
        if any(held.key in cancelled for held in self.delayed):
            self.delayed = drop_cancelled(self.delayed, cancelled, self.outbox)
        now = time.monotonic()
        skip = []
        for index, held in enumerate(self.inflight):
            if held.cancelled_at is None and held.key in cancelled:
                held.cancelled_at = now
                skip.append(held.seq)
                if index > 0:  # queued behind the running task: answer now, skip later
                    held.answered = True
                    self.outbox.cancelled(held)
        if skip and self.worker is not None:
            logger.info("cancelling %d task(s) sent to the worker", len(skip))
            self.worker.cancel(skip)

    def check_head(self) -> None:
        """Act on the running task: timeout or cancellation (kill the worker), notice."""
        if not self.inflight:
            return
        now = time.monotonic()
        head = self.inflight[0]
        if head.cancelled_at is not None and now >= max(head.cancelled_at, self._head_since) + (
            CANCEL_GRACE
        ):
            self._failed(timed_out=False, cancelled=True)
            return
        deadline = self.head_deadline()
        if deadline is not None and now >= deadline:
            self._failed(timed_out=True)
            return
        if not head.noticed and now >= self._head_since + RUNNING_NOTICE_AFTER:
            head.noticed = True
            if head.delivery.message.properties.get(NOTIFY):
                self.outbox.notice(KIND_RUNNING, head.task)

    def _failed(self, *, timed_out: bool, cancelled: bool = False) -> None:
        """The worker died or must die: settle the task it was running, restart it, re-queue."""
        worker = self.worker
        assert worker is not None
        suspect = self.inflight[0] if self.inflight else None
        try:  # answers written before the end belong to tasks that did finish
            while self.inflight and worker.readable():
                self._record(worker.recv())
        except (EOFError, OSError, ValueError, PipelineError):
            pass
        code = worker.kill()
        crash_report = worker.crash_report()
        self.stop_worker(timeout=0)
        if self.inflight:
            if (timed_out or cancelled) and self.inflight[0] is not suspect:
                pass  # the task finished at the last moment: nothing to blame or stop
            else:
                head = self.inflight.popleft()
                why = WHY_TIMEOUT if timed_out else None
                if cancelled or head.cancelled_at is not None:
                    why = WHY_CANCELLED
                if not head.answered:  # a cancelled task may have been answered already
                    limit = self.timeout_of(head)
                    settle_lost_task(self.outbox, head, why, code, crash_report, limit,
                                     self._retry)  # fmt: skip
            # the others never started: run them on the next worker, or give them back
            for held in self.inflight:
                if held.cancelled_at is not None and not held.answered:
                    self.outbox.cancelled(held)
            rest = [held for held in self.inflight if held.cancelled_at is None]
            if self.accepting:
                self.pending.extendleft(reversed(rest))
            else:
                for held in rest:
                    self.outbox.give_back_unstarted(held)
            self.inflight.clear()
        self._unstarted_bytes = 0
        if self.accepting:
            start_again(self.start_worker)

    # -- stopping --------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop feeding the worker; it skips the tasks it has not started."""
        self.accepting = False
        if self.worker is not None:
            self.worker.drain()

    def abandon_all(self) -> int:
        """Kill the worker and give back every task still held. Returns how many.

        The running one is counted as a delivery; those that never started are not.
        """
        self.stop_worker(timeout=0)
        count = len(self)
        running = self.inflight[0] if self.inflight else None
        for held in (*self.inflight, *self.pending, *self.delayed):
            if held is running and not held.answered:
                self.outbox.abandon(held)
            elif not held.answered:
                self.outbox.give_back_unstarted(held)
        self.inflight.clear()
        self.pending.clear()
        self.delayed.clear()
        return count
