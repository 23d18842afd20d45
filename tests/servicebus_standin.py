"""A local AMQP 1.0 stand-in for Azure Service Bus, good enough for the real azure-servicebus SDK.

Run it by hand::

    python tests/servicebus_standin.py --port 5672

The first line printed is the connection string to use (``UseDevelopmentEmulator=true``
turns TLS off in the SDK). It serves until SIGTERM or Ctrl-C.

What it implements (what the realtime-batch transport contract needs, the way the
service does it): SASL ANONYMOUS then ``$cbs`` put-token with the SAS signature checked
against the key; queues with peek-lock (complete = accepted, abandon = modified,
dead-letter = rejected with ``com.microsoft:dead-letter``) and receive-and-delete; lock
expiry with redelivery and ``delivery_count``; ``max_delivery_count``; TTL; the dead-letter
sub-queue; sessions (``com.microsoft:session-filter`` on attach, session locks);
``$management`` renew-lock and renew-session-lock (other operations answer 501); the
lock-lost error conditions; batch transfers (message format 0x80013700). The queue state
machine is realtime_batch's ``QueueStore``.

Entities are created as on the service, with ``ServiceBusAdministrationClient``: the
stand-in answers its HTTPS requests on the same port (``servicebus_standin_admin``), with
a self-signed certificate for 127.0.0.1. A client trusts it through ``REQUESTS_CA_BUNDLE``:
``StandInProcess`` and ``standin_command`` set that for the calling process and its
children. Queues listed with ``--queue NAME`` exist from the start.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import hmac
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

from proton import Array, Data, Disposition, Message, Terminus, symbol, timestamp
from proton import Condition as ProtonCondition
from proton.handlers import MessagingHandler
from proton.reactor import ApplicationEvent, Container, EventInjector
from servicebus_standin_admin import MuxAcceptor, QueueEntity, serve_https, settings_of, tls_files
from servicebus_standin_admin import trust as trust_certificate

from realtime_batch.transport.base import (
    DEAD_LETTER_DESCRIPTION,
    DEAD_LETTER_REASON,
    DEAD_LETTER_SUFFIX,
    QueueOptions,
)
from realtime_batch.transport.base import Message as RtMessage
from realtime_batch.transport.errors import LockLostError, QueueNotFoundError
from realtime_batch.transport.store import QueueStore

__all__ = [
    "ServiceBusStandIn",
    "StandInProcess",
    "connection_string",
    "main",
    "run_in_thread",
    "standin_command",
]

log = logging.getLogger("servicebus_standin")

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"
MAX_MESSAGE_SIZE = 262144  # the Standard tier's limit, announced on attach
TICK = 0.05  # seconds between lease-expiry sweeps
DOTNET_EPOCH_TICKS = 621355968000000000

SESSION_FILTER = symbol("com.microsoft:session-filter")
LOCKED_UNTIL_UTC = symbol("com.microsoft:locked-until-utc")
DEAD_LETTER_CONDITION = "com.microsoft:dead-letter"
MESSAGE_LOCK_LOST = "com.microsoft:message-lock-lost"
SESSION_LOCK_LOST = "com.microsoft:session-lock-lost"
SESSION_CANNOT_BE_LOCKED = "com.microsoft:session-cannot-be-locked"
_SECTION_DESCRIPTORS = range(0x70, 0x79)


def amqp_error(name: str, description: str) -> ProtonCondition:
    """An AMQP error as the service sends it: with an info map (the SDK indexes it)."""
    return ProtonCondition(
        name, description, {symbol("com.microsoft:tracking-id"): uuid.uuid4().hex}
    )


def connection_string(port: int, key_name: str = DEFAULT_KEY_NAME, key: str = DEFAULT_KEY) -> str:
    """The ``UseDevelopmentEmulator=true`` connection string for a stand-in on ``port``."""
    return (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName={key_name};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true"
    )


def guarded(method):
    """Log and swallow exceptions: one escaping a proton handler stops the whole reactor."""

    @functools.wraps(method)
    def wrapper(self, event):
        try:
            return method(self, event)
        except Exception:
            log.exception("stand-in handler %s failed", method.__name__)
            return None

    return wrapper


def entity_of(address: str | None) -> str:
    """``amqps://host:port/q/$DeadLetterQueue`` -> ``q/$deadletterqueue``."""
    path = address or ""
    if "://" in path:
        path = path.split("://", 1)[1].partition("/")[2]
    path = path.strip("/")
    if path.lower().endswith(DEAD_LETTER_SUFFIX):
        path = path[: -len(DEAD_LETTER_SUFFIX)] + DEAD_LETTER_SUFFIX
    return path


