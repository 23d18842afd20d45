"""Workflows (#20): futures as task arguments, ``after=``, failure and cancel propagation.

Over memory:// with the scripted responder of test_session.py (``echo.py`` answers
with its arguments, ``fail.py`` fails, ``hold.py`` never answers); end-to-end runs with
real engines are in test_workflow_e2e.py.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from session_responder import Responder
from test_session_memory import held_entries

import realtime_batch as rb
from realtime_batch.protocol import ProtocolError, ResultRecord, encode_result
from realtime_batch.transport import Message


def answer(responder: Responder, session: rb.Session, task_id: str, value) -> None:
    """Send the session an engine's ok result for ``task_id`` (a held task)."""
    record = ResultRecord(
        session=session.id, job=session.job, task=task_id, status="ok", engine="fake-1",
        value=value, session_key=session._session_key,
    )  # fmt: skip
    message = Message(encode_result(record), group=session.id)
    responder.transport.send(session.results_queue, message)


def echoed(value):
    return {"args": value, "kwargs": {}}


def test_futures_anywhere_in_the_arguments_are_replaced_by_their_values(url, responder):
    with rb.Session(url) as s:
        a = s.submit("echo.py", 1)
        b = s.submit("echo.py", 2)
        c = s.submit("echo.py", a, [b, {"k": a}], (b,), key={"deep": [a]})
        value = c.result(timeout=10)
        # a tuple stays a tuple (docs/payloads.md)
        assert value["args"] == [echoed([1]), [echoed([2]), {"k": echoed([1])}], (echoed([2]),)]
        assert value["kwargs"] == {"key": {"deep": [echoed([1])]}}


def test_a_dependent_task_is_not_sent_before_its_inputs_are_done(url, responder):
    with rb.Session(url) as s:
        held = s.submit("hold.py", task_id="input")
        dependent = s.submit("echo.py", held, task_id="dependent")
        ordered = s.submit("echo.py", 3, after=[held], task_id="ordered")
        time.sleep(0.3)  # time for a wrongly sent task to reach the responder
        assert "dependent" not in responder.seen and "ordered" not in responder.seen
        assert s.outstanding == 3
        assert not dependent.done() and not ordered.done()


def test_after_orders_without_passing_values(url, responder):
    with rb.Session(url) as s:
        first = s.submit("echo.py", "first")
        second = s.submit("echo.py", "second", after=[first])
        assert second.result(timeout=10) == echoed(["second"])
        assert responder.seen.index(first.task_id) < responder.seen.index(second.task_id)


def test_a_failed_input_fails_its_dependents_with_dependency_error(url, responder):
    with rb.Session(url) as s:
        bad = s.submit("fail.py", task_id="bad")
        middle = s.submit("echo.py", bad, task_id="middle")
        last = s.submit("echo.py", after=[middle], task_id="last")
        with pytest.raises(rb.DependencyError) as caught:
            middle.result(timeout=10)
        assert caught.value.dependency == "bad"
        assert isinstance(caught.value.cause, rb.TaskError)
        assert "input task 'bad' failed" in str(caught.value)
        with pytest.raises(rb.DependencyError, match="input task 'middle' failed"):
            last.result(timeout=10)
        results = {r.task_id: r for r in s.results()}
        assert results["middle"].status == "error"
        assert results["middle"].error.type == "DependencyError"
        assert "middle" not in responder.seen and "last" not in responder.seen
        assert s.outstanding == 0


def test_cancelling_an_input_cancels_what_depends_on_it(url, responder):
    with rb.Session(url) as s:
        held = s.submit("hold.py", task_id="held")
        dependent = s.submit("echo.py", [held], task_id="dependent")
        assert held.cancel()
        with pytest.raises(rb.DependencyError, match="input task 'held' was cancelled"):
            dependent.result(timeout=10)
        assert {r.task_id: r.status for r in s.results()} == {
            "held": "cancelled",
            "dependent": "cancelled",
        }
        assert "dependent" not in responder.seen


