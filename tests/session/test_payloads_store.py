"""The payload store and its rules, without engines: offload, resolve, integrity, security."""

from __future__ import annotations

import hashlib
import os

import msgspec
import pytest

from realtime_batch import payloads as payloads_module
from realtime_batch.payloads import (
    ENV_STORE,
    DirectoryStore,
    MemoryStore,
    PayloadCorruptError,
    PayloadMissingError,
    Payloads,
    PayloadStoreError,
    SessionPayloads,
    engine_payloads,
    folder_name,
    memory_store,
)
from realtime_batch.protocol import (
    ProtocolError,
    ReplyTo,
    ResultRecord,
    TaskRecord,
    decode_result,
    decode_task,
    encode_task,
    replace,
)
from realtime_batch.values import EXT_REF, PayloadRef, pack

BIG = bytes(range(256)) * 4096  # 1 MiB


def _task(*args, job="job-a", session="s-1", task="t1", **kwargs) -> TaskRecord:
    return TaskRecord(
        session=session, job=job, task=task, command="echo.py",
        reply_to=ReplyTo("results", session), args=list(args), kwargs=kwargs,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "payloads")


def _files(store: DirectoryStore) -> list[str]:
    if not store.root.exists():
        return []
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def test_small_values_stay_in_the_message(store):
    body, digests = Payloads(store, threshold=64 * 1024).encode_task(_task(b"x" * 1000, n=2))
    assert digests == [] and _files(store) == []
    assert decode_task(body).args == [b"x" * 1000]


def test_a_large_argument_travels_by_reference_and_comes_back_exact(store):
    payloads = Payloads(store, threshold=64 * 1024)
    body, digests = payloads.encode_task(_task(BIG, 5, blob=BIG + b"!"))
    assert len(body) < 2000
    assert len(digests) == 2
    assert _files(store) == sorted(f"job-a/s-1/{d}" for d in digests)
    sent = decode_task(body)
    assert type(sent.args[0]) is PayloadRef and sent.args[1] == 5
    task = payloads.resolve_task(sent)
    assert task.args == [BIG, 5] and task.kwargs == {"blob": BIG + b"!"}


def test_a_large_result_is_stored_then_fetched_and_deleted_when_taken(store):
    engine = Payloads(store, threshold=64 * 1024)
    value = {"rows": [BIG, (1, 2)]}
    result = ResultRecord(session="s-1", job="job-a", task="t1", status="ok", value=value)
    arrived = decode_result(engine.encode_result(result))
    assert type(arrived.value) is PayloadRef and len(_files(store)) == 1
    client = SessionPayloads(Payloads(store), "job-a", "s-1")
    taken = client.take_result(arrived)
    assert taken.ok and taken.value == value
    assert _files(store) == []


def test_a_result_equal_to_an_argument_does_not_delete_it_while_needed(store):
    client = SessionPayloads(Payloads(store, threshold=64 * 1024), "job-a", "s-1")
    client.encode_task(_task(BIG, task="t1"))
    client.encode_task(_task(BIG, task="t2"))
    engine = Payloads(store, threshold=64 * 1024)
    result = ResultRecord(session="s-1", job="job-a", task="t1", status="ok", value=BIG)
    assert client.take_result(decode_result(engine.encode_result(result))).value == BIG
    assert len(_files(store)) == 1  # t2's argument (the same content) is still there
    body = client.payloads.encode_task(_task(BIG, task="t2"))[0]
    assert client.payloads.resolve_task(decode_task(body)).args == [BIG]


def test_argument_payloads_are_deleted_when_the_result_is_taken_and_shared_ones_kept(store):
    client = SessionPayloads(Payloads(store, threshold=64 * 1024), "job-a", "s-1")
    client.encode_task(_task(BIG, task="t1"))
    client.encode_task(_task(BIG, task="t2"))  # the same content: one file, two users
    assert len(_files(store)) == 1
    client.take_result(ResultRecord(session="s-1", job="job-a", task="t1", status="ok"))
    assert len(_files(store)) == 1  # t2 still needs it
    client.take_result(ResultRecord(session="s-1", job="job-a", task="t2", status="ok"))
    assert _files(store) == []


def test_close_leaves_nothing_behind(store):
    client = SessionPayloads(Payloads(store, threshold=64 * 1024), "job-a", "s-1")
    client.encode_task(_task(BIG))
    engine = Payloads(store, threshold=64 * 1024)
    result = ResultRecord(session="s-1", job="job-a", task="t9", status="ok", value=BIG[1:])
    engine.encode_result(result)  # a result never taken
    assert len(_files(store)) == 2
    client.close()
    assert _files(store) == []


