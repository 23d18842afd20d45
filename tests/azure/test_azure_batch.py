"""AzureBatchPool through the real azure-batch client against the Batch fake + Azurite."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import BlobServiceClient
from azure_fixtures import ENGINE_URL
from batch_fake import DEFAULT_KEY

from realtime_batch.engine._supervise import DEFAULT_PREFETCH
from realtime_batch.orchestrator.azure_batch import PoolSpec
from realtime_batch.orchestrator.pool import (
    OrchestratorError,
    PoolNotFoundError,
    PoolStateError,
)


def _all_bodies(fake) -> str:
    return json.dumps([r["body"] for r in fake.requests])


def test_create_sends_image_slots_and_start_task(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool().create()
    [body] = fake.bodies("POST", "/pools")
    assert body["id"] == pool.pool_id and body["vmSize"] == "Standard_D2s_v5"
    vm = body["virtualMachineConfiguration"]
    assert vm["imageReference"] == {
        "publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"
    }  # fmt: skip
    assert vm["nodeAgentSKUId"] == "batch.node.ubuntu 24.04"
    assert body["taskSlotsPerNode"] == 2
    assert (body["targetDedicatedNodes"], body["targetLowPriorityNodes"]) == (2, 1)
    start = body["startTask"]
    assert start["waitForSuccess"] is True
    assert start["userIdentity"]["autoUser"]["elevationLevel"] == "admin"
    cmd = start["commandLine"]
    assert cmd.startswith("/bin/bash -c ")
    assert (
        "python3 -m venv" in cmd and "pip install" in cmd and "wheels/realtime_batch-0.1.0" in cmd
    )
    assert "sleep" not in cmd
    assert "openjdk" not in cmd  # no jar staged
    # Batch itself signs the download from the staging (auto-storage) container
    assert start["resourceFiles"] == [
        {"autoStorageContainerName": pool.staging.container, "blobPrefix": "wheels/"}
    ]
    container = pool.staging.service.get_container_client(pool.staging.container)
    assert sorted(b.name for b in container.list_blobs("wheels/")) == [
        "wheels/constraints.txt",
        "wheels/orjson-3.10.0-cp312-cp312-manylinux_2_17_x86_64.whl",
        "wheels/realtime_batch-0.1.0-py3-none-any.whl",
    ]
    pins = container.download_blob("wheels/constraints.txt").readall().decode()
    assert pins == "orjson==3.10.0\nrealtime-batch==0.1.0\n"
    # pinned and offline: only the staged wheels, nothing from an index
    assert "--no-index --find-links wheels --constraint wheels/constraints.txt" in cmd
    assert pool.list()[0]["id"] == pool.pool_id
    assert pool.engines == 6


def test_jar_staged_installs_a_jre(make_pool, batch_fake, files):
    fake, _ = batch_fake
    make_pool(task_files=[files / "hello.py", files / "pi.jar"]).create()
    [body] = fake.bodies("POST", "/pools")
    assert "openjdk-21-jre-headless" in body["startTask"]["commandLine"]


def test_start_engines_one_task_per_slot(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool().create()
    job = pool.start_engines()
    assert pool.job == job and pool.jobs() == [job]
    [body] = fake.bodies("POST", "/jobs")
    assert body["poolInfo"]["poolId"] == pool.pool_id
    prep = body["jobPreparationTask"]
    assert {r["blobPrefix"] for r in prep["resourceFiles"]} == {"tasks/", "inputs/"}
    assert "commonEnvironmentSettings" not in body  # credentials are staged files
    tasks = [
        t for batch in fake.bodies("POST", r"/jobs/.*/addtaskcollection") for t in batch["value"]
    ]
    assert sorted(t["id"] for t in tasks) == [f"engine-{i:04d}-r0" for i in range(6)]
    task = tasks[0]
    assert "-m realtime_batch.engine" in task["commandLine"]
    assert "--queue tasks" in task["commandLine"] and "--tasks-dir" in task["commandLine"]
    # the engine's own default: the next task is leased while one runs (no broker round
    # trip between two tasks; with 1 each task waited a Service Bus receive)
    assert f" --prefetch {DEFAULT_PREFETCH} " in task["commandLine"]
    assert task["userIdentity"]["autoUser"]["elevationLevel"] == "nonadmin"
    assert task["constraints"]["maxTaskRetryCount"] == 3
    log_url = task["outputFiles"][0]["destination"]["container"]["containerUrl"]
    assert "sp=cw&" in log_url and "-logs?" in log_url  # write-only, logs container only


def test_no_secret_reaches_the_batch_service(make_pool, batch_fake, azurite):
    fake, _ = batch_fake
    pool = make_pool().create()
    pool.start_engines()
    pool.resize(8)
    sent = _all_bodies(fake)
    storage_key = BlobServiceClient.from_connection_string(azurite).credential.account_key
    for secret in (storage_key, DEFAULT_KEY, azurite, "AccountKey", "SharedAccessKey="):
        assert secret not in sent
    assert ENGINE_URL not in sent  # the engine URL is a staged file, not a job setting


def test_root_servicebus_key_is_refused(make_pool):
    root = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc"
    with pytest.raises(OrchestratorError, match="Manage key"):
        make_pool(engine_transport_url=root)


def test_dead_engine_is_restarted(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=PoolSpec(dedicated_nodes=1, engines_per_node=2)).create()
    job = pool.start_engines()
    assert pool.ensure_engines() == []  # all slots busy
    fake.set_task_state(job, "engine-0001-r0", "completed", exit_code=1)
    assert pool.ensure_engines() == ["engine-0001-r1"]
    assert pool.ensure_engines() == []


def test_resize_adds_and_removes_engines(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=PoolSpec(dedicated_nodes=1, engines_per_node=2)).create()
    job = pool.start_engines()
    pool.resize(5)  # 3 nodes x 2 slots
    assert sorted(fake.tasks[job]) == [f"engine-{i:04d}-r0" for i in range(6)]
    [resize] = fake.bodies("POST", r"/pools/.*/resize")
    assert resize["targetDedicatedNodes"] == 3
    pool.resize(2)
    [node] = fake.nodes[pool.pool_id]
    assert len(fake.tasks[job]) == 2
    assert {t["nodeInfo"]["nodeId"] for t in fake.tasks[job].values()} == {node["id"]}


def test_autoscale(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool().create()
    pool.autoscale_formula("$TargetDedicatedNodes = 2;", timedelta(minutes=10))
    [body] = fake.bodies("POST", r"/pools/.*/enableautoscale")
    assert body["autoScaleFormula"] == "$TargetDedicatedNodes = 2;"
    assert body["autoScaleEvaluationInterval"] in ("PT10M", "PT10M00S")


def test_repurpose_restages_and_replaces_the_job(make_pool, batch_fake, files):
    fake, _ = batch_fake
    pool = make_pool().create()
    old = pool.start_engines()
    other = make_pool()  # a second client attaching by id
    other.use_existing(pool.pool_id)
    assert other.job == old
    (files / "new_task.py").write_text("def run(x):\n    return x\n")
    other.repurpose(pool.pool_id, task_files=[files / "new_task.py"])
    assert other.job != old and old not in fake.jobs and other.jobs() == [other.job]
    names = [
        b.name
        for b in other.staging.service.get_container_client(other.staging.container).list_blobs()
    ]
    assert "tasks/new_task.py" in names and "tasks/hello.py" not in names
    assert len(fake.bodies("POST", "/pools")) == 1  # nodes kept


def test_jobs_and_delete(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool().create()
    first = pool.start_engines()
    second = pool.start_engines()
    assert pool.jobs() == [first, second]
    pool.delete_job(first)
    assert pool.jobs() == [second]
    assert pool.delete_jobs() == 1 and pool.jobs() == []
    pool.delete()
    assert pool.pool_id not in fake.pools


def test_errors_are_mapped(make_pool):
    pool = make_pool().create()
    with pytest.raises(PoolStateError, match="already exists"):
        make_pool().create()
    with pytest.raises(PoolNotFoundError):
        pool.use_existing("no-such-pool")
    with pytest.raises(PoolStateError, match="start_engines"):
        pool.ensure_engines()


def test_failed_start_task_is_reported(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool().create()
    fake.nodes[pool.pool_id][0]["state"] = "starttaskfailed"
    with pytest.raises(PoolStateError, match="starttaskfailed"):
        pool.wait_ready(timeout=5)


class FakeEntraCredential:
    """Stands in for DefaultAzureCredential: a TokenCredential with get_token."""

    def __init__(self, token: str) -> None:
        self.token, self.scopes = token, []

    def get_token(self, *scopes, **kwargs):
        self.scopes.extend(scopes)
        return AccessToken(self.token, 4102444800)


def test_keyless_path_over_https(make_pool, batch_fake_https):
    fake, url, token = batch_fake_https
    credential = FakeEntraCredential(token)
    pool = make_pool(credential=credential, endpoint=url).create()
    assert pool.pool_id in fake.pools
    assert credential.scopes == ["https://batch.core.windows.net//.default"]
    assert all(r["headers"]["Authorization"] == f"Bearer {token}" for r in fake.requests)


def test_bearer_token_refused_over_plain_http(make_pool, batch_fake):
    _, url = batch_fake
    pool = make_pool(credential=FakeEntraCredential("t"), endpoint=url)
    with pytest.raises(Exception, match="TLS"):
        pool.create()


def test_logs_download(make_pool, tmp_path):
    pool = make_pool()
    pool.staging.ensure_containers()
    logs = pool.staging.service.get_container_client(pool.staging.logs_container)
    logs.upload_blob("job-a/engine-0000-r0/stdout.txt", b"ready\n")
    [path] = pool.logs(tmp_path / "out", job="job-a")
    assert path.read_bytes() == b"ready\n"
