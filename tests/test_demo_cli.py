"""``rtbatch demo``: bad options are refused in one line, SIGTERM cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from click.testing import CliRunner

from realtime_batch.demo import demo


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--engines", "0"], "'--engines': 0 is not in the range x>=1"),
        (["--tasks", "0"], "'--tasks': 0 is not in the range x>=1"),
        (["--samples", "0"], "'--samples': 0 is not in the range x>=1"),
        (["--transport", "foo://x"], "unknown transport scheme 'foo'"),
        (["--transport", "nonsense"], "not a transport URL"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(args, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    result = CliRunner().invoke(demo, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir()), "a pool directory was created for refused options"


def test_sigterm_stops_engines_and_removes_the_pool_directory(tmp_path, no_leaked_processes):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    # Enough work to still be running when the signal comes.
    cli = "from realtime_batch.cli import main; main()"
    argv = [sys.executable, "-c", cli, "demo", "--python", "--tasks", "100000"]
    argv += ["--samples", "20000"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        demo_proc = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        engines: list[psutil.Process] = []
        while time.monotonic() < deadline and len(engines) < 2:
            engines = [
                p for p in demo_proc.children(recursive=True) if "engine" in " ".join(p.cmdline())
            ]
            time.sleep(0.2)
        assert len(engines) >= 2, "the demo's engines never started"
        time.sleep(1.0)  # let tasks flow
        family = demo_proc.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, output.decode(errors="replace")
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("rtbatch-pool")]
        assert not leftovers, f"pool directories left behind: {leftovers}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_script_output_through_a_pipe_has_no_escape_codes():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [os.path.join(root, "run"), "demo", "--help"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=True,
    )
    assert b"[run]" in proc.stderr  # the script's progress lines came through
    assert b"\x1b" not in proc.stdout + proc.stderr
