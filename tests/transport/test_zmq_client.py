"""Client-side specifics of ``zmq://``: URL parsing, batched settlement, thread safety."""

from __future__ import annotations

import threading

import pytest

from realtime_batch.transport import LockLostError, Message, open_transport
from realtime_batch.transport.zeromq.client import broker_endpoint


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [("zmq://127.0.0.1:5555", "tcp://127.0.0.1:5555"), ("zmq://[::1]:7", "tcp://[::1]:7")],
)
def test_broker_endpoint(url, endpoint):
    assert broker_endpoint(url) == endpoint


@pytest.mark.parametrize("url", ["zmq://127.0.0.1", "tcp://127.0.0.1:5555", "zmq://:5"])
def test_bad_urls_are_rejected(url):
    with pytest.raises(ValueError):
        broker_endpoint(url)


@pytest.mark.parametrize("backend", ["memory", "zmq"])
def test_complete_many_settles_all_and_reports_lost_leases(backend, request, queue):
    url = request.getfixturevalue(f"{backend}_transport_url")
    with open_transport(url) as t:
        t.declare_queue(queue)
        t.send(queue, [Message(b"%d" % i) for i in range(5)])
        deliveries = []
        while len(deliveries) < 5:
            deliveries += t.receive(queue, max_messages=5, timeout=5)
        t.complete(deliveries[2])  # settled already: its lease is gone
        with pytest.raises(LockLostError):
            t.complete_many(deliveries)
        assert t.receive(queue, timeout=0.3) == []  # the other four were completed
        t.complete_many([])


def test_many_threads_share_one_client(zmq_transport_url, queue):
    with open_transport(zmq_transport_url) as t:
        t.declare_queue(queue)
        received: list[bytes] = []
        lock = threading.Lock()

        def consume():
            while True:
                batch = t.receive(queue, max_messages=7, timeout=2)
                if not batch:
                    return
                t.complete_many(batch)
                with lock:
                    received.extend(d.message.body for d in batch)

        def produce(k):
            t.send(queue, [Message(b"%d-%d" % (k, i)) for i in range(50)])

        threads = [threading.Thread(target=consume) for _ in range(4)]
        threads += [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert sorted(received) == sorted(b"%d-%d" % (k, i) for k in range(4) for i in range(50))
