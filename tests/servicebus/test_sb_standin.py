"""The stand-in's behaviour, driven through the real azure-servicebus SDK."""

from __future__ import annotations

import datetime
import time

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus import exceptions as sb_errors
from azure.servicebus.management import ServiceBusAdministrationClient
from servicebus_standin import StandInProcess, check_sas, entity_of

pytestmark = pytest.mark.azure


def declare(conn_str, name, *, lock_duration=30.0, max_delivery_count=10, sessions=False):
    """Create a queue as on the service: the administration client (HTTPS)."""
    with ServiceBusAdministrationClient.from_connection_string(conn_str) as admin:
        admin.create_queue(
            name,
            lock_duration=datetime.timedelta(seconds=lock_duration),
            max_delivery_count=max_delivery_count,
            requires_session=sessions,
        )


def body(message) -> bytes:
    return message.body if isinstance(message.body, bytes) else b"".join(message.body)


def test_process_prints_connection_string_first_and_stops_on_sigterm():
    process = StandInProcess()
    try:
        parts = dict(p.split("=", 1) for p in process.connection_string.split(";"))
        assert parts["Endpoint"] == f"sb://127.0.0.1:{process.port}"
        assert parts["UseDevelopmentEmulator"] == "true"
        assert parts["SharedAccessKeyName"] and parts["SharedAccessKey"]
    finally:
        assert process.stop() == 0


def test_entity_addresses_are_normalised():
    assert entity_of("amqps://127.0.0.1:5672/tasks") == "tasks"
    assert entity_of("amqps://h:1/tasks/$DeadLetterQueue") == "tasks/$deadletterqueue"
    assert entity_of("tasks/$management") == "tasks/$management"


def test_sas_signature_is_checked():
    from azure.servicebus._base_handler import ServiceBusSharedKeyCredential

    good = ServiceBusSharedKeyCredential("policy", "secret").get_token("sb://h/q").token
    assert check_sas(good, "policy", "secret")
    assert not check_sas(good, "policy", "other-secret")
    assert not check_sas(good, "other-policy", "secret")
    assert not check_sas("Bearer xyz", "policy", "secret")


def test_bad_key_is_refused_with_401(conn_str):
    bad = conn_str.replace("SharedAccessKey=", "SharedAccessKey=x")
    client = ServiceBusClient.from_connection_string(bad, retry_total=0)
    with client, pytest.raises(sb_errors.ServiceBusAuthenticationError):
        client.get_queue_sender("anything").__enter__()


def test_unknown_entity_is_not_found(sb_client, queue):
    with pytest.raises(sb_errors.MessagingEntityNotFoundError):
        sb_client.get_queue_sender(queue).__enter__()


def test_batch_transfer_is_unpacked_with_properties(conn_str, sb_client, queue):
    declare(conn_str, queue)
    with sb_client.get_queue_sender(queue) as sender:
        batch = sender.create_message_batch()
        for i in range(5):
            batch.add_message(
                ServiceBusMessage(b"m%d" % i, application_properties={"i": i}, message_id=f"id{i}")
            )
        sender.send_messages(batch)
    with sb_client.get_queue_receiver(queue) as receiver:
        got = []
        while len(got) < 5:
            msgs = receiver.receive_messages(max_message_count=5, max_wait_time=5)
            assert msgs
            got.extend(msgs)
        for m in got:
            receiver.complete_message(m)
    assert [body(m) for m in got] == [b"m%d" % i for i in range(5)]
    assert [m.message_id for m in got] == [f"id{i}" for i in range(5)]
    assert [m.application_properties[b"i"] for m in got] == list(range(5))
    assert all(m.sequence_number and m.enqueued_time_utc for m in got)


def test_abandon_counts_and_dead_letter_reason_reaches_the_dlq(conn_str, sb_client, queue):
    declare(conn_str, queue, max_delivery_count=5)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(b"x"))
    with sb_client.get_queue_receiver(queue) as receiver:
        [first] = receiver.receive_messages(max_wait_time=5)
        assert not first.delivery_count  # the wire count starts at 0
        receiver.abandon_message(first)
        [second] = receiver.receive_messages(max_wait_time=5)
        assert second.delivery_count == 1
        receiver.dead_letter_message(second, reason="Bad", error_description="why")
    dlq = sb_client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    with dlq:
        [dead] = dlq.receive_messages(max_wait_time=5)
        assert dead.dead_letter_reason == "Bad"
        assert dead.dead_letter_error_description == "why"
        dlq.complete_message(dead)


def test_renew_lock_over_management_and_lock_lost_after_settling(conn_str, sb_client, queue):
    declare(conn_str, queue, lock_duration=5)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(b"x"))
    with sb_client.get_queue_receiver(queue) as receiver:
        [m] = receiver.receive_messages(max_wait_time=5)
        before = m.locked_until_utc
        time.sleep(0.2)
        after = receiver.renew_message_lock(m)
        assert after > before
        receiver.complete_message(m)
        with pytest.raises(sb_errors.MessageLockLostError):
            m._settled = False  # renew a lock the broker no longer has
            receiver.renew_message_lock(m)


def test_lock_expiry_redelivers_with_count(conn_str, sb_client, queue):
    declare(conn_str, queue, lock_duration=1)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(b"x"))
    with sb_client.get_queue_receiver(queue) as receiver:
        [m] = receiver.receive_messages(max_wait_time=5)
        time.sleep(1.5)
        [again] = receiver.receive_messages(max_wait_time=5)
        assert again.message_id == m.message_id and again.delivery_count == 1
        with pytest.raises(sb_errors.MessageLockLostError):
            receiver.complete_message(m)
        receiver.complete_message(again)


