"""Session.health() and the TimeoutError of result(): a queue nobody serves is named."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

import realtime_batch as rb
from realtime_batch.orchestrator.health import STATE_IDLE, STATE_NO_ENGINE, STATE_WAITING


def test_tasks_nobody_takes_are_reported_warned_and_explained_by_the_timeout(caplog):
    url = f"memory://health-{uuid.uuid4().hex}"
    with rb.Session(url, warn_after=0.3) as session:
        assert session.health().state == STATE_IDLE
        future = session.submit("hello.py", "x")
        assert session.health().state == STATE_WAITING
        with caplog.at_level(logging.WARNING, logger="realtime_batch.orchestrator.session"):
            deadline = time.monotonic() + 10
            while session.health().state != STATE_NO_ENGINE and time.monotonic() < deadline:
                time.sleep(0.05)
            health = session.health()
            assert health.state == STATE_NO_ENGINE and not health.ok
            assert health.outstanding == 1 and health.engines == {}
            assert "no engine has taken any" in health.message and "'tasks'" in health.message
            with pytest.raises(TimeoutError) as info:
                future.result(timeout=0.2)
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.05)
    message = str(info.value)
    assert "no result for task '1' within 0.2 s" in message
    assert "no engine has taken any" in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no engine has taken any" in warnings[0]


def test_served_session_is_healthy_and_names_its_engines(tmp_path):
    task = tmp_path / "echo.py"
    task.write_text("def run(x):\n    return x\n")
    with (
        rb.LocalPool(transport=f"memory://health-{uuid.uuid4().hex}", task_files=[task]) as pool,
        rb.Session(pool, warn_after=0.1) as session,
    ):
        assert session.submit("echo.py", 5).result(timeout=30) == 5
        health = session.health()
    assert health.state == STATE_IDLE and health.ok
    assert health.received == 1 and len(health.engines) >= 1
