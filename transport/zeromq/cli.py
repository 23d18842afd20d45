"""``rtbatch broker``: run the ZeroMQ broker in the foreground."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from ..base import DEFAULT_MAX_MESSAGE_SIZE
from .broker import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_LIVENESS, Broker
from .journal import SqliteJournal

__all__ = ["broker"]

logger = logging.getLogger(__name__)


@click.command()
@click.option(
    "--bind",
    default="tcp://127.0.0.1:5555",
    show_default=True,
    help="ZeroMQ endpoint to bind; port 0 picks a free port (printed on the READY line).",
)
@click.option(
    "--max-message-size",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_MESSAGE_SIZE,
    show_default=True,
    help="Largest accepted message body in bytes.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.01),
    default=DEFAULT_HEARTBEAT_INTERVAL,
    show_default=True,
    help="Default client heartbeat interval in seconds.",
)
@click.option(
    "--heartbeat-liveness",
    type=click.IntRange(min=1),
    default=DEFAULT_HEARTBEAT_LIVENESS,
    show_default=True,
    help="Missed heartbeats after which a client's leases are released.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Make the broker durable: journal accepted messages in DIR (SQLite, WAL) and "
    "restore them on start. Without it the broker keeps everything in memory.",
)
def broker(
    bind: str,
    max_message_size: int,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    data_dir: Path | None,
) -> None:
    """Run the ZeroMQ broker serving zmq:// transports until SIGTERM or Ctrl-C.

    Prints ``READY <endpoint>`` on stdout once it accepts connections.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("RTBATCH_LOG_LEVEL", "WARNING"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    journal = SqliteJournal(data_dir) if data_dir is not None else None
    server = Broker(
        bind,
        max_message_size=max_message_size,
        heartbeat_interval=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness,
        journal=journal,
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        server.stop()

    # Queued messages hold no reference cycles: collect rarely instead of every 700
    # allocations, which with 100,000 queued messages costs more than the work itself.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"READY {server.endpoint}")
    sys.stdout.flush()
    if journal is None:
        mode = "in-memory: queued messages are lost when the broker stops"
    else:
        mode = f"durable: journal {journal.path}, {server.restored} message(s) restored"
    click.echo(f"broker listening on {server.endpoint} ({mode})", err=True)
    try:
        server.run()
    finally:
        server.close()
