"""The payload store contract over the three stores: a directory, memory, Blob (Azurite).

The same tests run on ``DirectoryStore`` (LocalPool), ``MemoryStore`` (memory://, the
engines being threads of the client's process) and ``BlobStore`` (a per-job container
of the staging account): store, read, delete, integrity through the rules
of ``realtime_batch.payloads``, nothing left after a session closes or a job is
dropped, and no way out of the job's store.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

from realtime_batch.payloads import (
    BlobStore,
    DirectoryStore,
    MemoryStore,
    PayloadCorruptError,
    PayloadMissingError,
    Payloads,
    SessionPayloads,
)
from realtime_batch.protocol import ReplyTo, ResultRecord, TaskRecord, decode_result, decode_task
from realtime_batch.values import PayloadRef

BIG = bytes(range(256)) * 2048  # 512 KiB


@pytest.fixture(params=["directory", "memory", "blob"])
def store(request, tmp_path):
    if request.param == "directory":
        yield DirectoryStore(tmp_path / "payloads")
        return
    if request.param == "memory":
        memory = MemoryStore()
        yield memory
        assert len(memory) == 0, "every test drops what it stored"
        return
    azurite = request.getfixturevalue("azurite")
    yield BlobStore.from_connection_string(azurite, prefix=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def job() -> str:
    return f"job-{uuid.uuid4().hex[:8]}"


def _task(job: str, *args, session="s-1", task="t1") -> TaskRecord:
    return TaskRecord(
        session=session, job=job, task=task, command="echo.py",
        reply_to=ReplyTo("results", session), args=list(args),
    )  # fmt: skip


def _count(store, job: str) -> int:
    if isinstance(store, DirectoryStore):
        folder = store.root / job
        return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
    if isinstance(store, MemoryStore):
        return sum(1 for stored_job, _, _ in store.names() if stored_job == job)
    return len(store._names(job))


def test_put_get_delete(store, job):
    digest = hashlib.sha256(b"data").hexdigest()
    store.put(job, "s-1", digest, b"data")
    store.put(job, "s-1", digest, b"data")  # again: one copy
    assert store.get(job, "s-1", digest) == b"data"
    assert _count(store, job) == 1
    store.delete(job, "s-1", [digest, "0" * 64])
    with pytest.raises(PayloadMissingError):
        store.get(job, "s-1", digest)
    store.drop_job(job)


def test_round_trip_and_nothing_left_after_close(store, job):
    client = SessionPayloads(Payloads(store, threshold=64 * 1024), job, "s-1")
    engine = Payloads(store, threshold=64 * 1024)
    task = engine.resolve_task(decode_task(client.encode_task(_task(job, BIG))))
    assert task.args == [BIG]
    result = ResultRecord(session="s-1", job=job, task="t1", status="ok", value=BIG + b"!")
    taken = client.take_result(decode_result(engine.encode_result(result)))
    assert taken.value == BIG + b"!"
    assert _count(store, job) == 0  # taken: deleted
    client.encode_task(_task(job, BIG[1:], task="t2"))  # never answered
    assert _count(store, job) == 1
    client.close()
    assert _count(store, job) == 0
    store.drop_job(job)


def test_corrupt_and_missing_are_clear_errors(store, job):
    payloads = Payloads(store, threshold=64 * 1024)
    body, [digest] = payloads.encode_task(_task(job, BIG))
    store.put(job, "s-1", digest, b"something else")  # overwrite with other content
    if isinstance(store, DirectoryStore):  # put skips an existing file: corrupt it by hand
        path = store.root / job / "s-1" / digest
        path.write_bytes(b"something else")
    elif isinstance(store, MemoryStore):  # put keeps the first copy: corrupt it by hand
        store._spaces[(job, "s-1")][digest] = (b"something else", 0.0)
    else:
        store._blob(job, "s-1", digest).upload_blob(b"something else", overwrite=True)
    with pytest.raises(PayloadCorruptError):
        payloads.resolve_task(decode_task(body))
    store.delete(job, "s-1", [digest])
    with pytest.raises(PayloadMissingError):
        payloads.resolve_task(decode_task(body))
    store.drop_job(job)


def test_another_jobs_payload_and_traversal_names_are_out_of_reach(store, job):
    other = job + "-other"
    payloads = Payloads(store, threshold=64 * 1024)
    _, [digest] = payloads.encode_task(_task(other, BIG))
    ref = PayloadRef(digest, 1)
    for name_job, session in [(job, "s-1"), ("..", "s-1"), (job, "../" + other + "/s-1")]:
        with pytest.raises(PayloadMissingError):
            payloads.fetch(name_job, session, ref)
    assert payloads.fetch(other, "s-1", PayloadRef(digest, 1)) == BIG
    store.drop_job(other)
    with pytest.raises(PayloadMissingError):
        payloads.fetch(other, "s-1", ref)


def test_sweep_removes_sessions_left_behind(store, job):
    Payloads(store, threshold=64 * 1024).encode_task(_task(job, BIG, session="dead"))
    assert store.sweep(job, ttl=3600) == 0
    assert store.sweep(job, ttl=3600, now=10**10) == 1  # far in the future: expired
    assert _count(store, job) == 0
    store.drop_job(job)


_SB_URL = (
    "Endpoint=sb://rtbatch-test.servicebus.windows.net/;SharedAccessKeyName=e;SharedAccessKey=eA=="
)
_IDENTITY = (
    "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
    "userAssignedIdentities/e"
)


def test_an_azure_pool_keeps_payloads_per_job_and_deletes_them_with_the_job(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(
        engine_transport_url=_SB_URL, engine_identity=_IDENTITY, engine_identity_client_id="c"
    ).create()
    job = pool.start_engines()
    store = pool.payload_store
    assert isinstance(store, BlobStore)
    digest = hashlib.sha256(b"data").hexdigest()
    store.put(job, "key", digest, b"data")
    assert store.get(job, "key", digest) == b"data"
    for task in fake.tasks[job].values():  # engines with an identity are told the account
        env = {e["name"]: e["value"] for e in task["environmentSettings"]}
        assert env["RTBATCH_PAYLOAD_STORE"] == pool.blob_service.url
        assert "sig=" not in env["RTBATCH_PAYLOAD_STORE"]
    pool.delete_job(job)
    with pytest.raises(PayloadMissingError):
        store.get(job, "key", digest)
