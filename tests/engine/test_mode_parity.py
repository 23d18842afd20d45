"""The failure rules of docs/reliability.md hold alike in relay and direct mode.

Each scenario runs in both modes (the ``harness`` fixture). They cover the edges where
the two feeders kept their own copy of a rule and the copies had drifted apart: what
a graceful stop does with the tasks an engine holds, and a timeout retry at the
queue's delivery limit.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from engine_helpers import TASKS, Harness

# Sleeps, then kills its worker: a crash that comes while the engine is stopping.
CRASH_LATER = """
import os
import time
from pathlib import Path


def run(marker, seconds, code=3):
    Path(marker).touch()
    time.sleep(seconds)
    os._exit(code)
"""


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    (folder / "crash_later.py").write_text(CRASH_LATER.lstrip())
    return folder


def wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_tasks_held_by_a_stopping_engine_are_not_charged_an_attempt(harness: Harness):
    """A graceful stop gives back the tasks it holds and has not started: they never
    ran, so another engine runs them as attempt 1. Relay mode gave them back counted,
    so a task without retries came back as ``EngineLostError`` and never ran."""
    harness.transport.declare_queue(harness.queue)
    running = harness.submit("marker_sleep.py", "started", 1.0, max_retries=0)
    waiting = [harness.submit("marker_sleep.py", f"w{i}", 0, max_retries=0) for i in range(3)]
    first = harness.engine(prefetch=4)
    wait_for(harness.work_dir / "started")
    first.stop(timeout=30)
    assert harness.result().task == running
    assert not any((harness.work_dir / f"w{i}").exists() for i in range(3))
    harness.engine()
    results = harness.results(3)
    for task in waiting:
        assert results[task].status == "ok" and results[task].attempt == 1, results[task]
