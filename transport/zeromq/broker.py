"""The ZeroMQ broker: one ROUTER socket and an event loop around ``QueueStore``.

In the spirit of the ZeroMQ guide's reliable request-reply patterns:

* **credit-based flow control**: nothing is pushed; a consumer's ``RECEIVE`` asks
  for up to N messages and waits at the broker (long poll) until some arrive or
  its timeout ends;
* **heartbeats both ways**: clients send ``HEARTBEAT`` requests and the broker
  answers them (with its epoch, so clients notice a restart); any request counts
  as a sign of life, and a client silent for ``liveness`` heartbeat intervals has
  its leases released at once and its waiting receives dropped;
* **hostile input** is decoded by ``wire.decode_request`` only and answered with
  an error; frames above the size limit are cut by ``ZMQ_MAXMSGSIZE``;
* **busy-polling**: after handling requests the loop keeps polling the socket for
  ``spin`` seconds (300 µs by default: longer than a no-op task's trip from the
  broker to a task worker and back) before it goes to sleep, so a request that
  follows soon, like the next step of a round trip, is picked up without waking
  the loop's thread, which on a virtual machine costs tens of microseconds. It
  costs up to ``spin`` of CPU after each burst of traffic and nothing while idle;
  it is off on a single CPU, where polling would only keep the sender from running.

The loop is single-threaded and owns the store; ``stop()`` may be called from any
thread or a signal handler.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import zmq

from ..base import DEFAULT_MAX_MESSAGE_SIZE, QueueOptions
from ..errors import (
    LockLostError,
    PermissionDeniedError,
    QueueNotFoundError,
    QueueSettingsConflict,
)
from ..store import Grant, QueueStore
from . import authz, wire

if TYPE_CHECKING:  # imported by the CLI only when durable mode or CURVE is asked for
    from .curve import BrokerCurve
    from .journal import SqliteJournal

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "DEFAULT_HEARTBEAT_LIVENESS", "DEFAULT_SPIN", "Broker"]

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 1.0
DEFAULT_HEARTBEAT_LIVENESS = 3
#: Length of the client id at the start of a client socket's routing id (lease owner).
OWNER_ID_LENGTH = 16
_MAX_POLL = 0.2  # seconds; bounds the reaction time to stop()
_RECV_BATCH = 512
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)  # requests handled per wake-up before timers run again
_PURGE_INTERVAL = 1.0  # seconds between sweeps of expired messages nobody receives
#: Seconds the loop keeps polling for the next request before sleeping (see above).
DEFAULT_SPIN = 300e-6


#: The caller of a request whose key has no role (cannot happen: ZAP lets in only known keys).
_NOBODY = authz.Caller("nobody", "", prefix="")  # a role with no rights at all


def _callers(curve: BrokerCurve | None) -> dict[str, authz.Caller] | None:
    """Authenticated key -> caller, when ``curve`` has authorized keys with roles."""
    if curve is None or curve.roles is None:
        return None
    return {key: authz.Caller(role, key) for key, role in curve.roles.items()}


class _Waiter:
    """A long-polling RECEIVE parked at the broker."""

    __slots__ = (
        "deadline", "done", "group", "identity", "lost", "max_messages", "owner", "queue", "rid",
    )  # fmt: skip

    def __init__(
        self,
        identity: bytes,
        owner: bytes,
        rid: int,
        queue: str,
        group: str | None,
        max_messages: int,
        deadline: float | None,
        lost: list[int] | None = None,
    ) -> None:
        self.identity = identity
        self.lost = lost  # a SETTLE_RECEIVE's lost leases, answered with its grants
        self.owner = owner
        self.rid = rid
        self.queue = queue
        self.group = group
        self.max_messages = max_messages
        self.deadline = deadline
        self.done = False


class Broker:
    """A ZeroMQ ROUTER broker serving the ``zmq://`` transport.

    Args:
        bind: endpoint to bind, e.g. ``tcp://127.0.0.1:5555`` (port 0 picks a free port).
        max_message_size: largest accepted message body in bytes.
        heartbeat_interval: default client heartbeat interval in seconds (clients
            announce their own in each heartbeat).
        heartbeat_liveness: missed heartbeats after which a client counts as gone.
        store: the queue store (a fresh in-memory one by default).
        journal: makes the broker durable: the store reports to it, it is restored
            from it now, and it is committed before any request is acknowledged.
        curve: CURVE keys and authorized clients (plain TCP when ``None``).
        context: ZeroMQ context (the process-wide instance by default).
        spin: seconds to keep polling for requests after handling some, before
            sleeping (0: never; ignored when the process may use a single CPU).
        queue_kinds: which queues are mailboxes and control queues (``authz``); roles
            are enforced when ``curve`` has authorized keys.
    """

    def __init__(
        self,
        bind: str,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_liveness: int = DEFAULT_HEARTBEAT_LIVENESS,
        store: QueueStore | None = None,
        journal: SqliteJournal | None = None,
        curve: BrokerCurve | None = None,
        context: zmq.Context | None = None,
        spin: float = DEFAULT_SPIN,
        queue_kinds: authz.QueueKinds | None = None,
    ) -> None:
        if spin < 0:
            raise ValueError("spin must be at least 0")
        self.max_message_size = max_message_size
        self.spin = spin if len(os.sched_getaffinity(0)) > 1 else 0.0
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.journal = journal
        if store is None:
            store = QueueStore(listener=journal)
        self.store = store
        self.restored = journal.restore(store) if journal is not None else 0
        self.epoch = uuid.uuid4().hex
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # ZeroMQ drops a connection that sends a larger frame; smaller oversize bodies
        # get a clear error reply from decode_request.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_size + wire.MAX_META_SIZE)
        self.curve = curve
        self.queue_kinds = queue_kinds or authz.QueueKinds()
        #: authenticated key -> its caller record; None: no roles, everything allowed
        self._callers = _callers(curve)
        self._caller: authz.Caller | None = None  # the identity of the request being handled
        if curve is not None:
            curve.apply(self._context, self._socket)
        self._socket.bind(bind)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stopping = False
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._last_seen: dict[bytes, float] = {}
        self._owner_interval: dict[bytes, float] = {}
        self._next_owner_check = 0.0
        self._next_purge = 0.0
        self.requests_handled = 0
        self.bad_requests = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to exit (safe from other threads and signal handlers)."""
        self._stopping = True

    def close(self) -> None:
        """Close the socket and the journal (after ``run`` returned)."""
        self._socket.close(linger=0)
        if self.curve is not None:
            self.curve.stop()
        if self.journal is not None:
            self.journal.close()

    def run(self) -> None:
        """Serve until ``stop()``."""
        logger.info("broker %s listening on %s", self.epoch[:8], self.endpoint)
        sock = self._socket
        recv = self._recv_authenticated if self._callers is not None else None
        recv = recv or functools.partial(wire.recv_frames, sock)
        handle = self._handle
        events = functools.partial(zmq.backend.Socket.get, sock)
        clock = time.perf_counter
        spin = self.spin
        busy = False  # the last turn handled requests: poll a little before sleeping
        current_timeout = -2
        while not self._stopping:
            # A blocking recv with RCVTIMEO is one C call; Socket.poll builds a Poller.
            try:
                timeout = max(1, int(self._timers(time.time()) * 1000))
            except Exception:
                logger.exception("unexpected error in the broker timers; serving on")
                timeout = int(_MAX_POLL * 1000)
            if timeout != current_timeout:
                sock.setsockopt(zmq.RCVTIMEO, timeout)
                current_timeout = timeout
            try:
                if busy and spin:
                    # A request found here needs no wake-up; none found: recv sleeps.
                    give_up = clock() + spin
                    while not events(_EVENTS) & _POLLIN and clock() < give_up:
                        pass
                handle(recv())
                busy = True
                # Drain what is queued; EVENTS is cheaper than a zmq.Again per wake-up.
                for _ in range(_RECV_BATCH):
                    if not events(_EVENTS) & _POLLIN:
                        break
                    handle(recv(_NOBLOCK))
            except zmq.Again:
                busy = False
            except zmq.ContextTerminated:
                break
            except Exception:  # a bug must not take the broker down with it
                logger.exception("unexpected error in the broker loop; serving on")
        logger.info("broker %s stopped", self.epoch[:8])

    def _recv_authenticated(self, flags: int = 0) -> list[bytes]:
        """Receive a request and set ``_caller`` to the identity of its CURVE key."""
        frames, user = wire.recv_frames_with_user(self._socket, flags)
        assert self._callers is not None
        self._caller = self._callers.get(user or "", _NOBODY)
        return frames

    # -- timers --------------------------------------------------------------------------------
    def _timers(self, now: float) -> float:
        """Run due timers; return seconds until the next one (capped)."""
        store = self.store
        next_lease = store.expire(now)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if not waiter.done:
                self._drop_waiter(waiter)
                self._send_grants(waiter.identity, waiter.rid, [], now, waiter.lost)
        if now >= self._next_owner_check:
            self._check_owners(now)
            self._next_owner_check = now + self.heartbeat_interval / 2
        if now >= self._next_purge:  # e.g. the mailbox of a client that died
            purged = store.purge_expired(now)
            if purged:
                logger.debug("dropped %d expired message(s)", purged)
            self._next_purge = now + _PURGE_INTERVAL
        if store.ready:
            self._serve_ready(now)
        if self.journal is not None:
            self.journal.flush()
        wake = self._next_owner_check
        if next_lease is not None:
            wake = min(wake, next_lease)
        if deadlines:
            wake = min(wake, deadlines[0][0])
        return max(0.0, min(wake - now, _MAX_POLL))

    def _check_owners(self, now: float) -> None:
        default, liveness = self.heartbeat_interval, self.heartbeat_liveness
        intervals = self._owner_interval
        gone = [
            owner
            for owner, seen in self._last_seen.items()
            if now - seen > liveness * intervals.get(owner, default)
        ]
        for owner in gone:
            self._forget_owner(owner)
            released = self.store.release_owner(owner, now)
            if released:
                logger.info("client %s went silent: released %d lease(s)", owner.hex(), released)

    def _forget_owner(self, owner: bytes) -> None:
        self._last_seen.pop(owner, None)
        self._owner_interval.pop(owner, None)
        for name, waiters in list(self._waiting.items()):
            kept = deque(w for w in waiters if w.owner != owner)
            for waiter in waiters:
                if waiter.owner == owner:
                    waiter.done = True
            if kept:
                self._waiting[name] = kept
            else:
                del self._waiting[name]

    # -- requests ------------------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.bad_requests += 1
            return
        identity = frames[0]
        owner = identity[:OWNER_ID_LENGTH]
        now = time.time()
        self._last_seen[owner] = now
        try:
            request = wire.decode_request(frames[1:], self.max_message_size)
        except wire.FrameError as exc:
            self.bad_requests += 1
            logger.debug("bad request from %s: %s", identity.hex(), exc)
            self._reply(identity, wire.encode_error(exc.request_id, exc.status, str(exc)))
            return
        except Exception as exc:  # e.g. a property value attrs refuses
            self.bad_requests += 1
            self._reply(identity, wire.encode_error(0, wire.ERR_BAD_REQUEST, repr(exc)[:200]))
            return
        self.requests_handled += 1
        rid = request.request_id
        try:
            reply = self._dispatch(request, identity, owner, now)
        except QueueNotFoundError as exc:
            reply = wire.encode_error(rid, wire.ERR_QUEUE_NOT_FOUND, str(exc))
        except LockLostError as exc:
            reply = wire.encode_error(rid, wire.ERR_LOCK_LOST, str(exc))
        except PermissionDeniedError as exc:
            logger.info("refused %s from %s: %s", wire.COMMAND_NAMES.get(request.command),
                        identity.hex(), exc)  # fmt: skip
            reply = wire.encode_error(rid, wire.ERR_PERMISSION_DENIED, str(exc))
        except QueueSettingsConflict as exc:
            reply = wire.encode_error(rid, wire.ERR_SETTINGS_CONFLICT, str(exc))
        except Exception as exc:
            logger.exception("internal error on %s", wire.COMMAND_NAMES.get(request.command))
            reply = wire.encode_error(rid, wire.ERR_INTERNAL, repr(exc)[:200])
        if self.journal is not None:
            self.journal.flush()  # durable before acknowledged
        if self.store.ready:  # serve parked consumers first: they are on the critical path
            self._serve_ready(now)
        if reply is not None:
            self._reply(identity, reply)

    def _dispatch(self, request: wire.Request, identity: bytes, owner: bytes, now: float) -> Any:
        command, rid, args = request.command, request.request_id, request.args
        store = self.store
        if self._caller is not None:  # CURVE with roles: the one permission check
            authz.authorize(self._caller, request, store, self.queue_kinds)
        if command == wire.SEND:
            store.put(args[0], request.messages, now)
            return wire.encode_reply(rid)
        if command == wire.RECEIVE:
            return self._receive(identity, owner, rid, args, now)
        if command == wire.COMPLETE:
            store.complete(args[0], now)
            return wire.encode_reply(rid)
        if command == wire.ABANDON:
            store.abandon(args[0], now)
            return wire.encode_reply(rid)
        if command == wire.GIVE_BACK:
            store.give_back(args[0], now)
            return wire.encode_reply(rid)
        if command == wire.RENEW:
            return wire.encode_reply(rid, store.renew(args[0], now))
        if command == wire.DEAD_LETTER:
            store.dead_letter(args[0], args[1], args[2], now)
            return wire.encode_reply(rid)
        if command == wire.HEARTBEAT:
            interval = min(max(float(args[0]), 0.01), 3600.0)
            self._owner_interval[owner] = interval
            return wire.encode_reply(rid, self.epoch, self.max_message_size)
        if command == wire.DECLARE:
            name, lock_duration, max_delivery_count = args
            if (lock_duration is not None and lock_duration <= 0) or (
                max_delivery_count is not None and max_delivery_count < 1
            ):
                raise QueueNotFoundError(f"bad settings for queue {name!r}")
            options = QueueOptions.given(lock_duration, max_delivery_count)
            created = store.declare(name, options)  # QueueSettingsConflict: other settings
            if created and self.journal is not None:
                self.journal.on_declare(name, store.queue(name).options)
            return wire.encode_reply(rid, created)
        if command == wire.COMPLETE_MANY:
            return wire.encode_reply(rid, self._complete_many(args, now))
        if command == wire.SEND_COMPLETE:
            store.put(args[0], request.messages, now)  # raises before completing anything
            return wire.encode_reply(rid, self._complete_many(args[2], now))
        if command == wire.SETTLE_RECEIVE:
            store.queue(args[3])  # an unknown queue raises here, before anything is done
            store.put(args[0], request.messages, now)  # raises before completing anything
            lost = self._complete_many(args[2], now)
            if self.journal is not None:
                self.journal.flush()  # the reply acknowledges the send
            if store.ready:  # the results first: their receivers wait on the critical path
                self._serve_ready(now)
            return self._receive(identity, owner, rid, args[3:], now, lost)
        if command == wire.RELEASE:
            for token in args:
                try:
                    store.abandon(token, now)
                except LockLostError:
                    pass
            return None
        if command == wire.BYE:
            self._forget_owner(owner)
            return None
        raise AssertionError(f"unhandled command {command}")  # decode_request prevents this

    def _complete_many(self, tokens: list[str], now: float) -> list[int]:
        """Complete each lease; return the indexes of those already lost."""
        lost = []
        for index, token in enumerate(tokens):
            try:
                self.store.complete(token, now)
            except LockLostError:
                lost.append(index)
        return lost

    def _receive(
        self,
        identity: bytes,
        owner: bytes,
        rid: int,
        args: list[Any],
        now: float,
        lost: list[int] | None = None,
    ) -> bytes | None:
        queue, max_messages, timeout, group = args
        max_messages = max(1, max_messages)
        grants = self.store.take(
            queue, max_messages=max_messages, now=now, group=group, owner=owner
        )
        if grants or timeout == 0:
            self._send_grants(identity, rid, grants, now, lost)
            return None
        deadline = None if timeout is None else now + max(0.0, timeout)
        waiter = _Waiter(identity, owner, rid, queue, group, max_messages, deadline, lost)
        self._waiting.setdefault(queue, deque()).append(waiter)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), waiter))
        return None

    def _serve_ready(self, now: float) -> None:
        store = self.store
        ready = store.ready
        while ready:
            name = ready.pop()
            waiters = self._waiting.get(name)
            if not waiters:
                continue
            while waiters:
                waiter = waiters[0]
                grants = store.take(
                    name,
                    max_messages=waiter.max_messages,
                    now=now,
                    group=waiter.group,
                    owner=waiter.owner,
                )
                if not grants:
                    break
                waiters.popleft()
                waiter.done = True
                self._send_grants(waiter.identity, waiter.rid, grants, now, waiter.lost)
            if waiters and store.depth(name):
                # Messages left that the head waiter's group does not match: try the others.
                for waiter in list(waiters):
                    grants = store.take(
                        name,
                        max_messages=waiter.max_messages,
                        now=now,
                        group=waiter.group,
                        owner=waiter.owner,
                    )
                    if grants:
                        waiters.remove(waiter)
                        waiter.done = True
                        self._send_grants(waiter.identity, waiter.rid, grants, now, waiter.lost)
            if not waiters:
                self._waiting.pop(name, None)

    def _drop_waiter(self, waiter: _Waiter) -> None:
        waiter.done = True
        waiters = self._waiting.get(waiter.queue)
        if waiters is not None:
            try:
                waiters.remove(waiter)
            except ValueError:
                pass
            if not waiters:
                del self._waiting[waiter.queue]

    # -- replies -------------------------------------------------------------------------------
    def _send_grants(
        self,
        identity: bytes,
        rid: int,
        grants: list[Grant],
        now: float,
        lost: list[int] | None = None,
    ) -> None:
        header = wire.encode_reply(rid, len(grants), *(() if lost is None else (lost,)))
        frames = [identity, header]
        encode = wire.encode_delivery
        for grant in grants:
            frames.append(
                encode(grant.message, grant.delivery_count, grant.locked_until, grant.token)
            )
            frames.append(grant.message.body)
        if not self._send(frames):
            for grant in grants:  # the consumer is gone: make the messages available again
                try:
                    self.store.abandon(grant.token, now)
                except LockLostError:
                    pass

    def _reply(self, identity: bytes, header: bytes) -> None:
        self._send([identity, header])

    def _send(self, frames: list[Any]) -> bool:
        try:
            wire.send_frames(self._socket, frames, _NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError) as exc:  # peer gone or its queue full
            logger.debug("reply to %s dropped: %s", bytes(frames[0]).hex(), exc)
            return False
