"""AMQP operations and round trips per task for the Service Bus transport, on the stand-in.

    python -m benchmarks.servicebus [--tasks 1000] [--json]

The stand-in (``tests/servicebus_standin.py``) counts, per connection, what the SDK
asks of it: connections, link attaches, ``$cbs`` put-tokens, transfers in (each one
awaited by the SDK: a round trip), credit flows (one per receive call), transfers out,
dispositions (each awaited: a round trip) and ``$management`` requests. Three phases run
one after the other, so each delta belongs to one side:

1. client submit: ``send(tasks, [N tasks])`` in one call (batched: the transport packs
   ``ServiceBusMessageBatch`` up to the 256 KiB link limit) or N calls (unbatched);
2. engine: receive (``max_messages`` and SDK prefetch), send the result to the client's
   session on the results queue, complete the task (what the engine does per task);
3. client results: read the mailbox (session) and complete each result, in peek-lock
   (the contract) or ``group_receive_mode="receive_and_delete"``.

Round trips are estimated from the counters: 3 per connection (TCP, SASL, AMQP open),
1 per attach, put-token, awaited transfer, awaited disposition, management request, and
1 per credit flow (a receive call that waits for the broker). Wall times are printed for
orientation only; this is a count benchmark, not a speed benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from benchmarks import ROOT

sys.path.insert(0, str(ROOT / "tests"))

__all__ = ["main", "round_trips", "run_scenario"]

OPERATIONS = (
    "connections",
    "attaches",
    "cbs_requests",
    "transfers_in",
    "messages_in",
    "flows_in",
    "transfers_out",
    "dispositions_in",
    "management_requests",
)


def round_trips(ops: dict[str, int]) -> int:
    """Estimated network round trips for a set of counter deltas."""
    return (
        3 * ops.get("connections", 0)
        + ops.get("attaches", 0)
        + ops.get("cbs_requests", 0)
        + ops.get("transfers_in", 0)
        + ops.get("dispositions_in", 0)
        + ops.get("management_requests", 0)
        + ops.get("flows_in", 0)
    )


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    b, a = before["total"], after["total"]
    return {k: a.get(k, 0) - b.get(k, 0) for k in OPERATIONS}


def run_scenario(
    standin: Any,
    tasks: int,
    *,
    batched: bool,
    prefetch: int,
    engine_batch: int,
    results_mode: str,
) -> dict[str, Any]:
    """Run the three phases once; returns counter deltas and timings per phase."""
    import uuid

    from realtime_batch.transport import Message, open_transport

    conn = standin.connection_string
    task_queue, results_queue = f"bench-tasks-{uuid.uuid4().hex[:6]}", "bench-results"
    client_id = f"client-{uuid.uuid4().hex[:6]}"
    phases: dict[str, Any] = {}
    with (
        open_transport(conn, group_receive_mode=results_mode) as client,
        open_transport(conn, prefetch=prefetch) as engine,
    ):
        client.declare_queue(task_queue)
        client.declare_queue(results_queue, grouped=True)
        payloads = [Message(b'{"task": %d, "args": [1000000]}' % i) for i in range(tasks)]

        before, start = standin.stats(), time.perf_counter()
        if batched:
            client.send(task_queue, payloads)
        else:
            for message in payloads:
                client.send(task_queue, message)
        phases["client submit"] = (_delta(before, standin.stats()), time.perf_counter() - start)

        before, start, done = standin.stats(), time.perf_counter(), 0
        while done < tasks:
            for delivery in engine.receive(task_queue, max_messages=engine_batch, timeout=5):
                reply = Message(b'{"ok": true, "value": 3.14}', group=client_id)
                engine.send(results_queue, reply)
                engine.complete(delivery)
                done += 1
        phases["engine"] = (_delta(before, standin.stats()), time.perf_counter() - start)

        before, start, got = standin.stats(), time.perf_counter(), 0
        while got < tasks:
            batch = client.receive(results_queue, max_messages=100, timeout=5, group=client_id)
            for delivery in batch:
                client.complete(delivery)
            got += len(batch)
        phases["client results"] = (_delta(before, standin.stats()), time.perf_counter() - start)
    return phases


SCENARIOS = {
    "unbatched, no prefetch, peek-lock results": dict(
        batched=False, prefetch=0, engine_batch=1, results_mode="peek_lock"
    ),
    "batched, prefetch 50, peek-lock results": dict(
        batched=True, prefetch=50, engine_batch=10, results_mode="peek_lock"
    ),
    "batched, prefetch 50, receive-and-delete results": dict(
        batched=True, prefetch=50, engine_batch=10, results_mode="receive_and_delete"
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Service Bus AMQP operations per task")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print JSON records instead")
    args = parser.parse_args(argv)

    from servicebus_standin import StandInProcess

    standin = StandInProcess()
    records = []
    try:
        for name, options in SCENARIOS.items():
            phases = run_scenario(standin, args.tasks, **options)
            for phase, (ops, seconds) in phases.items():
                rts = round_trips(ops)
                records.append(
                    {
                        "scenario": name,
                        "phase": phase,
                        "tasks": args.tasks,
                        "ops": ops,
                        "round_trips": rts,
                        "round_trips_per_task": rts / args.tasks,
                        "seconds": seconds,
                    }
                )
    finally:
        standin.stop()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(f"Service Bus transport on the stand-in, {args.tasks} tasks submitted at once")
    header = f"{'scenario / phase':66} {'xfer in':>7} {'flows':>6} {'disp':>6} {'mgmt':>5}"
    print(header + f" {'RTs':>6} {'RT/task':>8} {'s':>6}")
    for r in records:
        ops = r["ops"]
        label = f"{r['scenario']} / {r['phase']}"
        print(
            f"{label:66} {ops['transfers_in']:7d} {ops['flows_in']:6d} "
            f"{ops['dispositions_in']:6d} {ops['management_requests']:5d} "
            f"{r['round_trips']:6d} {r['round_trips_per_task']:8.3f} {r['seconds']:6.1f}"
        )
    for name in SCENARIOS:
        client = sum(
            r["round_trips"] for r in records if r["scenario"] == name and "client" in r["phase"]
        )
        print(f"client side, {name}: {client / args.tasks:.3f} round trips per task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