def test_a_corrupt_payload_is_a_clear_error(store):
    payloads = Payloads(store, threshold=64 * 1024)
    body, [digest] = payloads.encode_task(_task(BIG))
    path = store.root / "job-a" / "s-1" / digest
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    with pytest.raises(PayloadCorruptError, match="does not match its hash"):
        payloads.resolve_task(decode_task(body))


def test_a_missing_payload_is_a_clear_error(store):
    payloads = Payloads(store, threshold=64 * 1024)
    body, [digest] = payloads.encode_task(_task(BIG))
    (store.root / "job-a" / "s-1" / digest).unlink()
    with pytest.raises(PayloadMissingError, match=digest):
        payloads.resolve_task(decode_task(body))


def test_a_missing_result_payload_makes_an_error_result(store):
    ref = PayloadRef("0" * 64, 10)
    client = SessionPayloads(Payloads(store), "job-a", "s-1")
    taken = client.take_result(
        ResultRecord(session="s-1", job="job-a", task="t1", status="ok", value=ref)
    )
    assert taken.status == "error" and taken.error.type == "PayloadMissingError"
    assert taken.value is None


def test_a_reference_without_a_store_is_a_clear_error():
    ref_task = _task(PayloadRef("a" * 64, 3))
    with pytest.raises(PayloadStoreError, match="RTBATCH_PAYLOAD_STORE"):
        Payloads(None).resolve_task(decode_task(encode_task(ref_task)))


def _with_ref(digest: str) -> bytes:
    data = msgspec.msgpack.decode(encode_task(_task(1)))
    data["args"] = [msgspec.msgpack.Ext(EXT_REF, msgspec.msgpack.encode([digest, 3]))]
    return msgspec.msgpack.encode(data)


@pytest.mark.parametrize(
    "digest",
    ["../../etc/passwd", "/etc/passwd", "..", "A" * 64, "a" * 63, "a" * 64 + "/x", "", 7],
)
def test_a_reference_that_is_not_a_hash_is_refused_while_decoding(digest):
    with pytest.raises(ProtocolError, match="64 lowercase hex"):
        decode_task(_with_ref(digest))


def test_a_traversal_through_job_or_session_names_stays_inside_the_store(store, tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"not yours")
    digest = hashlib.sha256(b"not yours").hexdigest()
    (tmp_path / digest).write_bytes(b"not yours")
    payloads = Payloads(store)
    for job, session in [("..", ".."), ("../..", "x"), ("job-a", "../../.."), ("/", "/tmp")]:
        task = _task(PayloadRef(digest, 9), job=job, session=session)
        with pytest.raises(PayloadMissingError):
            payloads.resolve_task(decode_task(encode_task(task)))
        folder = store._dir(job, session)
        assert folder.resolve().is_relative_to(store.root.resolve())
    assert folder_name("..").startswith("h") and folder_name("job-a") == "job-a"


def test_a_reference_to_another_jobs_payload_is_missing(store):
    payloads = Payloads(store, threshold=64 * 1024)
    _, [digest] = payloads.encode_task(_task(BIG, job="job-b", session="s-b"))
    assert (store.root / "job-b" / "s-b" / digest).exists()
    stolen = _task(PayloadRef(digest, len(pack(BIG))), job="job-a", session="s-b")
    with pytest.raises(PayloadMissingError, match="job 'job-a'"):
        payloads.resolve_task(decode_task(encode_task(stolen)))
    other_session = _task(PayloadRef(digest, len(pack(BIG))), job="job-b", session="s-a")
    with pytest.raises(PayloadMissingError):
        payloads.resolve_task(decode_task(encode_task(other_session)))


def test_the_ttl_sweeps_sessions_left_behind(store):
    Payloads(store, threshold=64 * 1024).encode_task(_task(BIG, session="dead"))
    old = store.root / "job-a" / "dead"
    for path in [old, *old.iterdir()]:
        os.utime(path, (1, 1))
    SessionPayloads(Payloads(store), "job-a", "new")  # opening a session sweeps
    assert not old.exists()


