"""The Celery app of the benchmark: the peer tasks, Redis broker and result backend.

The worker runs ``celery -A benchmarks.systems.celery_app worker``; the Redis URL
comes from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks import peer_tasks

__all__ = ["TASKS", "app"]

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("rtbatch_bench", broker=_URL, backend=_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)

TASKS = {name: app.task(fn, name=f"bench.{name}") for name, fn in peer_tasks.TASKS.items()}
