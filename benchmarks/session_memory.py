"""``scale-session-memory``: a client session's RSS after 1,000 and after 1,000,000 tasks.

Issue #21's target: a session that has completed 1,000,000 tasks holds at most 50 MB
more than one that completed 1,000. Each count runs in a fresh process (memory freed
by one run cannot hide the other's growth): a ``Session`` over ``memory://`` with an
in-process fake engine (a thread that answers each task at once, through the real
protocol), tasks submitted in windows of at most ``WINDOW`` outstanding, results
taken as a caller would. The figure is the process's RSS after the last result,
minus its RSS before the session opened, raw and after ``malloc_trim`` (freed heap
returned to the system: what is still held, not the run's peak).

``python -m benchmarks.session_memory [--counts 1000,1000000]`` prints the records.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psutil

from benchmarks.procs import child_env
from benchmarks.workloads import error_record

__all__ = ["COUNTS", "WORKLOAD", "measure", "workload"]

log = logging.getLogger(__name__)

WORKLOAD = "scale-session-memory"
#: the task counts compared (the issue's)
COUNTS = (1_000, 1_000_000)
#: the counts of a quick run
QUICK_COUNTS = (1_000, 20_000)
#: outstanding tasks at most while submitting (bounds the peak, as a long-lived client does)
WINDOW = 1_000
#: seconds one counted run may take
RUN_TIMEOUT = 1800.0
MIB = 1024 * 1024


class _FakeEngine:
    """Answers every task on ``tasks`` with an ok result, through the real protocol."""

    def __init__(self, url: str) -> None:
        from realtime_batch.transport import open_transport

        self.transport = open_transport(url)
        self.transport.declare_queue("tasks")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from realtime_batch.protocol import ResultRecord, decode_task, encode_result
        from realtime_batch.transport import Message

        while not self._stop.is_set():
            batch = self.transport.receive("tasks", max_messages=512, timeout=0.1)
            by_mailbox: dict[tuple[str, str], list[Message]] = {}
            for delivery in batch:
                task = decode_task(delivery.message.body)
                record = ResultRecord(
                    session=task.session, job=task.job, task=task.task, status="ok",
                    engine="fake-engine", value=task.args[0] if task.args else None,
                    session_key=task.session_key,
                )  # fmt: skip
                mailbox = (task.reply_to.queue, task.reply_to.group)
                by_mailbox.setdefault(mailbox, []).append(
                    Message(encode_result(record), group=task.reply_to.group)
                )
            for (queue, _group), messages in by_mailbox.items():
                self.transport.send(queue, messages)
            if batch:
                self.transport.complete_many(batch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.transport.close()


def measure(count: int) -> dict[str, float]:
    """Run ``count`` tasks through one session in this process; return RSS and seconds."""
    from realtime_batch.orchestrator.session import Session

    process = psutil.Process()
    url = f"memory://session-memory-{uuid.uuid4().hex}"
    engine = _FakeEngine(url)
    gc.collect()
    before = process.memory_info().rss
    start = time.perf_counter()
    try:
        with Session(url, name="bench") as session:
            done = 0
            while done < count:
                size = min(WINDOW, count - done)
                futures = [session.submit("echo.py", i) for i in range(size)]
                for future in futures:
                    future.result(timeout=120)
                session.results()  # the caller takes its results
                done += size
            seconds = time.perf_counter() - start
            del futures
            gc.collect()
            after = process.memory_info().rss
            trimmed = _release_free_memory() and process.memory_info().rss
    finally:
        engine.close()
    figures = {"tasks": count, "rss_growth_mb": (after - before) / MIB, "seconds": seconds}
    if trimmed:
        figures["rss_growth_trimmed_mb"] = (trimmed - before) / MIB
    return figures


def _release_free_memory() -> bool:
    """Ask glibc to return freed heap pages to the system (``malloc_trim``); False elsewhere.

    Freed memory stays in the process's RSS otherwise (per-thread arenas), so RSS after a
    run shows the run's peak as much as what the session still holds; the trimmed
    figure shows what is held.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _measure_fresh(count: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.session_memory", "--one", str(count)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=child_env(), check=False
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("MEASURED ")]
    if done.returncode != 0 or not lines:
        tail = done.stderr[-800:]
        raise RuntimeError(f"the run of {count} tasks exited {done.returncode}: {tail}")
    return json.loads(lines[-1].split(" ", 1)[1])


def workload(system: str, counts: tuple[int, ...] = COUNTS) -> dict[str, Any]:
    """One record: RSS growth after each count (a fresh process each), and the difference.

    Measured for ``rtbatch-memory`` only: the session is the same on every transport,
    and the in-process fake engine keeps the 1,000,000-task run to minutes.
    """
    if system != "rtbatch-memory":
        return error_record(system, WORKLOAD, "n/a", "a client-session figure (rtbatch-memory)")
    samples = [_measure_fresh(count) for count in counts]
    first, last = samples[0], samples[-1]
    record: dict[str, Any] = {"system": system, "workload": WORKLOAD, "status": "ok"}
    for sample in samples:
        n = sample["tasks"]
        record[f"rss_growth_mb_{n}"] = sample["rss_growth_mb"]
        record[f"rss_growth_trimmed_mb_{n}"] = sample.get("rss_growth_trimmed_mb")
        record[f"seconds_{n}"] = sample["seconds"]
    record["rss_beyond_mb"] = last["rss_growth_mb"] - first["rss_growth_mb"]
    if "rss_growth_trimmed_mb" in last and "rss_growth_trimmed_mb" in first:
        record["rss_beyond_trimmed_mb"] = (
            last["rss_growth_trimmed_mb"] - first["rss_growth_trimmed_mb"]
        )
    record["note"] = f"{last['tasks']:,} vs {first['tasks']:,} tasks, fake engine over memory://"
    record["reps"] = 1
    record["spread"] = {"rss_beyond_mb": [record["rss_beyond_mb"]] * 2}
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default=",".join(str(c) for c in COUNTS))
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if options.one is not None:
        sys.stdout.write(f"MEASURED {json.dumps(measure(options.one))}\n")
        return 0
    counts = tuple(int(c) for c in options.counts.split(","))
    sys.stdout.write(f"RECORD {json.dumps(workload('rtbatch-memory', counts))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
