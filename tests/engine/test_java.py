"""Jar tasks and java_runner, with the pi example (needs a JDK)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil
import pytest
from engine_helpers import NEEDS_JDK

from realtime_batch.engine import JavaTaskError, build_jar, java_runner

PI = Path(__file__).resolve().parents[2] / "examples" / "pi"

pytestmark = NEEDS_JDK


@pytest.fixture(scope="module")
def pi_jar(tmp_path_factory) -> Path:
    return build_jar(PI / "Pi.java", tmp_path_factory.mktemp("jar") / "pi.jar")


@pytest.fixture
def pi_tasks(tmp_path, pi_jar) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(pi_jar, tasks / "pi.jar")
    shutil.copy(PI / "pi_jar_task.py", tasks)
    shutil.copy(PI / "pi_task.py", tasks)
    return tasks


def test_build_jar_is_incremental(pi_jar):
    stamp = pi_jar.stat().st_mtime_ns
    assert build_jar(PI / "Pi.java", pi_jar) == pi_jar
    assert pi_jar.stat().st_mtime_ns == stamp


def test_java_runner_returns_stdout(pi_tasks):
    out = java_runner("pi.jar", 1000, 42, tasks_dir=pi_tasks)
    hits, samples = map(int, out.split())
    assert samples == 1000 and 700 < hits < 880
    assert java_runner("pi.jar", 1000, 42, tasks_dir=pi_tasks) == out  # seeded


def test_java_runner_nonzero_exit_raises_with_stderr(pi_tasks):
    with pytest.raises(JavaTaskError, match="NumberFormatException") as info:
        java_runner("pi.jar", "many", tasks_dir=pi_tasks)
    assert info.value.returncode != 0


def test_jar_command_value_is_stdout(harness, pi_tasks):
    harness.engine(tasks_dir=pi_tasks)
    harness.submit("pi.jar", 2000, 7)
    result = harness.result()
    assert result.ok, result.error
    hits, samples = map(int, result.value.split())
    assert samples == 2000 and 0 < hits < 2000


def test_jar_failure_is_an_error_result(harness, pi_tasks):
    harness.engine(tasks_dir=pi_tasks)
    harness.submit("pi.jar")  # no arguments: usage error, exit 2
    result = harness.result()
    assert result.error.type == "JavaTaskError"
    assert "exited with status 2" in result.error.message
    assert "usage" in result.error.message


def test_pi_jar_task_and_pi_task_agree_on_the_shape(harness, pi_tasks):
    harness.engine(tasks_dir=pi_tasks)
    jar_id = harness.submit("pi_jar_task.py", 20000, 3)
    py_id = harness.submit("pi_task.py", 20000, 3)
    results = harness.results(2)
    for task_id in (jar_id, py_id):
        value = results[task_id].value
        assert set(value) == {"hits", "samples"} and value["samples"] == 20000
        assert abs(4 * value["hits"] / value["samples"] - 3.14159) < 0.1


def test_pi_jar_task_builds_the_jar_from_staged_source(harness, tmp_path):
    tasks = tmp_path / "src-tasks"
    tasks.mkdir()
    shutil.copy(PI / "Pi.java", tasks)
    shutil.copy(PI / "pi_jar_task.py", tasks)
    harness.engine(tasks_dir=tasks)
    harness.submit("pi_jar_task.py", 100)
    result = harness.result(timeout=60)
    assert result.ok, result.error
    assert result.value["samples"] == 100
    assert (tasks / "pi.jar").is_file()


@pytest.mark.parametrize("cold", [False, True], ids=["warm-host", "cold"])
def test_timeout_kills_the_jvm_with_the_worker(harness, pi_tasks, cold):
    jar = str((pi_tasks / "pi.jar").resolve())
    marker = jar if cold else "JvmHost"  # the warm host's command line names its class

    def jvms():
        found = []
        for proc in psutil.Process(engine.worker_pid).children(recursive=True):
            try:
                if marker in proc.cmdline():
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    engine = harness.engine(tasks_dir=pi_tasks)
    kwargs = {"cold": True} if cold else {}
    harness.submit("pi.jar", 10**15, 1, timeout=3.0, kwargs=kwargs)  # would run for days
    end = time.monotonic() + 3.0
    seen = jvms()
    while not seen and time.monotonic() < end:
        time.sleep(0.05)
        seen = jvms()
    assert seen, "the JVM never started"
    result = harness.result()
    assert result.error.type == "TaskTimeoutError"
    _gone, alive = psutil.wait_procs(seen, timeout=10)
    assert not alive
