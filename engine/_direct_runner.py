"""Direct mode, the worker's side: take tasks from the broker, run them, answer them.

In direct mode (see ``_direct`` for the engine's side) the task worker has its own
connection to the broker: ``DirectRunner`` receives tasks, admits them (the same
rules as the engine, ``_admit``), runs them, sends their results and completes
their deliveries, so a task's path is broker -> worker -> broker. It keeps the
``Ledger`` up to date for its engine, wakes the engine when it starts a task that
has a timeout, and follows the engine's control pipe (``DirectControl``, a thread):
cancel requests, and ``D`` to drain (give back what it has not started, then exit).
An idle receive waits long (``_supervise.idle_wait``); a drain ends it
(``Transport.wake``).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..transport import Delivery, Transport
from ..transport.errors import TransportClosedError, TransportError
from ._admit import Admission
from ._ledger import Ledger
from ._observe import TaskObserver
from ._outbox import Held, Outbox, Settler
from ._pipe import STATUS_EXPIRED, ControlPipe
from ._reach import Backoff
from ._supervise import (
    drop_cancelled,
    failed_after_cancel,
    may_retry,
    release_due,
    schedule_retry,
)
from .tasks import JvmOptionPolicy

__all__ = ["DirectControl", "DirectRunner"]

logger = logging.getLogger(__name__)

_SHORT_TASK = 0.0005  # seconds: results of tasks this short may wait to go out together
_BATCH = 16  # results of short tasks sent in one request at most
_WAKE = b"\1"


class DirectControl(ControlPipe):
    """The control pipe of a direct worker: read up to ``G`` by ``wait_go``, then by a
    thread of its own (``follow``)."""

    def follow(self, on_drain: Callable[[], None], on_cancels: Callable[[], None]) -> None:
        """Read the pipe in a thread until ``D`` (or the engine is gone), then ``on_drain``;
        ``on_cancels`` after each read that brought cancel requests."""

        def run() -> None:
            while not self.draining:
                select.select([self.fd], [], [])
                self.poll()
                if self.arrived:
                    on_cancels()
            on_drain()

        threading.Thread(target=run, name="control", daemon=True).start()

    def wait_go(self, timeout: float) -> None:
        """Read what the engine sends before the first task (cancel keys), up to ``G``."""
        end = time.monotonic() + timeout
        while not self.go and not self.draining and time.monotonic() < end:
            select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            self.poll()
        if not self.go and not self.draining:
            raise RuntimeError("the engine did not say go")


class DirectRunner:
    """The worker process's loop in direct mode: receive, admit, run, answer, settle."""

    def __init__(
        self,
        transport: Transport,
        ledger: Ledger,
        control: DirectControl,
        context: Any,
        options: dict[str, Any],
        wake_fd: int,
    ) -> None:
        self.transport = transport
        self.ledger = ledger
        self.control = control
        self.context = context
        self.queue: str = options["queue"]
        self.default_timeout: float | None = options.get("default_timeout")
        self.retry_backoff: float = options["retry_backoff"]
        self.retry_backoff_max: float = options["retry_backoff_max"]
        self.idle_wait: float = options["idle_wait"]  # the engine's ``idle_wait``
        # its figures go on from the last worker's, kept in the ledger
        observer = TaskObserver(transport, context.engine_id, "worker", keep=ledger.figures)
        self.outbox = Outbox(transport, context.engine_id, options["max_delivery_count"],
                             options.get("result_ttl"), observer)  # fmt: skip
        self.admission = Admission(self.outbox, context.tasks_dir, options["max_delivery_count"],
                                   control.keys,
                                   JvmOptionPolicy(**options.get("jvm_options", {})))  # fmt: skip
        self.pending: deque[Held] = deque()
        self.delayed: list[Held] = []
        self.slots: dict[str, int] = {}  # lock token -> ledger slot
        self.wake_fd = wake_fd
        self._seq = 0
        # Results are sent by a settler thread while the next task runs (see ``_flush``).
        self._settle_lock = threading.Condition()
        self._settler = Settler(self._settle, self._settle_lock, "settler")
        # results sent with the next receive in one request (zmq: SETTLE_RECEIVE)
        self._merge = transport.capabilities.settle_and_receive

    def serve(self, cache: Any, run_one: Any, release_memory: Any = None) -> None:
        """Serve tasks until the engine says drain (or goes away), then give back the rest.

        ``run_one`` runs a task; ``release_memory``, called when idle with nothing
        being sent, hands freed heap back to the system (both from the worker module).
        """
        backoff = Backoff()
        poked = threading.Event()  # a drain, or cancels while retries back off

        def on_drain() -> None:  # ends a waiting receive, or a wait for a retry
            poked.set()
            self.transport.wake()

        def on_cancels() -> None:  # a retry backing off may be cancelled: look now
            if self.delayed:  # (the receive waits for the first one's time to come)
                poked.set()
                self.transport.wake()

        self.control.follow(on_drain, on_cancels)
        unsent_since: float | None = None  # monotonic time the oldest unsent result's task began
        self.outbox.observer.report(time.time())  # this worker's part of the engine's report
        self._settler.start()
        while True:
            if self.control.arrived:
                self.control.arrived = False
                if self.delayed:
                    self._drop_cancelled()
            if self.control.draining:
                break
            if self.delayed:
                self._release_due()
            if self.pending:
                started = time.monotonic()
                self._run(self.pending.popleft(), cache, run_one)
                now = time.monotonic()
                if unsent_since is None:
                    unsent_since = started
                if not self.pending:  # the last one: sent with the next receive (below)
                    if self.delayed:  # unless a retry may run first
                        self._flush(inline=True)
                elif now - started > _SHORT_TASK:  # sent while the next task runs
                    self._flush(inline=False)
                elif len(self.outbox) >= _BATCH or now - unsent_since > 2 * _SHORT_TASK:
                    self._flush(inline=True)  # tiny tasks: many results per request
                else:
                    continue
                unsent_since = None
                continue
            # Results not sent yet go with the next receive, in one request where the
            # transport can (the settler thread takes them instead while it has some
            # under way, to keep their order).
            entries = self._take_inline()
            if entries and not self._merge:
                self._settle(entries)
                entries = []
            self.outbox.observer.report_pending(time.time())  # before a receive that may wait
            wait = self.idle_wait
            if self.delayed:
                wait = max(0.0, min(wait, min(h.due for h in self.delayed) - time.monotonic()))
            room = self.ledger.room() + sum(
                1 for e in entries if e.delivery is not None and e.delivery.lock_token in self.slots
            )
            if room <= 0:  # every slot is being settled, or a retry backing off
                if entries:  # notices only
                    self._settle(entries)
                with self._settle_lock:
                    if self._settler.unsettled:
                        self._settle_lock.wait(wait)  # the settler frees slots
                        continue
                poked.wait(wait)
                if not self.control.draining:
                    poked.clear()
                continue
            try:
                if entries:
                    deliveries = self._settle_and_receive(entries, room, wait)
                else:
                    deliveries = self.transport.receive(self.queue, max_messages=room, timeout=wait)
                backoff.succeeded()
            except TransportClosedError:
                break
            except TransportError as exc:
                logger.warning("worker: receive failed (%s), retrying", exc)
                time.sleep(backoff.failed())
                continue
            entries = []
            if release_memory is not None and not self._settler.unsettled:
                release_memory()  # after a jar task: its output and result are sent
            if deliveries:
                self._admit(deliveries)
        # never started, or retried here: answered if cancelled, else given back
        for held in drop_cancelled((*self.pending, *self.delayed), self.control.keys,
                                   self.outbox):  # fmt: skip
            self.outbox.give_back_unstarted(held)
        self.pending.clear()
        self.delayed.clear()
        self._flush(inline=False)
        self._settler.close()

    def _admit(self, deliveries: list[Delivery]) -> None:
        for delivery, slot in zip(deliveries, self.ledger.hold(deliveries), strict=True):
            self.slots[delivery.lock_token] = slot
        now = time.time()
        for delivery in deliveries:
            held = self.admission.admit(delivery, now)
            if held is not None:
                self.pending.append(held)

    def _run(self, held: Held, cache: Any, run_one: Any) -> None:
        task = held.task
        if self.control.keys and held.key in self.control.keys:
            self.outbox.cancelled(held)
            return
        limit = task.timeout if task.timeout is not None else self.default_timeout
        deadline = time.monotonic() + limit if limit is not None else 0.0
        self.ledger.start(self.slots[held.delivery.lock_token], held.delivery.message.body,
                          deadline, held.attempt)  # fmt: skip
        if limit is not None:  # the engine must see its deadline in time
            try:
                os.write(self.wake_fd, _WAKE)  # the engine watches this one
            except OSError:
                pass
        self._seq += 1
        _seq, status, value, error, started, finished = run_one(
            (self._seq, held.kind, held.path, task.args, task.kwargs, task.deadline, task.task,
             held.attempt), cache, self.context,
        )  # fmt: skip
        self.ledger.stop()
        if status == STATUS_EXPIRED:
            self.outbox.expired(held)
        elif failed_after_cancel(error, held.key in self.control.keys):
            self.outbox.cancelled(held)
        elif error is not None and may_retry(held, error[0]):
            schedule_retry(held, self.delayed, self.retry_backoff, self.retry_backoff_max,
                           self.outbox.observer)  # fmt: skip
            self.ledger.retried(self.slots[held.delivery.lock_token])  # should this worker die
        else:
            self.outbox.finished(held, status, value, error, started, finished)

    def _drop_cancelled(self) -> None:
        """Answer the retries backing off whose task was cancelled meanwhile."""
        self.delayed = drop_cancelled(self.delayed, self.control.keys, self.outbox)

    def _release_due(self) -> None:
        self.pending.extendleft(reversed(release_due(self.delayed)))

    def _flush(self, *, inline: bool) -> None:
        """Send the results recorded so far and settle their deliveries.

        ``inline``: in this thread when the settler thread has nothing under way (a lone
        result skips a thread hand-off); otherwise, or without ``inline``, the settler
        thread does it.
        """
        entries = self._take_inline() if inline else self._hand_over(self.outbox.take()[0])
        if entries:
            self._settle(entries)

    def _take_inline(self) -> list[Any]:
        """What the outbox holds, for this thread to settle (e.g. with its next receive).

        Handed to the settler thread instead (and ``[]`` returned) while that thread
        has results under way: sent after them, in order.
        """
        entries, _ = self.outbox.take()
        with self._settle_lock:
            if not entries or self._settler.unsettled == 0:
                return entries
        return self._hand_over(entries)

    def _hand_over(self, entries: list[Any]) -> list[Any]:
        """Give ``entries`` to the settler thread; returns ``[]``."""
        self._settler.hand_over(entries)
        return []

    def _settle_and_receive(self, entries: list[Any], room: int, wait: float) -> list[Delivery]:
        """Settle ``entries`` and receive up to ``room`` tasks, in one request."""
        try:
            return self.outbox.settle_and_receive(
                entries, self.queue, max_messages=room, timeout=wait
            )
        finally:
            self._release_slots(entries)

    def _settle(self, entries: list[Any]) -> None:
        try:
            self.outbox.settle(entries)
        except Exception:
            logger.exception("worker: settling %d deliveries failed", len(entries))
        finally:
            self._release_slots(entries)

    def _release_slots(self, entries: list[Any]) -> None:
        slots = [self.slots.pop(e.delivery.lock_token) for e in entries
                 if e.delivery is not None and e.delivery.lock_token in self.slots]  # fmt: skip
        if slots:
            self.ledger.release(slots)
