"""Child processes for the benchmarks: start, wait for a readiness line, stop, measure.

Every process started here is in its own process group, dies with its parent
(``PR_SET_PDEATHSIG`` on Linux) and is stopped by PID, never by name.
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
from collections.abc import Sequence

import psutil

from benchmarks import ROOT

__all__ = ["Child", "child_env", "free_port", "tree_usage"]


def _die_with_parent() -> None:  # between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


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
            preexec_fn=_die_with_parent,
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
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # anything left in its group
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._reader.join(2)


def tree_usage(window: float) -> dict[str, float | int]:
    """RSS and CPU of this process's descendants and of this process over ``window`` seconds.

    Returns ``workers_rss_mb``, ``workers_cpu_pct`` (summed over the descendants, 100 =
    one core), ``processes``, ``client_rss_mb`` and ``client_cpu_pct``.
    """
    me = psutil.Process()
    children = me.children(recursive=True)

    def cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

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
