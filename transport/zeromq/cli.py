"""``rtbatch broker`` (run the ZeroMQ broker) and ``rtbatch keys`` (CURVE key pairs)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from ..base import DEFAULT_MAX_MESSAGE_SIZE
from .authz import CLIENT, ROLES, QueueKinds
from .broker import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_LIVENESS,
    DEFAULT_MAX_PARKED_RECEIVES,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_QUEUES,
    DEFAULT_SPIN,
    Broker,
)
from .cli_options import curve_key_options
from .connections import raise_fd_limit
from .curve import is_loopback_endpoint

if TYPE_CHECKING:
    from .curve import BrokerCurve
    from .journal import SqliteJournal

__all__ = ["broker", "curve_key_options", "keys"]

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
    "restore them on start. Without it the broker keeps everything in memory. A journal "
    "that lost data or cannot be read stops the broker (see --recover).",
)
@click.option(
    "--recover",
    is_flag=True,
    help="With --data-dir: if the journal lost data or cannot be read, move its files "
    "aside (broker.sqlite3.damaged-TIME) and start with an empty one, saying how many "
    "messages were lost.",
)
@click.option(
    "--curve-secret-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The broker's CURVE .key_secret file (rtbatch keys generate): encrypt and "
    "authenticate all traffic.",
)
@click.option(
    "--authorized-keys",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Authorized-keys directory: DIR/client/*.key, DIR/engine/*.key, DIR/admin/*.key "
    "give each key its role (.key files directly in DIR count as client); only these "
    "keys may connect, and each may do what its role allows (with --curve-secret-key; "
    "required unless --bind is a loopback address).",
)
@click.option(
    "--mailbox-queue",
    "mailbox_queues",
    multiple=True,
    default=("results",),
    show_default=True,
    help="Name of a grouped results queue: clients may read only their own groups there, "
    "engines may send to it (repeat for several).",
)
@click.option(
    "--control-queue",
    "control_queues",
    multiple=True,
    default=("control",),
    show_default=True,
    help="Name of a grouped control queue: clients may send cancel requests, engines "
    "receive them (repeat for several). Other queues are task queues.",
)
@click.option(
    "--spin-us",
    type=click.FloatRange(min=0),
    default=DEFAULT_SPIN * 1e6,
    show_default=True,
    help="Microseconds to keep polling for the next request after handling some, before "
    "sleeping: lower latency for up to that much CPU per burst of traffic (0: off; always "
    "off on a single CPU; skipped when those just answered usually take longer).",
)
@click.option(
    "--max-parked-receives",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PARKED_RECEIVES,
    show_default=True,
    help="Receives one client may have waiting at the broker at once; one more is "
    "refused with an error.",
)
@click.option(
    "--max-queued-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_QUEUED_BYTES,
    show_default=True,
    help="Memory high-water mark: bytes of messages the broker holds (bodies plus 256 "
    "bytes each) past which sends are refused with QueueFullError; clients retry them "
    "until their send timeout.",
)
@click.option(
    "--max-queues",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_QUEUES,
    show_default=True,
    help="Queues that may be declared (dead-letter queues not counted); one more is "
    "refused with QueueFullError. Per-queue limits: declare_queue(max_length=...).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Client connections kept at once; past it the most silent are closed, with a "
    "warning. Default: the open-file limit (raised to its hard limit first) less 64.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback --bind without CURVE keys (plain, unauthenticated TCP).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics (queues, tasks, latency, engines) on this port "
    "(http://127.0.0.1:PORT/metrics; 0 picks a free port, logged).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds (it has no authentication).",
)
def broker(
    bind: str,
    max_message_size: int,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    data_dir: Path | None,
    recover: bool,
    curve_secret_key: Path | None,
    authorized_keys: Path | None,
    spin_us: float,
    max_parked_receives: int,
    max_queued_bytes: int,
    max_queues: int,
    max_connections: int | None,
    insecure: bool,
    metrics_port: int | None,
    metrics_host: str,
    mailbox_queues: tuple[str, ...],
    control_queues: tuple[str, ...],
) -> None:
    """Run the ZeroMQ broker serving zmq:// transports until SIGTERM or Ctrl-C.

    Prints ``READY <endpoint>`` on stdout once it accepts connections.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("RTBATCH_LOG_LEVEL", "WARNING"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    if authorized_keys is not None and curve_secret_key is None:
        raise click.UsageError("--authorized-keys needs --curve-secret-key")
    if curve_secret_key is None and not insecure and not is_loopback_endpoint(bind):
        raise click.UsageError(
            f"refusing to serve {bind} without CURVE keys: anyone who can reach it could "
            "read and inject tasks. Pass --curve-secret-key (see 'rtbatch keys generate'), "
            "bind a loopback address, or add --insecure."
        )
    if (
        curve_secret_key is not None
        and authorized_keys is None
        and not insecure
        and not is_loopback_endpoint(bind)
    ):
        raise click.UsageError(
            f"refusing to serve {bind} with CURVE but no --authorized-keys: anyone holding "
            "the broker's public key could connect. Pass --authorized-keys DIR (see "
            "'rtbatch keys generate --role ROLE --authorize DIR'), bind a loopback address, "
            "or add --insecure."
        )
    if set(mailbox_queues) & set(control_queues):
        raise click.UsageError("a queue cannot be both a --mailbox-queue and a --control-queue")
    curve = journal = None
    if curve_secret_key is not None:
        from .curve import BrokerCurve

        try:
            curve = BrokerCurve(curve_secret_key, authorized_keys)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    raise_fd_limit()
    if recover and data_dir is None:
        raise click.UsageError("--recover needs --data-dir")
    if data_dir is not None:
        journal = _open_journal(data_dir, recover)
    server = Broker(
        bind,
        max_message_size=max_message_size,
        heartbeat_interval=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness,
        journal=journal,
        curve=curve,
        spin=spin_us / 1e6,
        max_parked_receives=max_parked_receives,
        max_queued_bytes=max_queued_bytes,
        max_queues=max_queues,
        max_connections=max_connections,
        queue_kinds=QueueKinds(frozenset(mailbox_queues), frozenset(control_queues)),
    )
    metrics = None
    if metrics_port is not None:
        from ..metrics import StatsCollector, serve_metrics

        server.keep_stats = True
        try:
            metrics, _thread = serve_metrics(
                metrics_port, StatsCollector(lambda: server.last_stats), metrics_host
            )
        except OSError as exc:
            server.close()
            raise click.ClickException(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}"
            ) from exc
        click.echo(f"metrics on http://{metrics_host}:{metrics.server_port}/metrics", err=True)

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
        if journal.moved_to is not None:
            lost = "an unknown number of" if journal.lost is None else str(journal.lost)
            mode += (
                f"; RECOVERED: the damaged journal was moved to {journal.moved_to}, "
                f"{lost} message(s) lost"
            )
    mode += "; " + _security_mode(curve)
    click.echo(f"broker listening on {server.endpoint} ({mode})", err=True)
    try:
        server.run()
    finally:
        if metrics is not None:
            metrics.shutdown()
        server.close()


