"""An engine stops gracefully on a ``stop`` control message (a pool draining a node)."""

from __future__ import annotations

import time

from realtime_batch.control import CONTROL_QUEUE, KIND, KIND_STOP, stop_message
from realtime_batch.protocol import decode_task


def _wait_stopped(engine, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while engine._thread.is_alive():
        assert time.monotonic() < end, "engine did not stop"
        time.sleep(0.01)


def test_stop_message_stops_the_engine_and_leaves_tasks_queued(harness):
    engine = harness.engine()
    harness.submit("noop.py")
    assert harness.result().status == "ok"  # running and taking tasks
    other = stop_message("some-other-engine")
    harness.transport.send(CONTROL_QUEUE, [other, stop_message(engine.engine_id)])
    assert other.properties[KIND] == KIND_STOP
    _wait_stopped(engine)
    task = harness.submit("noop.py")
    harness.assert_no_result()
    [left] = harness.transport.receive(harness.queue, max_messages=1, timeout=5)
    assert decode_task(left.message.body).task == task
    # the other engine's stop request is still waiting in its own group
    [waiting] = harness.transport.receive(
        CONTROL_QUEUE, max_messages=5, timeout=1, group="some-other-engine"
    )
    assert waiting.message.properties[KIND] == KIND_STOP
