"""ServiceBusTransport.stats() against the stand-in (no administration API there) and
the mapping of the administration API's runtime properties."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from realtime_batch.transport import TransportError, open_transport


def test_stats_on_the_emulator_lists_declared_queues_and_says_what_it_cannot(transport, queue):
    transport.declare_queue(queue)
    stats = transport.stats()
    assert stats.transport == "servicebus"
    assert [q.name for q in stats.queues] == [queue]
    assert stats.queues[0].depth is None  # unknown, not zero
    assert stats.engines == () and stats.uptime is None
    assert any("no administration API" in note for note in stats.notes)
    assert any("engines are not listed" in note for note in stats.notes)


class _FakeAdmin:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def list_queues_runtime_properties(self):
        if self.fail:
            from azure.core.exceptions import ClientAuthenticationError

            raise ClientAuthenticationError("no Manage rights")
        return [SimpleNamespace(name="tasks", active_message_count=4,
                                dead_letter_message_count=1)]  # fmt: skip


@pytest.fixture
def cloud_transport(monkeypatch):
    conn = "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=x"
    t = open_transport(conn)
    yield t, monkeypatch
    t.close()


def test_stats_from_runtime_properties(cloud_transport):
    t, monkeypatch = cloud_transport
    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client",
                        lambda *a, **k: _FakeAdmin())  # fmt: skip
    [tasks] = t.stats().queues
    assert (tasks.name, tasks.depth, tasks.dead_letter, tasks.leased) == ("tasks", 4, 1, None)


def test_stats_refused_by_the_service_is_a_transport_error(cloud_transport):
    t, monkeypatch = cloud_transport
    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client",
                        lambda *a, **k: _FakeAdmin(fail=True))  # fmt: skip
    with pytest.raises(TransportError, match="administration API: no Manage rights"):
        t.stats()
