"""Engine retries over memory://: ``retry_on`` with backoff, attempt numbers, limits.

A failed attempt whose exception is in ``retry_on`` stays leased on its engine while
the engine backs off, then runs again with ``attempt + 1``. Backoff is checked as a
lower bound on the spacing of the attempts' start times (noise only adds to it).
"""

from __future__ import annotations

import itertools
import shutil
import textwrap
import time
from pathlib import Path

import pytest
from engine_helpers import TASKS, Harness

from realtime_batch.engine._supervise import retry_delay

FLAKY = """
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
"""


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    (folder / "flaky_log.py").write_text(textwrap.dedent(FLAKY).lstrip())
    return folder


def attempts(log: Path) -> list[tuple[int, float]]:
    if not log.exists():
        return []
    return [(int(a), float(t)) for a, t in (line.split() for line in log.read_text().splitlines())]


def wait_for_first_attempt(log: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not attempts(log):
        assert time.monotonic() < end, "the task never started"
        time.sleep(0.02)


def test_retry_on_backs_off_and_counts_attempts(harness: Harness, tasks_dir, tmp_path):
    harness.engine(tasks_dir=tasks_dir, retry_backoff=0.2)
    log = tmp_path / "log"
    harness.submit("flaky_log.py", str(log), 4, max_retries=3, retry_on=["FlakyError"])
    result = harness.result()
    assert result.status == "ok" and result.value == 4 and result.attempt == 4
    seen = attempts(log)
    assert [a for a, _ in seen] == [1, 2, 3, 4]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(seen)]
    for attempt, gap in enumerate(gaps, start=1):
        assert gap >= 0.5 * 0.2 * 2 ** (attempt - 1), gaps


@pytest.mark.servicebus_mode
def test_retries_exhausted_give_the_last_error(harness: Harness, tasks_dir, tmp_path):
    harness.engine(tasks_dir=tasks_dir, retry_backoff=0.01)
    log = tmp_path / "log"
    harness.submit("flaky_log.py", str(log), 99, max_retries=2, retry_on=["FlakyError"])
    result = harness.result()
    assert result.status == "error" and result.error.type == "FlakyError"
    assert result.attempt == 3 and "attempt 3 failed" in result.error.message
    assert [a for a, _ in attempts(log)] == [1, 2, 3]


def test_other_exceptions_are_not_retried(harness: Harness, tasks_dir, tmp_path):
    harness.engine(tasks_dir=tasks_dir, retry_backoff=0.01)
    log = tmp_path / "log"
    harness.submit("flaky_log.py", str(log), 99, max_retries=2, retry_on=["ValueError"])
    result = harness.result()
    assert result.error.type == "FlakyError" and result.attempt == 1
    assert len(attempts(log)) == 1


@pytest.mark.servicebus_mode
def test_timeout_in_retry_on_is_retried(harness: Harness):
    harness.engine(retry_backoff=0.01)
    harness.submit("sleep.py", 30, timeout=0.3, max_retries=1, retry_on=["TaskTimeoutError"])
    result = harness.result()
    assert result.error.type == "TaskTimeoutError" and result.attempt == 2


@pytest.mark.parametrize("prefetch", [2, 1])  # 1: the retry holds the only slot
@pytest.mark.servicebus_mode
def test_cancel_during_backoff_stops_the_retries(harness: Harness, tasks_dir, tmp_path, prefetch):
    """The cancel is seen at once, not when the engine's wait for the retry ends (idle
    waits of 30 s made the direct worker's receive last until the retry was due)."""
    from realtime_batch.control import CONTROL_QUEUE, cancel_messages

    engine = harness.engine(tasks_dir=tasks_dir, retry_backoff=30, prefetch=prefetch)
    log = tmp_path / "log"
    task = harness.submit("flaky_log.py", str(log), 99, max_retries=5, retry_on=["FlakyError"])
    wait_for_first_attempt(log)
    harness.transport.send(CONTROL_QUEUE, cancel_messages("s1", engine.engine_id, [task]))
    result = harness.result(timeout=10)  # long before the 15-30 s backoff ends
    assert result.status == "cancelled"
    assert len(attempts(log)) == 1


@pytest.mark.parametrize("mode", ["relay", "direct", "servicebus"])
def test_a_retry_waiting_on_a_stopping_engine_is_given_back(mode, tasks_dir, tmp_path, request):
    """Graceful stop during a backoff: the delivery goes back and another engine runs it."""
    from engine_helpers import open_harness

    standin_url = None
    if mode == "servicebus":
        standin_url = request.getfixturevalue("engine_standin").connection_string
    with open_harness(mode, tasks_dir, tmp_path / "wd", standin_url=standin_url) as harness:
        first = harness.engine(retry_backoff=30)
        log = tmp_path / "log"
        harness.submit("flaky_log.py", str(log), 2, max_retries=3, retry_on=["FlakyError"])
        wait_for_first_attempt(log)
        first.stop()
        harness.engine(retry_backoff=0.01)
        result = harness.result()
        assert result.status == "ok" and result.attempt == 2  # redelivery: attempt 2
        assert [a for a, _ in attempts(log)] == [1, 2]


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_retry_delay_is_exponential_capped_and_jittered(attempt):
    for _ in range(50):
        delay = retry_delay(attempt, 0.1, 1.0)
        expected = min(0.1 * 2 ** (attempt - 1), 1.0)
        assert 0.5 * expected <= delay <= expected


@pytest.mark.servicebus_mode
def test_a_retry_backing_off_when_its_worker_dies_keeps_its_attempt(
    harness: Harness, tasks_dir, tmp_path
):
    """The worker dies (another task crashed it) while a ``retry_on`` retry backs off.
    In direct mode the retry's delivery was given back uncounted, as if never started:
    the task ran its first attempt again, one run more than ``max_retries`` allows."""
    harness.engine(tasks_dir=tasks_dir, retry_backoff=1.0, prefetch=2)
    log = tmp_path / "log"
    harness.submit("flaky_log.py", str(log), 99, max_retries=1, retry_on=["FlakyError"])
    wait_for_first_attempt(log)
    harness.submit("crash.py", "exit", 3, max_retries=0)  # runs while the retry backs off
    results = harness.results(2)
    flaky = next(r for r in results.values() if r.error and r.error.type == "FlakyError")
    assert flaky.attempt == 2
    assert [a for a, _ in attempts(log)] == [1, 2]
