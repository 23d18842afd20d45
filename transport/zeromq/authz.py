"""Who may do what on the ZeroMQ broker: roles, queue kinds and the one permission check.

With CURVE and authorized keys, every request arrives with the public key that
signed it (ZAP's User-Id), and each key has a role (``curve.load_roles``):

============  ==============================  ===========================  ==============
queue kind    client                          engine                       admin
============  ==============================  ===========================  ==============
task          send                            send, receive                everything
mailbox       receive its own groups only     send                         everything
control       send                            receive                      everything
dead letters  nothing                         nothing                      everything
============  ==============================  ===========================  ==============

* **receive** covers settling too: a lease (complete, abandon, give back, renew,
  dead-letter) may be settled only by a caller that may receive from the lease's
  queue and group, so a client can settle only its own mailbox's deliveries.
* A client's **own groups** are those whose name starts with
  ``mailbox_prefix(its public key)``; ``Session`` names its mailbox that way when its
  transport holds a CURVE key. The name is bound to the key, not chosen freely.
* **Declaring** with settings other than the defaults (lock duration, max delivery
  count) is an admin's right; any role may declare a queue with the defaults or
  with no settings.

A queue's kind comes from its name (``QueueKinds``): dead-letter queues end in
``/$deadletterqueue``, mailboxes and control queues are the configured names
(``results`` and ``control`` by default, ``rtbatch broker --mailbox-queue`` /
``--control-queue``), every other queue is a task queue.

Everything here is pure: the broker calls ``authorize`` once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from ..base import QueueOptions, is_dead_letter_queue
from ..errors import PermissionDeniedError
from . import wire

__all__ = [
    "ADMIN",
    "CLIENT",
    "CONTROL",
    "DEAD_LETTERS",
    "ENGINE",
    "MAILBOX",
    "OPERATOR_KINDS",
    "RECEIVE",
    "ROLES",
    "SEND",
    "TASK",
    "Caller",
    "QueueKinds",
    "StoreView",
    "accepts_engine_report",
    "authorize",
    "check_declare",
    "check_leases",
    "check_queue",
    "mailbox_prefix",
]

CLIENT, ENGINE, ADMIN = "client", "engine", "admin"
#: Roles, least privileged first.
ROLES = (CLIENT, ENGINE, ADMIN)
TASK, MAILBOX, CONTROL, DEAD_LETTERS = "task", "mailbox", "control", "dead letters"
SEND, RECEIVE = "send", "receive"

# (role, queue kind) -> rights; admin is not in the table: it may do everything.
_RIGHTS: dict[tuple[str, str], frozenset[str]] = {
    (CLIENT, TASK): frozenset({SEND}),
    (CLIENT, MAILBOX): frozenset({RECEIVE}),  # its own groups only (see check_queue)
    (CLIENT, CONTROL): frozenset({SEND}),
    (ENGINE, TASK): frozenset({SEND, RECEIVE}),
    (ENGINE, MAILBOX): frozenset({SEND}),
    (ENGINE, CONTROL): frozenset({RECEIVE}),
}
_PREFIX_HEX = 20  # 80 bits of the key's hash: no one finds a key with another's prefix


def mailbox_prefix(public_key: str | bytes) -> str:
    """The prefix of the mailbox groups a client with this Z85 public key may read."""
    import hashlib  # here: OpenSSL costs a broker without CURVE 4 MB of RSS for nothing

    key = public_key.encode() if isinstance(public_key, str) else public_key
    return "k" + hashlib.sha256(key).hexdigest()[:_PREFIX_HEX] + "-"


@attrs.frozen
class QueueKinds:
    """The rule that tells task queues, mailboxes, control queues and dead letters apart.

    Args:
        mailboxes: names of the grouped results queues sessions read their mailbox from.
        controls: names of the grouped queues engines read cancel requests from.
    """

    mailboxes: frozenset[str] = frozenset({"results"})
    controls: frozenset[str] = frozenset({"control"})

    def kind(self, queue: str) -> str:
        """The kind of ``queue``: ``TASK``, ``MAILBOX``, ``CONTROL`` or ``DEAD_LETTERS``."""
        if queue in self.mailboxes:
            return MAILBOX
        if queue in self.controls:
            return CONTROL
        if is_dead_letter_queue(queue):
            return DEAD_LETTERS
        return TASK


@attrs.frozen
class Caller:
    """An authenticated identity: its role and, for a client, its mailbox prefix."""

    role: str
    key: str
    prefix: str = attrs.field(default=attrs.Factory(lambda self: mailbox_prefix(self.key),
                                                    takes_self=True))  # fmt: skip


def check_queue(
    caller: Caller, right: str, queue: str, group: str | None, kinds: QueueKinds
) -> None:
    """Allow ``caller`` to ``right`` (SEND or RECEIVE/settle) ``queue``'s ``group``, or raise.

    Raises:
        PermissionDeniedError: the caller's role has no such right there.
    """
    role = caller.role
    if role == ADMIN:
        return
    kind = kinds.kind(queue)
    if right not in _RIGHTS.get((role, kind), ()):
        raise PermissionDeniedError(f"role {role!r} may not {right} on {kind} queue {queue!r}")
    if role == CLIENT and kind == MAILBOX and not (group or "").startswith(caller.prefix):
        raise PermissionDeniedError(
            f"a client may {right} only its own mailbox groups on {queue!r} "
            f"(names starting with {caller.prefix!r}), not {group!r}"
        )


def check_declare(
    caller: Caller, queue: str, options: QueueOptions | None, existing: QueueOptions | None
) -> None:
    """Allow a declare of ``queue`` with ``options`` (None: any settings), or raise.

    ``existing`` is the queue's settings if it exists: naming them is no change, so
    anyone may (an engine started with the settings an admin provisioned).
    """
    if (
        caller.role != ADMIN
        and options is not None
        and not options.is_default
        and options != existing
    ):
        raise PermissionDeniedError(
            f"only an admin may declare {queue!r} with non-default settings {options}"
        )


def check_leases(
    caller: Caller,
    tokens: Iterable[Any],
    place: Callable[[Any], tuple[str, str | None] | None],
    kinds: QueueKinds,
) -> None:
    """Allow settling each lease in ``tokens`` (where ``place`` says it is), or raise.

    A token ``place`` does not know (settled or expired) passes: settling it fails
    anyway, with ``LockLostError``.
    """
    if caller.role == ADMIN:
        return
    for token in tokens:
        where = place(token)
        if where is not None:
            check_queue(caller, RECEIVE, where[0], where[1], kinds)


class StoreView(Protocol):
    """What the checks read of the broker's store (``QueueStore``)."""

    def lease_place(self, token: str) -> tuple[str, str | None] | None: ...
    def queue_options(self, name: str) -> QueueOptions | None: ...


