"""(e) A task longer than the lock duration keeps its lease by renewal and runs once.

With a 1 s lease and a 3 s task, the lease would expire twice over and another
engine would run the task again; the engine renews it (at a third of the lease)
while the task runs (and the leases of the tasks it holds waiting behind it).
Each run leaves a file behind, so runs are counted, not inferred from results.
"""

from __future__ import annotations

import os
import uuid

import pytest
from faultkit import TASK_FILES

import realtime_batch as rb

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaked_processes")]

LOCK_DURATION = 1.0
TASK_SECONDS = 3.0
SLOW_TASKS = 3


def test_slow_task_keeps_its_lease_and_runs_once(backend, tmp_path, fault_report):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    queue = f"tasks-{uuid.uuid4().hex[:8]}"
    with (
        rb.LocalPool(
            engines=2,  # the other engine takes any lease that lapses
            transport=backend.url,
            task_files=TASK_FILES,
            queue=queue,
            prefetch=2,  # a task waiting behind a running one is held leased, and renewed too
            lock_duration=LOCK_DURATION,
            max_delivery_count=10,
        ) as pool,
        rb.Session(
            pool, task_queue=queue, results_queue=f"results-{uuid.uuid4().hex[:8]}"
        ) as session,
    ):
        futures = [
            session.submit("work.py", f"slow{i}", seconds=TASK_SECONDS, runs_dir=str(runs_dir))
            for i in range(SLOW_TASKS)
        ]
        assert [f.result(timeout=90) for f in futures] == [f"slow{i}" for i in range(SLOW_TASKS)]
        results = session.results()
        duplicates = session.duplicates_dropped

    runs = sorted(name.split("-")[0] for name in os.listdir(runs_dir))
    assert runs == [f"slow{i}" for i in range(SLOW_TASKS)], f"runs: {runs}"
    assert [r.attempt for r in results] == [1] * SLOW_TASKS
    assert duplicates == 0
    fault_report.record(
        f"e_lease_renewal_{backend.name}",
        backend=backend.name,
        lock_duration_seconds=LOCK_DURATION,
        task_seconds=TASK_SECONDS,
        tasks=SLOW_TASKS,
        task_runs=len(runs),
        duplicates_dropped_by_session=duplicates,
    )
