"""The supervised worker process that runs task code, and the engine's handle on it.

The engine starts one worker (``python -m realtime_batch.engine.worker``) and
reuses it for every task; a new one is started only after a crash or a timeout
kill. The two talk over inherited pipes framed by ``multiprocessing.connection``
with pickled tuples, which costs a few microseconds per task:

* engine -> worker: ``(seq, kind, path, args, kwargs, deadline, task_id, attempt)``
  or ``None`` to stop;
* worker -> engine: ``("ready", pid)`` once, then ``(seq, status, value, error,
  started_at, finished_at)`` per task, in order, with status ``ok``, ``error``,
  ``expired``, ``cancelled`` or ``skipped`` (not started because the engine is draining).

A third pipe carries control bytes (``D``: drain, skip every task not started
yet; ``C<seq>;``: task ``seq`` was cancelled, answer ``cancelled`` instead of
starting it). The worker runs in its own session (so the engine can kill it together
with any JVM it started), dies with its parent (``PR_SET_PDEATHSIG``), sends its
``print`` output to stderr, and writes a Python stack dump to a fourth pipe on
fatal signals (``faulthandler``), which the engine puts in the error result.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import fcntl
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .errors import WorkerStartError
from .java import java_runner, run_jar, set_current_dirs
from .tasks import KIND_JAR, TaskContractError, TaskModuleCache, call_task

__all__ = ["TaskContext", "WorkerProcess", "WorkerStartError", "describe_exit"]

logger = logging.getLogger(__name__)

STATUS_SKIPPED = "skipped"
STATUS_CANCELLED = "cancelled"
STATUS_EXPIRED = "expired"
_DRAIN = b"D"
_CANCEL = b"C"
_CRASH_TAIL = 4000


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


class TaskContext:
    """The ``engine`` object handed to ``do_action(engine, args)``.

    Attributes:
        engine_id: id of the engine running the task.
        tasks_dir: the staged tasks directory.
        work_dir: the task's working directory (input files are staged here).
        task_id: id of the running task.
        attempt: attempt number of the running task (1 on the first run).
    """

    def __init__(self, engine_id: str, tasks_dir: str, work_dir: str) -> None:
        self.engine_id = engine_id
        self.tasks_dir = tasks_dir
        self.work_dir = work_dir
        self.task_id: str | None = None
        self.attempt = 0

    def java_runner(self, jar: str, *args: Any, jvm_args: Any = (), timeout: Any = None) -> str:
        """Run ``jar`` from the tasks directory with ``args``; return its stdout text."""
        return java_runner(
            jar,
            *args,
            jvm_args=jvm_args,
            timeout=timeout,
            tasks_dir=self.tasks_dir,
            cwd=self.work_dir,
        )

    def __repr__(self) -> str:
        return f"TaskContext(engine_id={self.engine_id!r}, task_id={self.task_id!r})"


# -- engine side ------------------------------------------------------------------------


class WorkerProcess:
    """Engine-side handle: start, feed and kill one worker process.

    Args:
        tasks_dir: directory holding the task modules and jars.
        work_dir: the worker's current directory.
        engine_id: passed to task code as ``engine.engine_id``.
    """

    def __init__(self, tasks_dir: str, work_dir: str, engine_id: str) -> None:
        self.tasks_dir = tasks_dir
        self.work_dir = work_dir
        self.engine_id = engine_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.results: Connection | None = None
        self._tasks: Connection | None = None
        self._ctrl_w: int | None = None
        self._result_poll: Any = None
        self._crash_r: int | None = None
        self._crash_text = ""

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 60.0, *, direct: tuple[str, int, int] | None = None) -> None:
        """Start the process and wait until it has imported everything and said ready.

        ``direct``: ``(options JSON, ledger fd, wake fd)`` for a direct-mode worker
        (``engine._direct``), which takes its tasks from the broker itself.
        """
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        ctrl_r, ctrl_w = os.pipe()
        crash_r, crash_w = os.pipe()
        child_fds = (task_r, result_w, ctrl_r, crash_w)
        argv = [
            sys.executable,
            "-m",
            "realtime_batch.engine.worker",
            *("--fds", ",".join(map(str, child_fds))),
            *("--tasks-dir", self.tasks_dir, "--work-dir", self.work_dir),
            *("--engine-id", self.engine_id),
        ]
        shared_fds: tuple[int, ...] = ()
        if direct is not None:
            options, ledger_fd, wake_fd = direct
            argv += ["--direct", options, "--shared-fds", f"{ledger_fd},{wake_fd}"]
            shared_fds = (ledger_fd, wake_fd)
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=child_fds + shared_fds,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            for fd in (*child_fds, task_w, result_r, ctrl_w, crash_r):
                os.close(fd)
            raise
        for fd in child_fds:
            os.close(fd)
        self._tasks = Connection(task_w, readable=False)
        self.results = Connection(result_r, writable=False)
        self._result_poll = select.poll()
        self._result_poll.register(result_r, select.POLLIN)
        self._ctrl_w = ctrl_w
        if direct is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # room for many cancel requests at once
                fcntl.fcntl(ctrl_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(crash_r, False)
        self._crash_r = crash_r
        try:
            ready = self.results.poll(timeout) and pickle.loads(self.results.recv_bytes())
        except (EOFError, OSError):
            ready = None
        if not (isinstance(ready, tuple) and ready[0] == "ready"):
            self.kill()
            raise WorkerStartError(
                f"worker process did not start ({describe_exit(self.returncode)}); "
                "see the engine's stderr"
            )
        logger.debug("worker %s ready", self.proc.pid)

    def send(self, items: list[tuple[Any, ...]] | None) -> None:
        """Queue tasks (``None``: stop); raises ``OSError`` if the worker is gone."""
        assert self._tasks is not None
        self._tasks.send_bytes(pickle.dumps(items, pickle.HIGHEST_PROTOCOL))

    def readable(self) -> bool:
        """True when a result (or the end of the pipe) can be read without blocking."""
        return self.results is not None and bool(self._result_poll.poll(0))

    def recv(self) -> tuple[Any, ...]:
        """Read one result; raises ``EOFError`` when the worker died."""
        assert self.results is not None
        return pickle.loads(self.results.recv_bytes())

    def drain(self) -> None:
        """Tell the worker to skip every task it has not started yet."""
        self._control(_DRAIN)

    def cancel(self, seqs: list[int]) -> None:
        """Tell the worker not to start tasks ``seqs`` (it answers them ``cancelled``)."""
        self._control(b"".join(b"%s%d;" % (_CANCEL, seq) for seq in seqs))

    def write_control(self, data: bytes) -> None:
        """Write raw bytes to the worker's control pipe (direct mode's line protocol)."""
        self._control(data)

    def _control(self, data: bytes) -> None:
        if self._ctrl_w is not None and data:
            with contextlib.suppress(OSError):
                os.write(self._ctrl_w, data)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def crash_report(self) -> str:
        """What ``faulthandler`` wrote on a fatal signal (the tail), or ``""``."""
        chunks = [self._crash_text]
        while self._crash_r is not None:
            try:
                data = os.read(self._crash_r, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            chunks.append(data.decode("utf-8", errors="replace"))
        self._crash_text = "".join(chunks)[-_CRASH_TAIL:]
        return self._crash_text

    def kill(self) -> int | None:
        """Kill the worker and everything in its session (e.g. a JVM); return its exit status."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        return self.reap()

    def reap(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to end and release the pipes; return its exit status."""
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        for conn in (self._tasks, self.results):
            if conn is not None:
                conn.close()
        if self._ctrl_w is not None:
            with contextlib.suppress(OSError):
                os.close(self._ctrl_w)
        self._tasks = self.results = None
        self._ctrl_w = None
        return code

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit (it finishes nothing new), kill it after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send(None)
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if self._crash_r is not None:
            with contextlib.suppress(OSError):
                os.close(self._crash_r)
            self._crash_r = None


# -- worker side ------------------------------------------------------------------------


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Control:
    """What the engine said on the control pipe: drain, and the tasks cancelled."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.draining = False
        self.cancelled: set[int] = set()
        self._partial = b""

    def poll(self) -> None:
        """Read whatever the engine wrote (one non-blocking read, as before each task)."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        if not data:
            return
        if _DRAIN in data:
            self.draining = True
            data = data.replace(_DRAIN, b"")
        if self._partial or _CANCEL in data:
            data, self._partial = self._partial + data, b""
            *complete, self._partial = data.split(b";")
            for token in complete:
                if token.startswith(_CANCEL) and token[1:].isdigit():
                    self.cancelled.add(int(token[1:]))


def _run_one(item: tuple[Any, ...], cache: Any, context: TaskContext) -> tuple[Any, ...]:
    seq, kind, path, args, kwargs, deadline, task_id, attempt = item
    started = time.time()
    if deadline is not None and started > deadline:
        return (seq, STATUS_EXPIRED, None, None, started, started)
    context.task_id, context.attempt = task_id, attempt
    try:
        if kind == KIND_JAR:
            unknown = set(kwargs) - {"jvm_args"}
            if unknown:
                raise TaskContractError(f"jar tasks accept only jvm_args=, got {sorted(unknown)}")
            value = run_jar(path, args, jvm_args=kwargs.get("jvm_args", ()), cwd=context.work_dir)
        else:
            value = call_task(cache.load(path), context, args, kwargs)
        return (seq, "ok", value, None, started, time.time())
    except BaseException as exc:  # the task's failure is its result
        return (seq, "error", None, _describe(exc), started, time.time())


def _describe(exc: BaseException) -> tuple[str, str, str]:
    """``(type name, message, traceback)``, even for exceptions whose ``__str__`` fails."""
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose str() failed>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = ""
    return type(exc).__name__, message, text


def _serve(tasks: Connection, results: Connection, ctrl_fd: int, context: TaskContext) -> None:
    cache = TaskModuleCache()
    control = _Control(ctrl_fd)
    results.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            batch = pickle.loads(tasks.recv_bytes())
        except EOFError:
            return
        if batch is None:
            return
        for item in batch:
            control.poll()
            if control.draining or item[0] in control.cancelled:
                now = time.time()
                status = STATUS_CANCELLED if item[0] in control.cancelled else STATUS_SKIPPED
                control.cancelled.discard(item[0])
                out = (item[0], status, None, None, now, now)
            else:
                out = _run_one(item, cache, context)
            try:
                payload = pickle.dumps(out, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                error = ("UnserializableResultError", f"the task's value cannot be sent: {exc}", "")
                payload = pickle.dumps((out[0], "error", None, error, out[4], out[5]))
            results.send_bytes(payload)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker process (started by ``WorkerProcess.start``)."""
    parser = argparse.ArgumentParser(prog="realtime_batch.engine.worker")
    parser.add_argument("--fds", required=True)
    parser.add_argument("--tasks-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--engine-id", required=True)
    parser.add_argument("--direct", default=None, help="direct mode: options as JSON")
    parser.add_argument("--shared-fds", default=None, help="direct mode: ledger fd, wake fd")
    opts = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when to stop
    os.dup2(2, 1)  # task print() output goes to the engine's log, not its stdout
    task_fd, result_fd, ctrl_fd, crash_fd = (int(x) for x in opts.fds.split(","))
    os.set_blocking(ctrl_fd, False)
    os.set_blocking(crash_fd, False)  # a dying worker must never block on a full pipe
    faulthandler.enable(file=crash_fd, all_threads=True)
    level = logging.getLevelName(os.environ.get("RTBATCH_LOG_LEVEL", "WARNING").upper())
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s",
    )
    tasks_dir, work_dir = os.path.realpath(opts.tasks_dir), os.path.realpath(opts.work_dir)
    sys.path.insert(0, tasks_dir)  # task modules may import their staged neighbours
    set_current_dirs(tasks_dir, work_dir)
    context = TaskContext(opts.engine_id, tasks_dir, work_dir)
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    try:
        if opts.direct is not None:
            _serve_direct(json.loads(opts.direct), opts.shared_fds, results, ctrl_fd, context)
        else:
            _serve(tasks, results, ctrl_fd, context)
    except (BrokenPipeError, EOFError):
        pass  # the engine went away


def _serve_direct(
    options: dict[str, Any], shared_fds: str, results: Connection, ctrl_fd: int,
    context: TaskContext,
) -> None:  # fmt: skip
    """Direct mode: take tasks from the broker, run them, answer them (see ``_direct``)."""
    from ..transport import open_transport
    from ._direct import DirectControl, DirectRunner, Ledger

    ledger_fd, wake_fd = (int(x) for x in shared_fds.split(","))
    os.set_blocking(wake_fd, False)
    transport = open_transport(options["url"], **options.get("transport_options", {}))
    try:
        ledger = Ledger(options["slots"], options["body_size"], fd=ledger_fd)
        control = DirectControl(ctrl_fd)
        runner = DirectRunner(transport, ledger, control, context, options, wake_fd)
        results.send_bytes(pickle.dumps(("ready", os.getpid())))
        control.wait_go(60.0)
        runner.serve(TaskModuleCache(), _run_one)
    finally:
        transport.close()


if __name__ == "__main__":
    main()
