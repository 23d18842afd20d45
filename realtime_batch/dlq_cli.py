"""``rtbatch dlq``: inspect, replay and purge dead-lettered messages of a queue.

Listing and showing receive the dead letters and give them back (abandon), so
they stay where they are; ``replay`` sends each back to its queue as a new
message and removes it from the dead-letter queue; ``purge`` removes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.table import Table

from realtime_batch.protocol import read_fields
from realtime_batch.transport import (
    Delivery,
    Message,
    PermissionDeniedError,
    Transport,
    dead_letter_queue,
    open_transport,
)
from realtime_batch.transport.base import DEAD_LETTER_DESCRIPTION, DEAD_LETTER_REASON
from realtime_batch.transport.zeromq.cli_options import curve_key_options

__all__ = ["dead_letters", "dlq", "find_dead_letter", "replay_dead_letters"]

_BATCH = 100


def _transport_url(url: str | None) -> str:
    if url:
        return url
    from realtime_batch.config import Config

    configured = Config.load()["transport.url"]
    if not configured or configured.rstrip("/").endswith(":0"):
        raise click.UsageError("give --transport URL (or set RTBATCH_TRANSPORT)")
    return configured


class Leased(list):
    """Leased dead letters; :meth:`settle` completes one for good."""

    def __init__(self, transport: Transport) -> None:
        super().__init__()
        self.transport = transport
        self.settled: set[str] = set()

    def settle(self, delivery: Delivery) -> None:
        self.transport.complete(delivery)
        self.settled.add(delivery.lock_token)


@contextmanager
def dead_letters(
    transport: Transport, queue: str, limit: int | None = None, wait: float = 0.5
) -> Iterator[Leased]:
    """Lease up to ``limit`` dead letters of ``queue``; the caller settles them.

    Deliveries the caller leaves unsettled are abandoned on exit (they stay dead letters).
    """
    leased = Leased(transport)
    dlq_name = dead_letter_queue(queue)
    while limit is None or len(leased) < limit:
        want = _BATCH if limit is None else min(_BATCH, limit - len(leased))
        batch = transport.receive(dlq_name, max_messages=want, timeout=wait)
        if not batch:
            break
        leased.extend(batch)
    try:
        yield leased
    finally:
        for delivery in leased:
            if delivery.lock_token in leased.settled:
                continue
            try:
                transport.abandon(delivery)
            except Exception:  # already settled by the caller, or lease lost: both fine
                pass


def _describe(delivery: Delivery) -> dict:
    message = delivery.message
    props = message.properties
    info = {
        "id": message.id,
        "reason": props.get(DEAD_LETTER_REASON, ""),
        "description": props.get(DEAD_LETTER_DESCRIPTION, ""),
        "bytes": len(message.body),
    }
    body = read_fields(message.body)  # MessagePack (protocol v2) or JSON (v1)
    if body is not None:
        info.update({k: body.get(k) for k in ("session", "job", "task", "command")})
    return info


def replay_dead_letters(transport: Transport, queue: str, limit: int | None = None) -> int:
    """Send dead letters of ``queue`` back to it as new messages; return how many."""
    count = 0
    with dead_letters(transport, queue, limit) as leased:
        for delivery in leased:
            old = delivery.message
            props = {
                k: v
                for k, v in old.properties.items()
                if k not in (DEAD_LETTER_REASON, DEAD_LETTER_DESCRIPTION)
            }
            transport.send(
                queue,
                Message(
                    old.body, group=old.group, properties=props, correlation_id=old.correlation_id
                ),
            )
            leased.settle(delivery)
            count += 1
    return count


class _DlqGroup(click.Group):
    """Turns a refusal by the broker (no admin key) into a clear error, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PermissionDeniedError as exc:
            raise click.ClickException(
                f"{exc}: dead letters are an admin's (give an admin key with "
                "--curve-secret-key-file)"
            ) from None


