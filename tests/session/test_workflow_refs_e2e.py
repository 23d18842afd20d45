"""Workflow inputs passed on by reference (#20): a large result that came back as a
payload reference goes to the tasks waiting on it as that same reference.

The input's value is read once into the client (its future needs it) but not packed,
hashed or written to the store again for the dependent: the dependent's message carries
the reference, the stored payload is kept until the dependent's result is taken, then
deleted; nothing is left after ``close()``. memory:// engines are threads of this
process (their writes to the process's store are counted here too); zmq:// engines are
processes (the client's writes are counted).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from session_pools import backend_pool, store_files, write_tasks

import realtime_batch as rb
from realtime_batch.payloads import (
    DirectoryStore,
    MemoryStore,
    PayloadMissingError,
    Payloads,
    SessionPayloads,
)
from realtime_batch.protocol import ResultRecord, decode_task
from realtime_batch.transport import Message
from realtime_batch.values import PayloadRef, pack

MIB = 1024 * 1024

TASKS = {
    "make_blob.py": """
        import os
        import time


        def run(size, fill, gate=None):
            if gate:  # wait (at most a minute) until the test lets it finish
                deadline = time.monotonic() + 60
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.01)
            return bytes([fill]) * size
    """,
    "describe.py": """
        import hashlib


        def describe(value):
            if isinstance(value, bytes):
                return ["bytes", len(value), hashlib.sha256(value).hexdigest()]
            if isinstance(value, (list, tuple)):
                return [describe(item) for item in value]
            if isinstance(value, dict):
                return {key: describe(item) for key, item in value.items()}
            return value


        def run(*values, **named):
            return {"args": describe(list(values)), "kwargs": describe(named)}
    """,
    "fail.py": """
        def run(*_):
            raise ValueError("this input fails")
    """,
}


def describe(value):
    """What ``describe.py`` returns for ``value`` (computed here)."""
    if isinstance(value, bytes):
        return ["bytes", len(value), hashlib.sha256(value).hexdigest()]
    if isinstance(value, (list, tuple)):
        return [describe(item) for item in value]
    if isinstance(value, dict):
        return {key: describe(item) for key, item in value.items()}
    return value


def digest_of(value) -> str:
    """The store's name for ``value``: the SHA-256 of its packed bytes."""
    return hashlib.sha256(pack(value)).hexdigest()


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> list[Path]:
    return write_tasks(tmp_path_factory.mktemp("wfrefs-tasks"), TASKS)


@pytest.fixture(scope="module", params=["memory", "zmq"])
def pool(request, task_files):
    with backend_pool(request.param, task_files, engines=2) as local_pool:
        yield local_pool


_store_files = store_files


