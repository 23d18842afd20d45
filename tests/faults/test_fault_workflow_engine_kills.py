"""(g) A workflow while engines are SIGKILLed: fan-out, a second stage, then a reduce.

A workflow's tasks are tasks like any other once sent (#20): an engine that dies holding
one gives it back through the broker, the pool restarts the engine, the task runs again
and the session keeps the first result. The reduce is sent only when every input is done,
with their values, so its answer is exact only if no input was lost or counted twice.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from faultkit import FAULT_TASKS, TASK_FILES
from test_fault_engine_kills import EngineKiller

import realtime_batch as rb

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("no_leaked_processes"),
]

FAN_OUT = 300


def test_a_workflow_completes_exactly_while_engines_are_killed(tmp_path, fault_report):
    seed = int(os.environ.get("RTBATCH_FAULT_SEED", "0")) or random.randrange(1, 2**31)
    started = time.monotonic()
    with rb.LocalPool(
        engines=3,
        transport="zmq://127.0.0.1:0",
        task_files=[*TASK_FILES, FAULT_TASKS / "total.py"],
        lock_duration=10.0,
        max_delivery_count=100,
        restart_dead=True,
    ) as pool:
        killer = EngineKiller(pool, 0.5, seed)
        # as in the other scenarios: enough retries that no task runs out of them by bad
        # luck (a task may be on an engine at two or three kills in a row)
        with rb.Session(pool, max_retries=50) as session:
            killer.start()
            try:
                first = [session.submit("work.py", i, 0.02) for i in range(FAN_OUT)]
                second = [session.submit("work.py", f, 0.01) for f in first]  # value passed on
                reduce = session.submit("total.py", second)
                total = reduce.result(timeout=240)
            finally:
                killer.halt.set()
                killer.join(10)
            assert [f.result(timeout=1) for f in second] == list(range(FAN_OUT))
            duplicates = session.duplicates_dropped
        restarts = pool.restarts
    assert total == sum(range(FAN_OUT)), f"seed {seed}"
    assert killer.killed, f"seed {seed}: no engine was killed, nothing was tested"
    fault_report.record(
        "g_workflow_engine_kills_zmq",
        tasks=2 * FAN_OUT + 1,
        engines=3,
        engines_killed=len(killer.killed),
        engine_restarts=restarts,
        duplicates_dropped_by_session=duplicates,
        seconds=round(time.monotonic() - started, 1),
        seed=seed,
    )
