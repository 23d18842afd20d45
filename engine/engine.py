"""The engine: pull tasks from a queue, run them in a warm worker process, reply, complete.

One thread (the caller of ``run``) supervises the worker through a *feeder*, chosen
from the transport's capabilities: ``_direct.DirectWorker`` when another connection
may settle the worker's leases (``settles_by_token``: the worker takes tasks from the
broker itself), else ``_relay.RelayFeeder`` (the engine receives each task and pipes
it to the worker). Both apply the rules of ``_supervise``. Per delivery: decode the
task, check its attempt count, deadline and command (``_admit``), run it, send the
result to ``task.reply_to`` *then* complete the delivery (at-least-once; clients drop
duplicate results by task id). Leases of held deliveries are renewed at a third of
the lock duration. A control thread receives cancel and stop requests.

What happens on each failure (the task raises, times out, its worker dies, a
delivery comes too often, a body is malformed) is the table of
docs/reliability.md, written once in ``_supervise``; cancellation and notices are
in docs/engine.md.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..control import CONTROL_QUEUE
from ..transport import Transport, open_transport
from ..transport.base import DEFAULT_LOCK_DURATION, DEFAULT_MAX_DELIVERY_COUNT
from ._admit import Admission
from ._cancels import CancelRequests, receive_cancels
from ._direct import DirectWorker
from ._observe import REPORT_INTERVAL, TaskObserver, engine_report
from ._outbox import Outbox
from ._output import DEFAULT_MAX_OUTPUT, WorkerLog
from ._process import WorkerSettings
from ._reach import ServiceGoneError, ServiceWatch
from ._supervise import (
    DEFAULT_GRACE,
    DEFAULT_PREFETCH,
    DEFAULT_RESULT_TTL,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    idle_wait,
)
from .credentials import check_pass_env
from .errors import EngineError
from .tasks import JvmOptionPolicy, check_host_options

if TYPE_CHECKING:
    from ._relay import RelayFeeder

__all__ = ["DEFAULT_RESULT_TTL", "Engine", "EngineError", "ServiceGoneError", "default_engine_id"]

logger = logging.getLogger(__name__)

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
        prefetch: deliveries held at once (one running, the rest queued and leased);
            ``DEFAULT_PREFETCH`` (2) says why its default is what it is.
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
        prefetch: int = DEFAULT_PREFETCH,
        engine_id: str | None = None,
        default_timeout: float | None = None,
        lock_duration: float = DEFAULT_LOCK_DURATION,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        result_ttl: float | None = DEFAULT_RESULT_TTL,
        grace: float = DEFAULT_GRACE,
        on_ready: Callable[[Engine], None] | None = None,
        control_queue: str = CONTROL_QUEUE,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
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
        # The worker takes tasks from the broker itself when it can open its own
        # connection (a URL) and that connection may settle the leases (zmq://).
        self.direct = url is not None and self.transport.capabilities.settles_by_token
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

        # In direct mode the worker times the tasks; the results sent here are only those
        # of tasks whose worker was lost (a crash, a timeout).
        observer = TaskObserver(self.transport, self.engine_id, times_tasks=not self.direct)
        self._outbox = Outbox(
            self.transport, self.engine_id, self.max_delivery_count, result_ttl, observer
        )
        self._watch = ServiceWatch(
            self.transport.capabilities.gone_after, self._service_gone, f"engine {self.engine_id}"
        )
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
        self.retry_backoff, self.retry_backoff_max = retry_backoff, retry_backoff_max
        self.control_queue = control_queue
        self._control: threading.Thread | None = None
        self._cancels = CancelRequests()
        self._stop_requested = False
        self._force = False
        self._thread: threading.Thread | None = None
        self._receiving = threading.Event()  # cleared to stop the receiving threads
        self._feeder: DirectWorker | RelayFeeder | None = None
        self._next_report = 0.0  # monotonic time of the next report (``_report``)

    def __repr__(self) -> str:
        return f"Engine({self.engine_id!r}, queue={self.queue!r})"

    @property
    def worker_pid(self) -> int | None:
        """PID of the current worker process (None while none runs)."""
        worker = None if self._feeder is None else self._feeder.worker
        return None if worker is None else worker.pid

    @property
    def tasks_done(self) -> int:
        """Tasks the worker has answered so far."""
        return 0 if self._feeder is None else self._feeder.finished

    @property
    def worker_restarts(self) -> int:
        """Task workers started after the first: one per crash, timeout or cancel of a
        running task (a crash loop shows here even when retries succeed)."""
        return 0 if self._feeder is None else self._feeder.restarts

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
            self._feeder = self._direct_worker() if self.direct else self._relay_feeder()
            self._serve(self._feeder)
        finally:
            self._shutdown()
            restore()
        if self._watch.gone is not None:
            raise self._watch.gone

    def _relay_feeder(self) -> RelayFeeder:
        from ._pipeline import WorkerPipeline  # relay mode only: not imported on zmq://
        from ._relay import RelayFeeder

        admission = Admission(
            self._outbox, self.tasks_dir, self.max_delivery_count, self._cancels.keys,
            self.jvm_options,
        )  # fmt: skip
        pipeline = WorkerPipeline(
            self._worker_settings, self._outbox, self.default_timeout, self._wake_r,
            self.retry_backoff, self.retry_backoff_max,
        )  # fmt: skip
        return RelayFeeder(
            f"engine {self.engine_id}", self.transport, self.queue, self.prefetch, self._outbox,
            admission, pipeline, self._cancels, self._watch, self._receiving, self._wake_r,
            self._wake, self._request_stop,
        )  # fmt: skip

    def _direct_worker(self) -> DirectWorker:
        assert self._url is not None
        options = {
            "max_delivery_count": self.max_delivery_count,
            "result_ttl": self._outbox.ttl,
            "default_timeout": self.default_timeout,
            "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
            "jvm_options": self.jvm_options.as_options(),
            "transport_options": self._transport_options,
            "idle_wait": idle_wait(self.transport),  # the worker's connection is alike
        }
        return DirectWorker(
            self._worker_settings, self._url, self.queue, self.prefetch, options, self.transport,
            self._outbox, self._wake_r, self._wake_w, self.transport.max_message_size,
            min(_POLL / 2, self.lock_duration / 6), self._cancels,
        )  # fmt: skip

    def _serve(self, feeder: DirectWorker | RelayFeeder) -> None:
        """Start the worker and the control thread, then supervise until stopped."""
        self._receiving.set()
        feeder.start()
        self._start_control()
        self.ready.set()
        how = " (direct worker)" if self.direct else ""
        logger.info("engine %s ready on queue %r%s", self.engine_id, self.queue, how)
        if self.on_ready is not None:
            self.on_ready(self)
        while not self._stop_requested:
            feeder.step(time.monotonic() + _POLL)
            self._report()
        self._report(force=True)
        logger.info("engine %s draining", self.engine_id)
        feeder.drain(self.grace, lambda: self._force)

    def observers(self) -> list[TaskObserver]:
        """What counts this engine's results: its outbox's observer and, in direct mode,
        a copy of its task worker's figures (kept in their ledger across workers)."""
        observers = [self._outbox.observer]
        kept = None if self._feeder is None else self._feeder.worker_figures()
        return observers if kept is None else [*observers, kept]

    @property
    def current_task(self) -> str | None:
        """Id of the task running now, if any."""
        return None if self._feeder is None else self._feeder.current_task()

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
            # Counts and the busy ratio are passed on by the observer of the outbox that
            # sends the results (here, or in the direct worker) as results go out: an
            # idle engine's report stays the same, and so costs no heartbeat.
            self.transport.report_engine(
                engine_report(self.engine_id, state, task, self.tasks_done, self.worker_restarts)
            )
            self._outbox.observer.report_pending(time.time())  # relay mode: results here
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
        if self._feeder is not None:
            self._feeder.wake_receiver()

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending, or closed at shutdown

    # -- cancellation ----------------------------------------------------------------------
    def is_cancelled(self, session: str, task_id: str, session_key: str = "") -> bool:
        """True if a cancel request for this task reached the engine (and is remembered).

        ``session_key``: the one the task carries (``control.session_key`` of its session's
        secret); a request without the secret matches only tasks without one.
        """
        return (session, task_id, session_key) in self._cancels.keys

    # -- stopping --------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self._request_stop()
        control = self._control
        if control is not None and control.is_alive():
            self.transport.wake()  # its receive may wait long (not in a signal handler)
            control.join(_POLL * 4 + 1.0)
            if control.is_alive():
                logger.warning("engine %s: thread %s did not stop", self.engine_id, control.name)
        if self._feeder is not None:
            self._feeder.close()
        self._report(force=True, stopped=True)
        wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in wake_fds:
            os.close(fd)
        if self._owns_transport:
            self.transport.close()
        logger.info("engine %s stopped after %d task(s)", self.engine_id, self.tasks_done)
