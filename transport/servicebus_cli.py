"""``rtbatch servicebus``: provision the Service Bus entities realtime-batch uses.

``rtbatch servicebus provision`` creates or updates, with ``ServiceBusAdministrationClient``
(needs Manage rights), the task queue (lock duration, max delivery count, dead-lettering
on expiry) and the session-enabled results queue. ``--print-config`` prints the official
emulator's ``Config.json`` for the same entities instead of calling Azure.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
from collections.abc import Iterator
from typing import Any

import click

__all__ = [
    "admin_client",
    "create_or_update",
    "emulator_config",
    "iso_duration",
    "provision",
    "queue_settings",
    "servicebus",
]

log = logging.getLogger(__name__)

DEFAULT_TASK_QUEUE = "tasks"
DEFAULT_RESULTS_QUEUE = "results"
DEFAULT_CONTROL_QUEUE = "control"
#: Cancel requests and engine notices are only useful for a while.
CONTROL_TTL = 3600.0


def queue_settings(
    lock_duration: float, max_delivery_count: int, *, sessions: bool, ttl: float | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``create_queue``/``update_queue`` (one source for both paths)."""
    settings: dict[str, Any] = {
        "lock_duration": datetime.timedelta(seconds=lock_duration),
        "max_delivery_count": max_delivery_count,
        "requires_session": sessions,
        "dead_lettering_on_message_expiration": not sessions,
    }
    if ttl is not None:
        settings["default_message_time_to_live"] = datetime.timedelta(seconds=ttl)
    return settings


def iso_duration(seconds: float) -> str:
    """Whole seconds as an ISO 8601 duration (``PT1M30S``), the form Config.json uses."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{unit}" for v, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if v]
    return "PT" + ("".join(parts) or "0S")


def emulator_config(
    task_queue: str = DEFAULT_TASK_QUEUE,
    results_queue: str = DEFAULT_RESULTS_QUEUE,
    *,
    lock_duration: float = 30.0,
    max_delivery_count: int = 10,
    results_lock_duration: float = 60.0,
    extra_queues: tuple[str, ...] = (),
    control_queue: str = DEFAULT_CONTROL_QUEUE,
) -> dict[str, Any]:
    """The official Service Bus emulator's ``Config.json`` for our entities."""

    def queue(name: str, lock: float, sessions: bool, deliveries: int) -> dict[str, Any]:
        return {
            "Name": name,
            "Properties": {
                "DeadLetteringOnMessageExpiration": not sessions,
                "DefaultMessageTimeToLive": "PT1H",
                "DuplicateDetectionHistoryTimeWindow": "PT20S",
                "ForwardDeadLetteredMessagesTo": "",
                "ForwardTo": "",
                "LockDuration": iso_duration(lock),
                "MaxDeliveryCount": deliveries,
                "RequiresDuplicateDetection": False,
                "RequiresSession": sessions,
            },
        }

    queues = [
        queue(control_queue, lock_duration, True, max_delivery_count),
        queue(task_queue, lock_duration, False, max_delivery_count),
        queue(results_queue, results_lock_duration, True, max_delivery_count),
        *(queue(name, lock_duration, False, max_delivery_count) for name in extra_queues),
    ]
    return {
        "UserConfig": {
            "Namespaces": [{"Name": "sbemulatorns", "Queues": queues, "Topics": []}],
            "Logging": {"Type": "File"},
        }
    }


@contextlib.contextmanager
def admin_client(target: str, credential: Any = None) -> Iterator[Any]:
    """A ``ServiceBusAdministrationClient`` for a connection string or a namespace name."""
    from azure.servicebus.management import ServiceBusAdministrationClient

    if target.strip().lower().startswith("endpoint="):
        client = ServiceBusAdministrationClient.from_connection_string(target)
    else:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        namespace = target.split("://", 1)[-1].strip("/")
        if "." not in namespace:
            namespace += ".servicebus.windows.net"
        client = ServiceBusAdministrationClient(namespace, credential)
    with client:
        yield client


def create_or_update(admin: Any, name: str, settings: dict[str, Any]) -> str:
    """Create ``name`` with ``settings`` or update an existing queue; returns what was done."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        current = admin.get_queue(name)
    except ResourceNotFoundError:
        admin.create_queue(name, **settings)
        return "created"
    if current.requires_session != settings["requires_session"]:
        raise click.ClickException(
            f"queue {name!r} exists with requires_session={current.requires_session}; "
            "sessions cannot be changed on an existing queue: delete it first"
        )
    for key, value in settings.items():
        setattr(current, key, value)
    admin.update_queue(current)
    return "updated"


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
    if print_config:
        config = emulator_config(
            task_queue,
            results_queue,
            lock_duration=lock_duration,
            max_delivery_count=max_delivery_count,
            results_lock_duration=results_lock_duration,
            extra_queues=extra_queue,
            control_queue=control_queue,
        )
        click.echo(json.dumps(config, indent=2))
        return
    target = target or _configured_target()
    if not target:
        raise click.UsageError(
            "give --namespace (or RTBATCH_SERVICEBUS, or a Service Bus [transport] url in "
            "rtbatch.toml), or use --print-config"
        )
    names = {task_queue, results_queue, control_queue, *extra_queue}
    if len(names) != 3 + len(extra_queue):
        raise click.UsageError("queue names must all differ")
    task_settings = queue_settings(lock_duration, max_delivery_count, sessions=False, ttl=ttl)
    plan = {
        control_queue: queue_settings(
            lock_duration, max_delivery_count, sessions=True, ttl=CONTROL_TTL
        ),
        task_queue: task_settings,
        **{name: task_settings for name in extra_queue},
        results_queue: queue_settings(
            results_lock_duration, max_delivery_count, sessions=True, ttl=ttl
        ),
    }
    from azure.core.exceptions import AzureError

    try:
        with admin_client(target) as admin:
            for name, settings in plan.items():
                click.echo(f"{create_or_update(admin, name, settings)} queue {name}")
    except AzureError as exc:
        raise click.ClickException(
            f"provisioning failed (it needs Manage rights or the Data Owner role): {exc}"
        ) from exc


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
