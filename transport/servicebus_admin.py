"""Service Bus administration: the queue settings and the calls that apply them.

Both users of the administration API go through this module: the transport
(``declare_queue`` checks or creates a queue, ``queue_counts`` and ``stats`` read runtime
properties) and ``rtbatch servicebus provision`` (creates or updates the entities an
installation uses, or prints the official emulator's ``Config.json`` for them). The
settings of a queue are spelled once, in ``queue_settings``: the keyword arguments of
``ServiceBusAdministrationClient.create_queue``; ``emulator_config`` turns the same
settings into ``Config.json`` properties.

Every call here needs Manage rights (a SAS policy with Manage, or the Azure Service Bus
Data Owner role with Entra ID); sending and receiving do not.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

from .base import QueueOptions
from .errors import QueueSettingsConflict

__all__ = [
    "CONTROL_TTL",
    "DEFAULT_CONTROL_QUEUE",
    "DEFAULT_RESULTS_QUEUE",
    "DEFAULT_TASK_QUEUE",
    "admin_client",
    "check_provisioned",
    "create_or_update",
    "emulator_config",
    "ensure_queue",
    "fully_qualified_namespace",
    "iso_duration",
    "provision_plan",
    "queue_settings",
]

DEFAULT_TASK_QUEUE = "tasks"
DEFAULT_RESULTS_QUEUE = "results"
DEFAULT_CONTROL_QUEUE = "control"
#: Cancel requests and engine notices are only useful for a while.
CONTROL_TTL = 3600.0
#: Message time to live written into ``Config.json`` where the settings name none.
_EMULATOR_DEFAULT_TTL = 3600.0
_NAMESPACE_SUFFIX = ".servicebus.windows.net"


def queue_settings(
    lock_duration: float, max_delivery_count: int, *, sessions: bool, ttl: float | None = None
) -> dict[str, Any]:
    """The settings of one queue: keyword arguments of ``create_queue``.

    Args:
        lock_duration: seconds a peek-lock lasts.
        max_delivery_count: deliveries before a message is dead-lettered.
        sessions: whether the queue is session-enabled (a grouped queue: mailboxes,
            control); such a queue does not dead-letter expired messages.
        ttl: default message time to live in seconds (None: the service's default).
    """
    settings: dict[str, Any] = {
        "lock_duration": datetime.timedelta(seconds=lock_duration),
        "max_delivery_count": max_delivery_count,
        "requires_session": sessions,
        "dead_lettering_on_message_expiration": not sessions,
    }
    if ttl is not None:
        settings["default_message_time_to_live"] = datetime.timedelta(seconds=ttl)
    return settings


def provision_plan(
    task_queue: str = DEFAULT_TASK_QUEUE,
    results_queue: str = DEFAULT_RESULTS_QUEUE,
    *,
    lock_duration: float = 30.0,
    max_delivery_count: int = 10,
    results_lock_duration: float = 60.0,
    extra_queues: tuple[str, ...] = (),
    control_queue: str = DEFAULT_CONTROL_QUEUE,
    ttl: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The queues an installation uses and the settings of each, by name.

    The session-enabled control queue (cancel requests, one session per engine), the
    task queue, the session-enabled results queue (one session per client mailbox), and
    plain queues with the task queue's settings.

    Raises:
        ValueError: two of the names are the same.
    """
    names = [control_queue, task_queue, results_queue, *extra_queues]
    if len(set(names)) != len(names):
        raise ValueError("queue names must all differ")
    task = queue_settings(lock_duration, max_delivery_count, sessions=False, ttl=ttl)
    return {
        control_queue: queue_settings(
            lock_duration, max_delivery_count, sessions=True, ttl=CONTROL_TTL
        ),
        task_queue: task,
        results_queue: queue_settings(
            results_lock_duration, max_delivery_count, sessions=True, ttl=ttl
        ),
        **{name: task for name in extra_queues},
    }


def iso_duration(seconds: float) -> str:
    """Whole seconds as an ISO 8601 duration (``PT1M30S``), the form Config.json uses."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{unit}" for v, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if v]
    return "PT" + ("".join(parts) or "0S")


def _config_properties(settings: dict[str, Any]) -> dict[str, Any]:
    """One queue's ``queue_settings`` as ``Config.json`` properties."""
    ttl = settings.get("default_message_time_to_live")
    return {
        "DeadLetteringOnMessageExpiration": settings["dead_lettering_on_message_expiration"],
        "DefaultMessageTimeToLive": iso_duration(
            ttl.total_seconds() if ttl is not None else _EMULATOR_DEFAULT_TTL
        ),
        "DuplicateDetectionHistoryTimeWindow": "PT20S",
        "ForwardDeadLetteredMessagesTo": "",
        "ForwardTo": "",
        "LockDuration": iso_duration(settings["lock_duration"].total_seconds()),
        "MaxDeliveryCount": settings["max_delivery_count"],
        "RequiresDuplicateDetection": False,
        "RequiresSession": settings["requires_session"],
    }


def emulator_config(
    task_queue: str = DEFAULT_TASK_QUEUE,
    results_queue: str = DEFAULT_RESULTS_QUEUE,
    **plan: Any,
) -> dict[str, Any]:
    """The official Service Bus emulator's ``Config.json`` for the queues of
    ``provision_plan`` (same arguments)."""
    queues = provision_plan(task_queue, results_queue, **plan)
    return {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": "sbemulatorns",
                    "Queues": [
                        {"Name": name, "Properties": _config_properties(settings)}
                        for name, settings in queues.items()
                    ],
                    "Topics": [],
                }
            ],
            "Logging": {"Type": "File"},
        }
    }


