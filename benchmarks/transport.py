"""The ``zmq://`` transport against the raw pyzmq floor, in one run.

(a) raw pyzmq 3-hop brokered request-reply: a ROUTER-ROUTER broker process, one
    DEALER worker process, a DEALER client (this process): client -> broker ->
    worker -> broker -> client;
(b) the same path through ``zmq://`` and the ``rtbatch broker`` process: the
    client sends a task, a worker process receives it, sends the reply to the
    client's mailbox (a group on the results queue) and completes the task; the
    client receives the reply and completes it; run twice, with the broker's default
    busy-polling (``--spin-us``) and without it (``--spin-us 0``); and once more with
    CURVE and roles enforced (client, engine keys; ``--mailbox-queue``): the cost of
    encryption and of the per-request permission check.

For each: round-trip p50/p99 (one message in flight) and the pipelined throughput
of 20,000 small messages. Then the broker's RSS with 100,000 queued 100-byte
messages. Figures only, no asserts::

    python -m benchmarks.transport [--quick]

With ``--parked N`` it measures instead the zmq:// round trip with no receive parked
at the broker and with N receives parked on unused mailboxes of the results queue
(1,000 per connection, the broker's default cap per client), side by side: a message
must be matched to its mailbox's receives without looking at the others.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psutil
import zmq

from benchmarks.procs import die_with_parent, stop_process
from realtime_batch.transport import Message, open_transport
from realtime_batch.transport.zeromq import wire

__all__ = ["join_spawned", "main"]

BODY = b"x" * 32
TASKS, RESULTS, MAILBOX = "bench-tasks", "bench-results", "bench-client"
STOP = b"__stop__"


def join_spawned(procs: list[mp.process.BaseProcess], timeout: float = 10.0) -> None:
    """Wait for the ``multiprocessing`` children that were started; kill any still alive."""
    for proc in procs:
        if proc.pid is not None:  # started
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()


# -- (a) raw pyzmq ---------------------------------------------------------------------------
def _raw_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def raw_broker(pipe: Connection) -> None:
    """ROUTER (clients) <-> ROUTER (worker); forwards frames, nothing else."""
    ctx = zmq.Context()
    front, back = _raw_socket(ctx, zmq.ROUTER), _raw_socket(ctx, zmq.ROUTER)
    front.bind("tcp://127.0.0.1:*")
    back.bind("tcp://127.0.0.1:*")
    pipe.send((front.LAST_ENDPOINT.decode(), back.LAST_ENDPOINT.decode()))
    worker = back.recv_multipart()[0]  # its READY
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if front in events:
            while True:
                try:
                    client, payload = front.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if payload == STOP:
                    back.send_multipart([worker, client, STOP])
                    return
                back.send_multipart([worker, client, payload])
        if back in events:
            while True:
                try:
                    _worker, client, payload = back.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                front.send_multipart([client, payload])


def raw_worker(endpoint: str) -> None:
    """DEALER echo worker."""
    ctx = zmq.Context()
    sock = _raw_socket(ctx, zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"READY")
    while True:
        client, payload = sock.recv_multipart()
        if payload == STOP:
            return
        sock.send_multipart([client, payload])


def bench_raw(n_latency: int, n_throughput: int, window: int) -> dict[str, float]:
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    broker = spawn.Process(target=raw_broker, args=(child,), daemon=True)
    broker.start()
    front, back = parent.recv()
    worker = spawn.Process(target=raw_worker, args=(back,), daemon=True)
    worker.start()
    ctx = zmq.Context()
    sock = _raw_socket(ctx, zmq.DEALER)
    sock.connect(front)
    try:
        sock.send(BODY)  # warm up (waits for the worker)
        sock.recv()
        samples = []
        cpu = _cpu_seconds(broker.pid)
        for _ in range(n_latency):
            start = time.perf_counter()
            sock.send(BODY)
            sock.recv()
            samples.append(time.perf_counter() - start)
        broker_cpu = (_cpu_seconds(broker.pid) - cpu) / n_latency
        sent = received = 0
        start = time.perf_counter()
        while received < n_throughput:
            while sent < n_throughput and sent - received < window:
                sock.send(BODY)
                sent += 1
            sock.recv()
            received += 1
        elapsed = time.perf_counter() - start
        sock.send(STOP)
    finally:
        sock.close(0)
        ctx.term()
        join_spawned([broker, worker], 5)
    figures = _figures(samples, n_throughput / elapsed)
    figures["broker_cpu_us"] = broker_cpu * 1e6
    return figures


# -- (b) zmq:// ------------------------------------------------------------------------------
def zmq_worker(
    url: str, stamp: Callable[[str], None] | None = None, options: dict[str, Any] | None = None
) -> None:
    """Receive tasks, send each reply to its sender's mailbox and complete the tasks.

    Replies and completions go in one round trip (``send_and_complete``), as an engine
    settles its results. ``stamp`` (``benchmarks.timeline``) is called with
    ``"received"`` after each receive and ``"sending"`` before each reply. ``options``:
    the transport's (CURVE keys).
    """
    with open_transport(url, **(options or {})) as t:
        while True:
            deliveries = t.receive(TASKS, max_messages=256, timeout=5)
            if stamp is not None:
                stamp("received")
            replies = [
                Message(d.message.body, group=d.message.group, correlation_id=d.message.id)
                for d in deliveries
                if d.message.body != STOP
            ]
            if replies:
                if stamp is not None:
                    stamp("sending")
                t.send_and_complete(RESULTS, replies, deliveries)
            elif deliveries:
                t.complete_many(deliveries)
            if len(replies) < len(deliveries):
                return


def start_broker(*args: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq"]
    proc = subprocess.Popen(
        [*cmd, "--bind", "tcp://127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent,  # a benchmark that dies takes its broker with it
    )
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"broker did not start: {line!r}")
    return proc, "zmq://" + line.split()[1].removeprefix("tcp://")


def stop_broker(proc: subprocess.Popen[str]) -> None:
    stop_process(proc, grace=10.0)


@contextlib.contextmanager
def parked_receives(url: str, count: int, per_connection: int = 1000) -> Iterator[None]:
    """Park ``count`` receives on unused mailboxes of the results queue while in the block."""
    ctx = zmq.Context()
    sockets = []
    try:
        for first in range(0, count, per_connection):
            sock = _raw_socket(ctx, zmq.DEALER)
            sock.connect(url.replace("zmq://", "tcp://"))
            sockets.append(sock)
            for i in range(first, min(count, first + per_connection)):
                request = wire.encode_request(wire.RECEIVE, i + 1, RESULTS, 1, 3600.0, f"idle-{i}")
                sock.send(request)
            sock.send(wire.encode_request(wire.HEARTBEAT, 0, 3600.0))
        for sock in sockets:  # a connection's requests are handled in order: all parked now
            header = orjson.loads(sock.recv_multipart()[0])
            if header[:2] != [0, wire.OK]:
                raise RuntimeError(f"a receive was not parked: {header}")
        yield
    finally:
        for sock in sockets:
            sock.close(0)
        ctx.term()


def curve_setup(directory: Path) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """CURVE keys with roles in ``directory``: broker args, client and worker options."""
    from realtime_batch.transport.zeromq.curve import authorize_key, generate_keys

    generate_keys(directory, "broker")
    for role in ("client", "engine"):
        public, _secret = generate_keys(directory, role)
        authorize_key(public, directory / "authorized", role)
    args = [
        "--curve-secret-key", str(directory / "broker.key_secret"),
        "--authorized-keys", str(directory / "authorized"),
        "--mailbox-queue", RESULTS,
    ]  # fmt: skip

    def options(role: str) -> dict[str, Any]:
        return {"curve_server_key": str(directory / "broker.key"),
                "curve_secret_key": str(directory / f"{role}.key_secret")}  # fmt: skip

    return args, options("client"), options("engine")


def bench_transport(
    n_latency: int,
    n_throughput: int,
    window: int,
    *broker_args: str,
    curve: bool = False,
    parked: int = 0,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-curve-") as keys:
        client, engine = {}, {}
        if curve:
            extra, client, engine = curve_setup(Path(keys))
            broker_args = (*broker_args, *extra)
        return _bench_transport(
            n_latency, n_throughput, window, broker_args, client, engine, parked
        )


def _bench_transport(
    n_latency: int,
    n_throughput: int,
    window: int,
    broker_args: tuple[str, ...],
    client: dict[str, Any],
    engine: dict[str, Any],
    parked: int = 0,
) -> dict[str, float]:
    broker, url = start_broker(*broker_args)
    spawn = mp.get_context("spawn")
    worker = None
    try:
        with open_transport(url, **client) as t, contextlib.ExitStack() as stack:
            mailbox = t.mailbox_prefix + MAILBOX  # a client reads only groups so named
            t.declare_queue(TASKS)
            t.declare_queue(RESULTS, grouped=True)
            if parked:
                stack.enter_context(parked_receives(url, parked))
            worker = spawn.Process(target=zmq_worker, args=(url, None, engine), daemon=True)
            worker.start()

            def one() -> None:
                t.send(TASKS, Message(BODY, group=mailbox))
                [reply] = t.receive(RESULTS, timeout=30, group=mailbox)
                t.complete(reply)

            one()  # warm up (waits for the worker)
            cpu = _cpu_seconds(broker.pid)
            samples, cycles = _sequential(t, n_latency, mailbox=mailbox)
            broker_cpu = (_cpu_seconds(broker.pid) - cpu) / n_latency
            parked, _ = _sequential(t, n_latency, listener=True, mailbox=mailbox)
            rate = _pipelined(t, n_throughput, window, mailbox=mailbox)
            t.send(TASKS, Message(STOP))
    finally:
        try:
            join_spawned([worker] if worker is not None else [])
        finally:
            stop_broker(broker)
    figures = _figures(samples, rate)
    figures["broker_cpu_us"] = broker_cpu * 1e6
    figures["cycle_p50_us"] = statistics.median(cycles) * 1e6
    figures["parked_p50_us"] = statistics.median(parked) * 1e6
    figures["parked_p99_us"] = _figures(parked, 0)["p99_us"]
    return figures


def _sequential(
    t, count: int, *, listener: bool = False, mailbox: str = MAILBOX
) -> tuple[list[float], list[float]]:
    """One task in flight at a time; returns (send->reply, send->reply completed) samples.

    With ``listener`` a thread keeps a receive parked on the mailbox (as a Session's
    listener does) and takes the reply's arrival time before completing it.
    """
    if not listener:
        samples, cycles = [], []
        for _ in range(count):
            start = time.perf_counter()
            t.send(TASKS, Message(BODY, group=mailbox))
            [reply] = t.receive(RESULTS, timeout=30, group=mailbox)
            samples.append(time.perf_counter() - start)
            t.complete(reply)
            cycles.append(time.perf_counter() - start)
        return samples, cycles
    arrived: queue.SimpleQueue[float] = queue.SimpleQueue()

    def listen() -> None:
        for _ in range(count):
            [reply] = t.receive(RESULTS, timeout=30, group=mailbox)
            arrived.put(time.perf_counter())
            t.complete(reply)

    thread = threading.Thread(target=listen)
    thread.start()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        t.send(TASKS, Message(BODY, group=mailbox))
        samples.append(arrived.get(timeout=30) - start)
    thread.join()
    return samples, samples


def _pipelined(t, total: int, window: int, *, mailbox: str = MAILBOX) -> float:
    """Send ``total`` tasks (at most ``window`` unanswered) while a thread collects replies."""
    credit = threading.Semaphore(window)
    batch = 64

    def sender() -> None:
        sent = 0
        while sent < total:
            size = min(batch, total - sent)
            for _ in range(size):
                credit.acquire()
            t.send(TASKS, [Message(BODY, group=mailbox) for _ in range(size)])
            sent += size

    thread = threading.Thread(target=sender)
    start = time.perf_counter()
    thread.start()
    received = 0
    while received < total:
        replies = t.receive(RESULTS, max_messages=512, timeout=30, group=mailbox)
        if not replies:
            raise RuntimeError(f"stalled after {received} replies")
        t.complete_many(replies)
        received += len(replies)
        for _ in replies:
            credit.release()
    elapsed = time.perf_counter() - start
    thread.join()
    return total / elapsed


def compare_parked(n_latency: int, n_throughput: int, parked: int) -> None:
    """Print the zmq:// figures with no receive parked and with ``parked`` ones."""
    rows = []
    for count in (0, parked):
        label = f"zmq://, {count:,} receives parked"
        figures = _timed(
            label, lambda c=count: bench_transport(n_latency, n_throughput, 1000, parked=c)
        )
        rows.append((label, figures))
    print(f"round trip ({n_latency} samples), pipelined throughput ({n_throughput} messages)")
    print(f"{'':34}{'p50 us':>10}{'p99 us':>10}{'msg/s':>10}{'CPU us':>10}")
    for name, fig in rows:
        print(
            f"{name:34}{fig['p50_us']:>10.0f}{fig['p99_us']:>10.0f}{fig['throughput']:>10.0f}"
            f"{fig['broker_cpu_us']:>10.0f}"
        )
    ratio = rows[1][1]["p50_us"] / rows[0][1]["p50_us"]
    print(f"ratio p50 with / without parked receives: {ratio:.2f}")


