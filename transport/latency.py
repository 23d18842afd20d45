"""The latency histogram's buckets, shared by the broker's statistics and an engine's report.

Apart from ``stats`` (whose record classes an engine never builds) so that an
engine and its worker start without them (#21); ``stats`` re-exports both names.
"""

from __future__ import annotations

import bisect

__all__ = ["LATENCY_BUCKETS", "latency_bucket"]

#: Upper bounds (seconds) of the latency histogram buckets, enqueue to completion.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


def latency_bucket(seconds: float) -> int:
    """Index of the histogram bucket for ``seconds`` (``len(LATENCY_BUCKETS)``: +Inf)."""
    return bisect.bisect_left(LATENCY_BUCKETS, seconds)
