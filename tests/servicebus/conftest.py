"""Fixtures for the Service Bus tests: a stand-in process and SDK clients on it."""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("azure.servicebus")
pytest.importorskip("proton")

from servicebus_standin import StandInProcess

from realtime_batch.transport import open_transport


@pytest.fixture(scope="module")
def standin():
    """One stand-in process per test module (queues are unique per test)."""
    process = StandInProcess()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def conn_str(standin) -> str:
    assert standin.alive(), "the stand-in died"
    return standin.connection_string


@pytest.fixture
def sb_client(conn_str):
    """A raw azure-servicebus client (no retries, so failures are quick)."""
    from azure.servicebus import ServiceBusClient

    client = ServiceBusClient.from_connection_string(conn_str, retry_total=0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def transport(conn_str):
    t = open_transport(conn_str)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def queue() -> str:
    return f"sb-{uuid.uuid4().hex[:12]}"
