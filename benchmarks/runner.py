"""Run the workloads of one system, in a process of its own.

``python -m benchmarks.runner SYSTEM --mode quick|full --workloads a,b`` prints one
``RECORD {json}`` line per workload (and ``VERSIONS {json}``); the parent
(``benchmarks.cli``) starts one such process per system, so a crash or a leak stays
in that system's process. ``--fresh N`` measures one cold start and then the
client's RSS growth with N outstanding tasks, and prints ``FRESH {json}`` (a fresh
process per repetition, so the growth is not hidden by memory freed earlier).

SIGTERM or SIGINT stops the system (and a running fresh process) and exits with
128 + the signal number; the processes started here also die with this one
(``PR_SET_PDEATHSIG``) if it is killed outright.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import WORKLOADS, session_memory
from benchmarks.procs import Interrupted, child_env, die_with_parent, interruptible, stop_process
from benchmarks.systems import NotApplicableError, System, SystemUnavailableError, make_system
from benchmarks.workflow import workflow
from benchmarks.workloads import (
    FULL,
    PAYLOADS,
    QUICK,
    Settings,
    error_record,
    fresh_once,
    idle,
    java_noop,
    outstanding_growth,
    payload,
    roundtrip,
    scaled,
    sleep_10ms,
    summarise,
    throughput,
)

__all__ = ["fresh_records", "fresh_runs", "main", "run_system"]

log = logging.getLogger(__name__)

#: seconds one fresh process may take
FRESH_TIMEOUT = 900.0
#: seconds a fresh process has to stop its system, after SIGTERM, before SIGKILL
FRESH_STOP_GRACE = 4.0

#: workloads that share one started system, in the order they run (idle first: fresh workers)
RUNNING = ("idle", "roundtrip", "java-noop", *PAYLOADS, "throughput", "sleep-10ms", "workflow")


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


def fresh_runs(name: str, settings: Settings, outstanding: int) -> list[dict[str, float]]:
    """``start_reps`` fresh processes, each: cold start, then ``outstanding`` tasks (if > 0)."""
    samples = []
    for _ in range(settings.start_reps):
        argv = [sys.executable, "-m", "benchmarks.runner", name, "--fresh", str(outstanding)]
        stdout, stderr, code = _run_fresh(argv)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("FRESH ")]
        if not lines:
            tail = (stderr or stdout)[-1500:]
            raise RuntimeError(f"the fresh run exited {code}: {tail}")
        samples.append(json.loads(lines[-1].split(" ", 1)[1]))
    return samples


def _run_fresh(argv: list[str]) -> tuple[str, str, int]:
    """Run one fresh process; stop it with SIGTERM (so it stops its system) if interrupted.

    It stays in this process's group, so a SIGTERM to the group reaches it too.
    """
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        preexec_fn=die_with_parent,
    )
    try:
        stdout, stderr = proc.communicate(timeout=FRESH_TIMEOUT)
    except BaseException:
        stop_process(proc, FRESH_STOP_GRACE)
        raise
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return stdout, stderr, proc.returncode


def _start_records(
    system: System,
    settings: Settings,
    workloads: list[str],
    samples: list[dict[str, float]],
    n: int,
) -> list[dict]:
    """The cold-start and client-memory records from fresh-start samples."""
    how = None if settings.fresh_processes else "quick mode: measured in the benchmark process"
    scaled_note = system.scale_reason if system.scale != 1.0 else None
    records = []
    if "cold-start" in workloads:
        cold = [{"seconds": s["seconds"]} for s in samples]
        records.append(summarise(system.name, "cold-start", cold, note=how))
    if "client-memory" in workloads:
        memory = [{k: v for k, v in s.items() if k != "seconds"} for s in samples]
        note = "; ".join(filter(None, [how, scaled_note])) or None
        records.append(summarise(system.name, "client-memory", memory, n=n, note=note))
    return records


def fresh_records(name: str, settings: Settings, workloads: list[str]) -> list[dict]:
    """The cold-start and client-memory records, from the same fresh processes."""
    wanted = [w for w in ("cold-start", "client-memory") if w in workloads]
    if not wanted:
        return []
    system = make_system(name)
    n = scaled(system, settings.client_memory_n) if "client-memory" in wanted else 0
    try:
        samples = fresh_runs(name, settings, n)
    except Exception as exc:
        log.error("%s fresh runs failed:\n%s", name, traceback.format_exc())
        return [error_record(name, w, "error", f"{type(exc).__name__}: {exc}") for w in wanted]
    return _start_records(system, settings, wanted, samples, n)


def run_system(name: str, settings: Settings, workloads: list[str]) -> list[dict]:
    """Run ``workloads`` on system ``name``; return one record per workload."""
    records: list[dict] = []
    shared = [w for w in RUNNING if w in workloads]
    in_process = (
        []
        if settings.fresh_processes
        else [w for w in ("cold-start", "client-memory") if w in workloads]
    )
    system = make_system(name)
    try:
        if shared or in_process:
            start = time.perf_counter()
            system.start()
            system.call("noop")
            cold = {"seconds": time.perf_counter() - start}
            for _ in range(settings.warmup):
                system.call("noop")
    except SystemUnavailableError as exc:
        system.stop()
        return [error_record(name, w, "skipped", str(exc)) for w in workloads]
    except Exception as exc:
        log.error("%s did not start:\n%s", name, traceback.format_exc())
        system.stop()
        return [error_record(name, w, "error", f"start failed: {exc}") for w in workloads]
    except BaseException:  # Interrupted: stop what started so far
        system.stop()
        raise
    try:
        _emit("VERSIONS", {"system": name, "versions": system.versions()})
        runs: dict[str, Callable[[], dict]] = {
            "idle": lambda: idle(system, settings),
            "roundtrip": lambda: roundtrip(system, settings),
            "java-noop": lambda: java_noop(system, settings),
            "throughput": lambda: throughput(system, settings),
            "sleep-10ms": lambda: sleep_10ms(system, settings),
            "workflow": lambda: workflow(system, settings),
        }
        for workload in PAYLOADS:
            runs[workload] = lambda w=workload: payload(system, settings, w)
        for workload in shared:
            log.info("%s: %s", name, workload)
            records.append(_guarded(name, workload, runs[workload]))
            _emit("RECORD", records[-1])
        if in_process:
            n = scaled(system, settings.client_memory_n) if "client-memory" in in_process else 0
            try:
                sample = {**cold, **(outstanding_growth(system, n) if n else {})}
                found = _start_records(system, settings, in_process, [sample], n)
            except Exception as exc:
                log.error("%s in-process start figures failed:\n%s", name, traceback.format_exc())
                found = [error_record(name, w, "error", f"{exc}") for w in in_process]
            for record in found:
                records.append(record)
                _emit("RECORD", record)
    finally:
        system.stop()
    found = fresh_records(name, settings, workloads) if settings.fresh_processes else []
    if session_memory.WORKLOAD in workloads:
        counts = session_memory.COUNTS if settings.mode == "full" else session_memory.QUICK_COUNTS
        found.append(
            _guarded(name, session_memory.WORKLOAD, lambda: session_memory.workload(name, counts))
        )
    for record in found:
        records.append(record)
        _emit("RECORD", record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the benchmark workloads of one system")
    parser.add_argument("system")
    parser.add_argument("--mode", choices=("quick", "full"), default="full")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--fresh", type=int, default=None, metavar="N", help="one cold start + N outstanding tasks"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with interruptible():
            return _main(options)
    except Interrupted as exc:
        log.warning("%s: stopped the system", exc)
        return exc.exit_code


def _main(options: argparse.Namespace) -> int:
    settings = QUICK if options.mode == "quick" else FULL
    if options.fresh is not None:
        try:
            result = fresh_once(make_system(options.system), options.fresh)
        except SystemUnavailableError as exc:
            print(f"unavailable: {exc}", file=sys.stderr)
            return 2
        _emit("FRESH", result)
        return 0
    workloads = [w for w in options.workloads.split(",") if w]
    run_system(options.system, settings, workloads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
