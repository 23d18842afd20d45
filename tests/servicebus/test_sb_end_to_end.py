"""End to end over the stand-in: Session + LocalPool with real engine processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import realtime_batch as rb

TASKS = Path(__file__).resolve().parent.parent / "emulator" / "tasks"

pytestmark = [pytest.mark.azure, pytest.mark.usefixtures("no_leaked_processes")]


@pytest.fixture(scope="module")
def sb_pool(standin):
    queue = f"tasks-{uuid.uuid4().hex[:8]}"
    task_files = [TASKS / "echo.py", TASKS / "boom.py"]
    with rb.LocalPool(
        engines=2, transport=standin.connection_string, task_files=task_files, queue=queue
    ) as pool:
        yield pool


def test_tasks_run_on_engine_processes_and_results_come_back(sb_pool):
    with rb.Session(sb_pool, task_queue=sb_pool.queue) as s:
        futures = s.map("echo.py", range(60))
        values = [f.result(timeout=90)["args"][0] for f in futures]
        failing = s.submit("boom.py", "kaput")
        with pytest.raises(rb.TaskError) as info:
            failing.result(timeout=60)
    assert values == list(range(60))
    assert info.value.remote_type == "ValueError"
    assert len(sb_pool.engine_pids()) == 2


def test_two_sessions_get_only_their_own_results(sb_pool):
    with (
        rb.Session(sb_pool, task_queue=sb_pool.queue, name="one") as one,
        rb.Session(sb_pool, task_queue=sb_pool.queue, name="two") as two,
    ):
        a = one.map("echo.py", range(20))
        b = two.map("echo.py", range(100, 120))
        assert [f.result(timeout=90)["args"][0] for f in a] == list(range(20))
        assert [f.result(timeout=90)["args"][0] for f in b] == list(range(100, 120))
        assert one.duplicates_dropped == 0 and two.duplicates_dropped == 0
