"""Smoke test of the ``scale`` benchmark family: tiny sizes, the records' shape only.

No speed is asserted (figures go to docs/benchmarks.md from real runs).
"""

from __future__ import annotations

import json

from benchmarks.scale import SCALE_WORKLOADS, ScaleSizes, run_scale
from benchmarks.scale_report import scale_markdown

TINY = ScaleSizes(
    engines=(2,),
    noop_n=20,
    sleep_n=8,
    sessions=(1, 2),
    session_tasks=20,
    queued=(200,),
    drain_engines=2,
    idle_engines=(4,),
    idle_window=0.3,
    idle_pool=(1,),
    idle_settle=0.2,
)


def test_every_scale_workload_gives_its_figures(no_leaked_processes, capsys):
    records = run_scale(TINY)
    printed = [json.loads(line.split(" ", 1)[1]) for line in capsys.readouterr().out.splitlines()
               if line.startswith("RECORD ")]  # fmt: skip
    assert printed == records
    assert [r["workload"] for r in records] == list(SCALE_WORKLOADS)
    assert all(r["status"] == "ok" for r in records), records
    by_workload = {r["workload"]: r["sizes"] for r in records}
    engines = by_workload["scale-engines"]["2"]
    assert sum(engines["tasks_per_engine"]) == TINY.sleep_n  # every task counted where it ran
    assert len(engines["tasks_per_engine"]) == 2
    for key in ("tasks_per_s", "efficiency", "long_efficiency", "pool_start_s",
                "start_cpu_s_per_engine"):  # fmt: skip
        assert engines[key] > 0, key
    assert engines["cpu_us_per_task"] >= 0  # CPU times tick in 10 ms: 20 tasks may show 0
    assert engines["sleep_cpu_us_per_task"] >= 0 and engines["sleep_cores_busy"] >= 0
    assert "| CPU µs per 10 ms task (whole tree) |" in scale_markdown(records, None)
    assert set(by_workload["scale-sessions"]) == {"1", "2"}
    assert by_workload["scale-queued"]["200"]["drain_per_s"] > 0
    idle = by_workload["scale-idle"]["4"]
    # idle receives wait 30 s (engine._supervise.IDLE_WAIT), each first one a random part
    # of it (as if long idle): in a 0.3 s window few or none end, so only the signs count
    assert idle["engines"] == 4 and idle["broker_cpu_pct"] >= 0 and idle["receives_per_s"] >= 0
    pool = by_workload["scale-idle-pool"]["1"]
    assert set(pool) == {"engine_cpu_pct", "worker_cpu_pct", "broker_cpu_pct", "client_cpu_pct"}
    assert all(value >= 0 for value in pool.values()), pool
    table = scale_markdown(records, None)
    for workload in SCALE_WORKLOADS:
        assert f"| {workload} |" in table


def test_a_failing_scale_workload_gives_an_error_record(monkeypatch):
    import benchmarks.scale as scale

    def boom(sizes):
        raise RuntimeError("no broker")

    monkeypatch.setitem(scale.RUNS, "scale-idle", boom)
    [record] = run_scale(TINY, ("scale-idle",))
    assert record["status"] == "error" and "no broker" in record["error"]
    assert "scale-idle**: error" in scale_markdown([record], None)
