"""A message never chooses what the JVM loads or runs (issue #15, critical).

Each attack puts a JVM option in ``jvm_args`` of a jar task. On the code before
the fix these ran (the payloads create marker files, which these tests look
for); now each is refused with ``InvalidCommandError`` naming the option, before
any process starts, in relay mode (memory://) and direct mode (zmq://).
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from engine_helpers import NEEDS_JDK, Harness, open_harness

from realtime_batch.engine import build_jar
from realtime_batch.engine.tasks import InvalidCommandError, JvmOptionPolicy
from realtime_batch.protocol import ResultRecord

PI = Path(__file__).resolve().parents[2] / "examples" / "pi"

pytestmark = [*NEEDS_JDK, pytest.mark.usefixtures("no_leaked_processes")]

_HOG = """
import java.util.ArrayList;
public final class Hog {
    public static void main(String[] args) {
        ArrayList<long[]> keep = new ArrayList<>();
        while (true) { keep.add(new long[1 << 20]); }
    }
}
"""

_EVIL = """
import java.nio.file.Files;
import java.nio.file.Path;
public final class Evil {
    public static void main(String[] args) throws Exception {
        Files.writeString(Path.of(%s), "pwned");
        System.out.println("pwned");
    }
}
"""


@pytest.fixture(scope="module")
def jars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pi.jar and hog.jar (allocates until OutOfMemoryError); evil.jar writes ``evil-ran``."""
    root = tmp_path_factory.mktemp("sec-jvm-jars")
    (root / "Hog.java").write_text(_HOG)
    marker = root / "evil-ran"
    (root / "Evil.java").write_text(_EVIL % f'"{marker}"')
    return {
        "pi": build_jar(PI / "Pi.java", root / "pi.jar"),
        "hog": build_jar(root / "Hog.java", root / "hog.jar"),
        "evil": build_jar(root / "Evil.java", root / "outside" / "evil.jar"),
        "evil_marker": marker,
    }


@pytest.fixture
def tasks_dir(tmp_path: Path, jars: dict[str, Path]) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(jars["pi"], tasks / "pi.jar")
    shutil.copy(jars["hog"], tasks / "hog.jar")
    jars["evil_marker"].unlink(missing_ok=True)
    return tasks


