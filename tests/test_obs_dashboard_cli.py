"""``rtbatch dashboard`` as a command: it serves, stops on Ctrl-C, and refuses clearly."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from realtime_batch.cli import main

RTBATCH = str(Path(sys.executable).with_name("rtbatch"))

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


def test_dashboard_serves_and_stops_on_ctrl_c():
    proc = subprocess.Popen(
        [RTBATCH, "dashboard", "--transport", "memory://dash-cli", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the dashboard did not start"
        line = proc.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(url + "api/status", timeout=10) as response:
            data = json.loads(response.read())
        assert data["stats"]["transport"] == "memory" and data["error"] is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dashboard_refuses_a_port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(
            main, ["dashboard", "--transport", "memory://dash-busy", "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.output


def test_dashboard_names_an_unreachable_broker():
    with socket.socket() as reserved:  # bound, not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        result = CliRunner().invoke(main, [
            "dashboard", "--transport", f"zmq://127.0.0.1:{reserved.getsockname()[1]}",
            "--timeout", "0.5", "--port", "0",
        ])  # fmt: skip
    assert result.exit_code == 1
    assert "stats to the broker" in result.output


def test_dashboard_refuses_an_unknown_scheme():
    result = CliRunner().invoke(main, ["dashboard", "--transport", "foo://x"])
    assert result.exit_code == 1 and "unknown transport scheme 'foo'" in result.output
