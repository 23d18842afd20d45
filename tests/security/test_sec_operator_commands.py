"""Operator-only requests on a CURVE broker with roles: statistics, engine stops, reports.

Added with roles (issue 15) for the requests that came in beside them: ``STATS``
(``rtbatch status``/``top``/``dashboard``), ``QUEUE_COUNTS`` (autoscaling), engine
reports riding on heartbeats, and the ``stop`` control message a pool sends to drain
an engine. Without these rules any client key could read every session id and engine
from the statistics, spoof an engine's row, or stop every engine of the pool.
"""

from __future__ import annotations

import time

import pytest
from test_sec_authz_broker import CONTROL, TASKS, setup  # noqa: F401 - the fixture

from realtime_batch.control import cancel_messages, stop_message
from realtime_batch.transport import PermissionDeniedError, dead_letter_queue


def test_only_an_admin_reads_broker_statistics(setup):  # noqa: F811
    with pytest.raises(PermissionDeniedError, match="only an admin"):
        setup.open("alice").stats()
    with pytest.raises(PermissionDeniedError):
        setup.open("engine").stats()
    assert TASKS in {queue.name for queue in setup.open("admin").stats().queues}


def test_queue_counts_need_a_right_on_the_queue(setup):  # noqa: F811
    alice = setup.open("alice")
    assert alice.queue_counts(TASKS).total == 0  # a client may send there: it may count
    with pytest.raises(PermissionDeniedError):
        alice.queue_counts(dead_letter_queue(TASKS))
    assert setup.open("admin").queue_counts(dead_letter_queue(TASKS)).total == 0


def test_only_an_admin_sends_stop_but_a_client_still_cancels(setup):  # noqa: F811
    mallory, admin = setup.open("mallory"), setup.open("admin")
    with pytest.raises(PermissionDeniedError, match="'stop'"):
        mallory.send(CONTROL, stop_message("engine-1"))
    mallory.send(CONTROL, cancel_messages("session-x", "engine-1", ["1"], "secret"))
    admin.send(CONTROL, stop_message("engine-1"))
    kinds = [d.message.properties.get("kind") for d in admin.receive(
        CONTROL, max_messages=5, timeout=5, group="engine-1")]  # fmt: skip
    assert sorted(kinds) == ["cancel", "stop"]


def test_engine_reports_are_kept_from_engine_keys_only(setup):  # noqa: F811
    engine, mallory, admin = setup.open("engine"), setup.open("mallory"), setup.open("admin")
    engine.report_engine({"id": "real-engine", "host": "node-1", "state": "idle"})
    mallory.report_engine({"id": "spoofed-engine", "host": "evil", "state": "idle"})
    deadline = time.monotonic() + 15
    seen: set[str] = set()
    while "real-engine" not in seen and time.monotonic() < deadline:
        seen = {row.id for row in admin.stats().engines}
        time.sleep(0.2)
    assert "real-engine" in seen  # heartbeats carried the reports by now
    time.sleep(2.5)  # two more heartbeat rounds of mallory's
    assert "spoofed-engine" not in {row.id for row in admin.stats().engines}
