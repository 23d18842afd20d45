"""The workloads, written once against the ``System`` interface.

Each function runs one workload ``settings.reps`` times and returns one record: the
median of the repetitions for every figure, with the spread (min, max) in
``record["spread"]`` and the raw per-repetition figures in ``record["samples"]``.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks.procs import tree_usage
from benchmarks.systems.base import WORKERS, NotApplicableError, System

__all__ = [
    "FULL",
    "PAYLOADS",
    "QUICK",
    "Settings",
    "error_record",
    "fresh_once",
    "idle",
    "java_noop",
    "outstanding_growth",
    "payload",
    "roundtrip",
    "scaled",
    "sleep_10ms",
    "summarise",
    "throughput",
]

KIB = 1024
PAYLOADS = {
    "payload-1KiB": KIB,
    "payload-100KiB": 100 * KIB,
    "payload-1MiB": KIB * KIB,
    "payload-10MiB": 10 * KIB * KIB,
}
SLEEP_SECONDS = 0.010


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``FULL`` is the issue's; ``QUICK`` a short check)."""

    mode: str
    reps: int = 3
    #: repetitions of the workloads that start a fresh system each time
    start_reps: int = 3
    #: cold start and client memory in fresh processes (else: in the benchmark process)
    fresh_processes: bool = True
    roundtrip_n: int = 1000
    throughput_n: int = 20_000
    sleep_n: int = 2_000
    payload_n: dict[str, int] = field(
        default_factory=lambda: {
            "payload-1KiB": 200,
            "payload-100KiB": 50,
            "payload-1MiB": 10,
            "payload-10MiB": 5,
        }
    )
    idle_window: float = 5.0
    client_memory_n: int = 100_000
    warmup: int = 50


FULL = Settings("full")
QUICK = Settings(
    "quick",
    roundtrip_n=100,
    throughput_n=500,
    sleep_n=100,
    payload_n={"payload-1KiB": 10, "payload-100KiB": 5, "payload-1MiB": 3, "payload-10MiB": 2},
    idle_window=0.5,
    start_reps=1,
    fresh_processes=False,
    client_memory_n=5_000,
    warmup=5,
)


def scaled(system: System, n: int) -> int:
    """``n`` scaled by the system's ``scale`` (at least 2)."""
    return n if system.scale == 1.0 else max(2, int(n * system.scale))


def _note(system: System, *parts: str | None) -> str | None:
    found = [p for p in (*parts, system.scale_reason if system.scale != 1.0 else None) if p]
    return "; ".join(found) or None


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def summarise(system: str, workload: str, samples: list[dict[str, float]], **extra: Any) -> dict:
    """One record: the median of each figure over ``samples``, with min/max as the spread."""
    record: dict[str, Any] = {"system": system, "workload": workload, "status": "ok"}
    spread = {}
    for key in samples[0]:
        values = [s[key] for s in samples if s.get(key) is not None]
        if not values:
            continue
        record[key] = statistics.median(values)
        spread[key] = [min(values), max(values)]
    record.update(reps=len(samples), spread=spread, samples=samples, **extra)
    return record


def error_record(system: str, workload: str, status: str, reason: str) -> dict:
    """A record for a workload that failed (``error``), does not apply (``n/a``) or was skipped."""
    return {"system": system, "workload": workload, "status": status, "error": reason}


def _timed_calls(system: System, n: int, task: str, *args: Any) -> dict[str, float]:
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        system.call(task, *args)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    return {
        "p50_us": _percentile(latencies, 0.5) * 1e6,
        "p99_us": _percentile(latencies, 0.99) * 1e6,
    }


def roundtrip(system: System, settings: Settings) -> dict:
    """No-op round trips, one at a time: p50 and p99 latency."""
    n = scaled(system, settings.roundtrip_n)
    samples = [_timed_calls(system, n, "noop") for _ in range(settings.reps)]
    return summarise(system.name, "roundtrip", samples, n=n, note=_note(system))


def java_noop(system: System, settings: Settings) -> dict:
    """Round trips of ``noop.jar`` (a main that prints one line), side by side with Python's.

    The Java and the Python no-op alternate call by call on the same pool, so both see
    the same machine load; ``ratio_to_python`` is the Java p50 over the Python p50.
    """
    n = scaled(system, settings.roundtrip_n)
    try:
        for _ in range(max(settings.warmup, 1)):  # starts the engines' JVM hosts
            system.call_jar("noop.jar")
    except NotApplicableError as exc:
        return error_record(system.name, "java-noop", "n/a", str(exc))
    samples = []
    for _ in range(settings.reps):
        java, python = [], []
        for _ in range(n):
            start = time.perf_counter()
            system.call_jar("noop.jar")
            java.append(time.perf_counter() - start)
            start = time.perf_counter()
            system.call("noop")
            python.append(time.perf_counter() - start)
        java.sort()
        python.sort()
        java_p50, python_p50 = _percentile(java, 0.5), _percentile(python, 0.5)
        samples.append(
            {
                "p50_us": java_p50 * 1e6,
                "p99_us": _percentile(java, 0.99) * 1e6,
                "python_p50_us": python_p50 * 1e6,
                "ratio_to_python": java_p50 / python_p50,
            }
        )
    return summarise(system.name, "java-noop", samples, n=n, note=_note(system))


