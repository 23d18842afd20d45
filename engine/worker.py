"""The supervised worker process that runs task code, and the engine's handle on it.

The engine starts one worker (``python -m realtime_batch.engine.worker``) and
reuses it for every task; a new one is started only after a crash or a timeout
kill. The two talk over inherited pipes framed by ``multiprocessing.connection``
(pickled tuples from the engine, packed values back), which costs a few microseconds per task:

* engine -> worker: ``(seq, kind, path, args, kwargs, deadline, task_id, attempt)``
  or ``None`` to stop;
* worker -> engine: ``["ready", pid]`` once, then ``[seq, status, value, error,
  started_at, finished_at]`` per task, in order, with status ``ok``, ``error``,
  ``expired``, ``cancelled`` or ``skipped`` (not started because the engine is draining).
  These are packed by the protocol's rule for a task's value (``encode_value``,
  MessagePack; the ready frame is JSON): a value that a result cannot carry is refused
  here, in the worker, as ``UnserializableResultError``, and nothing the worker writes can run
  code or raise in the engine (a frame that is not an answer becomes a
  ``WorkerProtocolError`` result for the task it stands for).

A third pipe carries control bytes (``D``: drain, skip every task not started
yet; ``C<seq>;``: task ``seq`` was cancelled, answer ``cancelled`` instead of
starting it). The worker runs in its own session (so the engine can kill it together
with any JVM it started), dies with its parent (``PR_SET_PDEATHSIG``), sends its
``print`` output to stderr (the engine's log; at most ``max_output`` characters per
task, the rest dropped with a ``[... N bytes dropped]`` line), and writes a
Python stack dump to a fourth pipe on fatal signals (``faulthandler``), which the
engine puts in the error result.
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
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import orjson

from ..protocol import (
    ProtocolError,
    decode_value,
    encode_json,
    encode_value,
    unserializable_value,
)
from ._output import DEFAULT_MAX_OUTPUT, OutputBudget, WorkerLog, bound_print_output, release_memory
from .context import TaskContext
from .credentials import scrub_environ, task_environment
from .errors import WorkerStartError
from .java import run_jar, set_current_dirs, set_jvm_policy, set_max_output
from .jvm_host import JvmHostDiedError, configure_shared_host, run_jar_warm
from .tasks import KIND_JAR, JvmOptionPolicy, TaskModuleCache, call_task

__all__ = ["TaskContext", "WorkerProcess", "WorkerStartError", "describe_exit"]

logger = logging.getLogger(__name__)

STATUS_SKIPPED = "skipped"
STATUS_CANCELLED = "cancelled"
STATUS_EXPIRED = "expired"
_DRAIN = b"D"
_CANCEL = b"C"
_CRASH_TAIL = 4000
_STATUSES = frozenset({"ok", "error", STATUS_EXPIRED, STATUS_CANCELLED, STATUS_SKIPPED})
#: the pipe the engine reads a dead worker's last words from (set in ``main``)
_crash_fd: int | None = None


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


# -- engine side ------------------------------------------------------------------------


class WorkerProcess:
    """Engine-side handle: start, feed and kill one worker process.

    Args:
        tasks_dir: directory holding the task modules and jars.
        work_dir: the worker's current directory.
        engine_id: passed to task code as ``engine.engine_id``.
        pass_env: environment variables the worker gets besides the allowlist
            (``engine.credentials.task_environment``).
        jvm_host_options: options of the worker's warm JVM host (``jvm_host``).
        jvm_options: the engine's policy for JVM options from messages, which also
            bounds the options of a command list task code passes to ``java_runner``.
    """

    def __init__(
        self,
        tasks_dir: str,
        work_dir: str,
        engine_id: str,
        max_output: int = DEFAULT_MAX_OUTPUT,
        log: WorkerLog | None = None,
        pass_env: Sequence[str] = (),
        jvm_host_options: Sequence[str] = (),
        jvm_options: JvmOptionPolicy | None = None,
    ) -> None:
        self.tasks_dir = tasks_dir
        self.jvm_options = jvm_options
        self.work_dir = work_dir
        self.engine_id = engine_id
        self.pass_env = tuple(pass_env)
        self.max_output = max_output
        self.log = log
        self.jvm_host_options = tuple(jvm_host_options)
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
        (``engine._direct``), which takes its tasks from the broker itself. The options
        hold the transport URL, a credential: they go through the task pipe, never the
        command line, and the worker's environment is the allowlisted one.
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
            *("--max-output", str(self.max_output)),
            *(self.log.argv() if self.log is not None else ()),
            *(f"--jvm-host-option={option}" for option in self.jvm_host_options),
        ]
        if self.jvm_options is not None:  # sizes and patterns: nothing secret
            argv.append(f"--jvm-policy={json.dumps(self.jvm_options.as_options())}")
        if self.pass_env:
            argv += ["--pass-env", ",".join(self.pass_env)]
        shared_fds: tuple[int, ...] = ()
        if direct is not None:
            _options, ledger_fd, wake_fd = direct
            argv += ["--direct", "--shared-fds", f"{ledger_fd},{wake_fd}"]
            shared_fds = (ledger_fd, wake_fd)
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=child_fds + shared_fds,
                env=task_environment(pass_env=self.pass_env),
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
        if direct is not None:  # read first by the worker; far below a pipe's capacity
            self._tasks.send_bytes(direct[0].encode())
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
            ready = self.results.poll(timeout) and orjson.loads(self.results.recv_bytes())
        except (EOFError, OSError, orjson.JSONDecodeError):
            ready = None
        if not (isinstance(ready, list) and ready[:1] == ["ready"]):
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
        """Read one answer; raises ``EOFError`` when the worker died.

        A frame that is not an answer comes back as a ``WorkerProtocolError`` answer
        with seq None: the answer of the task the worker was due to answer.
        """
        assert self.results is not None
        frame = self.results.recv_bytes()
        try:
            return _decode_answer(frame)
        except ValueError as exc:
            logger.error("worker %s wrote a frame that is not an answer: %s", self.pid, exc)
            now = time.time()
            error = ("WorkerProtocolError", f"the worker's answer could not be read: {exc}", "")
            return (None, "error", None, error, now, now)

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


#: The print budget of the running task (set in ``main``).
_output: OutputBudget | None = None


def _run_one(item: tuple[Any, ...], cache: Any, context: TaskContext) -> tuple[Any, ...]:
    seq, kind, path, args, kwargs, deadline, task_id, attempt = item
    started = time.time()
    if deadline is not None and started > deadline:
        return (seq, STATUS_EXPIRED, None, None, started, started)
    context.task_id, context.attempt = task_id, attempt
    try:
        if kind == KIND_JAR:  # kwargs checked on admission (``check_jar_kwargs``)
            value = _run_jar_command(path, args, kwargs, context.work_dir)
        else:
            value = call_task(cache.load(path), context, args, kwargs)
        return (seq, "ok", value, None, started, time.time())
    except JvmHostDiedError as exc:
        _die_like_the_jvm(exc)
        raise  # not reached
    except BaseException as exc:  # the task's failure is its result
        return (seq, "error", None, _describe(exc), started, time.time())
    finally:
        if _output is not None:
            _output.end_task()
        if kind == KIND_JAR:
            release_memory.due = True


def _encode_answer(answer: tuple[Any, ...]) -> bytes:
    """An answer frame; a value the protocol cannot carry becomes the task's error."""
    try:
        return encode_value(list(answer), "value")
    except ProtocolError as exc:
        error = unserializable_value(exc)
        seq, _status, _value, _error, started, finished = answer
        return encode_value(
            [seq, "error", None, [error.type, error.message, ""], started, finished], "value"
        )


