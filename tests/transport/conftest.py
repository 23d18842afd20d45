"""Backend fixtures for the transport contract suite.

The contract tests use ``transport_url`` (and ``open_t``), parametrized over
``BACKENDS``. A backend joins the suite by adding its name to ``BACKENDS`` and
providing a fixture named ``<name>_transport_url`` that yields a URL of an
isolated, empty namespace for one test (and cleans up after itself).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from realtime_batch.transport import Transport, open_transport

BACKENDS = ["memory", "zmq", "servicebus"]


@pytest.fixture
def memory_transport_url():
    yield f"memory://contract-{uuid.uuid4().hex}"


class BrokerProcess:
    """A ``python -m realtime_batch.transport.zeromq`` process on a loopback port."""

    def __init__(self, port: int = 0, *extra_args: str) -> None:
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"zmq://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait for the READY line."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = [sys.executable, "-m", "realtime_batch.transport.zeromq"]
        cmd += ["--bind", f"tcp://127.0.0.1:{self.port}", *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        end = time.monotonic() + 30
        line = ""
        while not line and time.monotonic() < end and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"broker did not start (got {line!r})")
        self.port = int(line.split()[1].rsplit(":", 1)[1])

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Stop the process with ``sig`` and reap it; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def zmq_broker_factory() -> Iterator:
    """Start broker processes for one test; every one is killed at teardown."""
    started: list[BrokerProcess] = []

    def _start(*extra_args: str, port: int = 0) -> BrokerProcess:
        broker = BrokerProcess(port, *extra_args)
        started.append(broker)
        return broker

    try:
        yield _start
    finally:
        for broker in started:
            broker.kill()


@pytest.fixture(scope="session")
def zmq_session_broker() -> Iterator[BrokerProcess]:
    """One broker process shared by the session (tests use unique queue names)."""
    broker = BrokerProcess(0)
    try:
        yield broker
    finally:
        broker.kill(signal.SIGTERM)


@pytest.fixture
def zmq_transport_url(zmq_session_broker) -> str:
    if zmq_session_broker.proc.poll() is not None:  # a test killed it: bring it back
        zmq_session_broker.start()
    return zmq_session_broker.url


@pytest.fixture(scope="session")
def servicebus_standin():
    """One Service Bus stand-in process (tests/servicebus_standin.py) for the session."""
    pytest.importorskip("azure.servicebus")
    from servicebus_standin import StandInProcess

    standin = StandInProcess()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def servicebus_transport_url(servicebus_standin) -> str:
    """The stand-in's ``UseDevelopmentEmulator=true`` connection string (queues are unique)."""
    assert servicebus_standin.alive(), "the Service Bus stand-in died"
    return servicebus_standin.connection_string


@pytest.fixture(params=BACKENDS)
def transport_url(request):
    return request.getfixturevalue(f"{request.param}_transport_url")


@pytest.fixture
def backend_name(transport_url, request) -> str:
    return request.node.callspec.params["transport_url"]


@pytest.fixture
def open_t(transport_url):
    """Open transports on the test's backend; all are closed at teardown."""
    opened: list[Transport] = []

    def _open(**options) -> Transport:
        transport = open_transport(transport_url, **options)
        opened.append(transport)
        return transport

    yield _open
    for transport in opened:
        transport.close()


@pytest.fixture
def queue() -> str:
    """A fresh queue name per test."""
    return f"q-{uuid.uuid4().hex[:12]}"