def test_a_cancelled_waiting_task_is_never_sent(url, responder):
    with rb.Session(url) as s:
        gate = s.submit("hold.py", task_id="gate")
        waiting = s.submit("echo.py", gate, task_id="waiting")
        assert waiting.cancel()
        assert s._workflow.waiting == {}
        answer(responder, s, "gate", "done")  # the input finishes after all
        assert gate.result(timeout=10) == "done"
        time.sleep(0.3)  # time for a wrongly released task to reach the responder
        assert "waiting" not in responder.seen
        assert waiting.cancelled()


def test_a_failure_passes_down_a_long_chain(url, responder):
    """Thousands of tasks in a chain: each fails in turn (no recursion limit on the way)."""
    with rb.Session(url) as s:
        head = s.submit("hold.py")
        chain = [head]
        for _ in range(3000):
            chain.append(s.submit("echo.py", chain[-1]))
        assert head.cancel()
        for future in chain[1:]:
            assert isinstance(future.exception(timeout=10), rb.DependencyError)
        assert s.outstanding == 0 and s._workflow.waiting == {}


def test_an_input_that_already_failed_fails_the_task_at_once(url, responder):
    with rb.Session(url) as s:
        bad = s.submit("fail.py", task_id="bad")
        concurrent.futures.wait([bad], timeout=10)
        dependent = s.submit("echo.py", bad, task_id="after-bad")
        assert dependent.done()
        with pytest.raises(rb.DependencyError, match="input task 'bad' failed"):
            dependent.result()
        ok = s.submit("echo.py", 1)
        ok.result(timeout=10)
        assert s.submit("echo.py", ok).result(timeout=10) == echoed([echoed([1])])


def test_a_future_of_another_session_is_refused(url, responder):
    with rb.Session(url) as one, rb.Session(url) as other:
        foreign = other.submit("echo.py", 1)
        with pytest.raises(ValueError, match="belongs to another session"):
            one.submit("echo.py", foreign)
        with pytest.raises(ValueError, match="belongs to another session"):
            one.submit("echo.py", after=[foreign])
        assert one.outstanding == 0


def test_inputs_that_are_not_task_futures_are_refused(url, responder):
    with rb.Session(url) as s:
        plain: concurrent.futures.Future = concurrent.futures.Future()
        with pytest.raises(TypeError, match="only task futures of this session"):
            s.submit("echo.py", plain)
        with pytest.raises(TypeError, match="after= takes task futures"):
            s.submit("echo.py", after=["not-a-future"])
        a = s.submit("echo.py", 1)
        with pytest.raises(ProtocolError):  # the other arguments must be sendable too
            s.submit("echo.py", a, object())
        a.result(timeout=10)
        assert s.outstanding == 0


def test_a_task_id_cannot_alias_an_input(url, responder):
    """No cycle can be built: inputs are futures of tasks already submitted, and ids are unique."""
    with rb.Session(url) as s:
        a = s.submit("hold.py", task_id="a")
        with pytest.raises(ValueError, match="already used"):
            s.submit("echo.py", a, task_id="a")
        assert s.outstanding == 1


def test_closing_the_session_cancels_waiting_tasks(url, responder):
    s = rb.Session(url)
    gate = s.submit("hold.py")
    waiting = s.submit("echo.py", gate)
    s.close()
    assert gate.cancelled()
    assert waiting.done()
    assert s._workflow.waiting == {}


def test_ten_thousand_task_fan_out_and_reduce_holds_only_outstanding_work(url, responder):
    fan_out = 10_000
    with rb.Session(url, keep_results=False) as s:
        parts = s.map("echo.py", range(fan_out))
        total = s.submit("echo.py", parts)
        assert len(s._workflow.waiting) == 1  # one waiting task, whatever the fan-out
        value = total.result(timeout=120)
        assert len(value["args"][0]) == fan_out
        assert value["args"][0][-1] == echoed([fan_out - 1])
        del parts, value
        held = held_entries(s)
        assert max(held.values()) <= 1, held  # nothing left per task once all are done