class Recorder:
    """The session's sent task bodies, and the digests written to its store here."""

    def __init__(self, session: rb.Session, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bodies: list[bytes] = []
        self.puts: list[str] = []
        real_send = session._transport.send
        store = session._payloads.payloads.store
        real_put = store.put

        def send(queue, messages):
            batch = [messages] if isinstance(messages, Message) else list(messages)
            if queue == session.task_queue:
                self.bodies.extend(message.body for message in batch)
            return real_send(queue, batch)

        def put(job, space, digest, data):
            if space == session._session_key:  # not a task of an earlier test's session
                self.puts.append(digest)
            return real_put(job, space, digest, data)

        monkeypatch.setattr(session._transport, "send", send)
        monkeypatch.setattr(store, "put", put)

    def task(self, task_id: str):
        found = [decode_task(b) for b in self.bodies if decode_task(b).task == task_id]
        assert len(found) == 1, f"task {task_id} sent {len(found)} times"
        return found[0]

    def expected_puts(self, pool) -> int:
        """Writes of an engine's result seen here: memory:// engines share this process."""
        return 1 if isinstance(pool.payload_store, MemoryStore) else 0


def test_a_large_input_goes_on_by_reference_written_once(pool, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    blob_size = 2 * MIB
    blob = b"\x07" * blob_size
    with rb.Session(pool) as s:
        sent = Recorder(s, monkeypatch)
        first = s.submit("make_blob.py", blob_size, 7, str(gate))
        second = s.submit("describe.py", first)  # waits: first cannot finish before the gate
        gate.touch()
        assert second.result(60) == {"args": [describe(blob)], "kwargs": {}}
        assert first.result() == blob  # the input's own future has its value
        body = sent.task(second.task_id)
        assert body.args == [PayloadRef(digest_of(blob), len(pack(blob)))]
        # never re-encoded and written by the client: only the engine's write of the result
        assert sent.puts.count(digest_of(blob)) == sent.expected_puts(pool)
        assert _store_files(pool) == []  # the dependent's result taken: deleted
    assert _store_files(pool) == []


def test_nested_and_keyword_inputs_go_by_reference(pool, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    big_a, big_b = b"\x01" * MIB, b"\x02" * (MIB + 3)
    with rb.Session(pool) as s:
        sent = Recorder(s, monkeypatch)
        a = s.submit("make_blob.py", len(big_a), 1, str(gate))
        b = s.submit("make_blob.py", len(big_b), 2, str(gate))
        small = s.submit("make_blob.py", 5, 3, str(gate))
        dependent = s.submit("describe.py", [a, small], (b,), named={"x": a}, other=b)
        gate.touch()
        expected = {
            "args": [describe([big_a, b"\x03" * 5]), describe([big_b])],
            "kwargs": {"named": {"x": describe(big_a)}, "other": describe(big_b)},
        }
        assert dependent.result(60) == expected
        body = sent.task(dependent.task_id)
        ref_a = PayloadRef(digest_of(big_a), len(pack(big_a)))
        ref_b = PayloadRef(digest_of(big_b), len(pack(big_b)))
        assert body.args == [[ref_a, b"\x03" * 5], (ref_b,)]  # the small value in the message
        assert body.kwargs == {"named": {"x": ref_a}, "other": ref_b}
        for big in (big_a, big_b):
            assert sent.puts.count(digest_of(big)) == sent.expected_puts(pool)
        assert _store_files(pool) == []
    assert _store_files(pool) == []


def test_two_dependents_share_one_stored_input(pool, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    blob = b"\x05" * (2 * MIB)
    with rb.Session(pool) as s:
        sent = Recorder(s, monkeypatch)
        first = s.submit("make_blob.py", len(blob), 5, str(gate))
        left = s.submit("describe.py", first)
        right = s.submit("describe.py", x=first)
        gate.touch()
        assert left.result(60) == {"args": [describe(blob)], "kwargs": {}}
        assert right.result(60) == {"args": [], "kwargs": {"x": describe(blob)}}
        ref = PayloadRef(digest_of(blob), len(pack(blob)))
        assert sent.task(left.task_id).args == [ref]
        assert sent.task(right.task_id).kwargs == {"x": ref}
        assert sent.puts.count(digest_of(blob)) == sent.expected_puts(pool)
        assert _store_files(pool) == []
    assert _store_files(pool) == []


def test_a_vanished_input_payload_is_the_dependents_payload_missing_error(pool, tmp_path):
    gate = tmp_path / "gate"
    with rb.Session(pool) as s:
        first = s.submit("make_blob.py", 2 * MIB, 9, str(gate))
        second = s.submit("describe.py", first)
        real = s._payloads.encode_task

        def encode_then_lose(record):
            body = real(record)
            if record.task == second.task_id:  # the stored input vanishes before it runs
                store = pool.payload_store
                for item in _store_files(pool):
                    if isinstance(store, MemoryStore):
                        store.delete(item[0], item[1], [item[2]])
                    else:
                        item.unlink()
            return body

        s._payloads.encode_task = encode_then_lose
        gate.touch()
        assert first.result(60) == b"\x09" * (2 * MIB)
        with pytest.raises(rb.TaskError) as info:
            second.result(60)
        assert info.value.remote_type == "PayloadMissingError"
        assert digest_of(b"\x09" * (2 * MIB)) in str(info.value)
        assert "not in the store" in str(info.value)
    assert _store_files(pool) == []


def test_a_cancelled_dependent_lets_the_input_payload_go(pool, tmp_path):
    gate = tmp_path / "gate"
    with rb.Session(pool) as s:
        first = s.submit("make_blob.py", 2 * MIB, 4, str(gate))
        second = s.submit("describe.py", first)
        assert s.cancel([second]) == 1
        gate.touch()
        assert first.result(60) == b"\x04" * (2 * MIB)
        assert _store_files(pool) == []  # nobody waits for it: deleted once taken
        assert s._payloads._wanted == {} and s._payloads._users == {}
    assert _store_files(pool) == []


def test_a_failed_sibling_input_lets_the_payload_go(pool, tmp_path):
    gate = tmp_path / "gate"
    with rb.Session(pool) as s:
        first = s.submit("make_blob.py", 2 * MIB, 6, str(gate))
        bad = s.submit("fail.py", str(gate), after=[first])
        dependent = s.submit("describe.py", first, bad)
        gate.touch()
        with pytest.raises(rb.DependencyError):
            dependent.result(60)
        assert first.result() == b"\x06" * (2 * MIB)
        assert _store_files(pool) == []  # held for the dependent, released when it failed
        assert s._payloads._users == {} and s._payloads._by_task == {}
    assert _store_files(pool) == []


def test_a_small_input_is_substituted_in_the_message(pool, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    with rb.Session(pool) as s:
        sent = Recorder(s, monkeypatch)
        first = s.submit("make_blob.py", 100, 8, str(gate))
        second = s.submit("describe.py", first)
        gate.touch()
        assert second.result(60) == {"args": [describe(b"\x08" * 100)], "kwargs": {}}
        assert sent.task(second.task_id).args == [b"\x08" * 100]
        assert sent.puts == []


# -- the accounting, without engines ---------------------------------------------------


def _session_payloads(tmp_path: Path) -> tuple[SessionPayloads, DirectoryStore]:
    store = DirectoryStore(tmp_path / "payloads")
    return SessionPayloads(Payloads(store, threshold=1024), "job", "space"), store


def _ref_result(payloads: SessionPayloads, store: DirectoryStore, task: str, value: bytes):
    """A result of ``task`` whose value an engine stored (as ``Payloads.encode_result`` does)."""
    data = pack(value)
    digest = hashlib.sha256(data).hexdigest()
    store.put("job", "space", digest, data)
    ref = PayloadRef(digest, len(data))
    record = ResultRecord(
        session="s", job="job", task=task, status="ok", value=ref, session_key="space"
    )
    return record, ref


def _stored(store: DirectoryStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


def test_a_stored_input_is_kept_until_every_dependent_is_done(tmp_path):
    payloads, store = _session_payloads(tmp_path)
    payloads.wait("left", ["in"])
    payloads.wait("right", ["in"])
    record, ref = _ref_result(payloads, store, "in", b"z" * 4096)
    assert payloads.take_result(record).value == b"z" * 4096
    assert len(_stored(store)) == 1  # kept for the two dependents
    assert payloads.passed_on("left") == {"in": ref}
    payloads.release("left")
    assert len(_stored(store)) == 1
    assert payloads.passed_on("right") == {"in": ref}
    payloads.release("right")
    assert _stored(store) == []
    assert (payloads._wanted, payloads._users, payloads._by_task) == ({}, {}, {})


def test_a_dependent_dropped_before_or_after_its_input_holds_nothing(tmp_path):
    payloads, store = _session_payloads(tmp_path)
    payloads.wait("early", ["in"])
    payloads.wait("late", ["in"])
    payloads.drop("early")  # e.g. cancelled while its input runs
    record, _ = _ref_result(payloads, store, "in", b"y" * 4096)
    payloads.take_result(record)
    assert len(_stored(store)) == 1  # "late" still wants it
    payloads.drop("late")  # e.g. another input failed
    assert _stored(store) == []
    assert (payloads._wanted, payloads._users, payloads._by_task) == ({}, {}, {})


def test_an_input_taken_before_its_dependent_waits_is_not_held(tmp_path):
    payloads, store = _session_payloads(tmp_path)
    record, _ = _ref_result(payloads, store, "in", b"x" * 4096)
    payloads.take_result(record)
    assert _stored(store) == []
    payloads.wait("dep", ["in"])  # too late: its value will be substituted
    assert payloads.passed_on("dep") == {}
    assert payloads._wanted == {} and payloads._waiting == {}


def test_close_deletes_a_held_input(tmp_path):
    payloads, store = _session_payloads(tmp_path)
    payloads.wait("dep", ["in"])
    record, _ = _ref_result(payloads, store, "in", b"w" * 4096)
    payloads.take_result(record)
    assert len(_stored(store)) == 1
    payloads.close()
    assert _stored(store) == []


def test_results_without_dependents_are_deleted_at_take(tmp_path):
    payloads, store = _session_payloads(tmp_path)
    payloads.wait("dep", ["other"])
    record, _ = _ref_result(payloads, store, "in", b"v" * 4096)
    payloads.take_result(record)
    assert _stored(store) == []


def test_a_dependent_that_cannot_be_encoded_lets_its_inputs_go(pool, tmp_path):
    gate = tmp_path / "gate"
    with rb.Session(pool) as s:
        first = s.submit("make_blob.py", 2 * MIB, 2, str(gate))
        second = s.submit("describe.py", first)
        real = s._payloads.encode_task

        def refuse_the_dependent(record):
            if record.task == second.task_id:
                raise ValueError("refused for the test")
            return real(record)

        s._payloads.encode_task = refuse_the_dependent
        gate.touch()
        with pytest.raises(ValueError, match="refused for the test"):
            second.result(60)
        assert first.result() == b"\x02" * (2 * MIB)
        assert _store_files(pool) == []  # its hold on the input released
        assert s._payloads._users == {} and s._payloads._by_task == {}
    assert _store_files(pool) == []


def test_engines_resolve_references_at_any_depth_and_copy_nothing_without_them(tmp_path):
    store = DirectoryStore(tmp_path / "payloads")
    rules = Payloads(store, threshold=1024)
    data = pack(b"q" * 5000)
    digest = hashlib.sha256(data).hexdigest()
    store.put("job", "space", digest, data)
    ref = PayloadRef(digest, len(data))
    task = decode_task(
        _encoded_task(args=[1, [ref, "a"], (ref,)], kwargs={"d": {"x": [ref]}, "n": 2})
    )
    resolved = rules.resolve_task(task)
    assert resolved.args == [1, [b"q" * 5000, "a"], (b"q" * 5000,)]
    assert resolved.kwargs == {"d": {"x": [b"q" * 5000]}, "n": 2}
    plain = decode_task(_encoded_task(args=[1, [2, "a"], {"k": (3,)}], kwargs={"n": [4]}))
    assert rules.resolve_task(plain) is plain
    missing = decode_task(_encoded_task(args=[[PayloadRef("0" * 64, 3)]], kwargs={}))
    with pytest.raises(PayloadMissingError, match="0" * 64):
        rules.resolve_task(missing)


def _encoded_task(args, kwargs) -> bytes:
    from realtime_batch.protocol import ReplyTo, TaskRecord, encode_task

    record = TaskRecord(
        session="s", job="job", task="t", command="c.py", reply_to=ReplyTo("results", "g"),
        args=args, kwargs=kwargs, session_key="space",
    )  # fmt: skip
    return encode_task(record)
