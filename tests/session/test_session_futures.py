"""Task futures under concurrency: many waiters, cancels, stdlib wait/as_completed, callbacks.

The futures guard their state with a plain lock and wake blocked callers through
the stdlib's waiters (orchestrator/results.py); the listener resolves a received
batch under one lock (Session._resolve). These tests pin what callers see: who is
woken, with what, how many times, in which order. They count and order; none of
them measures time (waits for a condition are bounded generously, never asserted on).
"""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
from session_responder import Responder

import realtime_batch as rb

WAITERS = 16
LIMIT = 30.0  # generous bound on every wait: a hang fails, a slow machine does not


def _until(condition, limit: float = LIMIT) -> None:
    """Wait (without asserting on time) until ``condition()`` holds."""
    done = threading.Event()
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition never held")


def _blocked_callers(future, call, count: int = WAITERS):
    """Start ``count`` threads calling ``call(future)``; return once all have called it."""
    outcomes: list[tuple[str, object]] = []
    entered: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        with lock:
            entered.append(1)
        try:
            value = ("value", call(future))
        except BaseException as exc:  # recorded, asserted by the test
            value = ("raised", exc)
        with lock:
            outcomes.append(value)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    _until(lambda: len(entered) == count)
    assert not future.done() and outcomes == []  # nobody can have returned yet
    return threads, outcomes


def _join(threads) -> None:
    for thread in threads:
        thread.join(LIMIT)
        assert not thread.is_alive()


def _answer_then_join(url: str, threads) -> None:
    """Start a responder (the tasks are answered now), wait for ``threads``, stop it."""
    responder = Responder(url)
    try:
        _join(threads)
    finally:
        responder.close()


def test_many_threads_waiting_on_one_future_all_get_its_value(url):
    with rb.Session(url) as s:
        f = s.submit("echo.py", 7)
        threads, outcomes = _blocked_callers(f, lambda fut: fut.result())
        _answer_then_join(url, threads)
    assert outcomes == [("value", {"args": [7], "kwargs": {}})] * WAITERS
    assert f._waiters == []  # each caller removed its waiter


def test_many_threads_waiting_for_an_exception_all_get_the_same_one(url):
    with rb.Session(url) as s:
        f = s.submit("fail.py")
        threads, outcomes = _blocked_callers(f, lambda fut: fut.exception())
        _answer_then_join(url, threads)
    errors = {id(exc) for kind, exc in outcomes if kind == "value"}
    assert len(outcomes) == WAITERS and len(errors) == 1
    assert isinstance(f.exception(), rb.TaskError) and id(f.exception()) in errors


def test_cancel_wakes_every_blocked_caller_with_cancelled_error(url, responder):
    with rb.Session(url) as s:
        f = s.submit("hold.py")
        threads, outcomes = _blocked_callers(f, lambda fut: fut.result())
        assert f.cancel()
        _join(threads)
    assert len(outcomes) == WAITERS
    assert all(
        kind == "raised" and isinstance(exc, concurrent.futures.CancelledError)
        for kind, exc in outcomes
    )


def test_a_cancelled_future_counts_as_done_for_stdlib_wait_and_as_completed(url, responder):
    with rb.Session(url) as s:
        held = [s.submit("hold.py") for _ in range(3)]
        assert held[0].cancel()
        done, not_done = concurrent.futures.wait(held, timeout=0.2)
        assert done == {held[0]} and not_done == set(held[1:])
        with pytest.raises(concurrent.futures.TimeoutError):
            seen = []
            for future in s.as_completed(held, timeout=0.2):
                seen.append(future)
        assert seen == [held[0]]


def test_as_completed_waiting_before_a_cancel_is_woken_by_it(url, responder):
    with rb.Session(url) as s:
        f = s.submit("hold.py")
        threads, outcomes = _blocked_callers(
            f, lambda fut: list(concurrent.futures.as_completed([fut], timeout=LIMIT)), count=4
        )
        assert s.cancel([f]) == 1
        _join(threads)
    assert outcomes == [("value", [f])] * 4


def test_as_completed_with_a_timeout_yields_the_done_then_raises(url, responder):
    with rb.Session(url) as s:
        answered = s.map("echo.py", range(20))
        held = [s.submit("hold.py") for _ in range(5)]
        assert not concurrent.futures.wait(answered, timeout=LIMIT).not_done
        seen = []
        with pytest.raises(concurrent.futures.TimeoutError):
            for future in s.as_completed(held + answered, timeout=0.2):
                seen.append(future)
        assert sorted(seen, key=id) == sorted(answered, key=id)
        assert not any(f.done() for f in held)
        assert all(f._waiters == [] for f in held + answered)  # waiters removed