def _sections(raw: bytes) -> list[tuple[int, Any]]:
    """Split an encoded message into (descriptor, value) sections (binary values copied)."""
    sections, pos = [], 0
    while pos < len(raw):
        data = Data()
        pos += data.decode(raw[pos:])
        data.rewind()
        data.next()
        section = data.get_object()
        value = section.value
        if isinstance(value, memoryview):
            value = value.tobytes()
        sections.append((int(section.descriptor), value))
    return sections


def unpack_transfer(raw: bytes) -> list[Message]:
    """Decode a transfer; a batch (format 0x80013700) holds one encoded message per data section."""
    try:
        sections = _sections(raw)
        bodies = [value for descriptor, value in sections if descriptor == 0x75]
        if bodies and all(
            len(b) > 2 and b[0] == 0 and b[1] == 0x53 and b[2] in _SECTION_DESCRIPTORS
            for b in bodies
        ):
            inner = []
            for body in bodies:
                msg = Message()
                msg.decode(body)
                inner.append(msg)
            return inner
    except Exception:  # not a batch: fall through to a plain decode
        log.debug("transfer is not a batch", exc_info=True)
    msg = Message()
    msg.decode(raw)
    return [msg]


def _covers(resource: str, audience: str) -> bool:
    """True if the token resource ``resource`` is ``audience`` or a URI prefix of it
    (scheme and host case-insensitive; ``sb://`` and ``amqps://`` alike)."""

    def norm(uri: str) -> str:
        rest = uri.split("://", 1)[-1]
        host, _, path = rest.partition("/")
        return f"{host.lower()}/{path}".rstrip("/")

    res, aud = norm(resource), norm(audience)
    return aud == res or aud.startswith(res + "/")


def check_sas(token: str, key_name: str, key: str, audience: str | None = None) -> bool:
    """Check a ``SharedAccessSignature sr=..&sig=..&se=..&skn=..`` token against ``key``:
    signature, key name, expiry, and (given the put-token's ``audience``) that the
    token's resource ``sr`` covers it, as the service does (a URI prefix)."""
    if not token.startswith("SharedAccessSignature "):
        return False
    fields = dict(
        part.split("=", 1) for part in token[len("SharedAccessSignature ") :].split("&") if part
    )
    try:
        if fields["skn"] != key_name or float(fields["se"]) < time.time():
            return False
        if audience is not None and not _covers(unquote_plus(fields["sr"]), audience):
            return False
        signed = (fields["sr"] + "\n" + fields["se"]).encode()
        expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest())
        return hmac.compare_digest(expected.decode(), unquote(fields["sig"]))
    except (KeyError, ValueError):
        return False


class _Out:
    """A link on which the stand-in sends (the SDK's receiver, or a reply link)."""

    def __init__(self, link, entity: str, session_id: str | None, settled: bool):
        self.link = link
        self.entity = entity
        self.session_id = session_id
        self.settled = settled  # receive-and-delete
        self.tokens: set[str] = set()


