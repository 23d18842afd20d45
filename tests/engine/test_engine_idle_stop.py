"""An idle engine's receives wait long at the broker (issue 21), yet a stop ends it
promptly: its receives are woken (``Transport.wake``), not waited out.

The idle wait is raised to 300 s here, so an engine that stopped well within the
bounds below cannot have waited for its receives to time out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq
from engine_helpers import TASKS, Harness, read_line, stop_process

from realtime_batch.control import CONTROL_QUEUE, stop_message
from realtime_batch.engine import _supervise
from realtime_batch.transport.zeromq.broker import DEFAULT_LEASED_WAIT, Broker

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


def test_an_idle_engine_parks_its_receives_for_the_whole_idle_wait(tmp_path):
    """Direct mode on a broker in this process: once its task is done the worker's
    task receive and the engine's control receive wait ``IDLE_WAIT`` at the broker,
    not cut short (the engine holds no lease: ``Broker.leased_wait``)."""
    broker = Broker("tcp://127.0.0.1:0", context=zmq.Context())
    serving = threading.Thread(target=broker.run, daemon=True)
    serving.start()
    try:
        harness = Harness(TASKS, tmp_path / "wd", "zmq://" + broker.endpoint[len("tcp://") :])
        (tmp_path / "wd").mkdir()
        try:
            harness.engine()
            harness.submit("noop.py")
            assert harness.result().status == "ok"
            end = time.monotonic() + BOUND
            while True:
                left: dict[str, float] = {}
                for deadline, _seq, waiter in list(broker._parking._deadlines):
                    if not waiter.done:
                        left[waiter.queue] = min(left.get(waiter.queue, deadline), deadline)
                if harness.queue in left and CONTROL_QUEUE in left:
                    break
                assert time.monotonic() < end, f"not both parked: {left}"
                time.sleep(0.1)
            now = time.time()
            assert _supervise.IDLE_WAIT > 3 * DEFAULT_LEASED_WAIT
            for queue in (harness.queue, CONTROL_QUEUE):  # far more than a cut wait's 5 s
                assert left[queue] - now > _supervise.IDLE_WAIT / 2, (queue, left[queue] - now)
        finally:
            harness.close()
    finally:
        broker.stop()
        serving.join(10)
        broker.close()
