"""Service Bus transport (azure-servicebus 7): ``servicebus://NAMESPACE`` or a connection string.

* ``servicebus://NAMESPACE`` (``NAMESPACE`` or ``NAMESPACE.servicebus.windows.net``)
  authenticates with azure-identity's ``DefaultAzureCredential``.
* ``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`` uses the SAS key;
  ``UseDevelopmentEmulator=true`` (a local emulator) turns TLS off for AMQP.

Queues are checked and created with the administration API (``servicebus_admin``, which
needs Manage rights) wherever the endpoint serves it; without it they must have been
provisioned (``rtbatch servicebus provision``, or the official emulator's Config.json).

Contract mapping: ``receive`` is a peek-lock receive; ``group`` is the Service Bus
session id (the queue must be session-enabled: ``declare_queue(..., grouped=True)``);
``dead_letter_queue(q)`` is the ``$DeadLetterQueue`` sub-queue. One ``ServiceBusClient``
per transport; senders are cached per queue and receivers per (queue, group), each
guarded by its own lock because SDK handlers are not thread-safe. SDK exceptions are
mapped into the ``TransportError`` tree in one place, ``map_servicebus_errors``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus import exceptions as sb_errors

from . import servicebus_admin
from .base import (
    DEAD_LETTER_SUFFIX,
    Capabilities,
    Delivery,
    Message,
    QueueCounts,
    QueueOptions,
    Transport,
    as_message_list,
    check_max_messages,
    is_dead_letter_queue,
)
from .errors import (
    ConnectionLostError,
    LockLostError,
    MessageTooLargeError,
    PermissionDeniedError,
    QueueFullError,
    QueueNotFoundError,
    QueueSettingsConflict,
    TransportClosedError,
    TransportError,
    TransportTimeoutError,
)
from .stats import QueueStats, TransportStats

__all__ = ["ServiceBusTransport", "map_servicebus_errors"]

log = logging.getLogger(__name__)

#: Largest body accepted: the Standard tier's 256 KiB less room for headers and properties.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 - 8 * 1024


@contextlib.contextmanager
def map_servicebus_errors(what: str = "Service Bus operation") -> Iterator[None]:
    """Translate azure-servicebus exceptions into the ``TransportError`` tree (the one place)."""
    try:
        yield
    except TransportError:
        raise
    except (
        sb_errors.MessageAlreadySettled,
        sb_errors.MessageLockLostError,
        sb_errors.SessionLockLostError,
    ) as exc:
        raise LockLostError(f"{what}: {exc}") from exc
    except sb_errors.MessageSizeExceededError as exc:
        raise MessageTooLargeError(-1, -1, what=f"{what}: message ({exc})") from exc
    except sb_errors.MessagingEntityNotFoundError as exc:
        raise QueueNotFoundError(f"{what}: {exc}") from exc
    except sb_errors.ServiceBusQuotaExceededError as exc:
        raise QueueFullError(f"{what}: {exc}") from exc
    except sb_errors.OperationTimeoutError as exc:
        raise TransportTimeoutError(f"{what}: {exc}") from exc
    except sb_errors.ServiceBusAuthorizationError as exc:  # no Send/Listen/Manage right
        raise PermissionDeniedError(f"{what}: {exc}") from exc
    except sb_errors.ServiceBusAuthenticationError as exc:  # bad or expired key / SAS token
        raise PermissionDeniedError(
            f"{what}: the credential was refused (a wrong key, or an expired SAS token: "
            f"on Azure, rtbatch pool renew-credentials): {exc}"
        ) from exc
    except (sb_errors.ServiceBusConnectionError, sb_errors.ServiceBusCommunicationError) as exc:
        raise ConnectionLostError(f"{what}: {exc}") from exc
    except sb_errors.ServiceBusError as exc:
        if getattr(exc, "_condition", None) == PRECONDITION_FAILED:  # the SDK keeps it there
            raise QueueSettingsConflict(f"{what}: {exc}") from exc
        raise TransportError(f"{what}: {exc}") from exc


#: AMQP condition of a declare refused because the queue exists with other settings.
PRECONDITION_FAILED = "amqp:precondition-failed"


class _Handler:
    """An SDK sender or receiver and the lock serialising its use."""

    def __init__(self, handler: Any, presettled: bool = False) -> None:
        self.handler = handler
        self.presettled = presettled  # receive-and-delete: nothing left to settle
        self.lock = threading.Lock()
        self.waiting = 0  # threads queued for the lock (a receive loop lets them go first)
        self._count_lock = threading.Lock()
        self.broken = False  # the connection failed: replace this handler on next use
        self.unsettled: dict[str, float] = {}  # lock token -> lease end, handed out

    def expects_settlements(self) -> bool:
        """True while deliveries from this receiver may still be settled by another thread."""
        now = time.time()
        for token, until in list(self.unsettled.items()):  # a copy: other threads settle
            if until <= now:
                self.unsettled.pop(token, None)
        return bool(self.unsettled)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._count_lock:
            self.waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._count_lock:
                self.waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    def close(self) -> None:
        acquired = self.lock.acquire(timeout=5)
        try:
            _no_keep_alive_join(self.handler)
            self.handler.close()
        except Exception:  # closing must never raise
            log.debug("closing %r failed", self.handler, exc_info=True)
        finally:
            if acquired:
                self.lock.release()


def _no_keep_alive_join(handler: Any) -> None:
    """Let ``handler.close()`` return without joining the SDK's keep-alive thread.

    That thread sleeps in 1 s steps and ends by itself once its client is shut down;
    the SDK's close joins it, which cost up to a second per sender and receiver (a
    ``Session.close()`` took 1.5-2.4 s on the stand-in). Private SDK state, so only
    touched when it is there.
    """
    amqp = getattr(handler, "_handler", None)
    if amqp is not None and getattr(amqp, "_keep_alive_thread", None) is not None:
        amqp._keep_alive_thread = None


def _timestamp(value: datetime.datetime | None, default: float) -> float:
    return value.timestamp() if value is not None else default


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class ServiceBusTransport(Transport):
    """Transport over Azure Service Bus queues (peek-lock; groups are sessions).

    Args:
        url: ``servicebus://NAMESPACE`` or a Service Bus connection string.
        max_message_size: largest body accepted by ``send`` (default 248 KiB).
        prefetch: messages an SDK receiver requests ahead of ``receive`` (engines).
        credential: a ``TokenCredential`` for ``servicebus://`` (default
            ``DefaultAzureCredential``).
        manage: whether ``declare_queue`` checks and creates queues with the
            administration API (needs Manage rights); when that is refused or not served
            it assumes the queue was provisioned.
        poll_wait: seconds a ``timeout=0`` receive waits for the service's answer.
        receive_slice: longest single SDK receive; longer waits are cut into slices so that
            settlements from other threads and ``close()`` are not held up.
        settle_slice: the slice used instead while deliveries from the same receiver are
            still unsettled (an engine settling on another thread waits at most this).
        retry_total: SDK retries on transient faults.
        batch_gap: once a receive has its first message, how long the SDK keeps
            collecting more (its default is 0.2 s, a latency floor for every
            ``max_messages > 1`` receive that finds fewer messages): the receivers'
            ``socket_timeout``, and the SDK's further-pull wait where it has one.
        group_receive_mode: ``"peek_lock"`` (default, the contract) or
            ``"receive_and_delete"`` for ``receive(..., group=...)``: mailbox messages are
            removed on delivery, so ``complete`` costs no round trip; ``abandon``,
            ``dead_letter`` and ``renew_lock`` then raise ``LockLostError``. Meant for result
            mailboxes, whose reader drops duplicates and dies with its results anyway.
    """

    #: nothing beyond the contract: a lease belongs to the receiver link that took it,
    #: a give-back counts as a delivery, and the cloud service is waited for
    capabilities = Capabilities()

    def __init__(
        self,
        url: str,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        prefetch: int = 0,
        credential: Any = None,
        manage: bool = True,
        poll_wait: float = 0.1,
        receive_slice: float = 0.5,
        settle_slice: float = 0.02,
        retry_total: int = 3,
        batch_gap: float = 0.02,
        group_receive_mode: str = "peek_lock",
        **_options: Any,
    ) -> None:
        if group_receive_mode not in ("peek_lock", "receive_and_delete"):
            raise ValueError(f"unknown group_receive_mode {group_receive_mode!r}")
        self.group_receive_mode = group_receive_mode
        self.url = url
        self.max_message_size = max_message_size
        self.prefetch = prefetch
        self.manage = manage
        self.poll_wait = poll_wait
        self.receive_slice = receive_slice
        self.settle_slice = settle_slice
        self.batch_gap = batch_gap
        self._connection_string = url if url.strip().lower().startswith("endpoint=") else None
        self.emulator = bool(
            self._connection_string
            and "usedevelopmentemulator=true" in url.lower().replace(" ", "")
        )
        if self._connection_string:
            self.client = ServiceBusClient.from_connection_string(url, retry_total=retry_total)
            self._credential = None
        else:
            namespace = servicebus_admin.fully_qualified_namespace(url)
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            self._credential = credential
            self.client = ServiceBusClient(namespace, credential, retry_total=retry_total)
        self.namespace = self.client.fully_qualified_namespace
        self._lock = threading.Lock()
        self._senders: dict[str, _Handler] = {}
        self._receivers: dict[tuple[str, str | None], _Handler] = {}
        self._declared: dict[str, QueueOptions | None] = {}
        #: Why the administration API cannot serve ``declare_queue`` (None: try it).
        self._admin_refused: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ServiceBusTransport({self.namespace!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed")

    # -- handlers -------------------------------------------------------------------------
    def _sender(self, queue: str) -> _Handler:
        with self._lock:
            self._check_open()
            entry = self._senders.get(queue)
            if entry is None or entry.broken:
                entry = _Handler(self.client.get_queue_sender(queue))
                self._senders[queue] = entry
        return entry

    def _receiver(self, queue: str, group: str | None) -> _Handler:
        key = (queue, group)
        with self._lock:
            self._check_open()
            entry = self._receivers.get(key)
            if entry is not None and not entry.broken:
                return entry
            # The socket timeout bounds each read of the SDK's receive loop, so it also
            # bounds how long a batch waits after its first message (SDK default 0.2 s).
            options: dict[str, Any] = {
                "prefetch_count": self.prefetch,
                "socket_timeout": self.batch_gap,
            }
            name = queue
            if is_dead_letter_queue(queue):
                name = queue[: -len(DEAD_LETTER_SUFFIX)]
                options["sub_queue"] = ServiceBusSubQueue.DEAD_LETTER
            presettled = False
            if group is not None:
                options["session_id"] = group
                if self.group_receive_mode == "receive_and_delete":
                    options["receive_mode"] = ServiceBusReceiveMode.RECEIVE_AND_DELETE
                    presettled = True
            with map_servicebus_errors(f"opening a receiver on {queue!r}"):
                receiver = self.client.get_queue_receiver(name, **options)
                receiver.__enter__()  # attach now, with the SDK's own open timeout
            if hasattr(receiver, "_further_pull_receive_timeout"):
                receiver._further_pull_receive_timeout = self.batch_gap
            entry = _Handler(receiver, presettled)
            self._receivers[key] = entry
            return entry

    @contextlib.contextmanager
    def _using(self, entry: _Handler, what: str) -> Iterator[Any]:
        """Serialise use of one SDK handler; a dropped connection is reopened next time."""
        with entry.held(), map_servicebus_errors(what):
            self._check_open()
            try:
                yield entry.handler
            except (sb_errors.ServiceBusConnectionError, sb_errors.ServiceBusCommunicationError):
                entry.broken = True
                raise
            except sb_errors.SessionLockLostError:
                entry.broken = True
                raise

    # -- queues ---------------------------------------------------------------------------
    def declare_queue(
        self,
        name: str,
        *,
        lock_duration: float | None = None,
        max_delivery_count: int | None = None,
        grouped: bool = False,
        max_length: int | None = None,  # not applicable: Service Bus has a size quota
    ) -> None:
        self._check_open()
        options = QueueOptions.given(lock_duration, max_delivery_count)
        if name in self._declared:
            known = self._declared[name]
            if options is None or options == known:
                return
            if known is not None:
                raise QueueSettingsConflict(
                    f"queue {name!r} was declared with {known}, now with {options}"
                )
        if self.manage:
            self._declare_with_admin(name, options, grouped)
        self._declared[name] = options

    def _declare_with_admin(self, name: str, options: QueueOptions | None, grouped: bool) -> None:
        """Check or create ``name`` with the administration API (needs Manage rights).

        Refused (no Manage rights) or not served (the official emulator has no
        administration endpoint the SDK can reach): logged once, and this and later
        queues are taken to be provisioned; a missing one then raises
        ``QueueNotFoundError`` on first use. One attempt, no retries: the SDK's retries
        took 5 s per declare where nothing answers.
        """
        from azure.core.exceptions import AzureError

        if self._admin_refused is not None:
            log.debug("assuming %r was provisioned (%s)", name, self._admin_refused)
            return
        try:
            with self._admin(retry_total=0) as admin:
                done = servicebus_admin.ensure_queue(admin, name, options, grouped=grouped)
        except AzureError as exc:
            self._admin_refused = f"the administration API: {exc}"
            log.info("cannot check or create %r (%s); assuming it was provisioned", name, exc)
            return
        if done == "created":
            log.info("created queue %r", name)

    def _admin(self, **options: Any) -> contextlib.AbstractContextManager[Any]:
        """The administration client for this transport's namespace (needs Manage)."""
        target = self._connection_string or self.namespace
        return servicebus_admin.admin_client(target, self._credential, **options)

    # -- messages -------------------------------------------------------------------------
    def send(self, queue: str, messages: Message | Iterable[Message]) -> None:
        self._check_open()
        batch = as_message_list(messages)
        for message in batch:
            if len(message.body) > self.max_message_size:
                raise MessageTooLargeError(len(message.body), self.max_message_size)
        if not batch:
            return
        with self._using(self._sender(queue), f"send to {queue!r}") as sender:
            pending = sender.create_message_batch()
            for message in batch:
                sb_message = _to_sdk(message)
                try:
                    pending.add_message(sb_message)
                except sb_errors.MessageSizeExceededError:
                    if len(pending) == 0:
                        raise MessageTooLargeError(len(message.body), pending.max_size_in_bytes)
                    sender.send_messages(pending)
                    pending = sender.create_message_batch()
                    pending.add_message(sb_message)
            sender.send_messages(pending)

    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 1,
        timeout: float | None = None,
        group: str | None = None,
    ) -> list[Delivery]:
        self._check_open()
        check_max_messages(max_messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                entry = self._receiver(queue, group)
            except TransportError as exc:
                if not isinstance(exc.__cause__, sb_errors.SessionCannotBeLockedError):
                    raise
                entry = None  # another receiver holds the session: wait for it
            longest = self.receive_slice
            if entry is not None and entry.expects_settlements():
                longest = self.settle_slice
            remaining = None if deadline is None else deadline - time.monotonic()
            wait = longest if remaining is None else min(longest, remaining)
            if timeout == 0:
                wait = self.poll_wait
            final = timeout == 0 or (remaining is not None and wait >= remaining)
            if entry is None:
                time.sleep(min(max(wait, 0.01), 0.5))
            else:
                got = self._receive_slice(entry, queue, max_messages, max(wait, 0.01), final)
                if got:
                    return got
            if timeout == 0 or (deadline is not None and time.monotonic() >= deadline):
                return []

    def _receive_slice(
        self, entry: _Handler, queue: str, max_messages: int, wait: float, final: bool
    ) -> list[Delivery]:
        for _ in range(100):  # let queued settlements through first (the lock is not fair)
            if not entry.waiting:
                break
            time.sleep(0.001)
        with self._using(entry, f"receive from {queue!r}") as receiver:
            session = receiver.session if receiver._session else None
            if session is not None:
                self._keep_session(session, wait)
            received = receiver.receive_messages(max_message_count=max_messages, max_wait_time=wait)
            if len(received) < max_messages and (received or final) and self.prefetch == 0:
                self._withdraw_credit(receiver)
            deliveries = [self._delivery(entry, queue, m, session) for m in received]
            if not entry.presettled:
                for d in deliveries:
                    entry.unsettled[d.lock_token] = d.locked_until
            return deliveries

    @staticmethod
    def _withdraw_credit(receiver: Any) -> None:
        """Set the link credit left by a short receive back to 0.

        Otherwise messages keep arriving after ``receive`` returned; the SDK releases
        those (they come back later), which costs transfers and dispositions for nothing.
        Uses the SDK's internal handler; skipped if that is not there.
        """
        handler = getattr(receiver, "_handler", None)
        link = getattr(handler, "_link", None)
        if link is not None and getattr(link, "current_link_credit", 0) > 0:
            try:
                receiver._amqp_transport.reset_link_credit(handler, 0)
            except Exception:  # an optimisation only
                log.debug("withdrawing link credit failed", exc_info=True)

    @staticmethod
    def _keep_session(session: Any, wait: float) -> None:
        """Renew a mailbox's session lock before it can run out during the coming wait."""
        until = session.locked_until_utc
        if until is not None and until.timestamp() - time.time() < max(2 * wait, 5.0):
            session.renew_lock()

    def _delivery(
        self, entry: _Handler, queue: str, msg: ServiceBusReceivedMessage, session: Any
    ) -> Delivery:
        body = msg.body if isinstance(msg.body, bytes) else b"".join(msg.body)
        ttl = msg.time_to_live.total_seconds() if msg.time_to_live else None
        properties = {_text(k): _text(v) for k, v in (msg.application_properties or {}).items()}
        message = Message(
            bytes(body),
            id=str(msg.message_id) if msg.message_id is not None else None,
            group=msg.session_id,
            correlation_id=msg.correlation_id,
            properties=properties,
            ttl=ttl,
        )
        lock_expiry = session.locked_until_utc if session is not None else msg.locked_until_utc
        return Delivery(
            message,
            queue,
            (msg.delivery_count or 0) + 1,  # the SDK counts from 0, the contract from 1
            _timestamp(lock_expiry, time.time()),
            str(msg.lock_token),
            handle=(entry, msg),
        )

    # -- settlement -------------------------------------------------------------------------
    def _settle(self, delivery: Delivery, what: str) -> tuple[Any, ServiceBusReceivedMessage]:
        self._check_open()
        entry, msg = delivery.handle
        if entry.presettled and what != "complete":
            raise LockLostError(f"{what}: received in receive-and-delete mode, already removed")
        if entry.broken:
            raise LockLostError(
                f"{what}: the receiver's connection was lost; the lock went with it"
            )
        return entry, msg

    @contextlib.contextmanager
    def _settling(self, delivery: Delivery, what: str) -> Iterator[Any]:
        entry, msg = self._settle(delivery, what)
        try:
            with self._using(entry, what) as receiver:
                yield receiver, msg
        finally:
            entry.unsettled.pop(delivery.lock_token, None)

    def complete(self, delivery: Delivery) -> None:
        entry, _ = self._settle(delivery, "complete")
        if entry.presettled:
            return
        with self._settling(delivery, "complete") as (receiver, msg):
            receiver.complete_message(msg)

    def abandon(self, delivery: Delivery) -> None:
        with self._settling(delivery, "abandon") as (receiver, msg):
            receiver.abandon_message(msg)

    def queue_counts(self, queue: str) -> QueueCounts:
        """Active messages of ``queue`` (needs Manage, or the Data Owner role keyless)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        self._check_open()
        try:
            with self._admin() as admin:
                properties = admin.get_queue_runtime_properties(queue)
        except ResourceNotFoundError as exc:
            raise QueueNotFoundError(f"queue_counts: no queue {queue!r}") from exc
        except AzureError as exc:
            raise TransportError(f"queue_counts of {queue!r}: {exc}") from exc
        return QueueCounts(int(properties.active_message_count or 0))

    def dead_letter(self, delivery: Delivery, reason: str, description: str = "") -> None:
        with self._settling(delivery, "dead_letter") as (receiver, msg):
            receiver.dead_letter_message(msg, reason=reason, error_description=description)

    def renew_lock(self, delivery: Delivery) -> float:
        entry, msg = self._settle(delivery, "renew_lock")
        with self._using(entry, "renew_lock") as receiver:
            if receiver._session:
                until = receiver.session.renew_lock()
            else:
                until = receiver.renew_message_lock(msg)
        delivery.locked_until = _timestamp(until, time.time())
        if delivery.lock_token in entry.unsettled:
            entry.unsettled[delivery.lock_token] = delivery.locked_until
        return delivery.locked_until

    def stats(self) -> TransportStats:
        """Queue counts from the administration API (``get_queue_runtime_properties``).

        Service Bus has no broker that engines report to, and does not count locked
        messages or sessions apart: those fields stay ``None`` and ``notes`` says so.
        On an emulator that serves no administration API (the official one) only the
        names of the queues this client declared are known.

        Raises:
            TransportError: the administration API refused or failed (not an emulator).
        """
        self._check_open()
        notes = [
            "Service Bus counts locked (in-flight) messages among the active ones: "
            "depth includes them, in flight is not reported",
            "engines are not listed: they report to a broker, and Service Bus has none",
            "per-session (mailbox) counts are not reported by the service",
        ]
        try:
            queues = self._runtime_queue_stats()
        except TransportError:
            if not self.emulator:
                raise
            log.debug("no administration API on the emulator", exc_info=True)
            queues = [QueueStats(name) for name in sorted(self._declared)]
            notes.insert(
                0,
                "the Service Bus emulator serves no administration API: only "
                "the queues this client declared are listed, without counts",
            )
        return TransportStats(transport="servicebus", url=self.namespace, queues=queues,
                              notes=notes)  # fmt: skip

    def _runtime_queue_stats(self) -> list[QueueStats]:
        from azure.core.exceptions import AzureError

        try:
            with self._admin() as admin:
                return [
                    QueueStats(
                        name=props.name,
                        depth=props.active_message_count,
                        dead_letter=props.dead_letter_message_count,
                    )
                    for props in admin.list_queues_runtime_properties()
                ]
        except AzureError as exc:
            raise TransportError(f"Service Bus administration API: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handlers = [*self._senders.values(), *self._receivers.values()]
            self._senders.clear()
            self._receivers.clear()
        for entry in handlers:
            entry.close()
        try:
            self.client.close()
        except Exception:
            log.debug("closing the Service Bus client failed", exc_info=True)


def _to_sdk(message: Message) -> ServiceBusMessage:
    sb_message = ServiceBusMessage(
        message.body,
        message_id=message.id,
        session_id=message.group,
        correlation_id=message.correlation_id,
        application_properties=dict(message.properties) or None,
    )
    if message.ttl is not None:
        # The ``time_to_live`` setter truncates to whole seconds; the AMQP header holds ms.
        sb_message.raw_amqp_message.header.time_to_live = max(1, round(message.ttl * 1000))
    return sb_message
