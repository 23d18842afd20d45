"""Observability against a running LocalPool: engines' reports in Transport.stats(),
Prometheus endpoints of the broker and the engines, ``rtbatch logs --local``, and the
dashboard loaded in headless Chromium (screenshot kept in tests/artifacts/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from obs_helpers import scrape, wait_for
from relay_engine_main import RelayLocalPool

import realtime_batch as rb
from realtime_batch.cli import main
from realtime_batch.dashboard import DashboardServer, Sampler
from realtime_batch.emulator.logs import latest_pool_dir, pool_log_files, tail
from realtime_batch.orchestrator.pool import OrchestratorError
from realtime_batch.transport import Message, open_transport

TASKS = Path(__file__).parent / "tasks"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
METRICS_LINE = re.compile(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


@pytest.fixture(scope="module")
def pool():
    """Two engines (direct workers, the zmq default) that ran 20 tasks, one of which
    failed, and a malformed message the engines dead-lettered."""
    with rb.LocalPool(
        engines=2, task_files=[TASKS / "echo.py", TASKS / "boom.py"], metrics_port=0
    ) as pool:
        marker = f"kaput-{uuid.uuid4().hex[:8]}"
        with rb.Session(pool) as session:
            assert len([f.result(timeout=60) for f in session.map("echo.py", range(20))]) == 20
            error = session.submit("boom.py", marker).exception(timeout=60)
            assert error is not None and marker in str(error)
        with open_transport(pool.transport_url) as t:
            t.send(pool.queue, Message(b"not a task", id="garbage-1"))
            wait_for(lambda: _queue(t.stats(), pool.queue).dead_letter, "the dead letter")
        pool.marker = marker
        yield pool


def _stats(pool):
    with open_transport(pool.transport_url) as t:
        return t.stats()


def _queue(stats, name):
    return next(q for q in stats.queues if q.name == name)


def _engines_with_failure(url: str, marker: str):
    with open_transport(url) as t:
        stats = t.stats()
    failures = [f for f in stats.failures() if marker in f.message]
    caught_up = sum(e.tasks_done for e in stats.engines) >= 21  # reports come once a second
    return stats if len(stats.engines) == 2 and failures and caught_up else None


def test_engines_report_themselves_and_their_failures(pool):
    stats = wait_for(lambda: _engines_with_failure(pool.transport_url, pool.marker),
                      "both engines and the failure")  # fmt: skip
    pids = sorted(pool.engine_pids())
    assert sorted(int(e.id.rsplit("-", 1)[1]) for e in stats.engines) == pids
    assert all(e.state in ("idle", "busy") for e in stats.engines)
    assert sum(e.tasks_done for e in stats.engines) >= 21
    assert sum(e.tasks_failed for e in stats.engines) == 1
    [failure] = [f for f in stats.failures() if pool.marker in f.message]
    assert failure.type == "ValueError"
    assert "raise ValueError(message)" in failure.traceback
    tasks = _queue(stats, pool.queue)
    assert tasks.completed >= 21 and tasks.dead_letter == 1


def test_relay_engines_report_too(tmp_path):
    with RelayLocalPool(engines=1, task_files=[TASKS / "boom.py"]) as pool:
        with rb.Session(pool) as session:
            assert session.submit("boom.py", "relayed").exception(timeout=60) is not None
        stats = wait_for(lambda: _engines_with_failure_one(pool.transport_url), "the report")
    [engine] = stats.engines
    assert engine.tasks_done == 1 and engine.tasks_failed == 1
    assert engine.state == "idle" and engine.task is None
    assert engine.busy_ratio is not None
    assert "relayed" in engine.failures[0].message


def _engines_with_failure_one(url):
    with open_transport(url) as t:
        stats = t.stats()
    done = stats.engines and stats.engines[0].tasks_failed and stats.engines[0].tasks_done
    return stats if done else None


def _metrics_urls(log: Path) -> list[str]:
    return METRICS_LINE.findall(log.read_text(errors="replace"))


def test_broker_metrics_in_prometheus_format(pool):
    [url] = wait_for(lambda: _metrics_urls(pool.root / "broker.log"), "the metrics line")

    def scraped():
        samples = scrape(url)
        failed = samples.get("rtbatch_engine_tasks_failed_total", [])
        return samples if sum(s.value for s in failed) >= 1 else None

    samples = wait_for(scraped, "the engines' failure count")
    by_queue = {s.labels["queue"]: s.value for s in samples["rtbatch_tasks_completed_total"]}
    assert by_queue[pool.queue] >= 21
    received = {s.labels["queue"]: s.value for s in samples["rtbatch_tasks_received_total"]}
    assert received[pool.queue] >= 22
    depth = {s.labels["queue"]: s.value for s in samples["rtbatch_queue_depth"]}
    assert depth[pool.queue] == 0
    dead = {s.labels["queue"]: s.value for s in samples["rtbatch_queue_dead_letters"]}
    assert dead[pool.queue] == 1
    count = [s for s in samples["rtbatch_task_latency_seconds_count"]
             if s.labels["queue"] == pool.queue]  # fmt: skip
    assert count[0].value >= 21
    inf = [s for s in samples["rtbatch_task_latency_seconds_bucket"]
           if s.labels["queue"] == pool.queue and s.labels["le"] == "+Inf"]  # fmt: skip
    assert inf[0].value == count[0].value
    assert len(samples["rtbatch_engine_busy_ratio"]) == 2
    assert sum(s.value for s in samples["rtbatch_engines"]) == 2
    assert "rtbatch_tasks_retried_total" in samples


def test_engine_metrics_in_prometheus_format(pool):
    logs = sorted(pool.root.glob("node-*/engine.log"))
    urls = [wait_for(lambda p=p: _metrics_urls(p), f"metrics in {p}")[0] for p in logs]
    assert len(urls) == 2
    done = 0.0
    for url in urls:
        samples = scrape(url)
        [sample] = samples["rtbatch_engine_tasks_done_total"]
        assert sample.labels["engine"]
        done += sample.value
        assert "rtbatch_engine_task_duration_seconds_count" in samples
        assert "rtbatch_engine_busy" in samples
    assert done >= 21


def test_metrics_port_in_use_is_refused_clearly(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OrchestratorError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            rb.LocalPool(engines=0, metrics_port=port, root=tmp_path)


def test_a_broker_that_exits_at_once_is_named_not_an_index_error(tmp_path):
    with pytest.raises(OrchestratorError, match="the ZeroMQ broker did not start") as info:
        rb.LocalPool(engines=0, broker_args=["--no-such-option"], root=tmp_path)
    assert "No such option '--no-such-option'" in str(info.value)


def test_metrics_port_is_refused_for_in_process_engines():
    with pytest.raises(ValueError, match="metrics_port needs engine processes"):
        rb.LocalPool(engines=1, transport="memory://obs-metrics", metrics_port=0)


# -- logs --local -------------------------------------------------------------------------
def test_keep_logs_leaves_the_logs_for_rtbatch_logs_local():
    with rb.LocalPool(engines=1, task_files=[TASKS / "echo.py"], keep_logs=True) as pool:
        with rb.Session(pool) as session:
            session.submit("echo.py", 1).result(timeout=60)
        root = pool.root
    try:
        assert (root / "node-0" / "engine.log").is_file()
        result = CliRunner().invoke(main, ["logs", "--local", "--pool-dir", str(root)])
        assert result.exit_code == 0, result.output
        assert "==> broker.log <==" in result.output
        assert "==> node-0/engine.log <==" in result.output
        assert "ready on queue 'tasks'" in result.output
        result = CliRunner().invoke(
            main, ["logs", "--local", "--pool-dir", str(root), "--node", "0", "--tail", "2"]
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == "==> node-0/engine.log <==" and len(lines) == 3
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_pool_without_keep_logs_removes_its_directory():
    with rb.LocalPool(engines=0) as pool:
        root = pool.root
    assert not root.exists()


def test_logs_local_refusals(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["logs", "--local", "--pool-dir", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "is not a directory" in result.output
    result = runner.invoke(main, ["logs", "--local", "--pool-dir", str(tmp_path)])
    assert result.exit_code == 1 and "holds no LocalPool logs" in result.output
    (tmp_path / "node-0").mkdir()
    (tmp_path / "node-0" / "engine.log").write_text("a\nb\nc\n")
    result = runner.invoke(main, ["logs", "--local", "--pool-dir", str(tmp_path), "--node", "3"])
    assert result.exit_code == 1 and "has no node-3/engine.log" in result.output
    result = runner.invoke(main, ["logs", "--tail", "3", "--config", str(tmp_path / "x.toml")])
    assert result.exit_code == 2 and "go with --local" in result.output
    with pytest.raises(OrchestratorError, match="no LocalPool directory"):
        latest_pool_dir(tmp_path)


def test_pool_log_files_and_tail(tmp_path):
    for index in (10, 2):
        (tmp_path / f"node-{index}").mkdir()
        (tmp_path / f"node-{index}" / "engine.log").write_text("x\n" * 5 + f"last {index}\n")
    (tmp_path / "broker.log").write_text("broker\n")
    files = pool_log_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "broker.log", "node-2/engine.log", "node-10/engine.log",
    ]  # fmt: skip
    assert tail(files[2], 2) == ["x", "last 10"]
    (tmp_path / "rtbatch-pool-abc").mkdir()
    assert latest_pool_dir(tmp_path).name == "rtbatch-pool-abc"


# -- the dashboard ---------------------------------------------------------------------------
@pytest.fixture
def dashboard(pool):
    wait_for(lambda: _engines_with_failure(pool.transport_url, pool.marker), "the reports")
    transport = open_transport(pool.transport_url)
    sampler = Sampler(transport, interval=0.2).start()
    server = DashboardServer(sampler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(sampler.view()["history"]) >= 3, "a few samples")
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        sampler.stop()
        transport.close()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_dashboard_api_status(pool, dashboard):
    status, content_type, body = _get(dashboard.url + "api/status")
    assert status == 200 and content_type == "application/json"
    data = orjson.loads(body)
    assert {e["id"] for e in data["stats"]["engines"]} == {e.id for e in _stats(pool).engines}
    assert any(pool.marker in f["message"] for f in data["failures"])
    [dead] = data["dead_letters"][pool.queue]
    assert dead["id"] == "garbage-1" and dead["reason"] == "MalformedTask"
    assert data["history"][-1]["queues"][pool.queue]["depth"] == 0
    assert data["error"] is None


def test_dashboard_serves_its_assets_and_nothing_else(dashboard):
    for path, kind in (("", "text/html"), ("static/app.js", "text/javascript"),
                       ("static/style.css", "text/css")):  # fmt: skip
        status, content_type, body = _get(dashboard.url + path)
        assert status == 200 and content_type.startswith(kind) and body
    status, _, _ = _get(dashboard.url + "static/../../pyproject.toml")
    assert status == 404
    status, _, _ = _get(dashboard.url + "etc/passwd")
    assert status == 404
    page = _get(dashboard.url)[2].decode()
    assert "http://" not in page.replace(dashboard.url, "") and "https://" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_in_headless_chromium(pool, dashboard, tmp_path):
    with rb.Session(pool) as session:  # traffic while the dashboard samples: the charts rise
        assert len([f.result(timeout=60) for f in session.map("echo.py", range(300))]) == 300

    def sampled_throughput():
        points = dashboard.sampler.view()["history"]
        return any((p["queues"][pool.queue]["done"] or 0) > 0 for p in points[-10:])

    wait_for(sampled_throughput, "a sample with tasks completed")
    base = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000", "--window-size=1280,1600",
    ]  # fmt: skip
    dom = subprocess.run(
        [*base, "--dump-dom", dashboard.url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-loaded="1"' in html, html[:2000]
    for engine in _stats(pool).engines:
        assert f"<td>{engine.id}</td>" in html
    assert f"<td>{pool.queue}</td>" in html
    assert pool.marker in html
    assert "raise ValueError(message)" in html  # the failure's traceback
    assert "MalformedTask" in html  # the dead letter
    charts = dict(re.findall(r'<svg id="(\w+)".*?>max ([\d.]+)</text>', html))
    assert float(charts["throughput"]) > 0 and float(charts["latency"]) > 0, charts
    shot = tmp_path / "dashboard.png"
    run = subprocess.run(
        [*base, f"--screenshot={shot}", dashboard.url], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "dashboard.png")
