"""Durable broker state: a SQLite (WAL) journal of queues and accepted messages.

``SqliteJournal`` is a ``StoreListener``: the store reports every accepted message
(``on_put``), every message that leaves for good (``on_remove``) and every delivery
(``on_delivery``). Writes collect in one transaction that the broker commits with
``flush()`` before it acknowledges a request, so an acknowledged send survives a
SIGKILLed broker. On start, ``restore()`` puts queues and messages back into a
fresh ``QueueStore``; leases are not journaled, so messages leased at the crash
are delivered again (with their journaled ``delivery_count``).

Damage is detected, never served as an empty broker. The database records a random
journal id (table ``meta``); a small state file beside it, replaced atomically,
records that id, whether the broker is running, and the message count at the last
clean stop. On open, a database that is empty, belongs to another journal, holds
fewer messages than at the last clean stop, lost its write-ahead log after an
unclean stop, or cannot be read, raises ``JournalError`` (one line, the broker
refuses to start); ``recover=True`` moves such a journal aside and starts empty.
The directory is made 0700 and the files 0600: they hold every task's arguments.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from ..base import Message, QueueOptions
from ..errors import JournalError
from ..store import QueueStore

__all__ = ["JOURNAL_FILE", "STATE_FILE", "SqliteJournal"]

logger = logging.getLogger(__name__)

JOURNAL_FILE = "broker.sqlite3"
#: The state file beside the database (see the module docstring).
STATE_FILE = f"{JOURNAL_FILE}.state"
_SIDE_FILES = ("-wal", "-shm")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    lock_duration REAL NOT NULL,
    max_delivery_count INTEGER NOT NULL,
    max_length INTEGER
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
_RECOVER_HINT = "refusing to start (--recover moves it aside and starts empty)"

_Row = tuple[str, Message, int, float, int]  # queue, message, seq, enqueued_at, deliveries


def _private_dir(directory: Path) -> None:
    """Create ``directory`` 0700, or make an existing one of ours 0700."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        os.chmod(directory, 0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing; make it 0600 if not."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


