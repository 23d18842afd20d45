"""The ZeroMQ broker: one ROUTER socket and an event loop around ``QueueStore``.

In the spirit of the ZeroMQ guide's reliable request-reply patterns:

* **credit-based flow control**: nothing is pushed; a consumer's ``RECEIVE`` asks
  for up to N messages and waits at the broker (long poll) until some arrive or
  its timeout ends;
* **fair shares**: a receive on a shared queue gets at most its share of what waits,
  ``ceil(waiting / consumers)`` (``fairshare.py``), so long tasks spread evenly;
* **timers on a tick**: waits of parked receives end on multiples of ``timer_tick``
  (half a second for waits of a second or more), so the receives of many idle
  engines are answered (and come back) together;
* **heartbeats both ways**: clients send ``HEARTBEAT`` requests and the broker
  answers them (with its epoch, so clients notice a restart); any request counts
  as a sign of life, and so does a receive parked here with a timeout: a client
  with one needs no heartbeat. When the parked receive is answered the client has ``liveness``
  heartbeat intervals to send its next request (a killed client's answer cannot be
  delivered and earns it nothing); a client silent for that long with nothing
  parked has its leases released at once and its waiting receives dropped.
  An idle client's receive may wait long (an idle engine's: ``IDLE_WAIT``), but one
  of a client that holds leases waits ``leased_wait`` at most (5 s by default; its
  client sends it again for the rest of its wait): a killed or silent lease holder
  loses its leases within ``leased_wait`` plus the liveness time, whatever it asked.
  ``WAKE`` answers a client's parked receives at once (an engine that stops ends
  its long idle receives);
* **hostile input** is decoded by ``wire.decode_request`` only and answered with
  an error; frames above the size limit are cut by ``ZMQ_MAXMSGSIZE``;
* **busy-polling**: after handling requests that moved messages (stored, delivered
  or settled some) the loop keeps polling the socket for ``spin`` seconds (300 µs
  by default: longer than a no-op task's trip from the broker to a task worker and
  back) before it goes to sleep, so a request that
  follows soon, like the next step of a round trip, is picked up without waking
  the loop's thread, which on a virtual machine costs tens of microseconds. It
  costs up to ``spin`` of CPU after each burst of traffic and nothing while idle
  (heartbeats and receives that find nothing do not start it: with hundreds of idle
  engines those would keep the loop spinning); it is off on a single CPU, where
  polling would only keep the sender from running. It also needs someone answered in
  that turn who usually speaks again within the spin after such an answer
  (``spin.ReplyGaps``): a worker handed a 10 ms task, or a client whose send was
  acknowledged, is not waited for.

The loop is single-threaded and owns the store; ``stop()`` may be called from any
thread or a signal handler.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

import zmq

from ..base import DEFAULT_MAX_MESSAGE_SIZE, QueueOptions
from ..errors import (
    LockLostError,
    PermissionDeniedError,
    QueueFullError,
    QueueNotFoundError,
    QueueSettingsConflict,
)
from ..stats import EngineTable, TransportStats
from ..store import Grant, QueueStore
from . import authz, wire
from .connections import ConnectionGuard, default_max_connections
from .fairshare import FairShare
from .parking import Parking, Waiter
from .spin import ReplyGaps

if TYPE_CHECKING:  # imported by the CLI only when durable mode or CURVE is asked for
    from .curve import BrokerCurve
    from .journal import SqliteJournal

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_LIVENESS",
    "DEFAULT_LEASED_WAIT",
    "DEFAULT_MAX_PARKED_RECEIVES",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_MAX_QUEUES",
    "DEFAULT_SPIN",
    "DEFAULT_TIMER_TICK",
    "Broker",
]

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
_PRESSURE_POLL = 0.005  # seconds between connection checks while near the cap
#: seconds between connection checks otherwise: reading the monitor costs ~5 µs, too
#: much for every turn of a busy loop (a round trip is several turns), and counting a
#: new connection 10 ms late changes nothing
_GUARD_INTERVAL = 0.01
_PURGE_INTERVAL = 1.0  # seconds between sweeps of expired messages nobody receives
_STATS_INTERVAL = 1.0  # seconds between the snapshots kept in ``last_stats``
#: Seconds the loop keeps polling for the next request before sleeping (see above).
DEFAULT_SPIN = 300e-6
#: Seconds on whose multiples parked receives are answered when their wait ends: the
#: receives of many idle engines end (and come back) together, in one wake-up of the loop
#: instead of one each; a receive's empty answer is at most this late.
DEFAULT_TIMER_TICK = 0.025
#: Waits this long (an idle engine's) end on multiples of ``_LONG_WAIT_TICK`` instead: the
#: receives of hundreds of idle engines are answered in two wake-ups a second, not 40.
_LONG_WAIT = 1.0
_LONG_WAIT_TICK = 0.5
#: Seconds a receive parked by a client that holds leases waits at most (a longer wait
#: is answered empty then, and the client sends it again): a parked receive counts as
#: its client's life, and a lease holder that is killed or stopped must lose its leases
#: within this plus the heartbeat liveness time, as it did when idle waits were 5 s.
DEFAULT_LEASED_WAIT = 5.0
#: Commands that settle leases: like stored or delivered messages, they start the spin.
_SETTLING = frozenset(
    {wire.COMPLETE, wire.COMPLETE_MANY, wire.ABANDON, wire.GIVE_BACK, wire.DEAD_LETTER}
)
#: Receives one client may have waiting at the broker at once (a session or engine
#: needs a handful; each costs broker memory and a timer).
DEFAULT_MAX_PARKED_RECEIVES = 1000
#: Bytes of messages the broker holds before it refuses sends (``QueueStore.max_bytes``).
DEFAULT_MAX_QUEUED_BYTES = 1024**3
#: Queues that may be declared (dead-letter queues not counted).
DEFAULT_MAX_QUEUES = 10_000


def _on_long_tick(deadline: float) -> float:
    """``deadline`` put off to the next ``_LONG_WAIT_TICK``."""
    return math.ceil(deadline / _LONG_WAIT_TICK) * _LONG_WAIT_TICK


#: The caller of a request whose key has no role (cannot happen: ZAP lets in only known keys).
_NOBODY = authz.Caller("nobody", "", prefix="")  # a role with no rights at all


def _callers(curve: BrokerCurve | None) -> dict[str, authz.Caller] | None:
    """Authenticated key -> caller, when ``curve`` has authorized keys with roles."""
    if curve is None or curve.roles is None:
        return None
    return {key: authz.Caller(role, key) for key, role in curve.roles.items()}


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
        max_parked_receives: receives one client (lease owner) may have waiting at
            once; one more is refused with an error (``None``: no limit).
        max_queued_bytes: bytes of messages held (bodies plus a per-message
            overhead) past which a send gets ``QueueFullError`` (``None``: no limit).
        max_queues: queues that may be declared; one more gets ``QueueFullError``.
        max_connections: client connections kept at once; past it the most silent
            are closed (default: the open-file limit less ``FD_RESERVE``).
        queue_kinds: which queues are mailboxes and control queues (``authz``); roles
            are enforced when ``curve`` has authorized keys.
        timer_tick: seconds on whose multiples waits of parked receives end (see
            ``DEFAULT_TIMER_TICK``).
        leased_wait: seconds a receive parked by a client that holds leases waits at
            most (see ``DEFAULT_LEASED_WAIT``).
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
        max_parked_receives: int | None = DEFAULT_MAX_PARKED_RECEIVES,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        max_queues: int | None = DEFAULT_MAX_QUEUES,
        max_connections: int | None = None,
        queue_kinds: authz.QueueKinds | None = None,
        timer_tick: float = DEFAULT_TIMER_TICK,
        leased_wait: float = DEFAULT_LEASED_WAIT,
    ) -> None:
        if spin < 0:
            raise ValueError("spin must be at least 0")
        if timer_tick <= 0:
            raise ValueError("timer_tick must be positive")
        if leased_wait <= 0:
            raise ValueError("leased_wait must be positive")
        self.leased_wait = leased_wait
        self.max_message_size = max_message_size
        self.spin = spin if len(os.sched_getaffinity(0)) > 1 else 0.0
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.timer_tick = timer_tick
        self.journal = journal
        if store is None:
            store = QueueStore(listener=journal)
        self.store = store
        self.restored = journal.restore(store) if journal is not None else 0
        # Set after the restore: what the journal held is never refused.
        store.max_bytes = max_queued_bytes
        store.max_queues = max_queues
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
        if max_connections is None:
            max_connections = default_max_connections()
        self._guard = ConnectionGuard(self._socket, max_connections)
        self._socket.bind(bind)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stopping = False
        self.max_parked_receives = max_parked_receives
        self._parking = Parking(max_parked_receives)
        #: who consumes each queue, and the share of it one receive may take
        self._fair = FairShare(waiting=self._parking.waits_on)
        self._last_seen: dict[bytes, float] = {}
        self._owner_interval: dict[bytes, float] = {}
        self._next_owner_check = 0.0
        self._next_purge = 0.0
        self._next_guard = 0.0
        self.requests_handled = 0
        self._moved = False  # this turn stored, delivered or settled messages: spin after it
        #: how soon each connection speaks after an answer; this turn answered a quick one
        self._gaps = ReplyGaps(self.spin, OWNER_ID_LENGTH)
        self._quick = False
        self.bad_requests = 0
        self.started = time.time()
        #: engines that reported themselves on their heartbeats (``stats``)
        self.engines = EngineTable()
        #: take ``stats()`` once a second into ``last_stats`` for other threads (metrics);
        #: off by default: it walks every queue, lease and group
        self.keep_stats = False
        self.last_stats: TransportStats | None = None
        self._next_stats = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to exit (safe from other threads and signal handlers)."""
        self._stopping = True

    def close(self) -> None:
        """Close the socket and the journal (after ``run`` returned)."""
        self._guard.close()
        self._socket.close(linger=0)
        if self.curve is not None:
            self.curve.stop()
        if self.journal is not None:
            self.journal.close()

    def run(self) -> None:
        """Serve until ``stop()``."""
        logger.info(
            "broker %s listening on %s (at most %d connections)",
            self.epoch[:8],
            self.endpoint,
            self._guard.max_connections,
        )
        sock = self._socket
        recv = self._recv_authenticated if self._callers is not None else None
        recv = recv or functools.partial(wire.recv_request, sock)
        handle = self._handle
        events = functools.partial(zmq.backend.Socket.get, sock)
        clock = time.perf_counter
        spin = self.spin
        busy = False  # the last turn moved messages: poll a little before sleeping
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
                self._moved = self._quick = False
                handle(recv())
                # Drain what is queued; EVENTS is cheaper than a zmq.Again per wake-up.
                for _ in range(_RECV_BATCH):
                    if not events(_EVENTS) & _POLLIN:
                        break
                    handle(recv(_NOBLOCK))
                busy = self._moved and self._quick
            except zmq.Again:
                busy = False
            except zmq.ContextTerminated:
                break
            except Exception:  # a bug must not take the broker down with it
                logger.exception("unexpected error in the broker loop; serving on")
        logger.info("broker %s stopped", self.epoch[:8])

    def stats(self, now: float | None = None) -> TransportStats:
        """The store's queues and mailboxes, the engines that reported, and the loop's
        counters (call on the loop's thread; other threads read ``last_stats``)."""
        now = time.time() if now is None else now
        self.engines.heard_from(self._last_seen)  # idle engines send no report while parked
        queues, mailboxes = self.store.queue_stats()
        return TransportStats(
            transport="zmq",
            url=self.endpoint,
            queues=queues,
            engines=self.engines.stats(now),
            mailboxes=mailboxes,
            uptime=now - self.started,
            connections=len(self._last_seen),
            requests=self.requests_handled,
            bad_requests=self.bad_requests,
            taken_at=now,
        )

    def _recv_authenticated(self, flags: int = 0) -> list[Any]:
        """Receive a request and set ``_caller`` to the identity of its CURVE key."""
        frames, user = wire.recv_frames_with_user(self._socket, flags)
        assert self._callers is not None
        self._caller = self._callers.get(user or "", _NOBODY)
        return frames

    # -- timers --------------------------------------------------------------------------------
    def _timers(self, now: float) -> float:
        """Run due timers; return seconds until the next one (capped)."""
        store = self.store
        if now >= self._next_guard or self._guard.under_pressure:
            self._guard.check(now)
            self._next_guard = now + _GUARD_INTERVAL
        next_lease = store.expire(now)
        tick = self.timer_tick
        for waiter in self._parking.expire(math.floor(now / tick) * tick):
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
        if self.keep_stats and now >= self._next_stats:  # for the metrics endpoint's thread
            self.last_stats = self.stats(now)
            self._next_stats = now + _STATS_INTERVAL
        wake = self._next_owner_check
        if next_lease is not None:
            wake = min(wake, next_lease)
        next_deadline = self._parking.next_deadline()
        if next_deadline is not None:  # on the tick: receives due together are answered together
            wake = min(wake, math.ceil(next_deadline / tick) * tick)
        if self._guard.under_pressure:  # close surplus connections before fds run out
            wake = min(wake, now + _PRESSURE_POLL)
        return max(0.0, min(wake - now, _MAX_POLL))

    def _check_owners(self, now: float) -> None:
        default, liveness = self.heartbeat_interval, self.heartbeat_liveness
        intervals = self._owner_interval
        parked = self._parking.waits_with_timeout
        gone = [
            owner
            for owner, seen in self._last_seen.items()
            if now - seen > liveness * intervals.get(owner, default) and not parked(owner)
        ]
        for owner in gone:
            self._forget_owner(owner)
            released = self.store.release_owner(owner, now)
            if released:
                logger.info("client %s went silent: released %d lease(s)", owner.hex(), released)

    def _forget_owner(self, owner: bytes, engine_state: str = "gone") -> None:
        self.engines.owner_gone(owner, engine_state)
        self._last_seen.pop(owner, None)
        self._owner_interval.pop(owner, None)
        self._parking.forget(owner)
        self._fair.forget(owner)
        self._gaps.forget(owner)

    # -- requests ------------------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.bad_requests += 1
            return
        identity = frames[0]
        owner = identity[:OWNER_ID_LENGTH]
        now = time.time()
        self._last_seen[owner] = now
        self._gaps.spoke(identity, now)
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
        if request.messages or request.command in _SETTLING:
            self._moved = True
        try:
            reply = self._dispatch(request, identity, owner, now)
        except QueueNotFoundError as exc:
            reply = wire.encode_error(rid, wire.ERR_QUEUE_NOT_FOUND, str(exc))
        except LockLostError as exc:
            reply = wire.encode_error(rid, wire.ERR_LOCK_LOST, str(exc))
        except QueueFullError as exc:
            reply = wire.encode_error(rid, wire.ERR_QUEUE_FULL, str(exc))
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
        if command == wire.QUEUE_COUNTS:
            return wire.encode_reply(rid, *store.counts(args[0]))
        if command == wire.RENEW:
            return wire.encode_reply(rid, store.renew(args[0], now))
        if command == wire.DEAD_LETTER:
            store.dead_letter(args[0], args[1], args[2], now)
            return wire.encode_reply(rid)
        if command == wire.HEARTBEAT:
            interval = min(max(float(args[0]), 0.01), 3600.0)
            self._owner_interval[owner] = interval
            if len(args) > 1 and authz.accepts_engine_report(self._caller):
                self.engines.update(args[1], now, owner)
            return wire.encode_reply(rid, self.epoch, self.max_message_size)
        if command == wire.STATS:  # admin-only with CURVE roles (authz)
            return wire.encode_reply(rid, self.stats(now).to_dict())
        if command == wire.DECLARE:
            name, lock_duration, max_delivery_count, max_length = args
            if (
                (lock_duration is not None and lock_duration <= 0)
                or (max_delivery_count is not None and max_delivery_count < 1)
                or max_length == 0
            ):
                raise QueueNotFoundError(f"bad settings for queue {name!r}")
            options = QueueOptions.given(lock_duration, max_delivery_count, max_length)
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
        if command == wire.RELEASE:  # grants whose receive gave up: never seen, not charged
            for token in args:
                try:
                    store.give_back(token, now)
                except LockLostError:
                    pass
            return None
        if command == wire.BYE:
            self._forget_owner(owner, "stopped")
            return None
        if command == wire.WAKE:
            for waiter in self._parking.take_owner(owner):
                self._send_grants(waiter.identity, waiter.rid, [], now, waiter.lost)
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
            queue, max_messages=self._share(queue, group, owner, max_messages, now), now=now,
            group=group, owner=owner,
        )  # fmt: skip
        if grants or timeout == 0:
            self._send_grants(identity, rid, grants, now, lost)
            return None
        parking = self._parking
        if parking.full(owner):
            if lost is not None:  # the send and completes are done: answer them, no wait
                self._send_grants(identity, rid, [], now, lost)
                return None
            return wire.encode_error(
                rid,
                wire.ERR_BAD_REQUEST,
                f"too many parked receives: this client has {self.max_parked_receives} "
                "waiting already (the broker's --max-parked-receives)",
            )
        deadline = None if timeout is None else now + max(0.0, timeout)
        if deadline is not None and timeout >= _LONG_WAIT:  # an idle client's: coarse tick
            if timeout > self.leased_wait and self.store.holds_leases(owner):
                deadline = now + self.leased_wait  # its life must show again soon
            deadline = _on_long_tick(deadline)
        parking.park(Waiter(identity, owner, rid, queue, group, max_messages, deadline, lost))
        return None

    def _serve_ready(self, now: float) -> None:
        ready = self.store.ready
        serve = self._serve_group
        while ready:
            name, group = ready.pop()
            if group is not None:  # its own mailbox's receives first, then any-group ones
                serve(name, group, now)
            serve(name, None, now)

    def _serve_group(self, name: str, group: str | None, now: float) -> None:
        """Serve the receives parked on ``(name, group)`` while messages last."""
        parking, take = self._parking, self.store.take
        while (waiter := parking.first(name, group)) is not None:
            share = self._share(name, group, waiter.owner, waiter.max_messages, now)
            grants = take(name, max_messages=share, now=now, group=group, owner=waiter.owner)
            if not grants:
                break
            parking.served(waiter)
            self._send_grants(waiter.identity, waiter.rid, grants, now, waiter.lost)

    def _share(self, queue: str, group: str | None, owner: bytes, asked: int, now: float) -> int:
        """Messages one receive may take: a fair share of a shared queue (``FairShare``);
        a mailbox's receives (``group``) take what they ask for."""
        if group is not None:
            return asked
        return self._fair.limit(queue, owner, asked, self.store.queue(queue).size, now)

    # -- replies -------------------------------------------------------------------------------
    def _send_grants(
        self,
        identity: bytes,
        rid: int,
        grants: list[Grant],
        now: float,
        lost: list[int] | None = None,
    ) -> None:
        if grants:
            self._moved = True
        header = wire.encode_reply(rid, len(grants), *(() if lost is None else (lost,)))
        frames = [identity, header]
        encode = wire.encode_delivery
        for grant in grants:
            frames.append(
                encode(grant.message, grant.delivery_count, grant.locked_until, grant.token)
            )
            frames.append(grant.message.body)
        if self._send(frames, bool(grants)):
            owner = identity[:OWNER_ID_LENGTH]
            if owner in self._last_seen:  # it had a receive parked: alive until just now
                self._last_seen[owner] = now
            if grants:  # a lease holder now: its other long waits end soon (``_receive``)
                self._parking.shorten(owner, _on_long_tick(now + self.leased_wait))
            return
        for grant in grants:  # the consumer is gone: make the messages available again
            try:
                self.store.abandon(grant.token, now)
            except LockLostError:
                pass

    def _reply(self, identity: bytes, header: bytes) -> None:
        self._send([identity, header])

    def _send(self, frames: list[Any], delivered: bool = False) -> bool:
        try:
            wire.send_frames(self._socket, frames, _NOBLOCK)
        except (zmq.Again, zmq.ZMQError) as exc:  # peer gone or its queue full
            logger.debug("reply to %s dropped: %s", bytes(frames[0]).hex(), exc)
            return False
        if self.spin and self._gaps.answered(frames[0], time.time(), delivered):
            self._quick = True  # (no spin, e.g. on one CPU: nothing to estimate)
        return True
