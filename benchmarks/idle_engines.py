"""Many simulated idle engines against one broker: the broker's CPU while they idle.

    python -m benchmarks.idle_engines [--engines 32,256] [--window 10] [--rounds 1]

An idle engine costs the broker what it sends: each engine process and its task
worker have a connection of their own (``ZmqTransport``), each with a heartbeat
socket and a request socket. On the request socket the engine keeps a receive
parked on its control queue and the worker one on the task queue, each waiting
``IDLE_WAIT`` at the broker and sent again as soon as it is answered; on the
heartbeat socket each sends what ``HeartbeatSchedule`` (the client's own rule)
says is due, which is nothing past the first beat while a receive is parked. The
simulator does exactly that with raw DEALER sockets in one thread, so hundreds of
engines cost a few processes' worth of Python, not hundreds.

Each count is measured both ways, alternately, against the same broker build:
``before`` is what an idle engine did before (half-second receives, heartbeats when
the link is quiet for an interval), ``after`` what it does now.

The broker runs in its own process (``python -m realtime_batch.transport.zeromq``);
its CPU is read over a window (100 = one core). The machine is shared and noisy:
compare figures of one run.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import zmq

from benchmarks.procs import Child
from realtime_batch.engine._supervise import IDLE_WAIT, SHORT_IDLE_WAIT
from realtime_batch.transport.zeromq import wire
from realtime_batch.transport.zeromq.heartbeat import REFRESH_BEATS, HeartbeatSchedule

__all__ = ["IdleEngines", "broker_process", "idle_broker_cpu", "main"]

log = logging.getLogger(__name__)

#: the queues an idle engine's receives wait on (task queue; control queue, grouped)
TASK_QUEUE = "tasks"
CONTROL_QUEUE = "control"
HEARTBEAT_INTERVAL = 1.0
#: how an idle engine behaves on the wire: (receive wait, parked receives count as life)
MODES = {"before": (SHORT_IDLE_WAIT, False), "after": (IDLE_WAIT, True)}


class _Client:
    """One simulated ``ZmqTransport``: a heartbeat socket and a request socket."""

    __slots__ = ("beat", "engine_id", "report", "requests", "schedule", "sent", "wait")

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        engine_id: str,
        report: bool,
        wait: float,
        refresh_beats: int,
        parks: bool,
    ) -> None:
        self.wait = wait
        client_id = b"\x01" + os.urandom(15)
        self.engine_id = engine_id
        self.report = (
            {"id": engine_id, "state": "idle", "task": None, "done": 0} if report else None
        )
        self.requests = self._socket(context, endpoint, client_id + b"\0\0\0\0")
        self.beat = self._socket(context, endpoint, client_id + b"\0\0\0\1")
        self.schedule = HeartbeatSchedule(HEARTBEAT_INTERVAL, refresh_beats)
        # a receive is always parked (the next goes as soon as one is answered), and a
        # long one counts as this client's sign of life (``ZmqTransport._attempt``)
        self.schedule.parked = int(parks and wait >= HEARTBEAT_INTERVAL)
        self.sent = 0

    @staticmethod
    def _socket(context: zmq.Context, endpoint: str, routing_id: bytes) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(endpoint)
        return sock

    def send_receive(self, now: float, wait: float | None = None) -> None:
        wait = self.wait if wait is None else wait
        if self.report is not None:  # the engine: its control queue, in its own group
            args: list[Any] = [CONTROL_QUEUE, 64, wait, self.engine_id]
        else:  # the task worker: the task queue, room for a prefetch of 16
            args = [TASK_QUEUE, 16, wait, None]
        self.sent += 1
        self.requests.send(wire.encode_request(wire.RECEIVE, self.sent, *args))
        self.schedule.request_sent(now)

    def heartbeat(self, now: float) -> None:
        beat = (HEARTBEAT_INTERVAL,) if self.report is None else (HEARTBEAT_INTERVAL, self.report)
        self.beat.send(wire.encode_request(wire.HEARTBEAT, 0, *beat), zmq.NOBLOCK)
        self.schedule.beat_sent(now, self.report)

    def close(self) -> None:
        self.requests.send(wire.encode_request(wire.BYE, 0), zmq.NOBLOCK)
        self.requests.close(linger=200)
        self.beat.close(linger=0)


class IdleEngines:
    """``engines`` simulated idle engines (two clients each) on the broker at ``endpoint``,
    their receives waiting ``wait`` seconds, counted as signs of life if ``parks``
    (``refresh_beats=1``: a heartbeat every interval, as clients sent them before
    issue 21)."""

    def __init__(
        self,
        endpoint: str,
        engines: int,
        wait: float = IDLE_WAIT,
        refresh_beats: int = REFRESH_BEATS,
        parks: bool = True,
    ) -> None:
        self.wait = wait
        self.context = zmq.Context()
        self.context.set(zmq.MAX_SOCKETS, 4 * engines + 16)
        self.clients: list[_Client] = []
        for index in range(engines):
            engine_id = f"sim-{index}"
            for report in (True, False):
                client = _Client(
                    self.context, endpoint, engine_id, report, wait, refresh_beats, parks
                )
                self.clients.append(client)
        self._declare(endpoint)
        self._by_socket = {}
        for client in self.clients:
            self._by_socket[client.requests] = client
            self._by_socket[client.beat] = client
        self.answered = 0
        self._parked = False

    def _declare(self, endpoint: str) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(endpoint)
        for name in (TASK_QUEUE, CONTROL_QUEUE):
            sock.send(wire.encode_request(wire.DECLARE, 1, name, None, None, None))
            sock.recv_multipart()
        sock.close()

    def run(self, seconds: float) -> None:
        """Behave like idle engines for ``seconds``.

        The first call parks every client's first receive at once, each for a random
        part of a wait, as if they had been idle for long: their waits end spread out,
        as in the steady state, from the start (a window of one wait shows it).
        """
        start = time.monotonic()
        if not self._parked:
            self._parked = True
            for client in self.clients:
                client.send_receive(start, random.uniform(0, self.wait))
        timers: list[tuple[float, int]] = []  # (due, client index): its heartbeat's next look
        for index in range(len(self.clients)):
            heapq.heappush(timers, (start + random.uniform(0, HEARTBEAT_INTERVAL), index))
        poller = zmq.Poller()
        for sock in self._by_socket:
            poller.register(sock, zmq.POLLIN)
        end = start + seconds
        while (now := time.monotonic()) < end:
            while timers and timers[0][0] <= now:
                _due, index = heapq.heappop(timers)
                client = self.clients[index]
                if client.schedule.due(now, client.report):
                    client.heartbeat(now)
                heapq.heappush(timers, (client.schedule.next_check(now), index))
            wait = min(end, timers[0][0] if timers else end) - now
            for sock, _event in poller.poll(max(1, int(wait * 1000))):
                client = self._by_socket[sock]
                sock.recv_multipart()
                now = time.monotonic()
                client.schedule.reply_received(now)
                if sock is client.requests:  # answered: the next receive goes at once
                    self.answered += 1
                    client.send_receive(now)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.context.term()


@contextmanager
def broker_process(*extra: str) -> Iterator[tuple[psutil.Process, str]]:
    """A broker process on a free loopback port: ``(its process, its endpoint)``."""
    argv = [sys.executable, "-m", "realtime_batch.transport.zeromq", "--bind", "tcp://127.0.0.1:0"]
    child = Child([*argv, *extra], ready_prefix="READY")
    try:
        endpoint = child.wait_ready().split()[1]
        yield psutil.Process(child.pid), endpoint
    finally:
        child.stop()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def idle_broker_cpu(
    engines: int,
    window: float,
    settle: float = 2.0,
    wait: float = IDLE_WAIT,
    refresh_beats: int = REFRESH_BEATS,
    parks: bool = True,
) -> dict[str, float]:
    """The broker's CPU (% of a core) over ``window`` s with ``engines`` simulated idle
    engines whose receives wait ``wait`` s (signs of life if ``parks``).

    Also the requests per second it answered to the simulated receives.
    """
    _raise_open_files(8 * engines + 256)
    with broker_process() as (broker, endpoint):
        sim = IdleEngines(endpoint, engines, wait, refresh_beats, parks)
        try:
            sim.run(settle)  # connected, parked, past the first heartbeats
            before, answered = _cpu(broker), sim.answered
            started = time.perf_counter()
            sim.run(window)
            elapsed = time.perf_counter() - started
            used = _cpu(broker) - before
        finally:
            sim.close()
    return {
        "engines": engines,
        "broker_cpu_pct": 100.0 * used / elapsed,
        "receives_per_s": (sim.answered - answered) / elapsed,
    }


def _raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="32,256", help="comma-separated engine counts")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument(
        "--receive-wait", type=float, default=IDLE_WAIT, help="an idle receive's wait (after)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs per count")
    parser.add_argument(
        "--refresh-beats",
        type=int,
        default=REFRESH_BEATS,
        help="heartbeat refresh in intervals (1: every interval, as before issue 21)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    modes = {**MODES, "after": (args.receive_wait, True)}
    for count in (int(c) for c in args.engines.split(",")):
        for _round in range(args.rounds):
            for mode, (wait, parks) in modes.items():
                found = idle_broker_cpu(
                    count, args.window, wait=wait, refresh_beats=args.refresh_beats, parks=parks
                )
                log.info(
                    "%4d idle engines, %-6s (receive wait %.1f s): broker %.2f %% of a core, "
                    "%.0f receives answered/s",
                    count,
                    mode,
                    wait,
                    found["broker_cpu_pct"],
                    found["receives_per_s"],
                )


if __name__ == "__main__":
    main()
