"""The engine as a real process: ``python -m realtime_batch.engine`` over the ZeroMQ broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from engine_helpers import TASKS, read_line, stop_process

from realtime_batch.cli import main
from realtime_batch.protocol import ReplyTo, TaskRecord, decode_result, encode_task
from realtime_batch.transport import Message, open_transport

OPTIONS = ["--transport", "--queue", "--tasks-dir", "--work-dir", "--prefetch", "--engine-id",
           "--lock-duration", "--max-delivery-count", "--default-timeout"]  # fmt: skip


def test_rtbatch_engine_help_lists_the_options():
    result = CliRunner().invoke(main, ["engine", "--help"])
    assert result.exit_code == 0, result.output
    for option in OPTIONS:
        assert option in result.output


def test_engine_options_default_to_the_engines_own_defaults():
    """An option passed to ``Engine`` as its keyword has ``Engine``'s default: the two
    cannot drift apart (the CLI spelled four of them as literals before)."""
    import inspect

    import click

    from realtime_batch.engine.cli import engine as command
    from realtime_batch.engine.engine import Engine

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(Engine).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    context = click.Context(command)
    compared = []
    for option in command.params:
        if option.name in defaults and not option.multiple:
            value = option.type_cast_value(context, option.get_default(context))
            assert value == defaults[option.name], option.name
            compared.append(option.name)
    assert {"grace", "retry_backoff", "control_queue", "result_ttl", "max_output",
            "prefetch", "lock_duration", "max_delivery_count"} <= set(compared)  # fmt: skip


def test_module_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "realtime_batch.engine", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "--tasks-dir" in out.stdout


@pytest.fixture
def engine_process(zmq_broker, tmp_path):
    procs: list[subprocess.Popen[str]] = []

    def start(queue: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
        argv = [sys.executable, "-m", "realtime_batch.engine", "--transport", zmq_broker.url,
                "--queue", queue, "--tasks-dir", str(TASKS), "--work-dir", str(tmp_path),
                *extra]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = read_line(proc, 60)
        assert line.startswith("ENGINE READY "), f"got {line!r}"
        return proc, line.split()[2]

    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc, signal.SIGKILL)


def _task(command: str, *args, reply_group: str) -> TaskRecord:
    return TaskRecord(session="s", job="j", task=uuid.uuid4().hex, command=command,
                      args=list(args), reply_to=ReplyTo("results", reply_group))  # fmt: skip


def _result(transport, group: str, timeout: float = 30.0):
    [delivery] = transport.receive("results", timeout=timeout, group=group)
    transport.complete(delivery)
    return decode_result(delivery.message.body)


def test_engine_process_serves_then_stops_gracefully_on_sigterm(
    zmq_broker, engine_process, tmp_path, no_leaked_processes
):
    queue, group = f"q-{uuid.uuid4().hex[:8]}", "g1"
    proc, engine_id = engine_process(queue, "--engine-id", "node-7", "--prefetch", "2")
    assert engine_id == "node-7"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 1  # the warm worker
    with open_transport(zmq_broker.url) as transport:
        transport.declare_queue("results", grouped=True)
        transport.send(queue, Message(encode_task(_task("noop.py", 1, reply_group=group))))
        first = _result(transport, group)
        assert first.ok and first.value == {"args": [1], "kwargs": {}}
        assert first.engine == "node-7"

        running = _task("marker_sleep.py", "started", 1.0, reply_group=group)
        transport.send(queue, Message(encode_task(running)))
        end = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < end
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        result = _result(transport, group)
        assert result.task == running.task and result.value == "slept"
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_engine_process_rejects_a_missing_tasks_dir(zmq_broker, tmp_path):
    missing = tmp_path / "missing"
    out = subprocess.run(
        [sys.executable, "-m", "realtime_batch.engine", "--transport", zmq_broker.url,
         "--queue", "q", "--tasks-dir", str(missing)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "ENGINE READY" not in out.stdout


def test_killed_engine_leaves_no_worker(zmq_broker, engine_process):
    proc, _ = engine_process(f"q-{uuid.uuid4().hex[:8]}")
    [worker] = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(10)
    psutil.wait_procs([worker], timeout=10)
    assert not worker.is_running()


def test_rtbatch_engine_uses_the_same_command(zmq_broker, tmp_path):
    # the console entry point and python -m share one click command
    from realtime_batch.engine.cli import engine

    assert main.get_command(None, "engine") is engine
    assert Path(sys.executable).exists()


def test_result_ttl_option_lets_unread_results_expire(zmq_broker, engine_process):
    queue, group = f"q-{uuid.uuid4().hex[:8]}", "nobody-reads-this"
    engine_process(queue, "--result-ttl", "0.5")
    with open_transport(zmq_broker.url) as t:
        t.declare_queue("results", grouped=True)
        t.send(queue, Message(encode_task(_task("noop.py", reply_group=group))))
        [first] = t.receive("results", timeout=30, group=group)  # the result arrived...
        assert first.message.ttl == pytest.approx(0.5)
        t.abandon(first)
        time.sleep(1.0)
        assert t.receive("results", timeout=0.2, group=group) == []  # ...and expired unread
