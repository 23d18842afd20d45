"""Prometheus metrics of one engine (``rtbatch engine --metrics-port``).

Read on each scrape from the engine's ``TaskObserver`` (``engine._observe``) and
its state. In direct mode (the task worker fed directly, on ``zmq://``) the task
worker sends the results itself and counts them in its own observer, whose
figures it keeps in the ledger it shares with the engine: the endpoint adds them
to the engine's (the tasks whose worker was lost).
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
        observers = engine.observers()  # the engine's, and its direct worker's
        label = [engine.engine_id]

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["engine"])
            family.add_metric(label, value)
            return family

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["engine"])
            family.add_metric(label, value)
            return family

        def total(field: str) -> float:
            return sum(getattr(observer, field) for observer in observers)

        yield counter("rtbatch_engine_tasks_done", "Tasks this engine ran.", engine.tasks_done)
        yield counter("rtbatch_engine_tasks_completed", "Results sent that were not errors.",
                      total("completed"))  # fmt: skip
        yield counter("rtbatch_engine_tasks_failed", "Error results sent.", total("failed"))
        yield counter("rtbatch_engine_tasks_retried", "Tasks run again after a failure.",
                      total("retried"))  # fmt: skip
        yield counter("rtbatch_engine_worker_restarts", "Task workers started after the first.",
                      engine.worker_restarts)  # fmt: skip
        yield gauge("rtbatch_engine_busy", "1 while a task runs.",
                    1.0 if engine.current_task is not None else 0.0)  # fmt: skip
        for observer in observers:
            if observer.times_tasks:
                yield gauge("rtbatch_engine_busy_ratio", "Share of time spent running tasks.",
                            observer.busy_ratio(time.time()))  # fmt: skip
        duration = HistogramMetricFamily(
            "rtbatch_engine_task_duration_seconds", "Run time of the tasks answered.",
            labels=["engine"],
        )  # fmt: skip
        buckets = [
            sum(counts) for counts in zip(*(o.duration_buckets for o in observers), strict=True)
        ]
        duration.add_metric(label, histogram_buckets(buckets), total("duration_sum"))
        yield duration


def serve_engine_metrics(engine: Engine, port: int, host: str = "127.0.0.1") -> tuple:
    """Serve ``engine``'s metrics at ``http://host:port/metrics`` (see ``serve_metrics``)."""
    return serve_metrics(port, EngineCollector(engine), host)
