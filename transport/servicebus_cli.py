"""``rtbatch servicebus``: provision the Service Bus entities realtime-batch uses.

``rtbatch servicebus provision`` creates or updates, with ``ServiceBusAdministrationClient``
(needs Manage rights), the session-enabled control queue, the task queue (lock duration,
max delivery count, dead-lettering on expiry), the session-enabled results queue and any
extra plain queues. ``--print-config`` prints the official emulator's ``Config.json`` for
the same entities instead of calling Azure. The settings and the administration calls
are ``servicebus_admin``'s, which the transport uses too; this module is the command line.
"""

from __future__ import annotations

import json
import logging

import click

from . import servicebus_admin
from .errors import TransportError
from .servicebus_admin import (
    DEFAULT_CONTROL_QUEUE,
    DEFAULT_RESULTS_QUEUE,
    DEFAULT_TASK_QUEUE,
    emulator_config,
    provision_plan,
)

__all__ = ["provision", "servicebus"]

log = logging.getLogger(__name__)


@click.group()
def servicebus() -> None:
    """Provision Service Bus entities."""


@servicebus.command()
@click.option(
    "--namespace",
    "target",
    envvar="RTBATCH_SERVICEBUS",
    help="Connection string with Manage rights, or NAMESPACE (DefaultAzureCredential).",
)
@click.option("--task-queue", default=DEFAULT_TASK_QUEUE, show_default=True)
@click.option("--results-queue", default=DEFAULT_RESULTS_QUEUE, show_default=True)
@click.option("--lock-duration", type=click.FloatRange(5, 300), default=30.0, show_default=True)
@click.option("--max-delivery-count", type=click.IntRange(1, 2000), default=10, show_default=True)
@click.option("--results-lock-duration", type=click.FloatRange(5, 300), default=60.0)
@click.option(
    "--control-queue",
    default=DEFAULT_CONTROL_QUEUE,
    show_default=True,
    help="Session-enabled queue of cancel requests (one session per engine).",
)
@click.option("--ttl", type=float, default=None, help="Default message time to live (seconds).")
@click.option(
    "--extra-queue",
    multiple=True,
    help="Another plain queue with the task queue's settings (repeatable).",
)
@click.option("--print-config", is_flag=True, help="Print the emulator Config.json and exit.")
def provision(
    target: str | None,
    task_queue: str,
    results_queue: str,
    lock_duration: float,
    max_delivery_count: int,
    results_lock_duration: float,
    control_queue: str,
    ttl: float | None,
    extra_queue: tuple[str, ...],
    print_config: bool,
) -> None:
    """Create or update the task queue, the session-enabled results queue and the
    session-enabled control queue (cancel requests)."""
    settings = {
        "lock_duration": lock_duration,
        "max_delivery_count": max_delivery_count,
        "results_lock_duration": results_lock_duration,
        "extra_queues": extra_queue,
        "control_queue": control_queue,
        "ttl": ttl,
    }
    try:
        plan = provision_plan(task_queue, results_queue, **settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if print_config:
        click.echo(json.dumps(emulator_config(task_queue, results_queue, **settings), indent=2))
        return
    target = target or _configured_target()
    if not target:
        raise click.UsageError(
            "give --namespace (or RTBATCH_SERVICEBUS, or a Service Bus [transport] url in "
            "rtbatch.toml), or use --print-config"
        )
    from azure.core.exceptions import AzureError

    try:
        with servicebus_admin.admin_client(target) as admin:
            for name, queue in plan.items():
                done = servicebus_admin.create_or_update(admin, name, queue)
                click.echo(f"{done} queue {name}")
    except AzureError as exc:
        raise click.ClickException(
            f"provisioning failed (it needs Manage rights or the Data Owner role): {exc}"
        ) from exc
    except TransportError as exc:
        raise click.ClickException(str(exc)) from exc


def _configured_target() -> str | None:
    """The ``[transport] url`` of rtbatch.toml when it names Service Bus."""
    from realtime_batch.config import Config
    from realtime_batch.transport import transport_scheme

    try:
        url = str(Config.load()["transport.url"] or "")
        return url if url and transport_scheme(url) == "servicebus" else None
    except Exception:  # an unreadable config is reported by the commands that need it
        log.debug("no Service Bus URL in the configuration", exc_info=True)
        return None
