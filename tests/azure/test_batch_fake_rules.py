"""The Batch fake behaves like the service where realtime-batch depends on it.

Each rule is driven through the real ``azure-batch`` client, with the fake's clock
held still (``step=0``) and moved by the test: nothing waits on real time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from batch_fake import DEFAULT_ACCOUNT, DEFAULT_KEY, BatchFake, FakeClock


@pytest.fixture
def still():
    """A fake whose clock moves only when the test says; yields (fake, client)."""
    fake = BatchFake(clock=FakeClock(step=0), auto_storage="devstoreaccount1")
    url = fake.start()
    client = BatchClient(url, AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY))
    try:
        yield fake, client
    finally:
        client.close()
        fake.stop()


def _sas(hours: float) -> str:
    expiry = datetime.now(timezone.utc) + timedelta(hours=hours)
    return f"http://127.0.0.1:1/acct/c/wheel.whl?se={expiry:%Y-%m-%dT%H:%M:%SZ}&sp=r&sig=x"


def _pool(client, pool_id="p", nodes=2, slots=2, vm="Standard_D2s_v5", **extra):
    start = bm.BatchStartTask(
        command_line="/bin/true",
        resource_files=extra.pop("resource_files", []),
        wait_for_success=True,
    )
    client.create_pool(
        bm.BatchPoolCreateOptions(
            id=pool_id, vm_size=vm, task_slots_per_node=slots, target_dedicated_nodes=nodes,
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=bm.BatchVmImageReference(publisher="canonical", offer="o", sku="s"),
                node_agent_sku_id="batch.node.ubuntu 24.04",
            ),
            start_task=start, **extra,
        )
    )  # fmt: skip


def _job_with_tasks(client, job="j", pool="p", count=4):
    client.create_job(bm.BatchJobCreateOptions(id=job, pool_info=bm.BatchPoolInfo(pool_id=pool)))
    tasks = [bm.BatchTaskCreateOptions(id=f"t{i}", command_line="run") for i in range(count)]
    client.create_tasks(job, tasks)


def _resize(client, pool_id, options):
    """Start a resize (the SDK's poller follows it in its own thread)."""
    return client.begin_resize_pool(pool_id, options, polling_interval=0.05)


def _remove(client, options):
    return client.begin_remove_nodes("p", options, polling_interval=0.05)


def _states(client, pool="p"):
    return sorted(getattr(n.state, "value", n.state) for n in client.list_nodes(pool))


def test_allocation_goes_from_resizing_to_steady_with_the_clock(still):
    fake, client = still
    _pool(client)
    assert client.get_pool("p").allocation_state == "resizing"
    assert list(client.list_nodes("p")) == []
    fake.advance(fake.allocation_seconds)
    assert client.get_pool("p").allocation_state == "steady"
    assert _states(client) == ["starting", "starting"]
    fake.advance(fake.boot_seconds)
    assert _states(client) == ["idle", "idle"]


def test_resize_while_resizing_is_a_conflict(still):
    _, client = still
    _pool(client)
    with pytest.raises(HttpResponseError) as caught:
        _resize(client, "p", bm.BatchPoolResizeOptions(target_dedicated_nodes=3))
    assert caught.value.status_code == 409 and caught.value.error.code == "PoolResizing"
    with pytest.raises(HttpResponseError, match="PoolResizing"):
        _remove(client, bm.BatchNodeRemoveOptions(node_ids=["x"]))


def _running_pool(fake, client):
    _pool(client)
    fake.advance(10)
    _job_with_tasks(client)
    assert {t.state for t in client.list_tasks("j")} == {"running"}


def test_taskcompletion_waits_for_running_tasks_forever(still):
    fake, client = still
    _running_pool(fake, client)
    _resize(
        client,
        "p",
        bm.BatchPoolResizeOptions(
            target_dedicated_nodes=0, node_deallocation_option="taskcompletion"
        ),
    )
    fake.advance(600)
    assert client.get_pool("p").allocation_state == "resizing"
    assert _states(client) == ["leavingpool", "leavingpool"]
    fake.advance(900)  # the resize timeout: the nodes stay, with a resize error
    pool = client.get_pool("p")
    assert pool.allocation_state == "steady" and pool.resize_errors[0].code == "ResizeTimedOut"
    assert len(_states(client)) == 2


@pytest.mark.parametrize("option", ["requeue", "terminate"])
def test_requeue_and_terminate_shrink_at_once(still, option):
    fake, client = still
    _running_pool(fake, client)
    _resize(
        client,
        "p",
        bm.BatchPoolResizeOptions(target_dedicated_nodes=1, node_deallocation_option=option),
    )
    fake.advance(fake.allocation_seconds)
    assert client.get_pool("p").allocation_state == "steady" and len(_states(client)) == 1
    states = sorted(t.state for t in client.list_tasks("j"))
    # two tasks lost their node: requeued (and rescheduled when a slot frees) or ended
    assert (
        states == (["active"] * 2 if option == "requeue" else ["completed"] * 2) + ["running"] * 2
    )


def test_remove_chosen_nodes(still):
    fake, client = still
    _pool(client, nodes=3)
    fake.advance(10)
    ids = [n.id for n in client.list_nodes("p")]
    _remove(client, bm.BatchNodeRemoveOptions(node_ids=[ids[0], ids[2]]))
    fake.advance(fake.allocation_seconds)
    assert [n.id for n in client.list_nodes("p")] == [ids[1]]
    assert client.get_pool("p").target_dedicated_nodes == 1


def test_jobs_pass_through_deleting(still):
    fake, client = still
    _running_pool(fake, client)
    client.begin_delete_job("j", polling_interval=0.05)
    assert client.get_job("j").state == "deleting"
    assert {t.state for t in client.list_tasks("j")} == {"completed"}
    with pytest.raises(HttpResponseError) as caught:
        client.create_job(bm.BatchJobCreateOptions(id="j", pool_info=bm.BatchPoolInfo(pool_id="p")))
    assert caught.value.status_code == 409 and caught.value.error.code == "JobBeingDeleted"
    fake.advance(fake.job_delete_seconds)
    assert [j.id for j in client.list_jobs()] == []


def test_task_slots_are_capped(still):
    _, client = still
    with pytest.raises(HttpResponseError) as caught:
        _pool(client, slots=9, vm="Standard_D2s_v5")  # 4 x 2 vCPUs = 8
    assert caught.value.status_code == 400 and "min(4 x vCPUs, 256)" in str(caught.value)
    _pool(client, "p8", slots=8, vm="Standard_D2s_v5")
    with pytest.raises(HttpResponseError, match="= 256"):
        _pool(client, "big", slots=257, vm="Standard_D96s_v5")


def test_subnet_needs_entra_auth(still, batch_fake_https):
    _, client = still
    net = bm.NetworkConfiguration(subnet_id="/subscriptions/s/resourceGroups/g/x/subnets/a")
    with pytest.raises(HttpResponseError) as caught:
        _pool(client, network_configuration=net)
    assert caught.value.status_code == 403
    fake, _, _ = batch_fake_https
    assert fake.handle("POST", "/pools", {}, _pool_body(net), auth="token")[0] == 201


def _pool_body(net):
    return {"id": "vnet", "vmSize": "Standard_D2s_v5", "networkConfiguration": net.as_dict()}


def test_start_task_downloads_again_on_reboot_and_for_late_nodes(still):
    fake, client = still
    _pool(client, resource_files=[bm.ResourceFile(http_url=_sas(2), file_path="wheels/w.whl")])
    fake.advance(10)
    assert _states(client) == ["idle", "idle"]
    fake.advance(3 * 3600)  # the SAS in the start task has expired
    node = next(iter(client.list_nodes("p"))).id
    fake.restart_node(node, "reboot")
    _resize(client, "p", bm.BatchPoolResizeOptions(target_dedicated_nodes=3))
    fake.advance(10)
    nodes = {n.id: n for n in client.list_nodes("p")}
    assert nodes[node].state == "starttaskfailed"
    assert "SAS expired" in nodes[node].start_task_info.failure_info.message
    assert sorted(getattr(n.state, "value", n.state) for n in nodes.values()) == [
        "idle",
        "starttaskfailed",
        "starttaskfailed",
    ]


def test_auto_storage_and_identity_downloads_do_not_expire(still):
    fake, client = still
    identity = "/subscriptions/s/resourceGroups/g/providers/x/userAssignedIdentities/nodes"
    _pool(
        client,
        resource_files=[
            bm.ResourceFile(auto_storage_container_name="c", blob_prefix="wheels/"),
            bm.ResourceFile(
                storage_container_url="http://127.0.0.1:1/acct/c",
                identity_reference=bm.BatchNodeIdentityReference(resource_id=identity),
            ),
        ],
    )
    # a pool identity is set through the management plane (ARM), never the Batch API
    fake.pools["p"]["identity"] = {"userAssignedIdentities": [{"resourceId": identity}]}
    fake.advance(30 * 24 * 3600)
    fake.restart_node(next(iter(client.list_nodes("p"))).id, "reimage")
    fake.advance(10)
    assert _states(client) == ["idle", "idle"]
    fake.auto_storage = None  # an account without auto-storage cannot serve those files
    fake.restart_node(next(iter(client.list_nodes("p"))).id, "reboot")
    fake.advance(10)
    assert _states(client) == ["idle", "starttaskfailed"]


def test_job_preparation_downloads_per_node(still):
    fake, client = still
    _pool(client, nodes=1)
    fake.advance(10)
    prep = bm.BatchJobPreparationTask(
        command_line="prep", resource_files=[bm.ResourceFile(http_url=_sas(2), file_path="t.py")]
    )
    client.create_job(
        bm.BatchJobCreateOptions(
            id="j", pool_info=bm.BatchPoolInfo(pool_id="p"), job_preparation_task=prep
        )
    )
    fake.advance(3 * 3600)
    client.create_tasks("j", [bm.BatchTaskCreateOptions(id="t0", command_line="run")])
    assert [t.state for t in client.list_tasks("j")] == ["active"]  # pending: prep failed
    [status] = client.list_job_preparation_and_release_task_status("j")
    assert status.job_preparation_task_execution_info.result == "failure"


def test_spot_nodes_can_be_preempted(still):
    fake, client = still
    _pool(client, nodes=0, target_low_priority_nodes=1, slots=2)
    fake.advance(10)
    _job_with_tasks(client, count=2)
    [node] = client.list_nodes("p")
    fake.preempt(node.id)
    assert _states(client) == ["preempted"]
    assert {t.state for t in client.list_tasks("j")} == {"active"}
    fake.restart_node(node.id, "recover")
    fake.advance(10)
    assert {t.state for t in client.list_tasks("j")} == {"running"}


def test_record_file_has_every_request(tmp_path):
    record = tmp_path / "requests.jsonl"
    fake = BatchFake(record=record)
    url = fake.start()
    try:
        with BatchClient(url, AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY)) as client:
            _pool(client)
            client.get_pool("p")
    finally:
        fake.stop()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["method"], r["path"]) for r in lines] == [("POST", "/pools"), ("GET", "/pools/p")]
    assert lines[0]["body"]["id"] == "p" and set(lines[0]) == {"method", "path", "query", "body"}


def test_record_option_of_the_standalone_fake(no_leaked_processes, tmp_path):
    import signal
    import subprocess
    import sys

    from azure_fixtures import free_port

    record, port = tmp_path / "run.jsonl", free_port()
    script = Path(__file__).resolve().parents[1] / "batch_fake.py"
    cmd = [sys.executable, str(script), "--port", str(port), "--record", str(record)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("Batch fake on http://127.0.0.1:")
        url = f"http://127.0.0.1:{port}"
        with BatchClient(url, AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY)) as client:
            _pool(client, "recorded")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    [line] = [json.loads(x) for x in record.read_text().splitlines()]
    assert (line["method"], line["path"], line["body"]["id"]) == ("POST", "/pools", "recorded")
