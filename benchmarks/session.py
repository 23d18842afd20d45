"""Session + LocalPool(engines=2) over ``zmq://`` against the raw pyzmq floor, in one run.

The issue-5 benchmark: a no-op task's round trip (p50/p99) through ``Session`` and a
two-engine ``LocalPool``, the throughput of 20,000 no-op tasks submitted at once, and
the wall time of 2,000 tasks of 10 ms against the ideal (2,000 x 10 ms / 2 engines =
10 s), beside the raw pyzmq brokered round trip (client -> broker -> worker -> broker
-> client), and beside the same pool with its engines in relay mode (each task
passing through the engine; direct mode, the default, lets the task workers take
tasks from the broker). It is the side-by-side harness (``python -m benchmarks``)
restricted to those systems and workloads, followed by the idle engine: one engine of a
``LocalPool`` over ``zmq://`` after it ran a task, its RSS and CPU (with its warm
task worker) over a few seconds::

    python -m benchmarks.session [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.cli import bench

IDLE_WINDOW = 5.0  # seconds


def idle_engine(window: float = IDLE_WINDOW) -> dict[str, float]:
    """RSS (MB) and CPU (% of one core) of one idle engine, alone and with its worker."""
    import realtime_batch as rb

    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp, "noop_idle.py")
        task.write_text("def run():\n    return None\n")
        pool = rb.LocalPool(engines=1, transport="zmq://127.0.0.1:0", task_files=[task])
        with pool, rb.Session(pool) as session:
            session.submit("noop_idle.py").result(timeout=60)  # warm: a task has run
            engine = psutil.Process(pool.engine_pids()[0])
            procs = [engine, *engine.children(recursive=True)]
            time.sleep(0.5)
            before = [p.cpu_times() for p in procs]
            time.sleep(window)
            after = [p.cpu_times() for p in procs]
            rss = [p.memory_info().rss / 2**20 for p in procs]
    cpu = [
        max(0.0, (a.user + a.system) - (b.user + b.system)) / window * 100
        for a, b in zip(after, before, strict=True)
    ]
    return {
        "engine_rss_mb": rss[0],
        "engine_cpu_pct": cpu[0],
        "with_worker_rss_mb": sum(rss),
        "with_worker_cpu_pct": sum(cpu),
        "processes": len(procs),
    }


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    bench.main(
        [
            "--systems",
            "raw-zmq,rtbatch-zmq",
            "--workloads",
            "roundtrip,throughput,sleep-10ms",
            "--no-docs",
            "--no-install",
            *args,
        ],
        prog_name="python -m benchmarks.session",
        standalone_mode=False,
    )
    window = 1.0 if "--quick" in args else IDLE_WINDOW
    figures = idle_engine(window)
    print(
        f"idle engine over {window:.0f} s: engine {figures['engine_rss_mb']:.1f} MB "
        f"RSS, {figures['engine_cpu_pct']:.2f} % CPU; with its task worker "
        f"({figures['processes']} processes) {figures['with_worker_rss_mb']:.1f} MB, "
        f"{figures['with_worker_cpu_pct']:.2f} % CPU (target < 60 MB, < 1 %)"
    )


if __name__ == "__main__":
    main()
