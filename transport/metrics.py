"""Prometheus metrics of a transport's ``TransportStats`` (``rtbatch broker --metrics-port``).

A custom ``prometheus_client`` collector turns the latest snapshot into metric
families on each scrape; the broker's loop refreshes the snapshot once a second
(``Broker.last_stats``), so a scrape never touches the broker's state from
another thread. ``prometheus_client`` is imported here only, when metrics are asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .stats import LATENCY_BUCKETS, TransportStats

__all__ = ["StatsCollector", "histogram_buckets", "serve_metrics"]

logger = logging.getLogger(__name__)


def histogram_buckets(counts: Sequence[int]) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` pairs from per-bucket counts over ``LATENCY_BUCKETS`` (+Inf)."""
    pairs, total = [], 0
    bounds = [*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"]
    for bound, count in zip(bounds, counts, strict=False):
        total += count
        pairs.append((bound, total))
    while len(pairs) < len(bounds):
        pairs.append((bounds[len(pairs)], total))
    return pairs


class StatsCollector:
    """Metric families from ``snapshot()`` (None before the first snapshot: nothing)."""

    def __init__(self, snapshot: Callable[[], TransportStats | None]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        if stats is None:
            return
        yield from _queue_metrics(stats)
        yield from _engine_metrics(stats)
        if stats.uptime is not None:
            yield GaugeMetricFamily(
                "rtbatch_broker_uptime_seconds", "Seconds since the broker started.",
                value=stats.uptime,
            )  # fmt: skip
        if stats.connections is not None:
            yield GaugeMetricFamily(
                "rtbatch_broker_connections", "Clients heard from lately.",
                value=stats.connections,
            )  # fmt: skip
        if stats.bad_requests is not None:
            yield CounterMetricFamily(
                "rtbatch_broker_bad_requests", "Requests refused as malformed.",
                value=stats.bad_requests,
            )  # fmt: skip


def _queue_metrics(stats: TransportStats) -> Iterator[Metric]:
    gauges = {
        "depth": GaugeMetricFamily("rtbatch_queue_depth", "Messages waiting.", labels=["queue"]),
        "leased": GaugeMetricFamily(
            "rtbatch_queue_in_flight", "Messages leased to a receiver.", labels=["queue"]
        ),
        "dead_letter": GaugeMetricFamily(
            "rtbatch_queue_dead_letters", "Messages in the dead-letter queue.", labels=["queue"]
        ),
    }
    counters = {
        "sent": CounterMetricFamily(
            "rtbatch_tasks_received", "Messages sent to the queue.", labels=["queue"]
        ),
        "completed": CounterMetricFamily(
            "rtbatch_tasks_completed", "Messages completed.", labels=["queue"]
        ),
        "dead_lettered": CounterMetricFamily(
            "rtbatch_tasks_dead_lettered", "Messages dead-lettered.", labels=["queue"]
        ),
        "redelivered": CounterMetricFamily(
            "rtbatch_tasks_retried",
            "Leases that ended without completion (abandoned or expired): redeliveries.",
            labels=["queue"],
        ),
    }
    latency = HistogramMetricFamily(
        "rtbatch_task_latency_seconds",
        "Seconds from enqueue to completion.",
        labels=["queue"],
    )
    for queue in stats.queues:
        for field, family in (*gauges.items(), *counters.items()):
            value = getattr(queue, field)
            if value is not None:
                family.add_metric([queue.name], value)
        if queue.latency_buckets:
            latency.add_metric(
                [queue.name], histogram_buckets(queue.latency_buckets), queue.latency_sum
            )
    yield from gauges.values()
    yield from counters.values()
    yield latency


def _engine_metrics(stats: TransportStats) -> Iterator[Metric]:
    by_state: dict[str, int] = {}
    done = CounterMetricFamily(
        "rtbatch_engine_tasks_done", "Tasks an engine finished (its reports).", labels=["engine"]
    )
    failed = CounterMetricFamily(
        "rtbatch_engine_tasks_failed", "Tasks that ended in an error (engine reports).",
        labels=["engine"],
    )  # fmt: skip
    busy = GaugeMetricFamily(
        "rtbatch_engine_busy_ratio", "Share of an engine's time spent running tasks.",
        labels=["engine"],
    )  # fmt: skip
    restarts = CounterMetricFamily(
        "rtbatch_engine_worker_restarts", "Task workers started after the first (reports).",
        labels=["engine"],
    )  # fmt: skip
    for engine in stats.engines:
        by_state[engine.state] = by_state.get(engine.state, 0) + 1
        done.add_metric([engine.id], engine.tasks_done)
        failed.add_metric([engine.id], engine.tasks_failed)
        restarts.add_metric([engine.id], engine.worker_restarts)
        if engine.busy_ratio is not None:
            busy.add_metric([engine.id], engine.busy_ratio)
    engines = GaugeMetricFamily("rtbatch_engines", "Engines by reported state.", labels=["state"])
    for state, count in sorted(by_state.items()):
        engines.add_metric([state], count)
    yield from (engines, done, failed, busy, restarts)


def serve_metrics(port: int, collector: Any, host: str = "127.0.0.1") -> tuple[Any, Any]:
    """Serve ``collector``'s metrics at ``http://host:port/metrics`` in a daemon thread.

    Returns the server and its thread (``server.shutdown()`` stops it).

    Raises:
        OSError: the port cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    server, thread = start_http_server(port, host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server, thread
