"""A worker killed while it starts (after a crash) is started again: the engine goes on."""

from __future__ import annotations

import os
import signal
import time

from realtime_batch.engine import _direct, _pipeline
from realtime_batch.engine.errors import WorkerStartError


def test_a_worker_that_dies_while_restarting_is_started_again(harness, monkeypatch):
    engine = harness.engine()
    real_start = _direct.start_worker
    calls = []

    def start_once_failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the restart after the kill below: as if killed while starting
            raise WorkerStartError("worker process did not start (signal SIGKILL)")
        return real_start(*args, **kwargs)

    monkeypatch.setattr(_direct, "start_worker", start_once_failing)
    monkeypatch.setattr(_pipeline, "start_worker", start_once_failing)
    pid = engine.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 60
    while len(calls) < 2 and time.monotonic() < end:
        time.sleep(0.02)
    harness.submit("noop.py")
    assert harness.result().status == "ok"
    assert engine.error is None and len(calls) == 2
