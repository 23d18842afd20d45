"""``python -m realtime_batch.engine``: the same command as ``rtbatch engine``."""

from __future__ import annotations

from .cli import engine

if __name__ == "__main__":
    engine(prog_name="python -m realtime_batch.engine")
