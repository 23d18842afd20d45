"""Direct mode: the task worker takes tasks from the broker and answers them itself.

In the default (relay) mode every task crosses the engine twice: the engine
receives it, pipes it to its worker process and pipes the answer back before
sending it. In direct mode the worker process has its own connection to the
broker: it receives tasks, admits them (the same rules as the engine), runs them
and sends their results and completions, so a task's path is broker -> worker ->
broker; the engine stays beside it as its supervisor. What the engine needs to
supervise without being woken for every task is in a small shared-memory
``Ledger`` that the worker keeps up to date: the lease tokens it holds, and which
task is running, since when, until when, and its message. From it the engine

* renews the leases the worker holds (settling by lock token works from any
  connection on the ZeroMQ broker, which is why direct mode needs ``zmq://``);
* kills the worker when the running task outlives its timeout, or when it was
  cancelled while running, and answers that task (``TaskTimeoutError``,
  ``cancelled``);
* when the worker dies, answers or re-queues the task it was running exactly as
  in relay mode (``WorkerCrashedError`` after ``max_retries``) and gives back
  every other delivery it held; then starts a new worker;
* sends the ``running`` notice of a long task to sessions that ask for notices.

The worker wakes the engine only when it starts a task that has a timeout;
other tasks cost the engine nothing (it looks at the ledger at least four times a
second, which is often enough for leases and the ``running`` notice). Cancel requests, which
the engine receives, reach the worker through its control pipe; a graceful stop
tells the worker to drain (give back what it has not started, finish the running
task) and exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import select
import struct
import subprocess
import threading
import time
from collections import deque
from queue import SimpleQueue
from typing import Any

import orjson

from ..control import KIND_RUNNING, NOTIFY, RUNNING_NOTICE_AFTER
from ..protocol import ProtocolError, decode_task
from ..transport import Delivery, Message, Transport
from ..transport.errors import TransportClosedError, TransportError
from ._admit import Admission
from ._cancels import CancelRequests
from ._outbox import Held, Outbox, delivery_attempt, settle_loop
from ._output import DEFAULT_MAX_OUTPUT, WorkerLog
from ._pipeline import retry_delay
from .tasks import JvmOptionPolicy
from .worker import STATUS_EXPIRED, WorkerProcess, describe_exit

__all__ = ["DirectRunner", "DirectWorker", "Ledger", "supports_direct"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<QqQddQIH")  # gen, running slot, run seq, started, deadline,
#                                        finished, body length, running attempt
_HEADER_SIZE = 64
_GEN = struct.Struct("<Q")
_SLOT = struct.Struct("<BBIddH")  # state, flags, delivery count, received, locked until,
#                                     token length (wall-clock times)
_SLOT_SIZE = 192
_TOKEN_MAX = _SLOT_SIZE - _SLOT.size
_FLAG_NOTIFY = 1
_CANCEL_GRACE = 0.1  # seconds a cancelled running task has to finish before its worker dies
_RECEIVE_WAIT = 0.5  # seconds the worker's receive waits at the broker
_IDLE_POLL = 0.05  # seconds between looks at the control pipe when no task is waiting
_SHORT_TASK = 0.0005  # seconds: results of tasks this short may wait to go out together
_BATCH = 16  # results of short tasks sent in one request at most
_WAKE = b"\1"


def supports_direct(url: str) -> bool:
    """True if a worker process can settle leases by token on this transport."""
    return url.startswith("zmq://")


class LedgerView:
    """A consistent copy of the ledger (see ``Ledger.snapshot``)."""

    __slots__ = ("attempt", "body", "deadline", "finished", "held", "run_seq", "running",
                 "started")  # fmt: skip

    def __init__(self) -> None:
        self.running = -1
        self.run_seq = 0
        self.started = 0.0
        self.deadline = 0.0
        self.finished = 0
        self.attempt = 0
        self.body = b""
        #: slot -> (token, delivery count, flags, received, locked until)
        self.held: dict[int, tuple[str, int, int, float, float]] = {}


class Ledger:
    """Shared memory that a direct worker writes and its engine reads.

    A header (running slot, run sequence, start and deadline on the monotonic clock,
    tasks finished, the running task's attempt and message length), ``slots`` slots
    of held deliveries, then the running task's message body. The worker writes the
    header and body under a sequence counter (odd while writing), so the engine's
    reads of them are consistent; a slot's first byte, written last when it is
    filled and first when it is freed, says whether it holds a delivery. After the
    worker died the engine reads whatever is there.

    Args:
        slots: deliveries held at once at most (the prefetch).
        body_size: the largest message body.
        fd: an existing ledger's file descriptor (the worker's side); None creates one.
    """

    def __init__(self, slots: int, body_size: int, fd: int | None = None) -> None:
        self.slots = slots
        self.body_offset = _HEADER_SIZE + slots * _SLOT_SIZE
        self.size = self.body_offset + body_size
        self.owner = fd is None
        if fd is None:
            fd = os.memfd_create("rtbatch-ledger")
            os.ftruncate(fd, self.size)
        self.fd = fd
        self.mem = mmap.mmap(fd, self.size)
        if self.owner:
            self.reset()
        self._free = list(range(slots - 1, -1, -1))
        self._gen = 0
        self._run_seq = 0
        self._finished = 0

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)

    # -- the worker's side ------------------------------------------------------------------
    def _begin(self) -> None:
        self._gen += 1
        _GEN.pack_into(self.mem, 0, self._gen)

    _end = _begin

    def room(self) -> int:
        """Slots free."""
        return len(self._free)

    def hold(self, deliveries: list[Delivery]) -> list[int]:
        """Record deliveries just received; return their slots."""
        slots = []
        for delivery in deliveries:  # the state byte, written last, makes a slot visible
            token = delivery.lock_token.encode()
            if len(token) > _TOKEN_MAX:
                raise ValueError(f"lock token of {len(token)} bytes: too long for the ledger")
            slot = self._free.pop()
            offset = _HEADER_SIZE + slot * _SLOT_SIZE
            flags = _FLAG_NOTIFY if delivery.message.properties.get(NOTIFY) else 0
            self.mem[offset + _SLOT.size : offset + _SLOT.size + len(token)] = token
            _SLOT.pack_into(self.mem, offset, 0, flags, delivery.delivery_count, time.time(),
                            delivery.locked_until, len(token))  # fmt: skip
            self.mem[offset] = 1  # held: written last
            slots.append(slot)
        return slots

    def release(self, slots: list[int]) -> None:
        """The deliveries in ``slots`` are settled."""
        for slot in slots:
            self.mem[_HEADER_SIZE + slot * _SLOT_SIZE] = 0  # one byte: no torn state
            self._free.append(slot)

    def start(self, slot: int, body: bytes, deadline: float, attempt: int) -> None:
        """The task in ``slot`` starts (``deadline``: monotonic, 0 for none).

        A body larger than the ledger's room (a broker allowing larger messages than
        this engine's transport) is left out: the engine then cannot name the task,
        and gives it back counted if the worker dies running it.
        """
        self._run_seq += 1
        if len(body) > self.size - self.body_offset:
            body = b""
        self._begin()
        self.mem[self.body_offset : self.body_offset + len(body)] = body
        _HEADER.pack_into(self.mem, 0, self._gen, slot, self._run_seq, time.monotonic(),
                          deadline, self._finished, len(body), attempt)  # fmt: skip
        self._end()

    def stop(self) -> None:
        """The running task ended."""
        self._finished += 1
        self._begin()
        struct.pack_into("<qQddQ", self.mem, 8, -1, self._run_seq, 0.0, 0.0, self._finished)
        self._end()

    # -- the engine's side -------------------------------------------------------------------
    def snapshot(self, *, body: bool = False, force: bool = False) -> LedgerView:
        """A consistent view (``force``: as it is, for a dead worker's ledger)."""
        mem = self.mem
        while True:
            gen = struct.unpack_from("<Q", mem, 0)[0]
            if gen & 1 and not force:
                time.sleep(0)
                continue
            view = LedgerView()
            (_, view.running, view.run_seq, view.started, view.deadline, view.finished, length,
             view.attempt) = _HEADER.unpack_from(mem, 0)  # fmt: skip
            for slot in range(self.slots):
                offset = _HEADER_SIZE + slot * _SLOT_SIZE
                if mem[offset] != 1:
                    continue
                _state, flags, count, received, locked_until, size = _SLOT.unpack_from(mem, offset)
                token = bytes(mem[offset + _SLOT.size : offset + _SLOT.size + size]).decode(
                    errors="replace"
                )
                view.held[slot] = (token, count, flags, received, locked_until)
            if body and view.running >= 0:
                view.body = bytes(mem[self.body_offset : self.body_offset + length])
            if force or struct.unpack_from("<Q", mem, 0)[0] == gen:
                return view

    def reset(self) -> None:
        """Clear it for a new worker."""
        self.mem[: self.body_offset] = bytes(self.body_offset)
        struct.pack_into("<q", self.mem, 8, -1)


# -- the worker's side ------------------------------------------------------------------------


class DirectControl:
    """What the engine wrote on the control pipe, one per line: cancel keys (``K`` + JSON),
    ``G`` (go: the keys known at the start were sent) and ``D`` (drain)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.draining = False
        self.go = False
        self.cancelled: set[tuple[str, str, str]] = set()
        self._partial = b""

    def wait_go(self, timeout: float) -> None:
        """Read what the engine sends before the first task (cancel keys), up to ``G``."""
        end = time.monotonic() + timeout
        while not self.go and not self.draining and time.monotonic() < end:
            select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            self.poll()
        if not self.go and not self.draining:
            raise RuntimeError("the engine did not say go")

    def poll(self) -> bool:
        """Read what the engine wrote (one non-blocking read); True if cancel keys came."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            self.draining = True  # the engine is gone
            return False
        keys = len(self.cancelled)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line == b"D":
                self.draining = True
            elif line == b"G":
                self.go = True
            elif line.startswith(b"K"):
                try:
                    session, task, key = orjson.loads(line[1:])
                    self.cancelled.add((str(session), str(task), str(key)))
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    logger.warning("ignoring a malformed cancel line from the engine")
        return len(self.cancelled) > keys


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
        self.outbox = Outbox(transport, context.engine_id, options["max_delivery_count"],
                             options.get("result_ttl"), source="worker")  # fmt: skip
        self.admission = Admission(self.outbox, context.tasks_dir, options["max_delivery_count"],
                                   control.cancelled,
                                   JvmOptionPolicy(**options.get("jvm_options", {})))  # fmt: skip
        self.pending: deque[Held] = deque()
        self.delayed: list[Held] = []
        self.slots: dict[str, int] = {}  # lock token -> ledger slot
        self.wake_fd = wake_fd
        self._seq = 0
        # Results are sent by a settler thread while the next task runs (see ``_flush``).
        self._settle_queue: SimpleQueue[list[Any] | None] = SimpleQueue()
        self._settle_lock = threading.Condition()
        self._unsettled = 0  # entries handed to the settler thread, not settled yet
        self._settler = threading.Thread(target=self._settle_loop, name="settler", daemon=True)
        # results sent with the next receive in one request (zmq: SETTLE_RECEIVE)
        self._merge = hasattr(transport, "settle_and_receive")

    def serve(self, cache: Any, run_one: Any, release_memory: Any = None) -> None:
        """Serve tasks until the engine says drain (or goes away), then give back the rest.

        ``run_one`` runs a task; ``release_memory``, called when idle with nothing
        being sent, hands freed heap back to the system (both from the worker module).
        """
        backoff = 0.1
        polled = 0.0
        unsent_since: float | None = None  # monotonic time the oldest unsent result's task began
        self.outbox.observer.report(time.time())  # this worker's part of the engine's report
        self._settler.start()
        while True:
            # Look for cancel requests before each task; while idle, at least every 50 ms
            # (a receive returns within 0.5 s), so that a drain is seen.
            if self.pending or time.monotonic() - polled > _IDLE_POLL:
                polled = time.monotonic()
                if self.control.poll() and self.delayed:
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
            wait = _RECEIVE_WAIT
            if self.delayed:
                wait = max(0.0, min(wait, min(h.due for h in self.delayed) - time.monotonic()))
            room = self.ledger.room() + sum(
                1 for e in entries if e.delivery is not None and e.delivery.lock_token in self.slots
            )
            if room <= 0:  # every slot is being settled, or a retry backing off
                if entries:  # notices only
                    self._settle(entries)
                with self._settle_lock:
                    if self._unsettled:
                        self._settle_lock.wait(wait)  # the settler frees slots
                        continue
                time.sleep(wait)
                continue
            try:
                if entries:
                    deliveries = self._settle_and_receive(entries, room, wait)
                else:
                    deliveries = self.transport.receive(self.queue, max_messages=room, timeout=wait)
                backoff = 0.1
            except TransportClosedError:
                break
            except TransportError as exc:
                logger.warning("worker: receive failed (%s), retrying", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            entries = []
            if release_memory is not None and not self._unsettled:
                release_memory()  # after a jar task: its output and result are sent
            if deliveries:
                self._admit(deliveries)
        for held in self.pending:  # never started here: not counted as a delivery
            if held.attempt > delivery_attempt(held.delivery, held.task):
                self.outbox.abandon(held)  # retried here already
            else:
                self.outbox.give_back(held.delivery)
        for held in self.delayed:
            self.outbox.abandon(held)
        self.pending.clear()
        self.delayed.clear()
        self._flush(inline=False)
        self._settle_queue.put(None)
        self._settler.join(60.0)

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
        if self.control.cancelled and held.key in self.control.cancelled:
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
        elif error is not None and error[0] in task.retry_on and held.attempt <= task.max_retries:
            delay = retry_delay(held.attempt, self.retry_backoff, self.retry_backoff_max)
            logger.info("task %s attempt %d failed; retrying in %.2f s", task.task, held.attempt,
                        delay)  # fmt: skip
            held.attempt += 1
            held.due = time.monotonic() + delay
            self.delayed.append(held)
            self.outbox.observer.retried += 1
        else:
            self.outbox.finished(held, status, value, error, started, finished)

    def _drop_cancelled(self) -> None:
        """Answer the retries backing off whose task was cancelled meanwhile."""
        cancelled = self.control.cancelled
        for held in [held for held in self.delayed if held.key in cancelled]:
            self.delayed.remove(held)
            self.outbox.cancelled(held)

    def _release_due(self) -> None:
        now = time.monotonic()
        due = [held for held in self.delayed if held.due <= now]
        if due:
            self.delayed = [held for held in self.delayed if held.due > now]
            self.pending.extendleft(reversed(due))

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
            if not entries or self._unsettled == 0:
                return entries
        return self._hand_over(entries)

    def _hand_over(self, entries: list[Any]) -> list[Any]:
        """Give ``entries`` to the settler thread; returns ``[]``."""
        if entries:
            with self._settle_lock:
                self._unsettled += len(entries)
            self._settle_queue.put(entries)
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

    def _settle_loop(self) -> None:
        """The settler thread: settle what the main thread hands over, merging batches."""
        settle_loop(self._settle_queue, self._settle, self._settle_lock, self._count_settled)

    def _count_settled(self, count: int) -> None:
        self._unsettled -= count


# -- the engine's side ------------------------------------------------------------------------


class DirectWorker:
    """The engine's handle on a direct worker: start it, watch its ledger, act on its death.

    Args:
        url: the transport URL the worker connects to (``zmq://``).
        queue: the task queue.
        prefetch: deliveries the worker holds at most.
        options: the worker's settings (``max_delivery_count``, ``result_ttl``,
            ``default_timeout``, ``retry_backoff``, ``retry_backoff_max``).
        transport, outbox: the engine's own (renewals, answers for a dead worker's task).
        wake_r, wake_w: the engine's wake-up pipe; the worker gets the write end.
        body_size: the largest message body.
        max_output: characters of print output per task, bytes of a jar's stdout/stderr.
        worker_log: the worker's rotated log file (None: stderr).
    """

    def __init__(
        self,
        tasks_dir: str,
        work_dir: str,
        engine_id: str,
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
        max_output: int = DEFAULT_MAX_OUTPUT,
        worker_log: WorkerLog | None = None,
        *,
        pass_env: tuple[str, ...] = (),
    ) -> None:
        self.tasks_dir = tasks_dir
        self.max_output = max_output
        self.worker_log = worker_log
        self.work_dir = work_dir
        self.engine_id = engine_id
        self.queue = queue
        self.options = dict(options, url=url, queue=queue, slots=prefetch, body_size=body_size)
        self.transport = transport
        self.outbox = outbox
        self.wake_r = wake_r
        self.wake_w = wake_w
        self.poll_interval = poll
        self.cancels = cancels
        self.pass_env = pass_env
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
        worker = WorkerProcess(
            self.tasks_dir,
            self.work_dir,
            self.engine_id,
            self.max_output,
            self.worker_log,
            pass_env=self.pass_env,
            jvm_host_options=self.options.get("jvm_host_options", ()),
            jvm_options=JvmOptionPolicy(**self.options.get("jvm_options", {})),
        )
        try:
            worker.start(direct=(json.dumps(self.options), self.ledger.fd, self.wake_w))
        except BaseException:
            worker.stop()
            raise
        self.worker = worker
        # Before its first receive the worker learns every cancel request known so far.
        self._sent_cancels = set(self.cancels.keys)
        worker.write_control(_cancel_lines(self._sent_cancels) + b"G\n")
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
                worker.write_control(_cancel_lines(fresh))
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
            self._kill("timeout", view.run_seq)
            return now
        if view.deadline:
            next_at = view.deadline
        if cancels.keys:
            held = self._decoded(view)
            if held is not None and held.key in cancels.keys:
                seen = self._cancel_seen.setdefault(view.run_seq, now)
                if now >= seen + _CANCEL_GRACE:
                    self._kill("cancelled", view.run_seq)
                    return now
                next_at = min(next_at, seen + _CANCEL_GRACE)
        slot = view.held.get(view.running)
        if slot is not None and slot[2] & _FLAG_NOTIFY and self._noticed != view.run_seq:
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
                at = renew_at[token] = received + max((locked_until - received) / 3.0, 0.05)
            if at <= now:
                try:
                    until = self.transport.renew_lock(_delivery(self.queue, token, count))
                    at = renew_at[token] = now + max((until - now) / 3.0, 0.05)
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

    def _lost(self, why: str | None, run_seq: int = 0) -> None:
        """The worker is dead (killed for ``why``, or by itself): settle what it held."""
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
                self.outbox.give_back(held.delivery)  # it started just before the kill
            elif self.draining:
                self.outbox.abandon(held)  # still running when the grace period ended
            elif why == "cancelled":
                logger.info("task %s cancelled while running; worker killed", held.task.task)
                self.outbox.stopped_running(held)
            elif why == "timeout":
                limit = held.task.timeout
                if limit is None:
                    limit = self.options.get("default_timeout")
                logger.warning("task %s timed out after %s s; worker killed", held.task.task,
                               limit)  # fmt: skip
                if "TaskTimeoutError" in held.task.retry_on and held.attempt <= (
                    held.task.max_retries
                ):
                    self.outbox.abandon(held)
                else:
                    self.outbox.timed_out(held, limit)
            else:
                cause = describe_exit(code)
                logger.warning("worker died with %s running task %s", cause, held.task.task)
                self.outbox.crashed(held, cause, report)
        elif why is None and not self.draining:
            logger.warning("worker died idle (%s); restarting", describe_exit(code))
        for token, count, *_ in view.held.values():  # received, not started: give back
            self.outbox.give_back(_delivery(self.queue, token, count))
        self._flush()
        if not self.draining:
            self.start()

    def _flush(self) -> None:
        try:
            self.outbox.flush()
        except Exception:
            logger.exception("engine: settling for the worker failed")

    def write_control(self, data: bytes) -> None:
        if self.worker is not None:
            self.worker.write_control(data)

    def drain(self, grace: float, forced: Any) -> None:
        """Graceful stop: the worker gives back what it has not started and finishes the rest."""
        self.draining = True
        if self.worker is None:
            return
        self.worker.write_control(b"D\n")
        end = time.monotonic() + grace
        while self.worker is not None and not forced() and time.monotonic() < end:
            self.step(min(end, time.monotonic() + 0.05))
        if self.worker is not None:
            if self.ledger.snapshot().running >= 0:
                logger.warning("engine %s: giving back the task still running after the grace "
                               "period", self.engine_id)  # fmt: skip
            self.worker.kill()
            self._lost(None)

    def close(self) -> None:
        self.draining = True
        if self.worker is not None:
            self.worker.kill()
            self._lost(None)
        self.ledger.close()


def _cancel_lines(keys: Any) -> bytes:
    return b"".join(b"K" + orjson.dumps(list(key)) + b"\n" for key in keys)


def _delivery(queue: str, token: str, count: int) -> Delivery:
    return Delivery(Message(b""), queue, count, 0.0, token)


def _held(queue: str, slot: tuple[str, int, int, float, float], body: bytes,
          attempt: int) -> Held | None:  # fmt: skip
    """The ``Held`` of a running task from its ledger entry (None if its body is unreadable)."""
    token, count, flags, _received, _locked = slot
    properties = {NOTIFY: True} if flags & _FLAG_NOTIFY else {}
    delivery = Delivery(Message(body, properties=properties), queue, count, 0.0, token)
    try:
        task = decode_task(body)
    except ProtocolError:
        return None
    return Held(delivery, task, attempt) if attempt else Held.received(delivery, task)