def _decode_answer(frame: bytes) -> tuple[Any, ...]:
    """The engine's reading of an answer frame; raises ``ValueError`` if it is not one."""
    try:
        answer = decode_value(frame)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    if not (isinstance(answer, list) and len(answer) == 6):
        raise ValueError(f"expected a list of 6 fields, got {type(answer).__name__}")
    seq, status, value, error, started, finished = answer
    if not (isinstance(seq, int) and status in _STATUSES):
        raise ValueError(f"bad task number {seq!r} or status {status!r}")
    if error is not None and not (
        isinstance(error, (list, tuple))
        and len(error) == 3
        and all(isinstance(e, str) for e in error)
    ):
        raise ValueError(f"bad error {error!r}")
    if not all(isinstance(t, (int, float)) for t in (started, finished)):
        raise ValueError("bad start or finish time")
    return seq, status, value, None if error is None else tuple(error), started, finished


def _run_jar_command(path: str, args: Any, kwargs: dict[str, Any], work_dir: str) -> str:
    """A jar submitted as the command: in the warm JVM host unless ``cold=True``.

    ``kwargs`` were checked on admission (``tasks.check_jar_kwargs``).
    """
    jvm_args = kwargs.get("jvm_args", ())
    if kwargs.get("cold", False):
        return run_jar(path, args, jvm_args=jvm_args, cwd=work_dir)
    isolate = kwargs.get("isolate", False)
    return run_jar_warm(path, args, jvm_args=jvm_args, cwd=work_dir, isolate=isolate)


