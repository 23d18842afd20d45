"""``rtbatch engine`` takes its transport and queue from rtbatch.toml / RTBATCH_* like the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

import realtime_batch as rb

HELLO = "def run(name):\n    return f'hello {name}'\n"


@pytest.mark.timeout(120)
def test_engine_without_transport_or_queue_options_uses_rtbatch_toml(tmp_path, no_leaked_processes):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hi.py").write_text(HELLO)
    queue = f"q-{uuid.uuid4().hex[:6]}"
    with rb.LocalPool(engines=1, task_files=[tasks / "hi.py"]) as pool:
        config = tmp_path / "rtbatch.toml"
        config.write_text(f'[transport]\nurl = "{pool.transport_url}"\nqueue = "{queue}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("RTBATCH_")}
        env["RTBATCH_CONFIG"] = str(config)
        engine = subprocess.Popen(
            [sys.executable, "-m", "realtime_batch.engine", "--tasks-dir", str(tasks)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert engine.stdout is not None
            assert engine.stdout.readline().startswith("ENGINE READY")
            with rb.Session(pool.transport_url, task_queue=queue) as session:
                assert session.submit("hi.py", "toml").result(timeout=60) == "hello toml"
        finally:
            engine.terminate()
            engine.wait(30)


def test_a_misspelt_setting_stops_the_engine_with_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from realtime_batch.engine.cli import engine as engine_cli

    monkeypatch.setenv("RTBATCH_TRANSPORT_QUEU", "x")
    monkeypatch.setenv("RTBATCH_TRANSPORT", "zmq://127.0.0.1:1")
    result = CliRunner().invoke(engine_cli, ["--tasks-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        "ConfigError: unknown setting in the environment: RTBATCH_TRANSPORT_QUEU" in result.output
    )
