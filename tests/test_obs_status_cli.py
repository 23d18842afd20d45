"""rtbatch status / top: tables and JSON from Transport.stats(), and clear refusals."""

from __future__ import annotations

import json
import socket
import threading
import uuid

import pytest
from click.testing import CliRunner

from realtime_batch.cli import main
from realtime_batch.status import queue_rates
from realtime_batch.transport import Message, open_transport
from realtime_batch.transport.stats import QueueStats, TransportStats
from realtime_batch.transport.zeromq.broker import Broker


@pytest.fixture
def memory_setup():
    url = f"memory://status-{uuid.uuid4().hex}"
    t = open_transport(url)
    t.declare_queue("tasks")
    t.declare_queue("results", grouped=True)
    t.send("tasks", [Message(b"1"), Message(b"2"), Message(b"3")])
    t.send("results", Message(b"r", group="session-abc"))
    [leased] = t.receive("tasks", timeout=1)
    t.report_engine({"id": "node-0-4242", "host": "node-0", "state": "busy",
                     "task": "task-17", "done": 5})  # fmt: skip
    yield url, t, leased
    t.close()


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_status_json_has_queues_engines_and_mailboxes(memory_setup):
    url, _t, _leased = memory_setup
    result = invoke("status", "--transport", url, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    tasks = next(q for q in data["queues"] if q["name"] == "tasks")
    assert (tasks["depth"], tasks["leased"], tasks["dead_letter"]) == (2, 1, 0)
    [engine] = data["engines"]
    assert (engine["id"], engine["state"], engine["task"], engine["tasks_done"]) == (
        "node-0-4242", "busy", "task-17", 5,
    )  # fmt: skip
    assert data["mailboxes"] == [{"queue": "results", "group": "session-abc", "depth": 1}]
    assert data["transport"] == "memory" and data["uptime"] >= 0


def test_status_tables_show_the_same(memory_setup):
    url, _t, _leased = memory_setup
    result = invoke("status", "--transport", url)
    assert result.exit_code == 0, result.output
    for text in ("tasks", "results", "node-0-4242", "task-17", "session-abc", "busy"):
        assert text in result.output


def test_top_once_draws_one_frame(memory_setup):
    url, _t, _leased = memory_setup
    result = invoke("top", "--transport", url, "--once")
    assert result.exit_code == 0, result.output
    assert "node-0-4242" in result.output and "tasks" in result.output


def test_top_exits_cleanly_on_ctrl_c(memory_setup, monkeypatch):
    url, _t, _leased = memory_setup

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("realtime_batch.status.time.sleep", interrupt)
    result = invoke("top", "--transport", url)
    assert result.exit_code == 0, result.output
    assert "node-0-4242" in result.output


def test_top_shows_a_failed_refresh_and_keeps_going(memory_setup, monkeypatch):
    url, _t, _leased = memory_setup
    from realtime_batch.transport import TransportError
    from realtime_batch.transport.memory import MemoryTransport

    real = MemoryTransport.stats
    # the last frame drawn is what a non-terminal output keeps: the failed refresh's
    outcomes = iter(["real", TransportError("broker away"), KeyboardInterrupt()])

    def stats(self):
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return real(self)

    monkeypatch.setattr(MemoryTransport, "stats", stats)
    monkeypatch.setattr("realtime_batch.status.time.sleep", lambda _s: None)
    result = invoke("top", "--transport", url)
    assert result.exit_code == 0, result.output
    assert "TransportError: broker away (retrying)" in result.output
    assert next(outcomes, None) is None  # it asked again after the failure


def test_status_over_zmq_asks_the_broker():
    broker = Broker("tcp://127.0.0.1:0")
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    url = "zmq://" + broker.endpoint.removeprefix("tcp://")
    try:
        with open_transport(url) as t:
            t.declare_queue("tasks")
            t.send("tasks", Message(b"x"))
            result = invoke("status", "--transport", url, "--json")
    finally:
        broker.stop()
        thread.join(5)
        broker.close()
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["transport"] == "zmq" and data["connections"] >= 1
    assert [(q["name"], q["depth"]) for q in data["queues"]] == [("tasks", 1)]


def test_status_refuses_an_unknown_scheme_in_one_line():
    result = invoke("status", "--transport", "foo://x")
    assert result.exit_code != 0
    assert "unknown transport scheme 'foo'" in result.output
    assert "Traceback" not in result.output


def test_status_names_an_unreachable_broker():
    with socket.socket() as reserved:  # bound, not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        url = f"zmq://127.0.0.1:{reserved.getsockname()[1]}"
        result = invoke("status", "--transport", url, "--timeout", "0.5")
    assert result.exit_code == 1
    assert "Error:" in result.output and "stats" in result.output


def test_status_without_a_transport_says_how_to_give_one(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RTBATCH_TRANSPORT", raising=False)
    monkeypatch.delenv("RTBATCH_CONFIG", raising=False)
    result = invoke("status")
    assert result.exit_code == 2
    assert "give --transport URL" in result.output


def test_rates_come_from_two_snapshots():
    before = TransportStats("zmq", queues=[QueueStats("q", sent=10, completed=4,
                                                     latency_sum=0.4)], taken_at=100.0)  # fmt: skip
    after = TransportStats("zmq", queues=[QueueStats("q", sent=30, completed=14,
                                                    latency_sum=1.4)], taken_at=102.0)  # fmt: skip
    rates = queue_rates(after, before)["q"]
    assert rates.sent == pytest.approx(10.0)
    assert rates.completed == pytest.approx(5.0)
    assert rates.latency == pytest.approx(0.1)


def test_status_on_a_curve_broker_with_keys(tmp_path):
    from realtime_batch.transport.zeromq.curve import BrokerCurve

    runner = CliRunner()
    authorized = tmp_path / "authorized"
    for name, role in (("broker", "client"), ("admin", "admin"), ("alice", "client")):
        args = ["keys", "generate", "--dir", str(tmp_path), "--name", name, "--role", role]
        if name != "broker":
            args += ["--authorize", str(authorized)]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    broker = Broker("tcp://127.0.0.1:0", curve=BrokerCurve(tmp_path / "broker.key_secret",
                                                           authorized))  # fmt: skip
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    url = "zmq://" + broker.endpoint.removeprefix("tcp://")
    try:
        keys = ["--curve-server-key", str(tmp_path / "broker.key"),
                "--curve-secret-key", str(tmp_path / "admin.key_secret")]  # fmt: skip
        result = invoke("status", "--transport", url, "--json", *keys)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["transport"] == "zmq"
        client = ["--curve-server-key", str(tmp_path / "broker.key"),
                  "--curve-secret-key", str(tmp_path / "alice.key_secret")]  # fmt: skip
        not_admin = invoke("status", "--transport", url, *client)  # statistics are an admin's
        assert not_admin.exit_code == 1
        assert "PermissionDeniedError: only an admin may ask for broker statistics" in (
            not_admin.output
        )
        refused = invoke("status", "--transport", url, "--timeout", "0.5")  # no keys
        assert refused.exit_code == 1 and "Error:" in refused.output
        bad_key = invoke("status", "--transport", url, "--curve-server-key", "nonsense")
        assert bad_key.exit_code == 1 and "Error:" in bad_key.output
    finally:
        broker.stop()
        thread.join(5)
        broker.close()


def test_the_restarts_column_shows_once_an_engine_restarted_its_worker():
    """Worker restarts (crashes, kills) show even when the retries succeed; the column is
    there only when some engine has had any, so the usual table keeps its width."""
    from rich.console import Console

    from realtime_batch.status import render
    from realtime_batch.transport.stats import EngineStats, TransportStats

    def table(*engines):
        console = Console(width=200, record=True)
        console.print(render(TransportStats("memory", engines=engines)))
        return console.export_text()

    calm = table(EngineStats("node-0-1"), EngineStats("node-1-1"))
    assert "restarts" not in calm
    looping = table(EngineStats("node-0-1"), EngineStats("node-1-1", worker_restarts=7))
    header = next(line for line in looping.splitlines() if "restarts" in line)
    row = next(line for line in looping.splitlines() if "node-1-1" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[[c.strip() for c in header.split("┃")].index("restarts")] == "7"
