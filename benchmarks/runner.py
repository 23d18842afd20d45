"""Run the workloads of one system, in a process of its own.

``python -m benchmarks.runner SYSTEM --mode quick|full --workloads a,b`` prints one
``RECORD {json}`` line per workload (and ``VERSIONS {json}``); the parent
(``benchmarks.cli``) starts one such process per system, so a crash or a leak stays
in that system's process. ``--client-memory N`` measures one client-memory
repetition and prints ``CLIENTMEM {json}`` (a fresh process per repetition, so the
RSS growth is not hidden by memory freed earlier).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import WORKLOADS
from benchmarks.procs import child_env
from benchmarks.systems import NotApplicableError, SystemUnavailableError, make_system
from benchmarks.workloads import (
    FULL,
    PAYLOADS,
    QUICK,
    Settings,
    client_memory_once,
    cold_start,
    error_record,
    idle,
    payload,
    roundtrip,
    sleep_10ms,
    summarise,
    throughput,
)

__all__ = ["client_memory", "main", "run_system"]

log = logging.getLogger(__name__)

#: workloads that share one started system, in the order they run (idle first: fresh workers)
RUNNING = ("idle", "roundtrip", *PAYLOADS, "throughput", "sleep-10ms")


def _emit(tag: str, payload_: dict[str, Any]) -> None:
    sys.stdout.write(f"{tag} {json.dumps(payload_)}\n")
    sys.stdout.flush()


def _guarded(system: str, workload: str, run: Callable[[], dict]) -> dict:
    try:
        return run()
    except NotApplicableError as exc:
        return error_record(system, workload, "n/a", str(exc))
    except Exception as exc:
        log.error("%s %s failed:\n%s", system, workload, traceback.format_exc())
        return error_record(system, workload, "error", f"{type(exc).__name__}: {exc}")


def client_memory(name: str, settings: Settings) -> dict:
    """Median client RSS growth over ``reps`` fresh processes, each with N outstanding tasks."""
    samples = []
    for _ in range(settings.start_reps):
        argv = [sys.executable, "-m", "benchmarks.runner", name, "--mode", settings.mode]
        argv += ["--client-memory", str(settings.client_memory_n)]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=child_env(), timeout=900, check=False
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("CLIENTMEM ")]
        if not lines:
            tail = (done.stderr or done.stdout)[-1500:]
            raise RuntimeError(f"client-memory run exited {done.returncode}: {tail}")
        samples.append(json.loads(lines[-1].split(" ", 1)[1]))
    n = settings.client_memory_n
    note = (
        None
        if n == FULL.client_memory_n
        else f"{n} tasks, {settings.start_reps} repetition (quick mode), not {FULL.client_memory_n}"
    )
    return summarise(name, "client-memory", samples, n=n, note=note)


def run_system(name: str, settings: Settings, workloads: list[str]) -> list[dict]:
    """Run ``workloads`` on system ``name``; return one record per workload."""
    records: list[dict] = []
    shared = [w for w in RUNNING if w in workloads]
    system = make_system(name)
    try:
        if shared:
            system.start()
            for _ in range(settings.warmup):
                system.call("noop")
    except SystemUnavailableError as exc:
        system.stop()
        return [error_record(name, w, "skipped", str(exc)) for w in workloads]
    except Exception as exc:
        log.error("%s did not start:\n%s", name, traceback.format_exc())
        system.stop()
        return [error_record(name, w, "error", f"start failed: {exc}") for w in workloads]
    try:
        _emit("VERSIONS", {"system": name, "versions": system.versions()})
        runs: dict[str, Callable[[], dict]] = {
            "idle": lambda: idle(system, settings),
            "roundtrip": lambda: roundtrip(system, settings),
            "throughput": lambda: throughput(system, settings),
            "sleep-10ms": lambda: sleep_10ms(system, settings),
        }
        for workload in PAYLOADS:
            runs[workload] = lambda w=workload: payload(system, settings, w)
        for workload in shared:
            log.info("%s: %s", name, workload)
            records.append(_guarded(name, workload, runs[workload]))
            _emit("RECORD", records[-1])
    finally:
        system.stop()
    if "cold-start" in workloads:
        records.append(
            _guarded(name, "cold-start", lambda: cold_start(lambda: make_system(name), settings))
        )
        _emit("RECORD", records[-1])
    if "client-memory" in workloads:
        records.append(_guarded(name, "client-memory", lambda: client_memory(name, settings)))
        _emit("RECORD", records[-1])
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the benchmark workloads of one system")
    parser.add_argument("system")
    parser.add_argument("--mode", choices=("quick", "full"), default="full")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--client-memory", type=int, default=None, metavar="N")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = QUICK if options.mode == "quick" else FULL
    if options.client_memory is not None:
        try:
            result = client_memory_once(make_system(options.system), options.client_memory)
        except SystemUnavailableError as exc:
            print(f"unavailable: {exc}", file=sys.stderr)
            return 2
        _emit("CLIENTMEM", result)
        return 0
    workloads = [w for w in options.workloads.split(",") if w]
    run_system(options.system, settings, workloads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
