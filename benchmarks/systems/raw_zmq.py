"""The floor: a minimal brokered request-reply in raw pyzmq, no queues, leases or JSON.

client DEALER -> broker ROUTER (frontend) -> broker ROUTER (backend) -> worker DEALER
and back. Workers give the broker credit (two tasks each, like the rtbatch engines'
prefetch) and every reply returns one credit, the load-balancing broker of the
ZeroMQ guide. Frames are raw bytes: ``[task_id, task, arg]`` out, ``[task_id, value]``
back. This is the cost of the network path alone, what realtime-batch's ``zmq://``
adds its reliability on top of.

``python -m benchmarks.systems.raw_zmq broker|worker ...`` runs the two halves. Both
exit at once on SIGTERM, and within a second of their parent's end even without it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import time
from collections import deque
from typing import Any

import zmq

from benchmarks.procs import Child
from benchmarks.systems.base import WORKERS, System

__all__ = ["RawZmqSystem", "main"]

PREFETCH = 2
READY = b"READY"
#: milliseconds an idle broker or worker waits before it checks that its parent is there
ORPHAN_CHECK_MS = 1000


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def _orphaned(parent: int) -> bool:
    """Whether the process that started this one has ended (we were re-parented)."""
    return os.getppid() != parent


def run_broker(parent: int) -> None:
    """Bind both sides on free loopback ports, print ``READY front back`` and route.

    Routes until SIGTERM or until ``parent`` (the pid that started it) is gone.
    """
    ctx = zmq.Context()
    try:
        front = _socket(ctx, zmq.ROUTER)
        back = _socket(ctx, zmq.ROUTER)
        front_port = front.bind_to_random_port("tcp://127.0.0.1")
        back_port = back.bind_to_random_port("tcp://127.0.0.1")
        print(f"READY tcp://127.0.0.1:{front_port} tcp://127.0.0.1:{back_port}", flush=True)
        _route(front, back, parent)
    finally:  # close explicitly: a Context left to __del__ at exit can hang in zmq_ctx_term
        ctx.destroy(linger=0)


def _route(front: zmq.Socket, back: zmq.Socket, parent: int) -> None:
    credits: deque[bytes] = deque()
    pending: deque[list[bytes]] = deque()
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = poller.poll(ORPHAN_CHECK_MS)
        if not events and _orphaned(parent):
            return
        for sock, _ in events:
            if sock is back:
                while True:
                    try:
                        frames = back.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    credits.append(frames[0])
                    if frames[1] != READY:
                        front.send_multipart(frames[1:])
            else:
                while True:
                    try:
                        pending.append(front.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
        while credits and pending:
            back.send_multipart([credits.popleft(), *pending.popleft()])


def _execute(task: bytes, arg: bytes) -> bytes:
    if task == b"noop":
        return b""
    if task == b"echo":
        return arg
    if task == b"sleep":
        time.sleep(float(arg))
        return b""
    if task == b"block":  # client-memory: holds the worker like the peers' 10-minute task
        time.sleep(600.0)
        return b""
    raise ValueError(f"unknown task {task!r}")


def run_worker(backend: str, parent: int) -> None:
    """Connect to the broker's backend, give it credit, run tasks.

    Runs until SIGTERM or until ``parent`` (the pid that started it) is gone.
    """
    ctx = zmq.Context()
    try:
        sock = _socket(ctx, zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, ORPHAN_CHECK_MS)
        sock.connect(backend)
        for _ in range(PREFETCH):
            sock.send(READY)
        print("WORKER READY", flush=True)
        while True:
            try:
                client, task_id, task, arg = sock.recv_multipart()
            except zmq.Again:
                if _orphaned(parent):
                    return
                continue
            sock.send_multipart([client, task_id, _execute(task, arg)])
    finally:  # close explicitly: a Context left to __del__ at exit can hang in zmq_ctx_term
        ctx.destroy(linger=0)


def _arg(args: tuple[Any, ...]) -> bytes:
    if not args:
        return b""
    value = args[0]
    return value.encode() if isinstance(value, str) else str(value).encode()


class RawZmqSystem(System):
    """Broker + two worker processes + a DEALER client in this process."""

    name = "raw-zmq"
    description = "pyzmq ROUTER broker process + 2 DEALER worker processes, raw frames"

    def __init__(self) -> None:
        self._children: list[Child] = []
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._ids = itertools.count(1)

    def start(self) -> None:
        exe = [sys.executable, "-m", "benchmarks.systems.raw_zmq"]
        broker = Child([*exe, "broker"], ready_prefix="READY")
        self._children.append(broker)
        _, front, back = broker.wait_ready().split()
        workers = [
            Child([*exe, "worker", back], ready_prefix="WORKER READY") for _ in range(WORKERS)
        ]
        self._children.extend(workers)
        for worker in workers:
            worker.wait_ready()
        self._ctx = zmq.Context()
        self._sock = _socket(self._ctx, zmq.DEALER)
        self._sock.connect(front)

    def _send(self, task: str, args: tuple[Any, ...]) -> None:
        assert self._sock is not None
        self._sock.send_multipart([str(next(self._ids)).encode(), task.encode(), _arg(args)])

    def call(self, task: str, *args: Any) -> Any:
        assert self._sock is not None
        self._send(task, args)
        _, value = self._sock.recv_multipart()
        return value.decode() if task == "echo" else None

    def run_all(self, task: str, args_list: list[tuple[Any, ...]]) -> None:
        assert self._sock is not None
        for args in args_list:
            self._send(task, args)
        for _ in args_list:
            self._sock.recv_multipart()

    def submit_outstanding(self, task: str, count: int) -> None:
        for _ in range(count):
            self._send(task, ())

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        for child in reversed(self._children):
            child.stop(1.0)
        self._children.clear()

    def versions(self) -> dict[str, str]:
        return {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="raw pyzmq benchmark floor")
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("broker")
    worker = sub.add_parser("worker")
    worker.add_argument("backend")
    options = parser.parse_args(argv)
    parent = os.getppid()
    # Exit at once, skipping the interpreter's teardown: there pyzmq's Context.__del__
    # could block in zmq_ctx_term on a socket not closed yet, and a broker stopped that
    # way (by PR_SET_PDEATHSIG when its runner died) outlived the run. These processes
    # keep no state, so there is nothing to flush.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if options.role == "broker":
        run_broker(parent)
    else:
        run_worker(options.backend, parent)


if __name__ == "__main__":
    main()
