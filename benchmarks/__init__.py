"""Side-by-side benchmarks of realtime-batch against raw pyzmq, Ray, Dask and Celery.

Run everything with ``python -m benchmarks`` (or ``rtbatch bench``); ``--quick`` is a
short check run. Each system runs in its own subprocess with two workers on loopback;
the parent collects one JSON record per system and workload and writes the report
(``docs/benchmarks.md`` and ``docs/img/benchmarks.png``).
"""

from __future__ import annotations

__all__ = ["ROOT", "SYSTEMS", "WORKLOADS"]

from pathlib import Path

#: the checkout holding ``benchmarks/`` (its parent directory)
ROOT = Path(__file__).resolve().parent.parent

SYSTEMS = (
    "raw-zmq",
    "rtbatch-memory",
    "rtbatch-zmq",
    "rtbatch-servicebus",
    "ray",
    "dask",
    "celery",
)
WORKLOADS = (
    "roundtrip",
    "java-noop",
    "throughput",
    "sleep-10ms",
    "payload-1KiB",
    "payload-100KiB",
    "payload-1MiB",
    "payload-10MiB",
    "cold-start",
    "idle",
    "client-memory",
    "scale-session-memory",
    "workflow",
)
