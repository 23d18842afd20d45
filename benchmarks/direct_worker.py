"""Sizing a redesign: what if the process running tasks talked to the broker itself?

Today a task goes broker -> engine (receiver thread -> main thread) -> pipe -> task
worker process -> pipe -> engine -> broker. This measures, in one run, the no-op
round trip of ``Session`` against

(a) the raw pyzmq 3-hop floor (``benchmarks.transport.bench_raw``);
(b) two *direct workers*: processes that receive task messages from the broker,
    decode them, "run" the no-op, and send the result to the session's mailbox
    and complete the task themselves (``send_and_complete``), with no engine
    around them: no supervision, leases, timeouts or crash handling, so a lower
    bound for that design, not a product;
(c) the product: ``LocalPool(engines=2)`` over ``zmq://``.

Figures only, no asserts::

    python -m benchmarks.direct_worker [-n 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.transport import bench_raw, join_spawned, start_broker, stop_broker

__all__ = ["direct_worker", "main", "session_round_trips"]

QUEUE = "tasks"
STOP = "stop-direct-worker"


def direct_worker(url: str) -> None:
    """Receive tasks, answer each no-op with an ``ok`` result, complete them."""
    from realtime_batch.protocol import ResultRecord, decode_task, encode_result
    from realtime_batch.transport import Message, open_transport

    with open_transport(url) as t:
        t.declare_queue(QUEUE)
        while True:
            deliveries = t.receive(QUEUE, max_messages=16, timeout=5)
            replies: dict[str, list[Message]] = {}
            stop = False
            for delivery in deliveries:
                task = decode_task(delivery.message.body)
                stop = stop or task.command == STOP
                started = time.time()
                record = ResultRecord(
                    session=task.session, job=task.job, task=task.task, status="ok",
                    value=None, error=None, engine="direct", attempt=task.attempt,
                    started_at=started, finished_at=time.time(),
                    session_key=task.session_key,  # a session keeps only results with it
                )  # fmt: skip
                message = Message(
                    encode_result(record), group=task.reply_to.group, correlation_id=task.task
                )
                replies.setdefault(task.reply_to.queue, []).append(message)
            for queue, messages in replies.items():
                t.send_and_complete(queue, messages, deliveries)
            if stop:
                return


def session_round_trips(session: Any, command: str, count: int) -> float:
    """p50 in µs of ``count`` sequential no-op tasks (after 100 to warm up)."""
    for _ in range(100):
        session.submit(command).result(timeout=60)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        session.submit(command).result(timeout=60)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def bench_direct(count: int, workers: int = 2) -> float:
    import realtime_batch as rb

    broker, url = start_broker()
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=direct_worker, args=(url,), daemon=True) for _ in range(workers)]
    try:
        for proc in procs:
            proc.start()
        with rb.Session(url) as session:
            p50 = session_round_trips(session, "noop.py", count)
            for _ in procs:
                session.submit(STOP)
    finally:
        try:
            join_spawned(procs)
        finally:
            stop_broker(broker)
    return p50


def bench_product(count: int) -> float:
    import realtime_batch as rb

    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp, "noop_direct.py")
        task.write_text("def run(*args, **kwargs):\n    return None\n")
        with rb.LocalPool(engines=2, task_files=[task]) as pool, rb.Session(pool) as session:
            return session_round_trips(session, task.name, count)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="round trips per system")
    args = parser.parse_args(argv)
    figures = {
        "raw pyzmq 3-hop, 1 worker (floor)": bench_raw(args.n, 1000, 64)["p50_us"],
        "Session + 2 direct workers": bench_direct(args.n),
        "Session + LocalPool(engines=2)": bench_product(args.n),
    }
    floor = figures["raw pyzmq 3-hop, 1 worker (floor)"]
    print(f"no-op round trip p50, {args.n} sequential tasks each")
    for name, value in figures.items():
        print(f"  {name:34}{value:8.0f} us  {value / floor:5.2f} x the floor")
    return figures


if __name__ == "__main__":
    main()
