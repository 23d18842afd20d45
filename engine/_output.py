"""Bounds on what a task writes: captured jar output, ``print`` output, the worker's log.

A task may write without end; the engine keeps at most ``max_output`` of it
(16 MiB by default) and drops the rest while it streams, ending what it kept
with ``[... N bytes dropped]``. In the worker process:

* ``bound_print_output`` replaces ``sys.stdout``/``sys.stderr`` with streams that
  let each task write ``max_output`` characters (stdout and stderr together);
* with a ``WorkerLog`` (``rtbatch engine --log-file``), the worker's log records
  and its tasks' ``print`` output go to a file of its own, rotated like the
  engine's (one process rotates each file);
* ``release_memory`` hands the heap freed after a jar task back to the system.
"""

from __future__ import annotations

import ctypes
import io
import logging
import logging.handlers
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse  # only the worker parses arguments; the engine imports this module too

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "OutputBudget",
    "WorkerLog",
    "bound_print_output",
    "dropped_marker",
    "release_memory",
    "worker_log_path",
]

#: Bytes (characters, for ``print``) of a task's output kept by default.
DEFAULT_MAX_OUTPUT = 16 << 20


def dropped_marker(dropped: int) -> str:
    """What ends output of which ``dropped`` bytes were left out."""
    return f"\n[... {dropped} bytes dropped]\n"


class OutputBudget:
    """Characters of ``print`` output (stdout and stderr together) one task may write.

    Args:
        limit: characters per task.
        stream: where the output and the ``dropped`` marker go.
    """

    def __init__(self, limit: int, stream: Any) -> None:
        self.limit = self.left = limit
        self.dropped = 0
        self.stream = stream

    def end_task(self) -> None:
        """Say how much the task's output lost, then give the next task the whole budget."""
        if self.dropped:
            self.stream.write(dropped_marker(self.dropped))
        if self.left < self.limit or self.dropped:  # the task wrote: out before the answer
            self.stream.flush()
        self.left, self.dropped = self.limit, 0


class _BoundedOutput(io.TextIOBase):
    """A ``sys.stdout``/``sys.stderr`` that writes within the task's budget, drops the rest.

    Nothing dropped is kept, so a task printing without end costs neither memory
    nor log space beyond its budget.
    """

    def __init__(self, budget: OutputBudget, fd: int) -> None:
        super().__init__()
        self._budget = budget
        self._fd = fd

    def write(self, text: str) -> int:
        budget = self._budget
        if len(text) <= budget.left:
            budget.left -= len(text)
            budget.stream.write(text)
            return len(text)
        if budget.left:
            budget.stream.write(text[: budget.left])
        budget.dropped += len(text) - budget.left
        budget.left = 0
        return len(text)

    def flush(self) -> None:
        self._budget.stream.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class _RotatingText:
    """Raw text written into a ``RotatingFileHandler``'s file, rotating it when full."""

    def __init__(self, handler: logging.handlers.RotatingFileHandler) -> None:
        self.handler = handler

    def write(self, text: str) -> None:
        handler = self.handler
        handler.acquire()
        try:
            while text:  # never past maxBytes (counting characters as bytes)
                if handler.stream is None:  # closed by a failed rollover: reopen
                    handler.stream = handler._open()
                room = handler.maxBytes - handler.stream.tell() if handler.maxBytes else len(text)
                if room <= 0:
                    handler.doRollover()
                    continue
                handler.stream.write(text[:room])
                text = text[room:]
        finally:
            handler.release()

    def flush(self) -> None:
        self.handler.flush()


def bound_print_output(limit: int, log_handler: logging.Handler | None) -> OutputBudget:
    """Route task code's ``print`` output through one per-task budget of ``limit``.

    It goes where the worker's log goes: the rotated file of ``log_handler`` when it
    is a ``RotatingFileHandler``, else stderr.
    """
    stream: Any = sys.stderr
    if isinstance(log_handler, logging.handlers.RotatingFileHandler):
        stream = _RotatingText(log_handler)
    budget = OutputBudget(limit, stream)
    sys.stdout = _BoundedOutput(budget, 1)
    sys.stderr = _BoundedOutput(budget, 2)
    return budget


def worker_log_path(log_file: str) -> str:
    """The worker's log file beside the engine's: ``engine.log`` -> ``engine-worker.log``."""
    stem, suffix = os.path.splitext(log_file)
    return f"{stem}-worker{suffix}"


class WorkerLog:
    """A rotated log file for a worker process (its records and its tasks' output).

    Args:
        path: the file.
        max_bytes: size at which it is rotated.
        backups: rotated copies kept.
    """

    def __init__(self, path: str, max_bytes: int = 10 << 20, backups: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def argv(self) -> list[str]:
        """The worker's command-line arguments for this log."""
        return ["--log-file", self.path, "--log-max-bytes", str(self.max_bytes),
                "--log-backups", str(self.backups)]  # fmt: skip

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Declare the options ``argv`` writes."""
        parser.add_argument("--log-file", default=None)
        parser.add_argument("--log-max-bytes", type=int, default=10 << 20)
        parser.add_argument("--log-backups", type=int, default=5)

    @classmethod
    def from_arguments(cls, opts: argparse.Namespace) -> WorkerLog | None:
        """The log the parsed options name, or None (stderr)."""
        if opts.log_file is None:
            return None
        return cls(opts.log_file, opts.log_max_bytes, opts.log_backups)

    def handler(self) -> logging.handlers.RotatingFileHandler:
        """A ``RotatingFileHandler`` on the file."""
        return logging.handlers.RotatingFileHandler(
            self.path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
        )


class _HeapRelease:
    """Hands freed heap back to the system once a jar task has run (``due``).

    A jar's captured output is up to ``max_output`` bytes several times over (bytes,
    text, the answer frame); once those are freed, glibc keeps the pages unless asked.
    """

    def __init__(self) -> None:
        self.due = False
        try:
            self._trim: Any = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            self._trim = None

    def __call__(self) -> None:
        if self.due:
            self.due = False
            if self._trim is not None:
                self._trim(0)


#: Call when the last task's value is gone (after its answer is sent).
release_memory = _HeapRelease()
