"""An idle engine's receives wait long at the broker (issue 21), yet a stop ends it
promptly: its receives are woken (``Transport.wake``), not waited out.

The idle wait is raised to 300 s here, so an engine that stopped well within the
bounds below cannot have waited for its receives to time out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from engine_helpers import TASKS, read_line, stop_process

from realtime_batch.control import CONTROL_QUEUE, stop_message
from realtime_batch.engine import _supervise

LONG_WAIT = 300.0
BOUND = 60.0  # seconds: functional (a stop that waited out a receive would take 300)


def test_a_stop_message_ends_an_idle_engine(harness, monkeypatch):
    monkeypatch.setattr(_supervise, "IDLE_WAIT", LONG_WAIT)
    engine = harness.engine()
    harness.submit("noop.py")
    assert harness.result().status == "ok"
    time.sleep(1.0)  # idle: the worker's and the control thread's receives are parked
    harness.transport.send(CONTROL_QUEUE, stop_message(engine.engine_id))
    engine._thread.join(BOUND)
    assert not engine._thread.is_alive(), "the idle engine did not stop"
    assert engine.error is None


_SCRIPT = (
    "import runpy, sys\n"
    "from realtime_batch.engine import _supervise\n"
    f"_supervise.IDLE_WAIT = {LONG_WAIT}\n"
    "sys.argv[0] = 'engine'\n"
    "runpy.run_module('realtime_batch.engine', run_name='__main__')\n"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_an_idle_engine_process(zmq_broker, tmp_path, no_leaked_processes, sig):
    argv = [sys.executable, "-c", _SCRIPT, "--transport", zmq_broker.url, "--queue", "idle-q",
            "--tasks-dir", str(TASKS), "--work-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, 60)
        assert line.startswith("ENGINE READY "), f"got {line!r}"
        time.sleep(1.0)  # idle: its receives are parked
        proc.send_signal(sig)
        assert proc.wait(BOUND) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
