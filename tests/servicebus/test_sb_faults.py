"""Faults: the service going away and coming back, and close() during a blocking receive."""

from __future__ import annotations

import threading
import time

import pytest
from servicebus_standin import StandInProcess

from realtime_batch.transport import (
    ConnectionLostError,
    Message,
    TransportClosedError,
    TransportError,
    open_transport,
)

pytestmark = [pytest.mark.azure, pytest.mark.usefixtures("no_leaked_processes")]


def test_transport_reconnects_after_the_service_restarts(queue):
    first = StandInProcess("--queue", queue)
    second = None
    try:
        with open_transport(first.connection_string, retry_total=1) as t:
            t.send(queue, Message(b"before"))
            first.stop()
            second = StandInProcess("--queue", queue, port=first.port)
            failures = 0
            for _ in range(5):
                try:
                    t.send(queue, Message(b"after"))
                    break
                except ConnectionLostError:
                    failures += 1  # the broken sender is replaced on the next call
            else:
                pytest.fail("the transport never reconnected")
            [d] = t.receive(queue, timeout=10)
            assert d.message.body == b"after"  # the first broker's queue died with it
            t.complete(d)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_close_ends_a_receive_that_waits_forever(conn_str, queue):
    t = open_transport(conn_str)
    t.declare_queue(queue)
    outcome: list[BaseException | list] = []

    def wait_forever():
        try:
            outcome.append(t.receive(queue, timeout=None))
        except TransportError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait_forever)
    thread.start()
    time.sleep(1.0)
    t.close()
    thread.join(15)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TransportClosedError)
