"""Deciding what to do with a delivery before its task runs (shared by both engine modes).

``Admission.admit`` decodes a delivery and either returns a ``Held`` task to run or
records its outcome in the outbox without running it: malformed (dead-lettered),
cancelled, delivered too often (``EngineLostError``), past its deadline, naming
a command that is not a staged task module or jar, or a jar task whose ``jvm_args``
hold an option the engine's ``JvmOptionPolicy`` does not allow.
"""

from __future__ import annotations

from collections.abc import Container

from ..control import KIND_ENGINE, NOTIFY
from ..payloads import PayloadError, engine_payloads
from ..protocol import ProtocolError, decode_task
from ..transport import Delivery
from ._outbox import Held, Outbox
from .tasks import KIND_JAR, CommandError, JvmOptionPolicy, check_jar_kwargs, resolve_command

__all__ = ["Admission"]

_MAILBOXES_MAX = 10_000  # session mailboxes told about this engine, remembered at most


class Admission:
    """Admits deliveries for one engine.

    Args:
        outbox: where refusals are recorded.
        tasks_dir: directory the commands must name a file in.
        max_delivery_count: the task queue's delivery limit.
        cancelled: ``(session, task)`` keys of cancelled tasks.
        jvm_options: the JVM options a jar task's ``jvm_args`` may hold (default: sizes).
    """

    def __init__(
        self,
        outbox: Outbox,
        tasks_dir: str,
        max_delivery_count: int,
        cancelled: Container[tuple[str, str, str]],
        jvm_options: JvmOptionPolicy | None = None,
    ) -> None:
        self.outbox = outbox
        self.tasks_dir = tasks_dir
        self.max_delivery_count = max_delivery_count
        self.cancelled = cancelled
        self.jvm_options = jvm_options or JvmOptionPolicy()
        self._commands: dict[str, tuple[str, str]] = {}
        self._mailboxes: set[str | None] = set()  # told that this engine holds their tasks

    def admit(self, delivery: Delivery, now: float) -> Held | None:
        """A ``Held`` to run, or None when its outcome is already in the outbox."""
        body = delivery.message.body
        try:
            task = decode_task(body)
        except ProtocolError as exc:
            self.outbox.malformed(delivery, exc)
            return None
        held = Held.received(delivery, task)
        if task.reply_to.group not in self._mailboxes:
            self._new_mailbox(held)
        if self.cancelled and held.key in self.cancelled:
            self.outbox.cancelled(held)
            return None
        count = delivery.delivery_count
        if held.attempt > task.max_retries + 1 or (count > 1 and count >= self.max_delivery_count):
            # The second test: the broker's last delivery of a task whose earlier ones
            # never finished. Had it killed this engine too, the broker would
            # dead-letter it with nobody left to tell the client, so refuse it here.
            self.outbox.engine_lost(held)
            return None
        if task.deadline is not None and now > task.deadline:
            self.outbox.expired(held)
            return None
        try:
            held.kind, held.path = self.resolve(task.command)
            if held.kind == KIND_JAR and task.kwargs:  # before any process starts
                check_jar_kwargs(task.kwargs, self.jvm_options)
        except CommandError as exc:
            self.outbox.error(held, type(exc).__name__, str(exc))
            return None
        try:  # arguments sent by reference (#20)
            held.task = engine_payloads().resolve_task(task)
        except PayloadError as exc:
            self.outbox.error(held, type(exc).__name__, str(exc))
            return None
        held.size = len(body)
        return held

    def _new_mailbox(self, held: Held) -> None:
        """First task from a mailbox: tell the session (if it asks) that we hold its tasks."""
        if len(self._mailboxes) >= _MAILBOXES_MAX:
            self._mailboxes.clear()  # at worst a session hears from us twice
        self._mailboxes.add(held.task.reply_to.group)
        if held.delivery.message.properties.get(NOTIFY):
            self.outbox.notice(KIND_ENGINE, held.task)

    def resolve(self, command: str) -> tuple[str, str]:
        """``(kind, path)`` of a command, cached."""
        cached = self._commands.get(command)
        if cached is None:
            kind, path = resolve_command(command, self.tasks_dir)
            cached = self._commands[command] = (kind, str(path))
        return cached
