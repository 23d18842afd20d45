"""Direct mode, the engine's side: supervise a worker that takes tasks from the broker.

The worker process has its own connection to the broker and receives, admits, runs
and answers tasks itself (``_direct_runner``); the engine stays beside it as its
supervisor, reading a shared-memory ``Ledger`` (leases held, the running task and
its deadline) at least four times a second and woken when a task with a timeout
starts. By the rules of ``_supervise`` it renews the worker's leases (by token:
``Capabilities.settles_by_token``), kills the worker on a timeout or a cancel of the
running task and answers that task, and when the worker dies answers or re-queues
its task and gives back the rest. Cancel keys and drain go to the worker on its
control pipe (``_pipe``). The whole picture: docs/engine.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import time
from typing import Any

from ..control import KIND_RUNNING, NOTIFY
from ..protocol import ProtocolError, decode_task
from ..transport import Delivery, Message, Transport
from ..transport.errors import LockLostError, TransportError
from ._cancels import CancelRequests
from ._ledger import FLAG_NOTIFY, FLAG_RETRIED, Ledger, LedgerView
from ._observe import TaskObserver
from ._outbox import Held, Outbox
from ._pipe import DRAIN, cancel_lines
from ._process import WorkerProcess, WorkerSettings, start_worker
from ._supervise import (
    CANCEL_GRACE,
    RUNNING_NOTICE_AFTER,
    WHY_CANCELLED,
    WHY_TIMEOUT,
    describe_exit,
    next_renewal,
    settle_lost_task,
    start_again,
    timeout_of,
)

__all__ = ["DirectWorker"]

logger = logging.getLogger(__name__)


class DirectWorker:
    """The engine's handle on a direct worker: start it, watch its ledger, act on its death.

    Args:
        settings: what the worker process is started with.
        url: the transport URL the worker connects to.
        queue: the task queue.
        prefetch: deliveries the worker holds at most.
        options: the worker's settings (``max_delivery_count``, ``result_ttl``,
            ``default_timeout``, ``retry_backoff``, ``retry_backoff_max``).
        transport, outbox: the engine's own (renewals, answers for a dead worker's task).
        wake_r, wake_w: the engine's wake-up pipe; the worker gets the write end.
        body_size: the largest message body.
        poll: seconds between two looks at the ledger at most (the engine's wake-up
            pipe and the worker's results pipe end a wait sooner).
        cancels: cancel requests, filled by the engine's control thread.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        url: str,
        queue: str,
        prefetch: int,
        options: dict[str, Any],
        transport: Transport,
        outbox: Outbox,
        wake_r: int,
        wake_w: int,
        body_size: int,
        poll: float,
        cancels: CancelRequests,
    ) -> None:
        self.settings = settings
        self.engine_id = settings.engine_id
        self.queue = queue
        self.options = dict(options, url=url, queue=queue, slots=prefetch, body_size=body_size)
        self.transport = transport
        self.outbox = outbox
        self.wake_r = wake_r
        self.wake_w = wake_w
        self.poll_interval = poll
        self.cancels = cancels
        self.ledger = Ledger(prefetch, body_size)
        self.worker: WorkerProcess | None = None
        self.draining = False
        self._poller = select.poll()
        self._renew_at: dict[str, float] = {}  # lock token -> wall-clock time to renew it
        self._sent_cancels: set[tuple[str, str]] = set()
        self._running: tuple[int, Held | None] = (0, None)  # run seq -> decoded task
        self._cancel_seen: dict[int, float] = {}  # run seq -> monotonic time seen cancelled
        self._noticed = 0  # run seq of the last running notice
        self._finished_before = 0  # tasks finished by the workers before this one
        self._workers_started = 0

    @property
    def finished(self) -> int:
        """Tasks run by this engine's direct workers so far."""
        if self.worker is None:
            return self._finished_before
        return self._finished_before + self.ledger.snapshot().finished

    def start(self) -> None:
        """Start a worker and wait until it is connected. Raises ``WorkerStartError``."""
        self.ledger.reset()
        self._renew_at.clear()
        self._running = (0, None)  # run sequence numbers start again with each worker
        self._cancel_seen.clear()
        self._noticed = 0
        self.worker = worker = start_worker(
            self.settings, direct=(json.dumps(self.options), self.ledger.fd, self.wake_w)
        )
        self._workers_started += 1
        # Before its first receive the worker learns every cancel request known so far.
        self._sent_cancels = set(self.cancels.keys)
        worker.write_control(cancel_lines(self._sent_cancels) + b"G\n")
        self._poller = select.poll()
        self._poller.register(self.wake_r, select.POLLIN)
        assert worker.results is not None
        self._poller.register(worker.results.fileno(), select.POLLIN)

    def step(self, until: float) -> None:
        """Wait for something to do (until ``until``, monotonic) and do it."""
        wake_at = min(until, time.monotonic() + self.poll_interval)
        wake_at = min(wake_at, self._check())
        for fd, _event in self._poller.poll(max(0.0, wake_at - time.monotonic()) * 1000.0):
            if fd == self.wake_r:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
        self._check()

    def _check(self) -> float:
        """Act on the worker's state; return the monotonic time of the next thing due."""
        cancels = self.cancels
        worker = self.worker
        if worker is None:
            return time.monotonic() + self.poll_interval
        if worker.returncode is not None or worker.readable():
            self._lost(None)
            return time.monotonic()
        if cancels.arrived:
            cancels.arrived = False
            fresh = [key for key in cancels.keys if key not in self._sent_cancels]
            if fresh:
                self._sent_cancels.update(fresh)
                worker.write_control(cancel_lines(fresh))
        view = self.ledger.snapshot()
        now = time.monotonic()
        next_at = now + self.poll_interval
        if view.running >= 0:
            next_at = min(next_at, self._check_running(view, cancels, now))
        if self.worker is None:
            return time.monotonic()
        next_at = min(next_at, self._renew(view))
        self._flush()
        return next_at

    def wake_receiver(self) -> None:
        """Nothing to wake: the task worker receives for itself here, and the engine's
        stop reaches its idle receive through ``drain`` (a ``WAKE`` to the broker)."""

    @property
    def restarts(self) -> int:
        """Workers started after the first (after a crash, a timeout or a cancel)."""
        return max(0, self._workers_started - 1)

    def worker_figures(self) -> TaskObserver | None:
        """A copy of the figures the worker keeps in the ledger (None: none yet, or the
        engine has stopped and closed it)."""
        try:
            return TaskObserver.read(self.ledger.figures, self.engine_id)
        except ValueError:  # a closed ledger's memory
            return None

    def current_task(self) -> str | None:
        """Id of the task the worker runs now, if any."""
        if self.worker is None:
            return None
        view = self.ledger.snapshot()
        held = self._decoded(view) if view.running >= 0 else None
        return None if held is None else held.task.task

    def _decoded(self, view: LedgerView) -> Held | None:
        """The running task, decoded once per run."""
        if self._running[0] != view.run_seq:
            body = self.ledger.snapshot(body=True)
            held = None
            if body.run_seq == view.run_seq and body.running in body.held:
                held = _held(self.queue, body.held[body.running], body.body, body.attempt)
            self._running = (view.run_seq, held)
        return self._running[1]

    def _check_running(self, view: LedgerView, cancels: CancelRequests, now: float) -> float:
        next_at = float("inf")
        if view.deadline and now >= view.deadline:
            self._kill(WHY_TIMEOUT, view.run_seq)
            return now
        if view.deadline:
            next_at = view.deadline
        if cancels.keys:
            held = self._decoded(view)
            if held is not None and held.key in cancels.keys:
                seen = self._cancel_seen.setdefault(view.run_seq, now)
                if now >= seen + CANCEL_GRACE:
                    self._kill(WHY_CANCELLED, view.run_seq)
                    return now
                next_at = min(next_at, seen + CANCEL_GRACE)
        slot = view.held.get(view.running)
        if slot is not None and slot[2] & FLAG_NOTIFY and self._noticed != view.run_seq:
            if now >= view.started + RUNNING_NOTICE_AFTER:
                self._noticed = view.run_seq
                held = self._decoded(view)
                if held is not None:
                    self.outbox.notice(KIND_RUNNING, held.task)
            else:
                next_at = min(next_at, view.started + RUNNING_NOTICE_AFTER)
        return next_at

    def _renew(self, view: LedgerView) -> float:
        """Renew the leases due; return the monotonic time of the next renewal."""
        now = time.time()
        renew_at = self._renew_at
        next_at = float("inf")
        for token, count, _flags, received, locked_until in view.held.values():
            at = renew_at.get(token)
            if at is None:
                at = renew_at[token] = next_renewal(received, locked_until)
            if at <= now:
                try:
                    until = self.transport.renew_lock(_delivery(self.queue, token, count))
                    at = renew_at[token] = next_renewal(now, until)
                except LockLostError as exc:  # final: its result will still be sent
                    logger.warning("a lease of the worker is lost: %s", exc)
                    at = renew_at[token] = float("inf")
                except TransportError as exc:
                    logger.info("could not renew a lease of the worker: %s", exc)
                    at = renew_at[token] = now + 1.0
            next_at = min(next_at, at)
        if len(renew_at) > len(view.held):
            live = {entry[0] for entry in view.held.values()}
            for token in [t for t in renew_at if t not in live]:
                del renew_at[token]
        return time.monotonic() + (next_at - now) if next_at != float("inf") else next_at

    def _kill(self, why: str, run_seq: int) -> None:
        assert self.worker is not None
        self.worker.kill()
        self._lost(why, run_seq)

    def _lost(self, why: str | None, run_seq: int = 0, *, stopped: bool = False) -> None:
        """The worker is dead (killed for ``why``, or by itself): settle what it held.

        ``stopped``: killed because the engine stops (its grace period ended); a task it
        was running goes back to the queue. A timeout, a cancel or a crash while the
        engine drains is answered as at any other time.
        """
        worker = self.worker
        assert worker is not None
        if self.draining and worker.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(5.0)  # it is exiting (or was just killed): let it finish
        code = worker.kill()
        report = worker.crash_report()
        worker.stop(timeout=0)
        self.worker = None
        view = self.ledger.snapshot(body=True, force=True)
        self._finished_before += view.finished
        running = view.held.pop(view.running, None) if view.running >= 0 else None
        if running is not None:
            held = _held(self.queue, running, view.body, view.attempt)
            if held is None:  # its message was too large for the ledger: counted, so bounded
                self.outbox.abandon(Held(_delivery(self.queue, running[0], running[1]), None, 0))  # type: ignore[arg-type]
            elif why is not None and view.run_seq != run_seq:
                self.outbox.give_back_unstarted(held)  # it started just before the kill
            elif stopped:
                self.outbox.abandon(held)  # still running when the grace period ended
            else:  # a retry of a timeout goes back to the broker: this worker is gone
                limit = timeout_of(held, self.options.get("default_timeout"))
                settle_lost_task(self.outbox, held, why, code, report, limit, None)
        elif why is None and not self.draining:
            logger.warning("worker died idle (%s); restarting", describe_exit(code))
        for token, count, flags, *_ in view.held.values():  # received, not running
            self.outbox.give_back(_delivery(self.queue, token, count),
                                  ran_here=bool(flags & FLAG_RETRIED))  # fmt: skip
        self._flush()
        if not self.draining:
            start_again(self.start)

    def _flush(self) -> None:
        try:
            self.outbox.flush()
        except Exception:
            logger.exception("engine: settling for the worker failed")

    def drain(self, grace: float, forced: Any) -> None:
        """Graceful stop: the worker gives back what it has not started and finishes the rest."""
        self.draining = True
        if self.worker is None:
            return
        self.worker.write_control(DRAIN)
        end = time.monotonic() + grace
        while self.worker is not None and not forced() and time.monotonic() < end:
            self.step(min(end, time.monotonic() + 0.05))
        if self.worker is not None:
            if self.ledger.snapshot().running >= 0:
                logger.warning("engine %s: giving back the task still running after the grace "
                               "period", self.engine_id)  # fmt: skip
            self.worker.kill()
            self._lost(None, stopped=True)

    def close(self) -> None:
        self.draining = True
        if self.worker is not None:
            self.worker.kill()
            self._lost(None, stopped=True)
        self.ledger.close()


def _delivery(queue: str, token: str, count: int) -> Delivery:
    """A delivery known by its lock token only: enough to renew or settle it (by token)."""
    return Delivery(Message(b""), queue, count, 0.0, token)


def _held(queue: str, slot: tuple[str, int, int, float, float], body: bytes,
          attempt: int) -> Held | None:  # fmt: skip
    """The ``Held`` of a running task from its ledger entry (None if its body is unreadable)."""
    token, count, flags, _received, _locked = slot
    properties = {NOTIFY: True} if flags & FLAG_NOTIFY else {}
    delivery = Delivery(Message(body, properties=properties), queue, count, 0.0, token)
    try:
        task = decode_task(body)
    except ProtocolError:
        return None
    return Held(delivery, task, attempt) if attempt else Held.received(delivery, task)
