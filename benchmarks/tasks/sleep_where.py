"""Benchmark task: sleeps, then says which process ran it (the spread of tasks per engine)."""

import os


def run(seconds: float = 0.01) -> int:
    """Sleep ``seconds``; return the id of the engine process (the task worker's parent)."""
    import time

    time.sleep(seconds)
    return os.getppid()
