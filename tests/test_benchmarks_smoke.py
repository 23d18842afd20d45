"""Smoke test of the benchmark harness: tiny counts, systems that need no extra install.

No speed is asserted; the test checks that the harness runs end to end and that the
records have the documented shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from benchmarks import SYSTEMS, WORKLOADS
from benchmarks.cli import bench, merge_results
from benchmarks.report import add_ratios, markdown_report, ratio_lines
from benchmarks.runner import run_system
from benchmarks.workloads import Settings

TINY = Settings(
    "quick",
    reps=2,
    start_reps=1,
    roundtrip_n=5,
    throughput_n=20,
    sleep_n=4,
    payload_n={"payload-1KiB": 2, "payload-100KiB": 2, "payload-1MiB": 1, "payload-10MiB": 1},
    idle_window=0.2,
    client_memory_n=50,
    warmup=2,
)
JDK = bool(shutil.which("javac") and shutil.which("java") and shutil.which("jar"))
FIGURES = {
    "roundtrip": ("p50_us", "p99_us"),
    "java-noop": ("p50_us", "p99_us", "python_p50_us", "ratio_to_python"),
    "payload-1KiB": ("p50_us", "p99_us"),
    "payload-100KiB": ("p50_us", "p99_us"),
    "throughput": ("tasks_per_s",),
    "sleep-10ms": ("efficiency",),
    "cold-start": ("seconds",),
    "client-memory": ("rss_mb",),
    "workflow": ("seconds", "tasks_per_s"),
}


def check_shape(record: dict) -> None:
    assert record["system"] in SYSTEMS
    assert record["workload"] in WORKLOADS
    assert record["status"] in ("ok", "n/a", "skipped", "error")
    if record["status"] != "ok":
        assert record["error"]
        return
    assert record["reps"] >= 1
    for key in FIGURES.get(record["workload"], ()):
        value = record[key]
        assert isinstance(value, int | float) and value >= 0, (record["workload"], key, value)
        low, high = record["spread"][key]
        assert low <= value <= high
    json.dumps(record)  # machine-readable as is


@pytest.mark.parametrize(
    ("system", "fresh"),
    [("raw-zmq", True), ("rtbatch-memory", True), ("rtbatch-memory", False)],
    ids=["raw-zmq", "rtbatch-memory", "rtbatch-memory-in-process"],
)
def test_harness_records(system, fresh, no_leaked_processes):
    settings = dataclasses.replace(TINY, fresh_processes=fresh)
    records = run_system(system, settings, list(WORKLOADS))
    assert [r["workload"] for r in records] == [
        "idle",
        "roundtrip",
        "java-noop",
        "payload-1KiB",
        "payload-100KiB",
        "payload-1MiB",
        "payload-10MiB",
        "throughput",
        "sleep-10ms",
        "workflow",
        "cold-start",
        "client-memory",
        "scale-session-memory",
    ]
    for record in records:
        check_shape(record)
    by_workload = {r["workload"]: r for r in records}
    for workload in ("roundtrip", "throughput", "sleep-10ms", "payload-1KiB", "cold-start"):
        assert by_workload[workload]["status"] == "ok", by_workload[workload]
    if system.startswith("rtbatch"):  # any size, by reference (memory://: in-process store)
        assert by_workload["payload-1MiB"]["status"] == "ok", by_workload["payload-1MiB"]
        assert by_workload["payload-10MiB"]["status"] == "ok", by_workload["payload-10MiB"]
    if system == "raw-zmq":
        assert by_workload["java-noop"]["status"] == "n/a"  # runs no jars
    elif JDK:
        assert by_workload["java-noop"]["status"] == "ok", by_workload["java-noop"]


def test_ratios_and_report():
    def rec(system, p50):
        return {
            "system": system,
            "workload": "roundtrip",
            "status": "ok",
            "p50_us": p50,
            "spread": {"p50_us": [p50, p50]},
        }

    records = [
        rec("raw-zmq", 100.0),
        rec("rtbatch-zmq", 150.0),
        rec("ray", 300.0),
        rec("dask", 600.0),
    ]
    add_ratios(records)
    mine = records[1]
    assert mine["ratio_to_raw"] == pytest.approx(1.5)
    assert mine["best_peer"] == "ray"
    assert mine["ratio_to_best_peer"] == pytest.approx(0.5)
    assert any("1.50x raw-zmq" in line for line in ratio_lines(records))
    result = {
        "records": records,
        "command": "python -m benchmarks",
        "mode": "quick",
        "elapsed_s": 1.0,
        "finished_at": "now",
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "memory_gb": 1,
            "platform": "p",
            "python": "3",
            "load_average": [0, 0, 0],
        },
        "load_average_end": [0, 0, 0],
        "versions": {},
        "reps": 3,
    }
    text = markdown_report(result, None)
    assert "| roundtrip | µs p50 | 100 (100-100) | 150 (150-150) | 300 (300-300) |" in text


def test_cli_json(tmp_path, no_leaked_processes):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench,
        [
            "--quick",
            "--systems",
            "raw-zmq",
            "--workloads",
            "roundtrip,payload-1KiB",
            "--json",
            str(out),
            "--no-install",
            "--no-docs",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["mode"] == "quick"
    assert {"cpu", "cores", "python", "versions"} <= set(document["machine"])
    assert "pyzmq" in document["versions"]
    workloads = [r["workload"] for r in document["records"]]
    assert workloads == ["roundtrip", "payload-1KiB"]
    for record in document["records"]:
        check_shape(record)
        assert record["status"] == "ok"
    merged_path = tmp_path / "merged.json"
    args = ["--quick", "--systems", "raw-zmq", "--workloads", "roundtrip", "--no-install"]
    args += ["--no-docs", "--merge", str(out), "--json", str(merged_path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    merged = json.loads(merged_path.read_text())
    assert sorted(r["workload"] for r in merged["records"]) == ["roundtrip"]


def test_merge_replaces_only_rerun_systems():
    def rec(system, p50):
        return {"system": system, "workload": "roundtrip", "status": "ok", "p50_us": p50}

    base = {"mode": "full", "versions": {"a": "1"}, "command": "c1", "elapsed_s": 10.0}
    earlier = {**base, "records": [rec("raw-zmq", 100.0), rec("rtbatch-zmq", 400.0)]}
    add_ratios(earlier["records"])
    now = {
        **base,
        "command": "c2",
        "versions": {"b": "2"},
        "records": [rec("rtbatch-zmq", 200.0)],
        "finished_at": "later",
        "load_average_end": [1, 1, 1],
    }
    merged = merge_results(earlier, now)
    by_system = {r["system"]: r for r in merged["records"]}
    assert by_system["raw-zmq"]["p50_us"] == 100.0
    assert by_system["rtbatch-zmq"]["p50_us"] == 200.0
    assert by_system["rtbatch-zmq"]["ratio_to_raw"] == pytest.approx(2.0)
    assert merged["versions"] == {"a": "1", "b": "2"}
    with pytest.raises(click.UsageError):
        merge_results(earlier, {**now, "mode": "quick"})


def test_idle_engine_figures(no_leaked_processes):
    from benchmarks.session import idle_engine

    figures = idle_engine(window=0.5)
    assert figures["processes"] == 2  # the engine and its warm task worker
    assert 5 < figures["engine_rss_mb"] < figures["with_worker_rss_mb"]
    assert 0 <= figures["engine_cpu_pct"] <= figures["with_worker_cpu_pct"]


def test_transport_timeline_segments(no_leaked_processes):
    from benchmarks.timeline import transport_timeline

    figures = transport_timeline(20)
    total = figures.pop("total: send -> reply received")
    # beside the path: the broker acks the send while the worker already has the task
    assert 0 < figures.pop("broker handles SEND (grant, ack)") < total
    assert 0 < figures.pop("client: send's ack") < total
    assert all(0 < value < total for value in figures.values()), figures
    assert sum(figures.values()) <= total * 1.5  # medians of the parts: close to the total


def test_session_timeline_segments(no_leaked_processes):
    from benchmarks.timeline import session_timeline

    figures = session_timeline(15)
    total = figures.pop("total round trip")
    assert all(0 <= value < total for value in figures.values()), figures
    assert sum(figures.values()) <= total * 1.5


def test_pattern_timeline_runs_every_pattern(no_leaked_processes):
    from benchmarks.timeline import _PATTERNS, pattern_timeline

    figures = pattern_timeline(30)
    assert list(figures) == list(_PATTERNS)
    assert all(value > 0 for value in figures.values()), figures


def test_wakeups_measures_three_ping_pongs_and_restores_affinity(no_leaked_processes):
    from benchmarks.timeline import wakeups

    before = os.sched_getaffinity(0)
    figures = wakeups(50)
    assert os.sched_getaffinity(0) == before  # the one-CPU run must not pin the caller
    assert len(figures) == 3
    assert all(0 < value < 1e6 for value in figures.values()), figures


@pytest.fixture
def resource_tracker():
    """multiprocessing's resource tracker, started before the leak check looks.

    It is started once per process on first use of the ``spawn`` context and lives
    as long as this process: not a leak of the test that happens to start it.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def test_direct_worker_sizing_runs_all_three(resource_tracker, no_leaked_processes):
    from benchmarks.direct_worker import main

    figures = main(["-n", "20"])
    assert len(figures) == 3
    assert all(0 < value < 1e6 for value in figures.values()), figures


