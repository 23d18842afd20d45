"""``_reach.Backoff`` waits as tenacity's ``wait_exponential`` does.

The engine and its worker each make a ``Backoff`` when they start; tenacity costs
them both its import (issue #21), so ``Backoff`` imports it at the first failure.
"""

from __future__ import annotations

import pytest
import tenacity

from realtime_batch.engine._reach import Backoff


def _tenacity_waits(first: float, cap: float, n: int) -> list[float]:
    rule = tenacity.wait_exponential(multiplier=first, min=first, max=cap)
    state = tenacity.RetryCallState(None, None, (), {})
    waits = []
    for attempt in range(1, n + 1):
        state.attempt_number = attempt
        waits.append(rule(state))
    return waits


@pytest.mark.parametrize(
    ("first", "cap"), [(0.1, 5.0), (0.05, 1.0), (1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (0.3, 7.0)]
)
def test_backoff_waits_as_tenacity_wait_exponential(first, cap):
    backoff = Backoff(first, cap)
    expected = _tenacity_waits(first, cap, 40)
    assert [backoff.failed() for _ in range(40)] == expected
    backoff.succeeded()
    assert [backoff.failed() for _ in range(5)] == expected[:5]


def test_backoff_defaults_double_from_a_tenth_to_five_seconds():
    backoff = Backoff()
    assert [backoff.failed() for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
