"""Prometheus metrics of one engine (``rtbatch engine --metrics-port``).

Read on each scrape from the engine's ``TaskObserver`` (``engine._observe``) and
its state. In direct mode (the task worker fed directly, on ``zmq://``)
the task worker sends the results itself: this endpoint then counts the tasks
run and the failures its engine answered (a crashed or timed-out worker), while
every failure and the busy ratio reach the broker's endpoint through the
engine's reports (``rtbatch_engine_*{engine=...}`` there).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..transport.metrics import histogram_buckets, serve_metrics

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["EngineCollector", "serve_engine_metrics"]


class EngineCollector:
    """Metric families of ``engine``, labelled with its id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        observer = engine._outbox.observer
        label = [engine.engine_id]

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["engine"])
            family.add_metric(label, value)
            return family

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["engine"])
            family.add_metric(label, value)
            return family

        yield counter("rtbatch_engine_tasks_done", "Tasks this engine ran.", engine.tasks_done)
        yield counter("rtbatch_engine_tasks_completed", "Results sent here that were not errors.",
                      observer.completed)  # fmt: skip
        yield counter("rtbatch_engine_tasks_failed", "Error results sent here.", observer.failed)
        yield counter("rtbatch_engine_tasks_retried", "Tasks run again after a failure.",
                      observer.retried)  # fmt: skip
        yield gauge("rtbatch_engine_busy", "1 while a task runs.",
                    1.0 if engine.current_task is not None else 0.0)  # fmt: skip
        if not engine.direct:
            yield gauge("rtbatch_engine_busy_ratio", "Share of time spent running tasks.",
                        observer.busy_ratio(time.time()))  # fmt: skip
        duration = HistogramMetricFamily(
            "rtbatch_engine_task_duration_seconds", "Run time of the tasks answered here.",
            labels=["engine"],
        )  # fmt: skip
        duration.add_metric(
            label, histogram_buckets(observer.duration_buckets), observer.duration_sum
        )
        yield duration


def serve_engine_metrics(engine: Engine, port: int, host: str = "127.0.0.1") -> tuple:
    """Serve ``engine``'s metrics at ``http://host:port/metrics`` (see ``serve_metrics``)."""
    return serve_metrics(port, EngineCollector(engine), host)
