"""Which thread sends a session's tasks, and in how many transport sends.

A lone submission is sent from the caller's thread (the interactive path); a loop of
submissions goes through the sender thread in batches. The gap that tells them apart
is counted from the end of the caller's send: a slow round trip (a loaded broker, many
sessions in one process) must not turn every submission of a loop into a send of its
own. These tests count sends and their threads; none asserts on time.
"""

from __future__ import annotations

import threading
import uuid

import realtime_batch as rb
from realtime_batch.protocol import decode_task
from realtime_batch.transport import open_transport
from realtime_batch.transport.memory import MemoryTransport

ROUND_TRIP = 0.02  # every send of the slow transport takes this long


class SlowSends(MemoryTransport):
    """A memory transport whose sends take a round trip and are recorded with their thread."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sends: list[tuple[str, int]] = []  # (sending thread's name, tasks in the send)
        self._pause = threading.Event()

    def send(self, queue, messages):
        if queue == "tasks":
            self._pause.wait(ROUND_TRIP)
            self.sends.append((threading.current_thread().name, len(messages)))
        return super().send(queue, messages)


def _sent_ids(url: str, count: int) -> list[str]:
    with open_transport(url) as engine_side:
        ids: list[str] = []
        while len(ids) < count:
            batch = engine_side.receive("tasks", max_messages=1000, timeout=10)
            assert batch, f"only {len(ids)} of {count} tasks were sent"
            ids += [decode_task(d.message.body).task for d in batch]
        return ids


def test_a_loop_of_submits_is_batched_even_when_each_send_is_slow():
    url = f"memory://batching-{uuid.uuid4().hex}"
    transport = SlowSends(url)
    try:
        with rb.Session(transport) as s:
            futures = [s.submit("x.py", i) for i in range(60)]
            assert _sent_ids(url, 60) == [f.task_id for f in futures]  # all, in order
            caller = threading.current_thread().name
            inline = [n for name, n in transport.sends if name == caller]
            assert sum(n for _, n in transport.sends) == 60
            # the first goes inline; the rest follow within microseconds of its return
            # and go to the sender thread (on main, each waited a round trip: 60 sends)
            assert inline[:1] == [1] and len(inline) <= 10
            assert len(transport.sends) <= 20
    finally:
        transport.close()


def test_a_lone_submit_is_sent_from_the_callers_thread():
    url = f"memory://batching-{uuid.uuid4().hex}"
    transport = SlowSends(url)
    try:
        with rb.Session(transport) as s:
            first = s.submit("x.py", 1)
            assert _sent_ids(url, 1) == [first.task_id]
            threading.Event().wait(0.05)  # a pause between interactive submissions
            second = s.submit("x.py", 2)
            assert _sent_ids(url, 1) == [second.task_id]
            caller = threading.current_thread().name
            assert transport.sends == [(caller, 1), (caller, 1)]
    finally:
        transport.close()
