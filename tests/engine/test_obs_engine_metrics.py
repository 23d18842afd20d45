"""An engine's own metrics (relay mode, in process over memory://): counts, retries,
durations and busy ratio, scraped over loopback and parsed with prometheus_client;
and the engine CLI's refusal of a metrics port in use."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from obs_helpers import scrape

import realtime_batch as rb
from realtime_batch.cli import main
from realtime_batch.engine import Engine
from realtime_batch.engine.metrics import serve_engine_metrics
from realtime_batch.transport import open_transport

TASKS = Path(__file__).parent / "tasks"


def test_engine_metrics_count_results_retries_and_durations(tmp_path):
    url = f"memory://metrics-{uuid.uuid4().hex}"
    watcher = open_transport(url)  # keeps the in-process broker alive to the end
    engine = Engine(url, "tasks", TASKS, work_dir=tmp_path, engine_id="e-metrics",
                    retry_backoff=0.01).start()  # fmt: skip
    server, thread = serve_engine_metrics(engine, 0)
    try:
        with rb.Session(url) as session:
            assert session.submit("noop.py", 1).result(timeout=30) == {"args": [1], "kwargs": {}}
            assert session.submit("fail.py").exception(timeout=30) is not None
            flaky = session.submit("fail.py", "FlakyError", retry_on=["FlakyError"], max_retries=1)
            assert flaky.exception(timeout=30) is not None
        samples = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        thread.join(5)
        engine.stop()
    with watcher:
        [seen] = watcher.stats().engines
    assert (seen.id, seen.state, seen.task, seen.tasks_done) == ("e-metrics", "stopped", None, 4)
    assert seen.tasks_failed == 2 and len(seen.failures) == 2

    def value(name: str) -> float:
        [sample] = samples[name]
        assert sample.labels == {"engine": "e-metrics"}
        return sample.value

    assert value("rtbatch_engine_tasks_done_total") == 4  # the flaky one ran twice
    assert value("rtbatch_engine_tasks_completed_total") == 1
    assert value("rtbatch_engine_tasks_failed_total") == 2
    assert value("rtbatch_engine_tasks_retried_total") == 1
    assert value("rtbatch_engine_worker_restarts_total") == 0
    assert value("rtbatch_engine_task_duration_seconds_count") == 3  # results sent
    assert 0 <= value("rtbatch_engine_busy_ratio") <= 1
    assert value("rtbatch_engine_busy") == 0


def test_engine_cli_refuses_a_metrics_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(main, [
            "engine", "--transport", f"memory://cli-{uuid.uuid4().hex}", "--queue", "tasks",
            "--tasks-dir", str(TASKS), "--metrics-port", str(port),
        ])  # fmt: skip
    assert result.exit_code == 1
    assert f"cannot serve metrics on port {port}" in result.output


@pytest.mark.parametrize("port", ["-1", "70000", "x"])
def test_engine_cli_refuses_a_bad_metrics_port(port):
    result = CliRunner().invoke(main, [
        "engine", "--transport", "memory://x", "--queue", "tasks", "--tasks-dir", str(TASKS),
        "--metrics-port", port,
    ])  # fmt: skip
    assert result.exit_code == 2 and "--metrics-port" in result.output


def test_a_direct_engines_metrics_count_what_its_workers_answered_too(tmp_path):
    """In direct mode (zmq://) the task worker sends the results: the engine's endpoint
    counted only the tasks whose worker was lost, and had no busy ratio."""
    from engine_helpers import open_harness

    with open_harness("direct", TASKS, tmp_path / "wd") as harness:
        engine = harness.engine(engine_id="e-direct-metrics")
        server, thread = serve_engine_metrics(engine, 0)
        try:
            harness.submit("noop.py", 1)
            assert harness.result().status == "ok"
            harness.submit("fail.py")
            assert harness.result().status == "error"
            harness.submit("crash.py", "exit", 3, max_retries=0)  # answered by the engine
            assert harness.result().error.type == "WorkerCrashedError"
            harness.submit("noop.py", 2)  # by the next worker, which goes on counting
            assert harness.result().status == "ok"
            samples = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
        finally:
            server.shutdown()
            thread.join(5)
    # stopped (its ledger closed): what is left is the engine's own count
    assert [o.failed for o in engine.observers()] == [1]

    def value(name: str) -> float:
        [sample] = samples[name]
        return sample.value

    assert value("rtbatch_engine_tasks_completed_total") == 2
    assert value("rtbatch_engine_tasks_failed_total") == 2
    assert value("rtbatch_engine_worker_restarts_total") == 1  # after the crash
    assert value("rtbatch_engine_task_duration_seconds_count") == 3  # the crash has none
    assert 0 < value("rtbatch_engine_busy_ratio") <= 1
