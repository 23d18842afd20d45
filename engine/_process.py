"""The engine's handle on its task worker process: start, feed, watch and kill it.

The engine starts one worker (``python -m realtime_batch.engine.worker``, whose code
is in ``worker``) and reuses it for every task; a new one is started only after a
crash or a kill (timeout, cancellation). What travels on the pipes is in ``_pipe``.
The worker runs in its own session (so the engine can kill it together with any
JVM it started), dies with its parent (``_children``), and gets only the
allowlisted environment (``credentials.task_environment``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import attrs
import orjson

from ._children import end_child
from ._output import DEFAULT_MAX_OUTPUT, WorkerLog
from ._pipe import CRASH_TAIL, DRAIN, cancel_seq_lines, decode_answer
from ._supervise import describe_exit
from .credentials import task_environment
from .errors import WorkerStartError
from .tasks import JvmOptionPolicy

__all__ = ["WorkerProcess", "WorkerSettings", "start_worker"]

logger = logging.getLogger(__name__)


def _as_tuple(values: Sequence[str]) -> tuple[str, ...]:
    # a plain function: attrs inspects a builtin converter's signature, ~5 ms per start
    return tuple(values)


@attrs.frozen
class WorkerSettings:
    """What every worker process of one engine is started with (both modes).

    Attributes:
        tasks_dir: directory holding the task modules and jars.
        work_dir: the worker's current directory.
        engine_id: passed to task code as ``engine.engine_id``.
        max_output: characters of print output per task, bytes of a jar's stdout/stderr.
        log: the worker's rotated log file (None: the engine's stderr).
        pass_env: environment variables the worker gets besides the allowlist.
        jvm_host_options: options of the worker's warm JVM host (``jvm_host``).
        jvm_options: the engine's policy for JVM options from messages, which also
            bounds the options of a command list task code passes to ``java_runner``.
    """

    tasks_dir: str
    work_dir: str
    engine_id: str
    max_output: int = DEFAULT_MAX_OUTPUT
    log: WorkerLog | None = None
    pass_env: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple)
    jvm_host_options: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple)
    jvm_options: JvmOptionPolicy | None = None


def start_worker(
    settings: WorkerSettings, *, direct: tuple[str, int, int] | None = None
) -> WorkerProcess:
    """Start a worker and wait until it is warm. Raises ``WorkerStartError``."""
    worker = WorkerProcess(settings)
    try:
        worker.start(direct=direct)
    except BaseException:
        worker.stop()
        raise
    return worker


class WorkerProcess:
    """Engine-side handle: start, feed and kill one worker process.

    Args:
        settings: what it is started with (the engine's ``WorkerSettings``).
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
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
        settings = self.settings
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
            *("--tasks-dir", settings.tasks_dir, "--work-dir", settings.work_dir),
            *("--engine-id", settings.engine_id),
            *("--max-output", str(settings.max_output)),
            *(settings.log.argv() if settings.log is not None else ()),
            *(f"--jvm-host-option={option}" for option in settings.jvm_host_options),
        ]
        if settings.jvm_options is not None:  # sizes and patterns: nothing secret
            argv.append(f"--jvm-policy={json.dumps(settings.jvm_options.as_options())}")
        if settings.pass_env:
            argv += ["--pass-env", ",".join(settings.pass_env)]
        shared_fds: tuple[int, ...] = ()
        if direct is not None:
            _options, ledger_fd, wake_fd = direct
            argv += ["--direct", "--shared-fds", f"{ledger_fd},{wake_fd}"]
            shared_fds = (ledger_fd, wake_fd)
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=child_fds + shared_fds,
                env=task_environment(pass_env=settings.pass_env),
                cwd=settings.work_dir,
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
            return decode_answer(frame)
        except ValueError as exc:
            logger.error("worker %s wrote a frame that is not an answer: %s", self.pid, exc)
            now = time.time()
            error = ("WorkerProtocolError", f"the worker's answer could not be read: {exc}", "")
            return (None, "error", None, error, now, now)

    def drain(self) -> None:
        """Tell the worker to skip every task it has not started yet."""
        self.write_control(DRAIN)

    def cancel(self, seqs: list[int]) -> None:
        """Tell the worker not to start tasks ``seqs`` (it answers them ``cancelled``)."""
        self.write_control(cancel_seq_lines(seqs))

    def write_control(self, data: bytes) -> None:
        """Write lines of the control pipe (``_pipe``) to the worker."""
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
        self._crash_text = "".join(chunks)[-CRASH_TAIL:]
        return self._crash_text

    def kill(self) -> int | None:
        """Kill the worker and everything in its session (e.g. a JVM), release the pipes;
        return its exit status."""
        code = None if self.proc is None else end_child(self.proc, group=True)
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
