"""The warm JVM host (engine/jvm_host.py + JvmHost.java): one JVM per worker (needs a JDK)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import realtime_batch as rb
from realtime_batch.engine import (
    Engine,
    JavaTaskError,
    JavaTimeoutError,
    build_jar,
    java_runner,
)
from realtime_batch.engine.errors import EngineError
from realtime_batch.engine.java import find_java_tool
from realtime_batch.engine.jvm_host import (
    JvmHost,
    JvmHostDiedError,
    close_shared_host,
    configure_shared_host,
    shared_host,
)

PI = Path(__file__).resolve().parents[2] / "examples" / "pi"

pytestmark = [
    pytest.mark.java,
    pytest.mark.skipif(
        not (shutil.which("javac") and shutil.which("java") and shutil.which("jar")),
        reason="no JDK (javac, java, jar) on PATH",
    ),
]

SOURCES = {
    "Counter": """
        public class Counter {
            static int calls;
            public static void main(String[] args) {
                calls++;
                System.out.println("call " + calls + " args " + String.join(",", args));
            }
        }""",
    "Boom": """
        public class Boom {
            static void explode() { throw new IllegalStateException("boom from the jar"); }
            public static void main(String[] args) {
                System.out.println("about to throw");
                explode();
            }
        }""",
    "Quit": """
        public class Quit {
            public static void main(String[] args) {
                System.out.println("before exit");
                System.err.println("leaving with " + args[0]);
                System.exit(Integer.parseInt(args[0]));
            }
        }""",
    "Hang": """
        public class Hang {
            public static void main(String[] args) throws Exception {
                System.out.println("hanging");
                new java.io.File("hang.started").createNewFile();  // in the host's cwd
                Thread.sleep(Long.MAX_VALUE);
            }
        }""",
    "Big": """
        public class Big {
            public static void main(String[] args) {
                int n = Integer.parseInt(args[0]);
                StringBuilder line = new StringBuilder();
                for (int i = 0; i < n; i++) line.append('x');
                System.out.print(line);
            }
        }""",
    "Rogue": """
        import java.io.FileDescriptor;
        import java.io.FileOutputStream;
        import java.io.PrintStream;
        public class Rogue {
            public static void main(String[] args) throws Exception {
                FileOutputStream raw = new FileOutputStream(FileDescriptor.out);
                raw.write("RTJH garbage on the JVM's own stdout\\n".getBytes());
                raw.flush();
                System.setOut(new PrintStream(raw, true));
                System.out.println("printed after replacing System.out");
            }
        }""",
    "Suicide": """
        public class Suicide {
            public static void main(String[] args) throws Exception {
                String pid = String.valueOf(ProcessHandle.current().pid());
                new ProcessBuilder("kill", "-KILL", pid).start().waitFor();
                Thread.sleep(60_000);
            }
        }""",
    "Hog": """
        import java.util.ArrayList;
        public class Hog {
            public static void main(String[] args) {
                ArrayList<long[]> keep = new ArrayList<>();
                while (true) keep.add(new long[1 << 20]);
            }
        }""",
}


def compile_jar(out_dir: Path, name: str, source: str, manifest: str | None = None) -> Path:
    """Build ``name.jar``; with ``manifest`` text, the jar carries that manifest."""
    src = out_dir / f"{name}.java"
    src.write_text(textwrap.dedent(source))
    jar = out_dir / f"{name.lower()}.jar"
    if manifest is None:
        return build_jar(src, jar, force=True)
    classes = out_dir / f"{name}-classes"
    classes.mkdir(exist_ok=True)
    subprocess.run([find_java_tool("javac"), "-d", str(classes), str(src)], check=True)
    (out_dir / f"{name}.mf").write_text(manifest)
    jar_tool = find_java_tool("jar")
    subprocess.run(
        [jar_tool, "cfm", str(jar), str(out_dir / f"{name}.mf"), "-C", str(classes), "."],
        check=True,
    )
    return jar


@pytest.fixture(scope="module")
def jars(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("host-jars")
    built = {name.lower(): compile_jar(out, name, src) for name, src in SOURCES.items()}
    built["pi"] = build_jar(PI / "Pi.java", out / "pi.jar")
    iso = out / "iso"
    iso.mkdir()
    built["isolated"] = compile_jar(
        iso, "Counter", SOURCES["Counter"], "Main-Class: Counter\nRtbatch-Isolate: true\n"
    )
    nomain = out / "nomain"
    nomain.mkdir()
    built["nomain"] = compile_jar(nomain, "Counter", SOURCES["Counter"], "Created-By: test\n")
    return built


@pytest.fixture
def tasks(tmp_path, jars) -> Path:
    """A staged tasks directory holding every test jar (``counter.jar``, ``pi.jar``...)."""
    directory = tmp_path / "tasks"
    directory.mkdir()
    for name, jar in jars.items():
        shutil.copy(jar, directory / f"{name}.jar")
    return directory


@pytest.fixture
def host(tmp_path, no_leaked_processes):
    with JvmHost(tmp_path) as jvm:
        yield jvm


@pytest.fixture
def shared(no_leaked_processes):
    """``java_runner`` calls in this process use its shared host: stopped after the test."""
    close_shared_host()
    yield
    close_shared_host()


def test_warm_call_returns_stdout(host, tasks):
    assert host.call(tasks / "counter.jar", ["a", 2]) == "call 1 args a,2\n"
    hits, samples = map(int, host.call(tasks / "pi.jar", [1000, 42]).split())
    assert samples == 1000 and 700 < hits < 880


def test_static_state_survives_calls_and_isolate_resets_it(host, tasks):
    jar = tasks / "counter.jar"
    assert host.call(jar).startswith("call 1 ")
    assert host.call(jar).startswith("call 2 ")
    assert host.call(jar, isolate=True).startswith("call 1 ")  # a fresh class loader
    assert host.call(jar).startswith("call 3 ")  # the cached loader is untouched


def test_a_jar_can_ask_for_isolation_in_its_manifest(host, tasks):
    jar = tasks / "isolated.jar"
    assert [host.call(jar).split()[1] for _ in range(3)] == ["1", "1", "1"]


def test_jars_do_not_share_static_state(host, tasks):
    assert host.call(tasks / "counter.jar").startswith("call 1 ")
    assert host.call(tasks / "isolated.jar").startswith("call 1 ")  # same class name, own loader
    assert host.call(tasks / "counter.jar").startswith("call 2 ")


def test_a_changed_jar_is_reloaded(host, tasks, tmp_path):
    jar = tasks / "counter.jar"
    assert host.call(jar) == "call 1 args \n"
    assert host.call(jar) == "call 2 args \n"
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    source = SOURCES["Counter"].replace('"call "', '"version 2, call "')
    new_jar = compile_jar(rebuilt, "Counter", source)
    os.replace(new_jar, jar)  # staged again: new content, new mtime
    assert host.call(jar) == "version 2, call 1 args \n"


def test_a_jar_without_main_class_is_refused(host, tasks):
    with pytest.raises(JavaTaskError, match=r"nomain\.jar cannot be run: .*no Main-Class"):
        host.call(tasks / "nomain.jar")
    assert host.call(tasks / "counter.jar").startswith("call 1 ")


def test_exception_carries_the_stack_trace_and_the_host_survives(host, tasks):
    host.call(tasks / "counter.jar")
    pid = host.pid
    with pytest.raises(JavaTaskError) as info:
        host.call(tasks / "boom.jar")
    message = str(info.value)
    assert "java.lang.IllegalStateException: boom from the jar" in message
    assert "at Boom.explode(Boom.java" in message and "at Boom.main(Boom.java" in message
    assert "JvmHost" not in message  # the host's own frames are cut
    assert info.value.stdout == "about to throw\n"
    assert host.pid == pid
    assert host.call(tasks / "counter.jar").startswith("call 2 ")


def test_a_jar_writing_to_the_jvm_stdout_cannot_break_the_protocol(host, tasks):
    assert host.call(tasks / "rogue.jar") == ""  # fd 1 is not the reply channel
    pid = host.pid
    assert host.call(tasks / "counter.jar").startswith("call 1 ")  # System.out is captured again
    assert host.pid == pid


def test_system_exit_is_an_error_with_its_status_and_a_fresh_host(host, tasks):
    host.call(tasks / "counter.jar")
    pid = host.pid
    with pytest.raises(JavaTaskError, match=r"quit\.jar exited with status 3: leaving with 3") as e:
        host.call(tasks / "quit.jar", [3])
    assert e.value.returncode == 3 and e.value.stdout == "before exit\n"
    assert host.call(tasks / "counter.jar").startswith("call 1 ")  # static state is gone
    assert host.pid not in (None, pid)


def test_system_exit_zero_is_a_success_like_a_cold_jvm(host, tasks):
    assert host.call(tasks / "quit.jar", [0]) == "before exit\n"
    assert java_runner("quit.jar", 0, tasks_dir=tasks, cold=True) == "before exit\n"
    assert host.call(tasks / "counter.jar").startswith("call 1 ")


def test_a_hung_call_is_killed_at_its_timeout(host, tasks):
    host.call(tasks / "counter.jar")
    process = psutil.Process(host.pid)
    with pytest.raises(JavaTimeoutError, match=r"hang\.jar timed out after 1\.0 s"):
        host.call(tasks / "hang.jar", timeout=1.0)
    assert not process.is_running()  # killed and reaped
    assert host.call(tasks / "counter.jar").startswith("call 1 ")


def test_out_of_memory_ends_the_jvm_and_the_next_call_gets_a_fresh_one(tmp_path, tasks):
    with JvmHost(tmp_path, jvm_options=["-Xmx32m"]) as small:
        pid = (small.call(tasks / "counter.jar"), small.pid)[1]
        with pytest.raises(JavaTaskError, match=r"JVM host exited with status 3.*OutOfMemory"):
            small.call(tasks / "hog.jar")
        assert small.call(tasks / "counter.jar").startswith("call 1 ")
        assert small.pid != pid


def test_a_jvm_killed_during_a_call_is_an_error_naming_the_signal(host, tasks):
    host.call(tasks / "counter.jar")
    pid = host.pid
    with pytest.raises(
        JvmHostDiedError, match=r"suicide\.jar: the JVM host was killed by signal SIGKILL"
    ):
        host.call(tasks / "suicide.jar")
    assert host.call(tasks / "counter.jar").startswith("call 1 ")
    assert host.pid != pid


def test_jvm_death_in_a_task_is_retried_like_a_worker_crash(harness, tasks):
    engine = harness.engine(tasks_dir=tasks, jvm_host_options=["-Xmx32m"])
    first_worker = engine.worker_pid
    harness.submit("hog.jar", max_retries=1)
    result = harness.result(timeout=60)
    assert result.error.type == "WorkerCrashedError"
    assert "worker died with exit code 3" in result.error.message  # the JVM's status
    assert "OutOfMemoryError" in result.error.traceback
    assert result.attempt == 2  # the first death was retried
    harness.submit("counter.jar")
    assert harness.result().value == "call 1 args \n"
    assert engine.worker_pid not in (None, first_worker)


def test_a_host_that_cannot_start_is_an_error_not_a_crash(tmp_path, tasks, no_leaked_processes):
    with JvmHost(tmp_path, jvm_options=["-XX:+NoSuchOptionAnywhere"]) as broken:
        expected = r"JVM host did not start \(exited with status 1\).*NoSuchOptionAnywhere"
        with pytest.raises(JavaTaskError, match=expected) as e:
            broken.call(tasks / "counter.jar")
        assert not isinstance(e.value, JvmHostDiedError)  # a worker would not crash-loop


def test_a_jvm_killed_between_calls_is_replaced(host, tasks):
    host.call(tasks / "counter.jar")
    jvm = psutil.Process(host.pid)
    jvm.kill()
    jvm.wait(timeout=10)
    # Died between calls: the next call starts a fresh host and runs normally.
    assert host.call(tasks / "counter.jar").startswith("call 1 ")
    assert host.pid != jvm.pid


def test_output_above_the_bound_is_cut_with_a_marker(tmp_path, tasks, no_leaked_processes):
    with JvmHost(tmp_path, output_limit=1000) as bounded:
        out = bounded.call(tasks / "big.jar", [5000])
        assert out.startswith("x" * 1000)
        assert "x" * 1001 not in out
        assert out.endswith("\n[... 4000 bytes dropped]\n")
        assert bounded.call(tasks / "big.jar", [10]) == "x" * 10  # the next call starts clean


@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "threaded"])
def test_the_host_dies_with_its_parent_during_a_call(tmp_path, tasks, threads, no_leaked_processes):
    # The parent dies while the host runs a call, so the host never reads the end of its
    # request pipe. A threaded parent cannot use PR_SET_PDEATHSIG (no preexec_fn): then
    # the host's own watcher thread must end it.
    script = textwrap.dedent(f"""
        import threading, time
        from realtime_batch.engine.jvm_host import JvmHost
        if {threads!r}:
            threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
        host = JvmHost({str(tmp_path)!r})
        host.call({str(tasks / "counter.jar")!r})
        print(host.pid, flush=True)
        host.call({str(tasks / "hang.jar")!r})
    """)
    started = tmp_path / "hang.started"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        jvm = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "hang.jar never started"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    jvm.wait(timeout=10)  # raises psutil.TimeoutExpired if the JVM outlived its parent


def test_java_runner_uses_the_shared_host_and_cold_spawns_a_jvm(tasks, shared):
    assert java_runner("counter.jar", tasks_dir=tasks, cold=True).startswith("call 1 ")
    assert java_runner("counter.jar", tasks_dir=tasks, cold=True).startswith("call 1 ")
    assert shared_host(os.getcwd()).pid is None  # cold calls never started the host
    assert java_runner("counter.jar", tasks_dir=tasks).startswith("call 1 ")
    assert java_runner("counter.jar", tasks_dir=tasks).startswith("call 2 ")
    assert shared_host(os.getcwd()).pid is not None


def test_java_runner_with_other_jvm_args_runs_cold(tasks, shared):
    for _ in range(2):
        out = java_runner("counter.jar", tasks_dir=tasks, jvm_args=["-Xmx64m"])
        assert out.startswith("call 1 ")
    assert shared_host(os.getcwd()).pid is None


def test_configure_shared_host_sets_its_bound_and_refuses_bad_settings(tasks, shared):
    configure_shared_host(output_limit=100)
    try:
        assert java_runner("big.jar", 500, tasks_dir=tasks).endswith("\n[... 400 bytes dropped]\n")
    finally:
        configure_shared_host()
    assert java_runner("big.jar", 500, tasks_dir=tasks) == "x" * 500
    with pytest.raises(ValueError, match="output_limit must be at least 1"):
        configure_shared_host(output_limit=0)
    with pytest.raises(ValueError, match="JVM host option '-cp'"):
        configure_shared_host(["-cp", "/tmp/other.jar"])


def test_jar_command_runs_in_the_host_and_keeps_its_errors(harness, tasks):
    harness.engine(tasks_dir=tasks)
    first = harness.submit("counter.jar")
    assert harness.result().value == "call 1 args \n", first
    harness.submit("counter.jar", "x")
    assert harness.result().value == "call 2 args x\n"
    harness.submit("counter.jar", kwargs={"isolate": True})
    assert harness.result().value == "call 1 args \n"
    harness.submit("boom.jar")
    error = harness.result().error
    assert error.type == "JavaTaskError" and "at Boom.explode" in error.message
    harness.submit("quit.jar", 4)
    error = harness.result().error
    assert error.type == "JavaTaskError" and "exited with status 4" in error.message
    harness.submit("counter.jar")
    assert harness.result().value == "call 1 args \n"  # a fresh host after the exit


def test_jar_command_refuses_unknown_options(harness, tasks):
    harness.engine(tasks_dir=tasks)
    harness.submit("counter.jar", kwargs={"classpath": "/tmp"})
    error = harness.result().error
    assert error.type == "InvalidCommandError" and "classpath" in error.message


@pytest.mark.parametrize("option", ["isolate", "cold"])
def test_jar_command_refuses_a_flag_that_is_not_a_boolean(harness, tasks, option):
    harness.engine(tasks_dir=tasks)
    harness.submit("counter.jar", kwargs={option: "false"})
    error = harness.result().error
    assert error.type == "InvalidCommandError"
    assert f"{option}= must be true or false, got 'false'" in error.message


def test_engine_refuses_a_host_option_that_is_not_an_option(tmp_path):
    with pytest.raises(EngineError, match="JVM host option 'Evil'"):
        Engine("memory://", "q", tmp_path, jvm_host_options=["Evil"])
    with pytest.raises(EngineError, match="JVM host option '-jar'"):
        Engine("memory://", "q", tmp_path, jvm_host_options=["-jar"])


@pytest.mark.parametrize("transport", ["memory://", "zmq://127.0.0.1:0"])
def test_session_runs_jars_in_the_warm_host(transport, jars, no_leaked_processes):
    files = [jars["pi"], jars["counter"], PI / "pi_jar_task.py"]
    with (
        rb.LocalPool(engines=1, transport=transport, task_files=files) as pool,
        rb.Session(pool) as session,
    ):
        value = session.submit("pi_jar_task.py", 2000, 5).result(timeout=60)
        assert value["samples"] == 2000 and 0 < value["hits"] < 2000
        hits, samples = map(int, session.submit("pi.jar", 1000, 42).result(timeout=60).split())
        assert samples == 1000 and 0 < hits < 1000
        counts = [session.submit("counter.jar").result(timeout=60) for _ in range(2)]
        assert counts == ["call 1 args \n", "call 2 args \n"]  # one JVM kept its state
        assert session.submit("counter.jar", isolate=True).result(timeout=60) == "call 1 args \n"
        assert session.submit("counter.jar", cold=True).result(timeout=60) == "call 1 args \n"
        assert session.submit("counter.jar").result(timeout=60) == "call 3 args \n"
