"""(d) A client that dies: its mailbox does not grow without bound.

Results carry a time-to-live (the engine's ``result_ttl``). A SIGKILLed client
never reads its mailbox again; the engines still answer the tasks it left
behind, and the broker drops those results once their TTL has passed, without
anybody receiving from that mailbox. The durable broker's journal shows the
broker's own count of queued messages, read here from outside the broker.
"""

from __future__ import annotations

import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import FAULT_TASKS, wait_until

import realtime_batch as rb
from realtime_batch.engine import Engine
from realtime_batch.transport import Message, open_transport
from realtime_batch.transport.base import QueueOptions
from realtime_batch.transport.store import QueueStore
from realtime_batch.transport.zeromq.journal import JOURNAL_FILE

RESULT_TTL = 2.0
TASKS = 40

# Submits TASKS slow-ish tasks, reports its mailbox once the first result is in, then
# waits to be killed with the rest outstanding.
DOOMED_CLIENT = """
import sys, time
import realtime_batch as rb
s = rb.Session(sys.argv[1], name="doomed")
fs = [s.submit("work.py", i, seconds=0.05) for i in range(int(sys.argv[2]))]
fs[0].result(timeout=60)
print("MAILBOX", s.id, flush=True)
time.sleep(300)
"""


def _queued(journal: Path, queue: str) -> int:
    """Messages the durable broker holds in ``queue`` (leased ones included)."""
    with sqlite3.connect(journal, timeout=10) as db:
        return db.execute("SELECT count(*) FROM messages WHERE queue = ?", (queue,)).fetchone()[0]


@pytest.fixture
def doomed_client():
    procs: list[subprocess.Popen[str]] = []

    def _start(url: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", DOOMED_CLIENT, url, str(TASKS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert select.select([proc.stdout], [], [], 60)[0], "the client did not start"
        line = proc.stdout.readline()
        assert line.startswith("MAILBOX "), line
        return proc, line.split()[1]

    try:
        yield _start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_leaked_processes")
def test_mailbox_of_a_killed_client_empties_after_the_result_ttl(
    tmp_path, doomed_client, fault_report
):
    data_dir = tmp_path / "broker-data"
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "work.py").write_bytes((FAULT_TASKS / "work.py").read_bytes())
    with rb.LocalPool(engines=0, broker_args=["--data-dir", str(data_dir)]) as pool:
        # An engine in this process: its result TTL is short for the test (a day by default).
        engine = Engine(pool.transport_url, "tasks", tasks_dir, prefetch=4, result_ttl=RESULT_TTL)
        engine.start()
        try:
            proc, mailbox = doomed_client(pool.transport_url)
            proc.kill()
            proc.wait(10)
            journal = data_dir / JOURNAL_FILE
            peak = 0

            def drained() -> bool:
                nonlocal peak
                waiting = _queued(journal, "results")
                peak = max(peak, waiting)
                return waiting == 0 and _queued(journal, "tasks") == 0

            assert wait_until(drained, 90, interval=0.2), "the dead client's mailbox never emptied"
            answered = engine.tasks_done
        finally:
            engine.stop()
        # The mailbox is empty for a receiver too (nothing expired is left to skip).
        with open_transport(pool.transport_url) as transport:
            assert transport.receive("results", group=mailbox, timeout=0.5) == []

    assert peak >= 5, f"the mailbox never filled up (peak {peak}): the test proved nothing"
    assert answered >= TASKS  # the engine answered every task the dead client left
    fault_report.record(
        "d_dead_client_zmq",
        backend="zmq (durable broker)",
        tasks_left_by_dead_client=TASKS,
        result_ttl_seconds=RESULT_TTL,
        mailbox_peak=peak,
        mailbox_after_ttl=0,
    )


def test_store_purges_an_unread_mailbox_without_a_receiver():
    store = QueueStore()
    store.declare("results", QueueOptions())
    store.put("results", [Message(b"r", group="dead", ttl=2.0) for _ in range(100)], now=0.0)
    store.put("results", [Message(b"r", group="alive", ttl=60.0)], now=0.0)
    assert store.purge_expired(1.0) == 0
    assert store.purge_expired(2.5) == 100
    assert store.depth("results") == 1  # the live mailbox's message stays
    assert store.expired_count == 100


def test_memory_backend_drops_expired_results_of_an_unread_mailbox():
    with open_transport("memory://faults-ttl") as transport:
        transport.declare_queue("results", grouped=True)
        transport.send("results", [Message(b"r", group="dead", ttl=0.2) for _ in range(10)])
        store = transport._broker.store  # the in-process broker's state, for the count
        assert store.depth("results") == 10
        time.sleep(1.3)  # past the TTL and the purge interval; only sends happen below
        transport.send("results", Message(b"x", group="alive"))
        assert store.depth("results") == 1
