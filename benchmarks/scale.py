"""The ``scale`` family: what grows with engines, sessions, queued tasks and idle engines.

    python -m benchmarks --scale [--quick]       (or: python -m benchmarks.scale --mode quick)

Each workload runs realtime-batch over ``zmq://`` (a ``LocalPool``: the broker and
the engines as processes) at several sizes and prints one ``RECORD {json}`` line:

* ``scale-engines``: no-op throughput and 10 ms tasks at 2, 8 and 32 engines: tasks/s,
  CPU per task of the whole tree, % of ideal, and how many tasks each engine ran; as
  many 100 ms tasks on the largest pool (% of ideal where the CPU is not the limit); and
  the pool's start: seconds, and CPU seconds per engine (the engine and its worker);
* ``scale-sessions``: 1, 8 and 32 sessions (threads of one client process) sharing one
  pool of two engines: aggregate tasks/s and the client's CPU per task;
* ``scale-queued``: 100,000 and 1,000,000 tasks queued with no engine running: the
  broker's memory per task, the submit rate, then the drain rate of 8 engines;
* ``scale-idle``: 32 and 256 simulated idle engines (``benchmarks.idle_engines``): the
  broker's CPU.

Figures of one run sit side by side; the machine is shared and noisy, so the ratios
within a run say more than any single figure.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks.idle_engines import idle_broker_cpu
from benchmarks.procs import cpu_seconds
from benchmarks.systems.rtbatch import TASK_FILES
from benchmarks.workloads import SLEEP_SECONDS

__all__ = [
    "FULL_SIZES",
    "QUICK_SIZES",
    "SCALE_WORKLOADS",
    "ScaleSizes",
    "main",
    "run_scale",
    "scale_engines",
    "scale_idle",
    "scale_queued",
    "scale_sessions",
]

log = logging.getLogger(__name__)

SCALE_WORKLOADS = (
    "scale-engines",
    "scale-sessions",
    "scale-queued",
    "scale-idle",
    "scale-idle-pool",
)
SYSTEM = "rtbatch-zmq"
#: the longer tasks of scale-engines' largest pool: the per-task CPU of 32 engines'
#: 10 ms tasks needs more than two cores; 100 ms tasks need a tenth of it, so their
#: % of ideal shows the spread and the prefetch alone
LONG_SLEEP_SECONDS = 0.1
RESULT_TIMEOUT = 1800.0


@dataclass(frozen=True)
class ScaleSizes:
    """The sizes of one scale run."""

    engines: tuple[int, ...] = (2, 8, 32)
    noop_n: int = 20_000
    sleep_n: int = 2_000
    sessions: tuple[int, ...] = (1, 8, 32)
    session_tasks: int = 20_000
    session_engines: int = 2
    queued: tuple[int, ...] = (100_000, 1_000_000)
    drain_engines: int = 8
    idle_engines: tuple[int, ...] = (32, 256)
    idle_window: float = 10.0
    idle_pool: tuple[int, ...] = (2, 16)
    idle_settle: float = 2.0


FULL_SIZES = ScaleSizes()
QUICK_SIZES = ScaleSizes(
    engines=(2, 8),
    noop_n=1_000,
    sleep_n=200,
    sessions=(1, 8),
    session_tasks=1_000,
    queued=(10_000,),
    idle_engines=(32, 256),
    idle_window=2.0,
    idle_pool=(2,),
)


class _Tree:
    """CPU seconds of this process and of every process it started."""

    def __init__(self) -> None:
        self.me = psutil.Process()

    def cpu(self) -> tuple[float, float]:
        """``(this process, its descendants)`` CPU seconds so far."""
        children = sum(cpu_seconds(p) for p in self.me.children(recursive=True))
        return cpu_seconds(self.me), children


def _start_cpu(pool: Any) -> float:
    """CPU seconds per engine of a pool that has just started: each engine process and
    its task worker, from their start until all engines are ready (issue #21)."""
    pids = pool.engine_pids()
    total = 0.0
    for pid in pids:
        try:
            engine = psutil.Process(pid)
            procs = [engine, *engine.children(recursive=True)]
        except psutil.Error:
            continue
        total += sum(cpu_seconds(p) for p in procs)
    return total / max(1, len(pids))


def _pool(engines: int) -> Any:
    from realtime_batch.emulator.local_pool import LocalPool

    return LocalPool(engines=engines, task_files=TASK_FILES)


def _wait_all(futures: list[concurrent.futures.Future]) -> list[Any]:
    _done, not_done = concurrent.futures.wait(futures, timeout=RESULT_TIMEOUT)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(futures)} tasks had no result")
    return [f.result() for f in futures]


