"""Which engines a session has heard from, where its tasks run, and where cancels go.

A session's tasks ask engines for notices (``engine``: an engine holds tasks of this
session; ``running``: a task has run for 0.25 s there), so a cancel request goes to
the engine running the task, or else to every engine the session has heard from (and
to any engine it hears from later, for a while), through the grouped control queue.
The tracker also knows since when tasks have waited with no engine heard from
(``Session.health``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Container, Iterable

from realtime_batch.control import KIND, KIND_RUNNING, cancel_messages, decode_control
from realtime_batch.transport import Message, Transport, TransportError

__all__ = ["EngineTracker"]

log = logging.getLogger(__name__)

_CANCEL_REPLAY = 600.0  # seconds cancels of not-yet-located tasks go to newly heard engines
_ENGINE_REFRESH = 60.0  # an engine's last-heard time is updated at most this often per result
_ENGINE_FORGET = 3600.0  # engines not heard from for this long get no cancel requests


class EngineTracker:
    """Engines heard from, tasks' engines, and the routing of cancel requests.

    Args:
        transport: where cancel requests are sent.
        control_queue: the engines' grouped queue of cancel requests.
        session_id: the session's id (the cancels' sender).
        secret: the session's secret (cancels carry it); ``key`` is its hash.
        key: the session key tasks carry; notices without it are dropped.
        lock: the session's lock, which guards the tracker's state and the futures.
        closed: the session's closed flag (no cancels are sent once set).
    """

    def __init__(
        self,
        transport: Transport,
        control_queue: str,
        session_id: str,
        secret: str,
        key: str,
        lock: threading.Lock,
        closed: threading.Event,
    ) -> None:
        self._transport = transport
        self._control_queue = control_queue
        self._session_id = session_id
        self._secret = secret
        self._key = key
        self._lock = lock
        self._closed = closed
        self.engines: dict[str, float] = {}  # engine id -> when last heard from
        self.running_on: dict[str, str] = {}  # task id -> engine running it
        self.cancel_unlocated: dict[str, float] = {}  # task id -> when cancelled
        #: when the first task no engine has answered for was sent (None: none waits)
        self.unserved_since: float | None = None

    def sent(self, submitted_at: float) -> None:
        """A task was submitted: start the no-engine clock if no engine was heard from.

        Called with the session's lock held.
        """
        if self.unserved_since is None and not self.engines:
            self.unserved_since = submitted_at

    def on_notice(self, message: Message, outstanding: Container[str]) -> None:
        """An engine says it holds tasks of this session (``engine``) or runs one (``running``).

        ``outstanding`` holds the ids of the tasks still waiting for a result.
        """
        data = decode_control(message.body)
        engine = None if data is None else data.get("engine")
        if data is None or not isinstance(engine, str):
            log.debug("dropping a malformed notice")
            return
        if data.get("key") != self._key:  # not about a task this session sent
            log.warning("session %s: dropped a notice without this session's key", self._session_id)
            return
        if message.properties.get(KIND) == KIND_RUNNING:
            with self._lock:
                for task_id in data["tasks"]:
                    if task_id in outstanding:
                        self.running_on[task_id] = engine
        if engine not in self.engines:
            self._heard_from(engine)
        else:
            self.engines[engine] = time.time()

    def on_result(self, engine: str, now: float) -> None:
        """A result came from ``engine``: note that it is alive (at most once a minute)."""
        if not engine:
            return
        heard = self.engines.get(engine)
        if heard is None:
            self._heard_from(engine)
        elif now - heard > _ENGINE_REFRESH:
            self.engines[engine] = now

    def _heard_from(self, engine: str) -> None:
        """A new engine: remember it, and pass it the cancels not located yet."""
        now = time.time()
        with self._lock:
            self.engines[engine] = now
            self.unserved_since = None
            horizon = now - _CANCEL_REPLAY
            for task_id in [t for t, at in self.cancel_unlocated.items() if at < horizon]:
                del self.cancel_unlocated[task_id]
            replay = list(self.cancel_unlocated)
        if replay:
            self.send_cancels({engine: replay})

    def is_running(self, task_id: str) -> bool:
        """Whether an engine said it runs the task (lock held)."""
        return task_id in self.running_on

    def finished(self, task_id: str) -> None:
        """The task has its result (lock held)."""
        self.running_on.pop(task_id, None)

    def route(self, task_ids: Iterable[str], now: float) -> dict[str, list[str]]:
        """Where cancel requests for ``task_ids`` go: engine id -> task ids (lock held).

        A task known to run somewhere goes to that engine; any other goes to every engine
        heard from within the last hour, and is remembered for engines heard from later.
        """
        located: dict[str, list[str]] = {}
        unlocated: list[str] = []
        for task_id in task_ids:
            engine = self.running_on.pop(task_id, None)
            if engine is None:
                unlocated.append(task_id)
                self.cancel_unlocated[task_id] = now
            else:
                located.setdefault(engine, []).append(task_id)
        if unlocated:
            horizon = now - _ENGINE_FORGET
            for engine, heard in self.engines.items():
                if heard > horizon:
                    located.setdefault(engine, []).extend(unlocated)
        return located

    def send_cancels(self, by_engine: dict[str, list[str]]) -> None:
        """Send cancel requests, one batch per engine; a failure is logged, not raised."""
        messages = [
            message
            for engine, ids in by_engine.items()
            for message in cancel_messages(self._session_id, engine, ids, self._secret)
        ]
        if not messages or self._closed.is_set():
            return
        try:
            self._transport.send(self._control_queue, messages)
        except TransportError as exc:  # the futures are cancelled anyway
            log.warning("could not send %d cancel request(s): %s", len(messages), exc)
