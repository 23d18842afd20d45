"""Interrupting the benchmark harness leaves no process behind.

``python -m benchmarks`` starts a runner per system, and the runner starts the
system's processes (for raw-zmq: a broker and two workers). SIGTERM or SIGINT to the
top process, or SIGTERM to a runner, must stop every one of them within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: seconds the processes may take to go after the signal
GONE_WITHIN = 10.0
#: seconds to wait for the runner, the broker and the workers to be up
UP_WITHIN = 30.0


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _wait_for_system(top: subprocess.Popen) -> dict[int, psutil.Process]:
    """Poll ``top``'s descendants until its runner, the broker and two workers exist."""
    deadline = time.monotonic() + UP_WITHIN
    seen: dict[int, psutil.Process] = {}
    while time.monotonic() < deadline:
        assert top.poll() is None, "the benchmark ended before its processes were seen"
        try:
            found = psutil.Process(top.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for proc in found:
            if proc.pid not in seen and _cmdline(proc):
                seen[proc.pid] = proc
        lines = [_cmdline(p) for p in seen.values() if p.is_running()]
        runners = sum("benchmarks.runner raw-zmq" in line for line in lines)
        brokers = sum("benchmarks.systems.raw_zmq broker" in line for line in lines)
        workers = sum("benchmarks.systems.raw_zmq worker" in line for line in lines)
        if runners and brokers and workers >= 2:
            return seen
        time.sleep(0.05)
    raise AssertionError(
        f"runner, broker and workers not up: {[_cmdline(p) for p in seen.values()]}"
    )


def _alive(procs: dict[int, psutil.Process]) -> list[str]:
    alive = []
    for proc in procs.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {_cmdline(proc)}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(procs: dict[int, psutil.Process], within: float) -> list[str]:
    deadline = time.monotonic() + within
    while (alive := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize(
    ("target", "signum"),
    [("top", signal.SIGTERM), ("top", signal.SIGINT), ("runner", signal.SIGTERM)],
    ids=["sigterm-top", "sigint-top", "sigterm-runner"],
)
def test_interrupt_leaves_nothing_behind(tmp_path, target, signum, no_leaked_processes):
    # full mode's idle workload (3 x 5 s, next to no CPU) outlasts GONE_WITHIN, so processes
    # that outlive the signal are seen; a --quick run would end on its own before that
    argv = [sys.executable, "-m", "benchmarks", "--systems", "raw-zmq", "--workloads", "idle"]
    argv += ["--no-docs", "--no-install"]
    argv += ["--log-dir", str(tmp_path / "logs")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    top = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        seen = _wait_for_system(top)
        # into the idle workload: past the runner's first write (VERSIONS) to the top process,
        # which would fail once that is gone and so end the runner without any signal handling
        time.sleep(1.0)
        deadline = time.monotonic() + GONE_WITHIN
        if target == "top":
            top.send_signal(signum)
            output, _ = top.communicate(timeout=GONE_WITHIN)
            left = _wait_gone(seen, deadline - time.monotonic())
            assert not left, f"left behind: {left}"
            assert top.returncode == 128 + signum, output
            assert "stopped the benchmark processes" in output
        else:
            runner = next(p for p in seen.values() if "benchmarks.runner" in _cmdline(p))
            runner.send_signal(signum)
            left = _wait_gone(seen, deadline - time.monotonic())
            assert not left, f"left behind: {left}"
            # the harness goes on: the workloads the runner did not finish are errors
            output, _ = top.communicate(timeout=30)
            assert "the runner exited with 143" in output, output
            assert top.returncode == 0, output
    finally:  # whatever is left, by PID (psutil checks the PID was not reused)
        for proc in seen.values():
            try:
                proc.kill()
            except psutil.Error:
                pass
        top.kill()
        top.communicate(timeout=10)


def test_a_killed_transport_benchmark_takes_its_broker_with_it(no_leaked_processes):
    """``benchmarks.transport.start_broker``: the broker dies with the process that started it."""
    script = (
        "import sys, time; from benchmarks.transport import start_broker\n"
        "proc, url = start_broker(); print(proc.pid, flush=True); time.sleep(600)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    broker = None
    try:
        broker = psutil.Process(int(starter.stdout.readline()))
        assert broker.is_running()
        starter.kill()  # no cleanup code runs: only the parent-death signal can help
        starter.wait(10)
        broker.wait(GONE_WITHIN)  # raises psutil.TimeoutExpired if it stays
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(10)
        starter.stdout.close()
        if broker is not None and broker.is_running():  # the test failed: clean up
            broker.kill()
            broker.wait(10)
