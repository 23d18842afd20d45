"""End to end: Session + LocalPool with real engine processes over zmq, and in-process
engines over memory://. Every test checks that no process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import relay_engine_main

import realtime_batch as rb
from realtime_batch.protocol import ReplyTo, TaskRecord, encode_task, replace
from realtime_batch.transport import Message, dead_letter_queue, open_transport

TASKS = Path(__file__).parent / "tasks"
TASK_FILES = [TASKS / n for n in ("echo.py", "boom.py", "die.py", "nap.py", "seed_style.py")]
INPUTS = [TASKS / "input.txt"]

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


@pytest.fixture(scope="module", params=["direct", "relay"])
def zmq_pool(request):
    """Two engine processes over zmq://, their task workers fed directly (what zmq://
    gets) or, through tests/relay_engine_main.py, by the engine (relay)."""
    with relay_engine_main.pool(
        request.param, engines=2, task_files=TASK_FILES, input_files=INPUTS, lock_duration=5
    ) as pool:
        yield pool


def test_engines_feed_their_workers_as_the_transport_allows(zmq_pool):
    with rb.Session(zmq_pool) as s:
        assert s.submit("echo.py", 1).result(timeout=30)["args"] == [1]
    logs = [p.read_text() for p in sorted(zmq_pool.root.glob("node-*/engine.log"))]
    assert len(logs) == 2
    for log in logs:
        relayed = isinstance(zmq_pool, relay_engine_main.RelayLocalPool)
        assert ("(direct worker)" in log) != relayed, log


def test_many_tasks_each_result_exactly_once(zmq_pool):
    with rb.Session(zmq_pool) as s:
        futures = s.map("echo.py", range(500))
        values = [f.result(timeout=60)["args"][0] for f in futures]
        assert values == list(range(500))
        results = s.results()
    assert sorted(int(r.task_id) for r in results) == sorted(int(f.task_id) for f in futures)
    assert len({r.engine for r in results}) >= 1
    assert all(r.ok and r.attempt == 1 for r in results)


def test_two_sessions_at_once_in_two_processes(zmq_pool, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(f"""
        import realtime_batch as rb
        with rb.Session({zmq_pool.transport_url!r}, job={zmq_pool.job!r}, name="other") as s:
            fs = s.map("echo.py", range(1000, 1100))
            print(sum(f.result(timeout=60)["args"][0] for f in fs))
    """)
    )
    other = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        with rb.Session(zmq_pool) as s:
            mine = [f.result(timeout=60)["args"][0] for f in s.map("echo.py", range(100))]
        out, _ = other.communicate(timeout=90)
    finally:
        other.kill()
        other.wait()
    assert mine == list(range(100))
    assert int(out.strip()) == sum(range(1000, 1100))


def test_failures_come_back_as_errors_and_the_engines_carry_on(zmq_pool):
    with rb.Session(zmq_pool) as s:
        raising = s.submit("boom.py", "kaput")
        hanging = s.submit("nap.py", 30, timeout=1)
        dying = s.submit("die.py", max_retries=0)
        unknown = s.submit("nope.py")
        traversal = s.submit("../secrets.py")
        absolute = s.submit("/bin/sh")
        shell = s.submit("echo.py; rm -rf /")
        with pytest.raises(rb.TaskError) as info:
            raising.result(timeout=30)
        assert info.value.remote_type == "ValueError" and "kaput" in str(info.value)
        with pytest.raises(rb.TaskError, match="Timeout"):
            hanging.result(timeout=30)
        with pytest.raises(rb.TaskError, match="WorkerCrashed"):
            dying.result(timeout=30)
        for bad in (unknown, traversal, absolute, shell):
            with pytest.raises(rb.TaskError):
                bad.result(timeout=30)
        assert s.submit("echo.py", "still alive").result(timeout=30)["args"] == ["still alive"]


def test_seed_style_task_runs_in_the_staged_working_directory(zmq_pool):
    with rb.Session(zmq_pool) as s:
        value = s.submit("seed_style.py", "a", "b").result(timeout=30)
    assert value == {"cwd_has_input": True, "args": ["a", "b"]}


def test_malformed_task_message_is_dead_lettered_and_engine_lives(zmq_pool):
    with open_transport(zmq_pool.transport_url) as t:
        t.send("tasks", Message(b"\x00not json at all"))
        dead = t.receive(dead_letter_queue("tasks"), timeout=30)
        assert dead and dead[0].message.body == b"\x00not json at all"
        assert dead[0].message.properties["DeadLetterReason"]
        t.complete(dead[0])
    with rb.Session(zmq_pool) as s:
        assert s.submit("echo.py", 1).result(timeout=30)["args"] == [1]


def test_malformed_task_with_known_sender_gets_an_error_result(zmq_pool):
    with rb.Session(zmq_pool) as s, open_transport(zmq_pool.transport_url) as t:
        future = s.submit("nap.py", 0)  # reserve a future, then spoof its bad twin
        future.result(timeout=30)
        bad = TaskRecord(
            session=s.id,
            job=s.job,
            task="spoof",
            command="echo.py",
            reply_to=ReplyTo(s.results_queue, s.id),
            session_key=s._session_key,  # as the session writes its tasks
        )
        body = encode_task(replace(bad, v=99))  # a version this side does not speak
        with s._lock:  # register the id so the session accepts its result
            from realtime_batch.orchestrator.session import TaskFuture

            spoof = TaskFuture(s, "spoof")
            s._futures["spoof"] = spoof
        t.send("tasks", Message(body))
        with pytest.raises(rb.TaskError, match="ProtocolError"):
            spoof.result(timeout=30)


def test_close_with_1000_pending_tasks_does_not_wait_for_them(zmq_pool):
    """The prototype's close waited for the work; here it cancels the futures and returns.

    The work left is 1000 one-second naps (minutes on any pool), so the bound below tells
    "waited" from "did not" by far more than a loaded machine's noise. (This module's last
    test on the pool: the naps die with it.)
    """
    s = rb.Session(zmq_pool)
    futures = [s.submit("nap.py", 1.0) for _ in range(1000)]
    start = time.monotonic()
    s.close()
    assert time.monotonic() - start < 30.0
    assert all(f.cancelled() for f in futures)


def test_resize_up_and_down():
    with rb.LocalPool(engines=1, task_files=TASK_FILES) as pool:
        pool.resize(3)
        assert pool.engines == 3 and len(set(pool.engine_pids())) == 3
        pool.resize(1)
        assert pool.engines == 1
        with rb.Session(pool) as s:
            assert s.submit("echo.py", 7).result(timeout=30)["args"] == [7]
        assert len(pool.engine_pids()) == 1


def test_dead_engine_is_restarted():
    with rb.LocalPool(engines=1, task_files=TASK_FILES) as pool:
        [pid] = pool.engine_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (pool.restarts < 1 or pool.engines < 1):
            time.sleep(0.1)
        assert pool.restarts >= 1 and pool.engine_pids() != [pid]
        with rb.Session(pool) as s:
            assert s.submit("echo.py", 1).result(timeout=30)["args"] == [1]
        assert pool.engine_pids(ready=True) == pool.engine_pids()


def test_an_engine_being_started_is_not_listed_as_ready(monkeypatch):
    with rb.LocalPool(engines=1, task_files=TASK_FILES) as pool:
        assert pool.engine_pids(ready=True) == pool.engine_pids()
        # the next engine's ready line never comes: it is listed, not ready
        monkeypatch.setattr("realtime_batch.emulator.local_pool._READY_TIMEOUT", 10.0)
        monkeypatch.setattr(pool, "_spawn", _spawn_silent(pool))
        errors: list[BaseException] = []

        def grow() -> None:
            try:
                pool.resize(2)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=grow)
        thread.start()
        deadline = time.monotonic() + 5
        while len(pool.engine_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool.engine_pids()) == 2 and len(pool.engine_pids(ready=True)) == 1
        thread.join(30)
        assert errors and "did not start" in str(errors[0])


def test_processes_are_gone_after_an_exception_in_the_with_body():
    pids = []
    with (
        pytest.raises(RuntimeError, match="user bug"),
        rb.LocalPool(engines=2, task_files=TASK_FILES) as pool,
    ):
        pids = [*pool.engine_pids(), pool.broker_pid]
        raise RuntimeError("user bug")
    assert pids and not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids
    )


def test_processes_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        import realtime_batch as rb
        pool = rb.LocalPool(engines=2, task_files=[{str(TASKS / "echo.py")!r}])
        print(" ".join(map(str, [*pool.engine_pids(), pool.broker_pid])), flush=True)
        time.sleep(120)
    """)
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [
                p
                for p in pids
                if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            ]
            time.sleep(0.2)
        assert alive == []
    finally:
        parent.kill()
        parent.wait()


