"""Interleaved A/B: no-op round trips through pools that differ in one setting, in one run.

On a shared or virtual machine the same code's round trip moves by tens of
microseconds from one run to the next, more than many changes are worth. Here
every variant gets its own ``LocalPool`` + ``Session`` (all started at once, so
they see the same machine), and the timed blocks alternate between them: each
variant's figure is the median of all its blocks' samples::

    python -m benchmarks.ab --spin-us 100,300          # the broker's polling window
    python -m benchmarks.ab --spin-us 0,300 --blocks 10 -n 100

A list of values makes one variant per value. Idle pools wait at the broker between their
blocks, which costs the measured one a little CPU, the same for every variant.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

__all__ = ["main", "run"]

_TASK = "noop_ab.py"
_WARM_UP = 200


def _variants(spin_us: list[str]) -> list[dict[str, str]]:
    return [{"spin_us": value} for value in spin_us]


def _label(variant: dict[str, str]) -> str:
    return f"spin {variant['spin_us']} µs"


def run(
    variants: list[dict[str, str]], *, blocks: int, per_block: int, engines: int = 2
) -> dict[str, dict[str, float]]:
    """Alternate timed blocks between the variants; return p50/p90 (µs) per variant."""
    import realtime_batch as rb

    samples: dict[str, list[float]] = {_label(v): [] for v in variants}
    if len(samples) != len(variants):
        raise SystemExit("two variants are the same")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        task = Path(tmp, _TASK)
        task.write_text("def run(*args, **kwargs):\n    return None\n")
        sessions = []
        for variant in variants:
            pool = stack.enter_context(
                rb.LocalPool(
                    engines=engines,
                    transport="zmq://127.0.0.1:0",
                    task_files=[task],
                    broker_args=["--spin-us", variant["spin_us"]],
                )
            )
            session = stack.enter_context(rb.Session(pool, keep_results=False))
            for _ in range(_WARM_UP):
                session.submit(_TASK).result(timeout=60)
            sessions.append((_label(variant), session))
        for block in range(blocks * len(sessions)):
            label, session = sessions[block % len(sessions)]
            for _ in range(20):  # the other pools just went quiet: settle in
                session.submit(_TASK).result(timeout=60)
            times = samples[label]
            for _ in range(per_block):
                start = time.perf_counter()
                session.submit(_TASK).result(timeout=60)
                times.append(time.perf_counter() - start)
    return {
        label: {
            "p50_us": statistics.median(times) * 1e6,
            "p90_us": statistics.quantiles(times, n=10)[-1] * 1e6,
            "n": len(times),
        }
        for label, times in samples.items()
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spin-us", default="300", help="comma-separated (default: 300)")
    parser.add_argument("--worker-mode", help=argparse.SUPPRESS)  # removed: refused below
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per variant")
    parser.add_argument("-n", type=int, default=200, help="round trips per block")
    parser.add_argument("--engines", type=int, default=2)
    args = parser.parse_args(argv)
    if args.worker_mode is not None:
        from realtime_batch.engine.errors import WORKER_MODE_REMOVED

        parser.error(f"--worker-mode: {WORKER_MODE_REMOVED}")
    variants = _variants(args.spin_us.split(","))
    if len(variants) < 2:
        parser.error("give two values or more for --spin-us")
    figures = run(variants, blocks=args.blocks, per_block=args.n, engines=args.engines)
    first = next(iter(figures.values()))["p50_us"]
    print(f"no-op round trip, {args.blocks} blocks of {args.n} per variant, interleaved")
    for label, fig in figures.items():
        print(
            f"  {label:<28} p50 {fig['p50_us']:6.0f} µs  p90 {fig['p90_us']:6.0f} µs  "
            f"{fig['p50_us'] / first:5.2f} x the first  (n={fig['n']})"
        )
    return figures


if __name__ == "__main__":
    main()