# -- broker memory ---------------------------------------------------------------------------
def bench_memory(count: int, size: int = 100) -> dict[str, float]:
    broker, url = start_broker()
    try:
        process = psutil.Process(broker.pid)
        idle = process.memory_info().rss
        with open_transport(url) as t:
            t.declare_queue("bench-memory")
            body = b"m" * size
            for offset in range(0, count, 1000):
                t.send("bench-memory", [Message(body) for _ in range(min(1000, count - offset))])
            time.sleep(0.2)
            loaded = process.memory_info().rss
    finally:
        stop_broker(broker)
    return {"idle_mb": idle / 2**20, "loaded_mb": loaded / 2**20, "count": count}


# -- report ----------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (with its ZeroMQ I/O thread)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _figures(samples: list[float], rate: float) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "throughput": rate,
    }


def _timed(label: str, func: Callable[[], dict[str, float]]) -> dict[str, float]:
    print(f"running {label} ...", file=sys.stderr, flush=True)
    return func()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--messages", type=int, default=20_000, help="pipelined message count")
    parser.add_argument("--window", type=int, default=1000, help="max unanswered messages")
    parser.add_argument(
        "--parked",
        type=int,
        default=0,
        metavar="N",
        help="only compare the round trip with 0 and with N receives parked at the broker",
    )
    args = parser.parse_args(argv)
    n_latency = 300 if args.quick else 3000
    if args.parked:
        compare_parked(n_latency, n_throughput=2000 if args.quick else 5000, parked=args.parked)
        return
    n_throughput = 2000 if args.quick else args.messages
    queued = 10_000 if args.quick else 100_000

    raw = _timed("raw pyzmq", lambda: bench_raw(n_latency, n_throughput, args.window))
    ours = _timed("zmq://", lambda: bench_transport(n_latency, n_throughput, args.window))
    still = _timed(
        "zmq://, broker --spin-us 0",
        lambda: bench_transport(n_latency, n_throughput, args.window, "--spin-us", "0"),
    )
    curve = _timed(
        "zmq://, CURVE with roles",
        lambda: bench_transport(n_latency, n_throughput, args.window, curve=True),
    )
    memory = _timed("broker memory", lambda: bench_memory(queued))

    print(f"round trip ({n_latency} samples), pipelined throughput ({n_throughput} messages)")
    print(f"{'':28}{'p50 us':>10}{'p99 us':>10}{'msg/s':>10}")
    rows = (
        ("raw pyzmq 3-hop", raw),
        ("zmq:// send->reply", ours),
        ("  same, broker not polling", still),
        ("  same, CURVE + roles", curve),
    )
    for name, fig in rows:
        print(f"{name:28}{fig['p50_us']:>10.0f}{fig['p99_us']:>10.0f}{fig['throughput']:>10.0f}")
    print(f"{'zmq:// incl. complete':28}{ours['cycle_p50_us']:>10.0f}")
    print(
        f"{'zmq:// parked listener':28}{ours['parked_p50_us']:>10.0f}{ours['parked_p99_us']:>10.0f}"
    )
    print(
        f"broker CPU per round trip: raw {raw['broker_cpu_us']:.0f} us, "
        f"zmq:// {ours['broker_cpu_us']:.0f} us (send, receive and complete on both sides; "
        f"{still['broker_cpu_us']:.0f} us not polling)"
    )
    p50_ratio = ours["p50_us"] / raw["p50_us"]
    rate_ratio = ours["throughput"] / raw["throughput"]
    print(f"ratio p50 zmq:// / raw: {p50_ratio:.2f}  (target <= 1.5)")
    print(f"ratio throughput zmq:// / raw: {rate_ratio:.2f}  (target >= 0.5)")
    print(
        f"broker RSS: {memory['idle_mb']:.1f} MB idle, {memory['loaded_mb']:.1f} MB with "
        f"{memory['count']:,} queued 100-byte messages (target < 100 MB at 100,000)"
    )


if __name__ == "__main__":
    main()