def fully_qualified_namespace(name: str) -> str:
    """``NAMESPACE``, ``servicebus://NAMESPACE`` or a full host name, as the full host name."""
    namespace = name.split("://", 1)[-1].strip("/")
    return namespace if "." in namespace else namespace + _NAMESPACE_SUFFIX


@contextlib.contextmanager
def admin_client(target: str, credential: Any = None, **options: Any) -> Iterator[Any]:
    """A ``ServiceBusAdministrationClient`` for a connection string or a namespace.

    Args:
        target: a connection string (its key or SAS token signs the requests), or
            ``NAMESPACE``, ``NAMESPACE.servicebus.windows.net`` or ``servicebus://NAMESPACE``.
        credential: a ``TokenCredential`` for a namespace target (default
            ``DefaultAzureCredential``).
        **options: passed to the client (azure-core settings such as ``retry_total``).
    """
    from azure.servicebus.management import ServiceBusAdministrationClient

    if target.strip().lower().startswith("endpoint="):
        client = ServiceBusAdministrationClient.from_connection_string(target, **options)
    else:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = ServiceBusAdministrationClient(
            fully_qualified_namespace(target), credential, **options
        )
    with client:
        yield client


def create_or_update(admin: Any, name: str, settings: dict[str, Any]) -> str:
    """Create ``name`` with ``settings`` or update an existing queue to them.

    Returns:
        ``"created"`` or ``"updated"``.

    Raises:
        QueueSettingsConflict: the queue exists and ``requires_session`` differs (the
            service cannot switch sessions on an existing queue).
    """
    from azure.core.exceptions import ResourceNotFoundError

    try:
        current = admin.get_queue(name)
    except ResourceNotFoundError:
        admin.create_queue(name, **settings)
        return "created"
    if current.requires_session != settings["requires_session"]:
        raise QueueSettingsConflict(
            f"queue {name!r} exists with requires_session={current.requires_session}; "
            "sessions cannot be changed on an existing queue: delete it first"
        )
    for key, value in settings.items():
        setattr(current, key, value)
    admin.update_queue(current)
    return "updated"


def check_provisioned(name: str, existing: Any, options: QueueOptions | None) -> None:
    """Compare a queue's properties with the settings a declare names.

    Args:
        name: the queue.
        existing: its ``QueueProperties`` as the service returned them.
        options: the settings declared (None: any settings will do).

    Raises:
        QueueSettingsConflict: the queue has other settings.
    """
    if options is None:
        return
    lock = existing.lock_duration
    have = QueueOptions(
        lock.total_seconds() if lock is not None else options.lock_duration,
        existing.max_delivery_count or options.max_delivery_count,
    )
    if have != options:
        raise QueueSettingsConflict(
            f"queue {name!r} is provisioned with {have}; declared with {options}"
        )


def ensure_queue(admin: Any, name: str, options: QueueOptions | None, *, grouped: bool) -> str:
    """Check that ``name`` exists with ``options``; create it if it does not.

    Args:
        admin: a ``ServiceBusAdministrationClient``.
        name: the queue.
        options: the settings declared (None: any, or the defaults when created).
        grouped: whether a queue created here is session-enabled.

    Returns:
        ``"created"``, or ``"exists"`` (also when another client created it meanwhile).

    Raises:
        QueueSettingsConflict: the queue exists with other settings.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        existing = admin.get_queue(name)
    except ResourceNotFoundError:
        settings = options or QueueOptions()
        try:
            admin.create_queue(
                name,
                **queue_settings(
                    settings.lock_duration, settings.max_delivery_count, sessions=grouped
                ),
            )
        except ResourceExistsError:
            return "exists"
        return "created"
    check_provisioned(name, existing, options)
    return "exists"
