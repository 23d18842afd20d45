"""Helpers of the fault-injection suite (imported by its test modules and conftest)."""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FAULT_TASKS", "REPORT_ENV", "TASK_FILES", "FaultReport", "wait_until"]

FAULT_TASKS = Path(__file__).resolve().parent / "tasks"
TASK_FILES = [FAULT_TASKS / "work.py", FAULT_TASKS / "poison.py"]
#: Environment variable naming the JSON file the scenarios write their figures into.
REPORT_ENV = "RTBATCH_FAULT_REPORT"


class FaultReport:
    """Figures recorded by the scenarios of one pytest run, by scenario name."""

    def __init__(self) -> None:
        self.scenarios: dict[str, dict[str, Any]] = {}

    def record(self, scenario: str, **figures: Any) -> None:
        self.scenarios.setdefault(scenario, {}).update(figures)

    def write(self, path: Path) -> None:
        """Merge into ``path`` (several pytest runs may add to one report)."""
        data: dict[str, Any] = {}
        if path.exists():
            data = json.loads(path.read_text())
        data.setdefault("scenarios", {}).update(self.scenarios)
        data["written_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        data["machine"] = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_under_fire(
    pool: Any, queue: str, killer: Any, tasks: int, seconds: float, runs_dir: Path
) -> tuple[list, list, int]:
    """Run ``tasks`` ``work.py`` tasks (ids ``t0``...) on ``pool``'s ``queue`` while
    ``killer`` (a thread with ``killed``, ``halt``) shoots.

    One session, on a results queue of its own, with enough retries that no task runs
    out of them by bad luck: every task must succeed. The second half is submitted
    after the first kill, so the scenario happens however fast the first half goes;
    the killer is stopped on the way out, even on failure. Returns the values in task
    order, the session's ``results()`` and its ``duplicates_dropped``.
    """
    import realtime_batch as rb

    with rb.Session(
        pool, task_queue=queue, results_queue=f"results-{uuid.uuid4().hex[:8]}", max_retries=50
    ) as session:

        def submit(numbers: range) -> list:
            return [
                session.submit("work.py", i, seconds, runs_dir=str(runs_dir), task_id=f"t{i}")
                for i in numbers
            ]

        killer.start()
        try:
            futures = submit(range(tasks // 2))
            assert wait_until(lambda: killer.killed, 60), "the killer never fired"
            futures += submit(range(tasks // 2, tasks))
            values = [f.result(timeout=240) for f in futures]
        finally:
            killer.halt.set()
            killer.join(10)
        return values, session.results(), session.duplicates_dropped


def check_each_task_once(
    values: list, results: list, tasks: int, runs_dir: Path, context: str = ""
) -> dict[str, int]:
    """The end state every scenario must reach, asserted: task ``t<i>`` returned ``i``,
    each task id is in ``results`` exactly once and succeeded, and each task ran at
    least once (at-least-once: a task hit by a fault may have run already).

    Returns the counts the report records for the scenario.
    """
    assert values == list(range(tasks)), context
    ids = [r.task_id for r in results]
    assert sorted(ids) == sorted(f"t{i}" for i in range(tasks)), "a result is missing or twice"
    assert all(r.ok for r in results)
    runs = len(os.listdir(runs_dir))
    assert runs >= tasks
    return {
        "task_runs": runs,
        "results_received": len(ids),
        "lost": tasks - len(set(ids)),
        "duplicates_seen_by_user": len(ids) - len(set(ids)),
        "retried_attempts": sum(r.attempt > 1 for r in results),
    }