@pytest.fixture(params=["relay", "direct"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, tasks_dir: Path) -> Iterator[Harness]:
    with open_harness(request.param, tasks_dir, tmp_path / "wd") as h:
        yield h


def _run(harness: Harness, jar: str, jvm_args: list[str], *args: object) -> ResultRecord:
    harness.submit(jar, *args, kwargs={"jvm_args": jvm_args})
    return harness.result(timeout=60)


def _assert_refused(result: ResultRecord, option: str) -> None:
    assert result.error is not None, f"{option!r} was run: {result.value!r}"
    assert result.error.type == "InvalidCommandError", result.error
    assert repr(option) in result.error.message
    assert result.attempt == 1


def _refused(harness: Harness, jar: str, option: str, *args: object) -> None:
    _assert_refused(_run(harness, jar, [option], *args), option)


def test_on_out_of_memory_error_command_is_refused(harness, tasks_dir, tmp_path):
    marker = tmp_path / "oom-ran"
    harness.engine(tasks_dir=tasks_dir)
    assert _run(harness, "hog.jar", ["-Xmx16m"]).error.type == "JavaTaskError"  # it runs out
    option = f"-XX:OnOutOfMemoryError=touch {marker}"
    result = _run(harness, "hog.jar", ["-Xmx16m", option])
    assert not marker.exists()  # the shell command did not run
    _assert_refused(result, option)


def test_foreign_classpath_is_refused(harness, tasks_dir, jars):
    harness.engine(tasks_dir=tasks_dir)
    result = _run(harness, "pi.jar", ["-cp", str(jars["evil"]), "Evil"], 10)
    assert not jars["evil_marker"].exists()
    _assert_refused(result, "-cp")


def test_second_jar_option_is_refused(harness, tasks_dir, jars):
    harness.engine(tasks_dir=tasks_dir)
    result = _run(harness, "pi.jar", ["-jar", str(jars["evil"])], 10)
    assert not jars["evil_marker"].exists()
    _assert_refused(result, "-jar")


def test_argument_file_is_refused_and_its_content_not_shown(harness, tasks_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-token\n")
    harness.engine(tasks_dir=tasks_dir)
    result = _run(harness, "pi.jar", [f"@{secret}"], 10)
    assert "s3cr3t-token" not in repr(result)
    _assert_refused(result, f"@{secret}")


def test_debugger_agent_is_refused(harness, tasks_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    harness.engine(tasks_dir=tasks_dir)
    option = f"-agentlib:jdwp=transport=dt_socket,server=y,suspend=n,address=127.0.0.1:{port}"
    _refused(harness, "pi.jar", option, 10)


def test_log_file_outside_the_tasks_dir_is_refused(harness, tasks_dir, tmp_path):
    target = tmp_path / "overwritten.log"
    harness.engine(tasks_dir=tasks_dir)
    result = _run(harness, "pi.jar", [f"-Xlog:gc:file={target}"], 10)
    assert not target.exists()
    _assert_refused(result, f"-Xlog:gc:file={target}")


@pytest.mark.parametrize(
    "option",
    ["-Xmx", "-Xmx0", "-Xmx512x", "-Xmx99999999999g", "-Xss2g", "-Xmx512m ", " -Xmx512m",
     "-Xmx512m\n-XX:+PrintFlagsFinal", "-XX:MaxRAM=1g", "-D", "-Dfoo=bar", "-version", ""],
)  # fmt: skip
def test_policy_refuses_anything_but_bounded_sizes(option):
    policy = JvmOptionPolicy(max_heap=1 << 30)
    with pytest.raises(InvalidCommandError, match="JVM option"):
        policy.check([option])


def test_policy_refuses_heaps_over_its_maximum():
    policy = JvmOptionPolicy(max_heap=1 << 30)
    assert policy.check(["-Xmx1g", "-Xms512m", "-Xss1m"]) == ["-Xmx1g", "-Xms512m", "-Xss1m"]
    with pytest.raises(InvalidCommandError, match="-Xmx2g"):
        policy.check(["-Xmx2g"])


def test_policy_refuses_what_is_not_a_list_of_strings():
    policy = JvmOptionPolicy()
    for bad in ("-Xmx1g", [1], None, {"-Xmx1g": 1}):
        with pytest.raises(InvalidCommandError):
            policy.check(bad)


def test_sizing_options_still_work(harness, tasks_dir):
    harness.engine(tasks_dir=tasks_dir)
    harness.submit("pi.jar", 1000, 7, kwargs={"jvm_args": ["-Xmx64m", "-Xms16m", "-Xss1m"]})
    result = harness.result(timeout=60)
    assert result.ok, result.error
    assert result.value.split()[1] == "1000"


def test_operator_widened_option_works(harness, tasks_dir):
    policy = JvmOptionPolicy(allow=[r"-XX:\+UseSerialGC"])
    harness.engine(tasks_dir=tasks_dir, jvm_options=policy)
    harness.submit("pi.jar", 1000, 7, kwargs={"jvm_args": ["-XX:+UseSerialGC", "-Xmx64m"]})
    result = harness.result(timeout=60)
    assert result.ok, result.error
    _refused(harness, "pi.jar", "-XX:+UseParallelGC", 1000)


def test_message_cannot_widen_the_list(harness, tasks_dir, jars):
    harness.engine(tasks_dir=tasks_dir)
    harness.submit("pi.jar", 10, kwargs={"jvm_args": ["-Xmx64m"], "allow_jvm_option": [".*"]})
    result = harness.result(timeout=60)
    assert result.error is not None and result.error.type == "InvalidCommandError"
    assert "allow_jvm_option" in result.error.message


def test_jar_arguments_stay_arguments_of_main(harness, tasks_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("12345\n")
    harness.engine(tasks_dir=tasks_dir)
    harness.submit("pi.jar", f"@{secret}")  # after -jar: main's argument, never an @file
    result = harness.result(timeout=60)
    assert result.error.type == "JavaTaskError"
    assert f"@{secret}" in result.error.message


@pytest.mark.parametrize("url", ["zmq://127.0.0.1:0", "memory://sec-jvm-pool"])
def test_local_pool_passes_the_operator_policy_to_its_engines(url, jars, tmp_path):
    """Engine processes (zmq://: the rtbatch engine command line) and threads (memory://)."""
    import realtime_batch as rb
    from realtime_batch.emulator.local_pool import LocalPool

    with LocalPool(
        engines=1,
        transport=url,
        task_files=[jars["pi"]],
        root=tmp_path / "pool",
        allow_jvm_options=[r"-XX:\+UseSerialGC"],
        max_jvm_heap=256 << 20,
    ) as pool, rb.Session(pool) as session:  # fmt: skip
        ok = session.submit("pi.jar", 1000, 7, jvm_args=["-XX:+UseSerialGC", "-Xmx128m"])
        assert ok.result(timeout=60).split()[1] == "1000"
        for option in ("-Xmx512m", "-XX:+UseParallelGC"):
            with pytest.raises(rb.TaskError) as info:
                session.submit("pi.jar", 10, jvm_args=[option]).result(timeout=60)
            assert info.value.remote_type == "InvalidCommandError"
            assert repr(option) in info.value.remote_message


def test_rtbatch_toml_engine_section_reaches_the_local_pool(tmp_path):
    from realtime_batch.config import Config, ConfigError
    from realtime_batch.orchestrator.from_config import open_pool

    config = Config(
        {
            "pool.engines": 0,
            "transport.url": "memory://sec-jvm-config",
            "engine.allow_jvm_options": [r"-XX:\+UseSerialGC"],
            "engine.max_jvm_heap": "2g",
            "engine.max_output": "1m",
        }
    )
    with open_pool(config, root=tmp_path / "pool") as pool:
        assert pool.jvm_options.allow == (r"-XX:\+UseSerialGC",)
        assert pool.jvm_options.max_heap == 2 << 30
        assert pool.max_output == 1 << 20
    config.set("engine.max_output", "lots")
    with pytest.raises(ConfigError, match="lots"):
        open_pool(config, root=tmp_path / "pool2")
