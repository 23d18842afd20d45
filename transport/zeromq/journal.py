"""Durable broker state: a SQLite (WAL) journal of queues and accepted messages.

``SqliteJournal`` is a ``StoreListener``: the store reports every accepted message
(``on_put``), every message that leaves for good (``on_remove``) and every delivery
(``on_delivery``). Writes collect in one transaction that the broker commits with
``flush()`` before it acknowledges a request, so an acknowledged send survives a
SIGKILLed broker. On start, ``restore()`` puts queues and messages back into a
fresh ``QueueStore``; leases are not journaled, so messages leased at the crash
are delivered again (with their journaled ``delivery_count``).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import orjson

from ..base import Message, QueueOptions
from ..store import QueueStore

__all__ = ["JOURNAL_FILE", "SqliteJournal"]

logger = logging.getLogger(__name__)

JOURNAL_FILE = "broker.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    lock_duration REAL NOT NULL,
    max_delivery_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL,
    meta BLOB NOT NULL,
    body BLOB NOT NULL
);
"""


class SqliteJournal:
    """Journal of a broker's queues and messages in ``<data_dir>/broker.sqlite3``.

    Args:
        data_dir: directory for the database (created if missing).
    """

    def __init__(self, data_dir: str | Path) -> None:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / JOURNAL_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL before flush() returns, which survives the
        # process being killed (not a power cut, which would need FULL and an fsync).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._dirty = False

    # -- StoreListener -------------------------------------------------------------------------
    def on_put(self, queue: str, entry_seq: int, message: Message, enqueued_at: float) -> None:
        meta = orjson.dumps(
            [message.id, message.group, message.correlation_id, message.properties, message.ttl]
        )
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, 0, ?, ?)",
            (entry_seq, queue, enqueued_at, meta, message.body),
        )

    def on_remove(self, queue: str, entry_seq: int) -> None:
        self._begin()
        self._db.execute("DELETE FROM messages WHERE seq = ?", (entry_seq,))

    def on_delivery(self, queue: str, entry_seq: int, delivery_count: int) -> None:
        self._begin()
        self._db.execute(
            "UPDATE messages SET delivery_count = ? WHERE seq = ?", (delivery_count, entry_seq)
        )

    # -- broker side ---------------------------------------------------------------------------
    def on_declare(self, name: str, options: QueueOptions) -> None:
        """Record a newly declared queue."""
        self._begin()
        self._db.execute(
            "INSERT OR IGNORE INTO queues VALUES (?, ?, ?)",
            (name, options.lock_duration, options.max_delivery_count),
        )

    def flush(self) -> None:
        """Commit what was journaled since the last flush (before acknowledging it)."""
        if self._dirty:
            self._db.execute("COMMIT")
            self._dirty = False

    def restore(self, store: QueueStore) -> int:
        """Declare the journaled queues in ``store`` and put their messages back."""
        for name, lock_duration, max_delivery_count in self._db.execute(
            "SELECT name, lock_duration, max_delivery_count FROM queues"
        ):
            store.declare(name, QueueOptions(lock_duration, max_delivery_count))
        count = 0
        rows = self._db.execute(
            "SELECT seq, queue, enqueued_at, delivery_count, meta, body FROM messages ORDER BY seq"
        )
        for seq, queue, enqueued_at, delivery_count, meta, body in rows:
            message_id, group, correlation_id, properties, ttl = orjson.loads(meta)
            message = Message(
                bytes(body),
                id=message_id,
                group=group,
                correlation_id=correlation_id,
                properties=properties,
                ttl=ttl,
            )
            if not store.has_queue(queue):
                logger.warning("journaled message %s for unknown queue %r dropped", seq, queue)
                continue
            store.restore(queue, message, seq, enqueued_at, delivery_count)
            count += 1
        return count

    def close(self) -> None:
        """Commit and close the database."""
        self.flush()
        self._db.close()

    def _begin(self) -> None:
        if not self._dirty:
            self._db.execute("BEGIN")
            self._dirty = True
