"""The durable broker's journal (``rtbatch broker --data-dir``): damage is detected, never
silently turned into an empty broker; ``--recover`` starts over knowingly; the files
are private (issue 15, "durable journal")."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from realtime_batch.transport import Message, open_transport

COUNT = 1000
QUEUE = "tasks"
DB = "broker.sqlite3"


class Broker:
    """A durable broker process on a free loopback port."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq"]
        cmd += ["--bind", "tcp://127.0.0.1:0", "--data-dir", str(data_dir), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url: str | None = None
        end = time.monotonic() + 30
        while time.monotonic() < end and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    self.url = "zmq://" + line.split()[1].removeprefix("tcp://")
                break

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stop the process with ``sig``; return its stderr."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            _out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=20)
        return err


@pytest.fixture
def brokers(no_leaked_processes):
    """Start durable brokers for one test; every one is stopped at teardown."""
    started: list[Broker] = []

    def _start(data_dir: Path, *extra: str) -> Broker:
        broker = Broker(data_dir, *extra)
        started.append(broker)
        return broker

    yield _start
    for broker in started:
        broker.stop(signal.SIGKILL)


def fill(brokers, data_dir: Path, sig: int) -> None:
    """Journal ``COUNT`` acknowledged 1 KB messages, then stop the broker with ``sig``."""
    broker = brokers(data_dir)
    assert broker.url, "the broker did not start"
    with open_transport(broker.url) as t:
        t.declare_queue(QUEUE)
        for first in range(0, COUNT, 100):
            t.send(QUEUE, [Message(b"%04d" % i + b"x" * 1020) for i in range(first, first + 100)])
    broker.stop(sig)


def refuses_to_start(brokers, data_dir: Path, *words: str) -> str:
    """The broker exits non-zero with one clear line (no traceback) naming ``words``."""
    broker = brokers(data_dir)
    err = broker.stop(signal.SIGTERM) if broker.url else broker.stop()
    assert broker.url is None, f"the broker started on a damaged journal: {err}"
    assert broker.proc.returncode not in (0, None)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for word in ("journal", "--recover", *words):
        assert word in lines[0], lines[0]
    return lines[0]


def restored(brokers, data_dir: Path) -> int:
    """Start the broker and count the messages it serves from the journal."""
    broker = brokers(data_dir)
    assert broker.url, "the broker did not start"
    got = 0
    with open_transport(broker.url) as t:
        while batch := t.receive(QUEUE, max_messages=500, timeout=1):
            got += len(batch)
            t.complete_many(batch)
    broker.stop()
    return got


# -- no false alarms -------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "killed"])
def test_an_intact_journal_restores_every_message(brokers, tmp_path, sig):
    fill(brokers, tmp_path, sig)
    assert restored(brokers, tmp_path) == COUNT


# -- damage ----------------------------------------------------------------------------------
def test_a_journal_truncated_to_zero_bytes_is_refused(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGTERM)
    os.truncate(tmp_path / DB, 0)
    refuses_to_start(brokers, tmp_path, str(COUNT))


def test_a_journal_replaced_by_an_empty_file_is_refused(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGTERM)
    (tmp_path / DB).unlink()
    (tmp_path / DB).touch()
    refuses_to_start(brokers, tmp_path)


def test_a_journal_replaced_by_another_journal_is_refused(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGTERM)
    other = tmp_path / "other"
    broker = brokers(other)  # a valid journal of another broker, the same queue, empty
    with open_transport(broker.url) as t:
        t.declare_queue(QUEUE)
    broker.stop()
    os.replace(other / DB, tmp_path / DB)
    refuses_to_start(brokers, tmp_path)


def test_a_deleted_write_ahead_log_after_a_kill_is_refused(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGKILL)
    wal = tmp_path / f"{DB}-wal"
    assert wal.exists()  # the acknowledged messages are there, not yet checkpointed
    wal.unlink()
    refuses_to_start(brokers, tmp_path)


def test_a_half_cut_journal_is_refused_with_one_line(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGTERM)
    size = (tmp_path / DB).stat().st_size
    os.truncate(tmp_path / DB, size // 2)
    refuses_to_start(brokers, tmp_path)


def test_a_bad_row_is_refused_with_one_line(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGTERM)
    db = sqlite3.connect(tmp_path / DB)
    with db:
        db.execute("UPDATE messages SET meta = x'00ff' WHERE seq = (SELECT MIN(seq) FROM messages)")
    db.close()
    refuses_to_start(brokers, tmp_path)


# -- recovery --------------------------------------------------------------------------------
def test_recover_moves_the_damaged_journal_aside_and_starts_empty(brokers, tmp_path):
    fill(brokers, tmp_path, signal.SIGTERM)
    os.truncate(tmp_path / DB, 0)
    broker = brokers(tmp_path, "--recover")
    assert broker.url, "--recover did not start the broker"
    with open_transport(broker.url) as t:
        t.declare_queue(QUEUE)
        t.send(QUEUE, Message(b"after recovery"))
    err = broker.stop()
    assert f"{COUNT} message(s) lost" in err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{DB}.damaged-")]
    assert aside, "the damaged journal was not kept"
    assert restored(brokers, tmp_path) == 1  # the new journal works, no --recover needed


# -- permissions -----------------------------------------------------------------------------
def test_journal_files_are_private(brokers, tmp_path):
    data_dir = tmp_path / "data"
    old = os.umask(0o022)
    try:
        broker = brokers(data_dir)
    finally:
        os.umask(old)
    assert broker.url
    with open_transport(broker.url) as t:
        t.declare_queue(QUEUE)
        t.send(QUEUE, Message(b"secret arguments"))
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = list(data_dir.iterdir())
        assert any(p.name == f"{DB}-wal" for p in files)
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    broker.stop()
