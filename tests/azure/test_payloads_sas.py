"""Azure engines without an identity (SAS-only setups) reach the job's payload container.

They get a container-scoped SAS (read, write, delete; that one container; per job),
staged with the other engine credentials in ``engine-credentials/payload-store`` and
named to the engine by its path (``RTBATCH_PAYLOAD_STORE=sas-file:PATH``, set by the
engine task's script): never on a command line, in the job, or in an environment.
Azurite checks SAS signatures, so a SAS for job A is refused on job B's container.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient
from azure_fixtures import ENGINE_URL

from realtime_batch.orchestrator.azure_batch import PoolSpec
from realtime_batch.payloads import (
    BlobStore,
    ContainerSasStore,
    Payloads,
    PayloadStoreError,
    SessionPayloads,
    open_store,
)
from realtime_batch.protocol import ReplyTo, ResultRecord, TaskRecord, decode_result, decode_task

BIG = bytes(range(256)) * 1024  # 256 KiB
_SB_URL = (
    "Endpoint=sb://rtbatch-test.servicebus.windows.net/;SharedAccessKeyName=e;SharedAccessKey=eA=="
)
_IDENTITY = (
    "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
    "userAssignedIdentities/e"
)


def _staged(pool, name: str) -> bytes:
    container = pool.staging.service.get_container_client(pool.staging.container)
    return container.download_blob(f"engine-credentials/{name}").readall()


def _staged_names(pool) -> list[str]:
    container = pool.staging.service.get_container_client(pool.staging.container)
    return [b.name for b in container.list_blobs(name_starts_with="engine-credentials/")]


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _expiry(url: str) -> datetime:
    return datetime.fromisoformat(_query(url)["se"].replace("Z", "+00:00"))


def _task(job: str, *args, task="t1") -> TaskRecord:
    return TaskRecord(
        session="s-1", job=job, task=task, command="echo.py",
        reply_to=ReplyTo("results", "s-1"), args=list(args),
    )  # fmt: skip


def _engine_store(tmp_path, url: str) -> ContainerSasStore:
    """What an engine opens: the staged file, as the task's script names it."""
    path = tmp_path / "payload-store"
    path.write_text(url)
    path.chmod(0o600)
    store = open_store(f"sas-file:{path}")
    assert isinstance(store, ContainerSasStore)
    return store


@pytest.fixture
def sas_pool(make_pool):
    pool = make_pool(
        spec=PoolSpec(dedicated_nodes=1, engines_per_node=2),
        engine_transport_url=ENGINE_URL,
        engine_token_lifetime=timedelta(hours=10),
    ).create()
    return pool


def test_sas_only_engines_get_a_container_scoped_sas_for_their_job(sas_pool, batch_fake):
    fake, _ = batch_fake
    job = sas_pool.start_engines()
    url = _staged(sas_pool, "payload-store").decode()
    base = url.partition("?")[0]
    assert (
        base
        == sas_pool.blob_service.get_container_client(sas_pool.payload_store.container(job)).url
    )
    query = _query(url)
    assert query["sr"] == "c" and query["sp"] == "rwd"  # that container; no list, no create
    left = _expiry(url) - datetime.now(timezone.utc)
    assert timedelta(hours=9) < left <= timedelta(hours=10)
    for task in fake.tasks[job].values():
        command = task["commandLine"]
        assert "sig=" not in command and base not in command
        assert 'RTBATCH_PAYLOAD_STORE="sas-file:$creds/payload-store"' in command
        env = {e["name"]: e["value"] for e in task["environmentSettings"]}
        assert "RTBATCH_PAYLOAD_STORE" not in env
        assert all("sig=" not in value for value in env.values())
    assert "sig=" not in str(fake.jobs[job])