def _noop_run(session: Any, n: int, tree: _Tree) -> dict[str, float]:
    (client0, kids0), start = tree.cpu(), time.perf_counter()
    _wait_all([session.submit("noop.py") for _ in range(n)])
    elapsed = time.perf_counter() - start
    client1, kids1 = tree.cpu()
    return {
        "tasks_per_s": n / elapsed,
        "cpu_us_per_task": 1e6 * ((client1 - client0) + (kids1 - kids0)) / n,
        "client_cpu_us_per_task": 1e6 * (client1 - client0) / n,
    }


def _sleep_run(
    session: Any, n: int, engines: int, tree: _Tree, seconds: float = SLEEP_SECONDS
) -> dict[str, Any]:
    """``n`` tasks that sleep ``seconds``: % of ideal, the spread over the engines, and
    what the whole tree's CPU had to give (per task, and cores busy while they ran)."""
    (client0, kids0), start = tree.cpu(), time.perf_counter()
    where = _wait_all([session.submit("sleep_where.py", seconds) for _ in range(n)])
    elapsed = time.perf_counter() - start
    client1, kids1 = tree.cpu()
    cpu = (client1 - client0) + (kids1 - kids0)
    per_engine = sorted(collections.Counter(where).values())
    per_engine = [0] * (engines - len(per_engine)) + per_engine
    return {
        "efficiency": 100.0 * (n * seconds / engines) / elapsed,
        "tasks_per_engine": per_engine,
        "fair_share": n / engines,
        "sleep_cpu_us_per_task": 1e6 * cpu / n,
        "sleep_cores_busy": cpu / elapsed,
    }


def scale_engines(sizes: ScaleSizes) -> dict[str, Any]:
    """No-op throughput and 10 ms tasks at each engine count, one pool after the other."""
    from realtime_batch.orchestrator.session import Session

    tree = _Tree()
    figures: dict[str, Any] = {}
    for engines in sizes.engines:
        started = time.perf_counter()
        with _pool(engines) as pool:
            start_s = time.perf_counter() - started
            start_cpu = _start_cpu(pool)
            with Session(pool, keep_results=False) as session:
                _wait_all([session.submit("noop.py") for _ in range(50)])  # warm
                noop = _noop_run(session, sizes.noop_n, tree)
                sleep = _sleep_run(session, sizes.sleep_n, engines, tree)
                if engines == max(sizes.engines):  # the same spread, CPU not the limit
                    long = _sleep_run(session, sizes.sleep_n, engines, tree, LONG_SLEEP_SECONDS)
                    sleep["long_efficiency"] = long["efficiency"]
        figures[str(engines)] = {
            "pool_start_s": start_s,
            "start_cpu_s_per_engine": start_cpu,
            **noop,
            **sleep,
        }
        log.info("scale-engines %d: %s", engines, figures[str(engines)])
    low, high = str(min(sizes.engines)), str(max(sizes.engines))
    return {
        "workload": "scale-engines",
        "sizes": figures,
        "throughput_ratio": figures[high]["tasks_per_s"] / figures[low]["tasks_per_s"],
    }


