"""Relay mode: the engine receives each task and pipes it to its worker.

For transports whose leases only the receiving connection can settle (memory,
Service Bus; see ``Capabilities.settles_by_token``). A receiver thread leases
deliveries whenever there is credit (at most ``prefetch`` unfinished at a time),
so that a broker round trip overlaps the running task; the engine's main thread
admits them (``_admit``), feeds them to the worker through ``WorkerPipeline``
(which applies the rules of ``_supervise``), renews their leases at a third of
the lock duration, and hands results to a settler thread (``Settler``), or
settles a lone result itself when nothing else is going on (one thread hand-off
less).

``RelayFeeder`` has the same face as ``_direct.DirectWorker`` (``start``,
``step``, ``drain``, ``close``, ``worker``, ``finished``, ``current_task``): the
engine runs either with one loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from ..transport import Delivery, Transport
from ..transport.errors import TransportClosedError, TransportError
from ._admit import Admission
from ._cancels import CancelRequests
from ._outbox import Outbox, Settler
from ._pipeline import WorkerPipeline
from ._process import WorkerProcess
from ._reach import Backoff, ServiceWatch

__all__ = ["RelayFeeder"]

logger = logging.getLogger(__name__)

_POLL = 0.5  # seconds a receive waits at the broker, and the longest idle turn


@attrs.define(eq=False)
class RelayFeeder:
    """The engine's side of relay mode: receive, admit, pipe to the worker, settle.

    Attributes:
        name: the engine's name for its threads and log lines.
        transport, queue, prefetch: where tasks come from, and how many are held at once.
        outbox: where outcomes are recorded.
        admission: the engine's rules for a delivery before its task runs.
        pipeline: the worker and the tasks between admission and their outcome.
        cancels: cancel requests, filled by the engine's control thread.
        watch: hears of every receive's success or failure.
        receiving: set while the receiver thread may receive.
        wake_r: the read end of the engine's wake-up pipe (the pipeline waits on it).
        wake: wakes the engine's main thread.
        request_stop: asks the engine to stop (the transport was closed).
    """

    name: str
    transport: Transport
    queue: str
    prefetch: int
    outbox: Outbox
    admission: Admission
    pipeline: WorkerPipeline
    cancels: CancelRequests
    watch: ServiceWatch
    receiving: threading.Event
    wake_r: int
    wake: Callable[[], None]
    request_stop: Callable[[], None]
    cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    #: sends results and settles deliveries off the main thread
    settler: Settler = attrs.field(init=False)
    _incoming: deque[Delivery] = attrs.field(init=False, factory=deque)
    _held: int = attrs.field(init=False, default=0)  # received, not finished: the credit
    _settle_backlog: int = attrs.field(init=False)
    _renew_check_at: float = attrs.field(init=False, default=float("inf"))
    _receiver: threading.Thread = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.settler = Settler(self._settle, self.cond, f"{self.name}-settler")
        self._settle_backlog = max(4 * self.prefetch, 64)
        self._receiver = threading.Thread(
            target=self._receive_loop, name=f"{self.name}-receiver", daemon=True
        )

    @property
    def worker(self) -> WorkerProcess | None:
        return self.pipeline.worker

    @property
    def finished(self) -> int:
        """Tasks the worker has answered so far."""
        return self.pipeline.finished

    @property
    def restarts(self) -> int:
        """Workers started after the first (after a crash, a timeout or a cancel)."""
        return max(0, self.pipeline.workers_started - 1)

    def worker_figures(self) -> None:
        """None: the engine's own observer counts every result in this mode."""
        return None

    def current_task(self) -> str | None:
        """Id of the task running now, if any."""
        inflight = self.pipeline.inflight
        return inflight[0].task.task if inflight else None

    def start(self) -> None:
        """Start the worker (wait until it is warm), the settler and the receiver."""
        self.pipeline.start_worker()
        self.outbox.observer.report(time.time())  # its counts, before any result
        self.settler.start()
        self._receiver.start()

    def wake_receiver(self) -> None:
        """Let the receiver thread look at ``receiving`` again (the engine is stopping)."""
        with self.cond:
            self.cond.notify_all()

    # -- the receiver thread ---------------------------------------------------------------
    def _receive_loop(self) -> None:
        """Receive whenever there is credit, so a broker round trip overlaps running tasks."""
        backoff = Backoff()
        while self.receiving.is_set():
            with self.cond:
                # Waiting for the main thread to take what came last keeps this thread
                # from competing with it for the GIL while it starts those tasks.
                while self.receiving.is_set() and (
                    self._held >= self.prefetch
                    or self.settler.unsettled >= self._settle_backlog
                    or self._incoming
                ):
                    self.cond.wait(_POLL)
                if not self.receiving.is_set():
                    break
                room = self.prefetch - self._held
                self._held += room  # reserved while the receive is under way
            try:
                deliveries = self.transport.receive(self.queue, max_messages=room, timeout=_POLL)
                self.watch.answered()
                backoff.succeeded()
            except TransportClosedError:
                logger.warning("%s: transport closed, stopping", self.name)
                deliveries = []
                self.request_stop()
            except TransportError as exc:
                deliveries = []
                if not self.watch.failed(exc):
                    logger.warning("%s: receive failed (%s), retrying", self.name, exc)
                    time.sleep(backoff.failed())
            with self.cond:
                self._incoming.extend(deliveries)
                self._held -= room - len(deliveries)
            if deliveries:
                self.wake()

    # -- the main thread -------------------------------------------------------------------
    def step(self, until: float) -> None:
        """One turn: wait for worker output or new deliveries, then act on everything ready."""
        pipeline = self.pipeline
        deadline = pipeline.wake_at()
        if deadline is not None:
            until = min(until, deadline)
        woken = pipeline.wait(min(until - time.monotonic(), self._renew_check_at - time.time()))
        if woken:
            try:
                os.read(self.wake_r, 4096)
            except BlockingIOError:
                pass
        pipeline.collect()
        if self.cancels.arrived:
            self.cancels.arrived = False
            pipeline.cancel(self.cancels.keys)
        pipeline.check_head()
        pipeline.release_due()
        self._flush()
        admitted = self._admit_incoming()
        pipeline.dispatch()
        if admitted:
            self.wake_receiver()  # the receiver waits for its last batch to be taken
        if time.time() >= self._renew_check_at:
            self._renew_due()
        self._flush()

    def _flush(self) -> None:
        """Pass finished deliveries to the settler thread and release their credit.

        When nothing else is going on (the settler idle, no task held), the main thread
        settles them itself: a lone task's result then skips a thread hand-off, and
        there is nothing for the main thread to do while the broker answers.
        """
        entries, deliveries = self.outbox.take()
        if not entries:
            return
        with self.cond:
            self._held -= deliveries
            inline = self.settler.unsettled == 0 and not self._incoming and not len(self.pipeline)
            if not inline:
                self.settler.hand_over(entries)
            self.cond.notify_all()
        if inline:
            self._settle(entries)

    def _settle(self, entries: list[Any]) -> None:
        try:
            self.outbox.settle(entries)
        except Exception:
            logger.exception("%s: settling %d deliveries failed", self.name, len(entries))

    def _admit_incoming(self) -> bool:
        """Admit what the receiver got; True if there was anything."""
        admitted = False
        while True:
            with self.cond:
                if not self._incoming:
                    return admitted
                delivery = self._incoming.popleft()
            now = time.time()
            held = self.admission.admit(delivery, now)
            if held is not None:
                held.schedule_renewal(now)
                self._renew_check_at = min(self._renew_check_at, held.renew_at)
                self.pipeline.pending.append(held)
            admitted = True

    def _renew_due(self) -> None:
        now = time.time()
        next_check = float("inf")
        for held in self.pipeline.held():
            if held.lock_lost:
                continue
            if held.renew_at <= now:
                try:
                    self.transport.renew_lock(held.delivery)
                    held.schedule_renewal(time.time())
                except TransportError as exc:
                    held.renewal_failed(exc, now)
            next_check = min(next_check, held.renew_at)
        self._renew_check_at = next_check

    # -- stopping --------------------------------------------------------------------------
    def drain(self, grace: float, forced: Callable[[], bool]) -> None:
        """Graceful stop: give back what has not started, let the running task finish."""
        pipeline = self.pipeline
        pipeline.drain()  # tasks queued in the worker are skipped, not started
        self._stop_receiver()  # before giving anything back, or we might receive it again
        self._admit_incoming()
        while pipeline.pending:  # never started: given back uncounted
            self.outbox.give_back_unstarted(pipeline.pending.popleft())
        while pipeline.delayed:  # retries: given back counted, as their next attempt
            self.outbox.give_back_unstarted(pipeline.delayed.pop())
        grace_end = time.monotonic() + grace
        while pipeline.inflight and not forced() and time.monotonic() < grace_end:
            self.step(min(grace_end, time.monotonic() + _POLL))
        if pipeline.inflight:
            logger.warning("%s: giving back %d task(s) still running after the grace period",
                           self.name, pipeline.abandon_all())  # fmt: skip
        self._flush()

    def _stop_receiver(self) -> None:
        self.receiving.clear()
        self.wake_receiver()
        if self._receiver.is_alive() and self._receiver is not threading.current_thread():
            self._receiver.join(_POLL * 4 + 1.0)
            if self._receiver.is_alive():
                logger.warning("%s: thread %s did not stop", self.name, self._receiver.name)

    def close(self) -> None:
        """Stop the worker, give back whatever is still held, settle everything."""
        self._stop_receiver()
        self._admit_incoming()  # whatever the receiver got at the last moment
        self.pipeline.drain()
        self.pipeline.stop_worker()
        self.pipeline.abandon_all()  # nothing left after a graceful stop; after an error, all
        self._flush()
        self.settler.close()
