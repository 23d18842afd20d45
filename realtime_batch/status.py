"""``rtbatch status`` and ``rtbatch top``: what the transport says about queues and engines.

Both read ``Transport.stats()`` (``transport/stats.py``); ``status`` prints it
once (as tables, or JSON with ``--json``), ``top`` redraws it every second with
``rich.live`` until Ctrl-C. Rates are the differences between two snapshots.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable
from typing import Any

import attrs
import click
import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from realtime_batch.dlq_cli import _transport_url
from realtime_batch.transport import Transport, TransportError, open_transport
from realtime_batch.transport.stats import QueueStats, TransportStats

__all__ = [
    "Connection",
    "QueueRates",
    "queue_rates",
    "render",
    "status",
    "top",
    "transport_options",
]


@attrs.frozen
class QueueRates:
    """One queue's traffic between two snapshots.

    Attributes:
        sent: messages sent per second.
        completed: messages completed per second.
        latency: mean seconds from enqueue to completion of those completed (None: none).
    """

    sent: float | None
    completed: float | None
    latency: float | None


def _per_second(new: int | None, old: int | None, seconds: float) -> float | None:
    if new is None or old is None or seconds <= 0:
        return None
    return max(0, new - old) / seconds


def queue_rates(current: TransportStats, previous: TransportStats | None) -> dict[str, QueueRates]:
    """Rates per queue between ``previous`` and ``current`` (since start without one)."""
    rates = {}
    before = {q.name: q for q in previous.queues} if previous is not None else {}
    for queue in current.queues:
        old = before.get(queue.name)
        if previous is not None and old is not None:
            seconds = current.taken_at - previous.taken_at
        else:  # the broker's whole life
            seconds = current.uptime or 0.0
            old = QueueStats(queue.name, sent=0, completed=0, latency_sum=0.0)
        done = (queue.completed or 0) - (old.completed or 0)
        latency = (queue.latency_sum - old.latency_sum) / done if done > 0 else None
        rates[queue.name] = QueueRates(
            _per_second(queue.sent, old.sent, seconds),
            _per_second(queue.completed, old.completed, seconds),
            latency,
        )
    return rates


def _fmt(value: float | int | None, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


def _ago(then: float, now: float) -> str:
    return f"{max(0.0, now - then):.1f}s ago" if then else "—"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return str(datetime.timedelta(seconds=int(seconds)))


def render(stats: TransportStats, previous: TransportStats | None = None) -> RenderableType:
    """Tables of queues, engines and mailboxes, with rates since ``previous``."""
    now = stats.taken_at
    rates = queue_rates(stats, previous)
    summary = Text.assemble(
        (f"{stats.transport} ", "bold"),
        f"{stats.url}  uptime {_uptime(stats.uptime)}",
        f"  connections {_fmt(stats.connections)}  requests {_fmt(stats.requests)}",
        (f"  malformed {stats.bad_requests}", "bold red") if stats.bad_requests else "",
    )
    queues = Table(title="Queues", title_justify="left", expand=False)
    for column in ("queue", "depth", "leased", "DLQ", "mbox", "sent", "done", "sent/s",
                   "done/s", "latency"):  # fmt: skip
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in stats.queues:
        r = rates[q.name]
        latency = None if r.latency is None else f"{r.latency * 1000:.1f} ms"
        queues.add_row(q.name, _fmt(q.depth), _fmt(q.leased), _fmt(q.dead_letter),
                       _fmt(q.groups), _fmt(q.sent), _fmt(q.completed), _fmt(r.sent, ".1f"),
                       _fmt(r.completed, ".1f"), latency or "—")  # fmt: skip
    engines = Table(title="Engines", title_justify="left")
    # worker restarts (crashes, kills) get a column once an engine has had any
    restarts = any(e.worker_restarts for e in stats.engines)
    for column in ("engine", "host", "state", "task", "done", "failed",
                   *(("restarts",) if restarts else ()), "busy", "last heartbeat"):  # fmt: skip
        engines.add_column(column)
    for e in stats.engines:
        busy = None if e.busy_ratio is None else f"{e.busy_ratio:.0%}"
        engines.add_row(e.id, e.host, e.state, e.task or "", str(e.tasks_done),
                        str(e.tasks_failed), *((str(e.worker_restarts),) if restarts else ()),
                        busy or "—", _ago(e.last_seen, now))  # fmt: skip
    parts: list[RenderableType] = [summary, queues, engines]
    if not stats.engines:
        parts.append(Text("no engine has reported itself", style="dim"))
    if stats.mailboxes:
        mailboxes = Table(title="Mailboxes with pending results", title_justify="left")
        for column in ("queue", "group (session)", "waiting"):
            mailboxes.add_column(column)
        for m in stats.mailboxes:
            mailboxes.add_row(m.queue, m.group, str(m.depth))
        parts.append(mailboxes)
    parts.extend(Text(f"note: {note}", style="dim") for note in stats.notes)
    return Group(*parts)


@attrs.frozen
class Connection:
    """Where status, top and dashboard ask: the transport URL and how to reach it."""

    url: str | None = None
    timeout: float = 5.0
    curve_server_key: str | None = None
    curve_secret_key: str | None = None

    def open(self) -> Transport:
        """Open the transport (the URL from rtbatch.toml / RTBATCH_TRANSPORT when unset).

        Raises:
            click.UsageError: no URL anywhere.
            click.ClickException: the transport or its keys could not be opened.
        """
        options: dict[str, Any] = {"request_timeout": self.timeout}
        if self.curve_server_key is not None:
            options["curve_server_key"] = self.curve_server_key
        if self.curve_secret_key is not None:
            options["curve_secret_key"] = self.curve_secret_key
        url = _transport_url(self.url)
        try:
            return open_transport(url, **options)
        except (TransportError, ValueError, OSError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def transport_options(function: Callable[..., None]) -> Callable[..., None]:
    """Give a command ``--transport``, ``--timeout`` and the CURVE key options, passed to
    it as one ``connection`` argument (a ``Connection``)."""

    @functools.wraps(function)
    def command(
        url: str | None,
        timeout: float,
        curve_server_key: str | None,
        curve_secret_key: str | None,
        **kwargs: Any,
    ) -> None:
        connection = Connection(url, timeout, curve_server_key, curve_secret_key)
        function(connection=connection, **kwargs)

    options = (
        click.option("--transport", "url", default=None,
                     help="Transport URL (default: rtbatch.toml / RTBATCH_TRANSPORT)."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0,
                     show_default=True, help="Seconds to wait for the broker or service."),
        click.option("--curve-server-key", default=None,
                     help="zmq with CURVE: the broker's public key (.key file or Z85 text)."),
        click.option("--curve-secret-key", type=click.Path(exists=True, dir_okay=False),
                     default=None, help="zmq with CURVE: this client's .key_secret file "
                     "(an admin key once the broker has roles)."),
    )  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _collect_or_fail(connection: Connection) -> TransportStats:
    with connection.open() as transport:
        try:
            return transport.stats()
        except TransportError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@click.command("status")
@transport_options
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def status(connection: Connection, as_json: bool) -> None:
    """Show queues (depth, in flight, dead letters), engines and mailboxes once."""
    stats = _collect_or_fail(connection)
    if as_json:
        click.echo(orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    Console().print(render(stats))


@click.command("top")
@transport_options
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")  # fmt: skip
@click.option("--once", is_flag=True, help="Draw one frame and exit (for scripts and tests).")
def top(connection: Connection, interval: float, once: bool) -> None:
    """Show the same as status, live, refreshed every second (Ctrl-C exits)."""
    console = Console()
    try:
        with connection.open() as transport:
            previous = None
            stats = transport.stats()
            if once:
                console.print(render(stats))
                return
            with Live(render(stats), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    try:
                        previous, stats = stats, transport.stats()
                    except TransportError as exc:  # e.g. a broker restarting: try again
                        failed = Text(f"{type(exc).__name__}: {exc} (retrying)", style="red")
                        live.update(Group(render(stats), failed), refresh=True)
                        continue
                    live.update(render(stats, previous), refresh=True)
    except TransportError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except KeyboardInterrupt:
        pass  # Ctrl-C: Live restored the terminal on the way out
