"""The failure rules of docs/reliability.md hold alike in relay and direct mode.

Each scenario runs in both modes (the ``harness`` fixture). Most cover edges where the
two feeders kept their own copy of a rule and the copies had drifted apart: what a
graceful stop does with the tasks an engine holds (cancelled or not) and with a timeout
or a crash in its grace period, a timeout retry at the queue's delivery limit, a running
task that fails after its cancel. Two cover rules no other test did: a deadline passing
while a task waits on an engine, the tasks held next to a timeout.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from engine_helpers import TASKS, Harness

from realtime_batch.protocol import encode_task
from realtime_batch.transport import Message, dead_letter_queue

pytestmark = pytest.mark.servicebus_mode  # and on the Service Bus stand-in (relay mode)

# Sleeps, then kills its worker: a crash that comes while the engine is stopping.
CRASH_LATER = """
import os
import time
from pathlib import Path


def run(marker, seconds, code=3):
    Path(marker).touch()
    time.sleep(seconds)
    os._exit(code)
"""

# Runs until a file appears, then raises: a failure that comes after a cancel.
FAIL_ON_GO = """
import time
from pathlib import Path


def run(marker, go):
    Path(marker).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    raise ValueError("failed after all")
"""


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    (folder / "crash_later.py").write_text(CRASH_LATER.lstrip())
    (folder / "fail_on_go.py").write_text(FAIL_ON_GO.lstrip())
    return folder


def wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def cancel_on(harness: Harness, engine, task: str, timeout: float = 30.0) -> None:
    """Send a cancel request for ``task`` to ``engine`` and wait until the engine has it."""
    from realtime_batch.control import CONTROL_QUEUE, cancel_messages

    harness.transport.send(CONTROL_QUEUE, cancel_messages("s1", engine.engine_id, [task]))
    end = time.monotonic() + timeout
    while not engine.is_cancelled("s1", task):
        assert time.monotonic() < end, "the engine never heard of the cancel"
        time.sleep(0.01)


def test_tasks_held_by_a_stopping_engine_are_not_charged_an_attempt(harness: Harness):
    """A graceful stop gives back the tasks it holds and has not started: they never
    ran, so another engine runs them as attempt 1. Relay mode gave them back counted,
    so a task without retries came back as ``EngineLostError`` and never ran."""
    harness.transport.declare_queue(harness.queue)
    running = harness.submit("marker_sleep.py", "started", 1.0, max_retries=0)
    waiting = [harness.submit("marker_sleep.py", f"w{i}", 0, max_retries=0) for i in range(3)]
    first = harness.engine(prefetch=4)
    wait_for(harness.work_dir / "started")
    first.stop(timeout=30)
    assert harness.result().task == running
    assert not any((harness.work_dir / f"w{i}").exists() for i in range(3))
    harness.engine()
    results = harness.results(3)
    if not harness.transport.capabilities.give_back:
        # Service Bus cannot uncount a delivery (docs/reliability.md, "Restarts": "on
        # Service Bus each counts as a delivery"; docs/transports.md, `give_back`): the
        # next engine sees delivery 2 of a task without retries and refuses it, unrun.
        for task in waiting:
            assert results[task].error.type == "EngineLostError", results[task]
            assert "delivered 2 times" in results[task].error.message
        assert not any((harness.work_dir / f"w{i}").exists() for i in range(3))
        return
    for task in waiting:
        assert results[task].status == "ok" and results[task].attempt == 1, results[task]


def test_a_timeout_during_a_graceful_stop_is_answered(harness: Harness):
    """The running task passes its timeout within the stop's grace period: killed and
    answered ``TaskTimeoutError``, as at any other time. Direct mode took it for a task
    still running at the end of the grace period and gave it back without an answer."""
    engine = harness.engine(grace=20)
    task = harness.submit("marker_sleep.py", "started", 60, timeout=1.5, max_retries=3)
    wait_for(harness.work_dir / "started")
    engine.stop(timeout=30)
    result = harness.result(timeout=5)
    assert result.task == task and result.error.type == "TaskTimeoutError"
    assert result.attempt == 1
    assert harness.transport.receive(harness.queue, timeout=0.5) == []  # nothing given back


def test_a_worker_crash_during_a_graceful_stop_is_answered(harness: Harness, tasks_dir):
    """The running task kills its worker within the stop's grace period: a worker crash,
    answered ``WorkerCrashedError`` when it has no retries left. Direct mode gave it
    back as if the grace period had ended, and the next engine answered
    ``EngineLostError`` for a task whose engine never died."""
    engine = harness.engine(tasks_dir=tasks_dir, grace=20)
    task = harness.submit("crash_later.py", "started", 1.5, max_retries=0)
    wait_for(harness.work_dir / "started")
    engine.stop(timeout=30)
    result = harness.result(timeout=5)
    assert result.task == task and result.error.type == "WorkerCrashedError"
    assert "exit code 3" in result.error.message and result.attempt == 1
    assert harness.transport.receive(harness.queue, timeout=0.5) == []


def test_a_timeout_retry_never_takes_the_queues_last_delivery(harness: Harness):
    """A timeout named in ``retry_on`` with the queue's ``max_delivery_count`` at 2: the
    retry may not use the last delivery (kept for answering a task whose engine died),
    so the client gets ``TaskTimeoutError``, never ``EngineLostError``. Relay mode retries
    on the same delivery (attempt 2); direct mode, whose timeout retries go back to the
    broker, answers attempt 1 and dead-letters it, like a worker crash at the limit."""
    harness.engine(max_delivery_count=2, retry_backoff=0.01)
    task = harness.submit("sleep.py", 60, timeout=0.3, max_retries=1,
                          retry_on=["TaskTimeoutError"])  # fmt: skip
    result = harness.result()
    assert result.task == task and result.error.type == "TaskTimeoutError", result.error
    if harness.direct:
        assert result.attempt == 1
        assert "MaxDeliveryCountExceeded" in result.error.message
        [dead] = harness.transport.receive(dead_letter_queue(harness.queue), timeout=5)
        assert dead.message.properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"
    else:
        assert result.attempt == 2
    harness.assert_no_result()


def test_a_running_task_that_fails_after_its_cancel_is_answered_cancelled(
    harness: Harness, tasks_dir, monkeypatch
):
    """A cancel reaches the running task, which fails before the worker is killed for
    it: the client cancelled it, so it is answered ``cancelled`` (docs: "status
    ``cancelled``, never a result"), not with the error. Direct mode answered the error."""
    from realtime_batch.engine import _direct, _pipeline

    for module in (_direct, _pipeline):  # the task fails long before a kill
        monkeypatch.setattr(module, "CANCEL_GRACE", 60.0)
    engine = harness.engine(tasks_dir=tasks_dir)
    go = harness.work_dir / "go"
    task = harness.submit("fail_on_go.py", "started", str(go))
    wait_for(harness.work_dir / "started")
    cancel_on(harness, engine, task)
    time.sleep(1.0)  # the engine passes it on to its worker at once (direct mode)
    go.touch()
    result = harness.result()
    assert result.task == task and result.status == "cancelled", result.error
    harness.assert_no_result()


def test_a_deadline_that_passes_while_the_task_waits_on_an_engine_expires_it(harness: Harness):
    """Admitted in time, then held behind a running task until its deadline passed: not
    run, answered ``expired`` when its turn comes (the worker's check as a task starts;
    ``test_engine`` covers a deadline already past on arrival)."""
    harness.engine(prefetch=2)
    head = harness.task("sleep.py", 2.0)
    late = harness.task("marker_sleep.py", "ran", 0, deadline=time.time() + 0.8)
    # one send: the engine (its worker, in direct mode) takes both at once
    harness.transport.send(harness.queue, [Message(encode_task(head)), Message(encode_task(late))])
    head, late = head.task, late.task
    results = harness.results(2)
    assert results[head].ok
    assert results[late].status == "expired" and results[late].attempt == 1
    assert results[late].error.type == "TaskExpiredError"
    assert not (harness.work_dir / "ran").exists()


def test_tasks_held_next_to_a_timeout_are_not_charged_an_attempt(harness: Harness):
    """The worker is killed for a timeout while it holds three more tasks: those run
    once, as attempt 1 (a kill for a timeout takes its own path in each mode;
    ``test_direct`` covers the tasks held next to a crash)."""
    harness.transport.declare_queue(harness.queue)
    slow = harness.submit("sleep.py", 60, timeout=0.5, max_retries=2)
    others = [harness.submit("noop.py", i, max_retries=0) for i in range(3)]
    harness.engine(prefetch=4)
    results = harness.results(4)
    assert results[slow].error.type == "TaskTimeoutError" and results[slow].attempt == 1
    for task in others:
        assert results[task].ok and results[task].attempt == 1, results[task]


def test_a_cancelled_task_held_by_a_stopping_engine_is_answered_not_given_back(
    harness: Harness,
):
    """A task cancelled while it waits on an engine behind a running one, then the engine
    stops: it is answered ``cancelled`` there (relay mode at once, direct mode when its
    worker drains), not given back to run on an engine that may never hear of the
    cancel."""

    harness.transport.declare_queue(harness.queue)
    running = harness.submit("marker_sleep.py", "started", 1.5)
    waiting = harness.submit("marker_sleep.py", "ran", 0)
    engine = harness.engine(prefetch=2)
    wait_for(harness.work_dir / "started")
    cancel_on(harness, engine, waiting)
    time.sleep(0.5)  # the engine passes it on to its worker at once (direct mode)
    engine.stop(timeout=30)
    results = harness.results(2, timeout=5)
    assert results[running].ok
    assert results[waiting].status == "cancelled"
    assert harness.transport.receive(harness.queue, timeout=0.5) == []
    assert not (harness.work_dir / "ran").exists()