def payload(system: System, settings: Settings, workload: str) -> dict:
    """Round trips of an echo task carrying a string of the workload's size both ways."""
    size = PAYLOADS[workload]
    n = scaled(system, settings.payload_n[workload])
    text = "x" * size
    try:
        system.call("echo", text)  # warm-up; also where a size limit shows
        samples = [_timed_calls(system, n, "echo", text) for _ in range(settings.reps)]
    except NotApplicableError as exc:
        return error_record(system.name, workload, "n/a", str(exc))
    return summarise(system.name, workload, samples, n=n, payload_bytes=size, note=_note(system))


def throughput(system: System, settings: Settings) -> dict:
    """``throughput_n`` no-op tasks submitted at once: tasks per second until the last result."""
    n = scaled(system, settings.throughput_n)
    samples = []
    for _ in range(settings.reps):
        start = time.perf_counter()
        system.run_all("noop", [()] * n)
        samples.append({"tasks_per_s": n / (time.perf_counter() - start)})
    quick = None if settings.throughput_n == FULL.throughput_n else f"{n} tasks (quick mode)"
    return summarise(system.name, "throughput", samples, n=n, note=_note(system, quick))


def sleep_10ms(system: System, settings: Settings) -> dict:
    """``sleep_n`` tasks of 10 ms at once; efficiency = ideal (n x 10 ms / workers) / elapsed."""
    n = scaled(system, settings.sleep_n)
    ideal = n * SLEEP_SECONDS / WORKERS
    samples = []
    for _ in range(settings.reps):
        start = time.perf_counter()
        system.run_all("sleep", [(SLEEP_SECONDS,)] * n)
        elapsed = time.perf_counter() - start
        samples.append({"efficiency": ideal / elapsed, "seconds": elapsed})
    return summarise(system.name, "sleep-10ms", samples, n=n, ideal_s=ideal, note=_note(system))


def idle(system: System, settings: Settings) -> dict:
    """RSS and CPU of the worker-side processes (every descendant of this process), idle."""
    samples = []
    for _ in range(settings.reps):
        usage = tree_usage(settings.idle_window)
        samples.append(
            {
                "rss_mb": usage["workers_rss_mb"] or None,
                "cpu_pct": usage["workers_cpu_pct"],
                "client_cpu_pct": usage["client_cpu_pct"],
                "processes": usage["processes"],
            }
        )
    return summarise(system.name, "idle", samples, window_s=settings.idle_window)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def outstanding_growth(system: System, n: int, settle: float = 30.0) -> dict[str, float]:
    """Submit ``n`` tasks that do not finish; return the peak growth of this process's RSS."""
    for _ in range(5):
        system.call("noop")
    gc.collect()
    time.sleep(0.5)
    baseline = _rss_mb()
    start = time.perf_counter()
    system.submit_outstanding("block", n)
    submit_s = time.perf_counter() - start
    peak = previous = _rss_mb()
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:  # until the RSS stops moving
        time.sleep(0.5)
        current = _rss_mb()
        peak = max(peak, current)
        if abs(current - previous) < 1.0:
            break
        previous = current
    growth = max(peak - baseline, 0.0)  # RSS noise can read slightly below the baseline
    return {"rss_mb": growth, "baseline_mb": baseline, "submit_s": submit_s}


def fresh_once(system: System, n: int) -> dict[str, float]:
    """One fresh start of ``system``: cold start, then client RSS growth with ``n`` outstanding.

    Run in a new process each time, so neither figure profits from an earlier run.
    ``seconds`` is from ``start()`` to the first no-op result; ``rss_mb`` comes from
    :func:`outstanding_growth` (skipped when ``n`` is 0).
    """
    start = time.perf_counter()
    try:  # stop() also when start() fails or is interrupted part way
        system.start()
        system.call("noop")
        figures: dict[str, float] = {"seconds": time.perf_counter() - start}
        if n > 0:
            figures.update(outstanding_growth(system, n))
        return figures
    finally:
        system.stop()
