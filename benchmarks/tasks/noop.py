"""Benchmark task: does nothing (the round-trip and throughput workloads)."""


def run() -> None:
    """Return at once."""
    return None
