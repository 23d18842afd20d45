"""Control traffic between sessions and engines: cancel requests and engine notices.

Neither travels as a protocol record; both are small JSON bodies told apart from
tasks and results by the message property ``kind``, so that readers that know
only tasks and results are not affected:

* **cancel** (session -> engine): sent to the grouped ``control`` queue, group =
  the engine id; body ``{"session": id, "tasks": [task ids], "secret": s}``. The
  engine skips such tasks when they come up and kills its worker if one is running,
  but only tasks whose ``session_key`` is ``session_key(s)``: each session makes a
  random secret and puts its hash in its tasks, which only engines read, so no one
  else can cancel them (a spoofed cancel never matches; tasks and cancels without
  one match each other, as before).
* **stop** (orchestrator -> engine): same queue and group; body ``{"tasks": []}``. The
  engine stops as on SIGTERM: it takes no more tasks, gives back what it holds and
  exits 0 (a pool drains the engines of nodes it is about to remove). On a CURVE
  broker only an admin key may send it (``authz.OPERATOR_KINDS``).
* **engine** / **running** (engine -> session): sent to the task's ``reply_to``
  mailbox when the task message asks for notices (property ``notify``):
  ``engine`` once per mailbox when an engine first receives a task of it,
  ``running`` when a task has been running for ``RUNNING_NOTICE_AFTER`` seconds.
  Body ``{"engine": id, "tasks": [task ids], "key": session_key}``; a session heeds
  only notices with its own key. Short tasks never cost a notice.

This module imports nothing from the client or the engine, so both sides use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from .transport import Message

__all__ = [
    "CONTROL_QUEUE",
    "KIND",
    "KIND_CANCEL",
    "KIND_ENGINE",
    "KIND_RUNNING",
    "KIND_STOP",
    "NOTIFY",
    "NOTIFY_PROPERTIES",
    "RUNNING_NOTICE_AFTER",
    "cancel_messages",
    "decode_control",
    "notice_message",
    "session_key",
    "stop_message",
]

#: Default name of the grouped queue engines receive control messages from (group: engine id).
CONTROL_QUEUE = "control"
#: Message property naming the kind of a control message or notice.
KIND = "kind"
KIND_CANCEL = "cancel"
KIND_ENGINE = "engine"
KIND_RUNNING = "running"
KIND_STOP = "stop"
#: Task message property: the sender wants ``engine``/``running`` notices in its mailbox.
NOTIFY = "notify"
NOTIFY_PROPERTIES: dict[str, Any] = {NOTIFY: "1"}
#: Seconds a task runs before its engine tells the session where it runs.
RUNNING_NOTICE_AFTER = 0.25
#: Time-to-live of a cancel request (an engine that died never reads it).
CANCEL_TTL = 600.0
_IDS_PER_MESSAGE = 2000


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def session_key(secret: str) -> str:
    """What a task carries of its session's cancel ``secret`` ("" for none)."""
    return hashlib.sha256(secret.encode()).hexdigest() if secret else ""


def cancel_messages(
    session: str, engine: str, task_ids: Iterable[str], secret: str = ""
) -> list[Message]:
    """Cancel requests for ``task_ids`` of ``session``, addressed to ``engine``.

    ``secret``: the session's cancel secret, whose ``session_key`` its tasks carry.
    """
    ids = list(task_ids)
    head = {"session": session, "secret": secret} if secret else {"session": session}
    return [
        Message(
            orjson.dumps({**head, "tasks": chunk}),
            group=engine,
            properties={KIND: KIND_CANCEL},
            ttl=CANCEL_TTL,
        )
        for chunk in _chunks(ids, _IDS_PER_MESSAGE)
    ]


def stop_message(engine: str) -> Message:
    """Ask ``engine`` to stop gracefully (its held tasks go back to the queue)."""
    return Message(
        orjson.dumps({"tasks": []}), group=engine, properties={KIND: KIND_STOP}, ttl=CANCEL_TTL
    )


def notice_message(
    kind: str,
    engine: str,
    task_ids: list[str],
    group: str | None,
    ttl: float | None,
    key: str = "",
) -> Message:
    """An ``engine`` or ``running`` notice for a session's mailbox ``group``.

    ``key``: the tasks' ``session_key``, which the session checks as it does a result's.
    """
    return Message(
        orjson.dumps({"engine": engine, "tasks": task_ids, "key": key}),
        group=group,
        properties={KIND: kind},
        ttl=ttl,
    )


def decode_control(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a control message or notice (None if it is not one)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        return None
    return data