def test_memory_mode_runs_engines_in_process():
    with rb.LocalPool(engines=2, transport="memory://pool-test", task_files=TASK_FILES) as pool:
        assert pool.engine_pids() == []
        with rb.Session(pool) as s:
            values = [f.result(timeout=30)["args"][0] for f in s.map("echo.py", range(200))]
            assert values == list(range(200))
            with pytest.raises(rb.TaskError):
                s.submit("boom.py").result(timeout=30)


def test_missing_task_file_is_a_clear_error(tmp_path):
    from realtime_batch.orchestrator import OrchestratorError

    with pytest.raises(OrchestratorError, match="no such file"):
        rb.LocalPool(engines=1, task_files=[tmp_path / "absent.py"])


def test_repr_does_not_show_a_connection_string_key():
    pool = rb.LocalPool.__new__(rb.LocalPool)  # repr only needs these fields
    pool._url = "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=k;SharedAccessKey=s3cr3t"
    pool._job = "j"
    pool._engines = []
    import threading

    pool._lock = threading.RLock()
    assert "s3cr3t" not in repr(pool) and "SharedAccessKeyName=k" in repr(pool)


def test_a_stopping_process_gets_one_sigterm(tmp_path):
    """close() signals every engine, then waits on each with stop(): an engine takes a
    second SIGTERM as "stop now, give the running task back", so stop() must not
    send another one."""
    from realtime_batch.emulator.local_pool import _Proc

    script = tmp_path / "count_terms.py"
    script.write_text(
        textwrap.dedent(f"""
        import signal, sys, time
        count = []
        def handler(signum, frame):
            count.append(signum)
            open({str(tmp_path / "terms")!r}, "w").write(str(len(count)))
        signal.signal(signal.SIGTERM, handler)
        print("READY", flush=True)
        while not count:
            time.sleep(0.01)
        time.sleep(1.0)  # a graceful stop takes a moment; a second SIGTERM would land here
        sys.exit(0)
        """)
    )
    proc = _Proc([sys.executable, str(script)], cwd=tmp_path, log_path=tmp_path / "log",
                 ready_prefix="READY", env=dict(os.environ))  # fmt: skip
    proc.wait_ready(30, "the script")
    proc.signal(signal.SIGTERM)
    time.sleep(0.3)  # as when close() waits on another engine first
    proc.stop(5)
    assert (tmp_path / "terms").read_text() == "1"


@pytest.mark.parametrize("mode", ["direct", "relay"])
def test_close_lets_a_running_task_finish(tmp_path, mode):
    """close() stops engines gracefully (one SIGTERM: a second one means "now")."""
    task = tmp_path / "finish.py"
    task.write_text(
        textwrap.dedent("""
        import time
        from pathlib import Path

        def run(folder):
            Path(folder, "started").touch()
            time.sleep(1.0)
            Path(folder, "finished").touch()
        """)
    )
    pool = relay_engine_main.pool(mode, engines=1, task_files=[task])
    try:
        session = rb.Session(pool)
        session.submit("finish.py", str(tmp_path))
        end = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < end, "the task never started"
            time.sleep(0.02)
        session.close()
    finally:
        pool.close()
    assert (tmp_path / "finished").exists(), "the running task was stopped, not let finish"


def _spawn_silent(pool):
    """A ``_spawn`` whose engine process says nothing (stands in for one still starting)."""
    from realtime_batch.emulator.local_pool import _Proc

    def spawn():
        return _Proc(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            cwd=pool.root,
            log_path=pool.root / "silent.log",
            ready_prefix="READY",
            env=dict(os.environ),
        )

    return spawn