def test_a_result_equal_to_its_own_argument_is_fetched_before_the_argument_is_deleted(store):
    client = SessionPayloads(Payloads(store, threshold=64 * 1024), "job-a", "s-1")
    client.encode_task(_task(BIG, task="t1"))
    engine = Payloads(store, threshold=64 * 1024)
    result = ResultRecord(session="s-1", job="job-a", task="t1", status="ok", value=BIG)
    assert client.take_result(decode_result(engine.encode_result(result))).value == BIG
    assert _files(store) == []


def test_a_forged_task_naming_another_sessions_id_does_not_reach_its_payloads(store):
    payloads = Payloads(store, threshold=64 * 1024)
    key = hashlib.sha256(b"the victim's secret").hexdigest()
    victim = replace(_task(BIG, session="victim"), session_key=key)
    body, [digest] = payloads.encode_task(victim)
    assert (store.root / "job-a" / key / digest).exists()  # under the key, not the id
    assert payloads.resolve_task(decode_task(body)).args == [BIG]
    ref = PayloadRef(digest, len(pack(BIG)))
    for forged_key in ("", "0" * 64):  # the victim's id, not its key
        forged = replace(_task(ref, session="victim"), session_key=forged_key)
        with pytest.raises(PayloadMissingError):
            payloads.resolve_task(decode_task(encode_task(forged)))


def test_a_refused_argument_stores_nothing(store):
    client = SessionPayloads(Payloads(store, threshold=64 * 1024), "job-a", "s-1")
    with pytest.raises(ProtocolError, match="args"):
        client.encode_task(_task(BIG, object()))
    assert _files(store) == []


def test_engine_threads_use_the_process_memory_store_for_jobs_a_session_has_open(monkeypatch):
    """memory:// engines are threads of the client's process: they reach its store, but
    only for the jobs of sessions open here (an engine of another pool gets no store)."""
    monkeypatch.delenv(ENV_STORE, raising=False)
    monkeypatch.setattr(payloads_module, "_engine_payloads", None)
    engine = engine_payloads()
    result = ResultRecord(session="s-1", job="job-mem", task="t1", status="ok", value=BIG)
    assert decode_result(engine.encode_result(result)).value == BIG  # no session: in message
    client = SessionPayloads.open("memory://here", "job-mem", "s-1", 1024 * 1024)
    try:
        assert isinstance(client.payloads.store, MemoryStore)
        task = engine.resolve_task(decode_task(client.encode_task(_task(BIG, job="job-mem"))))
        assert task.args == [BIG]
        body = engine.encode_result(result)
        assert len(body) < len(BIG) and type(decode_result(body).value) is PayloadRef
        assert client.take_result(decode_result(body)).value == BIG
        assert [n for n in memory_store().names() if n[0] == "job-mem"] == []
        client.encode_task(_task(BIG[1:], job="job-mem", task="t2"))  # never answered
    finally:
        client.close()
    assert [n for n in memory_store().names() if n[0] == "job-mem"] == []
    # closed: the job is no longer served here, a reference reaching the engine is refused
    with pytest.raises(PayloadStoreError):
        engine.resolve_task(_task(PayloadRef("a" * 64, 3), job="job-mem"))


def test_resolving_a_task_leaves_no_reference_cycle(store):
    """The task (its 100 KiB argument with it) is freed when dropped, not at the next
    garbage collection: a cycle held each task's values for ~50 tasks in a worker (#20)."""
    import gc
    import types

    def from_resolving(thing: object) -> bool:
        """The task, a large value of it, or a function of the payloads module."""
        return (
            isinstance(thing, TaskRecord)
            or (isinstance(thing, (str, bytes)) and len(thing) >= 64 * 1024)
            or (isinstance(thing, types.FunctionType)
                and thing.__code__.co_filename == payloads_module.__file__)
        )  # fmt: skip

    payloads = Payloads(store, threshold=64 * 1024)
    ref_body, _ = payloads.encode_task(_task(BIG))  # one argument by reference
    gc.collect()
    gc.disable()
    # What a collection frees is kept in gc.garbage, to look at: other threads of this
    # test process (those of earlier tests) may leave garbage of their own meanwhile, so
    # the count of all that is freed says nothing of resolve_task.
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for body in (encode_task(_task("x" * 102400)), ref_body):
            task = payloads.resolve_task(decode_task(body))
            assert task.args[0] in ("x" * 102400, BIG)
            del task
            gc.collect()
            assert [thing for thing in gc.garbage if from_resolving(thing)] == []
            gc.garbage.clear()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
