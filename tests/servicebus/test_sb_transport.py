"""ServiceBusTransport beyond the shared contract: batching, sessions, modes, error mapping."""

from __future__ import annotations

import time

import pytest
from azure.servicebus import exceptions as sb_errors

from realtime_batch.transport import (
    ConnectionLostError,
    LockLostError,
    Message,
    MessageTooLargeError,
    QueueFullError,
    QueueNotFoundError,
    QueueSettingsConflict,
    TransportError,
    TransportTimeoutError,
    dead_letter_queue,
    open_transport,
)
from realtime_batch.transport import servicebus as sb

pytestmark = pytest.mark.azure


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (sb_errors.MessageLockLostError(message="x"), LockLostError),
        (sb_errors.SessionLockLostError(message="x"), LockLostError),
        (sb_errors.MessageAlreadySettled(action="complete"), LockLostError),
        (sb_errors.MessageSizeExceededError(message="x"), MessageTooLargeError),
        (sb_errors.MessagingEntityNotFoundError(message="x"), QueueNotFoundError),
        (sb_errors.ServiceBusQuotaExceededError(message="x"), QueueFullError),
        (sb_errors.OperationTimeoutError(message="x"), TransportTimeoutError),
        (sb_errors.ServiceBusConnectionError(message="x"), ConnectionLostError),
        (sb_errors.ServiceBusCommunicationError(message="x"), ConnectionLostError),
        (sb_errors.ServiceBusAuthenticationError(message="x"), TransportError),
        (sb_errors.ServiceBusError(message="x"), TransportError),
    ],
)
def test_sdk_errors_map_into_the_transport_tree(raised, expected):
    with pytest.raises(expected) as info, sb.map_servicebus_errors("op"):
        raise raised
    assert info.value.__cause__ is raised


def test_foreign_errors_pass_through_unmapped():
    with pytest.raises(KeyError), sb.map_servicebus_errors("op"):
        raise KeyError("not ours")


def test_connection_strings_and_namespace_urls_open_this_backend(conn_str):
    class FakeCredential:
        def get_token(self, *scopes, **kwargs):  # never called: nothing connects
            raise AssertionError("no network expected")

    with open_transport(conn_str) as t:
        assert isinstance(t, sb.ServiceBusTransport) and t.emulator
    with open_transport("servicebus://contoso", credential=FakeCredential()) as t:
        assert t.namespace == "contoso.servicebus.windows.net" and not t.emulator
    with pytest.raises(ValueError):
        open_transport(conn_str, group_receive_mode="sometimes")


def test_large_sends_are_split_into_batches_at_the_size_limit(standin, transport, queue):
    transport.declare_queue(queue)
    before = standin.stats()["total"]
    payload = 100 * 1024
    transport.send(queue, [Message(bytes([i]) * payload) for i in range(6)])
    after = standin.stats()["total"]
    assert after["messages_in"] - before.get("messages_in", 0) == 6
    assert after["transfers_in"] - before.get("transfers_in", 0) == 3  # two per 256 KiB
    got = []
    while len(got) < 6:
        batch = transport.receive(queue, max_messages=6, timeout=5)
        assert batch
        got.extend(batch)
    assert [d.message.body[0] for d in got] == list(range(6))
    assert all(len(d.message.body) == payload for d in got)


def test_small_messages_go_in_one_transfer(standin, transport, queue):
    transport.declare_queue(queue)
    before = standin.stats()["total"]
    transport.send(queue, [Message(b"%d" % i) for i in range(200)])
    after = standin.stats()["total"]
    assert after["transfers_in"] - before.get("transfers_in", 0) == 1


def test_message_fields_survive_the_round_trip(transport, queue):
    transport.declare_queue(queue, grouped=True)
    sent = Message(
        b"\x00\xffbinary",
        group="g1",
        correlation_id="corr",
        properties={"s": "text", "i": 7, "f": 1.5, "b": True},
        ttl=600,
    )
    transport.send(queue, sent)
    [d] = transport.receive(queue, timeout=5, group="g1")
    m = d.message
    assert (m.body, m.id, m.group, m.correlation_id) == (sent.body, sent.id, "g1", "corr")
    assert m.properties == sent.properties
    assert m.ttl == pytest.approx(600)
    transport.complete(d)


def test_session_lock_is_kept_while_a_mailbox_is_read(transport, queue):
    transport.declare_queue(queue, grouped=True, lock_duration=2)
    end = time.monotonic() + 5
    while time.monotonic() < end:  # longer than the session lock
        assert transport.receive(queue, timeout=0.5, group="mine") == []
    transport.send(queue, Message(b"late", group="mine"))
    [d] = transport.receive(queue, timeout=5, group="mine")
    before = d.locked_until
    time.sleep(0.1)
    assert transport.renew_lock(d) >= before
    transport.complete(d)


