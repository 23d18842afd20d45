"""Benchmark task: the sum of a list of numbers (the workflow workload's reduce step)."""


def run(values: list[float]) -> float:
    """Return ``sum(values)``."""
    return sum(values)
