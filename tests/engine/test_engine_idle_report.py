"""An idle engine's report stays the same, so nothing carries it while nothing happens.

The report rides on the transport's heartbeats (zmq: a heartbeat is sent when the
report changed). The busy ratio of an engine is the share of its lifetime spent
running tasks: recomputed every second, it changed every second while the engine
sat idle, and each change was a heartbeat (#21). It is now passed on with the
results, by the outbox's observer, in both ways of feeding the worker.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from engine_helpers import TASKS, Harness, open_harness


def _watch_reports(harness: Harness) -> list[dict[str, Any]]:
    """The engine report as the broker would hold it (the parts merged), after each part
    passed to the harness's memory transport."""
    reports: list[dict[str, Any]] = []
    merged: dict[str, Any] = {}
    report_engine = harness.transport.report_engine

    def spy(report):
        merged.update(report)
        reports.append(dict(merged))
        return report_engine(report)

    harness.transport.report_engine = spy  # type: ignore[method-assign]
    return reports


def test_an_idle_relay_engine_passes_on_the_same_report_every_second(tmp_path):
    harness = Harness(TASKS, tmp_path)
    reports = _watch_reports(harness)
    try:
        harness.engine(engine_id=f"idle-{uuid.uuid4().hex[:6]}")
        harness.submit("sleep.py", 0.2)
        assert harness.result().status == "ok"
        end = time.monotonic() + 10
        while not (reports and reports[-1].get("busy", 0) > 0) and time.monotonic() < end:
            time.sleep(0.05)  # the result's figures are told within a second or so
        assert reports[-1]["busy"] > 0, reports[-1]
        time.sleep(0.2)
        seen = len(reports)
        time.sleep(3.5)  # idle: about three of the engine's one-second reports
        idle = reports[seen:]
        assert len(idle) >= 2, idle  # the engine does report while idle...
        assert all(report == idle[0] for report in idle), idle  # ...the same each time
        assert idle[0]["state"] == "idle" and idle[0]["busy"] > 0
    finally:
        harness.close()


def test_a_relay_engine_that_ran_nothing_reports_its_counts_too(tmp_path):
    harness = Harness(TASKS, tmp_path)
    reports = _watch_reports(harness)
    try:
        harness.engine()
        end = time.monotonic() + 5
        while not (reports and "state" in reports[-1]) and time.monotonic() < end:
            time.sleep(0.05)
        merged = reports[-1]
        assert (merged["failed"], merged["busy"], merged["failures"]) == (0, 0.0, [])
    finally:
        harness.close()


def test_a_direct_workers_last_results_reach_the_report_before_it_waits_idle(tmp_path):
    """Results within a second of the last report were told only with the next result:
    an engine that went idle after them kept showing a busy ratio of 0."""
    with open_harness("direct", TASKS, tmp_path / "wd") as harness:
        engine = harness.engine(engine_id=f"direct-{uuid.uuid4().hex[:6]}")
        harness.submit("sleep.py", 0.2)  # within a second of the worker's first report
        assert harness.result().status == "ok"
        end = time.monotonic() + 10
        busy = None
        while time.monotonic() < end:
            rows = [e for e in harness.transport.stats().engines if e.id == engine.engine_id]
            busy = rows[0].busy_ratio if rows else None  # known from its first heartbeat on
            if busy:
                break
            time.sleep(0.2)
        assert busy is not None and busy > 0, busy
