"""The benchmark tasks as plain functions, for the peers (Ray, Dask, Celery).

Same behaviour as the realtime-batch task modules in ``benchmarks/tasks/``.
"""

from __future__ import annotations

import time

__all__ = ["TASKS", "block", "echo", "noop", "sleep", "total"]


def noop() -> None:
    """Return at once."""
    return None


def sleep(seconds: float = 0.01) -> None:
    """Sleep ``seconds``."""
    time.sleep(seconds)


def echo(payload: str) -> str:
    """Return ``payload`` unchanged."""
    return payload


def block(seconds: float = 600.0) -> None:
    """Wait long enough that the task stays outstanding."""
    time.sleep(seconds)


def total(values: list[float]) -> float:
    """Return ``sum(values)`` (the workflow workload's reduce step)."""
    return sum(values)


TASKS = {"noop": noop, "sleep": sleep, "echo": echo, "block": block, "total": total}
