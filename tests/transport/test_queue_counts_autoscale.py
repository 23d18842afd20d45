"""``queue_counts``: what the autoscale controller sizes a pool by (memory and zmq)."""

from __future__ import annotations

import pytest

from realtime_batch.transport import Message, QueueCounts, QueueNotFoundError, open_transport


@pytest.fixture(params=["memory", "zmq"])
def url(request):
    return request.getfixturevalue(f"{request.param}_transport_url")


def test_counts_waiting_and_leased(url):
    with open_transport(url) as transport:
        queue = f"counts-{id(transport)}"
        transport.declare_queue(queue)
        assert transport.queue_counts(queue) == QueueCounts(0, 0)
        transport.send(queue, [Message(b"a"), Message(b"b"), Message(b"c")])
        assert transport.queue_counts(queue) == QueueCounts(3, 0)
        [held] = transport.receive(queue, max_messages=1, timeout=5)
        assert transport.queue_counts(queue) == QueueCounts(2, 1)
        assert transport.queue_counts(queue).total == 3
        transport.complete(held)
        assert transport.queue_counts(queue) == QueueCounts(2, 0)


def test_counts_of_an_unknown_queue(url):
    with open_transport(url) as transport, pytest.raises(QueueNotFoundError):
        transport.queue_counts("no-such-queue-here")
