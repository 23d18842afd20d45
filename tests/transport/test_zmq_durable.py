"""Durable broker mode (``--data-dir``): a SIGKILLed broker loses no accepted message."""

from __future__ import annotations

import threading
import time

from realtime_batch.transport import Message, TransportError, dead_letter_queue, open_transport
from realtime_batch.transport.base import QueueOptions
from realtime_batch.transport.store import QueueStore
from realtime_batch.transport.zeromq.journal import SqliteJournal


def test_journal_restores_queues_and_messages(tmp_path):
    journal = SqliteJournal(tmp_path)
    store = QueueStore(listener=journal)
    store.declare("q", QueueOptions(5.0, 3))
    journal.on_declare("q", QueueOptions(5.0, 3))
    store.put("q", [Message(b"a", properties={"k": 1}), Message(b"b", group="g")], now=1.0)
    [grant] = store.take("q", max_messages=1, now=2.0)
    store.dead_letter(grant.token, "Bad", "why", now=2.0)
    journal.close()

    restored_store = QueueStore()
    assert SqliteJournal(tmp_path).restore(restored_store) == 2
    assert restored_store.queue("q").options == QueueOptions(5.0, 3)
    [b] = restored_store.take("q", max_messages=5, now=3.0)
    assert (b.message.body, b.message.group) == (b"b", "g")
    [dead] = restored_store.take(dead_letter_queue("q"), max_messages=5, now=3.0)
    assert dead.message.body == b"a"
    assert dead.message.properties == {"k": 1, "DeadLetterReason": "Bad",
                                       "DeadLetterErrorDescription": "why"}  # fmt: skip


def test_journal_keeps_the_count_of_a_delivery_given_back(tmp_path):
    """``give_back`` does not count the delivery, after a restart either."""
    journal = SqliteJournal(tmp_path)
    store = QueueStore(listener=journal)
    store.declare("q", QueueOptions(5.0, 3))
    journal.on_declare("q", QueueOptions(5.0, 3))
    store.put("q", [Message(b"task")], now=1.0)
    [grant] = store.take("q", max_messages=1, now=2.0)
    store.give_back(grant.token, now=2.0)
    journal.close()

    restored = QueueStore()
    assert SqliteJournal(tmp_path).restore(restored) == 1
    [again] = restored.take("q", max_messages=1, now=3.0)
    assert again.delivery_count == 1  # as if the given-back delivery never happened


def test_sigkilled_durable_broker_loses_no_accepted_message(zmq_broker_factory, tmp_path, queue):
    broker = zmq_broker_factory("--data-dir", str(tmp_path))
    with open_transport(broker.url, heartbeat_interval=0.2) as t:
        t.declare_queue(queue, max_delivery_count=5)
        t.send(queue, [Message(b"%d" % i) for i in range(50)])
        leased = t.receive(queue, max_messages=5, timeout=10)
        assert len(leased) == 5
        t.complete_many(leased[:2])  # 2 done, 3 leased when the broker dies

    broker.kill()  # SIGKILL: no chance to flush anything beyond what was acknowledged
    broker.start()  # same port, same data dir

    with open_transport(broker.url, heartbeat_interval=0.2) as t:  # does not declare
        got = []
        while len(got) < 48:
            batch = t.receive(queue, max_messages=50, timeout=10)
            assert batch, f"only {len(got)} of 48 messages came back"
            t.complete_many(batch)
            got += batch
        assert sorted(int(d.message.body) for d in got) == list(range(2, 50))
        counts = {int(d.message.body): d.delivery_count for d in got}
        assert [counts[i] for i in (2, 3, 4)] == [2, 2, 2]  # were leased at the crash
        assert counts[10] == 1
        assert t.receive(queue, timeout=0.3) == []


def test_results_of_a_parked_settle_and_receive_survive_a_sigkill(
    zmq_broker_factory, tmp_path, queue
):
    """A task worker's results and completions are journalled when the broker takes them,
    though its request is still parked, waiting for a task, when the broker dies."""
    replies, tasks = f"{queue}-replies", f"{queue}-tasks"
    broker = zmq_broker_factory("--data-dir", str(tmp_path))
    worker = open_transport(broker.url, heartbeat_interval=0.2)
    for name in (queue, replies, tasks):
        worker.declare_queue(name)
    worker.send(queue, [Message(b"a"), Message(b"b")])
    leased = worker.receive(queue, max_messages=2, timeout=10)
    assert len(leased) == 2
    outcome: list[BaseException] = []

    def settle() -> None:
        try:
            worker.settle_and_receive(
                replies, [Message(b"ra"), Message(b"rb")], leased, tasks, timeout=30
            )
        except TransportError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=settle)
    thread.start()
    time.sleep(0.5)  # parked at the broker
    broker.kill()
    worker.close()  # before it could send the request again to a new broker
    thread.join(10)
    assert not thread.is_alive() and len(outcome) == 1
    broker.start()

    with open_transport(broker.url, heartbeat_interval=0.2) as t:
        got = t.receive(replies, max_messages=5, timeout=10)
        assert sorted(d.message.body for d in got) == [b"ra", b"rb"]
        t.complete_many(got)
        assert t.receive(queue, timeout=0.3) == []  # the tasks stayed completed


def test_journal_keeps_a_queues_max_length(tmp_path):
    journal = SqliteJournal(tmp_path)
    journal.on_declare("q", QueueOptions(5.0, 3, max_length=7))
    journal.close()
    restored = QueueStore()
    SqliteJournal(tmp_path).restore(restored)
    assert restored.queue("q").options == QueueOptions(5.0, 3, max_length=7)