def scale_sessions(sizes: ScaleSizes) -> dict[str, Any]:
    """Aggregate no-op throughput of N sessions (threads) sharing one pool."""
    from realtime_batch.orchestrator.session import Session

    tree = _Tree()
    figures: dict[str, Any] = {}
    with _pool(sizes.session_engines) as pool:
        for count in sizes.sessions:
            sessions = [Session(pool, keep_results=False) for _ in range(count)]
            try:
                for session in sessions:
                    _wait_all([session.submit("noop.py") for _ in range(5)])
                each = max(1, sizes.session_tasks // count)
                barrier = threading.Barrier(count + 1)

                def drive(session: Any, each: int = each, barrier: Any = barrier) -> None:
                    barrier.wait()
                    _wait_all([session.submit("noop.py") for _ in range(each)])

                threads = [threading.Thread(target=drive, args=(s,)) for s in sessions]
                for thread in threads:
                    thread.start()
                client0, _ = tree.cpu()
                start = time.perf_counter()
                barrier.wait()
                for thread in threads:
                    thread.join()
                elapsed = time.perf_counter() - start
                client1, _ = tree.cpu()
            finally:
                for session in sessions:
                    session.close()
            total = each * count
            figures[str(count)] = {
                "tasks_per_s": total / elapsed,
                "client_cpu_us_per_task": 1e6 * (client1 - client0) / total,
            }
            log.info("scale-sessions %d: %s", count, figures[str(count)])
    return {"workload": "scale-sessions", "sizes": figures}


def scale_queued(sizes: ScaleSizes) -> dict[str, Any]:
    """Tasks queued with no engine: broker memory per task, submit and drain rates."""
    from realtime_batch.orchestrator.session import Session
    from realtime_batch.transport import open_transport

    figures: dict[str, Any] = {}
    for count in sizes.queued:
        with _pool(0) as pool:
            broker = psutil.Process(pool.broker_pid)
            rss0 = broker.memory_info().rss
            with (
                Session(pool, keep_results=False) as session,
                open_transport(pool.transport_url) as transport,
            ):
                start = time.perf_counter()
                futures = [session.submit("noop.py") for _ in range(count)]
                while transport.queue_counts(pool.queue).waiting < count:
                    time.sleep(0.05)
                submit_s = time.perf_counter() - start
                rss1 = broker.memory_info().rss
                start = time.perf_counter()
                pool.resize(sizes.drain_engines)
                _wait_all(futures)
                drain_s = time.perf_counter() - start
        figures[str(count)] = {
            "broker_bytes_per_task": (rss1 - rss0) / count,
            "submit_per_s": count / submit_s,
            "drain_per_s": count / drain_s,
        }
        log.info("scale-queued %d: %s", count, figures[str(count)])
    return {"workload": "scale-queued", "sizes": figures}


def scale_idle(sizes: ScaleSizes) -> dict[str, Any]:
    """The broker's CPU with each number of simulated idle engines."""
    figures = {str(n): idle_broker_cpu(n, sizes.idle_window) for n in sizes.idle_engines}
    return {"workload": "scale-idle", "sizes": figures}


def scale_idle_pool(sizes: ScaleSizes) -> dict[str, Any]:
    """Real idle engines (LocalPool over zmq://, one session open): the CPU of each kind
    of process over ``idle_window`` seconds, once their receives went back to waiting.

    The simulated engines of ``scale-idle`` show the broker's side only; this shows what
    an idle engine and its worker cost themselves (a heartbeat thread that polled every
    millisecond while a receive was parked cost each ~3 % of a core, unseen by the
    broker's figure)."""
    from realtime_batch.orchestrator.session import Session

    figures: dict[str, Any] = {}
    for engines in sizes.idle_pool:
        with _pool(engines) as pool, Session(pool, keep_results=False) as session:
            _wait_all([session.submit("noop.py") for _ in range(2 * engines)])
            time.sleep(sizes.idle_settle)
            roles: dict[str, list[psutil.Process]] = {"engine": [], "worker": []}
            for pid in pool.engine_pids():
                engine = psutil.Process(pid)
                roles["engine"].append(engine)
                roles["worker"] += engine.children()
            roles["broker"] = [psutil.Process(pool.broker_pid)]
            roles["client"] = [psutil.Process()]
            before = {role: sum(map(cpu_seconds, procs)) for role, procs in roles.items()}
            time.sleep(sizes.idle_window)
            used = {role: sum(map(cpu_seconds, procs)) - before[role]
                    for role, procs in roles.items()}  # fmt: skip
        pct = {role: 100.0 * seconds / sizes.idle_window for role, seconds in used.items()}
        figures[str(engines)] = {
            "engine_cpu_pct": pct["engine"] / engines,
            "worker_cpu_pct": pct["worker"] / engines,
            "broker_cpu_pct": pct["broker"],
            "client_cpu_pct": pct["client"],
        }
        log.info("scale-idle-pool %d: %s", engines, figures[str(engines)])
    return {"workload": "scale-idle-pool", "sizes": figures}


RUNS = {
    "scale-engines": scale_engines,
    "scale-sessions": scale_sessions,
    "scale-queued": scale_queued,
    "scale-idle": scale_idle,
    "scale-idle-pool": scale_idle_pool,
}


def run_scale(sizes: ScaleSizes, workloads: tuple[str, ...] = SCALE_WORKLOADS) -> list[dict]:
    """Run ``workloads``; one record each (``status`` ``ok`` or ``error``)."""
    records = []
    for workload in workloads:
        try:
            record = {"system": SYSTEM, "status": "ok", **RUNS[workload](sizes)}
        except Exception as exc:
            log.exception("%s failed", workload)
            record = {"system": SYSTEM, "workload": workload, "status": "error",
                      "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        records.append(record)
        sys.stdout.write(f"RECORD {json.dumps(record)}\n")
        sys.stdout.flush()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("quick", "full"), default="full")
    parser.add_argument("--workloads", default=",".join(SCALE_WORKLOADS))
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    chosen = tuple(w for w in options.workloads.split(",") if w)
    unknown = [w for w in chosen if w not in RUNS]
    if unknown:
        parser.error(f"unknown workloads: {', '.join(unknown)}")
    run_scale(QUICK_SIZES if options.mode == "quick" else FULL_SIZES, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
