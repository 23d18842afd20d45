"""(a) Engines SIGKILLed at random while tasks run: every result reaches the client once.

Engines die holding leased tasks (some already run, their result sent but the
delivery not completed); the broker notices the silent client and gives the
leases back, ``LocalPool`` restarts the engine, another engine runs the task
again. The session drops the second result, so the user sees each task once.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid

import pytest
from faultkit import TASK_FILES, check_each_task_once, run_under_fire

import realtime_batch as rb

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("no_leaked_processes"),
]

#: (tasks, engines, seconds between kills, lock duration, seconds per task) per backend.
#: The Service Bus stand-in is a single-threaded Python AMQP server: a smaller run keeps
#: the suite within its time budget. Without heartbeats, a dead engine's tasks wait for
#: their lock to expire.
SIZES = {"zmq": (2000, 3, 0.5, 10.0, 0.02), "servicebus": (200, 2, 1.0, 3.0, 0.05)}


class EngineKiller(threading.Thread):
    """SIGKILLs a random engine of ``pool`` every ~``interval`` seconds until stopped.

    Only engines ready for at least ``min_age`` seconds are shot: an engine still
    starting holds no task, and killing it would test nothing but slow the run (on a
    loaded machine, where an engine takes seconds to start, shooting engines still
    starting stalled the pool: it killed them faster than they came up).
    """

    def __init__(
        self, pool: rb.LocalPool, interval: float, seed: int, min_age: float = 1.0
    ) -> None:
        super().__init__(name="engine-killer", daemon=True)
        self.pool = pool
        self.interval = interval
        self.min_age = min_age
        self.random = random.Random(seed)
        self.killed: list[int] = []  # a killed pid stays listed until the pool reaps it
        self.halt = threading.Event()
        self._first_seen: dict[int, float] = {}

    def run(self) -> None:
        while not self.halt.wait(self.random.uniform(0.5, 1.5) * self.interval):
            now = time.monotonic()
            pids = self.pool.engine_pids(ready=True)
            for pid in pids:
                self._first_seen.setdefault(pid, now)
            pids = [
                p
                for p in pids
                if now - self._first_seen[p] >= self.min_age and p not in self.killed
            ]
            if not pids:
                continue
            pid = self.random.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # gone and reaped in the meantime
            self.killed.append(pid)


def test_results_arrive_exactly_once_while_engines_are_killed(backend, tmp_path, fault_report):
    tasks, engines, interval, lock_duration, seconds = SIZES[backend.name]
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    queue = f"tasks-{uuid.uuid4().hex[:8]}"
    seed = int(os.environ.get("RTBATCH_FAULT_SEED", "0")) or random.randrange(1, 2**31)
    started = time.monotonic()
    with rb.LocalPool(
        engines=engines,
        transport=backend.url,
        task_files=TASK_FILES,
        queue=queue,
        lock_duration=lock_duration,
        max_delivery_count=100,
        restart_dead=True,
    ) as pool:
        killer = EngineKiller(pool, interval, seed)
        values, results, duplicates = run_under_fire(pool, queue, killer, tasks, seconds, runs_dir)
        restarts = pool.restarts
    elapsed = time.monotonic() - started

    counts = check_each_task_once(values, results, tasks, runs_dir, f"seed {seed}")
    fault_report.record(
        f"a_engine_kills_{backend.name}",
        backend=backend.name,
        tasks=tasks,
        engines=engines,
        engines_killed=len(killer.killed),
        engine_restarts=restarts,
        duplicates_dropped_by_session=duplicates,
        seconds=round(elapsed, 1),
        **counts,
        seed=seed,
    )