class ServiceBusStandIn(MessagingHandler):
    """The broker: a proton handler serving one loopback port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key_name: str = DEFAULT_KEY_NAME,
        key: str = DEFAULT_KEY,
        queues: tuple[str, ...] = (),
        tls: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=False)
        self.host, self.port = host, port
        self.key_name, self.key = key_name, key
        self.store = QueueStore()
        self.requires_session: dict[str, bool] = {}
        self.outs: dict[Any, _Out] = {}  # proton link -> _Out for entity receivers
        self.unsettled: dict[str, tuple[Any, _Out]] = {}  # lock token -> (delivery, link)
        self.session_locks: dict[tuple[str, str], tuple[_Out, float]] = {}
        #: set by a SIGTERM/SIGINT handler; the next tick stops the container (``main``)
        self.stop_requested = False
        self.meta: dict[str, tuple[int, float]] = {}  # message id -> (sequence, enqueued)
        self.authorized: set[Any] = set()  # connections with a valid put-token
        self.stats: Counter[str] = Counter()
        self.per_connection: dict[str, Counter[str]] = defaultdict(Counter)
        self._seq = 0
        self.acceptor = None
        self.container: Container | None = None
        self.on_ready: Any = None  # called once listening
        self.tls = tls or tls_files()  # (certificate, key) of the administration API
        self.injector: EventInjector | None = None  # admin requests -> the reactor thread
        for name in queues:
            self.declare(name, QueueOptions(), requires_session=False)

    # -- entity admin ----------------------------------------------------------------------
    def declare(self, name: str, options: QueueOptions | None, *, requires_session: bool) -> None:
        if self.store.declare(name, options):
            self.requires_session[name] = requires_session
            log.info("queue %s created (%s, sessions=%s)", name, options, requires_session)

    def snapshot(self) -> dict[str, Any]:
        """Counters so far: totals and per connection (keyed by the peer's container id)."""
        return {
            "total": dict(self.stats),
            "connections": {k: dict(v) for k, v in self.per_connection.items()},
        }

    def _count(self, conn, what: str, n: int = 1) -> None:
        self.stats[what] += n
        self.per_connection[conn.remote_container or "?"][what] += n

    # -- reactor ---------------------------------------------------------------------------
    @guarded
    def on_reactor_init(self, event):
        self.container = event.container
        self.injector = EventInjector()
        event.container.selectable(self.injector)
        self.acceptor = MuxAcceptor(
            event.container, self.host, self.port, self._serve_admin, self._soon
        )
        event.container.schedule(TICK, self)
        if self.on_ready is not None:
            self.on_ready()

    @guarded
    def on_timer_task(self, event):
        if self.stop_requested:
            event.container.stop()
            return
        now = time.time()
        self.store.expire(now)
        for key, (out, until) in list(self.session_locks.items()):
            if until <= now:
                self._drop_session(key, out, SESSION_LOCK_LOST)
        self.pump()
        event.container.schedule(TICK, self)

    @guarded
    def on_connection_remote_open(self, event):
        self._count(event.connection, "connections")
        if event.connection.state & event.connection.LOCAL_UNINIT:
            event.connection.open()

    @guarded
    def on_session_remote_open(self, event):
        if event.session.state & event.session.LOCAL_UNINIT:
            event.session.open()

    @guarded
    def on_link_remote_open(self, event):
        link = event.link
        self._count(link.connection, "attaches")
        if not link.state & link.LOCAL_UNINIT:
            return
        address = link.remote_target.address if link.is_receiver else link.remote_source.address
        entity = entity_of(address)
        if link.is_receiver:
            link.max_message_size = MAX_MESSAGE_SIZE
        if entity == "$cbs" or entity.endswith("/$management"):
            self._accept(link)
            if link.is_receiver:
                link.flow(100)
            return
        if link.connection not in self.authorized:
            self._refuse(link, "amqp:unauthorized-access", "no valid put-token on this connection")
            return
        queue = entity.removesuffix(DEAD_LETTER_SUFFIX)
        if not self.store.has_queue(queue):
            self._refuse(
                link, "amqp:not-found", f"The messaging entity '{entity}' could not be found"
            )
            return
        if link.is_receiver:
            self._accept(link)
            link.flow(100)
            return
        self._open_out(link, entity)

    @staticmethod
    def _accept(link) -> None:
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.open()

    def _open_out(self, link, entity: str) -> None:
        session_id = None
        filters = self._filters(link)
        sessionful = SESSION_FILTER in filters
        wants_sessions = self.requires_session.get(entity, False)
        if sessionful != wants_sessions:
            self._refuse(
                link,
                "amqp:not-allowed",
                f"entity {entity!r} requires_session={wants_sessions}",
            )
            return
        if sessionful:
            session_id = filters[SESSION_FILTER]
            if session_id is None:
                session_id = self._available_session(entity)
                if session_id is None:
                    self._refuse(link, "com.microsoft:timeout", "no session available")
                    return
            key = (entity, session_id)
            if key in self.session_locks and self.session_locks[key][1] > time.time():
                self._refuse(link, SESSION_CANNOT_BE_LOCKED, f"session {session_id} is locked")
                return
            until = time.time() + self.store.queue(entity).options.lock_duration
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if session_id is not None:
            link.source.filter.clear()
            link.source.filter.put_dict({SESSION_FILTER: session_id})
            link.properties = {LOCKED_UNTIL_UTC: DOTNET_EPOCH_TICKS + int(until * 10_000_000)}
        settled = link.remote_snd_settle_mode == link.SND_SETTLED
        out = _Out(link, entity, session_id, settled)
        if session_id is not None:
            self.session_locks[(entity, session_id)] = (out, until)
        self.outs[link] = out
        link.open()

    @staticmethod
    def _filters(link) -> dict:
        data = link.remote_source.filter
        data.rewind()
        if not data.next():
            return {}
        value = data.get_object()
        return value if isinstance(value, dict) else {}

    def _available_session(self, entity: str) -> str | None:
        queue = self.store.queue(entity)
        now = time.time()
        for group, heap in queue.groups.items():
            lock = self.session_locks.get((entity, group))
            if group is not None and heap and (lock is None or lock[1] <= now):
                return group
        return None

    @staticmethod
    def _refuse(link, condition: str, description: str) -> None:
        """Refuse an attach the way the service does: null terminus, then detach with an error."""
        if link.is_receiver:
            link.target.type = Terminus.UNSPECIFIED
        else:
            link.source.type = Terminus.UNSPECIFIED
        link.open()
        link.condition = amqp_error(condition, description)
        link.close()

    @guarded
    def on_link_remote_close(self, event):
        self._forget(event.link)
        if not event.link.state & event.link.LOCAL_CLOSED:
            event.link.close()

    def on_link_error(self, event):  # the SDK closes links with conditions routinely
        pass

    def on_session_error(self, event):
        pass

    def on_connection_error(self, event):
        pass

    @guarded
    def on_connection_remote_close(self, event):
        self._drop_connection(event.connection)
        if not event.connection.state & event.connection.LOCAL_CLOSED:
            event.connection.close()

    @guarded
    def on_transport_closed(self, event):
        if event.connection is not None:
            self._drop_connection(event.connection)

    def _drop_connection(self, conn) -> None:
        self.authorized.discard(conn)
        for link in [lk for lk in self.outs if lk.connection is conn]:
            self._forget(link)

    def _forget(self, link) -> None:
        out = self.outs.pop(link, None)
        if out is None:
            return
        for token in out.tokens:
            self.unsettled.pop(token, None)  # the locks stay until they expire, as on the service
        if out.session_id is not None:
            key = (out.entity, out.session_id)
            if key in self.session_locks and self.session_locks[key][0] is out:
                del self.session_locks[key]

    def _drop_session(self, key, out: _Out, condition: str) -> None:
        del self.session_locks[key]
        if out.link in self.outs:
            self._forget(out.link)
            out.link.condition = amqp_error(condition, "the session lock expired")
            out.link.close()

    # -- flow and delivery ---------------------------------------------------------------------
    @guarded
    def on_link_flow(self, event):
        if event.link.is_sender:
            out = self.outs.get(event.link)
            if out is not None:  # an entity receiver asking for messages (not a reply link)
                self._count(event.link.connection, "flows_in")
                self._dispatch(out)
            event.link.drained()

    def pump(self) -> None:
        for out in list(self.outs.values()):
            if out.link.connection.transport is None:  # the peer died without closing
                self._drop_connection(out.link.connection)
                continue
            if out.link.credit > 0:
                self._dispatch(out)
            out.link.drained()

    def _dispatch(self, out: _Out) -> None:
        link = out.link
        while link.credit > 0:
            now = time.time()
            group = out.session_id
            grants = self.store.take(
                out.entity, max_messages=1, now=now, group=group, any_group=group is None
            )
            if not grants:
                return
            grant = grants[0]
            seq, enqueued = self.meta.get(grant.message.id, (0, now))
            message = self._to_amqp(grant, seq, enqueued, out)
            delivery = link.delivery(uuid.UUID(hex=grant.token).bytes_le)
            delivery.lock_token = grant.token  # proton keeps attributes on the C object
            link.send(message.encode())
            link.advance()
            self._count(link.connection, "transfers_out")
            if out.settled:
                delivery.settle()
                self.store.complete(grant.token, now)
                self._removed(grant.message.id)
            else:
                out.tokens.add(grant.token)
                self.unsettled[grant.token] = (delivery, out)

    def _locked_until(self, out: _Out, lease_until: float) -> float:
        if out.session_id is not None:
            lock = self.session_locks.get((out.entity, out.session_id))
            if lock is not None:
                return lock[1]
        return lease_until

    def _to_amqp(self, grant, seq: int, enqueued: float, out: _Out) -> Message:
        m = grant.message
        msg = Message(body=m.body, id=m.id, correlation_id=m.correlation_id, group_id=m.group)
        msg.properties = dict(m.properties) or None
        if m.ttl is not None:
            msg.ttl = m.ttl
        msg.delivery_count = grant.delivery_count - 1  # the wire count starts at 0
        msg.annotations = {
            symbol("x-opt-sequence-number"): seq,
            symbol("x-opt-enqueued-time"): timestamp(int(enqueued * 1000)),
            symbol("x-opt-locked-until"): timestamp(
                int(self._locked_until(out, grant.locked_until) * 1000)
            ),
        }
        return msg

    def _removed(self, message_id: str) -> None:
        self.meta.pop(message_id, None)

    @guarded
    def on_delivery(self, event):
        link, delivery = event.link, event.delivery
        if link.is_receiver:
            if delivery.partial or not delivery.readable:
                return
            raw = link.recv(delivery.pending)
            link.advance()
            self._incoming(link, delivery, raw)
            if link.credit < 50:
                link.flow(100 - link.credit)
        elif delivery.updated and delivery.remote_state is not None:
            self._count(link.connection, "dispositions_in")
            self._settle(link, delivery)

    def _incoming(self, link, delivery, raw: bytes) -> None:
        entity = entity_of(link.target.address or link.remote_target.address)
        if entity == "$cbs":
            self._cbs(link, unpack_transfer(raw)[0])
            self._finish(delivery, Disposition.ACCEPTED)
        elif entity.endswith("/$management"):
            self._management(link, entity, unpack_transfer(raw)[0])
            self._finish(delivery, Disposition.ACCEPTED)
        else:
            self._enqueue(entity, delivery, raw)

    @staticmethod
    def _finish(delivery, state, condition: ProtonCondition | None = None) -> None:
        if delivery.settled:  # pre-settled by the sender
            return
        if condition is not None:
            delivery.local.condition = condition
        delivery.update(state)
        delivery.settle()

    def _enqueue(self, entity: str, delivery, raw: bytes) -> None:
        try:
            batch = [self._from_amqp(m) for m in unpack_transfer(raw)]
            if len(raw) > MAX_MESSAGE_SIZE:
                raise ValueError("message too large")
            if self.requires_session.get(entity) and any(m.group is None for m in batch):
                raise PermissionError("the entity requires sessions: set session_id")
            now = time.time()
            self._count(delivery.link.connection, "transfers_in")
            self._count(delivery.link.connection, "messages_in", len(batch))
            for m in batch:
                self._seq += 1
                self.meta[m.id] = (self._seq, now)
            self.store.put(entity, batch, now)
        except ValueError as exc:
            cond = amqp_error("amqp:link:message-size-exceeded", str(exc))
            self._finish(delivery, Disposition.REJECTED, cond)
        except (PermissionError, QueueNotFoundError) as exc:
            self._finish(delivery, Disposition.REJECTED, amqp_error("amqp:not-allowed", str(exc)))
        else:
            self._finish(delivery, Disposition.ACCEPTED)
            self.pump()

    @staticmethod
    def _from_amqp(msg: Message) -> RtMessage:
        body = msg.body
        if isinstance(body, memoryview):
            body = body.tobytes()
        elif isinstance(body, str):
            body = body.encode()
        elif body is None:
            body = b""
        return RtMessage(
            bytes(body),
            id=str(msg.id) if msg.id is not None else None,
            group=msg.group_id or None,
            correlation_id=str(msg.correlation_id) if msg.correlation_id is not None else None,
            properties={str(k): v for k, v in (msg.properties or {}).items()},
            ttl=msg.ttl or None,
        )

    def _settle(self, link, delivery) -> None:
        out = self.outs.get(link)
        token = getattr(delivery, "lock_token", "")
        state, now = delivery.remote_state, time.time()
        try:
            if token not in self.unsettled:
                raise LockLostError("unknown or settled lock token")
            self.unsettled.pop(token)
            if out is not None:
                out.tokens.discard(token)
            if state == Disposition.ACCEPTED:
                self.store.complete(token, now)
            elif state == Disposition.REJECTED:
                cond = delivery.remote.condition
                info = dict(cond.info or {}) if cond is not None else {}
                self.store.dead_letter(
                    token,
                    str(info.get(DEAD_LETTER_REASON, "")),
                    str(info.get(DEAD_LETTER_DESCRIPTION, "")),
                    now,
                )
            elif state == Disposition.RELEASED:  # not delivered: the count is not raised
                self._release(token, now)
            else:  # modified: abandon (defer is treated as abandon)
                self.store.abandon(token, now)
        except LockLostError as exc:
            if delivery.settled:  # pre-settled by the SDK: nothing to answer
                delivery.settle()
                return
            lost = SESSION_LOCK_LOST if out is not None and out.session_id else MESSAGE_LOCK_LOST
            delivery.local.condition = amqp_error(lost, str(exc))
            delivery.update(Disposition.REJECTED)
            delivery.settle()
            return
        if not delivery.settled:
            delivery.update(state)  # the SDK waits for the outcome echoed and settled
        delivery.settle()
        self.pump()

    def _release(self, token: str, now: float) -> None:
        lease = self.store._leases.get(token)  # stand-in only: undo the count of a release
        if lease is not None and lease.locked_until > now:
            lease.entry.delivery_count -= 1
        self.store.abandon(token, now)

    # -- $cbs and $management ----------------------------------------------------------------------
    def _reply_link(self, conn, address: str):
        for link in self._links(conn):
            if link.is_sender and entity_of(link.source.address) == address:
                return link
        return None

    @staticmethod
    def _links(conn):
        link = conn.link_head(0)
        while link:
            yield link
            link = link.next(0)

    def _cbs(self, link, request: Message) -> None:
        self._count(link.connection, "cbs_requests")
        audience = (request.properties or {}).get("name")
        ok = check_sas(str(request.body), self.key_name, self.key, audience)
        if ok:
            self.authorized.add(link.connection)
        props = {"status-code": 202 if ok else 401}
        props["status-description"] = "Accepted" if ok else "InvalidSignature: bad SAS token"
        reply = Message(correlation_id=request.id, properties=props)
        self._reply(link.connection, "$cbs", reply)

    def _reply(self, conn, address: str, reply: Message) -> None:
        out = self._reply_link(conn, address)
        if out is None:
            log.warning("no reply link for %s", address)
            return
        out.delivery(str(uuid.uuid4()).encode())
        out.send(reply.encode())
        out.advance()
        self._count(conn, "transfers_out")

    def _management(self, link, entity: str, request: Message) -> None:
        self._count(link.connection, "management_requests")
        queue = entity[: -len("/$management")]
        op = str((request.properties or {}).get("operation", ""))
        body = request.body if isinstance(request.body, dict) else {}
        now = time.time()
        status, description, condition, result = 200, "OK", None, None
        try:
            if op == "com.microsoft:renew-lock":
                tokens = [uuid.UUID(str(t)).hex for t in body["lock-tokens"].elements]
                expirations = []
                for token in tokens:
                    until = self.store.renew(token, now)
                    expirations.append(timestamp(int(until * 1000)))
                result = {"expirations": Array(Data.NULL, Data.TIMESTAMP, *expirations)}
            elif op == "com.microsoft:update-disposition":
                self._update_disposition(body, now)
            elif op == "com.microsoft:renew-session-lock":
                result = {"expiration": timestamp(int(self._renew_session(queue, body) * 1000))}
            else:
                status, description = 501, f"operation {op!r} is not implemented by the stand-in"
        except LockLostError as exc:
            status, description = 410, str(exc)
            condition = SESSION_LOCK_LOST if "session" in op else MESSAGE_LOCK_LOST
        except (KeyError, TypeError, ValueError) as exc:
            status, description, condition = 400, f"bad request: {exc}", "amqp:invalid-field"
        props = {"statusCode": status, "statusDescription": description}
        if condition:
            props["errorCondition"] = symbol(condition)
        reply = Message(correlation_id=request.id, properties=props, body=result)
        reply_to = entity_of(request.reply_to) if request.reply_to else entity
        self._reply(link.connection, reply_to, reply)

    def _update_disposition(self, body: dict, now: float) -> None:
        """Settle by lock token over ``$management`` (the SDK's fallback when a link is gone)."""
        status = str(body["disposition-status"])
        for item in body["lock-tokens"].elements:
            token = uuid.UUID(str(item)).hex
            entry = self.unsettled.pop(token, None)
            if entry is not None:
                entry[1].tokens.discard(token)
                entry[0].settle()
            if status == "completed":
                self.store.complete(token, now)
            elif status == "suspended":
                reason = str(body.get("deadletter-reason", ""))
                description = str(body.get("deadletter-description", ""))
                self.store.dead_letter(token, reason, description, now)
            else:
                self.store.abandon(token, now)
        self.pump()

    def _renew_session(self, queue: str, body: dict) -> float:
        session_id = str(body["session-id"])
        key = (queue, session_id)
        lock = self.session_locks.get(key)
        now = time.time()
        if lock is None or lock[1] <= now:
            raise LockLostError(f"the lock on session {session_id} was lost")
        out = lock[0]
        until = now + self.store.queue(queue).options.lock_duration
        self.session_locks[key] = (out, until)
        for token in list(out.tokens):
            try:
                self.store.renew(token, now)
            except LockLostError:
                out.tokens.discard(token)
        return until

    # -- administration API (HTTPS, servicebus_standin_admin) -----------------------------
    def _serve_admin(self, sock: socket.socket, peer: Any) -> None:
        serve_https(self, sock, *self.tls)

    def _soon(self, work: Any) -> None:
        """Run ``work()`` on the reactor thread, without waiting for it."""
        self.injector.trigger(ApplicationEvent("admin_job", subject=work))

    def _in_reactor(self, work: Any) -> Any:
        """Run ``work()`` on the reactor thread (the store is not shared) and return its
        result; called from an administration connection's thread."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["result"] = work()
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

        self._soon(job)
        if not done.wait(30):
            raise TimeoutError("the reactor did not run the administration request")
        if "error" in box:
            raise box["error"]
        return box["result"]

    @guarded
    def on_admin_job(self, event):
        event.subject()  # work handed over by another thread (_soon)

    def check_admin_token(self, token: str, audience: str) -> bool:
        """The Authorization header of an administration request: a SAS token, signed
        by the SDK with the key or given in the connection string (sent as ``Bearer``)."""
        return check_sas(token.removeprefix("Bearer "), self.key_name, self.key, audience)

    def _entity(self, name: str) -> QueueEntity | None:
        if not self.store.has_queue(name) or name.lower().endswith(DEAD_LETTER_SUFFIX):
            return None
        options = self.store.queue(name).options
        waiting, leased = self.store.counts(name)
        return QueueEntity(
            name,
            lock_duration=options.lock_duration,
            max_delivery_count=options.max_delivery_count,
            requires_session=self.requires_session.get(name, False),
            active=waiting + leased,  # the service counts locked messages as active
            dead_letter=self.store.depth(name + DEAD_LETTER_SUFFIX),
        )

    def admin_get(self, name: str) -> QueueEntity | None:
        return self._in_reactor(lambda: self._entity(name))

    def admin_list(self) -> list[QueueEntity]:
        return self._in_reactor(
            lambda: [q for q in map(self._entity, sorted(self.store.queue_names())) if q]
        )

    def admin_put(
        self, name: str, fields: dict[str, str], *, update: bool
    ) -> tuple[int, QueueEntity | None]:
        """Create (201; 409 if it exists) or update (200; 404 if missing) ``name``."""

        def put() -> tuple[int, QueueEntity | None]:
            existing = self._entity(name)
            if (existing is None) == update:
                return (404 if update else 409), None
            defaults = QueueOptions()
            settings = settings_of(fields, defaults.lock_duration, defaults.max_delivery_count)
            options = QueueOptions(settings["lock_duration"], settings["max_delivery_count"])
            if existing is None:
                self.declare(name, options, requires_session=settings["requires_session"])
                return 201, self._entity(name)
            if existing.requires_session != settings["requires_session"]:
                return 400, None  # the service cannot switch sessions on a queue
            self.store.queue(name).options = options
            return 200, self._entity(name)

        return self._in_reactor(put)


def run_in_thread(standin: ServiceBusStandIn) -> tuple[Container, threading.Thread]:
    """Start the stand-in in a daemon thread (benchmarks); returns once it listens.
    This process then trusts its administration API's certificate."""
    trust_certificate(standin.tls[0])
    container = Container(standin)
    thread = threading.Thread(target=container.run, name="servicebus-standin", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while standin.acceptor is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return container, thread


def standin_command(port: int, *extra_args: str) -> list[str]:
    """The command line of a stand-in process on ``port``.

    Its administration API's certificate is made here, and this process and those it
    starts trust it (``REQUESTS_CA_BUNDLE``), so that their administration clients reach it.
    """
    cert, key = tls_files()
    trust_certificate(cert)
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--port", str(port), "--tls-cert", cert, "--tls-key", key,
            *extra_args]  # fmt: skip


class StandInProcess:
    """The stand-in as a child process on a free loopback port (test fixtures use this);
    see ``standin_command`` for the certificate."""

    def __init__(self, *extra_args: str, port: int = 0, start_timeout: float = 30.0) -> None:
        if port == 0:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        self.port = port
        cmd = standin_command(port, *extra_args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = ""
        end = time.monotonic() + start_timeout
        try:
            while not line and time.monotonic() < end and self.proc.poll() is None:
                if select.select([self.proc.stdout], [], [], 0.2)[0]:
                    line = self.proc.stdout.readline().strip()
            if not line.startswith("Endpoint="):
                raise RuntimeError(f"the Service Bus stand-in did not start (got {line!r})")
        except BaseException:
            self.stop()
            raise
        self.connection_string = line

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """Ask the process for its counters (SIGUSR1; it answers with a ``STATS {json}`` line)."""
        self.proc.send_signal(signal.SIGUSR1)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line = self.proc.stdout.readline()
                if line.startswith("STATS "):
                    return json.loads(line[len("STATS ") :])
        raise TimeoutError("the stand-in did not report its counters")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; reaps the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: print the connection string, then serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--key-name", default=DEFAULT_KEY_NAME)
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--queue", action="append", default=[], help="queue to create at start")
    parser.add_argument("--tls-cert", help="administration API certificate (PEM; default: made)")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # proton logs every peer that hangs up without closing
        logging.getLogger("proton").setLevel(logging.CRITICAL)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else tls_files()
    if not args.tls_cert:  # made here: say how a client trusts it (stdout is for the string)
        bundle = trust_certificate(tls[0])
        print(f"administration API: export REQUESTS_CA_BUNDLE={bundle}", file=sys.stderr)
    standin = ServiceBusStandIn(
        args.host,
        args.port,
        key_name=args.key_name,
        key=args.key,
        queues=tuple(args.queue),
        tls=tls,
    )
    standin.on_ready = lambda: print(
        connection_string(args.port, args.key_name, args.key), flush=True
    )

    def stop(signum, frame):
        # Raising here is lost when the signal lands in one of proton's cffi callbacks
        # ("Exception ignored from cffi callback"): the stand-in then served on until
        # SIGKILL. The flag is seen by the next tick, 50 ms at most.
        standin.stop_requested = True

    def dump_stats(signum, frame):
        print("STATS " + json.dumps(standin.snapshot()), flush=True)

    signal.signal(signal.SIGUSR1, dump_stats)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    Container(standin).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
