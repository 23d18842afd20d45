"""``zmq://HOST:PORT``: the client transport of the ZeroMQ broker.

Each call runs on a DEALER socket taken from a small pool (one per concurrently
calling thread), sends one request and waits for its reply on the calling thread:
no hand-off to an I/O thread, so a round trip costs two socket hops. Requests
carry ids; replies with a stale id are dropped (and any leases they carry
released). A heartbeat thread pings the broker when ``HeartbeatSchedule`` says the
traffic alone does not show either side alive (at least every ``REFRESH_BEATS``
intervals); its replies carry the broker's epoch, so a restarted broker is noticed: requests in
flight are re-sent on fresh sockets and the queues this client declared are
declared again. zmq exceptions become ``TransportError``s in ``_map_zmq_error``,
broker error replies in ``wire.error_for``.

A send re-sent after a broker restart may have reached the new broker already
(at-least-once, like the rest of the task path: consumers drop duplicates by id).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import zmq

from ..base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Capabilities,
    Delivery,
    Message,
    QueueCounts,
    QueueOptions,
    Transport,
    as_message_list,
    check_max_messages,
)
from ..errors import (
    ConnectionLostError,
    LockLostError,
    MessageTooLargeError,
    QueueFullError,
    TransportClosedError,
    TransportError,
    TransportTimeoutError,
)
from . import wire
from .authz import mailbox_prefix
from .curve import apply_client_keys, load_public_key, load_secret_key
from .heartbeat import HeartbeatSchedule

if TYPE_CHECKING:
    from ..stats import TransportStats

__all__ = ["ZmqTransport", "broker_endpoint"]

logger = logging.getLogger(__name__)


def broker_endpoint(url: str) -> str:
    """Map ``zmq://HOST:PORT`` to the ZeroMQ endpoint ``tcp://HOST:PORT``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "zmq" or not parts.hostname or parts.port is None:
        raise ValueError(f"expected zmq://HOST:PORT, got {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{parts.port}"


def _map_zmq_error(exc: zmq.ZMQError, closed: bool) -> TransportError:
    """The one place where ZeroMQ exceptions become ``TransportError``s."""
    if closed or isinstance(exc, zmq.ContextTerminated) or exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
        return TransportClosedError("the transport was closed")
    if isinstance(exc, zmq.Again):  # only sends raise it: no connection could take the request
        return ConnectionLostError(f"no usable connection to the broker: {exc}")
    return ConnectionLostError(f"ZeroMQ error talking to the broker: {exc}")


class _Lost(Exception):
    """The broker restarted while a request was in flight: send it again."""


class _Conn:
    """A pooled DEALER socket; replaced in place when the broker restarts."""

    __slots__ = ("sock",)

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock


class ZmqTransport(Transport):
    """Client of the ZeroMQ broker (``rtbatch broker``).

    Args:
        url: ``zmq://HOST:PORT`` of the broker.
        max_message_size: largest body ``send`` accepts (the broker's own limit, learnt
            from its heartbeat replies, applies too).
        heartbeat_interval: seconds between heartbeats; the broker releases this
            client's leases after ``heartbeat_liveness`` missed ones.
        heartbeat_liveness: missed heartbeats after which either side counts the
            other as gone.
        request_timeout: seconds to wait for a reply (beyond a receive's own timeout)
            before raising ``ConnectionLostError`` or ``TransportTimeoutError``.
        curve_server_key: the broker's CURVE public key (Z85 text or its ``.key``
            file); turns on CURVE encryption.
        curve_secret_key: this client's ``.key_secret`` file (its public key must be
            in the broker's authorized keys); a throw-away pair is used when omitted.
        send_timeout: seconds a send refused for lack of room (a queue at its
            ``max_length``, the broker at a limit) keeps being retried, with backoff,
            before ``QueueFullError`` is raised (``request_timeout`` when omitted; 0
            raises at once).
    """

    def __init__(
        self,
        url: str = "zmq://127.0.0.1:5555",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        request_timeout: float = 30.0,
        curve_server_key: str | bytes | Path | None = None,
        curve_secret_key: str | Path | None = None,
        send_timeout: float | None = None,
        **_options: Any,
    ) -> None:
        self.url = url
        self.endpoint = broker_endpoint(url)
        self._own_limit = max_message_size
        self.max_message_size = max_message_size
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.request_timeout = request_timeout
        self.send_timeout = request_timeout if send_timeout is None else send_timeout
        # The broker is a process beside the pool: silent for twice the time after which
        # the heartbeats call it silent, it is gone (a restart is back within a second).
        self.capabilities = Capabilities(
            settles_by_token=True,  # the broker knows a lease by its token, not its client
            settle_and_receive=True,
            give_back=True,
            gone_after=2.0 * heartbeat_interval * heartbeat_liveness,
            wake=True,
        )
        self.client_id = b"\x01" + os.urandom(15)  # lease owner at the broker; never 0-led
        self._server_key = None if curve_server_key is None else load_public_key(curve_server_key)
        self._keypair = load_secret_key(curve_secret_key) if curve_secret_key is not None else None
        if self._keypair is not None:
            self.mailbox_prefix = mailbox_prefix(self._keypair[0])
        if self._server_key is not None and self._keypair is None:
            self._keypair = zmq.curve_keypair()
        self._context = zmq.Context()
        self._socket_numbers = itertools.count()
        self._request_ids = itertools.count(1)
        self._pool_lock = threading.Lock()
        self._idle: list[_Conn] = []
        self._closed = False
        self._declared: dict[str, tuple[float | None, int | None, int | None]] = {}
        self.epoch: str | None = None
        self._generation = 0
        self._wakes = 0  # ``wake`` calls so far
        self._schedule = HeartbeatSchedule(heartbeat_interval)
        self._stop_endpoint = f"inproc://heartbeat-stop-{id(self):x}"
        self._engine_report: dict[str, Any] | None = None  # sent with each heartbeat
        self._idle.append(_Conn(self._new_socket()))
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"zmq-heartbeat-{self.endpoint}", daemon=True
        )
        self._heartbeat_thread.start()

    def __repr__(self) -> str:
        return f"ZmqTransport({self.url!r})"

    # -- sockets ----------------------------------------------------------------------------
    def _new_socket(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Replies are awaited with a blocking recv in slices of one heartbeat interval.
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(self.heartbeat_interval * 1000)))
        # A send blocks only while no connection can take it (e.g. refused handshake).
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.request_timeout * 1000)))
        sock.setsockopt(
            zmq.ROUTING_ID, self.client_id + next(self._socket_numbers).to_bytes(4, "big")
        )
        if self._server_key is not None:
            apply_client_keys(sock, self._server_key, self._keypair)
        sock.connect(self.endpoint)
        return sock

    def _acquire(self) -> _Conn:
        with self._pool_lock:
            if self._closed:
                raise TransportClosedError(f"{self!r} is closed")
            if self._idle:
                return self._idle.pop()
        try:
            return _Conn(self._new_socket())
        except zmq.ZMQError as exc:
            raise _map_zmq_error(exc, self._closed) from None

    def _release(self, conn: _Conn) -> None:
        with self._pool_lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.sock.close(linger=0)

    # -- request / reply --------------------------------------------------------------------
    def _call(
        self,
        command: int,
        args: list[Any],
        payload: Sequence[Any] = (),
        *,
        wait: float | None = None,
        queue: str | None = None,
        wakes: int | None = None,
    ) -> tuple[list[Any], list[bytes]]:
        """Send one request and return its reply ``(header, payload)``; raise broker errors.

        ``wait`` is how long the broker may legitimately hold the request (a receive's
        timeout; ``None`` for no limit), on top of which ``request_timeout`` applies.
        ``wakes``: the ``wake`` count a receive began with, if not now (see ``_attempt``).
        """
        conn = self._acquire()
        try:
            header, frames = self._exchange(conn, command, args, payload, wait, wakes)
            if header[1] == wire.ERR_QUEUE_NOT_FOUND and queue in self._declared:
                # The broker restarted and forgot a queue we declared: declare, retry once.
                self._redeclare(conn, queue)
                header, frames = self._exchange(conn, command, args, payload, wait, wakes)
        except zmq.ZMQError as exc:
            conn.sock.close(linger=0)
            raise _map_zmq_error(exc, self._closed) from None
        except BaseException:
            conn.sock.close(linger=0)
            raise
        self._release(conn)
        if header[1] != wire.OK:
            raise wire.error_for(header[1], str(header[2]) if len(header) > 2 else "")
        return header, frames

    def _exchange(
        self,
        conn: _Conn,
        command: int,
        args: list[Any],
        payload: Sequence[Any],
        wait: float | None,
        wakes: int | None = None,
    ) -> tuple[list[Any], list[bytes]]:
        start = time.monotonic()
        receives = command == wire.RECEIVE or command == wire.SETTLE_RECEIVE
        give_up = None if wait is None and receives else start + (wait or 0.0)
        while True:
            try:
                return self._attempt(conn.sock, command, args, payload, give_up, wakes)
            except _Lost:
                logger.info("broker restarted; re-sending %s", wire.COMMAND_NAMES[command])
                conn.sock.close(linger=0)  # drops the copy still queued for the new broker
                conn.sock = self._new_socket()
                if command == wire.RECEIVE and give_up is not None:
                    args = [*args[:2], max(0.0, give_up - time.monotonic()), args[3]]

    def _attempt(
        self,
        sock: zmq.Socket,
        command: int,
        args: list[Any],
        payload: Sequence[Any],
        give_up: float | None,
        wakes_seen: int | None = None,
    ) -> tuple[list[Any], list[bytes]]:
        rid = next(self._request_ids)
        generation = self._generation
        # a ``wake`` after ``wakes_seen`` (or, without it, after this send) ends the receive
        wakes = self._wakes if wakes_seen is None else wakes_seen
        wire.send_frames(sock, [wire.encode_request(command, rid, *args), *payload])
        schedule = self._schedule
        now = time.monotonic()
        schedule.request_sent(now)
        silence_limit = self.heartbeat_interval * self.heartbeat_liveness
        # A long receive parks at the broker, which takes it as this client's sign of
        # life: no heartbeat is needed meanwhile (``HeartbeatSchedule.parked``).
        parked = (command == wire.RECEIVE or command == wire.SETTLE_RECEIVE) and (
            give_up is not None and give_up - now >= self.heartbeat_interval
        )
        if not parked:
            return self._await_reply(sock, command, rid, generation, give_up, silence_limit)
        with self._pool_lock:
            schedule.parked += 1
        try:
            return self._await_reply(sock, command, rid, generation, give_up, silence_limit, wakes)
        finally:
            with self._pool_lock:
                schedule.parked -= 1

    def _await_reply(
        self,
        sock: zmq.Socket,
        command: int,
        rid: int,
        generation: int,
        give_up: float | None,
        silence_limit: float,
        wakes: int | None = None,
    ) -> tuple[list[Any], list[bytes]]:
        """Wait for the reply to request ``rid``; ``wakes``: ``wake`` count when a long
        receive was sent (a ``wake`` that raced with it is repeated on its socket)."""
        schedule = self._schedule
        while True:
            try:
                frames = wire.recv_frames(sock)
            except zmq.Again:  # one RCVTIMEO slice without an answer
                pass
            else:
                schedule.reply_received(time.monotonic())
                header = wire.decode_reply_header(frames[0])
                if header[0] == rid:
                    return header, frames[1:]
                self._drop_stale(sock, header, frames[1:])
                continue
            if self._generation != generation:
                raise _Lost
            if wakes is not None and wakes != self._wakes:  # sent after the wake got there
                wakes = self._wakes
                sock.send(wire.encode_request(wire.WAKE, 0), zmq.NOBLOCK)
            now = time.monotonic()
            silent = schedule.silent_for(now)
            what = f"{wire.COMMAND_NAMES[command]} to the broker at {self.endpoint}"
            if give_up is None:  # a receive without timeout: only a dead broker ends it
                if silent > self.request_timeout:
                    raise ConnectionLostError(f"broker silent for {silent:.1f} s during {what}")
                continue
            overdue = now - give_up
            # a long receive hears nothing for seconds: only the heartbeats tell
            if silent > silence_limit and (wakes is not None or overdue > silence_limit):
                raise ConnectionLostError(f"broker silent for {silent:.1f} s during {what}")
            if overdue > self.request_timeout:
                raise TransportTimeoutError(f"no reply in {self.request_timeout} s to {what}")

    def _drop_stale(self, sock: zmq.Socket, header: list[Any], frames: list[bytes]) -> None:
        """A reply to a request we gave up on: release any leases it grants."""
        if header[1] != wire.OK or not frames:
            return
        try:
            tokens = [token for _m, _c, _l, token in wire.decode_deliveries(frames)]
        except Exception:  # a stale reply we cannot read is only dropped
            return
        sock.send(wire.encode_request(wire.RELEASE, 0, *tokens))

    def _redeclare(self, conn: _Conn, queue: str) -> None:
        args = [queue, *self._declared[queue]]
        self._exchange(conn, wire.DECLARE, args, (), None)

    # -- heartbeats -------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        try:
            self._heartbeats()
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                logger.exception("heartbeat thread stopped")

    def _heartbeats(self) -> None:
        interval = self.heartbeat_interval
        schedule = self._schedule
        sock = self._new_socket()
        # A dropped connection (a broker killed or restarted) calls for a heartbeat now:
        # while receives are parked no other heartbeat would be due.
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        stop = self._context.socket(zmq.PAIR)
        stop.bind(self._stop_endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            next_beat = reconnected = time.monotonic()
            limit = interval * self.heartbeat_liveness
            while True:
                now = time.monotonic()
                if now >= next_beat:
                    if schedule.silent_for(now) > limit and now - reconnected > limit:
                        # Lazy Pirate: a fresh connection defeats half-open ones.
                        poller.unregister(sock)
                        poller.unregister(monitor)
                        sock.disable_monitor()
                        monitor.close(linger=0)
                        sock.close(linger=0)
                        sock = self._new_socket()
                        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                        poller.register(sock, zmq.POLLIN)
                        poller.register(monitor, zmq.POLLIN)
                        reconnected = now  # the fresh connection gets its chance
                    report = self._engine_report
                    if schedule.due(now, report):
                        beat = (interval,) if report is None else (interval, report)
                        try:  # never block: with no usable connection the beat is just lost
                            sock.send(wire.encode_request(wire.HEARTBEAT, 0, *beat), zmq.NOBLOCK)
                        except zmq.Again:
                            pass
                        schedule.beat_sent(now, report)
                    next_beat = schedule.next_check(now)
                events = dict(poller.poll(max(1, int((next_beat - now) * 1000))))
                if stop in events:
                    # The last word: the broker drops our parked receives, and no
                    # heartbeat follows that would make it track us again.
                    sock.send(wire.encode_request(wire.BYE, 0), zmq.NOBLOCK)
                    sock.close(linger=500)
                    return
                if monitor in events:
                    monitor.recv_multipart()
                    schedule.probe = True
                    next_beat = time.monotonic()
                if sock in events:
                    frames = sock.recv_multipart()
                    schedule.reply_received(time.monotonic())
                    try:
                        self._on_heartbeat_reply(sock, wire.decode_reply_header(frames[0]))
                    except (ValueError, TypeError, IndexError) as exc:
                        logger.warning("unreadable heartbeat reply: %s", exc)
        finally:
            monitor.close(linger=0)
            sock.close(linger=0)
            stop.close(linger=0)

    def _on_heartbeat_reply(self, sock: zmq.Socket, header: list[Any]) -> None:
        if header[1] != wire.OK or len(header) < 4:
            return  # e.g. the answer to a re-declaration
        epoch, limit = header[2], header[3]
        self.max_message_size = min(self._own_limit, int(limit))
        if epoch == self.epoch:
            return
        if self.epoch is not None:
            logger.warning(
                "broker at %s restarted; declaring %d queue(s) again",
                self.endpoint,
                len(self._declared),
            )
            for name, settings in list(self._declared.items()):
                header = wire.encode_request(wire.DECLARE, 0, name, *settings)
                sock.send(header, zmq.NOBLOCK)  # it just answered: the pipe has room
            self._generation += 1  # requests in flight went to the old broker: re-send
        # The first epoch learnt is no restart: a request in flight when it arrives was
        # taken by this very broker, and re-sending it would send it twice.
        self.epoch = epoch

    # -- Transport API ----------------------------------------------------------------------
    def declare_queue(
        self,
        name: str,
        *,
        lock_duration: float | None = None,
        max_delivery_count: int | None = None,
        grouped: bool = False,
        max_length: int | None = None,
    ) -> None:
        options = QueueOptions.given(lock_duration, max_delivery_count, max_length)
        settings = (None, None, None) if options is None else attrs.astuple(options)
        self._call(wire.DECLARE, [name, *settings])
        self._declared.setdefault(name, settings)

    def _payload(self, batch: list[Message]) -> list[Any]:
        limit = self.max_message_size
        payload: list[Any] = []
        for message in batch:
            if len(message.body) > limit:
                raise MessageTooLargeError(len(message.body), limit)
            payload.extend(wire.encode_message(message))
        return payload

    def send(self, queue: str, messages: Message | Iterable[Message]) -> None:
        batch = as_message_list(messages)
        self._call_sending(wire.SEND, [queue, len(batch)], self._payload(batch), queue=queue)

    def _call_sending(self, *args: Any, **kwargs: Any) -> tuple[list[Any], list[bytes]]:
        """``_call`` a request that sends messages: while the broker refuses it for lack
        of room, retry with backoff for ``send_timeout`` seconds, then raise
        ``QueueFullError`` (flow control; nothing of a refused request was stored)."""
        try:
            return self._call(*args, **kwargs)
        except QueueFullError as exc:
            if self.send_timeout <= 0:
                raise
            logger.info("%s; waiting up to %s s for room", exc, self.send_timeout)
        import tenacity  # here: only a full queue waits, and an engine starts without it

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(QueueFullError),
            stop=tenacity.stop_after_delay(self.send_timeout),
            wait=tenacity.wait_exponential(multiplier=0.005, max=0.5),
            reraise=True,
        )
        return retrying(self._call, *args, **kwargs)

    def send_and_complete(
        self, queue: str, messages: Message | Iterable[Message], deliveries: Iterable[Delivery]
    ) -> None:
        """Send and complete in one round trip (see ``Transport.send_and_complete``)."""
        batch = as_message_list(messages)
        settled = list(deliveries)
        header, _frames = self._call_sending(
            wire.SEND_COMPLETE,
            [queue, len(batch), [d.lock_token for d in settled]],
            self._payload(batch),
            queue=queue,
        )
        _raise_lost(header[2], settled)

    def settle_and_receive(
        self,
        queue: str,
        messages: Message | Iterable[Message],
        deliveries: Iterable[Delivery],
        receive_queue: str,
        *,
        max_messages: int = 1,
        timeout: float | None = None,
        group: str | None = None,
    ) -> tuple[list[Delivery], list[int]]:
        """``send_and_complete``, then ``receive(receive_queue, group=group)``, in one
        round trip.

        A task worker's results, the leases of their tasks and its next receive; or a
        session's completions (no message) and its next receive. The broker answers
        when the receive would. Returns the deliveries received and the indexes of
        ``deliveries`` whose lease was already lost (those were not completed; the
        messages were sent all the same).
        """
        check_max_messages(max_messages)
        batch = as_message_list(messages)
        settled = list(deliveries)
        wait = None if timeout is None else max(0.0, float(timeout))
        wakes, start = self._wakes, time.monotonic()
        header, frames = self._call_sending(
            wire.SETTLE_RECEIVE,
            [queue, len(batch), [d.lock_token for d in settled], receive_queue, max_messages,
             wait, group],
            self._payload(batch),
            wait=wait,
            queue=queue,
        )  # fmt: skip
        lost = list(header[3]) if len(header) > 3 else []
        if not frames and wait is not None:
            try:  # settled already: the rest is a plain receive
                frames = self._wait_rest(receive_queue, max_messages, group, start + wait, wakes)
            except TransportError as exc:  # answered as the broker would have: empty
                logger.debug("the rest of a receive after a settle failed: %s", exc)
        return _deliveries(receive_queue, frames), lost

    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 1,
        timeout: float | None = None,
        group: str | None = None,
    ) -> list[Delivery]:
        check_max_messages(max_messages)
        wait = None if timeout is None else max(0.0, float(timeout))
        wakes, start = self._wakes, time.monotonic()
        _header, frames = self._call(
            wire.RECEIVE, [queue, max_messages, wait, group], wait=wait, queue=queue
        )
        if not frames and wait is not None:
            frames = self._wait_rest(queue, max_messages, group, start + wait, wakes)
        return _deliveries(queue, frames)

    def _wait_rest(
        self, queue: str, max_messages: int, group: str | None, give_up: float, wakes: int
    ) -> list[bytes]:
        """The rest of a receive's wait, when the broker answered it empty before
        ``give_up`` and no ``wake`` came since: the broker ends a long wait of a client
        that holds leases early (``Broker.leased_wait``), and this client sends it again
        (a sign of life), so that ``receive`` still returns empty only at its timeout."""
        frames: list[bytes] = []
        while not frames and wakes == self._wakes:
            left = give_up - time.monotonic()
            if left <= 0:
                break
            _header, frames = self._call(
                wire.RECEIVE, [queue, max_messages, left, group], wait=left, queue=queue,
                wakes=wakes,
            )  # fmt: skip
        return frames

    def complete(self, delivery: Delivery) -> None:
        self._call(wire.COMPLETE, [delivery.lock_token])

    def complete_many(self, deliveries: Iterable[Delivery]) -> None:
        """Complete several deliveries in one round trip (see ``Transport.complete_many``)."""
        batch = list(deliveries)
        if not batch:
            return
        header, _frames = self._call(wire.COMPLETE_MANY, [d.lock_token for d in batch])
        _raise_lost(header[2], batch)

    def abandon(self, delivery: Delivery) -> None:
        self._call(wire.ABANDON, [delivery.lock_token])

    def give_back(self, delivery: Delivery) -> None:
        self._call(wire.GIVE_BACK, [delivery.lock_token])

    def queue_counts(self, queue: str) -> QueueCounts:
        header, _ = self._call(wire.QUEUE_COUNTS, [queue], queue=queue)
        return QueueCounts(int(header[2]), int(header[3]))

    def dead_letter(self, delivery: Delivery, reason: str, description: str = "") -> None:
        self._call(wire.DEAD_LETTER, [delivery.lock_token, str(reason), str(description)])

    def renew_lock(self, delivery: Delivery) -> float:
        header, _frames = self._call(wire.RENEW, [delivery.lock_token])
        delivery.locked_until = float(header[2])
        return delivery.locked_until

    def wake(self) -> None:
        """End this client's receives waiting at the broker now (they return empty):
        a ``WAKE`` request, which the broker does not answer."""
        with self._pool_lock:
            self._wakes += 1
        try:
            conn = self._acquire()
        except TransportClosedError:
            return
        try:
            conn.sock.send(wire.encode_request(wire.WAKE, 0), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("wake not sent: %s", exc)
        self._release(conn)

    def report_engine(self, report: Mapping[str, Any]) -> None:
        """Keep ``report`` (merged into the last one: an engine and its outbox each report
        their part); the heartbeat thread sends it with each heartbeat."""
        self._engine_report = {**(self._engine_report or {}), **report}

    def stats(self) -> TransportStats:
        """Ask the broker (a ``STATS`` request) for its queues, engines and mailboxes."""
        from ..stats import TransportStats  # here: an engine never asks (#21)

        header, _frames = self._call(wire.STATS, [])
        return TransportStats.from_dict({**header[2], "url": self.url})

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.sock.close(linger=0)
        try:
            stop = self._context.socket(zmq.PAIR)
            stop.connect(self._stop_endpoint)
            stop.send(b"", zmq.NOBLOCK)
            stop.close(linger=1000)
        except zmq.ZMQError:
            pass
        self._heartbeat_thread.join(5)
        # Wakes every thread blocked on one of our sockets with ETERM (-> closed).
        self._context.term()


def _deliveries(queue: str, frames: list[bytes]) -> list[Delivery]:
    """The deliveries of a receive reply's payload."""
    return [
        Delivery(message, queue, count, locked_until, token)
        for message, count, locked_until, token in wire.decode_deliveries(frames)
    ]


def _raise_lost(lost: list[int], batch: list[Delivery]) -> None:
    if lost:
        raise LockLostError(
            f"the lock was lost for {len(lost)} of {len(batch)} deliveries "
            f"(first: message {batch[lost[0]].message.id})"
        )