def test_ttl_expired_message_is_not_delivered(conn_str, sb_client, queue):
    declare(conn_str, queue)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages(
            [
                ServiceBusMessage(b"short", time_to_live=datetime.timedelta(seconds=1)),
                ServiceBusMessage(b"long"),
            ]
        )
    time.sleep(1.3)
    with sb_client.get_queue_receiver(queue) as receiver:
        msgs = receiver.receive_messages(max_message_count=5, max_wait_time=2)
        assert [body(m) for m in msgs] == [b"long"]


def test_sessions_filter_lock_and_next_available(conn_str, sb_client, queue):
    declare(conn_str, queue, sessions=True)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages(
            [ServiceBusMessage(b"a1", session_id="a"), ServiceBusMessage(b"b1", session_id="b")]
        )
        with pytest.raises(sb_errors.ServiceBusError):
            sender.send_messages(ServiceBusMessage(b"no session"))
    with sb_client.get_queue_receiver(queue, session_id="b") as receiver:
        assert receiver.session.session_id == "b"
        assert receiver.session.locked_until_utc > datetime.datetime.now(datetime.timezone.utc)
        [m] = receiver.receive_messages(max_wait_time=5)
        assert body(m) == b"b1" and m.session_id == "b"
        receiver.complete_message(m)
        receiver.session.renew_lock()
        with pytest.raises(sb_errors.SessionCannotBeLockedError):
            sb_client.get_queue_receiver(queue, session_id="b").__enter__()
    with sb_client.get_queue_receiver(
        queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
    ) as receiver:
        assert receiver.session.session_id == "a"
        [m] = receiver.receive_messages(max_wait_time=5)
        receiver.complete_message(m)


def test_non_session_receiver_on_session_queue_is_refused(conn_str, sb_client, queue):
    declare(conn_str, queue, sessions=True)
    receiver = sb_client.get_queue_receiver(queue)
    with pytest.raises(sb_errors.ServiceBusError):
        receiver.__enter__()


def test_receive_and_delete_removes_on_delivery(conn_str, sb_client, queue):
    declare(conn_str, queue)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(b"x"))
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    with sb_client.get_queue_receiver(queue, receive_mode=mode) as receiver:
        [m] = receiver.receive_messages(max_wait_time=5)
        assert body(m) == b"x"
    with sb_client.get_queue_receiver(queue) as receiver:
        assert receiver.receive_messages(max_wait_time=0.5) == []


def test_unknown_management_operation_answers_501(conn_str, sb_client, queue):
    declare(conn_str, queue)
    receiver = sb_client.get_queue_receiver(queue)
    with receiver, pytest.raises(sb_errors.ServiceBusError, match="501"):
        receiver.peek_messages()


def test_counters_are_reported(standin, conn_str, sb_client, queue):
    declare(conn_str, queue)
    before = standin.stats()["total"]
    with sb_client.get_queue_sender(queue) as sender:
        batch = sender.create_message_batch()
        for _ in range(3):
            batch.add_message(ServiceBusMessage(b"x"))
        sender.send_messages(batch)
    after = standin.stats()["total"]
    assert after["messages_in"] - before.get("messages_in", 0) == 3
    assert after["transfers_in"] - before.get("transfers_in", 0) == 1
    assert after["cbs_requests"] > before.get("cbs_requests", 0)


def test_administration_api_gets_creates_updates_and_lists(conn_str, queue):
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    with ServiceBusAdministrationClient.from_connection_string(conn_str) as admin:
        with pytest.raises(ResourceNotFoundError):
            admin.get_queue(queue)
        declare(conn_str, queue, lock_duration=12, max_delivery_count=3)
        with pytest.raises(ResourceExistsError):
            admin.create_queue(queue)
        got = admin.get_queue(queue)
        assert (got.lock_duration, got.max_delivery_count) == (datetime.timedelta(seconds=12), 3)
        got.max_delivery_count = 6
        admin.update_queue(got)
        assert admin.get_queue(queue).max_delivery_count == 6
        listed = {q.name: q for q in admin.list_queues_runtime_properties()}
        assert listed[queue].active_message_count == 0


def test_administration_api_counts_messages(conn_str, sb_client, queue):
    declare(conn_str, queue)
    with sb_client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(b"1"), ServiceBusMessage(b"2")])
    with ServiceBusAdministrationClient.from_connection_string(conn_str) as admin:
        props = admin.get_queue_runtime_properties(queue)
    assert (props.active_message_count, props.dead_letter_message_count) == (2, 0)


def test_administration_api_refuses_a_bad_key(conn_str, queue):
    from azure.core.exceptions import ClientAuthenticationError

    bad = conn_str.replace("SharedAccessKey=", "SharedAccessKey=not-")
    admin = ServiceBusAdministrationClient.from_connection_string(bad, retry_total=0)
    with admin, pytest.raises(ClientAuthenticationError):
        admin.create_queue(queue)


def test_administration_api_refuses_switching_sessions(conn_str, queue):
    from azure.core.exceptions import HttpResponseError

    declare(conn_str, queue)
    with ServiceBusAdministrationClient.from_connection_string(conn_str, retry_total=0) as admin:
        got = admin.get_queue(queue)
        got.requires_session = True
        with pytest.raises(HttpResponseError):
            admin.update_queue(got)
