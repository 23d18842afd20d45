"""Engine basics over memory://: results, both task styles, errors, cwd, reloads."""

from __future__ import annotations

import os
import time

import pytest

from realtime_batch.engine import Engine, EngineError


def test_run_style_task_returns_its_value(harness):
    engine = harness.engine(engine_id="eng-1")
    before = time.time()
    task_id = harness.submit("noop.py", 1, "two", kwargs={"three": 3})
    result = harness.result()
    assert result.task == task_id
    assert (result.session, result.job) == ("s1", "j1")
    assert result.status == "ok" and result.ok
    assert result.value == {"args": [1, "two"], "kwargs": {"three": 3}}
    assert result.error is None
    assert result.engine == "eng-1" == engine.engine_id
    assert result.attempt == 1
    assert before <= result.started_at <= result.finished_at <= time.time()


def test_default_engine_id_is_hostname_and_pid(harness):
    engine = harness.engine()
    assert engine.engine_id.endswith(f"-{os.getpid()}")
    harness.submit("noop")  # a bare name means noop.py
    assert harness.result().engine == engine.engine_id


def test_seed_style_do_action(harness):
    engine = harness.engine()
    task_id = harness.submit("seed_style.py", 1, 2, 3)
    value = harness.result().value
    assert value == {"sum": 6, "engine": engine.engine_id, "task": task_id}


@pytest.mark.parametrize(
    ("args", "kwargs", "error_type", "message"),
    [
        (["fail"], {}, "TaskReportedError", "could not do it"),
        (["contract"], {}, "TaskContractError", "(result, error) pair"),
        ([1], {"x": 1}, "TaskContractError", "positional arguments only"),
    ],
)
def test_do_action_errors(harness, args, kwargs, error_type, message):
    harness.engine()
    harness.submit("seed_style.py", *args, kwargs=kwargs)
    result = harness.result()
    assert result.status == "error"
    assert result.error.type == error_type
    assert message in result.error.message


def test_module_without_entry_point(harness):
    harness.engine()
    harness.submit("nothing.py")
    result = harness.result()
    assert result.error.type == "TaskContractError"
    assert "neither do_action" in result.error.message


def test_task_exception_is_an_error_result_not_retried(harness):
    engine = harness.engine()
    harness.submit("fail.py", "ValueError", "bad input", max_retries=3)
    result = harness.result()
    assert result.status == "error"
    assert result.error.type == "ValueError"
    assert result.error.message == "bad input"
    assert "fail.py" in result.error.traceback and "raise ValueError" in result.error.traceback
    assert result.attempt == 1
    harness.assert_no_result()
    # the engine carries on with the same warm worker
    pid = engine.worker_pid
    harness.submit("noop.py", 7)
    assert harness.result().value["args"] == [7]
    assert engine.worker_pid == pid


def test_retry_on_error_type_retries_then_reports(harness):
    harness.engine()
    harness.submit("fail.py", "FlakyError", "flaky", max_retries=1, retry_on=["FlakyError"])
    result = harness.result()
    assert result.error.type == "FlakyError"
    assert result.attempt == 2
    harness.assert_no_result()


def test_unserializable_value(harness):
    harness.engine()
    harness.submit("unjson.py")
    result = harness.result()
    assert result.error.type == "UnserializableResultError"


def test_cwd_is_the_work_dir_with_input_files(harness):
    (harness.work_dir / "input.txt").write_text("staged input")
    harness.engine()
    harness.submit("cwd_task.py", "input.txt")
    value = harness.result().value
    assert value == {"cwd": str(harness.work_dir.resolve()), "text": "staged input"}


def test_many_tasks_each_answered_once(harness):
    harness.engine(prefetch=8, engine_id="a")
    harness.engine(prefetch=3, engine_id="b")
    ids = [harness.submit("noop.py", i) for i in range(300)]
    results = harness.results(len(ids))
    assert set(results) == set(ids)
    assert all(r.ok for r in results.values())
    assert {r.engine for r in results.values()} <= {"a", "b"}
    harness.assert_no_result()


def test_task_module_reloaded_when_changed(harness, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    module = tasks / "versioned.py"
    module.write_text("def run():\n    return 1\n")
    harness.engine(tasks_dir=tasks)
    harness.submit("versioned.py")
    assert harness.result().value == 1
    module.write_text("def run():\n    return 'two'\n")
    stamp = time.time() + 5
    os.utime(module, (stamp, stamp))
    harness.submit("versioned.py")
    assert harness.result().value == "two"


def test_deadline_passed_means_expired_not_run(harness):
    harness.engine()
    harness.submit("marker_sleep.py", "ran.txt", 0, deadline=time.time() - 1)
    result = harness.result()
    assert result.status == "expired"
    assert result.value is None
    assert not (harness.work_dir / "ran.txt").exists()


def test_missing_tasks_dir_is_rejected(harness, tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        Engine(harness.transport, "tasks", tmp_path / "nope")


def test_exception_with_a_broken_str_is_still_reported(harness):
    engine = harness.engine()
    pid = engine.worker_pid
    harness.submit("bad_str.py")
    result = harness.result()
    assert result.error.type == "Weird"
    assert "str() failed" in result.error.message
    assert engine.worker_pid == pid  # not a crash