@click.group(cls=_DlqGroup)
@click.option("--transport", "url", envvar="RTBATCH_TRANSPORT", help="Transport URL.")
@click.option("--queue", default="tasks", show_default=True, help="Queue whose DLQ to use.")
@curve_key_options("admin")
@click.pass_context
def dlq(
    ctx: click.Context,
    url: str | None,
    queue: str,
    curve_options: dict[str, str],
) -> None:
    """Inspect, replay and purge dead-lettered tasks.

    On a ZeroMQ broker enforcing roles, dead letters are an admin's: give an admin key.
    """
    ctx.obj = {"url": url, "queue": queue, "options": curve_options}


def _open(ctx: click.Context) -> Transport:
    return open_transport(_transport_url(ctx.obj["url"]), **ctx.obj["options"])


def _remember(key: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.ensure_object(dict)[key] = value

    return callback


def _connection_options(command: click.Command) -> click.Command:
    """Accept ``--transport``/``--queue`` after the sub-command too (``dlq list --transport U``)."""
    command = click.option(
        "--transport",
        help="Transport URL (same as before the sub-command).",
        expose_value=False,
        callback=_remember("url"),
    )(command)
    return click.option(
        "--queue",
        help="Queue whose DLQ to use (same as before the sub-command).",
        expose_value=False,
        callback=_remember("queue"),
    )(command)


def find_dead_letter(leased: list[Delivery], message_id: str) -> Delivery:
    """The dead letter whose id is ``message_id`` or starts with it (as ``list`` may cut ids).

    Raises:
        click.ClickException: no such id, or a prefix shared by several.
    """
    exact = [d for d in leased if d.message.id == message_id]
    matches = exact or [d for d in leased if d.message.id.startswith(message_id)]
    if not matches:
        raise click.ClickException(f"no dead letter with id {message_id!r}")
    if len(matches) > 1:
        ids = ", ".join(d.message.id for d in matches[:5])
        raise click.ClickException(
            f"{len(matches)} dead letters start with {message_id!r} ({ids}...): give more of the id"
        )
    return matches[0]


@dlq.command("list")
@_connection_options
@click.option("--limit", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
def list_(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List dead letters (they stay in the dead-letter queue)."""
    with _open(ctx) as transport, dead_letters(transport, ctx.obj["queue"], limit) as leased:
        rows = [_describe(d) for d in leased]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = Table(
        "id",
        "task",
        "command",
        "reason",
        "description",
        title=(f"{len(rows)} dead letter(s) in {dead_letter_queue(ctx.obj['queue'])}"),
    )
    for row in rows:
        table.add_row(
            row["id"],
            str(row.get("task") or ""),
            str(row.get("command") or ""),
            row["reason"],
            row["description"][:60],
        )
    Console().print(table)


@dlq.command()
@_connection_options
@click.argument("message_id")
@click.pass_context
def show(ctx: click.Context, message_id: str) -> None:
    """Print one dead letter's properties and body (MESSAGE_ID: the id or a unique prefix)."""
    with _open(ctx) as transport, dead_letters(transport, ctx.obj["queue"]) as leased:
        found = find_dead_letter(leased, message_id)
        click.echo(json.dumps(_describe(found), indent=2))
        click.echo(json.dumps(dict(found.message.properties), indent=2, default=str))
        click.echo(found.message.body.decode(errors="replace"))


@dlq.command()
@_connection_options
@click.option("--limit", type=int, default=None, help="Replay at most this many.")
@click.pass_context
def replay(ctx: click.Context, limit: int | None) -> None:
    """Send dead letters back to their queue."""
    with _open(ctx) as transport:
        count = replay_dead_letters(transport, ctx.obj["queue"], limit)
    click.echo(f"replayed {count} message(s) to {ctx.obj['queue']}")


@dlq.command()
@_connection_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, yes: bool) -> None:
    """Delete every dead letter of the queue."""
    if not yes:
        click.confirm(f"delete every dead letter of {ctx.obj['queue']}?", abort=True)
    count = 0
    with _open(ctx) as transport, dead_letters(transport, ctx.obj["queue"]) as leased:
        for delivery in leased:
            leased.settle(delivery)
            count += 1
    click.echo(f"purged {count} message(s)")