def _send(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    check_queue(caller, SEND, args[0], None, kinds)


def _receive(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    check_queue(caller, RECEIVE, args[0], args[3], kinds)


def _settle_one(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    check_leases(caller, args[:1], store.lease_place, kinds)


def _settle_many(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    check_leases(caller, args, store.lease_place, kinds)


def _send_complete(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    check_queue(caller, SEND, args[0], None, kinds)
    check_leases(caller, args[2], store.lease_place, kinds)


def _settle_receive(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    if args[1]:  # a session's settle_and_receive sends nothing
        check_queue(caller, SEND, args[0], None, kinds)
    check_leases(caller, args[2], store.lease_place, kinds)
    check_queue(caller, RECEIVE, args[3], args[6], kinds)


def _declare(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    options = QueueOptions.given(args[1], args[2])
    check_declare(caller, args[0], options, store.queue_options(args[0]))


def _anyone(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    return None


def _admin_only(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    raise PermissionDeniedError(f"only an admin may ask for broker statistics, not a {caller.role}")


def _counts(caller: Caller, args: list[Any], store: StoreView, kinds: QueueKinds) -> None:
    """A queue's counts (no content): to whoever has any right on that queue."""
    if not _RIGHTS.get((caller.role, kinds.kind(args[0]))):
        raise PermissionDeniedError(
            f"role {caller.role!r} has no rights on {kinds.kind(args[0])} queue {args[0]!r}"
        )


# wire command -> its check (a decoded request's arguments are already validated)
_CHECKS: dict[int, Callable[[Caller, list[Any], StoreView, QueueKinds], None]] = {
    wire.HEARTBEAT: _anyone,
    wire.BYE: _anyone,
    wire.WAKE: _anyone,
    wire.DECLARE: _declare,
    wire.SEND: _send,
    wire.RECEIVE: _receive,
    wire.COMPLETE: _settle_one,
    wire.ABANDON: _settle_one,
    wire.GIVE_BACK: _settle_one,
    wire.RENEW: _settle_one,
    wire.DEAD_LETTER: _settle_one,
    wire.RELEASE: _settle_many,
    wire.COMPLETE_MANY: _settle_many,
    wire.SEND_COMPLETE: _send_complete,
    wire.SETTLE_RECEIVE: _settle_receive,
    wire.QUEUE_COUNTS: _counts,
    wire.STATS: _admin_only,
}

#: Control-message kinds only an admin may send: ``stop`` ends an engine (pool shrink).
#: (The value of the messages' ``kind`` property, ``realtime_batch.control.KIND_STOP``.)
OPERATOR_KINDS = frozenset({"stop"})


def authorize(caller: Caller, request: wire.Request, store: StoreView, kinds: QueueKinds) -> None:
    """Allow ``request`` from ``caller`` or raise ``PermissionDeniedError`` (the one check).

    Args:
        caller: the authenticated identity the request came from.
        request: the decoded request.
        store: the broker's queue store (leases' places, queues' settings).
        kinds: the queue-kind rule.
    """
    if caller.role == ADMIN:
        return
    _CHECKS[request.command](caller, request.args, store, kinds)
    if request.messages and kinds.kind(request.args[0]) == CONTROL:
        for message in request.messages:
            if message.properties.get("kind") in OPERATOR_KINDS:
                raise PermissionDeniedError(
                    f"only an admin may send {message.properties['kind']!r} control messages"
                )


def accepts_engine_report(caller: Caller | None) -> bool:
    """Whether a heartbeat's engine report is kept: from engines (and admins) when roles
    are enforced, from anyone without them (``caller`` None)."""
    return caller is None or caller.role in (ENGINE, ADMIN)
