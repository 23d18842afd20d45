"""Child processes for the benchmarks: start, wait for a readiness line, stop, measure.

Every process started here is in its own process group, dies with its parent
(``PR_SET_PDEATHSIG`` on Linux) and is stopped by PID, never by name.

:func:`interruptible` turns SIGTERM and SIGINT into :class:`Interrupted` in the main
thread, so the ``finally`` blocks that stop the children run before the process exits
(the default actions end the process at once and leave its children running).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import psutil

from benchmarks import ROOT

__all__ = [
    "Child",
    "Interrupted",
    "child_env",
    "die_with_parent",
    "free_port",
    "interruptible",
    "stop_process",
    "tree_usage",
]


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM this child when the thread that started it ends (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Interrupted(BaseException):  # like KeyboardInterrupt: "except Exception" lets it by
    """SIGTERM or SIGINT arrived (raised by :func:`interruptible`)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal (128 + the number)."""
        return 128 + self.signum


@contextlib.contextmanager
def interruptible(signums: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Raise :class:`Interrupted` in the main thread on the first of ``signums``.

    Later signals are ignored until the block ends, so the cleanup the exception runs
    (stopping children, each with a bounded grace) is not cut short. Outside the main
    thread (where handlers cannot be set) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ignore(signum: int, frame: object) -> None:  # not SIG_IGN: children would inherit it
        pass

    def interrupt(signum: int, frame: object) -> None:
        for other in signums:
            signal.signal(other, ignore)
        raise Interrupted(signum)

    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_process(popen: subprocess.Popen, grace: float = 3.0, *, group: bool = False) -> None:
    """SIGTERM ``popen`` (its process group if ``group``), SIGKILL after ``grace`` s; reap it.

    With ``group``, whatever is left in the group is SIGKILLed even when the leader
    exited in time. Idempotent.
    """

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(popen.pid, signum)
            elif popen.poll() is None:
                popen.send_signal(signum)

    if popen.poll() is None:
        send(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    if group or popen.poll() is None:
        send(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for children: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """A child process; ``wait_ready`` returns its readiness line.

    The readiness line is the first output line that starts with ``ready_prefix`` or
    contains ``ready_contains`` (stdout and stderr are read together).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready_prefix: str | None = None,
        ready_contains: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.ready_line = ""
        self._ready = threading.Event()
        self._tail: list[str] = []
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or child_env(),
            cwd=cwd,
            process_group=0,
            preexec_fn=die_with_parent,
        )
        self._prefix = ready_prefix
        self._contains = ready_contains
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._tail = [*self._tail[-40:], line]
            if not self._ready.is_set() and self._is_ready(line):
                self.ready_line = line
                self._ready.set()
        self._ready.set()

    def _is_ready(self, line: str) -> bool:
        if self._prefix is not None and line.startswith(self._prefix):
            return True
        return self._contains is not None and self._contains in line

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output_tail(self) -> str:
        return "\n".join(self._tail)

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait for the readiness line; raise ``RuntimeError`` with the output tail if none."""
        if not self._ready.wait(timeout) or not self.ready_line:
            self.stop(0.5)
            raise RuntimeError(f"{self.argv[:4]} did not start:\n{self.output_tail}")
        return self.ready_line

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds. Idempotent."""
        stop_process(self.popen, grace, group=True)
        self._reader.join(2)


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds ``proc`` used so far (0 once it is gone)."""
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def tree_usage(window: float) -> dict[str, float | int]:
    """RSS and CPU of this process's descendants and of this process over ``window`` seconds.

    Returns ``workers_rss_mb``, ``workers_cpu_pct`` (summed over the descendants, 100 =
    one core), ``processes``, ``client_rss_mb`` and ``client_cpu_pct``.
    """
    me = psutil.Process()
    children = me.children(recursive=True)
    cpu = cpu_seconds
    before = {p.pid: cpu(p) for p in children}
    client_before = cpu(me)
    start = time.perf_counter()
    time.sleep(window)
    elapsed = time.perf_counter() - start
    rss = 0
    cpu_used = 0.0
    alive = 0
    for proc in children:
        try:
            rss += proc.memory_info().rss
        except psutil.Error:
            continue
        alive += 1
        cpu_used += cpu(proc) - before.get(proc.pid, 0.0)
    return {
        "workers_rss_mb": rss / 2**20,
        "workers_cpu_pct": 100.0 * cpu_used / elapsed,
        "processes": alive,
        "client_rss_mb": me.memory_info().rss / 2**20,
        "client_cpu_pct": 100.0 * (cpu(me) - client_before) / elapsed,
    }
