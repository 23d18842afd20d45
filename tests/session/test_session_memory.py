"""A session's memory is bounded by what is outstanding, not by what it has done (#21).

Sizes are counted as entries in the session's containers (no timing, no RSS): a
session that has finished thousands of tasks holds no more than one that finished a
few, and still drops a duplicate result that arrives after its task finished.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Sized

import pytest
from session_responder import Responder

import realtime_batch as rb

_CONTAINERS = (dict, set, list, tuple, frozenset)


def held_entries(session: rb.Session) -> dict[str, int]:
    """Entries in every container the session (and the parts it is made of) holds.

    Walks the session's attributes and those of its helper objects from
    ``realtime_batch.orchestrator`` (sender, tracker, deadlines...), counting ``len()``
    of each container or sized collection; results kept for ``results()`` are the
    caller's data and are drained before counting.
    """
    counts: dict[str, int] = {}
    seen: set[int] = set()

    def walk(obj: object, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in vars(obj).items():
            if isinstance(value, str | bytes):
                continue
            module = type(value).__module__
            if module.startswith("realtime_batch.orchestrator") and hasattr(value, "__dict__"):
                if isinstance(value, concurrent.futures.Future):
                    continue
                walk(value, f"{path}.{name}")
            elif isinstance(value, Sized) and not isinstance(value, type):
                counts[f"{path}.{name}"] = len(value)

    walk(session, "session")
    return counts


def run_tasks(session: rb.Session, count: int, **options) -> None:
    futures = [session.submit("echo.py", i, **options) for i in range(count)]
    _, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    session.results()  # the caller takes its results


def wait_for(predicate, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_finished_tasks_leave_nothing_behind_and_duplicates_are_still_dropped(url):
    responder = Responder(url, duplicate=True)  # every result arrives twice
    try:
        with rb.Session(url) as s:
            run_tasks(s, 500)
            wait_for(lambda: s.duplicates_dropped == 500)
            after_few = sum(held_entries(s).values())
            run_tasks(s, 3000)
            wait_for(lambda: s.duplicates_dropped == 3500)
            after_many = held_entries(s)
            assert sum(after_many.values()) <= after_few, after_many
            assert s.received == 3500 and s.results() == []
            with pytest.raises(ValueError, match="already used"):
                s.submit("echo.py", task_id="7")  # a generated id is still known as used
    finally:
        responder.close()


def test_chosen_task_ids_are_remembered_within_the_horizon_only(url, monkeypatch):
    from realtime_batch.orchestrator import _ledger

    monkeypatch.setattr(_ledger, "REUSE_HORIZON", 100)
    responder = Responder(url)
    try:
        with rb.Session(url) as s:
            futures = [s.submit("echo.py", task_id=f"job-{i}") for i in range(1000)]
            concurrent.futures.wait(futures, timeout=60)
            s.results()
            held = held_entries(s)
            assert max(held.values()) <= 100, held
            with pytest.raises(ValueError, match="already used"):
                s.submit("echo.py", task_id="job-999")  # recent: refused
    finally:
        responder.close()


def test_far_deadlines_of_finished_tasks_are_not_kept(url):
    responder = Responder(url)
    try:
        with rb.Session(url) as s:
            run_tasks(s, 3000, deadline=time.time() + 3600)
            # not one entry per finished task (the listener compacts after a receive)
            wait_for(lambda: max(held_entries(s).values()) <= 1024)
    finally:
        responder.close()


def test_job_manager_forgets_finished_caller_ids(url):
    responder = Responder(url)
    try:
        with rb.JobManager("client_1", "job", pool_or_url=url) as jm:
            futures = [jm.submit_task(i, "echo.py", "x") for i in range(3000)]
            concurrent.futures.wait(futures, timeout=60)
            assert len(jm.get_results()) == 3000
            wait_for(lambda: not jm._latest)  # only outstanding caller ids are mapped
            jm.submit_task(0, "echo.py", "again").result(timeout=10)  # re-use still works
    finally:
        responder.close()
