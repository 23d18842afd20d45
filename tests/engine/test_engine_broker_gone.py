"""An engine whose ZeroMQ broker died stops by itself, promptly, saying why in one line.

Issue #19: after ``kill -TERM`` on ``rtbatch demo`` the engines kept running for a
long time, retrying receives and give-backs to a broker that was gone. The broker's
leases die with it, so there is nothing to wait for: the engine stops on its own
(exit status 1) once the broker has answered nothing for the transport's
``gone_after`` (6 s by default), idle or holding a running task, in both ways of
feeding its worker. The bound below is generous (the old code never stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from engine_helpers import TASKS, Broker, read_line, stop_process
from relay_engine_main import relay_argv

from realtime_batch.protocol import ReplyTo, TaskRecord, encode_task
from realtime_batch.transport import Message, open_transport

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaked_processes")]

#: seconds an engine may take to stop after its broker died (gone_after is 6 s)
STOP_BOUND = 15.0
GONE_LINE = "no answer from the transport"


def _start_engine(url: str, mode: str, work_dir: Path, log: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "realtime_batch.engine", "--transport", url,
           "--tasks-dir", str(TASKS), "--work-dir", str(work_dir),
           "--engine-id", f"gone-{mode}"]  # fmt: skip
    if mode == "relay":  # the same engine, its zmq:// transport not settling by token
        cmd = relay_argv(cmd)
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = read_line(proc, 60)
    if not line.startswith("ENGINE READY"):
        stop_process(proc, signal.SIGKILL)
        pytest.fail(f"engine did not start: {line!r}\n{log.read_text()}")
    return proc


def _submit_long_task(url: str, marker: Path) -> None:
    with open_transport(url) as transport:
        transport.declare_queue("results")
        task = TaskRecord(session="s1", job="j1", task=uuid.uuid4().hex, command="marker_sleep.py",
                          args=[str(marker), 300], reply_to=ReplyTo("results", "c1"))  # fmt: skip
        transport.send("tasks", Message(encode_task(task)))
    end = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert marker.exists(), "the task never started"


@pytest.mark.parametrize("state", ["idle", "holding"])
@pytest.mark.parametrize("mode", ["direct", "relay"])
def test_engine_stops_soon_after_its_broker_died(tmp_path, mode, state):
    broker = Broker()
    log = tmp_path / "engine.log"
    engine = None
    try:
        engine = _start_engine(broker.url, mode, tmp_path, log)
        if state == "holding":
            _submit_long_task(broker.url, tmp_path / "started")
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait(10)
        killed = time.monotonic()
        try:
            code = engine.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the engine still runs {STOP_BOUND} s after its broker died:\n"
                        + log.read_text()[-3000:])  # fmt: skip
        took = time.monotonic() - killed
        text = log.read_text()
        gone_lines = [line for line in text.splitlines() if GONE_LINE in line]
        assert len(gone_lines) == 1, text
        assert "stopping" in gone_lines[0], gone_lines
        assert code == 1, (code, text)
        print(f"{mode}/{state}: stopped {took:.1f} s after the broker died")
    finally:
        if engine is not None:
            stop_process(engine, signal.SIGKILL)
        broker.stop()