def test_an_engine_with_the_sas_reads_and_writes_the_jobs_payloads(sas_pool, tmp_path):
    job = sas_pool.start_engines()
    engine = Payloads(_engine_store(tmp_path, _staged(sas_pool, "payload-store").decode()))
    client = SessionPayloads(Payloads(sas_pool.payload_store, threshold=64 * 1024), job, "s-1")
    task = engine.resolve_task(decode_task(client.encode_task(_task(job, BIG))))
    assert task.args == [BIG]
    result = ResultRecord(session="s-1", job=job, task="t1", status="ok", value=BIG + b"!")
    body = engine.encode_result(result)
    assert len(body) < len(BIG)  # stored by the engine, through its SAS
    assert client.take_result(decode_result(body)).value == BIG + b"!"
    client.close()
    container = sas_pool.blob_service.get_container_client(sas_pool.payload_store.container(job))
    assert list(container.list_blobs()) == []


def test_a_sas_for_one_job_cannot_reach_another_jobs_container(sas_pool, tmp_path):
    job_a = sas_pool.start_engines()
    sas_a = _staged(sas_pool, "payload-store").decode()
    job_b = job_a + "-b"
    digest = hashlib.sha256(b"secret of b").hexdigest()
    sas_pool.payload_store.put(job_b, "s-1", digest, b"secret of b")
    # Azurite checks the signature: A's SAS on B's container URL is refused
    container_b = sas_pool.blob_service.get_container_client(
        sas_pool.payload_store.container(job_b)
    )
    stolen = ContainerClient.from_container_url(f"{container_b.url}?{sas_a.partition('?')[2]}")
    with pytest.raises(HttpResponseError) as info:
        stolen.download_blob(f"s-1/{digest}").readall()
    assert info.value.status_code == 403
    with pytest.raises(HttpResponseError):
        stolen.upload_blob("s-1/" + "0" * 64, b"planted")
    # and the engine's store does not even ask for another job
    store = _engine_store(tmp_path, sas_a)
    with pytest.raises(PayloadStoreError, match="another job"):
        store.get(job_b, "s-1", digest)
    sas_pool.payload_store.drop_job(job_b)


def test_renewal_restages_the_payload_sas(sas_pool, batch_fake):
    fake, _ = batch_fake
    job = sas_pool.start_engines()
    sas_pool.wait_ready()
    first = _expiry(_staged(sas_pool, "payload-store").decode())
    assert sas_pool.engine_credential_expiry() == first  # a zmq pool: the SAS is what expires
    assert not sas_pool.renew_engine_credentials(within=timedelta(hours=1))
    sas_pool.engine_token_lifetime = timedelta(hours=20)
    assert sas_pool.renew_engine_credentials(within=timedelta(hours=11))
    second = _expiry(_staged(sas_pool, "payload-store").decode())
    assert second > first + timedelta(hours=9)
    assert sorted(fake.tasks[job]) == ["engine-0000-r1", "engine-0001-r1"]


def test_engines_with_an_identity_get_no_sas(make_pool):
    pool = make_pool(
        engine_transport_url=_SB_URL, engine_identity=_IDENTITY, engine_identity_client_id="c"
    ).create()
    pool.start_engines()
    assert "engine-credentials/payload-store" not in _staged_names(pool)
    assert isinstance(pool.payload_store, BlobStore)


def test_a_missing_or_bad_credential_file_is_a_clear_store_error(tmp_path):
    missing = open_store(f"sas-file:{tmp_path / 'nothing'}")
    with pytest.raises(PayloadStoreError, match="cannot read"):
        missing.get("job", "s-1", "0" * 64)
    bad = tmp_path / "bad"
    bad.write_text("not a url")
    with pytest.raises(PayloadStoreError, match="container URL with a SAS"):
        open_store(f"sas-file:{bad}").put("job", "s-1", "0" * 64, b"x")
    # an engine storing a result reports it as the task's error, not a crash
    result = ResultRecord(session="s-1", job="job", task="t1", status="ok", value=BIG)
    record = decode_result(Payloads(missing, threshold=1024).encode_result(result))
    assert record.status == "error" and record.error.type == "PayloadStoreError"
