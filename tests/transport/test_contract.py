"""The transport contract: every backend in ``BACKENDS`` must pass these unchanged."""

from __future__ import annotations

import threading
import time

import pytest

from realtime_batch.transport import (
    LockLostError,
    Message,
    MessageTooLargeError,
    QueueNotFoundError,
    QueueSettingsConflict,
    TransportClosedError,
    TransportError,
    dead_letter_queue,
)

SHORT_LOCK = 1.0  # seconds; long enough for slow CI, short enough to keep tests quick


def bodies(deliveries) -> list[bytes]:
    return [d.message.body for d in deliveries]


def drain(transport, queue, expected: int, *, group=None, deadline: float = 10.0):
    """Receive (and complete) until ``expected`` messages arrived or the deadline passed."""
    got = []
    end = time.monotonic() + deadline
    while len(got) < expected and time.monotonic() < end:
        batch = transport.receive(queue, max_messages=expected - len(got), timeout=0.5, group=group)
        for delivery in batch:
            transport.complete(delivery)
        got.extend(batch)
    return got


# -- basics -------------------------------------------------------------------------------


def test_send_receive_complete_roundtrip(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    sent = Message(b"hello", correlation_id="c-1", properties={"k": "v", "n": 3})
    t.send(queue, sent)
    [d] = t.receive(queue, timeout=5)
    assert d.message.body == b"hello"
    assert d.message.id == sent.id
    assert d.message.correlation_id == "c-1"
    assert d.message.properties["k"] == "v"
    assert d.message.properties["n"] == 3
    assert d.delivery_count == 1
    assert d.locked_until > time.time()
    t.complete(d)
    assert t.receive(queue, timeout=0.3) == []


def test_message_defaults_and_immutability():
    m = Message(b"x")
    assert isinstance(m.id, str) and m.id
    assert Message(b"x").id != m.id
    assert m.properties == {} and m.group is None and m.ttl is None
    with pytest.raises(AttributeError):
        m.body = b"y"
    with pytest.raises(TypeError):
        Message("not bytes")


def test_declare_queue_is_idempotent(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, Message(b"kept"))
    t.declare_queue(queue)  # must not wipe the queue
    assert bodies(t.receive(queue, timeout=5)) == [b"kept"]


def test_declare_with_other_settings_is_a_conflict(open_t, queue):
    first, second = open_t(), open_t()
    first.declare_queue(queue, lock_duration=5.0, max_delivery_count=3)
    first.send(queue, Message(b"kept"))
    with pytest.raises(QueueSettingsConflict):  # e.g. a 0.05 s lock declared first
        second.declare_queue(queue, lock_duration=0.05, max_delivery_count=1)
    with pytest.raises(QueueSettingsConflict):
        second.declare_queue(queue, max_delivery_count=1)
    second.declare_queue(queue)  # no settings named: the existing queue, whatever they are
    second.declare_queue(queue, lock_duration=5.0, max_delivery_count=3)  # the same: fine
    [d] = second.receive(queue, timeout=5)  # the queue and its message are unchanged
    assert d.message.body == b"kept"
    assert d.locked_until - time.time() > 1.0  # still the 5 s lock, not 0.05 s
    second.complete(d)


def test_fifo_order_and_batch_send(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, [Message(str(i).encode()) for i in range(50)])
    got = drain(t, queue, 50)
    assert bodies(got) == [str(i).encode() for i in range(50)]


def test_receive_batches_up_to_max_messages(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, [Message(b"%d" % i) for i in range(10)])
    got = []
    end = time.monotonic() + 10
    while len(got) < 10 and time.monotonic() < end:
        batch = t.receive(queue, max_messages=4, timeout=1)
        assert len(batch) <= 4
        got.extend(batch)
    assert len(got) == 10
    for d in got:
        t.complete(d)


def test_receive_times_out_empty(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    start = time.monotonic()
    assert t.receive(queue, timeout=0.3) == []
    assert time.monotonic() - start >= 0.25


def test_receive_wakes_when_a_message_arrives(open_t, queue):
    receiver, sender = open_t(), open_t()
    receiver.declare_queue(queue)
    result = []
    thread = threading.Thread(target=lambda: result.extend(receiver.receive(queue, timeout=10)))
    thread.start()
    time.sleep(0.2)
    sender.send(queue, Message(b"wake"))
    thread.join(15)
    assert bodies(result) == [b"wake"]
    receiver.complete(result[0])


# -- leases ---------------------------------------------------------------------------------


def test_leased_message_is_invisible_to_others(open_t, queue):
    a, b = open_t(), open_t()
    a.declare_queue(queue, lock_duration=30)
    a.send(queue, Message(b"one"))
    [d] = a.receive(queue, timeout=5)
    assert b.receive(queue, timeout=0.3) == []
    a.complete(d)


def test_abandon_redelivers_with_incremented_count(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, Message(b"again"))
    [first] = t.receive(queue, timeout=5)
    t.abandon(first)
    [second] = t.receive(queue, timeout=5)
    assert second.message.id == first.message.id
    assert second.delivery_count == first.delivery_count + 1
    t.complete(second)


def test_expired_lease_redelivers_and_complete_raises_lock_lost(open_t, queue):
    t = open_t()
    t.declare_queue(queue, lock_duration=SHORT_LOCK)
    t.send(queue, Message(b"slow"))
    [first] = t.receive(queue, timeout=5)
    time.sleep(SHORT_LOCK + 0.5)
    [second] = t.receive(queue, timeout=5)
    assert second.message.id == first.message.id
    assert second.delivery_count == 2
    with pytest.raises(LockLostError):
        t.complete(first)
    t.complete(second)


def test_renew_lock_keeps_the_lease(open_t, queue):
    t = open_t()
    t.declare_queue(queue, lock_duration=SHORT_LOCK)
    t.send(queue, Message(b"long"))
    [d] = t.receive(queue, timeout=5)
    before = d.locked_until
    for _ in range(3):
        time.sleep(SHORT_LOCK / 2)
        assert t.renew_lock(d) == d.locked_until
    assert d.locked_until > before
    assert t.receive(queue, timeout=0.2) == []  # still leased to us
    t.complete(d)


def test_settling_twice_raises_lock_lost(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, Message(b"once"))
    [d] = t.receive(queue, timeout=5)
    t.complete(d)
    with pytest.raises(LockLostError):
        t.complete(d)


# -- dead letters ----------------------------------------------------------------------------


def test_max_delivery_count_moves_to_dead_letter_queue(open_t, queue):
    t = open_t()
    t.declare_queue(queue, max_delivery_count=3)
    t.send(queue, Message(b"poison", properties={"origin": "test"}))
    counts = []
    for _ in range(3):
        [d] = t.receive(queue, timeout=5)
        counts.append(d.delivery_count)
        t.abandon(d)
    assert counts == [1, 2, 3]
    assert t.receive(queue, timeout=0.3) == []
    [dead] = t.receive(dead_letter_queue(queue), timeout=5)
    assert dead.message.body == b"poison"
    assert dead.message.properties["origin"] == "test"
    assert dead.message.properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"
    t.complete(dead)


def test_explicit_dead_letter_records_reason(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, Message(b"bad"))
    [d] = t.receive(queue, timeout=5)
    t.dead_letter(d, "MalformedTask", "not JSON")
    [dead] = t.receive(dead_letter_queue(queue), timeout=5)
    assert dead.message.properties["DeadLetterReason"] == "MalformedTask"
    assert dead.message.properties["DeadLetterErrorDescription"] == "not JSON"
    t.complete(dead)
    assert t.receive(queue, timeout=0.2) == []


def test_dead_letter_queue_name():
    assert dead_letter_queue("tasks") == "tasks/$deadletterqueue"


# -- groups and ttl --------------------------------------------------------------------------


def test_groups_are_separate_mailboxes(open_t, queue):
    t = open_t()
    t.declare_queue(queue, grouped=True)
    t.send(queue, [Message(b"a1", group="a"), Message(b"b1", group="b"), Message(b"a2", group="a")])
    assert bodies(drain(t, queue, 2, group="a")) == [b"a1", b"a2"]
    assert bodies(drain(t, queue, 1, group="b")) == [b"b1"]
    assert t.receive(queue, timeout=0.2, group="a") == []


def test_two_group_receivers_concurrently(open_t, queue):
    t1, t2 = open_t(), open_t()
    t1.declare_queue(queue, grouped=True)
    got: dict[str, list] = {}

    def consume(t, group):
        got[group] = drain(t, queue, 20, group=group, deadline=20)

    threads = [threading.Thread(target=consume, args=(t, g)) for t, g in ((t1, "x"), (t2, "y"))]
    for th in threads:
        th.start()
    sender = open_t()
    sender.send(
        queue, [Message(b"%s%d" % (g.encode(), i), group=g) for i in range(20) for g in ("x", "y")]
    )
    for th in threads:
        th.join(30)
    assert bodies(got["x"]) == [b"x%d" % i for i in range(20)]
    assert bodies(got["y"]) == [b"y%d" % i for i in range(20)]


def test_expired_ttl_message_is_never_delivered(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, [Message(b"short", ttl=0.3), Message(b"long", ttl=60)])
    time.sleep(0.8)
    got = drain(t, queue, 2, deadline=2)
    assert bodies(got) == [b"long"]


# -- bad input ---------------------------------------------------------------------------


def test_oversize_message_is_rejected_and_nothing_sent(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    with pytest.raises(MessageTooLargeError):
        t.send(queue, Message(b"x" * (t.max_message_size + 1)))
    t.send(queue, Message(b"fine"))
    assert bodies(drain(t, queue, 1)) == [b"fine"]


def test_unknown_queue_raises(open_t, queue):
    t = open_t()
    with pytest.raises(QueueNotFoundError):
        t.send(f"{queue}-missing", Message(b"x"))
    with pytest.raises(QueueNotFoundError):
        t.receive(f"{queue}-missing", timeout=0.2)


def test_send_rejects_non_messages(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    with pytest.raises(TypeError):
        t.send(queue, [b"raw bytes"])


def test_errors_share_one_tree():
    for exc in (LockLostError, MessageTooLargeError, QueueNotFoundError, TransportClosedError):
        assert issubclass(exc, TransportError)


def test_closed_transport_refuses_work_and_close_is_idempotent(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.close()
    t.close()
    with pytest.raises(TransportClosedError):
        t.send(queue, Message(b"x"))


def test_context_manager_closes(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    with t as same:
        assert same is t
    with pytest.raises(TransportClosedError):
        t.receive(queue, timeout=0)


# -- concurrency ---------------------------------------------------------------------------


def test_competing_consumers_get_each_message_exactly_once(open_t, queue):
    producer = open_t()
    producer.declare_queue(queue)
    total = 300
    producer.send(queue, [Message(b"%d" % i) for i in range(total)])
    seen: list[bytes] = []
    lock = threading.Lock()

    def consume(t):
        end = time.monotonic() + 30
        while time.monotonic() < end:
            batch = t.receive(queue, max_messages=10, timeout=0.5)
            if not batch:
                with lock:
                    if len(seen) >= total:
                        return
                continue
            for d in batch:
                t.complete(d)
            with lock:
                seen.extend(d.message.body for d in batch)

    consumers = [open_t() for _ in range(3)]
    threads = [threading.Thread(target=consume, args=(c,)) for c in consumers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(40)
    assert sorted(seen) == sorted(b"%d" % i for i in range(total))


def test_one_transport_shared_by_threads(open_t, queue):
    t = open_t()
    t.declare_queue(queue)

    def produce(k):
        for i in range(25):
            t.send(queue, Message(b"%d-%d" % (k, i)))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    got = drain(t, queue, 100, deadline=20)
    assert len(got) == 100
    assert len({d.message.body for d in got}) == 100


def test_send_and_complete_replies_and_settles_together(open_t, queue):
    t = open_t()
    replies = f"{queue}-replies"
    t.declare_queue(queue)
    t.declare_queue(replies)
    t.send(queue, [Message(b"task-1"), Message(b"task-2")])
    leased = t.receive(queue, max_messages=2, timeout=5)
    while len(leased) < 2:
        leased += t.receive(queue, max_messages=1, timeout=5)
    t.send_and_complete(replies, [Message(b"r1"), Message(b"r2")], leased)
    assert t.receive(queue, timeout=0.3) == []  # both tasks completed
    assert bodies(drain(t, replies, 2)) == [b"r1", b"r2"]
    with pytest.raises(LockLostError):  # settled already
        t.send_and_complete(replies, [Message(b"r3")], leased[:1])
    assert bodies(drain(t, replies, 1)) == [b"r3"]  # the send still happened


def test_send_and_complete_to_unknown_queue_completes_nothing(open_t, queue):
    t = open_t()
    t.declare_queue(queue)
    t.send(queue, Message(b"task"))
    [d] = t.receive(queue, timeout=5)
    with pytest.raises(QueueNotFoundError):
        t.send_and_complete(f"{queue}-missing", [Message(b"r")], [d])
    t.complete(d)  # still leased to us: the failed call completed nothing


# -- limits ---------------------------------------------------------------------------------
def test_send_past_a_queues_max_length_is_refused_and_loses_nothing(open_t, backend_name, queue):
    if backend_name == "servicebus":
        pytest.skip("Service Bus bounds a queue by size (its own quota), not by max_length")
    from realtime_batch.transport import QueueFullError

    t = open_t(send_timeout=0.5)  # how long a zmq:// send waits for room before it fails
    t.declare_queue(queue, max_length=3)
    t.send(queue, [Message(b"1"), Message(b"2")])
    t.send(queue, Message(b"3"))
    with pytest.raises(QueueFullError, match="full"):
        t.send(queue, Message(b"4"))
    with pytest.raises(QueueFullError):
        t.send(queue, [Message(b"5"), Message(b"6")])  # a batch goes whole or not at all
    [first] = t.receive(queue, timeout=5)
    with pytest.raises(QueueFullError):  # a leased message still counts
        t.send(queue, Message(b"4"))
    t.complete(first)
    t.send(queue, Message(b"4"))
    assert sorted(bodies(drain(t, queue, 3))) == [b"2", b"3", b"4"]
