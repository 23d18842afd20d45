"""Benchmark task: sleeps for a given number of seconds (the sleep-10ms workload)."""

import time


def run(seconds: float = 0.01) -> None:
    """Sleep ``seconds`` and return."""
    time.sleep(seconds)
