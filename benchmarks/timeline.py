"""Where a no-op round trip spends its time: stamps at each step, median per segment.

    python -m benchmarks.timeline transport [-n 2000]
    python -m benchmarks.timeline session [-n 1000] [--payload BYTES]
    python -m benchmarks.timeline pattern [-n 3000]

``transport``: this process sends a small message to a task queue of an ``rtbatch
broker`` subprocess; a worker subprocess receives it and answers with
``send_and_complete`` into this process's mailbox (a group of the results queue),
which this process receives, as in ``benchmarks.transport``. The broker stamps
each request when its dispatch starts and when its handling (replies included)
ends; the worker stamps receive and send. Stamps are ``time.monotonic()``, which
is one system-wide clock on Linux, so stamps of different processes compare.

``session``: no-op tasks one at a time through ``Session`` and
``LocalPool(engines=2)`` over ``zmq://``. The engine processes (and their task
workers) are started with a ``sitecustomize`` module (on ``PYTHONPATH``) that wraps
steps with ``time.time()`` stamps: the task worker's receive, admission and
settling (result sent and lease completed); the engine is not on the path (its
task workers are fed directly on ``zmq://``). With the task's own ``submitted/
started/finished/received`` stamps this splits the round trip into its hops.

``pattern``: the raw pyzmq 3-hop round trip (a Python ROUTER broker that only forwards,
one worker), first bare, then with the extra messages of the ``zmq://`` protocol added
one kind at a time (the broker's ack of a send, the ack of the worker's reply and the
worker's next receive request, the client's complete and its ack): what the message
pattern alone costs on this machine, without queue state or JSON.

``wakeups``: what waking a blocked thread or process costs on this machine, the unit
every hop above is made of: a one-byte ping-pong between two processes over pipes
(free to run on any CPU, then both pinned to one CPU), and between two threads of
one process over ``queue.SimpleQueue``.

Stamping costs a few microseconds per step, so the totals are a little above the
plain benchmarks'. Figures only, no asserts.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import ROOT
from benchmarks.procs import stop_process
from benchmarks.transport import MAILBOX, RESULTS, STOP, TASKS

__all__ = ["main", "pattern_timeline", "session_timeline", "transport_timeline", "wakeups"]

_ENV_DIR = "BENCH_TIMELINE_DIR"  # passed to the task workers too (pass_env)


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6 if values else float("nan")


def _rows(*names: str) -> dict[str, list[float]]:
    """One empty sample list per segment name, in order."""
    return {name: [] for name in names}


def _print(rows: dict[str, list[float]], title: str) -> dict[str, float]:
    figures = {name: _median_us(values) for name, values in rows.items()}
    print(title)
    for name, value in figures.items():
        print(f"  {name:44}{value:8.0f} us   (n={len(rows[name])})")
    return figures


# -- transport ------------------------------------------------------------------------------
def _broker_role(out: str) -> None:
    from realtime_batch.transport.zeromq import broker as broker_module

    log: list[tuple[float, str, int]] = []
    current = [-1]
    Broker = broker_module.Broker
    dispatch, handle = Broker._dispatch, Broker._handle

    def stamped_dispatch(self: Any, request: Any, *args: Any) -> Any:
        current[0] = request.command
        log.append((time.monotonic(), "start", request.command))
        return dispatch(self, request, *args)

    def stamped_handle(self: Any, frames: list[bytes]) -> None:
        handle(self, frames)
        log.append((time.monotonic(), "end", current[0]))

    Broker._dispatch, Broker._handle = stamped_dispatch, stamped_handle
    broker = Broker("tcp://127.0.0.1:0")
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    print(broker.endpoint, flush=True)
    try:
        broker.run()
    finally:
        broker.close()
        Path(out).write_text(json.dumps(log))


def _worker_role(url: str, out: str) -> None:
    from benchmarks.transport import zmq_worker

    log: list[tuple[float, str]] = []
    zmq_worker(url, stamp=lambda kind: log.append((time.monotonic(), kind)))
    Path(out).write_text(json.dumps(log))


def transport_timeline(count: int) -> dict[str, float]:
    """Run ``count`` sequential round trips over ``zmq://``; return median segment times."""
    from realtime_batch.transport import Message, open_transport
    from realtime_batch.transport.zeromq import wire

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        broker_log, worker_log = Path(tmp, "broker.json"), Path(tmp, "worker.json")
        me = [sys.executable, "-m", "benchmarks.timeline"]
        broker = subprocess.Popen(
            [*me, "_broker", str(broker_log)], stdout=subprocess.PIPE, text=True, env=env
        )
        worker = None
        stamps: list[tuple[float, float, float]] = []
        try:
            url = "zmq://" + broker.stdout.readline().strip().removeprefix("tcp://")
            with open_transport(url) as transport:
                transport.declare_queue(TASKS)
                transport.declare_queue(RESULTS, grouped=True)
                worker = subprocess.Popen([*me, "_worker", url, str(worker_log)], env=env)
                for index in range(count + 20):  # the first 20 warm up
                    start = time.monotonic()
                    transport.send(TASKS, Message(b"x" * 32, group=MAILBOX))
                    acked = time.monotonic()
                    [reply] = transport.receive(RESULTS, timeout=30, group=MAILBOX)
                    got = time.monotonic()
                    transport.complete(reply)
                    if index >= 20:
                        stamps.append((start, acked, got))
                transport.send(TASKS, Message(STOP))
                worker.wait(30)
        finally:
            for proc in (worker, broker):
                if proc is not None:
                    stop_process(proc, 10.0)
        blog = json.loads(broker_log.read_text())
        wlog = json.loads(worker_log.read_text())

    btimes = [event[0] for event in blog]
    wtimes = [event[0] for event in wlog]
    rows = _rows(
        "client send -> broker SEND start",
        "broker SEND start -> worker received",
        "worker: build reply",
        "worker sends -> broker SEND_COMPLETE start",
        "broker handles SEND_COMPLETE",
        "broker SEND_COMPLETE end -> client got it",
        "total: send -> reply received",
        "broker handles SEND (grant, ack)",
        "client: send's ack",
    )

    def first(events: list[Any], kind: str, command: int) -> float:
        return next(e[0] for e in events if e[1] == kind and e[2] == command)

    for start, acked, got in stamps:
        window = blog[bisect.bisect_left(btimes, start) : bisect.bisect_right(btimes, got)]
        wevents = wlog[bisect.bisect_left(wtimes, start) :]
        try:
            send_start, send_end = (
                first(window, "start", wire.SEND),
                first(window, "end", wire.SEND),
            )
            sc_start = first(window, "start", wire.SEND_COMPLETE)
            sc_end = first(window, "end", wire.SEND_COMPLETE)
            received = next(e[0] for e in wevents if e[1] == "received")
            sending = next(e[0] for e in wevents if e[1] == "sending")
        except StopIteration:
            continue  # a heartbeat or a late stamp split this one: skip it
        for name, value in zip(
            rows,
            (
                send_start - start,
                received - send_start,
                sending - received,
                sc_start - sending,
                sc_end - sc_start,
                got - sc_end,
                got - start,
                send_end - send_start,
                acked - start,
            ),
            strict=True,
        ):
            rows[name].append(value)
    return _print(rows, f"zmq:// round trip, {len(rows['total: send -> reply received'])} samples")


