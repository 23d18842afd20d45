"""A scripted responder standing in for engines in the session tests (tests/session).

It decodes each task with the real protocol and replies like an engine, so the tests
pin the client side alone.
"""

from __future__ import annotations

import threading

from realtime_batch.protocol import ErrorInfo, ResultRecord, decode_task, encode_result
from realtime_batch.transport import Message, open_transport

__all__ = ["Responder"]


class Responder:
    """Answers tasks: ``echo`` returns its args, ``fail`` errors; ``hold`` never answers."""

    def __init__(self, url: str, *, duplicate: bool = False) -> None:
        self.transport = open_transport(url)
        self.transport.declare_queue("tasks")
        self.duplicate = duplicate
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in self.transport.receive("tasks", max_messages=100, timeout=0.1):
                task = decode_task(d.message.body)
                self.seen.append(task.task)
                if task.command == "hold.py":
                    continue
                if task.command == "fail.py":
                    outcome = {
                        "status": "error",
                        "error": ErrorInfo("ValueError", "boom", "Traceback: ..."),
                    }
                else:
                    outcome = {"status": "ok", "value": {"args": task.args, "kwargs": task.kwargs}}
                rec = ResultRecord(
                    session=task.session, job=task.job, task=task.task, engine="fake-1",
                    session_key=task.session_key,  # as an engine echoes it
                    **outcome,
                )  # fmt: skip
                reply = Message(encode_result(rec), group=task.reply_to.group)
                copies = 2 if self.duplicate else 1
                self.transport.send(task.reply_to.queue, [reply] * copies)
                self.transport.complete(d)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.transport.close()
