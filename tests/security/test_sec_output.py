"""A task's output is bounded while it streams (issue #15, medium).

A jar's stdout/stderr are read incrementally and kept up to ``max_output`` bytes;
a Python task's ``print`` output reaches the engine's log up to ``max_output``
characters per task; the rest is dropped with a ``[... N bytes dropped]`` line.
The engine's own log file (``--log-file``) is rotated.
"""

from __future__ import annotations

import logging
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from engine_helpers import NEEDS_JDK, Harness, open_harness

from realtime_batch.engine import build_jar
from realtime_batch.engine._output import WorkerLog
from realtime_batch.engine.cli import configure_logging
from realtime_batch.engine.java import JavaTaskError, JavaTimeoutError, run_jar

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


def _needs_jdk(test: Any) -> Any:
    for mark in NEEDS_JDK:
        test = mark(test)
    return test


_FLOOD = """
public final class Flood {
    public static void main(String[] args) throws Exception {
        int mib = Integer.parseInt(args[0]);
        byte[] block = new byte[1 << 20];
        java.util.Arrays.fill(block, (byte) 'x');
        for (int i = 0; i < mib; i++) { System.out.write(block); System.err.write(block); }
        System.out.flush();
        if (args.length > 1) { Thread.sleep(Long.parseLong(args[1])); }
        System.exit(args.length > 2 ? Integer.parseInt(args[2]) : 0);
    }
}
"""

_PRINTER = """
def run(lines, width, tag):
    for _ in range(lines):
        print("y" * width)
    print(tag)
    return lines
"""


@pytest.fixture(scope="module")
def flood_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sec-output-jar")
    (root / "Flood.java").write_text(_FLOOD)
    return build_jar(root / "Flood.java", root / "flood.jar")


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "printer.py").write_text(textwrap.dedent(_PRINTER))
    return tasks


@pytest.fixture(params=["relay", "direct"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, tasks_dir: Path) -> Iterator[Harness]:
    with open_harness(request.param, tasks_dir, tmp_path / "wd") as h:
        yield h


@_needs_jdk
def test_run_jar_keeps_only_max_output_bytes(flood_jar):
    limit = 100_000
    out = run_jar(flood_jar, [20], max_output=limit)  # 20 MiB on each stream
    dropped = 20 * (1 << 20) - limit
    assert out == "x" * limit + f"\n[... {dropped} bytes dropped]\n"


@_needs_jdk
def test_run_jar_bounds_stderr_of_a_failing_jar(flood_jar):
    with pytest.raises(JavaTaskError) as info:
        run_jar(flood_jar, [5, 0, 3], max_output=1000)
    assert info.value.returncode == 3
    assert info.value.stderr == "x" * 1000 + f"\n[... {5 * (1 << 20) - 1000} bytes dropped]\n"
    assert len(str(info.value)) < 6000


@_needs_jdk
def test_run_jar_timeout_still_kills_the_jvm(flood_jar):
    with pytest.raises(JavaTimeoutError):
        run_jar(flood_jar, [1, 60_000], timeout=1.0, max_output=1000)


@_needs_jdk
def test_jar_task_output_is_bounded(harness, tasks_dir, flood_jar):
    shutil.copy(flood_jar, tasks_dir / "flood.jar")
    harness.engine(max_output=4096)
    harness.submit("flood.jar", 30)
    result = harness.result(timeout=120)
    assert result.ok, result.error
    assert result.value == "x" * 4096 + f"\n[... {30 * (1 << 20) - 4096} bytes dropped]\n"


def test_print_output_is_bounded_per_task(harness, capfd):
    harness.engine(max_output=10_000)
    harness.submit("printer.py", 50, 100_000, "first-done")  # 5 MB of print output
    assert harness.result().value == 50
    harness.submit("printer.py", 1, 10, "second-done")  # the next task has its budget again
    assert harness.result().value == 1
    err = capfd.readouterr().err
    marker = f"[... {50 * 100_001 + len('first-done') + 1 - 10_000} bytes dropped]"
    assert marker in err
    assert "first-done" not in err and "second-done" in err
    assert err.replace(marker, "").count("y") == 10_000 + 10


def test_engine_log_file_is_rotated(tmp_path):
    log = tmp_path / "engine.log"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("INFO", str(log), max_bytes=20_000, backups=2)
        for i in range(2000):
            logging.getLogger("realtime_batch.engine.test").info("line %d %s", i, "z" * 50)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["engine.log", "engine.log.1", "engine.log.2"]
    assert all((tmp_path / name).stat().st_size <= 20_000 for name in files)
    assert "line 1999" in log.read_text()


def test_worker_log_holds_print_output_and_is_rotated(harness, tmp_path):
    log = tmp_path / "logs" / "engine-worker.log"
    log.parent.mkdir()
    harness.engine(max_output=400_000, worker_log=WorkerLog(str(log), 50_000, 2))
    harness.submit("printer.py", 300, 1000, "first-done")  # 300 kB, within the budget
    assert harness.result().value == 300
    harness.submit("printer.py", 1, 10, "second-done")
    assert harness.result().value == 1
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["engine-worker.log", "engine-worker.log.1", "engine-worker.log.2"]
    assert all((log.parent / name).stat().st_size <= 50_000 for name in files)
    assert log.read_text().endswith("y" * 10 + "\nsecond-done\n")


def test_local_pool_engines_write_rotated_logs(tmp_path, tasks_dir):
    """rtbatch engine --log-file, as LocalPool starts it: engine.log and engine-worker.log."""
    import realtime_batch as rb
    from realtime_batch.emulator.local_pool import LocalPool

    with LocalPool(
        engines=1,
        transport="zmq://127.0.0.1:0",
        task_files=[tasks_dir / "printer.py"],
        root=tmp_path / "pool",
        max_output=5000,
    ) as pool, rb.Session(pool) as session:  # fmt: skip
        assert session.submit("printer.py", 100, 1000, "done").result(timeout=60) == 100
    node = tmp_path / "pool" / "node-0"
    worker_log = (node / "engine-worker.log").read_text()
    assert f"[... {100 * 1001 + len('done') + 1 - 5000} bytes dropped]" in worker_log
    assert "ready on queue" in (node / "engine.log").read_text()