def test_result_timeout_leaves_the_future_usable(url):
    with rb.Session(url) as s:
        f = s.submit("echo.py", "later")
        with pytest.raises(TimeoutError, match="no result for task"):
            f.result(timeout=0.05)
        assert f._waiters == [] and not f.done()
        responder = Responder(url)
        try:
            assert f.result(timeout=LIMIT) == {"args": ["later"], "kwargs": {}}
        finally:
            responder.close()


def test_callbacks_run_once_each_in_arrival_order_after_the_future_is_set(url):
    """A batch resolved under one lock still settles and calls back result by result."""
    with rb.Session(url) as s:
        seen: list[tuple[str, bool]] = []
        order: list[str] = []
        futures = s.map("echo.py", range(300))  # no responder yet: they arrive in batches
        by_id = {f.task_id: f for f in futures}
        for f in futures:
            f.add_done_callback(lambda fut: order.append(("future", fut.task_id)))
        s.add_result_callback(lambda r: seen.append((r.task_id, by_id[r.task_id].done())))
        s.add_result_callback(lambda r: order.append(("session", r.task_id)))
        responder = Responder(url)
        try:
            assert not concurrent.futures.wait(futures, timeout=LIMIT).not_done
            assert s.wait(LIMIT)
        finally:
            responder.close()
        results = s.results()
    ids = [f.task_id for f in futures]
    assert [task_id for task_id, _ in seen] == ids  # once each, in arrival (= sent) order
    assert all(done for _, done in seen)  # the future was set before its callbacks ran
    assert [r.task_id for r in results] == ids
    # each future's own callback runs before the session's callbacks for that result
    expected = [step for task_id in ids for step in (("future", task_id), ("session", task_id))]
    assert order == expected


def test_duplicates_within_one_batch_resolve_once(url):
    with rb.Session(url) as s:
        futures = s.map("echo.py", range(50))
        responder = Responder(url, duplicate=True)  # every result sent twice, same batch
        try:
            assert not concurrent.futures.wait(futures, timeout=LIMIT).not_done
            _until(lambda: s.duplicates_dropped == 50)
        finally:
            responder.close()
        assert s.received == 50
        assert [r.task_id for r in s.results()] == [f.task_id for f in futures]


def test_without_kept_results_wait_and_counts_still_see_every_result(url, responder):
    with rb.Session(url, keep_results=False) as s:
        futures = s.map("echo.py", range(200))
        assert s.wait(LIMIT)  # woken although no Result is made for anyone
        assert not concurrent.futures.wait(futures, timeout=LIMIT).not_done
        assert s.received == 200 and s.outstanding == 0
        assert s.results() == [] and s.num_results_returned() == 0


def test_without_kept_results_a_callback_still_gets_every_result(url):
    with rb.Session(url, keep_results=False) as s:
        got: list[rb.Result] = []
        s.add_result_callback(got.append)
        futures = s.map("echo.py", range(100))
        responder = Responder(url)
        try:
            assert not concurrent.futures.wait(futures, timeout=LIMIT).not_done
            _until(lambda: len(got) == 100)
        finally:
            responder.close()
        assert [r.task_id for r in got] == [f.task_id for f in futures]
        pairs = zip(got, futures, strict=True)
        assert all(r.ok and r.submitted_at == f.submitted_at for r, f in pairs)
        assert s.results() == []


def test_task_errors_survive_pickling():
    """A failed task's exception crosses process boundaries (multiprocessing, caches)
    with everything it says; it could not be unpickled before (its __init__ takes
    other arguments than its args)."""
    import pickle

    from realtime_batch.protocol import ErrorInfo

    error = rb.TaskError("t-1", ErrorInfo("ValueError", "bad", "Traceback..."), "engine-7", 3)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is rb.TaskError and str(copy) == str(error)
    assert (copy.task_id, copy.remote_type, copy.remote_message, copy.remote_traceback,
            copy.engine, copy.attempt) == ("t-1", "ValueError", "bad", "Traceback...",
                                           "engine-7", 3)  # fmt: skip
    dependent = rb.DependencyError("t-2", "t-1", error)
    copy = pickle.loads(pickle.dumps(dependent))
    assert type(copy) is rb.DependencyError and copy.dependency == "t-1"
    assert isinstance(copy.cause, rb.TaskError) and copy.cause.remote_message == "bad"
    cancelled = pickle.loads(pickle.dumps(rb.DependencyError("t-3", "t-1", None)))
    assert cancelled.cause is None and "cancelled" in str(cancelled)
