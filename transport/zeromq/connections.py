"""A cap on the broker's client connections, below its open-file limit.

ZeroMQ accepts every TCP connection a listener is offered; once the process runs
out of file descriptors its I/O thread spins on failing ``accept`` calls and no new
client gets in. ``ConnectionGuard`` follows the ROUTER socket's accepted and closed
connections through a ZeroMQ socket monitor and, when there are more than
``max_connections``, shuts down the ones that have been silent longest (the kernel's
``TCP_INFO`` says when each last received data; where it cannot, the oldest), so
file descriptors stay free and a fresh client is answered. A client whose
connection is closed this way reconnects on its own (ZeroMQ does), and its leases
follow the usual heartbeat rule.

Only ``shutdown`` is called on a connection's descriptor, never ``close``: ZeroMQ
owns it, sees the connection end, and closes it itself.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
import struct

import zmq

__all__ = ["FD_RESERVE", "ConnectionGuard", "default_max_connections", "raise_fd_limit"]

logger = logging.getLogger(__name__)

#: File descriptors kept for everything but client connections (listener, ZeroMQ's
#: internal sockets, the journal, logging, imports).
FD_RESERVE = 64
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_ACCEPT_FAILED
_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux
_LAST_DATA_RECV = struct.Struct("=I")  # tcp_info.tcpi_last_data_recv (ms), at offset 52
_LAST_DATA_RECV_OFFSET = 52
_EVENT_FRAME = struct.Struct("=HI")  # a monitor event's first frame: event id, value
_WARN_EVERY = 10.0  # seconds between repeated warnings
_EVENTS_PER_CHECK = 4096  # monitor events read by one ``check`` at most
# ``check`` runs every 10 ms of a busy broker loop (every turn near the cap): with plain
# ints ``get(EVENTS) & POLLIN`` skips pyzmq's enum arithmetic (a ``check`` with nothing
# to read: 6.6 -> 4.6 µs)
_EVENTS_OPTION = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard one (as far as 65,536), if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def default_max_connections() -> int:
    """Client connections the process's open-file limit leaves room for."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65_536
    return max(8, soft - FD_RESERVE)


def _silence_ms(fd: int) -> int | None:
    """Milliseconds since the connection on ``fd`` last received data (``None``: unknown)."""
    if _TCP_INFO is None:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
        return _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_OFFSET)[0]
    except (OSError, struct.error):
        return None
    finally:
        sock.detach()  # the descriptor stays ZeroMQ's


def _shut_down(fd: int) -> None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # already closed, or not a socket any more
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


class ConnectionGuard:
    """Keep the connections accepted by ``sock`` at or below ``max_connections``.

    Args:
        sock: the broker's bound ROUTER socket.
        max_connections: connections allowed at once; past it the most silent are
            closed until an eighth of the room is free again.
    """

    def __init__(self, sock: zmq.Socket, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self._low_water = max_connections - max(1, max_connections // 8)
        self._monitor = sock.get_monitor_socket(_EVENTS)
        self._socket = sock
        self._accepted: dict[int, float] = {}  # descriptor -> when accepted
        #: Near the cap or failing to accept: the owner should call ``check`` often.
        self.under_pressure = False
        # A deeper accept queue: while surplus connections are being closed, a new
        # client waits in it instead of having its SYN dropped (retried after 1, 3, 7 s).
        sock.setsockopt(zmq.BACKLOG, 1024)
        self.closed_count = 0
        self._next_warning = 0.0

    @property
    def connections(self) -> int:
        """Connections open now (as far as the monitor has told)."""
        return len(self._accepted)

    def check(self, now: float) -> None:
        """Take the monitor's news; close the most silent connections if over the cap."""
        monitor = self._monitor
        accept_failed = False
        # Bounded: out of descriptors, ZeroMQ's I/O thread retries accept in a tight loop,
        # one ACCEPT_FAILED event each, as fast as they are read here; an unbounded drain
        # never got to close anything (the broker stayed locked out, seen on one kernel).
        for _ in range(_EVENTS_PER_CHECK):
            if not monitor.get(_EVENTS_OPTION) & _POLLIN:
                break
            # zmq.utils.monitor would decode this too, but it imports asyncio (+6 MB RSS)
            kind, value = _EVENT_FRAME.unpack_from(monitor.recv_multipart(zmq.NOBLOCK)[0])
            if kind == zmq.EVENT_ACCEPTED:
                self._accepted[value] = now
            elif kind in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self._accepted.pop(value, None)
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                accept_failed = True
        if len(self._accepted) > self.max_connections:
            self._close_most_silent(len(self._accepted) - self._low_water, now)
        elif accept_failed:
            self._warn(now, "cannot accept connections (out of file descriptors?)")
        self.under_pressure = accept_failed or len(self._accepted) >= self._low_water

    def _close_most_silent(self, count: int, now: float) -> None:
        def silence(item: tuple[int, float]) -> tuple[int, float]:
            fd, accepted = item
            measured = _silence_ms(fd)
            return (-1 if measured is None else measured, now - accepted)

        victims = sorted(self._accepted.items(), key=silence, reverse=True)[:count]
        for fd, _accepted in victims:
            _shut_down(fd)
            del self._accepted[fd]  # its DISCONNECTED event follows; nothing to count twice
        self.closed_count += len(victims)
        self._warn(
            now,
            f"connection cap of {self.max_connections} reached: closed {len(victims)} "
            f"silent connection(s) ({self.closed_count} so far; --max-connections)",
        )

    def _warn(self, now: float, text: str) -> None:
        if now >= self._next_warning:
            logger.warning(text)
            self._next_warning = now + _WARN_EVERY

    def close(self) -> None:
        """Stop monitoring."""
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disable_monitor()
        self._monitor.close(linger=0)
