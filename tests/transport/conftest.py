"""Backend fixtures for the transport contract suite.

The contract tests use ``transport_url`` (and ``open_t``), parametrized over
``BACKENDS``. A backend joins the suite by adding its name to ``BACKENDS`` and
providing a fixture named ``<name>_transport_url`` that yields a URL of an
isolated, empty namespace for one test (and cleans up after itself).
"""

from __future__ import annotations

import uuid

import pytest

from realtime_batch.transport import Transport, open_transport

BACKENDS = ["memory"]


@pytest.fixture
def memory_transport_url():
    yield f"memory://contract-{uuid.uuid4().hex}"


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