# -- session --------------------------------------------------------------------------------
_SITECUSTOMIZE = """
import os
if os.environ.get("BENCH_TIMELINE_DIR"):
    import atexit, builtins, json, sys, time
    _log = []
    _out = os.environ["BENCH_TIMELINE_DIR"]
    def _dump():
        with open(f"{_out}/engine-{os.getpid()}.json", "w") as f:
            f.write(json.dumps(_log))
    atexit.register(_dump)

    def _patch():
        from realtime_batch.engine import _admit, _direct_runner, _outbox, _pipeline
        from realtime_batch.transport.zeromq import client

        def wrap(cls, name, before=None, after=None):
            original = getattr(cls, name)
            def wrapper(self, *args, **kwargs):
                keys = before(self, *args) if before else None
                result = original(self, *args, **kwargs)
                now = time.time()
                for key in (after(self, result, keys) if after else keys) or ():
                    _log.append((key[0], key[1], now))
                return result
            setattr(cls, name, wrapper)

        wrap(client.ZmqTransport, "receive",
             after=lambda s, r, k: [("received", d.message.id) for d in r])
        wrap(client.ZmqTransport, "settle_and_receive",
             after=lambda s, r, k: [("received", d.message.id) for d in r[0]])
        # a direct worker also writes its stamps as soon as it has drained, in case it
        # is killed before its interpreter exits
        wrap(_direct_runner.DirectRunner, "serve", after=lambda s, r, k: _dump())
        wrap(_admit.Admission, "admit",
             before=lambda s, d, now: _log.append(("admitted", d.message.id, time.time())))
        wrap(_pipeline.WorkerPipeline, "dispatch",
             before=lambda s: [("dispatched", h.delivery.message.id) for h in s.pending])
        wrap(_pipeline.WorkerPipeline, "_record",
             before=lambda s, a: _log.append(
                 ("recorded", s.inflight[0].delivery.message.id, time.time())))
        def settling(s, entries, *args):
            now = time.time()
            _log.extend(("settling", x.delivery.message.id, now)
                        for x in entries if x.delivery is not None)

        for name in ("settle", "settle_and_receive"):
            wrap(_outbox.Outbox, name, before=settling, after=lambda s, r, k: None)

    _import = builtins.__import__
    _done = []
    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        if not _done and "realtime_batch.engine" in sys.modules:
            _done.append(True)
            _patch()
        return module
    builtins.__import__ = _hook
"""


