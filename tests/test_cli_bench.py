"""``rtbatch bench``: runs ``python -m benchmarks`` in the checkout, never edits sys.path,
and says what to do from an installed package with no checkout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from realtime_batch import bench_cli
from realtime_batch.cli import main

CHECKOUT = Path(__file__).resolve().parent.parent


def test_importing_the_command_leaves_sys_path_alone(tmp_path):
    # From a directory that is no checkout, as an installed ``rtbatch`` runs.
    code = "import sys; before = list(sys.path); import realtime_batch.bench_cli; "
    code += "print(sys.path == before, 'benchmarks' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "False"]


def test_runs_python_m_benchmarks_in_the_checkout_with_the_same_arguments(monkeypatch):
    calls = []

    def fake_run(root, args):
        calls.append((root, args))
        return 3

    monkeypatch.setattr(bench_cli, "run_in_checkout", fake_run)
    result = CliRunner().invoke(main, ["bench", "--quick", "--systems", "raw-zmq"])
    assert result.exit_code == 3, result.output  # the child's status
    assert calls == [(CHECKOUT, ["--quick", "--systems", "raw-zmq"])]


def test_help_is_the_benchmarks_help(tmp_path):
    rtbatch = Path(sys.executable).with_name("rtbatch")
    out = subprocess.run(
        [str(rtbatch), "bench", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "Usage: rtbatch bench" in out.stdout
    assert "--systems" in out.stdout and "--quick" in out.stdout


def test_a_bad_option_is_refused_with_the_benchmarks_status(tmp_path):
    rtbatch = Path(sys.executable).with_name("rtbatch")
    out = subprocess.run(
        [str(rtbatch), "bench", "--systems", "nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "nope" in out.stderr


def test_without_a_checkout_it_says_to_run_python_m_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_cli, "_candidates", lambda: [tmp_path])
    result = CliRunner().invoke(main, ["bench", "--quick"])
    assert result.exit_code == 1
    assert "python -m benchmarks" in result.output and "checkout" in result.output


def test_sigterm_is_passed_to_the_benchmarks_process(tmp_path, no_leaked_processes):
    # A stand-in checkout whose benchmarks command waits for SIGTERM.
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "cli.py").write_text(
        textwrap.dedent(
            """
            import os, signal, sys, time

            def bench(prog_name):
                signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
                open("child.pid", "w").write(str(os.getpid()))
                print("ready", prog_name, flush=True)
                time.sleep(60)
                sys.exit(0)
            """
        )
    )
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from realtime_batch import bench_cli
        sys.exit(bench_cli.run_in_checkout(Path({str(tmp_path)!r}), []))
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert parent.stdout.readline().strip() == "ready rtbatch bench"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 143
    finally:
        if parent.poll() is None:
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait()
        parent.stdout.close()
        child = tmp_path / "child.pid"
        if child.exists():  # the benchmarks process we started, if it outlived its parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child.read_text()), signal.SIGKILL)
