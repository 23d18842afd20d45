"""Service Bus ``queue_counts``: the queue's runtime properties through the admin client.

The AMQP stand-in serves no management (ATOM/HTTP) API, so the administration
client is replaced here; what the real namespace answers is not verified offline.
"""

from __future__ import annotations

import contextlib

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from realtime_batch.transport import QueueCounts, QueueNotFoundError, TransportError, open_transport

CONN = (
    "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=admin;SharedAccessKey=a2V5;"
    "UseDevelopmentEmulator=true"
)


class Admin:
    def __init__(self, error=None) -> None:
        self.error = error
        self.asked: list[str] = []

    def get_queue_runtime_properties(self, name):
        self.asked.append(name)
        if self.error:
            raise self.error

        class Properties:
            active_message_count = 42

        return Properties()


@pytest.fixture
def admin(monkeypatch):
    made = Admin()

    @contextlib.contextmanager
    def fake_admin_client(target, credential=None):
        assert target == CONN
        yield made

    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client", fake_admin_client)
    return made


def test_counts_are_the_active_messages(admin):
    with open_transport(CONN) as transport:
        assert transport.queue_counts("tasks") == QueueCounts(42, 0)
    assert admin.asked == ["tasks"]


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (ResourceNotFoundError("gone"), QueueNotFoundError),
        (HttpResponseError("401"), TransportError),
    ],
)
def test_admin_errors_are_transport_errors(admin, error, mapped):
    admin.error = error
    with open_transport(CONN) as transport, pytest.raises(mapped):
        transport.queue_counts("tasks")
