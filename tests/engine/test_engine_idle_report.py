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

from engine_helpers import TASKS, Harness


def test_an_idle_relay_engine_passes_on_the_same_report_every_second(tmp_path):
    harness = Harness(TASKS, tmp_path)
    reports: list[dict[str, Any]] = []
    merged: dict[str, Any] = {}
    report_engine = harness.transport.report_engine

    def spy(report):
        merged.update(report)
        reports.append(dict(merged))
        return report_engine(report)

    harness.transport.report_engine = spy  # type: ignore[method-assign]
    try:
        harness.engine(engine_id=f"idle-{uuid.uuid4().hex[:6]}")
        harness.submit("sleep.py", 0.2)
        assert harness.result().status == "ok"
        time.sleep(1.5)  # the result's report has gone out
        seen = len(reports)
        time.sleep(3.5)  # idle: three or more of the engine's one-second reports
        idle = reports[seen:]
        assert len(idle) >= 3, idle  # the engine does report while idle...
        assert all(report == idle[0] for report in idle), idle  # ...the same each time
        assert idle[0]["state"] == "idle" and idle[0]["busy"] > 0
    finally:
        harness.close()