class SqliteJournal:
    """Journal of a broker's queues and messages in ``<data_dir>/broker.sqlite3``.

    Args:
        data_dir: directory for the database (created 0700 if missing).
        recover: when the journal lost data or cannot be read, move its files aside
            (``<name>.damaged-<time>``) and start an empty one instead of raising.

    Attributes:
        lost: messages lost by a recovery (``None`` when unknown; 0 when none happened).
        moved_to: where a recovery moved the damaged database, else ``None``.

    Raises:
        JournalError: the journal lost data or cannot be read (without ``recover``).
    """

    def __init__(self, data_dir: str | Path, *, recover: bool = False) -> None:
        directory = Path(data_dir)
        _private_dir(directory)
        self.path = directory / JOURNAL_FILE
        self.state_path = directory / STATE_FILE
        self.lost: int | None = 0
        self.moved_to: Path | None = None
        self._dirty = False
        try:
            self._db, self._rows = self._open()
        except JournalError as exc:
            if not recover:
                raise
            self.lost = exc.lost
            self.moved_to = self._move_aside()
            logger.warning("%s; moved it to %s and started empty", exc, self.moved_to)
            self._db, self._rows = self._open()

    # -- opening and checking ------------------------------------------------------------------
    def _open(self) -> tuple[sqlite3.Connection, list[_Row]]:
        """Open the database, check it against the state file and read its messages."""
        state = self._read_state()
        wal_was_there = Path(f"{self.path}-wal").exists()
        _private_file(self.path)
        for suffix in _SIDE_FILES:
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                _private_file(side)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            journal_id, count = self._check_readable(db, state)
            if state is not None:
                self._check_against_state(journal_id, count, state, wal_was_there)
            rows = self._read_rows(db, count)
            if journal_id is None:  # a new journal (or one written before ids existed)
                journal_id = uuid.uuid4().hex
                db.execute("INSERT INTO meta VALUES ('journal', ?)", (journal_id,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('started', ?)", (repr(time.time()),))
        except BaseException:
            db.close()
            raise
        self.journal_id = journal_id
        # Written after the database (its WAL exists from here): "running" with no WAL
        # beside the database on the next start means the WAL was lost.
        self._write_state(running=True, messages=count)
        return db, rows

    def _read_state(self) -> dict[str, Any] | None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = orjson.loads(raw)
            if not (
                isinstance(state.get("journal"), str)
                and isinstance(state.get("running"), bool)
                and isinstance(state.get("messages"), int)
            ):
                raise ValueError("missing fields")
        except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            raise JournalError(
                f"journal state file {self.state_path} cannot be read ({exc}); {_RECOVER_HINT}"
            ) from None
        return state

    def _check_readable(
        self, db: sqlite3.Connection, state: dict[str, Any] | None
    ) -> tuple[str | None, int]:
        """Set the database up; return its journal id (``None`` if new) and message count."""
        expected = None if state is None else state["messages"]
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit is in the WAL before flush() returns, which survives the
            # process being killed (not a power cut, which would need FULL and an fsync).
            db.execute("PRAGMA synchronous=NORMAL")
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            db.executescript(_SCHEMA)
            columns = {column[1] for column in db.execute("PRAGMA table_info(queues)")}
            if "max_length" not in columns:  # a journal written before queues had one
                db.execute("ALTER TABLE queues ADD COLUMN max_length INTEGER")
            row = db.execute("SELECT value FROM meta WHERE key = 'journal'").fetchone()
            count = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        except sqlite3.Error as exc:
            raise JournalError(
                f"journal {self.path} cannot be read ({exc}); {_RECOVER_HINT}", expected
            ) from None
        return (None if row is None else str(row[0])), count

    def _check_against_state(
        self, journal_id: str | None, count: int, state: dict[str, Any], wal_was_there: bool
    ) -> None:
        recorded, messages = state["journal"], state["messages"]
        running = state["running"]
        if running and not wal_was_there:  # checked first: it also empties the database
            raise JournalError(
                f"journal {self.path} lost its write-ahead log after the broker stopped "
                f"uncleanly: messages acknowledged since the last checkpoint are gone; "
                f"{_RECOVER_HINT}"
            )
        when = "when it last started" if running else "at its last clean stop"
        exact = None if running else messages  # a running broker's count moved on since
        if journal_id != recorded:
            found = "is empty" if journal_id is None else f"is another journal ({journal_id[:8]})"
            raise JournalError(
                f"journal {self.path} {found}, but {self.state_path.name} records journal "
                f"{recorded[:8]} holding {messages} message(s) {when}; {_RECOVER_HINT}",
                exact,
            )
        if not running and count < messages:
            raise JournalError(
                f"journal {self.path} holds {count} message(s) but held {messages} {when}; "
                f"{_RECOVER_HINT}",
                messages,
            )

    def _read_rows(self, db: sqlite3.Connection, count: int) -> list[_Row]:
        """Decode every journaled message (a bad row raises before anything is restored)."""
        rows: list[_Row] = []
        seq: Any = None
        try:
            for seq, queue, enqueued_at, delivery_count, meta, body in db.execute(
                "SELECT seq, queue, enqueued_at, delivery_count, meta, body "
                "FROM messages ORDER BY seq"
            ):
                message_id, group, correlation_id, properties, ttl = orjson.loads(meta)
                message = Message(
                    bytes(body),
                    id=message_id,
                    group=group,
                    correlation_id=correlation_id,
                    properties=properties,
                    ttl=ttl,
                )
                rows.append((queue, message, int(seq), float(enqueued_at), int(delivery_count)))
        except Exception as exc:  # any defect of a row is the same refusal
            where = "" if seq is None else f" at message {seq}"
            raise JournalError(
                f"journal {self.path} has an unreadable row{where} ({str(exc)[:100]}); "
                f"{_RECOVER_HINT}",
                count,
            ) from None
        return rows

    def _write_state(self, *, running: bool, messages: int) -> None:
        """Replace the state file atomically (0600)."""
        state = {"journal": self.journal_id, "running": running, "messages": messages}
        temporary = self.state_path.with_name(f"{self.state_path.name}.tmp")
        fd = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        try:
            os.write(fd, orjson.dumps(state))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.state_path)

    def _move_aside(self) -> Path:
        """Rename the database, its side files and the state file; return the new db path."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        moved = self.path.with_name(f"{JOURNAL_FILE}.damaged-{stamp}")
        for suffix in ("", *_SIDE_FILES):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{moved}{suffix}")
        if self.state_path.exists():
            os.replace(self.state_path, f"{moved}.state")
        return moved

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
            "INSERT OR IGNORE INTO queues VALUES (?, ?, ?, ?)",
            (name, options.lock_duration, options.max_delivery_count, options.max_length),
        )

    def flush(self) -> None:
        """Commit what was journaled since the last flush (before acknowledging it)."""
        if self._dirty:
            self._db.execute("COMMIT")
            self._dirty = False

    def restore(self, store: QueueStore) -> int:
        """Declare the journaled queues in ``store`` and put their messages back."""
        for name, lock_duration, max_delivery_count, max_length in self._db.execute(
            "SELECT name, lock_duration, max_delivery_count, max_length FROM queues"
        ):
            store.declare(name, QueueOptions(lock_duration, max_delivery_count, max_length))
        count = 0
        rows, self._rows = self._rows, []
        for queue, message, seq, enqueued_at, delivery_count in rows:
            if not store.has_queue(queue):
                logger.warning("journaled message %s for unknown queue %r dropped", seq, queue)
                continue
            store.restore(queue, message, seq, enqueued_at, delivery_count)
            count += 1
        return count

    def close(self) -> None:
        """Commit, fold the write-ahead log into the database, record a clean stop, close."""
        self.flush()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        self._write_state(running=False, messages=count)
        self._db.close()

    def _begin(self) -> None:
        if not self._dirty:
            self._db.execute("BEGIN")
            self._dirty = True
