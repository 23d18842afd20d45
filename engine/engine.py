"""The engine: pull tasks from a queue, run them in a warm worker process, reply, complete.

One thread (the caller of ``run``) owns the worker (through a ``WorkerPipeline``)
and decides about every leased delivery; a receiver thread fetches deliveries
(at most ``prefetch`` unfinished at a time) and a settler thread sends results
and completes deliveries, so that broker round trips overlap task execution
(an engine with nothing else to do settles a lone result on its main thread, one
thread hand-off less). Per delivery the engine decodes the task, checks its
attempt count, deadline and command, pipelines it to the worker, and once the
worker answers sends the result to ``task.reply_to`` *then* completes the
delivery (at-least-once; clients drop duplicate results by task id). Leases of
held deliveries are renewed at a third of the lock duration.

Failure rules:

* the task raises -> ``error`` result, not retried (unless its type is in
  ``task.retry_on`` and ``attempt <= max_retries``: the delivery stays leased while
  the engine backs off, ``retry_backoff * 2**(attempt-1)`` capped and jittered, then
  runs it again with ``attempt + 1``);
* the worker dies -> infrastructure fault: abandoned for another attempt while
  ``attempt <= max_retries``, then a ``WorkerCrashedError`` result;
* the task outlives its timeout -> worker killed and restarted,
  ``TaskTimeoutError`` result (retried like an exception if named in ``retry_on``);
* a delivery seen more than ``max_retries + 1`` times (engines died holding it), or
  for the queue's last time (``max_delivery_count``) after an earlier delivery
  -> ``EngineLostError`` result without running it (dead-lettered in the second case),
  so a task that kills every engine still gets an answer;
* a malformed body -> dead-lettered (``MalformedTask``), answered if the sender is known.

Cancellation: a control thread receives cancel requests from the grouped control
queue (group = the engine id) into a bounded, expiring set of ``(session, task)``
keys. A cancelled task that comes up is not run (``cancelled`` result); one already
queued in the worker is skipped; a running one has its worker killed and restarted.
Tasks whose message asks for notices (see ``control``) make the engine tell the
session's mailbox once that it holds its tasks, and when one has run for 0.25 s.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import Any

from ..control import CONTROL_QUEUE
from ..transport import Delivery, Transport, open_transport
from ..transport.base import DEFAULT_LOCK_DURATION, DEFAULT_MAX_DELIVERY_COUNT
from ..transport.errors import TransportClosedError, TransportError
from ._admit import Admission
from ._cancels import CancelRequests, receive_cancels
from ._direct import DirectWorker
from ._observe import REPORT_INTERVAL, engine_report
from ._outbox import Outbox, settle_loop
from ._output import DEFAULT_MAX_OUTPUT, WorkerLog
from ._pipeline import WorkerPipeline
from ._process import WorkerSettings
from ._reach import Backoff, ServiceGoneError, ServiceWatch
from ._supervise import DEFAULT_RETRY_BACKOFF, DEFAULT_RETRY_BACKOFF_MAX
from .credentials import check_pass_env
from .errors import EngineError
from .jvm_host import check_host_options
from .tasks import JvmOptionPolicy

__all__ = ["DEFAULT_RESULT_TTL", "Engine", "EngineError", "ServiceGoneError", "default_engine_id"]

logger = logging.getLogger(__name__)

DEFAULT_RESULT_TTL = 86400.0
_POLL = 0.5


def default_engine_id() -> str:
    """``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Engine:
    """Pulls tasks from ``queue`` and runs them in a supervised worker process.

    Args:
        transport: an open ``Transport`` (not closed by the engine) or a transport URL
            (opened and closed by the engine).
        queue: the task queue; declared (idempotently) with ``lock_duration`` and
            ``max_delivery_count``.
        tasks_dir: directory holding the task modules and jars that commands name.
        work_dir: current directory of task code (input files); default: the cwd.
        prefetch: deliveries held at once (one running, the rest queued and leased).
        engine_id: id carried in every result; default ``<hostname>-<pid>``.
        default_timeout: seconds a task may run when it sets no timeout (None: no limit).
        lock_duration: lease of the task queue (when this engine creates it).
        max_delivery_count: deliveries before dead-lettering (when this engine creates it).
        result_ttl: time-to-live of result messages, in seconds.
        grace: seconds a running task may take to finish after ``stop``.
        on_ready: called once connected and the worker is warm.
        control_queue: grouped queue of cancel requests (this engine reads its own group).
        retry_backoff: seconds before the first retry of a ``retry_on`` failure (doubles
            per attempt, jittered).
        retry_backoff_max: the largest delay before a retry.
        direct: let the task worker take tasks from the broker and answer them itself,
            the engine supervising beside it (``engine._direct``): a shorter path per
            task. None (default): when ``transport`` is a URL whose backend declares
            ``Capabilities.settles_by_token`` (another connection can renew and settle
            the worker's leases): ``zmq://``.
        pass_env: names of environment variables task processes get besides the
            allowlist of ``engine.credentials.TASK_ENV_NAMES`` (``--pass-env``).
        jvm_options: which JVM options a jar task's ``jvm_args`` may hold; default
            ``JvmOptionPolicy()``: only ``-Xmx``/``-Xms``/``-Xss`` sizes.
        max_output: what a task's output may hold (default 16 MiB; the rest is dropped
            with a ``[... N bytes dropped]`` line): characters of its ``print`` output
            to the engine's log, bytes of a jar's stdout and stderr each.
        worker_log: a rotated file for the worker's log and its tasks' ``print``
            output (``rtbatch engine --log-file``: ``NAME-worker.log`` beside the
            engine's); None: the engine's stderr.
        jvm_host_options: JVM options of the worker's warm JVM host (e.g. ``["-Xmx512m"]``);
            engine configuration, never from a message.
        transport_options: passed to ``open_transport`` when ``transport`` is a URL, by
            the engine and by its direct workers (e.g. ``curve_server_key`` and
            ``curve_secret_key`` for a CURVE broker; file paths, never key material).
    """

    def __init__(
        self,
        transport: Transport | str,
        queue: str,
        tasks_dir: str | os.PathLike[str],
        *,
        work_dir: str | os.PathLike[str] | None = None,
        prefetch: int = 2,
        engine_id: str | None = None,
        default_timeout: float | None = None,
        lock_duration: float = DEFAULT_LOCK_DURATION,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        result_ttl: float | None = DEFAULT_RESULT_TTL,
        grace: float = 10.0,
        on_ready: Callable[[Engine], None] | None = None,
        control_queue: str = CONTROL_QUEUE,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        direct: bool | None = None,
        jvm_options: JvmOptionPolicy | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        worker_log: WorkerLog | None = None,
        pass_env: Sequence[str] = (),
        jvm_host_options: Sequence[str] = (),
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        if max_output < 1:
            raise ValueError("max_output must be at least 1")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        url = transport if isinstance(transport, str) else None
        try:
            jvm_host_options = check_host_options(jvm_host_options)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        self._url = url
        self._direct: DirectWorker | None = None
        self.tasks_dir = os.path.realpath(tasks_dir)
        self.work_dir = os.path.realpath(work_dir or os.getcwd())
        for name, path in (("tasks", self.tasks_dir), ("work", self.work_dir)):
            if not os.path.isdir(path):
                raise EngineError(f"{name} directory {path} does not exist")
        self._owns_transport = isinstance(transport, str)
        self._transport_options = {  # JSON for the direct worker's command line
            key: os.fspath(value) if isinstance(value, os.PathLike) else value
            for key, value in (transport_options or {}).items()
        }
        self.transport: Transport = (
            open_transport(transport, **self._transport_options)
            if isinstance(transport, str)
            else transport
        )
        by_token = self.transport.capabilities.settles_by_token
        if direct is None:
            direct = url is not None and by_token
        elif direct and (url is None or not by_token):
            if self._owns_transport:
                self.transport.close()
            raise EngineError(
                "direct mode needs a transport URL whose backend settles leases by token (zmq://)"
            )
        self.direct = direct
        self.queue = queue
        self.prefetch = prefetch
        self.engine_id = engine_id or default_engine_id()
        self.default_timeout = default_timeout
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.grace = grace
        self.on_ready = on_ready
        #: set once the engine is connected and its worker is warm
        self.ready = threading.Event()
        self.error: BaseException | None = None

        self._outbox = Outbox(self.transport, self.engine_id, self.max_delivery_count, result_ttl)
        self._watch = ServiceWatch(
            self.transport.capabilities.gone_after, self._service_gone, f"engine {self.engine_id}"
        )
        self._renew_check_at = float("inf")

        self._incoming: deque[Delivery] = deque()
        self._held = 0  # deliveries received and not finished yet (the prefetch credit)
        self._unsettled = 0  # finished deliveries whose result/settlement is under way
        self._settle_backlog = max(4 * prefetch, 64)
        self._settle_queue: SimpleQueue[list[Any] | None] = SimpleQueue()
        self._settler: threading.Thread | None = None
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.pass_env = check_pass_env(pass_env)
        #: the JVM options a message's ``jvm_args`` may hold (widened only here)
        self.jvm_options = jvm_options or JvmOptionPolicy()
        self._worker_settings = WorkerSettings(
            self.tasks_dir, self.work_dir, self.engine_id, max_output, worker_log,
            self.pass_env, jvm_host_options, self.jvm_options,
        )  # fmt: skip
        self._pipeline = WorkerPipeline(
            self._worker_settings, self._outbox, default_timeout, self._wake_r, retry_backoff,
            retry_backoff_max,
        )  # fmt: skip
        self.control_queue = control_queue
        self._control: threading.Thread | None = None
        self._cancels = CancelRequests()
        self._cancelled = self._cancels.keys  # (session, task) -> arrival; the hot-path lookup
        self._admission = Admission(
            self._outbox, self.tasks_dir, self.max_delivery_count, self._cancelled,
            self.jvm_options,
        )  # fmt: skip
        self._stop_requested = False
        self._force = False
        self._thread: threading.Thread | None = None
        self._receiver: threading.Thread | None = None
        self._receiving = threading.Event()
        self._next_report = 0.0  # monotonic time of the next report (``_report``)

    def __repr__(self) -> str:
        return f"Engine({self.engine_id!r}, queue={self.queue!r})"

    @property
    def worker_pid(self) -> int | None:
        """PID of the current worker process (None while none runs)."""
        worker = self._direct.worker if self._direct is not None else self._pipeline.worker
        return None if worker is None else worker.pid

    @property
    def tasks_done(self) -> int:
        """Tasks the worker has answered so far."""
        if self._direct is not None:
            return self._direct.finished
        return self._pipeline.finished

    # -- public control --------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Engine:
        """Run the engine in a daemon thread; with ``wait``, return once it is ready."""
        self._thread = threading.Thread(target=self._run_thread, name=repr(self), daemon=True)
        self._thread.start()
        if wait:
            deadline = time.monotonic() + timeout
            while not self.ready.wait(0.05):
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise EngineError(f"{self!r} did not become ready: {self.error!r}")
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop gracefully: no new tasks, the running one finishes (within ``grace``).

        Waits up to ``timeout`` seconds for an engine started with ``start``.
        """
        self._request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run(self) -> None:
        """Serve tasks until ``stop`` (or SIGTERM/SIGINT when run in the main thread).

        Raises:
            ServiceGoneError: the transport's service stopped answering for good (a
                ZeroMQ broker that died); the engine stopped at once.
        """
        restore = self._install_signal_handlers()
        try:
            self.transport.declare_queue(
                self.queue,
                lock_duration=self.lock_duration,
                max_delivery_count=self.max_delivery_count,
            )
            self.transport.declare_queue(self.control_queue, grouped=True)
            if self.direct:
                self._run_direct()
            else:
                self._run_relay()
        finally:
            self._shutdown()
            restore()
        if self._watch.gone is not None:
            raise self._watch.gone

    def _run_relay(self) -> None:
        """Feed the worker from a receiver thread, settle from a settler thread, until stopped."""
        self._pipeline.start_worker()
        self._settler = threading.Thread(
            target=self._settle_loop, name=f"{self!r}-settler", daemon=True
        )
        self._settler.start()
        self._receiver = threading.Thread(
            target=self._receive_loop, name=f"{self!r}-receiver", daemon=True
        )
        self._receiving.set()
        self._receiver.start()
        self._start_control()
        self.ready.set()
        logger.info("engine %s ready on queue %r", self.engine_id, self.queue)
        if self.on_ready is not None:
            self.on_ready(self)
        while not self._stop_requested:
            self._step(time.monotonic() + _POLL)
            self._report()
        self._report(force=True)
        self._drain()

    def _run_direct(self) -> None:
        """Supervise a direct worker (see ``engine._direct``) until stopped."""
        assert self._url is not None
        options = {
            "max_delivery_count": self.max_delivery_count,
            "result_ttl": self._outbox.ttl,
            "default_timeout": self.default_timeout,
            "retry_backoff": self._pipeline.retry_backoff,
            "retry_backoff_max": self._pipeline.retry_backoff_max,
            "jvm_options": self.jvm_options.as_options(),
            "transport_options": self._transport_options,
        }
        self._direct = direct = DirectWorker(
            self._worker_settings, self._url, self.queue, self.prefetch, options, self.transport,
            self._outbox, self._wake_r, self._wake_w, self.transport.max_message_size,
            min(_POLL / 2, self.lock_duration / 6), self._cancels,
        )  # fmt: skip
        try:
            direct.start()
            self._start_control()
            self.ready.set()
            logger.info("engine %s ready on queue %r (direct worker)", self.engine_id, self.queue)
            if self.on_ready is not None:
                self.on_ready(self)
            while not self._stop_requested:
                direct.step(time.monotonic() + _POLL)
                self._report()
            self._report(force=True)
            logger.info("engine %s draining", self.engine_id)
            direct.drain(self.grace, lambda: self._force)
        finally:
            self._stop_receiver()
            direct.close()

    @property
    def current_task(self) -> str | None:
        """Id of the task running now, if any."""
        if self._direct is not None:
            return self._direct.current_task()
        inflight = self._pipeline.inflight
        return inflight[0].task.task if inflight else None

    def _report(self, *, force: bool = False, stopped: bool = False) -> None:
        """Tell the transport who this engine is and what it does (at most once a second)."""
        now = time.monotonic()
        if now < self._next_report and not force:
            return
        self._next_report = now + REPORT_INTERVAL
        try:
            task = None if stopped else self.current_task
            if stopped:
                state = "stopped"
            elif self._stop_requested:
                state = "draining"
            else:
                state = "busy" if task is not None else "idle"
            report = engine_report(self.engine_id, state, task, self.tasks_done)
            if self._direct is None:  # the outbox here sends every result: its counts too
                report["busy"] = round(self._outbox.observer.busy_ratio(time.time()), 4)
            self.transport.report_engine(report)
        except Exception:  # a report is never worth stopping the engine for
            logger.debug("engine %s: report failed", self.engine_id, exc_info=True)

    def _start_control(self) -> None:
        self._control = threading.Thread(
            target=receive_cancels,
            args=(self.transport, self.control_queue, self.engine_id, self._cancels,
                  self._receiving, self._wake),
            kwargs={"stop": self._request_stop, "watch": self._watch},
            name=f"{self!r}-control",
            daemon=True,
        )  # fmt: skip
        self._receiving.set()
        self._control.start()

    # -- threads and signals ---------------------------------------------------------------
    def _run_thread(self) -> None:
        try:
            self.run()
        except ServiceGoneError as exc:
            self.error = exc  # said in one log line already
        except BaseException as exc:
            self.error = exc
            logger.exception("engine %s failed", self.engine_id)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            if self._stop_requested:
                self._force = True
            logger.info("engine %s: %s, stopping", self.engine_id, signal.Signals(signum).name)
            self._request_stop()

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def _service_gone(self, _exc: ServiceGoneError) -> None:
        """The transport's service is gone: stop now, settling nothing (see ``_reach``)."""
        self._outbox.gone = True
        self._force = True
        self._request_stop()

    def _request_stop(self) -> None:
        self._stop_requested = True
        self._receiving.clear()
        self._wake()
        with self._cond:
            self._cond.notify_all()

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending, or closed at shutdown

    def _receive_loop(self) -> None:
        """Receive whenever there is credit, so a broker round trip overlaps running tasks."""
        backoff = Backoff()
        while self._receiving.is_set():
            with self._cond:
                # Waiting for the main thread to take what came last keeps this thread
                # from competing with it for the GIL while it starts those tasks.
                while self._receiving.is_set() and (
                    self._held >= self.prefetch or self._settle_backlog_full() or self._incoming
                ):
                    self._cond.wait(_POLL)
                if not self._receiving.is_set():
                    break
                room = self.prefetch - self._held
                self._held += room  # reserved while the receive is under way
            try:
                deliveries = self.transport.receive(self.queue, max_messages=room, timeout=_POLL)
                self._watch.answered()
                backoff.succeeded()
            except TransportClosedError:
                logger.warning("engine %s: transport closed, stopping", self.engine_id)
                deliveries = []
                self._request_stop()
            except TransportError as exc:
                deliveries = []
                if not self._watch.failed(exc):
                    logger.warning("engine %s: receive failed (%s), retrying", self.engine_id,
                                   exc)  # fmt: skip
                    time.sleep(backoff.failed())
            with self._cond:
                self._incoming.extend(deliveries)
                self._held -= room - len(deliveries)
            if deliveries:
                self._wake()

    # -- cancellation ----------------------------------------------------------------------
    def is_cancelled(self, session: str, task_id: str, session_key: str = "") -> bool:
        """True if a cancel request for this task reached the engine (and is remembered).

        ``session_key``: the one the task carries (``control.session_key`` of its session's
        secret); a request without the secret matches only tasks without one.
        """
        return (session, task_id, session_key) in self._cancelled

    # -- the main loop ---------------------------------------------------------------------
    def _step(self, until: float) -> None:
        """One turn: wait for worker output or new deliveries, then act on everything ready."""
        pipeline = self._pipeline
        deadline = pipeline.wake_at()
        if deadline is not None:
            until = min(until, deadline)
        woken = pipeline.wait(min(until - time.monotonic(), self._renew_check_at - time.time()))
        if woken:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        pipeline.collect()
        if self._cancels.arrived:
            self._cancels.arrived = False
            pipeline.cancel(self._cancelled)
        pipeline.check_head()
        pipeline.release_due()
        self._flush()
        admitted = self._admit_incoming()
        pipeline.dispatch()
        if admitted:
            with self._cond:
                self._cond.notify_all()  # the receiver waits for its last batch to be taken
        if time.time() >= self._renew_check_at:
            self._renew_due()
        self._flush()

    def _flush(self) -> None:
        """Pass finished deliveries to the settler thread and release their credit.

        When nothing else is going on (the settler idle, no task held), the main thread
        settles them itself: a lone task's result then skips a thread hand-off, and
        there is nothing for the main thread to do while the broker answers.
        """
        entries, deliveries = self._outbox.take()
        if not entries:
            return
        with self._cond:
            self._held -= deliveries
            inline = self._unsettled == 0 and not self._incoming and not len(self._pipeline)
            if not inline:
                self._unsettled += len(entries)
            self._cond.notify_all()
        if inline:
            self._settle(entries)
        else:
            self._settle_queue.put(entries)

    def _settle(self, entries: list[Any]) -> None:
        try:
            self._outbox.settle(entries)
        except Exception:
            logger.exception("engine %s: settling %d deliveries failed", self.engine_id,
                             len(entries))  # fmt: skip

    def _settle_loop(self) -> None:
        """Send results and settle deliveries off the main thread, merging waiting batches."""
        settle_loop(self._settle_queue, self._settle, self._cond, self._count_settled)

    def _count_settled(self, count: int) -> None:
        self._unsettled -= count

    def _settle_backlog_full(self) -> bool:
        return self._unsettled >= self._settle_backlog

    def _admit_incoming(self) -> bool:
        """Admit what the receiver got; True if there was anything."""
        admitted = False
        while True:
            with self._cond:
                if not self._incoming:
                    return admitted
                delivery = self._incoming.popleft()
            self._admit(delivery)
            admitted = True

    def _admit(self, delivery: Delivery) -> None:
        now = time.time()
        held = self._admission.admit(delivery, now)
        if held is None:
            return
        held.schedule_renewal(now)
        self._renew_check_at = min(self._renew_check_at, held.renew_at)
        self._pipeline.pending.append(held)

    # -- leases ----------------------------------------------------------------------------
    def _renew_due(self) -> None:
        now = time.time()
        next_check = float("inf")
        for held in self._pipeline.held():
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
    def _drain(self) -> None:
        """Graceful stop: give back what has not started, let the running task finish."""
        logger.info("engine %s draining", self.engine_id)
        pipeline = self._pipeline
        pipeline.drain()  # tasks queued in the worker are skipped, not started
        self._stop_receiver()  # before giving anything back, or we might receive it again
        self._admit_incoming()
        while pipeline.pending:
            self._outbox.abandon(pipeline.pending.popleft())
        while pipeline.delayed:
            self._outbox.abandon(pipeline.delayed.pop())
        grace_end = time.monotonic() + self.grace
        while pipeline.inflight and not self._force and time.monotonic() < grace_end:
            self._step(min(grace_end, time.monotonic() + _POLL))
        if pipeline.inflight:
            logger.warning(
                "engine %s: giving back %d task(s) still running after the grace period",
                self.engine_id,
                pipeline.abandon_all(),
            )
        self._flush()

    def _stop_receiver(self) -> None:
        self._receiving.clear()
        with self._cond:
            self._cond.notify_all()
        for thread in (self._receiver, self._control):
            if thread is not None and thread is not threading.current_thread():
                thread.join(_POLL * 4 + 1.0)
                if thread.is_alive():
                    logger.warning("engine %s: thread %s did not stop", self.engine_id,
                                   thread.name)  # fmt: skip

    def _shutdown(self) -> None:
        self._request_stop()
        self._stop_receiver()
        self._admit_incoming()  # whatever the receiver got at the last moment
        self._pipeline.drain()
        self._pipeline.stop_worker()
        self._pipeline.abandon_all()  # nothing left after a graceful stop; after an error, all
        self._flush()
        if self._settler is not None and self._settler.is_alive():
            self._settle_queue.put(None)
            self._settler.join(60.0)
        else:
            while not self._settle_queue.empty():
                self._outbox.settle(self._settle_queue.get_nowait() or [])
        self._report(force=True, stopped=True)
        wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in wake_fds:
            os.close(fd)
        if self._owns_transport:
            self.transport.close()
        logger.info("engine %s stopped after %d task(s)", self.engine_id, self.tasks_done)
