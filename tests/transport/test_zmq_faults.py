"""Fault injection on the ZeroMQ backend: dead clients, dead and restarted brokers."""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time

import pytest

from realtime_batch.transport import (
    ConnectionLostError,
    LockLostError,
    Message,
    TransportClosedError,
    open_transport,
)

FAST_HEARTBEAT = {"heartbeat_interval": 0.2, "request_timeout": 10.0}

# A consumer process that leases one message (60 s lock) and then hangs.
LEASING_CLIENT = """
import sys, time
from realtime_batch.transport import open_transport
t = open_transport(sys.argv[1], heartbeat_interval=0.2)
[d] = t.receive(sys.argv[2], timeout=20)
print("LEASED", d.delivery_count, flush=True)
time.sleep(120)
"""


@pytest.fixture
def leasing_client():
    """Start LEASING_CLIENT processes; each is killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def _start(url: str, queue: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", LEASING_CLIENT, url, queue], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        ready = select.select([proc.stdout], [], [], 30)[0]
        assert ready and proc.stdout.readline().startswith("LEASED"), "client did not lease"
        return proc

    try:
        yield _start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stdout.close()


def test_leases_of_a_killed_client_come_back_before_lock_expiry(
    zmq_transport_url, queue, leasing_client
):
    with open_transport(zmq_transport_url) as t:
        t.declare_queue(queue, lock_duration=60)
        t.send(queue, Message(b"work"))
        proc = leasing_client(zmq_transport_url, queue)
        assert t.receive(queue, timeout=0.2) == []  # leased by the other process
        proc.kill()
        proc.wait(10)
        # The lock lasts 60 s; the broker must release it after ~3 missed heartbeats.
        [d] = t.receive(queue, timeout=20)
        assert d.message.body == b"work"
        assert d.delivery_count == 2
        t.complete(d)


def test_a_closed_client_keeps_its_leases_until_they_expire(zmq_transport_url, queue):
    with open_transport(zmq_transport_url, **FAST_HEARTBEAT) as t:
        t.declare_queue(queue, lock_duration=60)
        t.send(queue, Message(b"kept"))
        other = open_transport(zmq_transport_url, **FAST_HEARTBEAT)
        [d] = other.receive(queue, timeout=10)
        other.close()  # like the memory backend: close does not abandon
        assert t.receive(queue, timeout=1.5) == []
        assert d.delivery_count == 1


def test_close_wakes_a_thread_blocked_in_receive(zmq_transport_url, queue):
    t = open_transport(zmq_transport_url)
    t.declare_queue(queue)
    errors: list[BaseException] = []

    def blocked():
        try:
            t.receive(queue, timeout=None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.3)
    t.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransportClosedError)


def test_broker_restart_client_reconnects(zmq_broker_factory, queue):
    broker = zmq_broker_factory()
    # The restart must end within the client's liveness time (else the parked receive
    # rightly ends with ConnectionLostError): on a loaded machine a broker process may
    # take more than the 0.6 s of three fast heartbeats to start again.
    t = open_transport(broker.url, **FAST_HEARTBEAT, heartbeat_liveness=25)
    try:
        t.declare_queue(queue)
        t.send(queue, [Message(b"before-1"), Message(b"before-2")])
        [leased] = t.receive(queue, timeout=10)
        got: list[bytes] = []
        waiting = threading.Thread(
            target=lambda: got.extend(d.message.body for d in t.receive(queue + "-w", timeout=30))
        )
        t.declare_queue(queue + "-w")
        waiting.start()
        time.sleep(0.3)

        broker.kill()
        broker.start()  # same port, empty (non-durable) broker

        with pytest.raises(LockLostError):  # the lease died with the old broker
            t.complete(leased)
        t.send(queue, Message(b"after"))  # the client declared this queue: declared again
        [d] = t.receive(queue, timeout=10)
        assert d.message.body == b"after"
        t.complete(d)
        t.send(queue + "-w", Message(b"wake"))  # the parked receive was re-sent
        waiting.join(30)
        assert got == [b"wake"]
    finally:
        t.close()


def test_a_request_in_flight_when_the_first_epoch_arrives_is_not_sent_again(
    zmq_broker_factory, queue
):
    """Learning the broker's epoch for the first time is no restart: a parked request
    (here one that also sends) must not be re-sent then, or its messages go twice."""
    broker = zmq_broker_factory()
    with open_transport(broker.url, heartbeat_interval=0.3) as t:
        t.declare_queue(queue)
        t.declare_queue(queue + "-tasks")
        t.send(queue, Message(b"task"))
        [leased] = t.receive(queue, timeout=10)
        t.epoch = None  # as if the first heartbeat reply had not come yet
        t._schedule.probe = True  # and one due while the receive is parked (a reconnect)
        received, lost = t.settle_and_receive(
            queue, [Message(b"result")], [leased], queue + "-tasks", timeout=1.0
        )
        assert received == [] and lost == []
        assert t.epoch is not None  # a heartbeat reply came while the request waited
        got = t.receive(queue, max_messages=5, timeout=1)
        assert [d.message.body for d in got] == [b"result"]


def test_dead_broker_raises_connection_lost(zmq_broker_factory, queue):
    broker = zmq_broker_factory()
    t = open_transport(broker.url, heartbeat_interval=0.1, request_timeout=5)
    try:
        t.declare_queue(queue)
        broker.kill()
        with pytest.raises(ConnectionLostError):
            t.send(queue, Message(b"nobody home"))
        with pytest.raises(ConnectionLostError):
            t.receive(queue, timeout=0.1)
    finally:
        t.close()
