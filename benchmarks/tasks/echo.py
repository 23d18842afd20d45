"""Benchmark task: returns its argument (the payload workloads; it travels both ways)."""


def run(payload: str) -> str:
    """Return ``payload`` unchanged."""
    return payload
