"""Task-side compatibility: ``engine.azbatchengine`` and ``java_runner``'s command-list form."""

from __future__ import annotations

import math
import shutil
import uuid
from pathlib import Path

import pytest

import realtime_batch as rb
from realtime_batch.engine import Engine, InvalidCommandError, JvmOptionPolicy, TaskContext
from realtime_batch.engine.jvm_host import java_runner
from realtime_batch.transport import open_transport

HERE = Path(__file__).resolve().parent
NEEDS_JDK = pytest.mark.skipif(
    not (shutil.which("javac") and shutil.which("java") and shutil.which("jar")),
    reason="no JDK (javac, java, jar) on PATH",
)


@pytest.fixture
def staged(tmp_path):
    """A tasks directory holding a file named pi.jar (never run by the refusal tests)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "pi.jar").write_bytes(b"not a jar")
    (tmp_path / "outside.jar").write_bytes(b"not a jar")
    return tasks


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bash", "-c", "id"], "only 'java'"),
        (["/usr/bin/java", "-jar", "pi.jar"], "only 'java'"),
        (["java", "-cp", ".", "-jar", "pi.jar"], "JVM option '-cp' is not allowed"),
        (["java", "-cp", ".", "Pi"], "no '-jar JAR'"),
        (["java", "-XX:+UseG1GC", "-jar", "pi.jar"], r"JVM option '-XX:\+UseG1GC' is not allowed"),
        (["java", "-javaagent:evil.jar", "-jar", "pi.jar"], "is not allowed"),
        (["java", "-Xmx8g", "-jar", "pi.jar"], "over this engine's maximum"),
        (["java", "-Xmx64m", "pi.jar", "100"], "-jar"),
        (["java", "-jar"], "names no jar"),
        (["java", "-jar", "../outside.jar"], "'..' path components are not allowed"),
        (["java", "-jar", "pi.jar; rm -rf /"], "only a relative file name"),
        (["java", 7, "-jar", "pi.jar"], "is not a string"),
        ([], "empty"),
    ],
)
def test_command_list_refusals(staged, argv, message, monkeypatch):
    from realtime_batch.engine import java

    monkeypatch.setattr(java, "_policy", {"jvm": JvmOptionPolicy(max_heap=4 << 30)})
    with pytest.raises(InvalidCommandError, match=message):
        java_runner(argv, tasks_dir=staged)


def test_command_list_takes_no_further_arguments(staged):
    with pytest.raises(TypeError, match="command list"):
        java_runner(["java", "-jar", "pi.jar"], "100", tasks_dir=staged)
    with pytest.raises(TypeError, match="command list"):
        java_runner(["java", "-jar", "pi.jar"], jvm_args=["-Xmx64m"], tasks_dir=staged)


@pytest.mark.java
@NEEDS_JDK
def test_command_list_returns_output_lines(tmp_path):
    from realtime_batch.engine import build_jar

    tasks = tmp_path / "tasks"
    build_jar(HERE / "PiEstimate.java", tasks / "pi.jar")
    context = TaskContext("node-1", str(tasks), str(tmp_path))
    for cold in (False, True):
        lines = context.java_runner(["java", "-Xmx64m", "-jar", "pi.jar", "1000"], cold=cold)
        assert isinstance(lines, list) and len(lines) == 1
        assert abs(float(lines[0]) - math.pi) < 0.002
    text = context.java_runner("pi.jar", 1000)  # today's form is unchanged
    assert isinstance(text, str) and text.endswith("\n")


def test_engines_policy_reaches_the_task_worker(no_leaked_processes, tmp_path):
    """The engine's --max-jvm-heap applies to a command list a message brought."""
    jar = tmp_path / "pi.jar"
    jar.write_bytes(b"not a jar")  # refused before anything runs
    files = [HERE / "tasks" / "pi_runner.py", jar]
    url = f"memory://migration-{uuid.uuid4().hex}"
    pool = rb.LocalPool(engines=1, transport=url, task_files=files, max_jvm_heap=1 << 30)
    with pool, rb.JobManager("client_1", pool.job, pool) as jm:
        future = jm.submit_task("0", "pi_runner.py", "java -Xmx4096m -jar pi.jar 100")
        with pytest.raises(rb.TaskError) as info:
            future.result(timeout=60)
    assert info.value.remote_type == "InvalidCommandError"
    assert "over this engine's maximum of 1g" in info.value.remote_message


USER_ENGINE = '''\
class AzureBatchEngine:
    """The user's own class, not realtime-batch's."""

    OWNER = "user"
'''

WHICH_TASK = """\
from engine.azbatchengine import AzureBatchEngine


def do_action(engine, args):
    return getattr(AzureBatchEngine, "OWNER", "realtime-batch"), "no error"
"""


@pytest.mark.parametrize("own_package", [True, False])
def test_users_engine_package_wins(tmp_path, own_package, no_leaked_processes):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "which.py").write_text(WHICH_TASK)
    if own_package:
        (tasks / "engine").mkdir()
        (tasks / "engine" / "__init__.py").write_text("")
        (tasks / "engine" / "azbatchengine.py").write_text(USER_ENGINE)
    transport = open_transport(f"memory://migration-{uuid.uuid4().hex}")
    engine = Engine(transport, "tasks", tasks, work_dir=tmp_path)
    try:
        engine.start()
        with rb.JobManager("client_1", "job", transport) as jm:
            owner = jm.submit_task("0", "which.py", "").result(timeout=60)
    finally:
        engine.stop(timeout=30)
        transport.close()
    assert owner == ("user" if own_package else "realtime-batch")


def test_finder_serves_only_when_no_engine_of_the_users_exists(monkeypatch):
    import sys
    import types

    from realtime_batch.engine.prototype import PrototypeFinder

    finder = PrototypeFinder()
    monkeypatch.delitem(sys.modules, "engine", raising=False)
    assert finder.find_spec("engine", None) is not None
    assert finder.find_spec("engine.azbatchengine", None) is None  # no engine imported yet
    assert finder.find_spec("enginex", None) is None
    users = types.ModuleType("engine")
    monkeypatch.setitem(sys.modules, "engine", users)
    assert finder.find_spec("engine.azbatchengine", ["somewhere"]) is None  # the user's own
    ours = types.ModuleType("engine")
    ours.__loader__ = finder
    monkeypatch.setitem(sys.modules, "engine", ours)
    spec = finder.find_spec("engine.azbatchengine", [])
    module = types.ModuleType(spec.name)
    finder.exec_module(module)
    assert module.AzureBatchEngine is TaskContext
