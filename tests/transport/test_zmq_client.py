"""Client-side specifics of ``zmq://``: URL parsing, batched settlement, thread safety."""

from __future__ import annotations

import threading
import time

import pytest

from realtime_batch.transport import LockLostError, Message, QueueNotFoundError, open_transport
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


# -- settle_and_receive: a task worker's results, leases and next receive in one request ---
def _worker_queues(t, queue: str) -> tuple[str, str]:
    """Declare ``queue`` (tasks taken), a replies queue and a next-tasks queue."""
    replies, tasks = f"{queue}-replies", f"{queue}-tasks"
    for name in (queue, replies, tasks):
        t.declare_queue(name)
    return replies, tasks


def _leased(t, queue: str, count: int) -> list:
    t.send(queue, [Message(b"task %d" % i) for i in range(count)])
    deliveries = []
    while len(deliveries) < count:
        deliveries += t.receive(queue, max_messages=count, timeout=5)
    return deliveries


def test_settle_and_receive_sends_completes_and_receives(zmq_transport_url, queue):
    with open_transport(zmq_transport_url) as t:
        replies, tasks = _worker_queues(t, queue)
        leased = _leased(t, queue, 2)
        t.send(tasks, Message(b"next"))
        received, lost = t.settle_and_receive(
            replies, [Message(b"r1"), Message(b"r2")], leased, tasks, max_messages=5, timeout=5
        )
        assert [d.message.body for d in received] == [b"next"]
        assert received[0].queue == tasks and received[0].delivery_count == 1
        assert lost == []
        t.complete(received[0])
        assert t.receive(queue, timeout=0.3) == []  # both leases were completed
        got = t.receive(replies, max_messages=5, timeout=5)
        assert [d.message.body for d in got] == [b"r1", b"r2"]


def test_settle_and_receive_waits_for_a_task_after_the_results_went_out(zmq_transport_url, queue):
    """With no task queued the request parks like a receive; the results reach their
    receiver meanwhile, not when the next task comes."""
    with open_transport(zmq_transport_url) as worker, open_transport(zmq_transport_url) as client:
        replies, tasks = _worker_queues(worker, queue)
        leased = _leased(worker, queue, 1)
        outcome: dict = {}

        def settle() -> None:
            outcome["result"] = worker.settle_and_receive(
                replies, [Message(b"result")], leased, tasks, max_messages=1, timeout=10
            )

        thread = threading.Thread(target=settle)
        thread.start()
        got = client.receive(replies, timeout=5)
        assert [d.message.body for d in got] == [b"result"]
        assert thread.is_alive()  # still waiting for a task
        client.send(tasks, Message(b"next"))
        thread.join(10)
        received, lost = outcome["result"]
        assert [d.message.body for d in received] == [b"next"] and lost == []


def test_settle_and_receive_times_out_and_reports_lost_leases(zmq_transport_url, queue):
    with open_transport(zmq_transport_url) as t:
        replies, tasks = _worker_queues(t, queue)
        leased = _leased(t, queue, 3)
        t.complete(leased[1])  # settled already: its lease is gone
        start = time.monotonic()
        received, lost = t.settle_and_receive(
            replies, [Message(b"r")], leased, tasks, max_messages=1, timeout=0.3
        )
        assert received == [] and lost == [1]
        assert 0.25 < time.monotonic() - start < 5
        assert t.receive(queue, timeout=0.3) == []  # the other two were completed
        assert [d.message.body for d in t.receive(replies, timeout=5)] == [b"r"]


def test_settle_and_receive_from_an_unknown_queue_does_nothing(zmq_transport_url, queue):
    replies = f"{queue}-replies"
    with open_transport(zmq_transport_url) as t:
        t.declare_queue(queue)
        t.declare_queue(replies)
        [d] = _leased(t, queue, 1)
        with pytest.raises(QueueNotFoundError):
            t.settle_and_receive(replies, [Message(b"r")], [d], f"{queue}-missing", timeout=1)
        assert t.receive(replies, timeout=0.3) == []  # nothing sent
        t.complete(d)  # and the lease still held


def test_settle_and_receive_with_no_message_completes_and_receives_one_group(
    zmq_transport_url, queue
):
    """A session's listener: completions of the results it took, then its next receive
    from its own mailbox only."""
    with open_transport(zmq_transport_url) as t:
        t.declare_queue(queue)
        t.send(queue, [Message(b"mine 1", group="me"), Message(b"other", group="you")])
        taken = t.receive(queue, timeout=5, group="me")
        t.send(queue, Message(b"mine 2", group="me"))
        received, lost = t.settle_and_receive(
            queue, [], taken, queue, max_messages=10, timeout=5, group="me"
        )
        assert [d.message.body for d in received] == [b"mine 2"] and lost == []
        t.complete_many(received)
        assert t.receive(queue, timeout=0.3, group="me") == []  # "mine 1" was completed
        assert [d.message.body for d in t.receive(queue, timeout=5, group="you")] == [b"other"]


def test_settle_and_receive_without_timeout_waits_past_the_request_timeout(
    zmq_transport_url, queue
):
    """Like ``receive(timeout=None)``: only a silent broker ends the wait."""
    with open_transport(zmq_transport_url, request_timeout=1.0) as t:
        replies, tasks = _worker_queues(t, queue)
        leased = _leased(t, queue, 1)
        outcome: dict = {}

        def settle() -> None:
            try:
                outcome["result"] = t.settle_and_receive(replies, [], leased, tasks)
            except Exception as exc:  # recorded for the assertion
                outcome["error"] = exc

        thread = threading.Thread(target=settle)
        thread.start()
        time.sleep(2.5)  # past request_timeout
        t.send(tasks, Message(b"late"))
        thread.join(10)
        assert "error" not in outcome, outcome
        assert [d.message.body for d in outcome["result"][0]] == [b"late"]
