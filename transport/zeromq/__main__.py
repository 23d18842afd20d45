"""``python -m realtime_batch.transport.zeromq``: run the broker (same as ``rtbatch broker``)."""

from __future__ import annotations

from .cli import broker

if __name__ == "__main__":
    broker(prog_name="python -m realtime_batch.transport.zeromq")