def test_ab_alternates_pools_that_differ_in_one_setting(no_leaked_processes):
    from benchmarks.ab import _variants, run

    variants = _variants(["0", "300"])
    assert variants == [{"spin_us": "0"}, {"spin_us": "300"}]
    figures = run(variants, blocks=2, per_block=5)
    assert list(figures) == ["spin 0 µs", "spin 300 µs"]
    for fig in figures.values():
        assert fig["n"] == 10
        assert 0 < fig["p50_us"] <= fig["p90_us"] < 1e6


def test_ab_refuses_the_removed_worker_mode(capsys):
    from benchmarks.ab import main

    with pytest.raises(SystemExit) as exc:
        main(["--spin-us", "0,300", "--worker-mode", "direct,relay"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--worker-mode: the worker mode option was removed" in err
    assert "measured no faster" in err


def test_the_relay_system_is_gone_with_the_switch():
    from benchmarks.systems import make_system

    with pytest.raises(ValueError, match="unknown system 'rtbatch-zmq-relay'"):
        make_system("rtbatch-zmq-relay")


def test_pattern_broker_holds_a_task_sent_before_its_worker_is_ready(no_leaked_processes):
    """Under load the client's first task can beat the worker's "W"; it once crashed the broker."""
    import zmq

    from benchmarks.timeline import ROOT, _recv_or_fail

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    me = [sys.executable, "-m", "benchmarks.timeline"]
    broker = subprocess.Popen([*me, "_pbroker", "-"], stdout=subprocess.PIPE, text=True, env=env)
    worker = None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = broker.stdout.readline().strip()
        sock.connect(endpoint)
        sock.send_multipart([b"T", b"early"])
        time.sleep(0.3)  # the task reaches the broker before any worker exists
        assert broker.poll() is None, "the broker died on a task that came before its worker"
        worker = subprocess.Popen([*me, "_pworker", endpoint, "-"], env=env)
        assert _recv_or_fail(sock, broker, worker) == [b"R", b"early"]
        sock.send_multipart([b"Q", b""])
    finally:
        sock.close(0)
        ctx.term()
        for proc in (worker, broker):
            if proc is not None:
                proc.kill()
                proc.wait(10)
