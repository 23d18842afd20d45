"""JobManager's prototype contract, with a scripted engine on memory:// (issue #18).

The scripted engine answers by hand, so a test can send a late duplicate of an
old submission's result and check that it never answers a new submission that
re-uses the same task id.
"""

from __future__ import annotations

import uuid

import pytest

import realtime_batch as rb
from realtime_batch.protocol import ErrorInfo, ResultRecord, TaskRecord, decode_task, encode_result
from realtime_batch.transport import Message, open_transport


class ScriptedEngine:
    """Takes tasks from the queue and answers them when told to."""

    def __init__(self, transport) -> None:
        self.transport = transport
        transport.declare_queue("tasks")

    def take(self, count: int) -> list[TaskRecord]:
        tasks: list[TaskRecord] = []
        while len(tasks) < count:
            deliveries = self.transport.receive("tasks", max_messages=count, timeout=5)
            assert deliveries, f"only {len(tasks)} of {count} tasks arrived"
            for d in deliveries:
                tasks.append(decode_task(d.message.body))
                self.transport.complete(d)
        return tasks

    def answer(self, task: TaskRecord, value=None, error: ErrorInfo | None = None) -> None:
        record = ResultRecord(
            session=task.session, job=task.job, task=task.task,
            status="ok" if error is None else "error", value=value, error=error,
            engine="node-7", attempt=task.attempt, session_key=task.session_key,
        )  # fmt: skip
        reply = Message(encode_result(record), group=task.reply_to.group)
        self.transport.send(task.reply_to.queue, reply)


@pytest.fixture
def transport():
    t = open_transport(f"memory://jobmanager-{uuid.uuid4().hex}")
    yield t
    t.close()


@pytest.fixture
def engine(transport):
    return ScriptedEngine(transport)


@pytest.fixture
def job_manager(transport):
    jm = rb.JobManager("client_1", "job-1", transport)
    yield jm
    jm.close_job()


def results_of(jm, count):
    """Wait (bounded) for ``count`` results and take them as the prototype's dicts."""
    jm.wait(timeout=10)
    assert jm.num_results_returned() == count
    return jm.get_results()


def test_params_string_is_split_like_the_prototype(job_manager, engine):
    job_manager.submit_task(0, "1_task.py", "this is  an input\tparam list")
    job_manager.submit_task(1, "1_task.py", ["kept", "as a list"])
    job_manager.submit_task(2, "1_task.py")
    tasks = engine.take(3)
    assert [t.args for t in tasks] == [
        ["this", "is", "an", "input", "param", "list"],
        ["kept", "as a list"],
        [],
    ]


def test_get_results_returns_the_prototype_dicts(job_manager, engine):
    job_manager.submit_task("0", "pi_runner.py", "java -jar pi.jar 100")
    job_manager.submit_task("1", "pi_runner.py", "x")
    ok, failed = engine.take(2)
    engine.answer(ok, ["3.2"])
    engine.answer(failed, error=ErrorInfo("TaskReportedError", "out of paper"))
    got = sorted(results_of(job_manager, 2), key=lambda i: i["taskid"])
    assert got == [
        {"result": ["3.2"], "id": "node-7", "jobid": "job-1", "taskid": "0", "error": "no error"},
        {"result": None, "id": "node-7", "jobid": "job-1", "taskid": "1", "error": "out of paper"},
    ]


def test_other_failures_name_their_type(job_manager, engine):
    job_manager.submit_task("0", "missing.py", "")
    [task] = engine.take(1)
    engine.answer(task, error=ErrorInfo("CommandNotFoundError", "command 'missing.py' not found"))
    [got] = results_of(job_manager, 1)
    assert got["error"] == "CommandNotFoundError: command 'missing.py' not found"


def test_results_carry_the_users_task_ids(job_manager, engine):
    job_manager.submit_task("a", "1_task.py", "")
    [task] = engine.take(1)
    engine.answer(task, "v")
    job_manager.wait(timeout=10)
    [record] = job_manager.results()
    assert isinstance(record, rb.Result) and record.task_id == "a"


def test_task_id_is_reused_once_finished(job_manager, engine):
    first = job_manager.submit_task("0", "1_task.py", "one")
    [task] = engine.take(1)
    engine.answer(task, "first")
    assert first.result(timeout=10) == "first"
    second = job_manager.submit_task("0", "1_task.py", "two")
    [task2] = engine.take(1)
    assert task2.task != task.task  # each submission is its own task on the wire
    engine.answer(task2, "second")
    assert second.result(timeout=10) == "second"
    assert [(i["taskid"], i["result"]) for i in results_of(job_manager, 2)] == [
        ("0", "first"),
        ("0", "second"),
    ]


def test_task_id_still_running_is_refused(job_manager, engine):
    job_manager.submit_task("0", "1_task.py", "one")
    with pytest.raises(ValueError, match="task id '0' is still running"):
        job_manager.submit_task("0", "1_task.py", "two")
    [task] = engine.take(1)  # the refused submission sent nothing
    assert task.args == ["one"]
    engine.answer(task, "first")
    job_manager.wait(timeout=10)
    job_manager.submit_task("0", "1_task.py", "two")  # now it may


def test_late_duplicate_never_answers_the_new_submission(job_manager, engine):
    job_manager.submit_task("0", "1_task.py", "old")
    [old] = engine.take(1)
    engine.answer(old, "old value")
    assert results_of(job_manager, 1)[0]["result"] == "old value"

    new_future = job_manager.submit_task("0", "1_task.py", "new")
    [new] = engine.take(1)
    engine.answer(old, "old value")  # a late duplicate (e.g. a redelivered result)
    engine.answer(new, "new value")
    assert new_future.result(timeout=10) == "new value"
    assert [i["result"] for i in results_of(job_manager, 1)] == ["new value"]
    assert job_manager.duplicates_dropped == 1


def test_cancel_by_the_users_task_id(job_manager, engine):
    future = job_manager.submit_task("0", "1_task.py", "")
    assert job_manager.cancel("0") == 1
    assert future.cancelled()
    [record] = job_manager.results()
    assert record.task_id == "0" and record.status == "cancelled"
    again = job_manager.submit_task("0", "1_task.py", "")  # a cancelled id may be re-used
    assert again.cancel() and again.cancelled()  # the future cancels its own submission
    job_manager.submit_task("1", "1_task.py", "")
    assert job_manager.cancel_all() == 1
    assert [(r.task_id, r.status) for r in job_manager.results()] == [
        ("0", "cancelled"),
        ("1", "cancelled"),
    ]


def test_callbacks_and_iteration_see_the_users_task_ids(job_manager, engine):
    seen = []
    job_manager.add_result_callback(lambda result: seen.append(result.task_id))
    job_manager.submit_task("x", "1_task.py", "")
    [task] = engine.take(1)
    engine.answer(task, "v")
    assert [r.task_id for r in job_manager] == ["x"]
    assert seen == ["x"]


def test_session_still_refuses_reuse_and_spreads_nothing(transport, engine):
    with rb.Session(transport, name="s") as session:
        session.submit("1_task.py", "a b", task_id="0")
        [task] = engine.take(1)
        assert task.args == ["a b"] and task.task == "0"
        engine.answer(task, "v")
        session.wait(timeout=10)
        with pytest.raises(ValueError, match="already used"):
            session.submit("1_task.py", task_id="0")
        [record] = session.results()
        assert isinstance(record, rb.Result) and record.task_id == "0"
