"""The Service Bus operations benchmark runs, and its counts show batching working."""

from __future__ import annotations

import pytest

from benchmarks.servicebus import SCENARIOS, round_trips, run_scenario

pytestmark = pytest.mark.azure


def test_round_trip_estimate():
    ops = {"connections": 1, "attaches": 2, "transfers_in": 3, "flows_in": 4}
    assert round_trips(ops) == 3 + 2 + 3 + 4


def test_batched_submit_and_receive_and_delete_results(standin):
    options = SCENARIOS["batched, prefetch 50, receive-and-delete results"]
    phases = run_scenario(standin, 30, **options)
    submit, _ = phases["client submit"]
    results, _ = phases["client results"]
    engine, _ = phases["engine"]
    assert submit["transfers_in"] == 1 and submit["messages_in"] == 30
    assert results["dispositions_in"] == 0  # nothing to settle in receive-and-delete
    assert engine["dispositions_in"] == 30 and engine["messages_in"] == 30
