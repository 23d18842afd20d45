"""(b) The durable ZeroMQ broker SIGKILLed and restarted mid-run: every result arrives.

The broker journals accepted messages (``--data-dir``); after a SIGKILL it is
started again on the same port and data dir, restores the queued tasks and
results, and the session and the engines reconnect by themselves. Leases died
with the old broker, so tasks that were running are delivered again: the session
drops their second result.
"""

from __future__ import annotations

import time

import pytest
from faultkit import TASK_FILES, check_each_task_once, wait_until

import realtime_batch as rb

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("no_leaked_processes"),
]

TASKS = 600
RESTARTS = 2


def test_results_survive_a_sigkilled_durable_broker(tmp_path, fault_report):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    started = time.monotonic()
    with rb.LocalPool(
        engines=3,
        task_files=TASK_FILES,
        lock_duration=10,
        max_delivery_count=20,
        broker_args=["--data-dir", str(tmp_path / "broker-data")],
    ) as pool:
        first_pid = pool.broker_pid
        port = pool.transport_url.rsplit(":", 1)[1]
        broker_pids = [first_pid]
        with rb.Session(pool, max_retries=10) as session:
            futures = [
                session.submit("work.py", i, runs_dir=str(runs_dir), task_id=f"t{i}")
                for i in range(TASKS)
            ]
            for n in range(1, RESTARTS + 1):
                # Mid-run: some results in, tasks queued, leased and running.
                reached = wait_until(lambda n=n: session.received >= n * TASKS // 3, 120)
                assert reached, f"only {session.received} results before restart {n}"
                broker_pids.append(pool.restart_broker())
                assert pool.transport_url.endswith(":" + port)  # same port
            values = [f.result(timeout=180) for f in futures]
            results = session.results()
            duplicates = session.duplicates_dropped
    elapsed = time.monotonic() - started

    assert len(set(broker_pids)) == RESTARTS + 1  # really new broker processes
    counts = check_each_task_once(values, results, TASKS, runs_dir)
    fault_report.record(
        "b_broker_restart_zmq",
        backend="zmq (durable broker)",
        tasks=TASKS,
        engines=3,
        broker_restarts=RESTARTS,
        duplicates_dropped_by_session=duplicates,
        seconds=round(elapsed, 1),
        **counts,
    )
