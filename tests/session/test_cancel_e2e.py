"""Cancellation, retries and deadlines end to end: Session + LocalPool with real engines.

Every backend runs the same tests: memory:// (engines are threads of this process, each
with its task worker process), zmq:// (broker and engine processes) and the Service Bus
stand-in (marked ``azure``). Side-effect files prove what ran and what did not; the
pid a task writes proves that a cancelled running task was stopped. The pool is shared
by a module's tests (memory:// engines restart their workers as children of this
process), so the check for leaked processes runs once the pool is closed.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import psutil
import pytest
from session_pools import BACKENDS, backend_pool, write_tasks

import realtime_batch as rb

TASK_SOURCES = {
    "hold.py": '''
        """Write this worker's pid to ``marker``, then sleep."""
        import os
        import time


        def run(marker, seconds):
            tmp = marker + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, marker)
            time.sleep(seconds)
            return "slept"
    ''',
    "touch.py": '''
        """Create ``path`` (proof that the task ran)."""
        from pathlib import Path


        def run(path):
            Path(path).touch()
            return path
    ''',
    "flaky.py": '''
        """Log the attempt and its start time; fail with FlakyError before ``succeed_at``."""
        import time


        class FlakyError(Exception):
            pass


        def do_action(engine, args):
            log, succeed_at = args
            with open(log, "a") as f:
                f.write(f"{engine.attempt} {time.time()}\\n")
            if engine.attempt < succeed_at:
                raise FlakyError(f"attempt {engine.attempt} failed")
            return engine.attempt, None
    ''',
}


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> list[Path]:
    return write_tasks(tmp_path_factory.mktemp("cancel-tasks"), TASK_SOURCES)


@pytest.fixture(scope="module", params=BACKENDS)
def pool(request, task_files):
    """A one-engine pool (so that queued tasks wait behind the running one)."""
    with backend_pool(request.param, task_files, engines=1) as local_pool:
        yield local_pool


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def read_pid(marker: Path) -> int:
    wait_for(marker.exists, what=f"{marker.name} (the task to start)")
    return int(marker.read_text())


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_pending_tasks_never_run_and_running_task_is_stopped(pool, tmp_path):
    with rb.Session(pool) as s:
        running = s.submit("hold.py", str(tmp_path / "running.pid"), 60)
        queued = [s.submit("touch.py", str(tmp_path / f"queued-{i}")) for i in range(5)]
        pid = read_pid(tmp_path / "running.pid")

        assert s.cancel([f.task_id for f in queued]) == 5
        assert all(f.cancelled() for f in queued)
        with pytest.raises(concurrent.futures.CancelledError):
            queued[0].result(timeout=1)

        started = time.monotonic()
        assert running.cancel()
        assert running.cancelled()
        wait_for(lambda: pid_gone(pid), timeout=10, what="the cancelled task's worker to die")
        stopped_after = time.monotonic() - started
        assert stopped_after < 3.0, f"running task stopped after {stopped_after:.2f} s"

        # The engine keeps serving; this task was queued behind the cancelled ones (FIFO),
        # so once it ran they had all come up and been skipped.
        after = s.submit("touch.py", str(tmp_path / "after"))
        assert after.result(timeout=30) == str(tmp_path / "after")
        results = {r.task_id: r for r in s.results()}
    assert not [p.name for p in tmp_path.glob("queued-*")], "a cancelled task ran"
    cancelled = [r for r in results.values() if r.status == "cancelled"]
    assert len(cancelled) == 6 and not any(r.ok for r in cancelled)
    assert results[after.task_id].ok


def test_cancel_all_with_many_pending(pool, tmp_path):
    count = 60 if pool.transport_url.startswith("Endpoint=") else 300  # the stand-in is slow
    with rb.Session(pool) as s:
        running = s.submit("hold.py", str(tmp_path / "running.pid"), 60)
        pending = [s.submit("touch.py", str(tmp_path / f"p-{i}")) for i in range(count)]
        pid = read_pid(tmp_path / "running.pid")
        assert s.cancel_all() == count + 1
        assert s.outstanding == 0
        assert running.cancelled() and all(f.cancelled() for f in pending)
        wait_for(lambda: pid_gone(pid), timeout=10, what="the running task to stop")
        assert s.submit("touch.py", str(tmp_path / "after")).result(timeout=60)
        statuses = [r.status for r in s.results()]
    assert statuses.count("cancelled") == count + 1 and statuses.count("ok") == 1
    assert not list(tmp_path.glob("p-*")), "a cancelled task ran"


def test_cancel_a_finished_task_is_refused(pool, tmp_path):
    with rb.Session(pool) as s:
        done = s.submit("touch.py", str(tmp_path / "done"))
        done.result(timeout=30)
        assert not done.cancel()
        assert s.cancel([done.task_id]) == 0
        assert done.result() == str(tmp_path / "done")


def test_retry_on_retries_with_backoff_and_attempt_numbers(pool, tmp_path):
    log = tmp_path / "attempts.log"
    with rb.Session(pool, retry_on=["FlakyError"]) as s:
        value = s.submit("flaky.py", str(log), 3, max_retries=3).result(timeout=60)
        [result] = s.results()
    assert value == 3 and result.attempt == 3 and result.ok
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [int(a) for a, _ in lines] == [1, 2, 3]
    starts = [float(t) for _, t in lines]
    # default backoff 0.1 s * 2**(attempt-1), jittered down to half at most
    assert starts[1] - starts[0] >= 0.05
    assert starts[2] - starts[1] >= 0.1


def test_retries_exhausted_report_the_error_and_last_attempt(pool, tmp_path):
    log = tmp_path / "attempts.log"
    with rb.Session(pool) as s:
        future = s.submit("flaky.py", str(log), 99, max_retries=2, retry_on=["FlakyError"])
        with pytest.raises(rb.TaskError) as info:
            future.result(timeout=60)
        not_retried = s.submit("flaky.py", str(tmp_path / "once.log"), 99, max_retries=2)
        with pytest.raises(rb.TaskError) as once:
            not_retried.result(timeout=60)
    assert info.value.remote_type == "FlakyError" and info.value.attempt == 3
    assert len(log.read_text().splitlines()) == 3
    assert once.value.attempt == 1 and len((tmp_path / "once.log").read_text().splitlines()) == 1


def test_deadline_passed_comes_back_expired_and_does_not_run(pool, tmp_path):
    with rb.Session(pool) as s:
        running = s.submit("hold.py", str(tmp_path / "running.pid"), 60)
        read_pid(tmp_path / "running.pid")
        late = s.submit("touch.py", str(tmp_path / "late"), deadline=time.time() + 0.3)
        time.sleep(0.5)
        running.cancel()
        with pytest.raises(rb.TaskError) as info:
            late.result(timeout=30)
        statuses = {r.task_id: r.status for r in s.results()}
    assert info.value.remote_type == "TaskExpiredError"
    assert statuses[late.task_id] == "expired"
    assert not (tmp_path / "late").exists()


def test_priority_is_refused_with_a_reason(pool):
    with rb.Session(pool) as s, pytest.raises(ValueError, match="priority"):
        s.submit("touch.py", "x", priority=5)


def test_deadline_in_the_past_expires_in_the_queue(pool, tmp_path):
    """The message's TTL ends in the queue, no engine answers: the session reports it."""
    with rb.Session(pool) as s:
        future = s.submit("touch.py", str(tmp_path / "never"), deadline=time.time() - 1)
        with pytest.raises(rb.TaskError) as info:
            future.result(timeout=30)
        [result] = s.results()
        assert s.submit("touch.py", str(tmp_path / "after")).result(timeout=30)
    assert info.value.remote_type == "TaskExpiredError" and result.status == "expired"
    assert not (tmp_path / "never").exists()
