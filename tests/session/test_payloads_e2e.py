"""Large and binary values end to end: Session + LocalPool with real engines (#20).

zmq:// and Service Bus (the stand-in) engines are processes sharing the pool's payload
directory (direct mode: the task worker fetches and stores; relay mode: the engine does);
memory:// engines are threads of this process sharing its in-memory store.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from session_pools import backend_pool, store_files, write_tasks

import realtime_batch as rb
from realtime_batch.payloads import MemoryStore
from realtime_batch.protocol import ProtocolError
from realtime_batch.transport import Message

TASKS = {
    "echo_bytes.py": """
        def run(value, *, times=1):
            if isinstance(value, (bytes, str)):
                return value * times
            return value
    """,
    "types.py": """
        def run(value):
            return type(value).__name__, value
    """,
}

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> list[Path]:
    return write_tasks(tmp_path_factory.mktemp("payload-tasks"), TASKS)


@pytest.fixture(
    scope="module",
    params=["memory", "zmq", "zmq-relay", pytest.param("servicebus", marks=pytest.mark.azure)],
)
def pool(request, task_files):
    with backend_pool(request.param, task_files, engines=1) as local_pool:
        yield local_pool


_store_files = store_files


def _lose_all(pool) -> None:
    store = pool.payload_store
    for item in _store_files(pool):
        if isinstance(store, MemoryStore):
            job, space, digest = item
            store.delete(job, space, [digest])
        else:
            item.unlink()


def test_bytes_and_tagged_values_round_trip(pool):
    when = dt.datetime(2026, 12, 2, 15, 9, 51)
    with rb.Session(pool) as s:
        assert s.submit("echo_bytes.py", b"\x00\xff", times=3).result(60) == b"\x00\xff" * 3
        assert s.submit("types.py", when).result(60) == ("datetime", when)
        assert s.submit("types.py", (1, {2})).result(60) == ("tuple", (1, {2}))
        assert s.submit("types.py", bytearray(b"ab")).result(60) == ("bytes", b"ab")


def test_a_value_that_cannot_travel_is_refused_at_submit(pool):
    with rb.Session(pool) as s, pytest.raises(ProtocolError, match="args"):
        s.submit("types.py", object())


def test_large_arguments_and_results_travel_and_nothing_is_left_after_close(pool):
    blob = bytes(range(256)) * (4 * MIB // 256)  # 4 MiB: over every transport's limit
    with rb.Session(pool) as s:
        assert s.submit("echo_bytes.py", blob).result(60) == blob
        doubled = s.submit("echo_bytes.py", blob[: MIB + 5], times=2).result(60)
        assert doubled == blob[: MIB + 5] * 2
        big_text = s.submit("echo_bytes.py", "é" * MIB).result(60)
        assert big_text == "é" * MIB
        assert _store_files(pool) == []  # taken: deleted
        s.submit("echo_bytes.py", blob[:-1])  # never waited for
        assert s.submit("echo_bytes.py", b"small").result(60) == b"small"
    assert _store_files(pool) == []


def test_a_missing_argument_payload_is_the_tasks_error(pool):
    blob = b"\x01" * (2 * MIB)
    with rb.Session(pool) as s:
        real = s._payloads.encode_task  # delete what the session stores before it is sent

        def encode_then_lose(record):
            body = real(record)
            _lose_all(pool)
            return body

        s._payloads.encode_task = encode_then_lose
        future = s.submit("echo_bytes.py", blob)
        with pytest.raises(rb.TaskError) as info:
            future.result(60)
        assert info.value.remote_type == "PayloadMissingError"
        assert "not in the store" in str(info.value)


def test_a_waiting_task_with_a_large_argument_leaves_nothing_once_taken(pool):
    """A workflow task's arguments are checked at submit (by encoding them once) and sent
    when its input is done: the check's stored copy must not outlive the task."""
    blob = bytes(range(256)) * (2 * MIB // 256)
    with rb.Session(pool) as s:
        first = s.submit("echo_bytes.py", b"in")
        second = s.submit("echo_bytes.py", blob, after=[first])
        assert second.result(60) == blob
        assert _store_files(pool) == []


@pytest.mark.parametrize("size", [MIB, 10 * MIB])
def test_one_and_ten_mib_round_trip_within_the_message_limit(pool, size):
    """The benchmarks' payload-1MiB and payload-10MiB: every message stays under the limit."""
    sent = []
    with rb.Session(pool) as s:
        real = s._transport.send

        def recording_send(queue, messages):
            batch = [messages] if isinstance(messages, Message) else list(messages)
            sent.extend(len(message.body) for message in batch)
            return real(queue, batch)

        s._transport.send = recording_send
        text = "x" * size
        assert s.submit("echo_bytes.py", text).result(120) == text
    assert sent and max(sent) <= s._transport.max_message_size
    assert _store_files(pool) == []


def test_a_memory_pool_leaves_nothing_in_the_process_store_after_close(task_files):
    url = f"memory://p-{uuid.uuid4().hex}"
    with rb.LocalPool(engines=1, transport=url, task_files=task_files) as p:
        store = p.payload_store
        with rb.Session(p) as s:
            blob = b"\x03" * (2 * MIB)
            assert s.submit("echo_bytes.py", blob).result(60) == blob
            s.submit("echo_bytes.py", b"\x04" * (2 * MIB))  # never waited for
        assert [n for n in store.names() if n[0] == p.job] == []
    assert [n for n in store.names() if n[0] == p.job] == []
