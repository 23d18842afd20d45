"""What a real Batch account does and the orchestrator must survive (issue 16).

Each test drives ``AzureBatchPool`` against the strict Batch fake (allocation over
time, ``deleting`` jobs, start tasks re-run with their downloads, preemption).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, UserDelegationKey

from realtime_batch.orchestrator.azure_batch import PoolSpec
from realtime_batch.orchestrator.pool import OrchestratorError, PoolStateError
from realtime_batch.orchestrator.staging import BlobStaging, StagingError
from realtime_batch.transport import open_transport

ONE_NODE = PoolSpec(dedicated_nodes=1, engines_per_node=2)


def _engine_tasks(fake, job):
    return {t["id"]: t for t in fake.tasks.get(job, {}).values() if t["id"].startswith("engine-")}


@pytest.mark.timeout(60)
def test_shrink_to_zero_engines_completes(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=PoolSpec(dedicated_nodes=2, engines_per_node=2)).create()
    job = pool.start_engines()
    pool.wait_ready()
    assert {t["state"] for t in _engine_tasks(fake, job).values()} == {"running"}
    pool.resize(0)
    assert fake.nodes[pool.pool_id] == [] and _engine_tasks(fake, job) == {}
    options = {
        b.get("nodeDeallocationOption")
        for b in fake.bodies("POST", r"/pools/.*/(resize|removenodes)")
    }
    assert "taskcompletion" not in options


@pytest.mark.timeout(60)
def test_shrink_drains_the_leaving_engines_through_the_transport(make_pool, batch_fake, request):
    fake, _ = batch_fake
    url = f"memory://drain-{request.node.name}"
    pool = make_pool(spec=PoolSpec(dedicated_nodes=2, engines_per_node=2), engine_transport_url=url)
    pool._transport_url = url
    pool.create()
    job = pool.start_engines()
    pool.wait_ready()
    before = _engine_tasks(fake, job)
    with open_transport(url) as transport:  # an engine's view of the control queue
        transport.declare_queue("control", grouped=True)
        pool.resize(2)
        kept = _engine_tasks(fake, job)
        assert len(kept) == 2 and len({t["nodeInfo"]["nodeId"] for t in kept.values()}) == 1
        gone = [t for tid, t in before.items() if tid not in kept]
        assert len(gone) == 2
        for task in gone:
            engine_id = f"{task['nodeInfo']['nodeId']}/{task['id']}"
            [stop] = transport.receive("control", max_messages=5, timeout=1, group=engine_id)
            assert stop.message.properties["kind"] == "stop"
        for tid, task in kept.items():
            engine_id = f"{task['nodeInfo']['nodeId']}/{tid}"
            assert transport.receive("control", max_messages=5, timeout=0.05, group=engine_id) == []


def _resource_files(fake):
    bodies = fake.bodies("POST", "/pools") + fake.bodies("POST", r"/pools/.*/updateproperties")
    files = [r for b in bodies if b.get("startTask") for r in b["startTask"]["resourceFiles"]]
    files += [
        r for b in fake.bodies("POST", "/jobs") for r in b["jobPreparationTask"]["resourceFiles"]
    ]
    return files


def test_no_sas_is_stored_in_the_pool_or_the_job(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool().create()
    pool.start_engines()
    files = _resource_files(fake)
    assert files and all("sig=" not in json.dumps(r) for r in files)
    assert {r["autoStorageContainerName"] for r in files} == {pool.staging.container}


def test_nodes_joining_or_rebooting_hours_later_get_their_files(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=ONE_NODE).create()
    job = pool.start_engines()
    pool.wait_ready()
    fake.advance(3 * 3600)  # any 2-hour SAS handed out at creation has expired
    [node] = fake.nodes[pool.pool_id]
    fake.restart_node(node["id"], "reboot")
    pool.resize(6)  # two more nodes join now
    states = {n["state"] for n in fake.nodes[pool.pool_id]}
    assert states <= {"idle", "running"} and len(fake.nodes[pool.pool_id]) == 3
    tasks = _engine_tasks(fake, job)
    assert len(tasks) == 6 and {t["state"] for t in tasks.values()} == {"running"}


def test_wait_ready_reports_engines_that_cannot_start(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=ONE_NODE).create()
    fake.auto_storage = None  # the job preparation cannot download the task files
    pool.start_engines()
    with pytest.raises(PoolStateError, match="job preparation"):
        pool.wait_ready(timeout=10)


def test_preempted_spot_node_does_not_stall_wait_ready(make_pool, batch_fake):
    fake, _ = batch_fake
    pool = make_pool(spec=PoolSpec(dedicated_nodes=1, spot_nodes=1, engines_per_node=2)).create()
    pool.start_engines()
    pool.wait_ready()
    spot = next(n for n in fake.nodes[pool.pool_id] if not n["isDedicated"])
    fake.preempt(spot["id"])
    pool.wait_ready(timeout=10)  # returns: the dedicated node and its engines are ready


def test_subnet_with_shared_key_is_refused_up_front(make_pool, batch_fake):
    fake, _ = batch_fake
    spec = PoolSpec(subnet_id="/subscriptions/s/resourceGroups/g/providers/n/subnets/pool")
    with pytest.raises(OrchestratorError, match="Entra ID"):
        make_pool(spec=spec).create()
    assert fake.bodies("POST", "/pools") == []


def test_deleting_jobs_are_not_listed(make_pool, batch_fake):
    fake, _ = batch_fake
    fake.job_delete_seconds = 10_000
    pool = make_pool(spec=ONE_NODE).create()
    first = pool.start_engines()
    pool.delete_job(first)
    assert fake.jobs[first]["state"] == "deleting"
    assert pool.jobs() == []


class SevenDayStorage:
    """Blob service stand-in for the keyless path: user delegation keys of at most 7 days.

    Azurite serves no user delegation keys without OAuth, so the Storage rule
    (a key may be valid for 7 days at most) is enforced here, test-side.
    """

    account_name = "keyless"
    credential = object()  # a token credential: no account key

    def __init__(self) -> None:
        self.asked: list[timedelta] = []

    def get_user_delegation_key(self, start, expiry):
        self.asked.append(expiry - datetime.now(timezone.utc))
        if expiry - datetime.now(timezone.utc) > timedelta(days=7):
            raise HttpResponseError("InvalidQueryParameterValue: key validity exceeds 7 days")
        key = UserDelegationKey()
        key.signed_oid = key.signed_tid = "00000000-0000-0000-0000-000000000000"
        key.signed_start = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_service, key.signed_version, key.value = "b", "2025-01-05", "a2V5"
        return key

    def get_container_client(self, name):
        class Container:
            url = f"https://keyless.blob.core.windows.net/{name}"

        return Container()


def test_user_delegation_keys_stay_within_seven_days():
    storage = SevenDayStorage()
    staging = BlobStaging(storage, "p")  # type: ignore[arg-type]
    url = staging.log_container_url()
    assert "sig=" in url and "skoid=" in url
    assert storage.asked and max(storage.asked) <= timedelta(days=7)


def test_storage_errors_are_orchestrator_errors(make_pool, files):
    dead = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    pool = make_pool()
    pool.staging = BlobStaging(
        BlobServiceClient.from_connection_string(dead, retry_total=0), pool.pool_id
    )
    with pytest.raises(StagingError, match="storage"):
        pool.create()


def test_engines_get_the_queue_settings(make_pool, batch_fake, monkeypatch):
    from click.testing import CliRunner

    from realtime_batch.engine import cli as engine_cli

    fake, _ = batch_fake
    pool = make_pool(spec=ONE_NODE, queue_lock_duration=60, queue_max_delivery_count=5).create()
    job = pool.start_engines()
    envs = [
        {e["name"]: e["value"] for e in t["environmentSettings"]} for t in fake.tasks[job].values()
    ]
    assert envs == [{"RTBATCH_LOCK_DURATION": "60.0", "RTBATCH_MAX_DELIVERY_COUNT": "5"}] * 2
    seen = {}

    class Captured:
        def __init__(self, *args, **options):
            seen.update(options)

        def run(self):
            pass

    monkeypatch.setattr("realtime_batch.engine.engine.Engine", Captured)
    result = CliRunner().invoke(
        engine_cli.engine,
        ["--transport", "memory://x", "--queue", "tasks", "--tasks-dir", "."],
        env=envs[0],
    )
    assert result.exit_code == 0, result.output
    assert (seen["lock_duration"], seen["max_delivery_count"]) == (60.0, 5)


def test_a_missing_wheelhouse_is_refused(make_pool, files, batch_fake):
    fake, _ = batch_fake
    with pytest.raises(OrchestratorError, match=r"wheelhouse .* is not a directory"):
        make_pool(wheelhouse=files / "no-such-dir").create()
    assert fake.bodies("POST", "/pools") == []


def test_nodes_can_download_with_a_pool_identity(make_pool, batch_fake):
    fake, _ = batch_fake
    identity = "/subscriptions/s/resourceGroups/g/providers/x/userAssignedIdentities/nodes"
    fake.auto_storage = None  # no auto-storage: the identity is the only way in
    pool = make_pool(spec=ONE_NODE, node_identity=identity).create(wait=False)
    # attached through ARM (the Batch data plane cannot set a pool identity)
    fake.pools[pool.pool_id]["identity"] = {"userAssignedIdentities": [{"resourceId": identity}]}
    pool.start_engines()
    pool.wait_ready(timeout=30)
    files = _resource_files(fake)
    assert files and all(r["identityReference"] == {"resourceId": identity} for r in files)
    assert all(r["storageContainerUrl"].endswith(pool.staging.container) for r in files)
    assert all("sig=" not in json.dumps(r) for r in files)
