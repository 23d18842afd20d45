"""The rules of supervising a task worker, shared by both ways of feeding it.

Relay mode (``_pipeline.WorkerPipeline``: the engine pipes tasks to its worker)
and direct mode (``_direct``: the worker takes them from the broker itself) apply
the same rules, and each rule is written once, here:

* which failures are retried, and after what delay (``may_retry``, ``schedule_retry``,
  ``release_due``);
* what a cancel request does to tasks held but not running (``drop_cancelled``), how
  long a running cancelled task has before its worker is killed (``CANCEL_GRACE``),
  and what becomes of one that fails meanwhile (``failed_after_cancel``);
* when a running task's ``running`` notice is due and when it times out
  (``RUNNING_NOTICE_AFTER``, ``timeout_of``);
* what becomes of the task a worker was running when it died or was killed
  (``settle_lost_task``);
* when a lease is renewed (``next_renewal``).

The modes differ only in how they learn what the worker does (answers on a pipe,
or a shared-memory ledger) and in who holds the leases.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING

from ..control import RUNNING_NOTICE_AFTER
from .errors import WorkerStartError

if TYPE_CHECKING:
    from ..transport import Transport
    from ._observe import TaskObserver
    from ._outbox import Held, Outbox

__all__ = [
    "CANCEL_GRACE",
    "DEFAULT_GRACE",
    "DEFAULT_PREFETCH",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_RETRY_BACKOFF",
    "DEFAULT_RETRY_BACKOFF_MAX",
    "IDLE_WAIT",
    "RUNNING_NOTICE_AFTER",
    "WHY_CANCELLED",
    "WHY_TIMEOUT",
    "describe_exit",
    "drop_cancelled",
    "failed_after_cancel",
    "idle_wait",
    "may_retry",
    "next_renewal",
    "release_due",
    "retry_delay",
    "schedule_retry",
    "settle_lost_task",
    "start_again",
    "timeout_of",
]

logger = logging.getLogger(__name__)

#: deliveries an engine holds at once by default: one running and one leased behind
#: it, so the next task starts without waiting for the broker, and no more, so that
#: tasks queue at the broker where an idle engine can take them (more prefetch evens
#: out worse at the end of a run of long tasks; see docs/engine.md)
DEFAULT_PREFETCH = 2
#: seconds a cancelled task that the worker already has may take to be skipped or to
#: end before its worker is killed
CANCEL_GRACE = 0.1
DEFAULT_RETRY_BACKOFF = 0.1
DEFAULT_RETRY_BACKOFF_MAX = 30.0
#: seconds a result waits in a mailbox before it expires (a dead client's results)
DEFAULT_RESULT_TTL = 86400.0
#: seconds the running task may take to finish once the engine is asked to stop
DEFAULT_GRACE = 10.0
#: the shortest wait before renewing a lease again (a lease of almost nothing left)
_MIN_RENEW_INTERVAL = 0.05
WHY_CANCELLED = "cancelled"
WHY_TIMEOUT = "timeout"
#: seconds an idle receive (the task worker's, the control thread's) waits at the
#: broker: long where the transport can end it early (``Capabilities.wake``: a stop
#: wakes it), so that hundreds of idle engines cost the broker little (issue 21). It
#: does not slow down noticing a dead engine: the zmq broker cuts the wait of a client
#: that holds leases to ``Broker.leased_wait`` (5 s), nor a dead or restarted broker:
#: heartbeats tell while a receive waits (``transport/zeromq/heartbeat.py``)
IDLE_WAIT = 30.0
#: the same where it cannot: a stop waits for it to end
SHORT_IDLE_WAIT = 0.5


def idle_wait(transport: Transport) -> float:
    """Seconds an idle receive on ``transport`` waits (see ``IDLE_WAIT``)."""
    return IDLE_WAIT if transport.capabilities.wake else SHORT_IDLE_WAIT


def describe_exit(returncode: int | None) -> str:
    """Human-readable cause of a worker's death, e.g. ``"signal SIGSEGV"``."""
    if returncode is None:
        return "an unknown cause"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before the attempt after ``attempt``: exponential, capped, jittered.

    ``base * 2 ** (attempt - 1)``, at most ``cap``, times a random factor in [0.5, 1].
    """
    return min(base * 2.0 ** (attempt - 1), cap) * random.uniform(0.5, 1.0)


def may_retry(held: Held, error_type: str) -> bool:
    """True if a failure of type ``error_type`` is retried: named in ``retry_on``, and
    the task has retries left."""
    return error_type in held.task.retry_on and held.attempt <= held.task.max_retries


def schedule_retry(
    held: Held, delayed: list[Held], base: float, cap: float, observer: TaskObserver
) -> None:
    """Run ``held`` again on this engine after its backoff (its lease stays held)."""
    delay = retry_delay(held.attempt, base, cap)
    logger.info("task %s attempt %d failed; retrying in %.2f s", held.task.task, held.attempt,
                delay)  # fmt: skip
    held.attempt += 1
    held.due = time.monotonic() + delay
    delayed.append(held)
    observer.retry()


def release_due(delayed: list[Held]) -> list[Held]:
    """The retries whose backoff ended, taken out of ``delayed`` (in place), in order."""
    now = time.monotonic()
    due = [held for held in delayed if held.due <= now]
    if due:
        delayed[:] = [held for held in delayed if held.due > now]
    return due


def failed_after_cancel(error: object, cancelled: bool) -> bool:
    """True if a task that ran is answered ``cancelled`` rather than with its outcome:
    the client cancelled it while it ran and it failed before its worker was killed
    (the client asked for no result; an error, or a ``retry_on`` retry, would be one).
    A task that succeeded meanwhile sends its value."""
    return cancelled and error is not None


def drop_cancelled(
    held_tasks: Iterable[Held], cancelled: Container[tuple[str, str, str]], outbox: Outbox
) -> list[Held]:
    """Answer ``cancelled`` for the tasks of ``held_tasks`` whose key was cancelled;
    return the others, in order."""
    kept = []
    for held in held_tasks:
        if held.key in cancelled:
            outbox.cancelled(held)
        else:
            kept.append(held)
    return kept


def timeout_of(held: Held, default_timeout: float | None) -> float | None:
    """Seconds the task may run (its own timeout, else the engine's default)."""
    return held.task.timeout if held.task.timeout is not None else default_timeout


def next_renewal(now: float, locked_until: float) -> float:
    """When to renew a lease ending at ``locked_until``: at a third of what remains."""
    return now + max((locked_until - now) / 3.0, _MIN_RENEW_INTERVAL)


#: worker starts in a row that may fail after a crash before the engine stops
RESTARTS = 3


def start_again(start: Callable[[], None]) -> None:
    """Start a new worker after a crash or a kill; one killed while it starts (a
    worker-killing fault, the OOM killer) is no reason to stop the engine."""
    for attempt in range(RESTARTS, 0, -1):
        try:
            start()
            return
        except WorkerStartError as exc:
            if attempt == 1:
                raise
            logger.warning("%s; starting another", exc)


def settle_lost_task(
    outbox: Outbox,
    held: Held,
    why: str | None,
    returncode: int | None,
    crash_report: str,
    limit: float | None,
    retry: Callable[[Held], None] | None,
) -> None:
    """The outcome of the task a worker was running when it was killed or died.

    Args:
        why: ``WHY_CANCELLED`` or ``WHY_TIMEOUT`` when the engine killed it, None when
            it died by itself.
        returncode: the worker's exit status.
        crash_report: what the worker wrote on a fatal signal.
        limit: the task's timeout (for the message of a ``TaskTimeoutError``).
        retry: runs again a task whose timeout is named in ``retry_on`` and that has
            retries left, on this engine after a backoff (relay mode: the lease stays
            held); None: its delivery goes back to the queue for any engine (direct
            mode: the worker holding it is gone), by the rule of a crash's retry
            (``Outbox.crashed``: never into the queue's last delivery).
    """
    task_id = held.task.task
    if why == WHY_CANCELLED:
        logger.info("task %s cancelled while running; worker killed", task_id)
        outbox.stopped_running(held)
    elif why == WHY_TIMEOUT:
        logger.warning("task %s timed out after %s s; worker killed", task_id, limit)
        if not may_retry(held, "TaskTimeoutError"):
            outbox.timed_out(held, limit)
        elif retry is not None:
            retry(held)
        else:
            outbox.timed_out(held, limit, requeue=True)
    else:
        cause = describe_exit(returncode)
        logger.warning("worker died with %s running task %s", cause, task_id)
        outbox.crashed(held, cause, crash_report)