def _open_journal(data_dir: Path, recover: bool) -> SqliteJournal:
    """Open the journal; a damaged one ends the command with its one-line reason."""
    from ..errors import JournalError
    from .journal import SqliteJournal

    try:
        return SqliteJournal(data_dir, recover=recover)
    except (JournalError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def _security_mode(curve: BrokerCurve | None) -> str:
    """The start line's account of who may connect and do what."""
    if curve is None:
        return "no CURVE: no authentication, every client may do everything"
    public = curve.public.decode()
    if curve.roles is None:
        return f"CURVE, public key {public}; no authorized keys: any key may connect, no roles"
    counts = {role: sum(1 for r in curve.roles.values() if r == role) for role in ROLES}
    listed = ", ".join(f"{count} {role}" for role, count in counts.items())
    return f"CURVE, public key {public}; roles enforced: {listed} key(s)"


@click.group()
def keys() -> None:
    """Generate CURVE key pairs for the ZeroMQ broker and its clients."""


@keys.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("keys"),
    show_default=True,
    help="Directory to write the key files into.",
)
@click.option("--name", default="broker", show_default=True, help="Base name of the files.")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default=CLIENT,
    show_default=True,
    help="The key's role at the broker (with --authorize).",
)
@click.option(
    "--authorize",
    "authorize_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also copy the public key into the broker's authorized-keys directory, as "
    "DIR/ROLE/NAME.key.",
)
def generate(directory: Path, name: str, role: str, authorize_dir: Path | None) -> None:
    """Write NAME.key (public, share it) and NAME.key_secret (keep it private)."""
    targets = [directory / f"{name}.key", directory / f"{name}.key_secret"]
    if authorize_dir is not None:
        targets.append(authorize_dir / role / f"{name}.key")
    for path in targets:
        if path.exists():
            raise click.ClickException(f"{path} exists; not overwriting a key")
    from .curve import authorize_key, generate_keys

    public, secret = generate_keys(directory, name)
    click.echo(f"public key: {public}")
    click.echo(f"secret key: {secret} (mode 600)")
    if authorize_dir is not None:
        click.echo(f"authorized as {role}: {authorize_key(public, authorize_dir, role)}")
