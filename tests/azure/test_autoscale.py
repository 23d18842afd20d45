"""The autoscale controller on the Batch fake: nodes follow the queue, engines follow nodes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from realtime_batch.orchestrator.autoscale import AutoscalePolicy, Autoscaler, wanted_nodes
from realtime_batch.orchestrator.azure_batch import PoolSpec
from realtime_batch.orchestrator.pool import OrchestratorError
from realtime_batch.transport import Message, QueueCounts, open_transport


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_wanted_nodes_follow_the_queue_within_bounds():
    policy = AutoscalePolicy(min_nodes=1, max_nodes=5, tasks_per_engine=2)
    assert wanted_nodes(QueueCounts(0), 2, policy) == 1
    assert wanted_nodes(QueueCounts(7, 2), 2, policy) == 3  # 9 tasks: 5 engines: 3 nodes
    assert wanted_nodes(QueueCounts(1000), 2, policy) == 5


@pytest.mark.parametrize(
    "options", [{"min_nodes": 3, "max_nodes": 2}, {"min_nodes": -1}, {"tasks_per_engine": 0}]
)
def test_bad_policies_are_refused(options):
    with pytest.raises(OrchestratorError, match="autoscale needs"):
        AutoscalePolicy(**options)


def _engines_per_node(fake, job):
    per_node: dict[str, int] = {}
    for task in fake.tasks[job].values():
        if task["state"] == "running":
            node = task["nodeInfo"]["nodeId"]
            per_node[node] = per_node.get(node, 0) + 1
    return per_node


def test_controller_grows_with_the_queue_and_shrinks_after_idle(make_pool, batch_fake, request):
    fake, _ = batch_fake
    url = f"memory://autoscale-{request.node.name}"
    pool = make_pool(spec=PoolSpec(dedicated_nodes=1, engines_per_node=2), engine_transport_url=url)
    pool._transport_url = url
    pool.create()
    job = pool.start_engines()
    pool.wait_ready()
    clock = Clock()
    with open_transport(url) as transport:
        transport.declare_queue("tasks")
        transport.send("tasks", [Message(b"t") for _ in range(9)])
        policy = AutoscalePolicy(min_nodes=1, max_nodes=3, idle_after=60)
        scaler = Autoscaler(pool, policy, lambda: transport.queue_counts("tasks"), clock)
        assert scaler.step() == 3  # 9 tasks, 2 engines per node: as many nodes as allowed
        fake.advance(10)  # the new nodes join and run their start task
        assert scaler.step() == 3
        fake.advance(1)
        assert _engines_per_node(fake, job) == {n["id"]: 2 for n in fake.nodes[pool.pool_id]}
        assert len(fake.nodes[pool.pool_id]) == 3
        for delivery in transport.receive("tasks", max_messages=9, timeout=1):
            transport.complete(delivery)
        clock.now = 30
        assert scaler.step() == 3  # idle, but not for long enough
        clock.now = 91
        assert scaler.step() == 1  # idle for 61 s: back to the minimum
        fake.advance(10)
        [node] = fake.nodes[pool.pool_id]
        assert _engines_per_node(fake, job) == {node["id"]: 2}
        assert len([t for t in fake.tasks[job].values() if t["state"] != "completed"]) == 2


def test_controller_to_zero_nodes_and_back(make_pool, batch_fake, request):
    fake, _ = batch_fake
    pool = make_pool(spec=PoolSpec(dedicated_nodes=1, engines_per_node=2)).create()
    job = pool.start_engines()
    pool.wait_ready()
    clock, depth = Clock(), [QueueCounts(0)]
    scaler = Autoscaler(pool, AutoscalePolicy(0, 2, idle_after=0), lambda: depth[0], clock)
    assert scaler.step() == 0
    fake.advance(10)
    assert fake.nodes[pool.pool_id] == [] and _engines_per_node(fake, job) == {}
    depth[0] = QueueCounts(1)
    assert scaler.step() == 1
    fake.advance(10)
    scaler.step()
    fake.advance(1)
    assert list(_engines_per_node(fake, job).values()) == [2]


def test_autoscale_cli_runs_the_controller(make_pool, batch_fake, monkeypatch):
    from realtime_batch.cli import main

    runs = []
    monkeypatch.setattr(
        "realtime_batch.orchestrator.azure_batch.AzureBatchPool.autoscale",
        lambda self, lo, hi, **kw: runs.append((lo, hi, kw)),
    )
    monkeypatch.setattr(
        "realtime_batch.orchestrator.azure_batch.AzureBatchPool.use_existing", lambda s, i: s
    )
    monkeypatch.setattr(
        "realtime_batch.orchestrator.azure_batch.AzureBatchPool.node_targets", lambda s: (1, 0)
    )
    args = ["pool", "autoscale", "--min", "0", "--max", "4", "--idle-after", "120", "--rounds", "1"]
    result = CliRunner().invoke(main, args, env=_cli_env(batch_fake, make_pool))
    assert result.exit_code == 0, result.output
    assert runs == [(0, 4, {"tasks_per_engine": 1.0, "idle_after": 120.0, "interval": 30.0,
                            "spot": False, "rounds": 1})]  # fmt: skip
    bad = CliRunner().invoke(main, ["pool", "autoscale", "--min", "5", "--max", "4"])
    assert bad.exit_code == 2 and "--min 5 is above --max 4" in bad.output


def _cli_env(batch_fake, make_pool):
    from batch_fake import DEFAULT_ACCOUNT, DEFAULT_KEY

    _, url = batch_fake
    return {
        "RTBATCH_POOL_BACKEND": "azure-batch",
        "RTBATCH_BATCH_ACCOUNT_URL": url,
        "RTBATCH_BATCH_ACCOUNT_NAME": DEFAULT_ACCOUNT,
        "RTBATCH_BATCH_ACCOUNT_KEY": DEFAULT_KEY,
        "RTBATCH_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "RTBATCH_TRANSPORT_ENGINE_URL": "zmq://10.0.0.10:5555",
        "RTBATCH_CONFIG": "/nonexistent/rtbatch.toml",
    }
