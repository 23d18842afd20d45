"""ServiceBusTransport.stats() against the stand-in's administration API, on an emulator
that serves none, and the mapping of the runtime properties."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from realtime_batch.transport import TransportError, open_transport


def test_stats_on_the_standin_come_from_its_administration_api(transport, queue):
    from realtime_batch.transport import Message

    transport.declare_queue(queue)
    transport.send(queue, [Message(b"a"), Message(b"b")])
    stats = transport.stats()
    assert stats.transport == "servicebus"
    [mine] = [q for q in stats.queues if q.name == queue]
    assert (mine.depth, mine.dead_letter, mine.leased) == (2, 0, None)
    assert stats.engines == () and stats.uptime is None
    assert any("engines are not listed" in note for note in stats.notes)
    assert not any("no administration API" in note for note in stats.notes)


def test_stats_on_an_emulator_without_administration_api_lists_declared_queues(
    transport, queue, monkeypatch
):
    from azure.core.exceptions import ServiceRequestError

    transport.declare_queue(queue)

    def unreachable(*args, **kwargs):
        raise ServiceRequestError("connection reset")  # the official emulator's answer

    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client", unreachable)
    stats = transport.stats()
    assert [q.name for q in stats.queues] == [queue]
    assert stats.queues[0].depth is None  # unknown, not zero
    assert any("serves no administration API" in note for note in stats.notes)


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