def session_timeline(count: int, engines: int = 2, payload: int = 0) -> dict[str, float]:
    """Run ``count`` sequential tasks through a session; return median segment times.

    With ``payload`` the task echoes a string of that many bytes (both ways), else it
    is a no-op.
    """
    import realtime_batch as rb

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "sitecustomize.py").write_text(_SITECUSTOMIZE)
        task = Path(tmp, "noop_timeline.py")
        task.write_text("def run(*args, **kwargs):\n    return args[0] if args else None\n")
        args = ("x" * payload,) if payload else ()
        paths = [tmp, str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {_ENV_DIR: tmp, "PYTHONPATH": os.pathsep.join(paths)}
        pool = rb.LocalPool(
            engines=engines, transport="zmq://127.0.0.1:0", task_files=[task], env=env,
            pass_env=[_ENV_DIR],
        )  # fmt: skip
        totals: list[float] = []
        with pool, rb.Session(pool) as session:
            for _ in range(50):  # warm up
                session.submit("noop_timeline.py", *args).result(timeout=60)
            session.results()
            for _ in range(count):
                start = time.time()
                session.submit("noop_timeline.py", *args).result(timeout=60)
                totals.append(time.time() - start)
            results = session.results()
        events: dict[str, dict[str, float]] = {}
        for path in glob.glob(os.path.join(tmp, "engine-*.json")):
            for kind, message_id, stamp in json.loads(Path(path).read_text()):
                events.setdefault(message_id, {})[kind] = stamp

    return _direct_rows(events, results, totals)


def _direct_rows(
    events: dict[str, dict[str, float]], results: list[Any], totals: list[float]
) -> dict[str, float]:
    """Segments of a direct-mode round trip: the task worker receives, runs and settles."""
    steps = ("received", "admitted", "settling")
    by_admit = sorted(
        (e["admitted"], e) for e in events.values() if all(step in e for step in steps)
    )
    keys = [key for key, _ in by_admit]
    rows = _rows(
        "submit -> task worker received (broker hop x2)",
        "worker: admit, start",
        "task runs (no-op)",
        "worker: result recorded -> settling",
        "settling -> client has it (broker hop x2)",
        "client listener -> caller's result()",
        "total round trip",
    )
    for result, total in zip(results, totals, strict=False):
        index = bisect.bisect_right(keys, result.started_at) - 1
        if index < 0:
            continue
        e = by_admit[index][1]
        if not e["received"] <= result.started_at <= result.finished_at <= e["settling"]:
            continue
        values = (
            e["received"] - result.submitted_at,
            result.started_at - e["received"],
            result.finished_at - result.started_at,
            e["settling"] - result.finished_at,
            result.received_at - e["settling"],
            result.submitted_at + total - result.received_at,
            total,
        )
        for name, value in zip(rows, values, strict=True):
            rows[name].append(value)
    return _print(rows, f"session round trip (direct workers), {len(rows['total round trip'])} "
                  "matched samples")  # fmt: skip


# -- message pattern ------------------------------------------------------------------------
_PATTERNS = {
    "bare 3-hop (the floor)": "",
    "+ ack of the client's send": "S",
    "+ ack of the reply, worker's next receive": "RW",
    "+ client's complete and its ack": "C",
    "all of them (the zmq:// pattern)": "SRWC",
}


def _pattern_broker(flags: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    print(sock.LAST_ENDPOINT.decode(), flush=True)
    worker = client = None
    early: list[bytes] = []  # tasks that came before the worker's first "W"
    try:
        while True:
            frames = sock.recv_multipart()
            sender, kind = frames[0], frames[1]
            if kind == b"W":  # worker: ready / next receive
                worker = sender
                for body in early:
                    sock.send_multipart([worker, b"T", body])
                early.clear()
            elif kind == b"T":  # client: a task
                client = sender
                if worker is None:
                    early.append(frames[2])
                else:
                    sock.send_multipart([worker, b"T", frames[2]])
                if "S" in flags:
                    sock.send_multipart([sender, b"A"])
            elif kind == b"R":  # worker: the reply
                sock.send_multipart([client, b"R", frames[2]])
                if "R" in flags:
                    sock.send_multipart([sender, b"A"])
            elif kind == b"C":  # client: complete
                sock.send_multipart([sender, b"A"])
            elif kind == b"Q":
                return
    finally:
        sock.close(0)
        ctx.term()


def _pattern_worker(endpoint: str, flags: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"W")
    try:
        while True:
            frames = sock.recv_multipart()
            if frames[0] == b"A":
                continue
            if frames[1] == STOP:
                return
            sock.send_multipart([b"R", frames[1]])
            if "R" in flags:
                while sock.recv_multipart()[0] != b"A":
                    pass
            if "W" in flags:
                sock.send(b"W")
    finally:
        sock.close(0)
        ctx.term()


def _recv_or_fail(sock: Any, *procs: subprocess.Popen) -> list[bytes]:
    """The next message, or ``RuntimeError`` when a helper process died or 30 s passed."""
    for _ in range(300):
        if sock.poll(100):
            return sock.recv_multipart()
        dead = [proc.args for proc in procs if proc.poll() is not None]
        if dead:
            raise RuntimeError(f"pattern timeline: {dead} exited")
    raise RuntimeError("pattern timeline: no answer in 30 s")


def pattern_timeline(count: int) -> dict[str, float]:
    """Median raw pyzmq round trip, bare and with each kind of extra message."""
    import zmq

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    me = [sys.executable, "-m", "benchmarks.timeline"]
    figures: dict[str, float] = {}
    for label, flags in _PATTERNS.items():
        broker = subprocess.Popen(
            [*me, "_pbroker", flags or "-"], stdout=subprocess.PIPE, text=True, env=env
        )
        endpoint = broker.stdout.readline().strip()
        worker = subprocess.Popen([*me, "_pworker", endpoint, flags or "-"], env=env)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        samples = []
        try:
            for index in range(count + 100):  # the first 100 warm up
                start = time.perf_counter()
                sock.send_multipart([b"T", b"x" * 32])
                while _recv_or_fail(sock, broker, worker)[0] != b"R":
                    pass
                if index >= 100:
                    samples.append(time.perf_counter() - start)
                if "C" in flags:
                    sock.send(b"C")
                    while _recv_or_fail(sock, broker, worker)[0] != b"A":
                        pass
            sock.send_multipart([b"T", STOP])
            time.sleep(0.05)
            sock.send(b"Q")
        finally:
            sock.close(0)
            ctx.term()
            for proc in (worker, broker):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)  # both end after the STOP / Q messages
                stop_process(proc, 1.0)
            broker.stdout.close()
        figures[label] = _median_us(samples)
    print(f"raw pyzmq round trip p50 ({count} samples each)")
    for label, value in figures.items():
        print(f"  {label:44}{value:8.0f} us")
    return figures


# -- wake-ups ---------------------------------------------------------------------------------
def _pipe_ping_pong(count: int, cpu: int | None) -> list[float]:
    """Round trips of one byte to a forked child and back (both pinned to ``cpu``)."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    previous = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    pid = os.fork()
    if pid == 0:  # the child: echo until told to stop
        try:
            while (byte := os.read(to_child, 1)) != b"q":
                os.write(from_child, byte)
        finally:
            os._exit(0)
    samples = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(from_parent, b"x")
            os.read(to_parent, 1)
            samples.append(time.perf_counter() - start)
    finally:
        os.write(from_parent, b"q")
        os.waitpid(pid, 0)
        for fd in (to_child, from_parent, to_parent, from_child):
            os.close(fd)
        os.sched_setaffinity(0, previous)
    return samples


def _thread_ping_pong(count: int) -> list[float]:
    import queue
    import threading

    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=echo)
    thread.start()
    samples = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            there.put(1)
            back.get()
            samples.append(time.perf_counter() - start)
    finally:
        there.put(None)
        thread.join()
    return samples


def wakeups(count: int) -> dict[str, float]:
    """Median ping-pong round trips (two wake-ups each) between processes and threads."""
    cpus = sorted(os.sched_getaffinity(0))
    rows = {"processes, any CPU (pipes)": _pipe_ping_pong(count, None)}
    rows["processes, one CPU (pipes)"] = _pipe_ping_pong(count, cpus[0])
    rows["threads of one process (SimpleQueue)"] = _thread_ping_pong(count)
    return _print(rows, f"ping-pong round trips (two wake-ups each), {len(cpus)} CPUs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    defaults = (("transport", 2000), ("session", 1000), ("pattern", 3000), ("wakeups", 5000))
    for name, default in defaults:
        p = sub.add_parser(name)
        p.add_argument("-n", type=int, default=default, help="round trips")
        if name == "session":
            p.add_argument("--payload", type=int, default=0, help="echo a string of BYTES")
    broker = sub.add_parser("_broker")  # internal roles of the transport timeline
    broker.add_argument("out")
    worker = sub.add_parser("_worker")
    worker.add_argument("url")
    worker.add_argument("out")
    pbroker = sub.add_parser("_pbroker")  # internal roles of the pattern timeline
    pbroker.add_argument("flags")
    pworker = sub.add_parser("_pworker")
    pworker.add_argument("endpoint")
    pworker.add_argument("flags")
    args = parser.parse_args(argv)
    if args.what == "_broker":
        _broker_role(args.out)
    elif args.what == "_pbroker":
        _pattern_broker(args.flags.strip("-"))
    elif args.what == "_pworker":
        _pattern_worker(args.endpoint, args.flags.strip("-"))
    elif args.what == "_worker":
        _worker_role(args.url, args.out)
    elif args.what == "transport":
        transport_timeline(args.n)
    elif args.what == "pattern":
        pattern_timeline(args.n)
    elif args.what == "wakeups":
        wakeups(args.n)
    else:
        session_timeline(args.n, payload=args.payload)


if __name__ == "__main__":
    main()