def _die_like_the_jvm(exc: JvmHostDiedError) -> None:
    """End this worker with the status of its JVM host, which died during the task.

    The engine then handles it as a worker crash (retried while the task allows,
    else ``WorkerCrashedError`` naming that status), with ``exc``'s text as the crash report.
    """
    if _crash_fd is not None:
        with contextlib.suppress(OSError):
            os.write(_crash_fd, "".join(traceback.format_exception(exc)).encode()[-_CRASH_TAIL:])
    faulthandler.disable()  # the Python stack of this exit says nothing
    code = exc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            time.sleep(5)  # a signal that does not kill (SIGCHLD...) falls through
    os._exit(code if code is not None and 0 < code < 256 else 1)


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
    results.send_bytes(encode_json(["ready", os.getpid()], "ready"))
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
            results.send_bytes(_encode_answer(out))
            del out
            release_memory()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker process (started by ``WorkerProcess.start``)."""
    parser = argparse.ArgumentParser(prog="realtime_batch.engine.worker")
    parser.add_argument("--fds", required=True)
    parser.add_argument("--tasks-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--engine-id", required=True)
    parser.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT)
    WorkerLog.add_arguments(parser)
    parser.add_argument(
        "--direct", action="store_true", help="direct mode (options come on the task pipe)"
    )
    parser.add_argument("--shared-fds", default=None, help="direct mode: ledger fd, wake fd")
    parser.add_argument("--pass-env", default="", help="variables kept besides the allowlist")
    parser.add_argument("--jvm-host-option", action="append", default=[])
    parser.add_argument("--jvm-policy", default=None, help="JvmOptionPolicy options (JSON)")
    opts = parser.parse_args(argv)
    scrub_environ([name for name in opts.pass_env.split(",") if name])
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when to stop
    os.dup2(2, 1)  # task print() output goes to the engine's log, not its stdout
    task_fd, result_fd, ctrl_fd, crash_fd = (int(x) for x in opts.fds.split(","))
    os.set_blocking(ctrl_fd, False)
    os.set_blocking(crash_fd, False)  # a dying worker must never block on a full pipe
    faulthandler.enable(file=crash_fd, all_threads=True)
    global _crash_fd
    _crash_fd = crash_fd
    level = logging.getLevelName(os.environ.get("RTBATCH_LOG_LEVEL", "WARNING").upper())
    log = WorkerLog.from_arguments(opts)
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s",
        handlers=None if log is None else [log.handler()],
    )
    set_max_output(opts.max_output)
    if opts.jvm_policy is not None:
        set_jvm_policy(JvmOptionPolicy(**json.loads(opts.jvm_policy)))
    global _output  # after basicConfig: the worker's own log is not counted
    _output = bound_print_output(opts.max_output, logging.getLogger().handlers[0])
    tasks_dir, work_dir = os.path.realpath(opts.tasks_dir), os.path.realpath(opts.work_dir)
    sys.path.insert(0, tasks_dir)  # task modules may import their staged neighbours
    set_current_dirs(tasks_dir, work_dir)
    configure_shared_host(
        opts.jvm_host_option, output_limit=opts.max_output
    )  # the host itself starts at the first jar
    context = TaskContext(opts.engine_id, tasks_dir, work_dir)
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    try:
        if opts.direct:
            options = json.loads(tasks.recv_bytes())
            _serve_direct(options, opts.shared_fds, results, ctrl_fd, context)
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
    transport = open_transport(options.pop("url"), **options.get("transport_options", {}))
    try:
        ledger = Ledger(options["slots"], options["body_size"], fd=ledger_fd)
        control = DirectControl(ctrl_fd)
        runner = DirectRunner(transport, ledger, control, context, options, wake_fd)
        results.send_bytes(encode_json(["ready", os.getpid()], "ready"))
        control.wait_go(60.0)
        runner.serve(TaskModuleCache(), _run_one, release_memory)
    finally:
        transport.close()


if __name__ == "__main__":
    main()
