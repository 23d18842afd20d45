"""Benchmark task: waits a long time, so submitted tasks stay outstanding (client-memory)."""

import time


def run(seconds: float = 600.0) -> None:
    """Sleep ``seconds`` (the benchmark stops the workers long before)."""
    time.sleep(seconds)