def test_dead_letter_queue_of_a_session_queue_needs_no_session(transport, queue):
    transport.declare_queue(queue, grouped=True)
    transport.send(queue, Message(b"bad", group="g"))
    [d] = transport.receive(queue, timeout=5, group="g")
    transport.dead_letter(d, "Why", "because")
    [dead] = transport.receive(dead_letter_queue(queue), timeout=5)
    assert dead.message.group == "g"
    assert dead.message.properties["DeadLetterReason"] == "Why"
    transport.complete(dead)


def test_receive_and_delete_mailboxes(conn_str, queue):
    with open_transport(conn_str, group_receive_mode="receive_and_delete") as t:
        t.declare_queue(queue, grouped=True)
        t.send(queue, [Message(b"1", group="m"), Message(b"2", group="m")])
        first, second = [], []
        while len(first) + len(second) < 2:
            got = t.receive(queue, max_messages=2, timeout=5, group="m")
            assert got
            (first if not first else second).extend(got)
        deliveries = first + second
        t.complete(deliveries[0])  # nothing to settle: already removed
        with pytest.raises(LockLostError):
            t.abandon(deliveries[1])
        assert t.receive(queue, timeout=0.3, group="m") == []


def test_prefetching_receiver(conn_str, queue):
    with open_transport(conn_str, prefetch=20) as t:
        t.declare_queue(queue)
        t.send(queue, [Message(b"%d" % i) for i in range(30)])
        got = []
        end = time.monotonic() + 20
        while len(got) < 30 and time.monotonic() < end:
            batch = t.receive(queue, max_messages=10, timeout=1)
            for d in batch:
                t.complete(d)
            got.extend(batch)
        assert sorted(int(d.message.body) for d in got) == list(range(30))


def test_declare_where_no_administration_api_is_served_trusts_provisioning(
    conn_str, queue, monkeypatch
):
    # The official emulator serves no administration API the SDK reaches: its queues come
    # from Config.json. The transport logs the failure and carries on.
    from azure.core.exceptions import ServiceRequestError

    def unreachable(*args, **kwargs):
        raise ServiceRequestError("connection reset")

    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client", unreachable)
    with open_transport(conn_str) as t:
        t.declare_queue(queue)  # logs, does not raise
        with pytest.raises(QueueNotFoundError):
            t.send(queue, Message(b"x"))


def test_declare_creates_the_queue_through_the_administration_api(conn_str, queue):
    from azure.servicebus.management import ServiceBusAdministrationClient

    with open_transport(conn_str) as t:
        t.declare_queue(queue, grouped=True, lock_duration=7, max_delivery_count=4)
    with ServiceBusAdministrationClient.from_connection_string(conn_str) as admin:
        made = admin.get_queue(queue)
    assert made.requires_session is True
    assert made.lock_duration.total_seconds() == 7 and made.max_delivery_count == 4
    with open_transport(conn_str) as fresh, pytest.raises(QueueSettingsConflict):
        fresh.declare_queue(queue, lock_duration=9)


def test_the_product_does_not_know_the_standin():
    import inspect

    from realtime_batch.transport import servicebus_admin, servicebus_cli

    for module in (sb, servicebus_admin, servicebus_cli):
        source = inspect.getsource(module)
        assert "$rtbatch" not in source, module  # the stand-in's old control entity
        assert "servicebus_standin" not in source and "tests/" not in source, module


def test_declare_without_manage_rights_is_logged_once_and_trusts_provisioning(monkeypatch, caplog):
    import contextlib

    from azure.core.exceptions import ClientAuthenticationError

    asked = []

    @contextlib.contextmanager
    def refusing(target, credential=None, **options):
        asked.append(options)
        raise ClientAuthenticationError("no Manage claim")
        yield  # pragma: no cover

    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client", refusing)
    conn = "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=x"
    with open_transport(conn) as t, caplog.at_level("INFO", "realtime_batch.transport"):
        t.declare_queue("tasks")
        t.declare_queue("results", grouped=True)
    assert asked == [{"retry_total": 0}]  # one attempt, not repeated for the next queue
    refusals = [r for r in caplog.records if "assuming it was provisioned" in r.getMessage()]
    assert len(refusals) == 1 and "no Manage claim" in refusals[0].getMessage()


def test_declare_with_manage_false_never_asks(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the administration API was called")

    monkeypatch.setattr("realtime_batch.transport.servicebus_admin.admin_client", never)
    conn = "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=x"
    with open_transport(conn, manage=False) as t:
        t.declare_queue("tasks")
